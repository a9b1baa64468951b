"""KV caches that evict: sliding window and attention sinks + window (StreamingLLM).

Generation with a KV cache stores the keys and values of every past token: memory grows as
2 * n_layers * length * d_model numbers. Eviction policies bound it:

    KVCache (minilm.models.gpt)   keep all tokens (memory grows with the length)
    WindowCache(window)           keep the most recent tokens only
    SinksWindowCache(window, 4)   keep the first 4 tokens (the "attention sinks") + the recent ones

``window`` always counts the keys a new token attends to *including itself*, as in
``sliding_window_mask``: between steps the cache holds ``window - 1`` recent tokens (plus the sinks),
and during a step the new token joins them. Fed one token at a time, ``WindowCache(w)`` computes
what ``GPT(idx, attn_mask=sliding_window_mask(T, w))`` computes, except that the keys of a cached
token were computed once, from the context *it* saw (that is the difference from re-computation).

Positions: the base cache stores un-rotated keys with their absolute positions, so a policy picks
which positions RoPE sees. StreamingLLM (Xiao et al. 2023, sec. 3.2) assigns positions *inside the
cache*: with sinks [0, 1, 2, 3] and recent tokens [6, 7, 8] cached, RoPE sees 0, 1, ..., 6, so
distances never exceed the cache size the model was trained on. ``positions="absolute"`` keeps
the original positions, for comparison.
"""

from __future__ import annotations

import torch

from minilm.models.gpt import KVCache

__all__ = ["SinksWindowCache", "WindowCache", "kv_cache_bytes", "make_cache"]


def _check_window(window: int) -> None:
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive integer (keys seen per token, itself included), got {window!r}")


class WindowCache(KVCache):
    """Sliding-window KV cache: each new token attends to the ``window`` most recent tokens."""

    def __init__(self, n_layers: int, window: int):
        super().__init__(n_layers)
        _check_window(window)
        self.window = window

    def _allowed(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """(Tq, Tk) policy mask on absolute positions: causal and within the window."""
        dist = q_pos[:, None] - k_pos[None, :]
        return (dist >= 0) & (dist < self.window)

    def _keep_index(self) -> torch.Tensor:
        L = len(self)
        return torch.arange(max(0, L - (self.window - 1)), L)

    def evict(self) -> None:
        if len(self) > self.window - 1:
            self._keep(self._keep_index().to(self.pos.device))

    def attn_mask(self, T: int, device: torch.device | None = None) -> torch.Tensor:
        """The (T, len(self) + T) mask to pass with a chunk of T > 1 new tokens, so that tokens
        inside the chunk also respect the policy: ``model(chunk, cache=c, attn_mask=c.attn_mask(T))``.
        (With one token per step the default causal mask is already right.)"""
        if device is None:
            device = self.pos.device if self.pos is not None else torch.device("cpu")
        q_pos = self.new_positions(T, device)
        return self._allowed(q_pos, self.key_positions(q_pos))


class SinksWindowCache(WindowCache):
    """StreamingLLM cache: the first ``sinks`` tokens plus the ``window`` most recent ones.

    positions="cache" (StreamingLLM): RoPE sees positions 0..L-1 inside the cache.
    positions="absolute": RoPE sees the tokens' original positions (sinks far in the past).
    """

    def __init__(self, n_layers: int, window: int, sinks: int = 4, positions: str = "cache"):
        super().__init__(n_layers, window)
        if not isinstance(sinks, int) or sinks < 0:
            raise ValueError(f"sinks must be a non-negative integer, got {sinks!r}")
        if positions not in ("cache", "absolute"):
            raise ValueError(f"positions must be 'cache' (StreamingLLM) or 'absolute', got {positions!r}")
        self.sinks, self.positions = sinks, positions

    def _allowed(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        return super()._allowed(q_pos, k_pos) | ((k_pos[None, :] < self.sinks) & (k_pos[None, :] <= q_pos[:, None]))

    def _keep_index(self) -> torch.Tensor:
        # Called only when len(self) > sinks + window - 1, so sinks and recent tokens are disjoint;
        # the first cached tokens are always the sinks (absolute positions 0..sinks-1).
        return torch.cat([torch.arange(self.sinks), super()._keep_index()])

    def evict(self) -> None:
        if len(self) > self.sinks + self.window - 1:
            self._keep(self._keep_index().to(self.pos.device))

    def rope_positions(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.positions == "absolute":
            return q_pos, k_pos
        # Positions inside the cache (StreamingLLM sec. 3.2): keys 0..Lk-1, the new queries last.
        Lk, T = k_pos.numel(), q_pos.numel()
        in_cache = torch.arange(Lk, device=k_pos.device)
        return in_cache[Lk - T :], in_cache


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
