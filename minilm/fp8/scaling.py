"""Scaling: fitting a tensor into FP8's narrow range before the cast.

FP8 holds about 2^-9..448 (E4M3) or 2^-16..57344 (E5M2). A tensor is multiplied by a scale s so
that its largest magnitude lands near the format's largest number, cast, and divided by s again:

    x_fp8 = cast(clamp(x * s, -max, max))        (saturating; ``formats.cast_to_fp8``)
    x_hat = x_fp8 * s_inv,   s_inv = 1 / s       (what the matmul sees; ``fake_quantize``)

with s = (fp8_max / amax) / 2^margin (NVIDIA Transformer Engine, common API ``recipe.DelayedScaling``
and ``nvte_delayed_scaling_recipe_amax_and_scale_update``: "the scaling factor is estimated so the
FP8 tensor's maximum absolute value is 2^-margin max_fp8"). Three ways to pick amax:

  current    amax of this very tensor (TE's ``Float8CurrentScaling``): ``current_scale``
  delayed    amax from a history of the last ``history_len`` steps, reduced with "max" or
             "most_recent" (TE's ``DelayedScaling``): ``DelayedScaler``; it saves a pass over
             the tensor, at the price of saturating when a value jumps above the history
  tiles      one scale per 1x128 tile of activations (per token, per 128 channels) and per
             128x128 block of weights (DeepSeek-V3, arXiv 2412.19437, sec. 3.3.2): an outlier
             only coarsens its own tile: ``tile_scales``

``power_of_two=True`` rounds each scale down to a power of two (DeepSeek-V3 sec. 3.3.3 uses such
scales for some activations): multiplying by it is then exact, and x_hat is x rounded only once.
A tensor of zeros (or with inf/NaN) has no usable amax: its scale is 1 (TE keeps the old one).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from minilm.fp8.formats import FP8Format, get_format, overflows, round_to_fp8

_FLOAT32_MAX = torch.finfo(torch.float32).max


def amax_to_scale(amax: torch.Tensor, fmt: str | FP8Format = "e4m3", margin: int = 0,
                  power_of_two: bool = False) -> torch.Tensor:
    """s = (fp8_max / amax) / 2^margin, elementwise over amax (any shape); 1 where amax is 0 or not finite."""
    f = get_format(fmt)
    amax = torch.as_tensor(amax, dtype=torch.float32)
    # (max / 2^margin) / amax is the same float: dividing by a power of two is exact.
    scale = ((f.max / 2.0**margin) / amax).clamp_(max=_FLOAT32_MAX)  # a tiny amax must not give s = inf
    if power_of_two:  # round down, so that amax * s still fits: s = m * 2^e, m in [0.5, 1) -> 2^(e-1)
        scale = torch.ldexp(torch.ones_like(scale), torch.frexp(scale).exponent - 1)
    return torch.where((amax > 0) & (amax < math.inf), scale, 1.0)  # NaN fails both tests


def current_scale(x: torch.Tensor, fmt: str | FP8Format = "e4m3", margin: int = 0,
                  power_of_two: bool = False) -> torch.Tensor:
    """Per-tensor current scaling: one scale (0-dim tensor) from this tensor's amax."""
    return amax_to_scale(_amax(x), fmt, margin, power_of_two)


def _amax(x: torch.Tensor) -> torch.Tensor:
    """max |x| (0-dim float32) in one pass without a temporary |x| (NaN if x has one)."""
    lo, hi = x.detach().float().aminmax()
    return torch.maximum(-lo, hi)


