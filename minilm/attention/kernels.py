"""Softmax attention kernels: masked (explicit or SDPA) and a banded sliding-window kernel.

A mask only *hides* pairs: explicit attention and SDPA with a mask still compute all T x T scores,
so a sliding-window mask costs as much as full attention. ``window_attention`` computes only the
blocks of scores next to the diagonal (T x 2w of them), so its cost really grows linearly with T.

Shapes: q, k, v are (B, H, T, d); masks are (T, T) bool with True = may attend.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from minilm.attention.masks import full_causal_mask
from minilm.models.gpt import explicit_attention

__all__ = ["SoftmaxAttention", "masked_attention", "window_attention"]


def masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, impl: str = "explicit"
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d), restricted to ``mask``) v; mask None means full causal.

    impl="explicit": written out (materialises the (B, H, T, T) scores; the GPT's own code);
    impl="sdpa": ``F.scaled_dot_product_attention`` (fused; without a mask it uses ``is_causal``).
    """
    if mask is not None:
        mask = mask.to(device=q.device, dtype=torch.bool)  # masks are built on the CPU by minilm.attention.masks
    if impl == "explicit":
        allowed = full_causal_mask(q.size(-2), q.device) if mask is None else mask
        return explicit_attention(q, k, v, allowed)[0]
    if impl == "sdpa":
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    raise ValueError(f"impl must be 'explicit' or 'sdpa', got {impl!r}")


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Causal sliding-window attention computing only blocks near the diagonal: O(T * w * d).

    Query i attends to keys i - w + 1, ..., i (those >= 0), exactly ``sliding_window_mask(T, w)``.
    Queries are cut into blocks of w; the keys any query of block b can need lie in blocks b - 1
    and b, so each block does one (w x 2w) matmul (Longformer-style "chunked" band, Beltagy et al.
    2020): twice the band's ideal work, but big BLAS calls instead of T tiny ones.
    """
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    B, H, T, d = q.shape
    w = window
    pad = (-T) % w  # extra queries at the end; dropped from the output
    q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    nb = (T + pad) // w
    qb = q.view(B, H, nb, w, d)  # (B, H, nb, w, d): query blocks
    kb, vb = (F.pad(t, (0, 0, w, 0)).view(B, H, nb + 1, w, d) for t in (k, v))  # a zero block in front
    k2 = torch.cat([kb[:, :, :-1], kb[:, :, 1:]], dim=3)  # (B, H, nb, 2w, d): blocks b-1 and b
    v2 = torch.cat([vb[:, :, :-1], vb[:, :, 1:]], dim=3)
    scores = qb @ k2.transpose(-2, -1) / math.sqrt(d)  # (B, H, nb, w, 2w)
    # Query offset a (position b*w + a) and key slot c (position (b-1)*w + c): distance w + a - c.
    a = torch.arange(w, device=q.device)[:, None]
    c = torch.arange(2 * w, device=q.device)[None, :]
    allowed = (c > a) & (c <= a + w)  # 0 <= distance < w
    first = torch.zeros(nb, 1, 1, dtype=torch.bool, device=q.device)
    first[0] = True  # block 0: slots c < w are the zero padding before position 0
    allowed = allowed & ~(first & (c < w))  # (nb, w, 2w)
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).type_as(q)
    return (weights @ v2).reshape(B, H, nb * w, d)[:, :, :T]


class SoftmaxAttention(nn.Module):
    """A multi-head softmax attention layer x (B, T, C) -> (B, T, C), for timing and comparisons.

    impl: "explicit" (full, materialised scores), "sdpa" (full, fused kernel), "window" (banded
    kernel, needs ``window``) or "mask" (explicit with a given ``mask`` (T, T) at call time).
    No positional encoding: the layer is the attention core only, like ``LinearAttention``.
    """

    def __init__(self, d_model: int, n_heads: int, impl: str = "sdpa", window: int | None = None):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if impl not in ("explicit", "sdpa", "window", "mask"):
            raise ValueError(f"impl must be 'explicit', 'sdpa', 'window' or 'mask', got {impl!r}")
        if impl == "window" and window is None:
            raise ValueError("impl='window' needs a window size: SoftmaxAttention(..., window=64)")
        self.n_heads, self.impl, self.window = n_heads, impl, window
        self.wqkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.wo = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.wqkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        if self.impl == "window":
            y = window_attention(q, k, v, self.window)
        elif self.impl == "mask":
            y = masked_attention(q, k, v, mask, impl="explicit")
        else:
            y = masked_attention(q, k, v, None, impl=self.impl)
        return self.wo(y.transpose(1, 2).reshape(B, T, C))
