"""μP, the Maximal Update Parametrization, for minilm's GPT (Tensor Programs V, Yang et al. 2022).

Under the standard parametrization (SP) the best learning rate of a GPT moves as the model gets
wider, so hyperparameters tuned on a narrow model do not carry over. μP rescales initialisation,
learning rates and two forward multipliers with the width so that, at every width, every
activation keeps Θ(1)-sized coordinates and every layer's update moves its output by Θ(1)
(TP5 sec. 2): the best η found on a narrow model is then the best for a wide one ("μTransfer").

Width is measured against a base model: ``width_mult`` m = d_model / base_width. The rules are the
Adam column of TP5 Table 3 for Transformers (TP5 Definition 4.1: Table 3 plus 1/d attention),
written with a readout multiplier as the ``mup`` package's ``MuReadout`` does, and chosen so that
at m = 1 μP *is* SP except for two zero initialisations. σ = ``GPTConfig.init_std``, L = n_layers,
η and λ = the AdamW learning rate and weight decay you pass:

| parameter of minilm's GPT           | kind      | init std       | AdamW lr | decay | forward          |
|-------------------------------------|-----------|----------------|----------|-------|------------------|
| tok_emb.weight (V, C)               | embedding | σ              | η        | λ     |                  |
| blocks.i.attn.wqkv.weight, q rows   | hidden    | 0 *            | η/m *    | λm *  | scores × √d₀/d * |
| blocks.i.attn.wqkv.weight, k,v rows | hidden    | σ/√m *         | η/m *    | λm *  |                  |
| blocks.i.attn.wo.weight (C, C)      | hidden    | σ/√(2L)/√m *   | η/m *    | λm *  |                  |
| blocks.i.ffn.w1, w3 weights (F, C)  | hidden    | σ/√m *         | η/m *    | λm *  |                  |
| blocks.i.ffn.w2.weight (C, F)       | hidden    | σ/√(2L)/√m *   | η/m *    | λm *  |                  |
| RMSNorm gains (C,): blocks.i.attn_norm, blocks.i.ffn_norm, norm | vector | 1 | η | 0 |                  |
| head.weight (V, C)                  | readout   | 0 *            | η        | λ     | logits × 1/m *   |

(* differs from SP. SP for comparison: init σ, σ/√(2L) for wo and w2, gains 1; lr η everywhere;
decay λ on matrices; scores × 1/√d; logits × 1. q rows = rows [0, C) of the (3C, C) matrix; d =
head_dim = C / n_heads; d₀ = base_width / n_heads, the base model's head size; F = d_ff.)

Why each row:

- Hidden weights (both dimensions grow with width): init variance ∝ 1/fan_in and Adam lr ∝ 1/fan_in
  (Table 3, "hidden weights"). An Adam step moves each entry by ~η whatever the gradient's scale,
  and the n entries of a row add up coherently, so ΔW x grows like η·n unless η shrinks as 1/m.
  d_ff = 8/3·C grows with C, so w2 uses the same m (up to d_ff's rounding to a multiple of 8).
  The residual-branch factor 1/√(2L) of GPT-2 is kept: μP scales width, not depth.
- The readout (Table 3, "output weights": init var 1/fan_in², Adam lr η/fan_in) is written as
  ``MuReadout`` does (an equivalent form, TP5 appendix): logits = (1/m)·W x with W trained at lr η.
  Adam's step ignores the gradient's scale, so the effective matrix W/m moves by η/m, as the table
  says. W starts at 0 (TP5 App. D.2): at init the logits are exactly 0 at every width.
- The query rows of ``wqkv`` start at 0 too (TP5 App. D.2), so attention starts uniform at every
  width; only the q rows, since q, k and v share one (3C, C) matrix.
- Attention scores q·k/d instead of q·k/√d (Definition 4.1): after training q and k are correlated,
  so q·k grows like d, not √d. The constant √d₀ makes the scale 1/√d₀ at the base head size, i.e.
  exactly SP's at m = 1 (the ``mup`` README uses 8/d, SP's scale at d = 64, for the same reason).
- Embedding and gains are "input weights & biases": their fan-in (V, or 1) does not grow, so
  their init and lr stay as in SP.
- Weight decay: on matrices only, as ``minilm.train.default_optimizer``. AdamW shrinks a weight by
  lr·λ per step; hidden groups get λ·m so that this shrink, η/m · λm = ηλ, does not depend on
  the width (what ``mup``'s ``MuAdamW`` does).
- Tied embeddings are rejected under μP (``GPTConfig`` raises): the embedding keeps σ while the
  readout must start at 0 and be multiplied by 1/m; one matrix cannot do both.

At m = 1 the only differences from SP are the zero-initialised head and query rows (the attention
scale √d₀/d equals 1/√d there); with the same weights the two parametrizations compute the same
logits, and with the same seed all other weights are drawn identically. ``coord_check`` measures
what the table promises: the size of every layer's output after a few Adam steps, against width.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from minilm.data.batching import get_batch
from minilm.device import ensure_threads, resolve_device
from minilm.ledger import charge, training_flops

KINDS = ("embedding", "hidden", "readout", "vector")


def parameter_kind(name: str, param: torch.Tensor) -> str:
    """Which row of the table a parameter of minilm's GPT follows, from its name and shape.

    "embedding": ``tok_emb.weight``; "readout": ``head.weight``; "hidden": any other matrix (both
    dimensions grow with width: wqkv, wo, w1, w2, w3); "vector": the rest (RMSNorm gains).
    """
    if name == "tok_emb.weight":
        return "embedding"
    if name == "head.weight":
        return "readout"
    return "hidden" if param.dim() >= 2 else "vector"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown parameter kind {kind!r}: choose one of {', '.join(KINDS)}")


def _check_width_mult(width_mult: float) -> None:
    if not (isinstance(width_mult, (int, float)) and math.isfinite(width_mult) and width_mult > 0):
        raise ValueError(f"width_mult must be a finite number > 0 (d_model / base_width), got {width_mult!r}")


def mup_lr(kind: str, lr: float, width_mult: float) -> float:
    """The AdamW learning rate of a parameter of this kind (TP5 Table 3, Adam column).

    η / width_mult for "hidden" weights, η for "embedding", "vector" and "readout" (the readout's
    1/width_mult lives in the forward pass, see the module docstring).
    """
    _check_kind(kind)
    _check_width_mult(width_mult)
    return lr / width_mult if kind == "hidden" else lr


def mup_init_scale(kind: str, width_mult: float) -> float:
    """Factor from SP's init std to μP's: 1/√width_mult for "hidden", 0 for "readout", 1 otherwise.

    (The query rows of ``wqkv`` are also set to 0; that is a rule for rows, not for a kind.)
    """
    _check_kind(kind)
    _check_width_mult(width_mult)
    return {"hidden": math.sqrt(1.0 / width_mult), "readout": 0.0}.get(kind, 1.0)


def attention_scale(head_dim: int, base_head_dim: float) -> float:
    """μP's attention score scale √d₀ / d (TP5 Definition 4.1: 1/d), equal to SP's 1/√d at d = d₀."""
    if head_dim <= 0 or base_head_dim <= 0:
        raise ValueError(f"head sizes must be > 0, got head_dim={head_dim}, base_head_dim={base_head_dim}")
    return math.sqrt(base_head_dim) / head_dim


def readout_multiplier(width_mult: float) -> float:
    """μP's output multiplier 1/width_mult on the logits (as ``mup``'s ``MuReadout``)."""
    _check_width_mult(width_mult)
    return 1.0 / width_mult


def check_config(parametrization: str, base_width: int | None, tie_embeddings: bool) -> None:
    """Raise a clear ValueError unless the GPTConfig fields that μP reads fit together."""
    if parametrization not in ("standard", "mup"):
        raise ValueError(f"GPTConfig.parametrization must be 'standard' or 'mup', got {parametrization!r}")
    if base_width is not None and (not isinstance(base_width, int) or isinstance(base_width, bool) or base_width < 1):
        raise ValueError(f"GPTConfig.base_width must be a positive integer (the d_model of the base model μP "
                         f"scales from), got {base_width!r}")
    if parametrization == "mup" and base_width is None:
        raise ValueError("GPTConfig(parametrization='mup') needs base_width: the d_model of the base model whose "
                         "hyperparameters should transfer, e.g. base_width=64 (then width_mult = d_model / 64)")
    if parametrization == "mup" and tie_embeddings:
        raise ValueError("tie_embeddings=True is not supported with parametrization='mup': μP initialises the "
                         "embedding with init_std but the readout at 0 with a 1/width_mult multiplier, and one "
                         "matrix cannot follow both rules (see minilm.mup); use tie_embeddings=False")


def is_mup(model: nn.Module) -> bool:
    """True for a model built with ``parametrization="mup"``."""
    return getattr(getattr(model, "config", None), "parametrization", "standard") == "mup"


def width_mult(model: nn.Module) -> float:
    """The model's d_model / base_width under μP; 1.0 for any other model (SP: no rescaling)."""
    return float(model.config.width_mult) if is_mup(model) else 1.0


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """AdamW parameter groups with μP's learning rates and weight decays, one group per kind.

    Groups (empty ones left out), each with a "kind" key: "embedding" (lr η), "readout" (η),
    "hidden" (η/m, weight decay λ·m), "vector" (η, no decay). The first group has lr η, so
    ``param_groups[0]["lr"]`` is the base learning rate (what ``train``'s history records). For a
    model that is not μP every group gets η and λ (m = 1): the same updates as SP's AdamW.
    """
    m = width_mult(model)
    by_kind: dict[str, list[nn.Parameter]] = {kind: [] for kind in KINDS}
    for name, p in model.named_parameters():
        if p.requires_grad:
            by_kind[parameter_kind(name, p)].append(p)
    groups = []
    for kind in ("embedding", "readout", "hidden", "vector"):
        # decoupled decay shrinks by lr * wd per step: keep it width-independent (mup's MuAdamW)
        wd = 0.0 if kind == "vector" else weight_decay * (m if kind == "hidden" else 1.0)
        if by_kind[kind]:
            groups.append({"params": by_kind[kind], "lr": mup_lr(kind, lr, m), "weight_decay": wd, "kind": kind})
    return groups


