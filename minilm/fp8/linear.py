"""An FP8 linear layer, emulated on any device: the training recipes of Transformer Engine and DeepSeek-V3.

A linear layer y = x W^T + b runs three matrix products per training step, each with both
operands in FP8 and the sum accumulated in FP32 (Micikevicius et al. 2022, "FP8 Formats for Deep
Learning"; DeepSeek-V3, arXiv 2412.19437, sec. 3.3.1, Fig. 6):

    Fprop:  y  = Q(x)   @ Q(W)^T       x (N, K), W (out, K) in the forward format (E4M3)
    Dgrad:  dx = Q(dy)  @ Q(W)         dy (N, out) in the backward format (E5M2, or E4M3)
    Wgrad:  dW = Q(dy)^T @ Q(x)        the same quantised operands

Q is the recipe's scaling followed by the cast (``minilm.fp8.scaling``). The emulation computes
each product in FP32 on the dequantised operands, x_fp8 * (1 / s) (the hardware multiplies x_fp8
and applies 1 / s to the sum: the same up to FP32 rounding). The master weights W and b stay
FP32 parameters that the optimiser updates, and the bias gradient comes from the unquantised dy.
With fine-grained scaling the tiles always run along the contraction: 1 x 128 tiles of x and dy
for Fprop and Dgrad, 128 x 1 tiles of dy and of the (already quantised) x for Wgrad (sec. 3.3.3:
"converted from an 1x128 quantization tile to an 128x1 tile in the backward pass"), 128 x 128
blocks of W for both.

``track_quantization(model)`` makes every ``FP8Linear`` count, per role (x, w, dy), the values
it quantised, those that flushed to zero (underflow) and those clipped to the format's largest
number (saturation); ``quantization_counts(model)`` adds them up: how the unscaled recipe loses
its gradients, measured during training.

``accum_bits`` emulates a tensor core whose accumulator keeps only about 14 significant bits
(sec. 3.3.2, measured on H800) and DeepSeek-V3's fix, promoting the partial sum to an FP32
register every N_C = 128 elements (``limited_precision_matmul``; a Python loop over K: slow).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn as nn

from minilm.fp8.formats import get_format, overflows, round_to_fp8
from minilm.fp8.scaling import DelayedScaler, current_scale, fake_quantize, fake_quantize_tiles

_SCALINGS = ("none", "current", "delayed", "tile")


@dataclass(frozen=True)
class FP8Recipe:
    """How an ``FP8Linear`` quantises. Checked on creation: a wrong value raises ``ValueError``.

    fwd_format / bwd_format: "e4m3" or "e5m2" for x and W / for dy (Transformer Engine's
    "HYBRID" is e4m3 + e5m2; DeepSeek-V3 uses e4m3 for both).
    scaling: "none" (s = 1), "current" (per tensor), "delayed" (per tensor, amax history),
    "tile" (1 x tile activations, tile x tile weights). margin: s = (max / amax) / 2^margin.
    amax_history_len, amax_compute_algo ("max" or "most_recent"): delayed scaling only.
    pad_tiles: tiles that do not divide a shape are zero-padded (else ValueError).
    accum_bits: None = FP32 accumulation; else the accumulator's significant bits, promoted to
    FP32 every ``promote_every`` (N_C) elements.
    """

    fwd_format: str = "e4m3"
    bwd_format: str = "e5m2"
    scaling: str = "current"
    margin: int = 0
    amax_history_len: int = 1024
    amax_compute_algo: str = "max"
    tile: int = 128
    pad_tiles: bool = False
    power_of_two_scales: bool = False
    accum_bits: int | None = None
    promote_every: int = 128

    def __post_init__(self) -> None:
        get_format(self.fwd_format), get_format(self.bwd_format)  # ValueError names the formats
        if self.scaling not in _SCALINGS:
            raise ValueError(f"FP8Recipe.scaling must be one of {_SCALINGS}, got {self.scaling!r}")
        if self.amax_compute_algo not in ("max", "most_recent"):
            raise ValueError(f"FP8Recipe.amax_compute_algo must be 'max' or 'most_recent', got "
                             f"{self.amax_compute_algo!r}")
        for name in ("amax_history_len", "tile", "promote_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"FP8Recipe.{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.margin, int) or self.margin < 0:
            raise ValueError(f"FP8Recipe.margin must be an integer >= 0, got {self.margin!r}")
        if self.accum_bits is not None and not (isinstance(self.accum_bits, int) and 2 <= self.accum_bits <= 24):
            raise ValueError(f"FP8Recipe.accum_bits must be None (FP32) or an integer in 2..24, "
                             f"got {self.accum_bits!r}")


# Named recipes: the ones a lab compares.
RECIPES: dict[str, FP8Recipe] = {
    "none": FP8Recipe(scaling="none"),  # cast as is: small gradients underflow
    "current": FP8Recipe(scaling="current"),  # per-tensor amax of this step
    # Transformer Engine's DelayedScaling defaults: HYBRID formats, margin 0, 1024 steps, "max".
    "delayed": FP8Recipe(scaling="delayed", amax_history_len=1024, amax_compute_algo="max"),
    # DeepSeek-V3 sec. 3.3: E4M3 everywhere, 1x128 / 128x128 tiles (zero-padded like its released
    # weights), FP32 promotion every N_C = 128 (a no-op unless accum_bits is set).
    "deepseek": FP8Recipe(bwd_format="e4m3", scaling="tile", tile=128, pad_tiles=True, promote_every=128),
}


def get_recipe(recipe: str | FP8Recipe) -> FP8Recipe:
    """A recipe, or the name of one in ``RECIPES``."""
    if isinstance(recipe, FP8Recipe):
        return recipe
    if recipe not in RECIPES:
        raise ValueError(f"unknown FP8 recipe {recipe!r}: use one of {sorted(RECIPES)} or an FP8Recipe(...)")
    return RECIPES[recipe]


# ------------------------------------------------------------------- limited accumulation
def round_significand(x: torch.Tensor, bits: int) -> torch.Tensor:
    """float32 x rounded to ``bits`` significant bits (ties to even), with float32's exponent range."""
    if not isinstance(bits, int) or bits < 1:
        raise ValueError(f"bits must be a positive integer (significant bits, 24 = float32), got {bits!r}")
    if bits >= 24:
        return x
    drop = 24 - bits  # low mantissa bits to clear
    b = x.contiguous().view(torch.int32)
    # Add just under half an ulp, plus the kept lowest bit (ties to even); a carry into the exponent
    # is the correct rounding up to the next binade.
    b = (b + ((1 << (drop - 1)) - 1) + ((b >> drop) & 1)) & ~((1 << drop) - 1)
    return b.view(torch.float32)


