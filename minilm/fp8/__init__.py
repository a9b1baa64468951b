"""FP8 training, emulated bit-exactly on any CPU: formats, scaling recipes, an FP8 linear layer.

Open the modules in this order (each cites the definitions it implements):

  formats   E4M3 and E5M2, field by field; ``encode`` / ``decode`` (numpy reference) and
            ``round_to_fp8`` / ``cast_to_fp8`` (the fast path), bit-exact with each other and
            with PyTorch's float8 casts
  scaling   per-tensor current scaling, Transformer Engine's delayed scaling (amax history),
            DeepSeek-V3's 1x128 / 128x128 tiles; ``fake_quantize``; ``quantization_error``
  linear    ``FP8Recipe`` (and the named ``RECIPES``), ``FP8Linear`` (E4M3 forward, E5M2
            gradients, FP32 accumulation and master weights), ``to_fp8(model, recipe)``,
            limited accumulation precision with promotion every N_C elements;
            ``track_quantization`` / ``quantization_counts``: underflow and saturation in training
  memory    ``bytes_per_parameter`` / ``memory_table``: bytes per parameter and activation per recipe
  hardware  ``scaled_mm_fp8``: the same product on FP8 tensor cores (``torch.nn.functional.scaled_mm``)

    from minilm import fp8
    fp8.encode(0.3, "e4m3")                 # array(42, dtype=uint8): S.0101.010 = 2^-2 * 1.25
    fp8.quantization_error(x, "e4m3", scaling="current")
    model = fp8.to_fp8(GPT(cfg), recipe="delayed")     # every linear but the head in FP8
"""

from minilm.fp8.formats import (
    E4M3,
    E5M2,
    FORMATS,
    FP8Format,
    cast_to_fp8,
    decode,
    encode,
    get_format,
    overflows,
    representable_values,
    round_to_fp8,
)
from minilm.fp8.hardware import SCALED_MM_RTOL, fp8_matmul_support, scaled_mm_fp8
from minilm.fp8.linear import (
    RECIPES,
    FP8Linear,
    FP8Recipe,
    get_recipe,
    limited_precision_matmul,
    quantization_counts,
    round_significand,
    to_fp8,
    track_quantization,
)
from minilm.fp8.memory import bytes_per_parameter, memory_table
from minilm.fp8.scaling import (
    DelayedScaler,
    amax_to_scale,
    current_scale,
    expand_tiles,
    fake_quantize,
    fake_quantize_tiles,
    quantization_error,
    tile_scales,
)

__all__ = [
    "E4M3",
    "E5M2",
    "FORMATS",
    "RECIPES",
    "SCALED_MM_RTOL",
    "DelayedScaler",
    "FP8Format",
    "FP8Linear",
    "FP8Recipe",
    "amax_to_scale",
    "bytes_per_parameter",
    "cast_to_fp8",
    "current_scale",
    "decode",
    "encode",
    "expand_tiles",
    "fake_quantize",
    "fake_quantize_tiles",
    "fp8_matmul_support",
    "get_format",
    "get_recipe",
    "limited_precision_matmul",
    "memory_table",
    "overflows",
    "quantization_counts",
    "quantization_error",
    "representable_values",
    "round_significand",
    "round_to_fp8",
    "scaled_mm_fp8",
    "tile_scales",
    "to_fp8",
    "track_quantization",
]