# ------------------------------------------------------------------------------ coordinate check
@dataclass
class CoordCheck:
    """What ``coord_check`` measured: ``means[layer]`` has shape (len(widths), steps), the mean |x|
    of that layer's output at each width and step (step t = the forward pass after t updates)."""

    widths: list[int]
    layers: list[str]
    means: dict[str, np.ndarray]
    losses: np.ndarray  # (len(widths), steps): the training loss at each step

    def slopes(self, step: int = -1) -> dict[str, float]:
        """Least-squares slope of log(mean |x|) against log(width), per layer, at ``step``.

        ≈ 0: the layer's coordinates do not change size with width (μP's promise); 0.5 or 1: they
        grow like √width or width (SP with Adam). NaN where some width's output is exactly 0
        (μP's logits at step 0: the readout starts at 0). At tiny widths μP's slopes after the
        first steps sit a little below 0 (-0.1 to -0.35 at widths 32-256): a finite-width term
        that fades as width grows (the curves "converge to the right", as the ``mup`` README puts
        it; the logits' slope is about -0.05 between widths 512 and 1024).
        """
        logw = np.log(np.asarray(self.widths, dtype=np.float64))
        out = {}
        for layer in self.layers:
            y = self.means[layer][:, step]
            out[layer] = float(np.polyfit(logw, np.log(y), 1)[0]) if np.all(y > 0) else float("nan")
        return out


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    """The modules whose outputs a coordinate check records, by name, in forward order."""
    if not all(hasattr(model, a) for a in ("tok_emb", "blocks", "norm")):
        raise ValueError(f"coord_check needs a minilm GPT (tok_emb, blocks, norm), got {type(model).__name__}")
    layers = {"embedding": model.tok_emb}
    for i, block in enumerate(model.blocks):
        layers[f"block{i}.attn"] = block.attn
        layers[f"block{i}.ffn"] = block.ffn
    layers["norm"] = model.norm
    layers["logits"] = model  # the model's output, after μP's readout multiplier
    return layers


