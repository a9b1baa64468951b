"""RWKV-4 (Peng et al. 2023, "RWKV: Reinventing RNNs for the Transformer Era"), at toy size.

    x = ln0(Emb(idx))                               # block 0 only: an extra LayerNorm on the embedding
    for each block:                                 # pre-LayerNorm residual blocks (eps 1e-5)
        x = x + TimeMix(ln1(x))                     # token shift, r k v, WKV, W_o(sigmoid(r) * wkv)
        x = x + ChannelMix(ln2(x))                  # sigmoid(W_r mix_r) * W_v relu(W_k mix_k)^2
    logits = head(ln_out(x))                        # (B, T, V); no biases in any Linear

Token shift ("time mixing" of the previous token): mix = mu * x_t + (1 - mu) * x_{t-1}, with mu a
learned per-channel weight on the *current* token and zeros before the first token.

The WKV operator (paper eq. 14), per channel, with decay w = exp(time_decay) > 0 and bonus
u = time_first:

    wkv_t = (sum_{i<t} e^{-(t-1-i) w + k_i} v_i  +  e^{u + k_t} v_t)
          / (sum_{i<t} e^{-(t-1-i) w + k_i}      +  e^{u + k_t})

It is computed in two ways from the same weights:
  - parallel (training): a masked (T, T) matrix of exponents per channel, stabilised by
    subtracting each row's maximum before exponentiating -- the same trick as a safe softmax.
    Long sequences are cut into chunks of ``chunk_size`` tokens; the state carries the history
    from one chunk to the next, so memory is B * chunk_size^2 * C numbers, not B * T^2 * C
    (``chunk_size=None``: the whole (T, T) matrix at once).
  - recurrent (inference): a fixed-size state per layer updated one token at a time. The sums
    are kept as (aa, bb, pp) with  numerator = aa * e^pp  and  denominator = bb * e^pp, where
    pp is the running maximum exponent, so e^k never overflows however large the keys
    (the reference implementation's RWKV_RNN, RWKV-LM ``RWKV-v4/src/model_run.py``).

State of one layer: (x_prev_att, aa, bb, pp, x_prev_ffn), each (B, C): constant memory per
token, however long the context. ``generate`` feeds the prompt once and then one token per step.

The parameter names are those of RWKV-LM's RWKV-4 checkpoints (``emb.weight``,
``blocks.{i}.att.time_decay``, ...), so ``state_dict_rwkv4`` / ``load_rwkv4`` read and write
official ``.pth`` files. Note ``time_decay`` holds log w: the state decays by exp(-exp(time_decay))
per step.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn

from minilm.atomic import atomic_open
from minilm.models.base import LanguageModel

# A finite stand-in for -infinity as the initial running max: exp(_NEG_INF - p) is exactly 0, and
# unlike -inf it never produces inf - inf = nan. (The reference uses -1e30.)
_NEG_INF = -1e38


@dataclass
class RWKVConfig:
    """Shape and options of an RWKV-4 model. Checked on creation: a wrong value raises ``ValueError``."""

    vocab_size: int
    n_layers: int = 4
    d_model: int = 128
    d_ff: int | None = None  # channel-mixing hidden size; None -> 4 * d_model as in RWKV-4
    context_length: int | None = None  # training window only (the model itself reads any length)
    chunk_size: int | None = 16  # parallel WKV chunk length (16 is fastest on CPU); None = all T at once
    wkv_mode: str = "parallel"  # how forward() computes WKV by default: "parallel" or "recurrent"
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layers", "d_model"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"RWKVConfig.{name} must be a positive integer, got {value!r}")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        elif not isinstance(self.d_ff, int) or self.d_ff < 1:
            raise ValueError(f"RWKVConfig.d_ff must be a positive integer or None, got {self.d_ff!r}")
        for name in ("context_length", "chunk_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"RWKVConfig.{name} must be a positive integer or None, got {value!r}")
        if self.wkv_mode not in ("parallel", "recurrent"):
            raise ValueError(f"RWKVConfig.wkv_mode must be 'parallel' or 'recurrent', got {self.wkv_mode!r}")


class LayerState(NamedTuple):
    """Recurrent state of one block; every field is (B, C)."""

    x_att: torch.Tensor  # last normalised input of time mixing (for the token shift)
    aa: torch.Tensor  # WKV numerator   / e^pp
    bb: torch.Tensor  # WKV denominator / e^pp
    pp: torch.Tensor  # running maximum exponent
    x_ffn: torch.Tensor  # last normalised input of channel mixing


# -------------------------------------------------------------------------------------- WKV
def wkv_recurrent(
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """WKV one token at a time with the running-max state (aa, bb, pp).

    w: (C,) positive decay rate, u: (C,) bonus, k and v: (B, T, C); state: (aa, bb, pp), each
    (B, C), or None for an empty history. Returns wkv (B, T, C) and the state after the last token.
    """
    B, T, C = k.shape
    aa, bb, pp = state if state is not None else _empty_wkv_state(B, C, k)
    out = []
    for t in range(T):
        kt, vt = k[:, t], v[:, t]
        # output: the stored past plus the current token with its bonus u (eq. 14)
        ww = u + kt
        p = torch.maximum(pp, ww)
        e_past, e_now = torch.exp(pp - p), torch.exp(ww - p)
        out.append((e_past * aa + e_now * vt) / (e_past * bb + e_now))
        # next state: decay the past by e^{-w}, add the current token with weight e^{k_t}
        ww = pp - w
        p = torch.maximum(ww, kt)
        e_past, e_now = torch.exp(ww - p), torch.exp(kt - p)
        aa, bb, pp = e_past * aa + e_now * vt, e_past * bb + e_now, p
    return torch.stack(out, dim=1), (aa, bb, pp)


def wkv_parallel(
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """WKV over whole chunks at once with a masked (T, T) matrix of exponents per channel.

    Same arguments and results as ``wkv_recurrent``; ``chunk_size`` (None = all T tokens in one
    chunk) bounds memory at B * chunk_size^2 * C numbers. Differentiable like any PyTorch code.
    """
    B, T, C = k.shape
    state = state if state is not None else _empty_wkv_state(B, C, k)
    L = T if chunk_size is None else min(chunk_size, T)
    offsets = _decay_offsets(w, u, L)  # (L, L, C), shared by all chunks
    outs = []
    for s in range(0, T, L):
        y, state = _wkv_chunk(offsets, w, k[:, s : s + L], v[:, s : s + L], state)
        outs.append(y)
    return torch.cat(outs, dim=1), state


def _decay_offsets(w: torch.Tensor, u: torch.Tensor, L: int) -> torch.Tensor:
    """(L, L, C) exponent offsets of token i seen from query t: -(t-1-i) w for i < t, u for
    i = t, -inf for i > t (the future). The weight of token i is e^{offset + k_i}."""
    t = torch.arange(L, device=w.device)
    rel = (t[:, None] - t[None, :]).to(w.dtype)[:, :, None]  # (L, L, 1): t - i
    off = -(rel - 1) * w  # (L, L, C)
    off = torch.where(rel == 0, u, off)
    return off.masked_fill(rel < 0, float("-inf"))


def _wkv_chunk(offsets, w, k, v, state):
    """One chunk of the parallel form, continuing from the state of the previous chunks."""
    aa, bb, pp = state  # history before this chunk: numerator aa * e^pp, denominator bb * e^pp
    B, L, C = k.shape
    expo = offsets[:L, :L] + k[:, None, :, :]  # (B, L, L, C): exponent of token i at query t
    t = torch.arange(L, device=k.device, dtype=k.dtype)
    expo_hist = pp[:, None, :] - t[None, :, None] * w  # (B, L, C): the history decays t more steps
    # subtract each row's maximum (a constant shift that cancels in the ratio, hence detach)
    m = torch.maximum(expo.amax(dim=2), expo_hist).detach()  # (B, L, C)
    p = torch.exp(expo - m[:, :, None, :])  # (B, L, L, C)
    p_hist = torch.exp(expo_hist - m)  # (B, L, C)
    num = (p * v[:, None, :, :]).sum(dim=2) + p_hist * aa[:, None, :]
    den = p.sum(dim=2) + p_hist * bb[:, None, :]
    # state after the chunk: token i has decayed (L-1-i) steps, the old history L steps
    expo_end = -(L - 1 - t)[None, :, None] * w + k  # (B, L, C)
    expo_end_hist = pp - L * w  # (B, C)
    p_new = torch.maximum(expo_end.amax(dim=1), expo_end_hist).detach()
    q, q_hist = torch.exp(expo_end - p_new[:, None, :]), torch.exp(expo_end_hist - p_new)
    aa_new = (q * v).sum(dim=1) + q_hist * aa
    bb_new = q.sum(dim=1) + q_hist * bb
    return num / den, (aa_new, bb_new, p_new)


def _empty_wkv_state(B: int, C: int, like: torch.Tensor):
    zeros = torch.zeros(B, C, dtype=like.dtype, device=like.device)
    return zeros, zeros.clone(), torch.full((B, C), _NEG_INF, dtype=like.dtype, device=like.device)


# ----------------------------------------------------------------------------------- blocks
def _token_shift(x: torch.Tensor, x_prev: torch.Tensor | None) -> torch.Tensor:
    """x_{t-1} for every t of x (B, T, C): the state's last token (or zeros) before the first."""
    first = torch.zeros_like(x[:, :1]) if x_prev is None else x_prev[:, None, :]
    return torch.cat([first, x[:, :-1]], dim=1)