def _check_tile(shape: tuple[int, ...], tile: tuple[int, int], pad: bool) -> tuple[int, int]:
    """Validate a tile against a 2-D shape; return the number of tile rows and columns."""
    if len(shape) != 2:
        raise ValueError(f"tile scaling needs a 2-D tensor (rows, columns), got shape {tuple(shape)}: "
                         "reshape it, e.g. x.reshape(-1, x.shape[-1])")
    if len(tile) != 2 or any(not isinstance(t, int) or t < 1 for t in tile):
        raise ValueError(f"tile must be two positive integers (rows, columns), e.g. (1, 128), got {tile!r}")
    if not pad and (shape[0] % tile[0] or shape[1] % tile[1]):
        raise ValueError(f"tile {tuple(tile)} does not divide shape {tuple(shape)}: pass pad=True (the last "
                         "tiles are zero-padded, as DeepSeek-V3's FP8 weights are) or choose a tile that divides it")
    return -(-shape[0] // tile[0]), -(-shape[1] // tile[1])


def tile_scales(x: torch.Tensor, fmt: str | FP8Format = "e4m3", tile: tuple[int, int] = (1, 128),
                margin: int = 0, power_of_two: bool = False, pad: bool = False) -> torch.Tensor:
    """Fine-grained scaling: one scale per ``tile`` (rows, cols) of the 2-D tensor x (R, C).

    DeepSeek-V3 (sec. 3.3.2, Fig. 7a): tile=(1, 128) for activations (per token, per 128 channels)
    and (128, 128) for weights. Returns scales of shape (ceil(R / tr), ceil(C / tc)); a tile that
    does not divide the shape is a ValueError unless ``pad`` (zero padding: the last tiles are
    smaller, their amax is over the values they have).
    """
    nr, nc = _check_tile(x.shape, tile, pad)
    tr, tc = tile
    a = x.detach().abs()
    a = F.pad(a, (0, nc * tc - a.shape[1], 0, nr * tr - a.shape[0]))  # zeros never raise an amax
    amax = a.reshape(nr, tr, nc, tc).amax(dim=(1, 3))  # (nr, nc)
    return amax_to_scale(amax, fmt, margin, power_of_two)


def expand_tiles(scales: torch.Tensor, shape: tuple[int, int], tile: tuple[int, int]) -> torch.Tensor:
    """Per-tile scales (nr, nc) -> one scale per element (R, C), cropping any padding."""
    if tile[0] > 1:
        scales = scales.repeat_interleave(tile[0], dim=0)[: shape[0]]
    if tile[1] > 1:
        scales = scales.repeat_interleave(tile[1], dim=1)[:, : shape[1]]
    return scales


def fake_quantize(x: torch.Tensor, fmt: str | FP8Format = "e4m3", scale: float | torch.Tensor = 1.0,
                  saturate: bool = True) -> torch.Tensor:
    """x_hat = round_fp8(x * s) * (1 / s): x as the FP8 matmul sees it, in float32.

    scale: a number, a 0-dim tensor, or one per element (e.g. ``expand_tiles(...)``).
    """
    scale = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    return round_to_fp8(x.float() * scale, fmt, saturate).mul_(scale.reciprocal())


def fake_quantize_tiles(x: torch.Tensor, fmt: str | FP8Format = "e4m3", tile: tuple[int, int] = (1, 128),
                        margin: int = 0, power_of_two: bool = False, pad: bool = False) -> torch.Tensor:
    """``fake_quantize`` with one scale per tile: x (R, C) -> x_hat (R, C), float32.

    The same numbers as ``fake_quantize(x, fmt, expand_tiles(tile_scales(x, ...), x.shape, tile))``,
    computed on (rows/tr, tr, cols/tc, tc) views of x, with no per-element scale tensor: one view
    for the whole tiles and, with ``pad``, one for each strip of partial last tiles.
    """
    _check_tile(x.shape, tile, pad)
    (tr, tc), (R, C) = tile, x.shape
    x = x.float()
    # (start, stop, tile size) along each dimension: the whole tiles, then the partial last ones.
    rows = [(0, R - R % tr, tr), (R - R % tr, R, R % tr)]
    cols = [(0, C - C % tc, tc), (C - C % tc, C, C % tc)]
    blocks = [(r0, r1, h, c0, c1, w) for r0, r1, h in rows for c0, c1, w in cols if r1 > r0 and c1 > c0]
    out = None if len(blocks) == 1 else torch.empty_like(x)
    for r0, r1, h, c0, c1, w in blocks:
        tiles = x[r0:r1, c0:c1].reshape((r1 - r0) // h, h, (c1 - c0) // w, w)  # tile (i, j): tiles[i, :, j, :]
        scale = amax_to_scale(tiles.detach().abs().amax(dim=(1, 3), keepdim=True), fmt, margin, power_of_two)
        x_hat = fake_quantize(tiles, fmt, scale).reshape(r1 - r0, c1 - c0)
        if out is None:
            return x_hat
        out[r0:r1, c0:c1] = x_hat
    return out


class DelayedScaler(nn.Module):
    """Transformer Engine's delayed scaling for one tensor (``recipe.DelayedScaling``).

    Each step the tensor is quantised with the scale computed from earlier steps, then its amax
    is pushed into ``amax_history`` (newest first, ``history_len`` long) and the scale for the
    next step is recomputed: amax = max(history) ("max") or the newest entry ("most_recent"), and
    s = (fp8_max / amax) / 2^margin, kept unchanged while amax is 0 or not finite. The first step
    uses s = 1, as TE does. The history and scale are buffers (they follow ``.to(device)``) but
    not saved in ``state_dict``, so a model's checkpoint keys do not change.
    """

    def __init__(self, fmt: str | FP8Format = "e4m3", history_len: int = 1024, algo: str = "max",
                 margin: int = 0, power_of_two: bool = False):
        super().__init__()
        if not isinstance(history_len, int) or history_len < 1:
            raise ValueError(f"history_len must be a positive integer, got {history_len!r}")
        if algo not in ("max", "most_recent"):
            raise ValueError(f"algo must be 'max' or 'most_recent' (Transformer Engine's amax_compute_algo), "
                             f"got {algo!r}")
        self.fmt, self.algo, self.margin, self.power_of_two = get_format(fmt), algo, margin, power_of_two
        self.register_buffer("amax_history", torch.zeros(history_len), persistent=False)  # (L,) newest first
        self.register_buffer("scale", torch.ones(()), persistent=False)

    def record(self, amax: torch.Tensor) -> None:
        """Push this step's amax into the history and compute the scale for the next step."""
        history = torch.roll(self.amax_history, 1)
        history[0] = amax
        self.amax_history.copy_(history)
        reduced = history.max() if self.algo == "max" else history[0]
        new = amax_to_scale(reduced, self.fmt, self.margin, self.power_of_two)
        self.scale.copy_(torch.where((reduced > 0) & torch.isfinite(reduced), new, self.scale))

    def forward(self, x: torch.Tensor, update: bool = True) -> torch.Tensor:
        """x_hat with the current (delayed) scale; then, if ``update``, record x's amax."""
        x_hat = fake_quantize(x, self.fmt, self.scale)
        if update:
            self.record(_amax(x))
        return x_hat


def quantization_error(x: torch.Tensor, fmt: str | FP8Format = "e4m3", scaling: str | float | torch.Tensor = "current",
                       tile: tuple[int, int] = (1, 128), margin: int = 0, power_of_two: bool = False,
                       pad: bool = False) -> dict[str, float]:
    """How much of x survives FP8: error metrics of x_hat = fake_quantize(x) against x.

    scaling: "none" (s = 1), "current" (per tensor), "tile" (``tile_scales`` with ``tile``), or
    a scale (number or tensor broadcastable to x, e.g. a ``DelayedScaler``'s). Returns
      relative_error  ||x_hat - x|| / ||x||  (Frobenius; 0 for x = 0)
      sqnr_db         10 log10(sum x^2 / sum (x_hat - x)^2), signal-to-quantisation-noise (inf if exact)
      underflow       fraction of the values that are not 0 but become 0
      saturation      fraction that lie past the format's range after scaling and are clipped to +-max
    """
    f = get_format(fmt)
    x = x.detach().float()
    if isinstance(scaling, str):
        if scaling == "none":
            scale = torch.ones((), device=x.device)
        elif scaling == "current":
            scale = current_scale(x, f, margin, power_of_two)
        elif scaling == "tile":
            scale = expand_tiles(tile_scales(x, f, tile, margin, power_of_two, pad), tuple(x.shape), tile)
        else:
            raise ValueError(f"unknown scaling {scaling!r}: use 'none', 'current', 'tile' or a scale (number or "
                             "tensor; for delayed scaling pass a DelayedScaler's .scale)")
    else:
        scale = torch.as_tensor(scaling, dtype=torch.float32, device=x.device)
    x_hat = fake_quantize(x, f, scale)
    noise, signal = (x_hat - x).pow(2).sum().item(), x.pow(2).sum().item()
    return {
        "relative_error": math.sqrt(noise / signal) if signal > 0 else 0.0,
        "sqnr_db": 10 * math.log10(signal / noise) if noise > 0 else math.inf,
        "underflow": ((x != 0) & (x_hat == 0)).float().mean().item(),
        "saturation": overflows(x * scale, f).float().mean().item(),
    }