def limited_precision_matmul(a: torch.Tensor, b: torch.Tensor, accum_bits: int = 14,
                             promote_every: int = 128) -> torch.Tensor:
    """a (M, K) @ b (K, N) summed as an FP8 tensor core with a narrow accumulator does.

    Products are added one k at a time to an accumulator kept at ``accum_bits`` significant bits
    (each FP32 sum rounded to them: a model of the hardware, not its exact bits); every
    ``promote_every`` (N_C) elements the partial sum is added to an FP32 result and the
    accumulator restarts (DeepSeek-V3 sec. 3.3.2, Fig. 7b).
    promote_every >= K is no promotion at all. Slow: a Python loop over K.
    """
    result = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float32, device=a.device)  # (M, N)
    for start in range(0, a.shape[1], promote_every):
        acc = torch.zeros_like(result)  # the tensor core's accumulator
        for k in range(start, min(start + promote_every, a.shape[1])):
            acc = round_significand(acc + a[:, k, None] * b[None, k, :], accum_bits)  # (M, N)
        result += acc  # promotion: one FP32 addition on the CUDA cores
    return result


def _matmul(a: torch.Tensor, b: torch.Tensor, recipe: FP8Recipe) -> torch.Tensor:
    if recipe.accum_bits is None:
        with torch.autocast(a.device.type, enabled=False):  # FP32 accumulation, also under bf16 autocast
            return a @ b
    return limited_precision_matmul(a, b, recipe.accum_bits, recipe.promote_every)