class TimeMix(nn.Module):
    """RWKV-4 time mixing: r, k, v from token-shifted inputs, WKV, output W_o(sigmoid(r) * wkv)."""

    def __init__(self, cfg: RWKVConfig):
        super().__init__()
        C = cfg.d_model
        self.cfg = cfg
        self.time_decay = nn.Parameter(torch.zeros(C))  # log w
        self.time_first = nn.Parameter(torch.zeros(C))  # u
        self.time_mix_k = nn.Parameter(torch.ones(1, 1, C))
        self.time_mix_v = nn.Parameter(torch.ones(1, 1, C))
        self.time_mix_r = nn.Parameter(torch.ones(1, 1, C))
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)

    def forward(self, x: torch.Tensor, state: tuple | None, mode: str):
        """x (B, T, C) -> (B, T, C); state (x_prev, aa, bb, pp) or None; returns the new state."""
        x_prev, wkv_state = (None, None) if state is None else (state[0], state[1:])
        xx = _token_shift(x, x_prev)
        xk = x * self.time_mix_k + xx * (1 - self.time_mix_k)
        xv = x * self.time_mix_v + xx * (1 - self.time_mix_v)
        xr = x * self.time_mix_r + xx * (1 - self.time_mix_r)
        k, v, r = self.key(xk), self.value(xv), self.receptance(xr)  # (B, T, C) each
        w = torch.exp(self.time_decay.float())  # decay rate: the state shrinks by e^{-w} per token
        u = self.time_first.float()
        if mode == "recurrent":
            wkv, wkv_state = wkv_recurrent(w, u, k.float(), v.float(), wkv_state)
        else:
            wkv, wkv_state = wkv_parallel(w, u, k.float(), v.float(), wkv_state, self.cfg.chunk_size)
        out = self.output(torch.sigmoid(r) * wkv.type_as(r))
        return out, (x[:, -1], *wkv_state)


