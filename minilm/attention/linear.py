"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs").

Replace softmax's similarity exp(q.k) by a kernel phi(q).phi(k) with phi(x) = elu(x) + 1 (eq. 7).
Causal attention then factorises (eq. 9 with the causal sums of sec. 3.3):

    out_i = phi(q_i)^T S_i / (phi(q_i)^T z_i),    S_i = sum_{j<=i} phi(k_j) v_j^T,  z_i = sum_{j<=i} phi(k_j)

Computed in parallel over time (three ways below) or as an RNN whose state (S, z) has a fixed size
d x d_v + d, updated once per token (eqs. 18-20): that is why generation costs O(1) per token.

Shapes: q, k (B, H, T, d), v (B, H, T, dv); outputs (B, H, T, dv). All forms add the same
``eps`` to the denominator (as the authors' code does), so they agree to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "LinearAttention",
    "elu_feature_map",
    "linear_attention",
    "linear_attention_recurrent",
    "linear_attention_step",
]


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1 > 0 (Katharopoulos et al. 2020, eq. 7)."""
    return F.elu(x) + 1.0


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    method: str = "chunked",
    chunk_size: int = 64,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Causal linear attention, parallel over time.

    method="masked":  (phi(Q) phi(K)^T * causal) V -- the attention-like form, O(T^2 d) (for checking)
    method="cumsum":  S_i, z_i as cumulative sums of phi(k_j) v_j^T -- O(T d dv) time and memory
    method="chunked": masked form inside chunks of ``chunk_size`` plus the running state between
                      chunks -- O(T c d + T d dv), little memory: the practical one.
    """
    fq, fk = elu_feature_map(q), elu_feature_map(k)
    T = q.size(-2)
    if method == "masked":
        causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        a = (fq @ fk.transpose(-2, -1)).masked_fill(~causal, 0.0)  # (B, H, T, T) kernel scores
        return (a @ v) / (a.sum(-1, keepdim=True) + eps)
    if method == "cumsum":
        S = torch.einsum("bhtd,bhte->bhtde", fk, v).cumsum(dim=2)  # (B, H, T, d, dv): S_i
        z = fk.cumsum(dim=2)  # (B, H, T, d): z_i
        num = torch.einsum("bhtd,bhtde->bhte", fq, S)
        return num / ((fq * z).sum(-1, keepdim=True) + eps)
    if method == "chunked":
        return _chunked(fq, fk, v, chunk_size, eps)
    raise ValueError(f"method must be 'masked', 'cumsum' or 'chunked', got {method!r}")


def _chunked(fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor, c: int, eps: float) -> torch.Tensor:
    if not isinstance(c, int) or c < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {c!r}")
    B, H, T, d = fq.shape
    pad = (-T) % c  # padded positions come last, so causality keeps them out of real outputs
    fq, fk, v = (F.pad(t, (0, 0, 0, pad)) for t in (fq, fk, v))
    n = (T + pad) // c
    fq, fk, v = (t.view(B, H, n, c, t.size(-1)) for t in (fq, fk, v))  # (B, H, n, c, .)
    # Within a chunk: the masked (attention-like) form.
    causal = torch.ones(c, c, dtype=torch.bool, device=fq.device).tril()
    a = (fq @ fk.transpose(-2, -1)).masked_fill(~causal, 0.0)  # (B, H, n, c, c)
    num, den = a @ v, a.sum(-1, keepdim=True)
    # Between chunks: the state accumulated over all *earlier* chunks (exclusive cumulative sum).
    S_chunk = fk.transpose(-2, -1) @ v  # (B, H, n, d, dv)
    z_chunk = fk.sum(dim=3)  # (B, H, n, d)
    S_prev = S_chunk.cumsum(dim=2) - S_chunk
    z_prev = z_chunk.cumsum(dim=2) - z_chunk
    num = num + fq @ S_prev
    den = den + fq @ z_prev.unsqueeze(-1)
    out = num / (den + eps)  # (B, H, n, c, dv)
    return out.reshape(B, H, n * c, -1)[:, :, :T]


def linear_attention_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor] | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One RNN step (eqs. 18-20): q_t, k_t (B, H, d), v_t (B, H, dv) -> out_t (B, H, dv), new (S, z).

    S_t = S_{t-1} + phi(k_t) v_t^T   (B, H, d, dv);   z_t = z_{t-1} + phi(k_t)   (B, H, d).
    """
    fq, fk = elu_feature_map(q_t), elu_feature_map(k_t)
    if state is None:
        S = fk.new_zeros(*fk.shape, v_t.size(-1))
        z = torch.zeros_like(fk)
    else:
        S, z = state
    S = S + fk.unsqueeze(-1) * v_t.unsqueeze(-2)
    z = z + fk
    num = (fq.unsqueeze(-2) @ S).squeeze(-2)  # (B, H, dv)
    den = (fq * z).sum(-1, keepdim=True)
    return num / (den + eps), (S, z)


def linear_attention_recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Causal linear attention as an RNN: a Python loop of ``linear_attention_step`` over time."""
    state = None
    outs = []
    for t in range(q.size(-2)):
        out_t, state = linear_attention_step(q[:, :, t], k[:, :, t], v[:, :, t], state, eps)
        outs.append(out_t)
    return torch.stack(outs, dim=2)  # (B, H, T, dv)


class LinearAttention(nn.Module):
    """Multi-head causal linear attention layer x (B, T, C) -> (B, T, C), a drop-in for timing.

    ``forward`` runs the parallel form (``method``); ``step`` the recurrent one, one token at a
    time with a state of fixed size n_heads * (d_head^2 + d_head) numbers.
    """

    def __init__(self, d_model: int, n_heads: int, method: str = "chunked", chunk_size: int = 64):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads, self.method, self.chunk_size = n_heads, method, chunk_size
        self.wqkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.wo = nn.Linear(d_model, d_model, bias=False)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        qkv = self.wqkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]  # each (B, H, T, hd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self._qkv(x)
        y = linear_attention(q, k, v, method=self.method, chunk_size=self.chunk_size)
        return self.wo(y.transpose(1, 2).reshape(B, T, C))

    def step(self, x_t: torch.Tensor, state=None):
        """x_t (B, C) -> (y_t (B, C), state): one token of generation, O(1) in the position."""
        q, k, v = self._qkv(x_t.unsqueeze(1))
        y, state = linear_attention_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], state)
        return self.wo(y.reshape(x_t.shape)), state
