"""A modern decoder-only transformer (the Llama recipe at toy size), in the spirit of nanoGPT.

    x = Embed(idx)                                  # (B, T, C)
    for each block:                                 # pre-norm residual blocks
        x = x + Attention(RMSNorm(x))               # causal multi-head attention with RoPE
        x = x + SwiGLU(RMSNorm(x))                  # W2(SiLU(W1 x) * W3 x)
    logits = Head(RMSNorm(x))                       # (B, T, V)

Conventions that differ between references are explicit here:
  - RoPE rotates *interleaved* pairs (x[2i], x[2i+1]) as in the RoFormer paper (Su et al. 2021,
    eq. 34); ``rope_pairing="half"`` gives the GPT-NeoX / Hugging Face Llama pairing (x[i], x[i+d/2]).
  - Attention masks are boolean with ``True = may attend`` (PyTorch's SDPA polarity).
  - Linear weights are stored (out_features, in_features), PyTorch's layout.
  - ``n_kv_heads`` < ``n_heads`` gives grouped-query attention (Ainslie et al. 2023): query head h
    uses key/value head h // (n_heads / n_kv_heads), as Hugging Face's ``repeat_kv``; unset, it is
    ``n_heads`` (multi-head attention, the same weights and numbers as before GQA existed).
  - ``parametrization="mup"`` (with ``base_width``) gives μP's init, attention scale and readout
    multiplier instead of the standard ones: the rules and their reasons are in ``minilm.mup``.

This file is the reference: RMSNorm, RoPE, SwiGLU and attention written as their papers'
formulas and differentiated by autograd. The same layers with hand-derived backward passes live
in ``minilm.kernels``; ``GPTConfig.kernels`` picks one or the other (in ``_kernels``, the only
place that reads it), and ``tests/test_kernels.py`` holds the two equal.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from minilm import kernels as fast_kernels
from minilm import mup
from minilm.models.base import LanguageModel
from minilm.models.kv_cache import KVCache


@dataclass
class GPTConfig:
    """Shape and options of a GPT. Checked on creation: a wrong value raises ``ValueError``."""

    vocab_size: int
    context_length: int = 64
    n_layers: int = 4
    n_heads: int = 4
    d_model: int = 128
    n_kv_heads: int | None = None  # key/value heads (grouped-query attention); None -> n_heads
    d_ff: int | None = None  # SwiGLU hidden size; None -> 8/3 * d_model rounded up to a multiple of 8
    tie_embeddings: bool = False
    attn_impl: str = "sdpa"  # "sdpa" (fast, F.scaled_dot_product_attention) or "explicit" (readable)
    rope_base: float = 10000.0
    rope_pairing: str = "interleaved"  # "interleaved" (RoFormer) or "half" (GPT-NeoX / HF Llama)
    norm_eps: float = 1e-5
    dropout: float = 0.0
    init_std: float = 0.02
    kernels: str = "fast"  # "fast" (minilm.kernels, hand-derived backwards) or "reference" (this file)
    parametrization: str = "standard"  # "standard" (SP) or "mup" (μP: init, lrs and multipliers of minilm.mup)
    base_width: int | None = None  # μP's base d_model: width_mult = d_model / base_width (unused by "standard")

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "n_layers", "n_heads", "d_model"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"GPTConfig.d_model={self.d_model} is not divisible by n_heads={self.n_heads}: "
                f"choose d_model as a multiple of n_heads, or another n_heads"
            )
        if (self.d_model // self.n_heads) % 2 != 0:
            raise ValueError(
                f"GPTConfig: head size d_model/n_heads = {self.d_model // self.n_heads} must be even "
                "for rotary embeddings (they rotate pairs of channels): change d_model or n_heads"
            )
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        elif not isinstance(self.n_kv_heads, int) or self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"GPTConfig.n_kv_heads must be a positive integer dividing n_heads={self.n_heads} (each key/value "
                f"head serves n_heads / n_kv_heads query heads), or None for n_heads; got {self.n_kv_heads!r}"
            )
        if self.d_ff is None:
            self.d_ff = 8 * math.ceil(8 * self.d_model / 3 / 8)
        elif not isinstance(self.d_ff, int) or self.d_ff < 1:
            raise ValueError(f"GPTConfig.d_ff must be a positive integer or None, got {self.d_ff!r}")
        if self.attn_impl not in ("sdpa", "explicit"):
            raise ValueError(f"GPTConfig.attn_impl must be 'sdpa' or 'explicit', got {self.attn_impl!r}")
        if self.rope_pairing not in ("interleaved", "half"):
            raise ValueError(
                f"GPTConfig.rope_pairing must be 'interleaved' or 'half', got {self.rope_pairing!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.kernels not in ("fast", "reference"):
            raise ValueError(
                f"GPTConfig.kernels must be 'fast' (minilm.kernels) or 'reference' (the formulas of "
                f"minilm.models.gpt), got {self.kernels!r}"
            )
        mup.check_config(self.parametrization, self.base_width, self.tie_embeddings)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def width_mult(self) -> float:
        """μP's width multiplier d_model / base_width; 1.0 under the standard parametrization."""
        return self.d_model / self.base_width if self.parametrization == "mup" else 1.0


