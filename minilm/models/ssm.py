"""A minimal selective state-space model (Mamba, Gu & Dao 2023), readable rather than fast.

Each of the D channels carries a state of N numbers, updated once per token (sec. 2-3):

    Delta_t = softplus(W_dt x_t)            input-dependent step size   (Algorithm 2, "selection")
    B_t = W_B x_t,  C_t = W_C x_t           input-dependent (N,) vectors
    A = -exp(A_log)                          diagonal, negative: a decaying memory (D, N)
    A_bar_t = exp(Delta_t A)                 zero-order hold (eq. 4)
    B_bar_t x_t ~ Delta_t B_t x_t            the simplified B discretisation Mamba uses (sec. 3.5)
    h_t = A_bar_t * h_{t-1} + B_bar_t x_t    (D, N) state                 (eq. 2a)
    y_t = C_t . h_t + D_skip * x_t                                        (eq. 2b)

Because Delta, B, C depend on the input, the model can choose what to remember or forget, unlike
a fixed (time-invariant) SSM; the price is that the recurrence is a scan over time rather than a
convolution. The scan below is a plain Python loop: O(T D N) work and a state of fixed size, so
generation costs the same for every token and memory does not grow with the context.

The Mamba block (Fig. 3) wraps the scan: in-projection to two branches x and z, a short causal
depthwise convolution and SiLU on x, the scan, a SiLU(z) gate, and an out-projection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minilm.models.base import LanguageModel
from minilm.models.gpt import RMSNorm

__all__ = ["SSMConfig", "SSMLM", "SSMState", "SelectiveSSM", "selective_scan"]


def selective_scan(
    x: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    h: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential selective scan: x, delta (Bt, T, Dm); A (Dm, N); B, C (Bt, T, N); D (Dm,).

    h: initial state (Bt, Dm, N) or None for zeros. Returns y (Bt, T, Dm) and the last state.
    """
    Bt, T, Dm = x.shape
    if h is None:
        h = x.new_zeros(Bt, Dm, A.size(1))
    ys = []
    for t in range(T):
        dt = delta[:, t, :, None]  # (Bt, Dm, 1)
        A_bar = torch.exp(dt * A)  # (Bt, Dm, N), ZOH: exp(Delta A)
        Bx = dt * B[:, t, None, :] * x[:, t, :, None]  # (Bt, Dm, N), B_bar x = Delta B x
        h = A_bar * h + Bx
        ys.append((h * C[:, t, None, :]).sum(-1) + D * x[:, t])  # (Bt, Dm)
    return torch.stack(ys, dim=1), h


@dataclass
class SSMState:
    """Recurrent state of one SelectiveSSM layer: the conv's last inputs and the SSM state."""

    conv: torch.Tensor  # (B, Dm, d_conv - 1): the last d_conv - 1 inputs of the convolution
    ssm: torch.Tensor  # (B, Dm, N)

    def nbytes(self) -> int:
        return self.conv.numel() * self.conv.element_size() + self.ssm.numel() * self.ssm.element_size()


class SelectiveSSM(nn.Module):
    """The Mamba mixer: (B, T, d_model) -> (B, T, d_model), with a recurrent ``step``."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
    ):
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("expand", expand), ("d_conv", d_conv)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SelectiveSSM: {name} must be a positive integer, got {value!r}")
        self.d_inner = Dm = expand * d_model
        self.d_state, self.d_conv = d_state, d_conv
        self.dt_rank = r = dt_rank if dt_rank is not None else math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * Dm, bias=False)
        self.conv = nn.Conv1d(Dm, Dm, kernel_size=d_conv, groups=Dm, bias=True)  # depthwise, made causal below
        self.x_proj = nn.Linear(Dm, r + 2 * d_state, bias=False)  # -> (Delta low-rank, B, C)
        self.dt_proj = nn.Linear(r, Dm, bias=True)
        self.out_proj = nn.Linear(Dm, d_model, bias=False)
        # S4D-real initialisation A = -(1, 2, ..., N) for every channel (Gu & Dao, sec. 3.6).
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(Dm, 1))
        self.D = nn.Parameter(torch.ones(Dm))
        # Delta starts log-uniform in [dt_min, dt_max]: bias = softplus^-1(dt) = dt + log(1 - exp(-dt)).
        dt = torch.exp(torch.rand(Dm) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def initial_state(self, batch: int, device: torch.device | None = None) -> SSMState:
        """A zero state: what the layer has before it has seen any token."""
        device = device or self.D.device
        return SSMState(
            conv=torch.zeros(batch, self.d_inner, self.d_conv - 1, device=device),
            ssm=torch.zeros(batch, self.d_inner, self.d_state, device=device),
        )

    def _ssm_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Selection (Algorithm 2): Delta (.., Dm), B (.., N), C (.., N) computed from x (.., Dm)."""
        dt_low, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.softplus(self.dt_proj(dt_low)), B, C

    def forward(
        self, u: torch.Tensor, state: SSMState | None = None, return_state: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, SSMState]:
        """u (B, T, d_model) -> (B, T, d_model); from ``state`` (zeros if None)."""
        Bt, T, _ = u.shape
        if state is None:
            state = self.initial_state(Bt, u.device)
        x, z = self.in_proj(u).chunk(2, dim=-1)  # (B, T, Dm) each
        # Causal depthwise conv: prepend the previous d_conv - 1 inputs instead of zero padding.
        xc = torch.cat([state.conv, x.transpose(1, 2)], dim=2)  # (B, Dm, d_conv - 1 + T)
        x = F.silu(self.conv(xc)).transpose(1, 2)  # (B, T, Dm)
        delta, B, C = self._ssm_inputs(x)
        y, h = selective_scan(x, delta, -torch.exp(self.A_log), B, C, self.D, state.ssm)
        out = self.out_proj(y * F.silu(z))
        if not return_state:
            return out
        return out, SSMState(conv=xc[:, :, xc.size(2) - (self.d_conv - 1) :], ssm=h)

    def step(self, u_t: torch.Tensor, state: SSMState | None = None) -> tuple[torch.Tensor, SSMState]:
        """One token: u_t (B, d_model) -> (y_t (B, d_model), new state). The recurrence, step by step."""
        if state is None:
            state = self.initial_state(u_t.size(0), u_t.device)
        x, z = self.in_proj(u_t).chunk(2, dim=-1)  # (B, Dm)
        window = torch.cat([state.conv, x[:, :, None]], dim=2)  # (B, Dm, d_conv): last inputs
        x = F.silu((window * self.conv.weight[:, 0, :]).sum(-1) + self.conv.bias)  # (B, Dm)
        delta, B, C = self._ssm_inputs(x)  # (B, Dm), (B, N), (B, N)
        A = -torch.exp(self.A_log)  # (Dm, N)
        h = torch.exp(delta[:, :, None] * A) * state.ssm + delta[:, :, None] * B[:, None, :] * x[:, :, None]
        y = (h * C[:, None, :]).sum(-1) + self.D * x  # (B, Dm)
        return self.out_proj(y * F.silu(z)), SSMState(conv=window[:, :, 1:], ssm=h)