# ----------------------------------------------------------------------------- the layer
class _FP8LinearFunction(torch.autograd.Function):
    """y = Q(x) Q(W)^T + b; backward from Q(dy) (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer):
        r = layer.recipe
        x2 = x.reshape(-1, x.shape[-1]).float()  # (N, K), N = all leading dims
        xq = layer.quantize(x2, "x")  # (N, K) on the FP8 grid (times 1 / scale)
        wq = layer.quantize(weight, "w")  # (out, K)
        y = _matmul(xq, wq.t(), r)  # (N, out), Fprop
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(xq, wq)
        ctx.layer, ctx.has_bias, ctx.x_shape = layer, bias is not None, x.shape
        return y.reshape(*x.shape[:-1], -1).to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        xq, wq = ctx.saved_tensors
        layer, r = ctx.layer, ctx.layer.recipe
        dy2 = dy.reshape(-1, dy.shape[-1]).float()  # (N, out)
        dyq = layer.quantize(dy2, "dy")  # tiles along out: the contraction of Dgrad
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _matmul(dyq, wq, r).reshape(ctx.x_shape)  # (N, K), Dgrad
        if ctx.needs_input_grad[1]:
            if r.scaling == "tile":  # Wgrad contracts over the N tokens: tiles run along them
                dyq, xq = layer.quantize(dy2, "dy_t"), layer.quantize(xq, "x_t")
            dw = _matmul(dyq.t(), xq, r)  # (out, K), Wgrad
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2.sum(0)  # (out,), from the unquantised gradient
        return dx, dw, db, None


class FP8Linear(nn.Module):
    """A drop-in ``nn.Linear`` whose three matmuls see FP8 operands (emulated; FP32 master weights).

    ``FP8Linear(in_features, out_features, bias=True, recipe="current")``, or
    ``FP8Linear.from_linear(linear, recipe)``, which shares the linear's Parameters (optimiser
    state and tied weights stay valid). recipe: an ``FP8Recipe`` or a name in ``RECIPES``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 recipe: str | FP8Recipe = "current"):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.recipe = get_recipe(recipe)
        linear = nn.Linear(in_features, out_features, bias=bias)  # nn.Linear's initialisation
        self.weight, self.bias = linear.weight, linear.bias
        self.counts: dict[str, torch.Tensor] | None = None  # role -> (values, underflow, saturated); None: off
        if self.recipe.scaling == "delayed":  # one amax history per quantised tensor, as TE keeps
            r = self.recipe
            self.scalers = nn.ModuleDict({
                role: DelayedScaler(r.bwd_format if role == "dy" else r.fwd_format, r.amax_history_len,
                                    r.amax_compute_algo, r.margin, r.power_of_two_scales)
                for role in ("x", "w", "dy")
            })

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe: str | FP8Recipe = "current") -> FP8Linear:
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, recipe=recipe)
        layer.weight, layer.bias = linear.weight, linear.bias  # the same Parameter objects
        return layer.to(linear.weight.device)

    def quantize(self, t: torch.Tensor, role: str) -> torch.Tensor:
        """t (rows, cols) as the recipe quantises it, dequantised to float32.

        role: "x" (input, Fprop), "w" (weight), "dy" (output gradient, Dgrad); with tile scaling
        also "dy_t" and "x_t" (Wgrad: tiles of tile x 1, along the tokens).
        """
        r = self.recipe
        fmt = r.bwd_format if role.startswith("dy") else r.fwd_format
        scale = None  # the per-tensor scale, for the saturation count; tiles never saturate (amax -> max)
        if r.scaling == "none":
            scale, q = 1.0, round_to_fp8(t, fmt)
        elif r.scaling == "current":
            scale = current_scale(t, fmt, r.margin, r.power_of_two_scales)
            q = fake_quantize(t, fmt, scale)
        elif r.scaling == "delayed":
            scale = self.scalers[role].scale.clone()  # the scale this step uses, before the update
            q = self.scalers[role](t, update=self.training)  # evaluation leaves the history alone
        else:
            n = r.tile
            tile = {"x": (1, n), "w": (n, n), "dy": (1, n), "dy_t": (n, 1), "x_t": (n, 1)}[role]
            q = fake_quantize_tiles(t, fmt, tile, r.margin, r.power_of_two_scales, r.pad_tiles)
        # Training steps only (not evaluation); the Wgrad re-tilings are the same values again.
        if self.counts is not None and self.training and role in ("x", "w", "dy"):
            self._count(t, q, role, fmt, scale)
        return q

    def _count(self, t: torch.Tensor, q: torch.Tensor, role: str, fmt: str, scale) -> None:
        t = t.detach()
        saturated = overflows(t * scale, fmt).sum() if scale is not None else torch.zeros((), dtype=torch.long)
        new = torch.stack([torch.tensor(t.numel()), ((t != 0) & (q == 0)).sum().cpu(), saturated.cpu()])
        self.counts[role] = self.counts.get(role, torch.zeros(3, dtype=torch.long)) + new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> (..., out_features)."""
        return _FP8LinearFunction.apply(x, self.weight, self.bias, self)

    def extra_repr(self) -> str:
        changed = ", ".join(f"{f.name}={getattr(self.recipe, f.name)!r}" for f in fields(FP8Recipe)
                            if getattr(self.recipe, f.name) != f.default)
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"bias={self.bias is not None}, recipe=FP8Recipe({changed})"


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    return any(s == name or s in name.split(".") for s in skip)


def to_fp8(model: nn.Module, recipe: str | FP8Recipe = "current",
           skip: tuple[str, ...] | str = ("tok_emb", "head")) -> nn.Module:
    """Swap every ``nn.Linear`` of ``model`` (in place) for an ``FP8Linear`` sharing its parameters.

    skip: module names kept in FP32: a full dotted name ("blocks.0.attn.wqkv") or one part of
    it ("head", "attn"). The default keeps a minilm GPT's embedding and output head in FP32, as
    DeepSeek-V3 does (sec. 3.3.1: they are sensitive to low precision). Returns the model (a
    bare ``nn.Linear`` comes back as a new ``FP8Linear``); ValueError if there was nothing to swap.
    """
    recipe = get_recipe(recipe)
    skip = (skip,) if isinstance(skip, str) else tuple(skip)
    if type(model) is nn.Linear:  # a bare layer has no parent to swap it in
        return FP8Linear.from_linear(model, recipe)
    swapped = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and not _skipped(full, skip):
                setattr(module, child_name, FP8Linear.from_linear(child, recipe))
                swapped += 1
    if swapped == 0:
        raise ValueError(f"to_fp8 found no nn.Linear to swap in {type(model).__name__} (skip={skip}): is it "
                         "already converted, or are all its linear layers skipped?")
    return model


def track_quantization(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Start (and zero) or stop the counting of underflow and saturation in every ``FP8Linear``."""
    layers = [m for m in model.modules() if isinstance(m, FP8Linear)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no FP8Linear to track: convert it with to_fp8(model) first")
    for m in layers:
        m.counts = {} if enabled else None
    return model


def quantization_counts(model: nn.Module, by_layer: bool = False) -> dict:
    """What the tracked ``FP8Linear`` layers of ``model`` counted in training since ``track_quantization``.

    Returns {role: {"values", "underflow", "saturated", "underflow_fraction", "saturated_fraction"}}
    for the roles "x" (inputs), "w" (weights) and "dy" (output gradients), summed over the layers
    and steps; with ``by_layer`` the same per layer name: {name: {role: {...}}}.
    underflow: a value that was not 0 and became 0; saturated: one past the format's range after
    scaling, clipped to +-max.
    """
    def summary(counts: dict[str, torch.Tensor]) -> dict:
        out = {}
        for role, c in counts.items():
            n, under, sat = (int(v) for v in c)
            out[role] = {"values": n, "underflow": under, "saturated": sat,
                         "underflow_fraction": under / n if n else 0.0, "saturated_fraction": sat / n if n else 0.0}
        return out

    layers = {name: m for name, m in model.named_modules() if isinstance(m, FP8Linear)}
    if not any(m.counts is not None for m in layers.values()):
        raise ValueError("nothing was tracked: call track_quantization(model) before training")
    if by_layer:
        return {name: summary(m.counts) for name, m in layers.items() if m.counts is not None}
    total: dict[str, torch.Tensor] = {}
    for m in layers.values():
        for role, c in (m.counts or {}).items():
            total[role] = total.get(role, torch.zeros(3, dtype=torch.long)) + c
    return summary(total)