# ------------------------------------------------------------------------------------ RMSNorm
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm (Zhang & Sennrich 2019, eq. 4): y = x / sqrt(mean(x^2) + eps) * g. No mean, no bias.

    x: (..., C), weight g: (C,); the mean is over the C features of each row.
    """
    xf = x.to(torch.promote_types(x.dtype, torch.float32))  # statistics in float32, even under bf16
    rms = torch.sqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)  # (..., 1)
    return (xf / rms * weight).type_as(x)  # (..., C)


class RMSNorm(nn.Module):
    """RMSNorm with a learned gain g (C,), initialised to 1.

    ``kernel`` computes it: ``rms_norm`` above (the default), or a function with the same
    signature and math, e.g. ``minilm.kernels.rms_norm``.
    """

    def __init__(self, dim: int, eps: float = 1e-5, kernel: Callable[..., torch.Tensor] = rms_norm):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel(x, self.weight, self.eps)  # (..., C)


# --------------------------------------------------------------------------------------- RoPE
def rope_angles(
    positions: torch.Tensor, head_dim: int, base: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles m * theta_i, theta_i = base^(-2i/d) (RoFormer eq. 15).

    positions: (T,) integer positions m. Returns cos, sin of shape (T, head_dim // 2).
    """
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # (T, d/2)
    return angles.cos(), angles.sin()


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str = "interleaved"
) -> torch.Tensor:
    """Rotate each pair of channels of x (..., T, d) by the angles given as cos/sin (T, d/2).

    cos/sin only need to broadcast against x's pairs: (T, 1, d/2) rotates x of shape (B, T, H, d).

    pairing="interleaved": pairs (x[2i], x[2i+1])   -- RoFormer paper, Meta's original Llama code.
    pairing="half":        pairs (x[i], x[i + d/2]) -- GPT-NeoX, Hugging Face Llama.
    Each pair (a, b) becomes (a cos - b sin, a sin + b cos).
    """
    if pairing not in ("interleaved", "half"):
        raise ValueError(f"pairing must be 'interleaved' or 'half', got {pairing!r}")
    if pairing == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]  # (..., T, d/2) each: the pairs (x[2i], x[2i+1])
    else:
        a, b = x.chunk(2, dim=-1)  # (..., T, d/2) each: the pairs (x[i], x[i + d/2])
    # RoFormer eq. 34: each pair is rotated by its angle m * theta_i.
    ra = a * cos - b * sin  # (..., T, d/2)
    rb = a * sin + b * cos  # (..., T, d/2)
    if pairing == "interleaved":
        return torch.stack([ra, rb], dim=-1).flatten(-2).type_as(x)  # (..., T, d): a0 b0 a1 b1 ...
    return torch.cat([ra, rb], dim=-1).type_as(x)  # (..., T, d): a0 a1 ... b0 b1 ...