class ChannelMix(nn.Module):
    """RWKV-4 channel mixing: sigmoid(W_r mix_r) * W_v relu(W_k mix_k)^2 (squared-ReLU FFN)."""

    def __init__(self, cfg: RWKVConfig):
        super().__init__()
        C = cfg.d_model
        self.time_mix_k = nn.Parameter(torch.ones(1, 1, C))
        self.time_mix_r = nn.Parameter(torch.ones(1, 1, C))
        self.key = nn.Linear(C, cfg.d_ff, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(cfg.d_ff, C, bias=False)

    def forward(self, x: torch.Tensor, x_prev: torch.Tensor | None):
        xx = _token_shift(x, x_prev)
        xk = x * self.time_mix_k + xx * (1 - self.time_mix_k)
        xr = x * self.time_mix_r + xx * (1 - self.time_mix_r)
        kv = self.value(torch.relu(self.key(xk)).square())
        return torch.sigmoid(self.receptance(xr)) * kv, x[:, -1]


class RWKVBlock(nn.Module):
    def __init__(self, cfg: RWKVConfig, layer: int):
        super().__init__()
        self.layer = layer
        if layer == 0:
            self.ln0 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.att = TimeMix(cfg)
        self.ffn = ChannelMix(cfg)

    def forward(self, x: torch.Tensor, state: LayerState | None, mode: str):
        if self.layer == 0:
            x = self.ln0(x)
        a, att_state = self.att(self.ln1(x), None if state is None else state[:4], mode)
        x = x + a
        f, x_ffn = self.ffn(self.ln2(x), None if state is None else state.x_ffn)
        return x + f, LayerState(*att_state, x_ffn)


# -------------------------------------------------------------------------------------- RWKV
class RWKV(LanguageModel):
    """RWKV-4 language model: ``RWKV(RWKVConfig(vocab_size=65))(idx) -> logits``."""

    model_type = "rwkv"

    def __init__(self, config: RWKVConfig):
        super().__init__()
        if not isinstance(config, RWKVConfig):
            raise ValueError(f"RWKV needs an RWKVConfig, got {type(config).__name__}")
        self.config = config
        self.context_length = None  # recurrent: any length, constant memory per token
        self.emb = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(RWKVBlock(config, i) for i in range(config.n_layers))
        self.ln_out = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """A simplified version of RWKV-LM's RWKV-4 initialisation (``RWKV_Init`` and ``TimeMix``).

        Per layer l of L and channel c of C, with r0 = l / (L - 1) (0 -> 1) and r1 = 1 - l / L (1 -> ~0):
          time_decay[c] = -5 + 8 (c / (C-1))^(0.7 + 1.3 r0)    fast-to-slow decay across channels
          time_first[c] = ln 0.3 + 0.5 * ((c + 1) mod 3 - 1)   a small zigzag bonus
          time_mix_k = (c/C)^r1,  time_mix_v = (c/C)^r1 + 0.3 r0,  time_mix_r = (c/C)^(r1/2)
          channel mixing: time_mix_k = time_mix_r = (c/C)^r1
        Embedding uniform(-1e-4, 1e-4) (ln0 rescales it); att.key, att.receptance, att.output,
        ffn.receptance and ffn.value start at zero (each block starts as the identity); the other
        matrices are orthogonal with gain sqrt(out/in) when out > in, the head with an extra 0.5.
        """
        cfg = self.config
        L, C = cfg.n_layers, cfg.d_model
        ramp = torch.arange(C, dtype=torch.float32) / C  # c / C
        ramp_incl = torch.arange(C, dtype=torch.float32) / max(C - 1, 1)  # c / (C - 1)
        nn.init.uniform_(self.emb.weight, -1e-4, 1e-4)
        for l, block in enumerate(self.blocks):
            r0 = l / (L - 1) if L > 1 else 0.0
            r1 = 1.0 - l / L
            att, ffn = block.att, block.ffn
            att.time_decay.copy_(-5 + 8 * ramp_incl ** (0.7 + 1.3 * r0))
            zigzag = 0.5 * (((torch.arange(C) + 1) % 3) - 1).float()
            att.time_first.copy_(math.log(0.3) + zigzag)
            att.time_mix_k.copy_(ramp.pow(r1).view(1, 1, C))
            att.time_mix_v.copy_((ramp.pow(r1) + 0.3 * r0).view(1, 1, C))
            att.time_mix_r.copy_(ramp.pow(0.5 * r1).view(1, 1, C))
            ffn.time_mix_k.copy_(ramp.pow(r1).view(1, 1, C))
            ffn.time_mix_r.copy_(ramp.pow(r1).view(1, 1, C))
            for lin in (att.key, att.receptance, att.output, ffn.receptance, ffn.value):
                nn.init.zeros_(lin.weight)
            for lin in (att.value, ffn.key):
                nn.init.orthogonal_(lin.weight, gain=_ortho_gain(lin.weight))
            for ln in (block.ln1, block.ln2, getattr(block, "ln0", None)):
                if ln is not None:
                    nn.init.ones_(ln.weight)
                    nn.init.zeros_(ln.bias)
        nn.init.orthogonal_(self.head.weight, gain=0.5 * _ortho_gain(self.head.weight))

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [self.emb.weight]

    # ------------------------------------------------------------------------------ forward
    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> list[LayerState]:
        """The state before any token: zeros, and pp at -infinity (no history). device None: the model's."""
        C = self.config.d_model
        device = self.emb.weight.device if device is None else device
        z = torch.zeros(batch_size, C, device=device)
        return [LayerState(z, z, z, torch.full_like(z, _NEG_INF), z) for _ in self.blocks]

    def forward(
        self,
        idx: torch.Tensor,
        state: list[LayerState] | None = None,
        return_state: bool = False,
        mode: str | None = None,
    ):
        """idx (B, T) -> logits (B, T, V); with ``return_state=True`` also the state after idx.

        state: per-layer states to continue from (None = start of a text).
        mode: "parallel" or "recurrent" WKV (default: ``config.wkv_mode``); both give the same
        numbers up to float rounding.
        """
        self.check_tokens(idx, min_length=1)
        mode = mode or self.config.wkv_mode
        if mode not in ("parallel", "recurrent"):
            raise ValueError(f"mode must be 'parallel' or 'recurrent', got {mode!r}")
        if state is not None and len(state) != len(self.blocks):
            raise ValueError(f"state has {len(state)} layers, the model has {len(self.blocks)}")
        x = self.emb(idx)  # (B, T, C)
        new_state = []
        for i, block in enumerate(self.blocks):
            x, s = block(x, None if state is None else LayerState(*state[i]), mode)
            new_state.append(s)
        logits = self.head(self.ln_out(x))  # (B, T, V)
        return (logits, new_state) if return_state else logits

    def _next_logits(self, idx, state):
        # state = (per-layer states, number of tokens of idx already consumed). The prompt is fed
        # once (parallel form, chunked); then each new token is one recurrent step: O(1) per token.
        layers, seen = state if state is not None else (None, 0)
        mode = "recurrent" if idx.size(1) - seen == 1 else "parallel"
        logits, layers = self(idx[:, seen:], state=layers, return_state=True, mode=mode)
        return logits[:, -1, :], (layers, idx.size(1))

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6N, N = non-embedding parameters (the head included), any ``seq_len``.

        Every weight costs one multiply-add (2 FLOPs) per token forward and twice that backward
        (Kaplan et al. 2020). Unlike attention there is no context-length term: WKV costs O(C)
        element-wise work per token and layer (a few dozen FLOPs per channel), negligible next to
        the matmuls and left out, as Kaplan et al. leave out norms and nonlinearities. (Our
        readable chunked parallel form does O(chunk_size) work per token and channel; the
        reference CUDA kernel does the O(1) recurrence.)
        """
        return 6.0 * self.num_params(non_embedding=True)

    # ---------------------------------------------------------------- RWKV-LM checkpoints
    def state_dict_rwkv4(self) -> dict[str, torch.Tensor]:
        """The weights under RWKV-LM's RWKV-4 key names and shapes (our names are the same)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def save_rwkv4(self, path: str | os.PathLike) -> None:
        """Write an RWKV-LM-compatible ``.pth`` file (atomically)."""
        with atomic_open(path, "wb") as f:
            torch.save(self.state_dict_rwkv4(), f)

    def load_rwkv4(self, path_or_state_dict) -> RWKV:
        """Load an RWKV-4 checkpoint (a ``.pth`` path or a state dict) into this model.

        Half-precision files (the Pile models are bf16/fp16) are converted to float32. Missing,
        unexpected or mis-shaped keys raise one ``ValueError`` that lists all of them.
        """
        sd = _read_state_dict(path_or_state_dict)
        expected = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        missing = [k for k in expected if k not in sd]
        unexpected = [k for k in sd if k not in expected]
        misshaped = [
            f"{k}: file {tuple(sd[k].shape)}, model {expected[k]}"
            for k in expected if k in sd and tuple(sd[k].shape) != expected[k]
        ]
        if missing or unexpected or misshaped:
            parts = []
            if missing:
                parts.append(f"missing keys: {', '.join(missing)}")
            if misshaped:
                parts.append(f"mis-shaped keys: {'; '.join(misshaped)}")
            if unexpected:
                parts.append(f"unexpected keys (not part of plain RWKV-4): {', '.join(unexpected)}")
            raise ValueError(
                "checkpoint does not match this RWKV-4 model -- " + " | ".join(parts)
                + ". Build the model with the checkpoint's shapes (RWKV.from_rwkv4 does it for you)."
            )
        self.load_state_dict({k: v.float() for k, v in sd.items()})
        return self

    @classmethod
    def from_rwkv4(cls, path_or_state_dict, **overrides) -> RWKV:
        """Build an RWKV with the shapes found in an RWKV-4 checkpoint and load it.

        vocab_size and d_model come from ``emb.weight``, n_layers from the ``blocks.{i}`` keys,
        d_ff from ``blocks.0.ffn.key.weight``; ``overrides`` set other config fields.
        """
        sd = _read_state_dict(path_or_state_dict)
        needed = ["emb.weight", "blocks.0.ffn.key.weight"]
        absent = [k for k in needed if k not in sd]
        if absent:
            raise ValueError(f"not an RWKV-4 checkpoint: missing keys {', '.join(absent)}")
        vocab_size, d_model = sd["emb.weight"].shape
        n_layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        d_ff = sd["blocks.0.ffn.key.weight"].shape[0]
        cfg = RWKVConfig(vocab_size=int(vocab_size), n_layers=n_layers, d_model=int(d_model),
                         d_ff=int(d_ff), **overrides)
        return cls(cfg).load_rwkv4(sd)


def _read_state_dict(path_or_state_dict) -> dict[str, torch.Tensor]:
    if isinstance(path_or_state_dict, dict):
        return path_or_state_dict
    path = os.fspath(path_or_state_dict)
    if not os.path.isfile(path):
        raise ValueError(f"no checkpoint file at {path!r}: give the path of an RWKV-4 .pth file or a state dict")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise ValueError(f"{path!r} does not hold a state dict (got {type(sd).__name__})")
    return sd


def _ortho_gain(weight: torch.Tensor) -> float:
    out_f, in_f = weight.shape
    return math.sqrt(out_f / in_f) if out_f > in_f else 1.0
