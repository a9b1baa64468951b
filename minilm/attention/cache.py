"""KV caches that evict: sliding window and attention sinks + window (StreamingLLM).

Generation with a KV cache stores the keys and values of every past token: memory grows as
2 * n_layers * length * d_model numbers. Eviction policies bound it:

    KVCache (minilm.models.kv_cache)   keep all tokens (memory grows with the length)
    WindowCache(window)                keep the most recent tokens only
    SinksWindowCache(window, 4)        keep the first 4 tokens (the "attention sinks") + the recent ones

``window`` always counts the keys a new token attends to *including itself*, as in
``sliding_window_mask``: between steps the cache holds ``window - 1`` recent tokens (plus the sinks),
and during a step the new token joins them. Fed one token at a time, ``WindowCache(w)`` computes
what ``GPT(idx, attn_mask=sliding_window_mask(T, w))`` computes, except that the keys of a cached
token were computed once, from the context *it* saw (that is the difference from re-computation).

Memory and time are constant per token: the buffers are *ring buffers* of fixed size,

    slots [0, sinks)              the sink tokens, position p in slot p
    slots [sinks, sinks + R)      a ring: position p >= sinks in slot sinks + (p - sinks) mod R

with R = window - 1 + T during a step of T new tokens (the kept recent tokens and the new ones),
so a new token overwrites the one that just left the window, and nothing else moves. The slots
are not in time order, which attention does not mind: it is a sum over keys, and the mask (built
from each slot's absolute position) says which keys each query may see. (A chunk of T > 1
tokens, e.g. a prompt, resizes the ring to window - 1 + T for that step.)

Positions: StreamingLLM (Xiao et al. 2023, sec. 3.2) assigns RoPE positions *inside the cache*:
with sinks [0, 1, 2, 3] and recent tokens [6, 7, 8] cached, RoPE sees 0, 1, ..., 6, so distances
never exceed the cache size the model was trained on. A key's position then changes as tokens
are evicted, so this cache stores keys un-rotated and rotates its (constant-size) contents every
step. ``positions="absolute"`` keeps the original positions (keys stored rotated, as in KVCache).
"""

from __future__ import annotations

import torch

from minilm.models.kv_cache import KVCache

__all__ = ["SinksWindowCache", "WindowCache", "kv_cache_bytes", "make_cache"]


def _check_window(window: int) -> None:
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive integer (keys seen per token, itself included), got {window!r}")


class WindowCache(KVCache):
    """Sliding-window KV cache: each new token attends to the ``window`` most recent tokens."""

    sinks = 0  # first tokens kept forever (SinksWindowCache sets it)

    def __init__(self, n_layers: int, window: int):
        super().__init__(n_layers)
        _check_window(window)
        self.window = window
        self.capacity = self.sinks + window  # sinks + a ring of window - 1 kept tokens and 1 new one

    def _allowed(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """(Tq, Tk) policy mask on absolute positions: causal and within the window."""
        dist = q_pos[:, None] - k_pos[None, :]
        return (dist >= 0) & (dist < self.window)

    def _first_recent(self, seen: int) -> int:
        """Absolute position of the oldest recent (non-sink) token kept after ``seen`` tokens."""
        return max(self.sinks, seen - (self.window - 1))

    def __len__(self) -> int:
        return min(self.sinks, self.seen) + max(self.sinks, self.seen) - self._first_recent(self.seen)

    @property
    def pos(self) -> torch.Tensor:
        sinks = torch.arange(min(self.sinks, self.seen), device=self.device)
        recent = torch.arange(self._first_recent(self.seen), max(self.sinks, self.seen), device=self.device)
        return torch.cat([sinks, recent])

    def _capacity_for(self, T: int) -> int:
        return self.sinks + self.window - 1 + T  # room for the kept tokens and the T new ones

    def _slot_of(self, positions: torch.Tensor, capacity: int) -> torch.Tensor:
        s, ring = self.sinks, capacity - self.sinks
        return torch.where(positions < s, positions, s + (positions - s) % ring)

    def attn_mask(self, T: int, device: torch.device | None = None) -> torch.Tensor:
        """The (T, len(self) + T) mask to pass with a chunk of T > 1 new tokens, so that tokens
        inside the chunk also respect the policy: ``model(chunk, cache=c, attn_mask=c.attn_mask(T))``.
        (With one token per step the default causal mask is already right.) Keys in slot order."""
        device = self.device if device is None else torch.device(device)
        q_pos = torch.arange(self.seen, self.seen + T, device=self.device)
        return self._allowed(q_pos, self._step_positions(T)).to(device)


class SinksWindowCache(WindowCache):
    """StreamingLLM cache: the first ``sinks`` tokens plus the ``window`` most recent ones.

    positions="cache" (StreamingLLM): RoPE sees positions 0..L-1 inside the cache.
    positions="absolute": RoPE sees the tokens' original positions (sinks far in the past).
    """

    def __init__(self, n_layers: int, window: int, sinks: int = 4, positions: str = "cache"):
        if not isinstance(sinks, int) or isinstance(sinks, bool) or sinks < 0:
            raise ValueError(f"sinks must be a non-negative integer, got {sinks!r}")
        if positions not in ("cache", "absolute"):
            raise ValueError(f"positions must be 'cache' (StreamingLLM) or 'absolute', got {positions!r}")
        self.sinks, self.positions = sinks, positions
        super().__init__(n_layers, window)
        self.rotate_all = positions == "cache"  # in-cache positions move: rotate every key each step

    def _allowed(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        return super()._allowed(q_pos, k_pos) | ((k_pos[None, :] < self.sinks) & (k_pos[None, :] <= q_pos[:, None]))

    def rope_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.positions == "absolute":
            return super().rope_positions()
        # Positions inside the cache (StreamingLLM sec. 3.2): the kept tokens in time order are
        # numbered 0, 1, ...: a recent token moves down by the number of tokens evicted so far.
        q_pos, k_pos, _ = self._current()
        evicted = self._first_recent(self.seen) - self.sinks
        in_cache = lambda p: torch.where(p < self.sinks, p, p - evicted)  # noqa: E731
        return in_cache(q_pos), in_cache(k_pos)  # all keys: the cache rotates all of them


def make_cache(policy: str, n_layers: int, window: int | None = None, sinks: int = 4) -> KVCache:
    """A cache by policy name: "full" (keep all), "window", "sinks" (StreamingLLM, positions in
    the cache) or "sinks_absolute" (sinks + window with absolute positions)."""
    if policy == "full":
        return KVCache(n_layers)
    if policy not in ("window", "sinks", "sinks_absolute"):
        raise ValueError(f"unknown cache policy {policy!r}: choose 'full', 'window', 'sinks' or 'sinks_absolute'")
    if window is None:
        raise ValueError(f"cache policy {policy!r} needs a window size: make_cache({policy!r}, n_layers, window=64)")
    if policy == "window":
        return WindowCache(n_layers, window)
    return SinksWindowCache(n_layers, window, sinks, positions="cache" if policy == "sinks" else "absolute")


def kv_cache_bytes(n_layers: int, d_model: int, length: int, batch: int = 1, bytes_per_element: int = 4) -> int:
    """Memory of a KV cache holding ``length`` tokens: keys and values of every layer.

    2 (K and V) * n_layers * batch * length * d_model * bytes_per_element; with multi-head
    attention n_heads * head_dim = d_model. (float32: 4 bytes, bf16/fp16: 2.)
    """
    return 2 * n_layers * batch * length * d_model * bytes_per_element