# ------------------------------------------------------------------------------- kernel choice
class _Kernels(NamedTuple):
    rms_norm: Callable[..., torch.Tensor]  # (x, weight, eps) -> y
    apply_rope: Callable[..., torch.Tensor]  # (x, cos, sin, pairing) -> rotated x


def _kernels(cfg: GPTConfig) -> _Kernels:
    """The functions the layers call, picked once when a layer is built: the only reader of
    ``cfg.kernels``. "reference": the formulas of this file; "fast": ``minilm.kernels``."""
    if cfg.kernels == "fast":
        return _Kernels(fast_kernels.rms_norm, fast_kernels.apply_rope)
    return _Kernels(rms_norm, apply_rope)


# ---------------------------------------------------------------------------------- attention
def causal_mask(T: int, device: torch.device | None = None) -> torch.Tensor:
    """(T, T) boolean mask, True where query i may attend to key j, i.e. j <= i."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, dropout_p: float = 0.0,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d) with disallowed pairs at -inf) v, written out step by step.

    q: (B, H, Tq, d), k and v: (B, H, Tk, d), allowed: (Tq, Tk) bool, True = may attend.
    dropout_p: zero each attention probability with this probability and scale the others by
    1 / (1 - p) (inverted dropout on the weights, as SDPA does). scale: multiplies q k^T instead
    of 1 / sqrt(d) (None), as SDPA's ``scale=`` (μP uses sqrt(d0) / d, see ``minilm.mup``).
    Returns the output (B, H, Tq, d) and the attention weights (B, H, Tq, Tk) that multiplied v
    (after dropout, if any).
    """
    scores = q @ k.transpose(-2, -1)  # (B, H, Tq, Tk)
    scores = scores / math.sqrt(q.size(-1)) if scale is None else scores * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).type_as(q)
    if dropout_p > 0.0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v, weights


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with rotary positions (Vaswani et al. 2017; Su et al. 2021)."""

    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        # q, k and v projections in one (C + 2 Ckv, C) matrix: one matmul instead of three (as
        # nanoGPT); Ckv = n_kv_heads * hd, so (3C, C) for multi-head attention.
        self.kv_dim = cfg.n_kv_heads * cfg.head_dim
        self.wqkv = nn.Linear(cfg.d_model, cfg.d_model + 2 * self.kv_dim, bias=False)
        self.wo = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.rope = _kernels(cfg).apply_rope
        self.scale = None  # scores * scale; None: SP's 1/sqrt(hd)
        if cfg.parametrization == "mup":  # μP's 1/d attention, sqrt(d0)/hd with d0 the base head size
            self.scale = mup.attention_scale(cfg.head_dim, cfg.base_width / cfg.n_heads)

    def forward(
        self,
        x: torch.Tensor,
        rope_q: tuple[torch.Tensor, torch.Tensor],
        rope_k: tuple[torch.Tensor, torch.Tensor],
        allowed: torch.Tensor | None,
        cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, C) -> (B, T, C).

        rope_q / rope_k: (cos, sin) of shape (T, hd/2) and (Tk, hd/2) for queries and keys.
        allowed: (T, Tk) bool, True = may attend; None means plain causal attention.
        """
        B, T, C = x.shape
        H, Hkv, hd, pairing = self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim, self.cfg.rope_pairing
        q, k, v = self.wqkv(x).split([C, self.kv_dim, self.kv_dim], dim=-1)  # (B, T, C), (B, T, Ckv) x 2
        q, k, v = q.view(B, T, H, hd), k.view(B, T, Hkv, hd), v.view(B, T, Hkv, hd)
        # Rotate while the heads are still side by side: the angles (T, hd/2) broadcast over heads
        # as (T, 1, hd/2), and the gradients flow back in qkv's own layout (faster than rotating
        # the transposed (B, H, T, hd) views).
        q = self.rope(q, rope_q[0][:, None], rope_q[1][:, None], pairing).transpose(1, 2)  # (B, H, T, hd)
        v = v.transpose(1, 2)  # (B, Hkv, T, hd); keys likewise below: the cache stores Hkv heads only
        if cache is None:
            k = self.rope(k, rope_k[0][:, None], rope_k[1][:, None], pairing).transpose(1, 2)
        else:  # the cache stores the new keys and values and returns all of them, keys rotated (at rope_k)
            k, v = cache.update(self.layer, k.transpose(1, 2), v, lambda x: self.rope(x, *rope_k, pairing))

        if Hkv != H:  # GQA: query head h reads key/value head h // (H / Hkv) (HF's repeat_kv)
            k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)  # (B, H, Tk, hd)
        y, weights = self.attend(q, k, v, allowed, need_weights)  # (B, H, T, hd)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads side by side again
        return self.wo(y), weights

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """softmax(q k^T * scale) v: q (B, H, T, hd), k and v (B, H, Tk, hd) -> (B, H, T, hd).

        scale = 1/sqrt(hd) (SP) or μP's sqrt(d0)/hd (``self.scale``), on every path (explicit,
        SDPA, with or without a KV cache).

        Explicit (returns the weights) or SDPA (fused, no weights) as ``cfg.attn_impl`` says. In
        training mode both drop attention probabilities with p = ``cfg.dropout`` (inverted
        dropout, as nanoGPT does); in eval mode both are exact.
        """
        p = self.cfg.dropout if self.training else 0.0
        if self.cfg.attn_impl == "explicit" or need_weights:
            mask = allowed if allowed is not None else causal_mask(q.size(-2), q.device)
            return explicit_attention(q, k, v, mask, dropout_p=p, scale=self.scale)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p, is_causal=allowed is None,
                                           scale=self.scale)
        return y, None


