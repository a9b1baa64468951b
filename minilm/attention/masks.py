"""Attention patterns as boolean masks: which keys j each query i may attend to.

Every function returns a (T, T) bool tensor with ``True = may attend`` (PyTorch SDPA's polarity),
so it plugs straight into the GPT: ``GPT(cfg)(idx, attn_mask=sliding_window_mask(T, 16))``.
All patterns are causal (j <= i): they pick a *subset* of what full causal attention sees.

The cost of attention is proportional to the number of attended pairs (i, j): full causal
attention has n(n+1)/2 of them (O(n^2)); a sliding window has about n*w (O(n)); the Sparse
Transformer patterns about n*(l + n/l), i.e. O(n*sqrt(n)) with the stride l ~ sqrt(n).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "MASKS",
    "attended_pairs",
    "block_sparse_mask",
    "check_mask",
    "fixed_mask",
    "full_causal_mask",
    "make_mask",
    "mask_picture",
    "sinks_window_mask",
    "sliding_window_mask",
    "strided_mask",
]


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _grid(T: int, device: torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Query index i (T, 1) and key index j (1, T), broadcastable to (T, T)."""
    _check_positive("T (sequence length)", T)
    idx = torch.arange(T, device=device)
    return idx[:, None], idx[None, :]


def full_causal_mask(T: int, device: torch.device | None = None) -> torch.Tensor:
    """Full causal attention: query i sees every key j <= i. n(n+1)/2 pairs."""
    i, j = _grid(T, device)
    return j <= i


def sliding_window_mask(T: int, window: int, device: torch.device | None = None) -> torch.Tensor:
    """Sliding window: query i sees the ``window`` most recent keys, itself included.

    allowed[i, j] = (j <= i) and (i - j < window). A window >= T is full causal attention.
    """
    _check_positive("window", window)
    i, j = _grid(T, device)
    return (j <= i) & (i - j < window)


def sinks_window_mask(T: int, window: int, sinks: int = 4, device: torch.device | None = None) -> torch.Tensor:
    """Attention sinks + window (StreamingLLM, Xiao et al. 2023, sec. 3.2).

    Query i sees the first ``sinks`` tokens (the "attention sinks") plus the ``window`` most recent
    keys, itself included: allowed[i, j] = (j <= i) and (j < sinks or i - j < window).
    """
    _check_positive("window", window)
    if not isinstance(sinks, int) or sinks < 0:
        raise ValueError(f"sinks must be a non-negative integer, got {sinks!r}")
    i, j = _grid(T, device)
    return (j <= i) & ((j < sinks) | (i - j < window))


def strided_mask(T: int, stride: int, head: int | None = None, device: torch.device | None = None) -> torch.Tensor:
    """Sparse Transformer *strided* pattern (Child et al. 2019, sec. 4.2), stride l ~ sqrt(n).

    head=1: A1_i = {t, t+1, ..., i} with t = max(0, i - l)   -- the previous l positions and i
    head=2: A2_i = {j : (i - j) mod l = 0}, j <= i             -- every l-th position back from i
    head=None: the union A1_i | A2_i ("merged head" of sec. 4.3).
    Both heads include i itself, so no row is empty. A stride l >= T gives full causal attention.
    """
    _check_positive("stride", stride)
    i, j = _grid(T, device)
    causal = j <= i
    a1 = causal & (j >= i - stride)  # t = max(0, i - l); j >= 0 holds anyway
    a2 = causal & ((i - j) % stride == 0)
    return _pick_head(a1, a2, head)