# ------------------------------------------------------------------------------- language model
@dataclass
class SSMConfig:
    """Shape of an SSMLM. ``context_length`` is only the training window: the model is recurrent."""

    vocab_size: int
    n_layers: int = 4
    d_model: int = 128
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_rank: int | None = None
    context_length: int = 64
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layers", "d_model", "d_state", "expand", "d_conv", "context_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SSMConfig.{name} must be a positive integer, got {value!r}")


class SSMBlock(nn.Module):
    """Pre-norm residual block: x + SelectiveSSM(RMSNorm(x)) (Mamba has no separate MLP)."""

    def __init__(self, cfg: SSMConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = SelectiveSSM(cfg.d_model, cfg.d_state, cfg.expand, cfg.d_conv, cfg.dt_rank)


class SSMLM(LanguageModel):
    """Embedding -> n_layers selective-SSM blocks -> RMSNorm -> head: ``SSMLM(SSMConfig(65))(idx)``."""

    model_type = "ssm"
    context_length = None  # recurrent: any length

    def __init__(self, config: SSMConfig):
        super().__init__()
        if not isinstance(config, SSMConfig):
            raise ValueError(f"SSMLM needs an SSMConfig, got {type(config).__name__}")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(SSMBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        for name, p in self.named_parameters():
            if name.endswith(("in_proj.weight", "x_proj.weight", "head.weight", "tok_emb.weight")):
                nn.init.normal_(p, mean=0.0, std=config.init_std)
            elif name.endswith("out_proj.weight"):  # GPT-2 style: keep the residual stream's variance flat
                nn.init.normal_(p, mean=0.0, std=config.init_std / math.sqrt(2 * config.n_layers))

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [self.tok_emb.weight]

    def forward(self, idx: torch.Tensor, state: list[SSMState] | None = None, return_state: bool = False):
        """idx (B, T) -> logits (B, T, V); with ``return_state`` also the per-layer states."""
        self.check_tokens(idx)
        x = self.tok_emb(idx)  # (B, T, C)
        states = []
        for i, block in enumerate(self.blocks):
            y, s = block.mixer(block.norm(x), None if state is None else state[i], return_state=True)
            x = x + y
            states.append(s)
        logits = self.head(self.norm(x))
        return (logits, states) if return_state else logits

    def step(self, token: torch.Tensor, state: list[SSMState] | None = None) -> tuple[torch.Tensor, list[SSMState]]:
        """One token per sequence: token (B,) -> logits (B, V) and the new per-layer states."""
        self.check_tokens(token[:, None])
        x = self.tok_emb(token)  # (B, C)
        states = []
        for i, block in enumerate(self.blocks):
            y, s = block.mixer.step(block.norm(x), None if state is None else state[i])
            x = x + y
            states.append(s)
        return self.head(self.norm(x)), states

    def _next_logits(self, idx, state):
        # Read the prompt once, then one recurrent step per new token: O(1) work per token.
        if state is None:
            logits, state = self(idx, return_state=True)
            return logits[:, -1], state
        return self.step(idx[:, -1], state)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6N + 3 * n_layers * 7 * D * N_state, for any ``seq_len`` (O(1) per token).

        6N (forward 2N + backward 4N) for the weight matmuls, N the non-embedding parameters plus
        the head; the scan adds 7 FLOPs per state entry and token (exp, two products, sum, C h:
        see ``minilm.attention.cost.ssm_flops``), forward and backward (x3).
        """
        c = self.config
        n = self.num_params(non_embedding=True)
        return 6.0 * n + 3.0 * c.n_layers * 7 * (c.expand * c.d_model) * c.d_state
