"""The KV cache: keys and values of past tokens, so that generation computes each token once.

Without a cache, generating token t re-runs the model on all t tokens before it. With one, the
model runs on the new token only: its query attends to the keys and values that every earlier
token left in the cache. ``KVCache`` keeps all of them, in preallocated buffers per layer:

    k[layer], v[layer]    (B, H, capacity, hd)   slot p holds the token at position p
    capacity              doubles when full (or is sized once with ``max_length``)

so a new token costs one write per layer and no copy of the cache (a ``torch.cat`` per token
would copy the whole cache: O(n) memory traffic per token, O(n^2) over a generation).
Keys are stored *rotated* (RoPE at their absolute position): the rotation of a key depends on
its own position only (Su et al. 2021, eq. 16), so each step rotates the new keys and nothing
else. The caches that evict (window, StreamingLLM) are in ``minilm.attention.cache``.

One forward step with a cache (``GPT.forward`` and ``CausalSelfAttention.forward`` do this):

    cache.begin(T, device)                 make room for T new tokens
    rq, rk = cache.rope_positions()        positions RoPE uses: new queries (T,), keys to rotate
    mask = cache.causal_mask()             (T, Tk) True = may attend, keys in the cache's slot order
    k, v = cache.update(layer, k, v, rotate)   per layer: store the new keys/values, get all Tk
    cache.commit()                         once every layer has run: the T tokens are now cached
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["KVCache"]


class KVCache:
    """Keys and values of past tokens for incremental decoding; this one keeps every token.

    n_layers: layers of the model. max_length: if given, the buffers are allocated once for that
    many tokens (``GPT.generate`` passes its context length); otherwise, or past it, they double
    when full. ``nbytes()`` counts the kept tokens, ``allocated_bytes()`` the buffers.
    """

    rotate_all = False  # True for caches whose RoPE positions move: they store un-rotated keys

    def __init__(self, n_layers: int, max_length: int | None = None):
        if not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers must be a positive integer, got {n_layers!r}")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length must be a positive integer or None (grow as needed), got {max_length!r}")
        self.k: list[torch.Tensor | None] = [None] * n_layers  # each (B, H, capacity, hd)
        self.v: list[torch.Tensor | None] = [None] * n_layers
        self.capacity = max_length or 0  # slots per buffer
        self.seen = 0  # tokens processed so far (the next token's absolute position)
        self.device = torch.device("cpu")
        self._step: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # q_pos, k_pos, slots

    # -------------------------------------------------------------------------- what is kept
    def __len__(self) -> int:
        """Tokens kept between steps (the keys the next token may see, besides itself)."""
        return self.seen

    @property
    def pos(self) -> torch.Tensor:
        """Absolute positions (L,) of the kept tokens, in increasing order."""
        return torch.arange(self.seen, device=self.device)

    def _capacity_for(self, T: int) -> int:
        """Slots needed to add T tokens: double when full, so appending costs O(1) amortised."""
        need = self.seen + T
        return self.capacity if need <= self.capacity else max(need, 2 * self.capacity)

    def _slot_of(self, positions: torch.Tensor, capacity: int) -> torch.Tensor:
        """Buffer slot of each absolute position: here the position itself."""
        return positions

    # ------------------------------------------------------------------------- one step
    def begin(self, T: int, device: torch.device | None = None) -> torch.Tensor:
        """Start a step of T new tokens: make room for them; return their absolute positions (T,)."""
        if not isinstance(T, int) or T < 1:
            raise ValueError(f"a step adds at least one token, got T={T!r}")
        self.device = torch.device(device) if device is not None else self.device
        capacity = self._capacity_for(T)
        if capacity != self.capacity:
            self._move(capacity)
        q_pos = torch.arange(self.seen, self.seen + T, device=self.device)
        self._step = (q_pos, self._step_positions(T), self._slot_of(q_pos, self.capacity))
        return q_pos

    def _step_positions(self, T: int) -> torch.Tensor:
        """Absolute position (Tk,) held by each filled slot once T new tokens are written (slot order).

        The kept and new tokens always fill slots 0..Tk-1 (a ring may hold them rotated)."""
        held = torch.cat([self.pos, torch.arange(self.seen, self.seen + T, device=self.device)])
        out = torch.empty_like(held)
        out[self._slot_of(held, self._capacity_for(T))] = held
        return out

    def _move(self, capacity: int) -> None:
        """Reallocate every buffer with ``capacity`` slots, each kept token moved to its new slot."""
        kept = self.pos
        src, dst = self._slot_of(kept, self.capacity), self._slot_of(kept, capacity)
        for buffers in (self.k, self.v):
            for layer, old in enumerate(buffers):
                if old is not None:
                    new = old.new_zeros(old.shape[:2] + (capacity, old.size(3)))
                    new[:, :, dst] = old[:, :, src]
                    buffers[layer] = new
        self.capacity = capacity

    def _current(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._step is None:
            raise ValueError("no step in progress: call cache.begin(T) before using the cache in a forward pass")
        return self._step

    def rope_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions RoPE uses in this step: the new queries (T,), and the keys ``update`` has
        ``rotate`` rotate: here only the new ones, at their absolute positions (like the queries)."""
        q_pos = self._current()[0]
        return q_pos, q_pos

    def causal_mask(self) -> torch.Tensor:
        """(T, Tk) bool mask, True = may attend: causality by absolute position, keys in slot order."""
        q_pos, k_pos, _ = self._current()
        return k_pos[None, :] <= q_pos[:, None]

    def update(
        self,
        layer: int,
        k: torch.Tensor,
        v: torch.Tensor,
        rotate: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys and values (B, H, T, hd) of ``layer``; return all Tk keys and values.

        ``rotate`` applies RoPE at the step's key positions (``rope_positions()[1]``). Keys are
        returned rotated: the new ones are rotated once and stored so (unless ``rotate_all``: then
        the cache stores them as they come and rotates all of them every step).
        """
        _, k_pos, slots = self._current()
        if not self.rotate_all:
            k = rotate(k)
        if self.k[layer] is None:
            B, H, _, hd = k.shape
            self.k[layer] = k.new_zeros(B, H, self.capacity, hd)
            self.v[layer] = v.new_zeros(B, H, self.capacity, v.size(3))
        elif k.shape[:2] != self.k[layer].shape[:2] or k.size(3) != self.k[layer].size(3):
            raise ValueError(
                f"this cache holds keys of shape (B, H, *, hd) = {tuple(self.k[layer].shape)}, got new keys "
                f"{tuple(k.shape)}: use one cache per batch of sequences (a new KVCache for a new batch)"
            )
        self.k[layer].index_copy_(2, slots, k)  # write the T new tokens in their slots: no copy of the rest
        self.v[layer].index_copy_(2, slots, v)
        Tk = k_pos.numel()
        keys, values = self.k[layer][:, :, :Tk], self.v[layer][:, :, :Tk]  # views of the filled slots
        return (rotate(keys) if self.rotate_all else keys), values

    def commit(self) -> None:
        """End the step (every layer has stored its keys): the new tokens count as seen."""
        self.seen += self._current()[0].numel()
        self._step = None

    # ------------------------------------------------------------------------------- memory
    def nbytes(self) -> int:
        """Bytes of the kept tokens' keys and values (``kv_cache_bytes`` of ``len(self)`` tokens)."""
        per_token = sum(b.size(0) * b.size(1) * b.size(3) * b.element_size() for b in self.k + self.v if b is not None)
        return per_token * len(self)

    def allocated_bytes(self) -> int:
        """Bytes of the buffers themselves: ``nbytes()`` plus the room not filled yet."""
        return sum(b.numel() * b.element_size() for b in self.k + self.v if b is not None)