def _record(means: dict[str, list[float]], name: str) -> Callable:
    def hook(module: nn.Module, inputs, output) -> None:
        x = output[0] if isinstance(output, tuple) else output  # attention returns (y, weights)
        means[name].append(x.detach().abs().mean().item())
    return hook


def _check_coord_args(widths: Sequence[int], steps: int, tokens, context_length: int) -> None:
    if len(widths) < 2 or len(set(widths)) != len(widths) or any(
            not isinstance(w, numbers.Integral) or isinstance(w, bool) or w < 1 for w in widths):
        raise ValueError(f"widths must be at least two different positive integers, got {list(widths)!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if tokens is None or len(tokens) < context_length + 1:
        raise ValueError(f"tokens must hold at least context_length + 1 = {context_length + 1} token ids")


def coord_check(model_fn: Callable[[int], nn.Module], widths: Sequence[int], steps: int = 4, *, tokens,
                batch_size: int = 8, context_length: int = 32, lr: float = 1e-2, seed: int = 0,
                weight_decay: float = 0.1, device: str | torch.device | None = None) -> CoordCheck:
    """Train ``model_fn(width)`` for ``steps`` AdamW steps at each width; record mean |x| per layer.

    Every width sees the same ``steps`` batches (windows of ``tokens`` drawn with ``seed``) and is
    built after ``torch.manual_seed(seed)``. The optimizer is ``minilm.train.default_optimizer``'s
    AdamW (betas 0.9, 0.95; μP's groups for a μP model, via ``param_groups``), without clipping.
    Recorded at each step's forward pass: the embedding, each block's attention and FFN output,
    the final norm and the logits. device: where to train (None: where ``model_fn`` put the model).
    """
    _check_coord_args(widths, steps, tokens, context_length)
    ensure_threads()
    rng = np.random.default_rng(seed)
    batches = [get_batch(tokens, batch_size, context_length, "cpu", rng) for _ in range(steps)]  # (B, T) each
    names, per_width, losses = None, [], []
    for width in widths:
        torch.manual_seed(seed)
        model = model_fn(width)
        dev = resolve_device(device) if device is not None else next(model.parameters()).device
        model.to(dev).train()
        layers = _layers(model)
        names = list(layers)
        means: dict[str, list[float]] = {name: [] for name in names}
        handles = [module.register_forward_hook(_record(means, name)) for name, module in layers.items()]
        # default_optimizer's AdamW, built here: minilm.train imports this module, not the reverse
        opt = torch.optim.AdamW(param_groups(model, lr, weight_decay), lr=lr, betas=(0.9, 0.95))
        width_losses = []
        started = time.perf_counter()
        try:
            for x, y in batches:
                logits = model(x.to(dev))  # (B, T, V); the hooks record every layer here
                loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.to(dev).reshape(-1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                width_losses.append(loss.item())
        finally:
            for h in handles:
                h.remove()
        n_tokens = len(width_losses) * batch_size * context_length  # the steps actually taken
        charge(training_flops(model, n_tokens, context_length), tokens=n_tokens,
               seconds=time.perf_counter() - started, label=f"coord_check width {width}")
        per_width.append(means)
        losses.append(width_losses)
    stacked = {name: np.array([m[name] for m in per_width]) for name in names}  # (widths, steps)
    return CoordCheck([int(w) for w in widths], names, stacked, np.array(losses))


def plot_coord_check(result: CoordCheck, ax=None):
    """Mean |x| against width, log-log, one line per layer and one panel per step.

    ax: None draws a new figure with one panel per step; a single matplotlib Axes draws the last
    step only; a sequence of Axes (one per step) draws into those. Returns the array of Axes.
    Flat lines are μP's promise; lines rising to the right show SP's blow-up with width.
    """
    import matplotlib.pyplot as plt  # imported here: ``import minilm`` stays light

    steps = result.losses.shape[1]
    if ax is None:
        _, axes = plt.subplots(1, steps, figsize=(3.2 * steps, 3.2), sharey=True, squeeze=False)
        axes, shown = axes[0], range(steps)
    else:
        axes = np.atleast_1d(np.asarray(ax, dtype=object)).ravel()
        shown = [steps - 1] if len(axes) == 1 else range(steps)
        if len(axes) not in (1, steps):
            raise ValueError(f"ax must be one Axes or {steps} Axes (one per step), got {len(axes)}")
    for a, t in zip(axes, shown):
        for layer in result.layers:
            y = result.means[layer][:, t]
            a.loglog(result.widths, np.where(y > 0, y, np.nan), marker="o", label=layer)  # log(0) undefined
        a.set_title(f"step {t}" + (" (init)" if t == 0 else ""))
        a.set_xticks(result.widths, [str(w) for w in result.widths])
        a.minorticks_off()
        a.set_xlabel("width (d_model)")
    axes[0].set_ylabel("mean |x| of the layer's output")
    axes[-1].legend(fontsize="small")
    return axes