def fixed_mask(
    T: int, stride: int, c: int = 1, head: int | None = None, device: torch.device | None = None
) -> torch.Tensor:
    """Sparse Transformer *fixed* pattern (Child et al. 2019, sec. 4.2), block length l, c summary cells.

    head=1: A1_i = {j : floor(j / l) = floor(i / l)}, j <= i      -- i's own block, up to i
    head=2: A2_i = {j : j mod l in {t, ..., l}}, t = l - c, j <= i -- the last c cells of every block
    head=None: the union A1_i | A2_i.
    (j mod l never equals l, so head 2 sees the c positions l-c, ..., l-1 of each block.) The paper
    uses c in {8, 16, 32} for l in {128, 256}. Head 2 alone leaves the early rows empty (query 0
    sees no summary cell when c < l): it is meant to be combined with head 1, as in the paper.
    """
    _check_positive("stride", stride)
    _check_positive("c", c)
    if c > stride:
        raise ValueError(f"c (summary cells per block) = {c} must be <= stride = {stride}")
    i, j = _grid(T, device)
    causal = j <= i
    a1 = causal & (j // stride == i // stride)
    a2 = causal & (j % stride >= stride - c)
    return _pick_head(a1, a2, head)


def _pick_head(a1: torch.Tensor, a2: torch.Tensor, head: int | None) -> torch.Tensor:
    if head is None:
        return a1 | a2
    if head == 1:
        return a1
    if head == 2:
        return a2
    raise ValueError(f"head must be 1, 2 or None (the union of both), got {head!r}")


def block_sparse_mask(
    T: int,
    block: int,
    global_tokens: int | Sequence[int] = 1,
    local_blocks: int = 1,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Block-sparse attention: local blocks plus global tokens (as in Longformer / BigBird, causal).

    The sequence is cut into blocks of ``block`` tokens. Query i sees, causally (j <= i):
      - local: the keys of its own block and of the ``local_blocks - 1`` blocks before it;
      - global columns: every global token (all later queries attend to it);
      - global rows: a global token attends to everything before it.
    ``global_tokens`` is a count (the first g positions) or an explicit list of positions.
    """
    _check_positive("block", block)
    _check_positive("local_blocks", local_blocks)
    i, j = _grid(T, device)
    if isinstance(global_tokens, int):
        if global_tokens < 0:
            raise ValueError(f"global_tokens must be >= 0 or a list of positions, got {global_tokens}")
        is_global = torch.arange(T, device=device) < global_tokens
    else:
        positions = torch.as_tensor(list(global_tokens), dtype=torch.long)
        if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= T):
            raise ValueError(f"global token positions must lie in [0, {T}), got {positions.tolist()}")
        is_global = torch.zeros(T, dtype=torch.bool, device=device)
        is_global[positions.to(is_global.device)] = True
    causal = j <= i
    local = (i // block - j // block) < local_blocks
    return causal & (local | is_global[None, :] | is_global[:, None])


# name -> (builder, default parameters) for widgets and ``make_mask``.
MASKS = {
    "full": (full_causal_mask, {}),
    "window": (sliding_window_mask, {"window": 8}),
    "sinks": (sinks_window_mask, {"window": 8, "sinks": 4}),
    "strided": (strided_mask, {"stride": 8}),
    "fixed": (fixed_mask, {"stride": 8, "c": 2}),
    "block_sparse": (block_sparse_mask, {"block": 8, "global_tokens": 1}),
}


def make_mask(name: str, T: int, **params) -> torch.Tensor:
    """Build a pattern by name (``"full"``, ``"window"``, ``"sinks"``, ``"strided"``, ``"fixed"``,
    ``"block_sparse"``); missing parameters take the defaults of ``MASKS``."""
    if name not in MASKS:
        raise ValueError(f"unknown mask {name!r}: choose one of {', '.join(MASKS)}")
    builder, defaults = MASKS[name]
    return builder(T, **{**defaults, **params})


def attended_pairs(mask: torch.Tensor) -> int:
    """Number of (query, key) pairs a mask lets attend: the work of an ideal sparse kernel."""
    return int(mask.sum())


def check_mask(mask: torch.Tensor) -> None:
    """Raise ValueError unless ``mask`` is a square bool (T, T) mask, causal, with no empty row.

    An empty row would make softmax divide by zero (NaN outputs) for that query.
    """
    if mask.dtype != torch.bool or mask.dim() != 2 or mask.size(0) != mask.size(1):
        raise ValueError(f"expected a (T, T) bool mask, got dtype {mask.dtype} and shape {tuple(mask.shape)}")
    if (mask & ~full_causal_mask(mask.size(0), mask.device)).any():
        raise ValueError("mask lets a query attend to a future key (j > i): intersect it with full_causal_mask")
    empty = (~mask.any(dim=1)).nonzero().flatten()
    if empty.numel():
        raise ValueError(
            f"mask rows {empty[:8].tolist()} attend to nothing (softmax would give NaN): "
            "add the diagonal (mask | torch.eye(T, dtype=torch.bool)) or combine heads"
        )


def mask_picture(mask: torch.Tensor, ax=None, title: str | None = None):
    """Draw a mask as an image (rows = queries i, columns = keys j, dark = attended) on ``ax``.

    Returns the axes. The title defaults to the number of attended pairs vs full causal attention.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(3.2, 3.2))
    T = mask.size(0)
    ax.imshow(mask.detach().cpu().numpy(), cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xlabel("key position j")
    ax.set_ylabel("query position i")
    if title is None:
        pairs = attended_pairs(mask)
        title = f"{pairs} pairs ({pairs / (T * (T + 1) / 2):.0%} of causal)"
    ax.set_title(title, fontsize=9)
    return ax
