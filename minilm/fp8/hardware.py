"""The real thing: an FP8 matrix product on hardware that has one, to hold the emulation against.

FP8 tensor cores start with compute capability 8.9 (Ada) and 9.0 (Hopper). PyTorch reaches them
through ``torch.nn.functional.scaled_mm``, public since torch 2.10; before that only through the
private ``torch._scaled_mm``, whose interface changed between releases while the scaling recipes
settled (early versions also returned the output's amax). ``scaled_mm_fp8`` uses the public one
where it exists. torch 2.13 also has a CPU kernel for it (a reference, not fast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minilm.fp8.formats import FP8Format, cast_to_fp8, get_format
from minilm.fp8.scaling import current_scale

# ||y_hardware - y_emulated|| / ||y_emulated|| stays below this. Both multiply the same FP8 numbers,
# whose products are exact in FP32; only the order and precision of the accumulation differ.
SCALED_MM_RTOL = 1e-3


def _scaled_mm(a8: torch.Tensor, b8: torch.Tensor, a_inv: torch.Tensor, b_inv: torch.Tensor) -> torch.Tensor:
    """(a8 @ b8) * a_inv * b_inv in float32, by torch's scaled matmul (public API if present)."""
    if hasattr(F, "scaled_mm"):
        per_tensor = F.ScalingType.TensorWise
        return F.scaled_mm(a8, b8, a_inv, per_tensor, b_inv, per_tensor, output_dtype=torch.float32)
    out = torch._scaled_mm(a8, b8, scale_a=a_inv, scale_b=b_inv, out_dtype=torch.float32)
    return out[0] if isinstance(out, tuple) else out  # early versions also returned the amax


def scaled_mm_fp8(x: torch.Tensor, weight: torch.Tensor, fmt: str | FP8Format = "e4m3",
                  margin: int = 0) -> torch.Tensor:
    """y = x @ weight^T on real FP8 operands, with per-tensor current scaling.

    x (M, K) and weight (N, K), float, on a device where ``fp8_matmul_support`` is None; K and N
    must be multiples of 16 (cuBLAS's FP8 layout rule), and cuBLAS multiplies no two E5M2
    matrices: keep fmt="e4m3" on a GPU. Returns float32 (M, N), which matches the
    emulation ``fake_quantize(x, fmt, s_x) @ fake_quantize(weight, fmt, s_w).T`` within
    ``SCALED_MM_RTOL`` (relative Frobenius error).
    """
    f = get_format(fmt)
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"scaled_mm_fp8 needs x (M, K) and weight (N, K), got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}: reshape x to (-1, K)")
    if x.shape[1] % 16 or weight.shape[0] % 16:
        raise ValueError(f"FP8 matmuls need K and N to be multiples of 16, got K={x.shape[1]}, N={weight.shape[0]}: "
                         "pad the matrices with zeros")
    sx, sw = current_scale(x, f, margin), current_scale(weight, f, margin)
    x8 = cast_to_fp8(x * sx, f).contiguous()  # (M, K) row-major
    w8 = cast_to_fp8(weight * sw, f).contiguous()  # (N, K) row-major: its transpose is column-major
    return _scaled_mm(x8, w8.t(), sx.reciprocal().to(x.device), sw.reciprocal().to(x.device))


def fp8_matmul_support(device: str | torch.device) -> str | None:
    """None if ``scaled_mm_fp8`` runs on ``device``, else the reason it does not.

    CUDA: a GPU of compute capability 8.9 or more. CPU: torch's CPU kernel, tried once on 16 x 16.
    """
    device = torch.device(device)
    if not hasattr(F, "scaled_mm") and not hasattr(torch, "_scaled_mm"):
        return f"torch {torch.__version__} has no scaled_mm"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available"
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            return f"GPU compute capability {major}.{minor}: FP8 tensor cores need 8.9 (Ada) or 9.0+ (Hopper)"
        return None  # a failure from here on is a bug to see, not a missing feature
    if device.type != "cpu":
        return f"no FP8 matmul in torch for device type {device.type!r}"
    try:
        scaled_mm_fp8(torch.ones(16, 16), torch.ones(16, 16))
    except (RuntimeError, NotImplementedError) as err:
        return f"torch {torch.__version__} has no CPU kernel for scaled_mm: {str(err).splitlines()[0]}"
    return None