class SwiGLU(nn.Module):
    """Feed-forward W2(SiLU(W1 x) * W3 x) (Shazeer 2020, "GLU Variants Improve Transformer")."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.w3 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.w2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        norm = _kernels(cfg).rms_norm
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, kernel=norm)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, kernel=norm)
        self.ffn = SwiGLU(cfg)

    def forward(self, x, rope_q, rope_k, allowed, cache=None, need_weights=False):
        a, w = self.attn(self.attn_norm(x), rope_q, rope_k, allowed, cache, need_weights)
        x = x + a
        x = x + self.ffn(self.ffn_norm(x))
        return x, w


# ---------------------------------------------------------------------------------------- GPT
class GPT(LanguageModel):
    """Decoder-only transformer: ``GPT(GPTConfig(vocab_size=65))(idx) -> logits``."""

    model_type = "gpt"

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise ValueError(f"GPT needs a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.context_length = config.context_length
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps, kernel=_kernels(config).rms_norm)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections keeps the residual stream's variance
        # from growing with depth.
        for name, p in self.named_parameters():
            if name.endswith("wo.weight") or name.endswith("w2.weight"):
                nn.init.normal_(p, mean=0.0, std=config.init_std / math.sqrt(2 * config.n_layers))
        self.readout_mult = None  # logits * readout_mult; None: SP, no multiplier
        if config.parametrization == "mup":  # μP (minilm.mup): rescaled init, logits / width_mult
            self._mup_init()
            self.readout_mult = mup.readout_multiplier(config.width_mult)

    @torch.no_grad()
    def _mup_init(self) -> None:
        """SP's init rescaled to μP's (the table in ``minilm.mup``): hidden matrices' std times
        1/sqrt(width_mult), the readout and the query rows of every wqkv at 0."""
        for name, p in self.named_parameters():
            p.mul_(mup.mup_init_scale(mup.parameter_kind(name, p), self.config.width_mult))
        for block in self.blocks:
            block.attn.wqkv.weight[: self.config.d_model].zero_()  # q rows: attention starts uniform

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [self.tok_emb.weight]

    def forward(
        self,
        idx: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        need_weights: bool = False,
    ):
        """idx (B, T) -> logits (B, T, V).

        attn_mask: optional (T, T) bool mask, True = may attend (e.g. from ``minilm.attention``);
        default is full causal attention. cache: a ``KVCache`` for incremental decoding.
        need_weights: also return the list of per-layer attention weights (B, H, T, Tk).
        """
        self.check_tokens(idx)
        B, T = idx.shape
        if cache is None and T > self.config.context_length:
            raise ValueError(
                f"sequence length {T} exceeds context_length={self.config.context_length}: "
                "crop the input or build the model with a larger context_length"
            )
        if attn_mask is not None and tuple(attn_mask.shape) != (T, T if cache is None else len(cache) + T):
            raise ValueError(f"attn_mask must have shape (T, T) = ({T}, {T}), got {tuple(attn_mask.shape)}")
        # Positions, rotary angles and the mask are the same for every layer: compute them once.
        hd, base = self.config.head_dim, self.config.rope_base
        if cache is None:
            q_pos = torch.arange(T, device=idx.device)
            rope_q = rope_k = rope_angles(q_pos, hd, base)
        else:
            cache.begin(T, idx.device)  # make room for T new tokens
            rq, rk = cache.rope_positions()  # RoPE positions of the queries, and of the keys to rotate
            rope_q, rope_k = rope_angles(rq, hd, base), rope_angles(rk, hd, base)
            if attn_mask is None:  # causality by absolute position, also for an evicting cache
                attn_mask = cache.causal_mask()  # (T, Tk)
        if attn_mask is not None:
            attn_mask = attn_mask.to(device=idx.device, dtype=torch.bool)
        x = self.drop(self.tok_emb(idx))  # (B, T, C)
        weights = []
        for block in self.blocks:
            x, w = block(x, rope_q, rope_k, attn_mask, cache, need_weights)
            weights.append(w)
        if cache is not None:
            cache.commit()
        logits = self.head(self.norm(x))  # (B, T, V)
        if self.readout_mult is not None:
            logits = logits * self.readout_mult  # μP: logits / width_mult
        return (logits, weights) if need_weights else logits

    def _next_logits(self, idx, state):
        # Incremental decoding with a KV cache: feed the prompt once, then one token per step.
        # Past the context length the cache is restarted on the last context_length tokens
        # (the same window the model was trained on).
        if state is None or len(state) >= self.config.context_length:
            state = KVCache(self.config.n_layers, max_length=self.config.context_length)
            logits = self(idx[:, -self.config.context_length :], cache=state)
        else:
            logits = self(idx[:, -1:], cache=state)
        return logits[:, -1, :], state

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6N + 6 * n_layers * n_ctx * d_model, n_ctx = ``seq_len``
        (None: ``context_length``), the length of the sequences trained on.

        Kaplan et al. (2020, Table 1): a forward pass costs 2N (one multiply-add per weight)
        plus 2 * n_layers * n_ctx * d_model for the attention scores and their weighted sum;
        backward costs twice the forward, hence the factor 3 -> 6N + 6 * n_layers * n_ctx * d.
        N counts non-embedding parameters plus the output head (a real matmul per token).
        """
        c = self.config
        T = c.context_length if seq_len is None else seq_len
        if not isinstance(T, numbers.Integral) or isinstance(T, bool) or not 1 <= T <= c.context_length:
            raise ValueError(f"seq_len must be None or an integer in [1, context_length={c.context_length}], "
                             f"got {seq_len!r}")
        n = self.num_params(non_embedding=True)
        if c.tie_embeddings:  # the shared matrix still costs a matmul in the head
            n += c.vocab_size * c.d_model
        return 6.0 * n + 6.0 * c.n_layers * T * c.d_model
