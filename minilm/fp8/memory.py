"""Memory on paper: bytes per parameter and per activation under each precision recipe.

Mixed-precision training keeps FP32 master weights and Adam moments (Micikevicius et al. 2018,
sec. 3.1; Rajbhandari et al. 2020, ZeRO sec. 3.1: 2 + 2 + 12 = 16 bytes per parameter for BF16).
FP8 changes the copy the matmul reads (1 byte plus a scale per tile) and the activations saved
for the backward pass; the optimizer state is untouched (DeepSeek-V3 sec. 3.3.3 keeps it in BF16/FP32).
"""

from __future__ import annotations

# bytes per parameter: (compute copy of the weight, gradient, FP32 master, Adam m + v)
_RECIPES = {
    "fp32": (0, 4, 4, 8),   # the master is the compute copy
    "bf16": (2, 2, 4, 8),
    "fp8": (1, 2, 4, 8),    # E4M3 weight copy; BF16 gradients, FP32 master and moments
}
_ACTIVATION_BYTES = {"fp32": 4, "bf16": 2, "fp8": 1}


def bytes_per_parameter(recipe: str) -> dict[str, float]:
    """Bytes each parameter costs during training under ``recipe`` ("fp32", "bf16", "fp8")."""
    if recipe not in _RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}: use one of {sorted(_RECIPES)}")
    w, g, master, adam = _RECIPES[recipe]
    parts = {"weights": float(w), "gradients": float(g), "master": float(master), "adam": float(adam)}
    parts["total"] = sum(parts.values())
    return parts


def memory_table(n_params: float, n_activations: float = 0.0, tile: int = 128) -> dict[str, dict[str, float]]:
    """GB of parameters (+ optimizer) and saved activations per recipe at a model size.

    FP8 tensors carry one FP32 scale per ``tile`` elements (DeepSeek-V3's 1x128 tiles): 4/tile bytes.
    """
    if n_params <= 0 or n_activations < 0 or tile < 1:
        raise ValueError("n_params must be > 0, n_activations >= 0 and tile >= 1")
    out = {}
    for r in _RECIPES:
        per = bytes_per_parameter(r)
        scale = 4.0 / tile if r == "fp8" else 0.0
        out[r] = {"bytes_per_param": per["total"] + scale,
                  "params_GB": n_params * (per["total"] + scale) / 1e9,
                  "activations_GB": n_activations * (_ACTIVATION_BYTES[r] + scale) / 1e9}
    return out
