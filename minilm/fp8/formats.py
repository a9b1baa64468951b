"""The two FP8 formats, written from their definitions.

OCP "8-bit Floating Point Specification (OFP8)", rev. 1.0 (2023), and Micikevicius et al. 2022,
"FP8 Formats for Deep Learning" (arXiv 2209.05433), sec. 3. One byte holds a sign S, a biased
exponent E (e bits) and a mantissa M (m bits):

    E4M3:  S EEEE MMM        E5M2:  S EEEEE MM

    normal     (E >= 1):   value = (-1)^S * 2^(E - bias) * (1 + M / 2^m)
    subnormal  (E == 0):   value = (-1)^S * 2^(1 - bias) * (0 + M / 2^m)     (M == 0: +0 or -0)

                     E4M3 (PyTorch: float8_e4m3fn)          E5M2 (PyTorch: float8_e5m2)
    bias             7                                      15
    largest          S.1111.110  = 2^8  * 1.75 = 448        S.11110.11 = 2^15 * 1.75 = 57344
    smallest normal  S.0001.000  = 2^-6                     S.00001.00 = 2^-14
    smallest subn.   S.0000.001  = 2^-9                     S.00000.01 = 2^-16
    infinities       none ("fn": finite)                    S.11111.00 (IEEE 754 style)
    NaN              S.1111.111 only                        S.11111.{01, 10, 11}

E4M3 spends the top exponent on numbers (only S.1111.111 is NaN), so it reaches 448 instead of
240; E5M2 keeps IEEE's special exponent and trades a mantissa bit for range.

Encoding rounds to the nearest representable value, ties to the even mantissa (IEEE 754's
default). A value that rounds past the largest one is out of range, and what happens is a
choice, ``saturate``: True gives +-max (what FP8 training does: clamp, then cast), False
overflows as the format defines: E5M2 to +-inf, E4M3 (no infinities) to NaN. Infinite inputs
follow the same rule; NaN stays NaN (sign kept, mantissa all ones).

Three implementations, held bit-for-bit equal by tests/test_fp8.py on all 256 codes and on
millions of values:
  ``encode`` / ``decode``   the reference: numpy, field by field, as written above;
  ``round_to_fp8``          the fast path used in training: float32 in, the nearest FP8 value
                            out as float32, by a rounding trick in float32 arithmetic;
  ``cast_to_fp8``           real float8 tensors (for FP8 hardware): clamp, then PyTorch's cast.

PyTorch's own casts (torch 2.13) do not agree with each other out of range:
``x.to(torch.float8_e4m3fn)`` saturates (finite values past 448 and +-inf become +-448; some
earlier releases gave NaN instead), i.e. ``encode(saturate=True)``; ``x.to(torch.float8_e5m2)``
overflows IEEE style (|x| >= 61440, half-way to 2^16 with the tie going to the even "2^16", becomes
+-inf), i.e. ``encode(saturate=False)``. ``cast_to_fp8`` clamps or marks overflows itself, so it
gives the same answer under either convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class FP8Format:
    """One FP8 format: field widths, bias and whether it keeps IEEE infinities (all else follows)."""

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    ieee_specials: bool  # True: top exponent is inf/NaN (E5M2); False: only S.1..1.1..1 is NaN (E4M3)
    torch_dtype: torch.dtype

    @property
    def max_exponent_field(self) -> int:
        """Largest E of a finite number: all ones, or all ones minus one if it is IEEE's special."""
        return 2**self.exponent_bits - 1 - int(self.ieee_specials)

    @property
    def max_mantissa_at_top(self) -> int:
        """Largest M at the top exponent: E4M3 gives M = 111 to NaN, E5M2 uses all of them."""
        return 2**self.mantissa_bits - 1 - int(not self.ieee_specials)

    @property
    def max(self) -> float:
        """Largest finite value: 448 (E4M3), 57344 (E5M2)."""
        return 2.0 ** (self.max_exponent_field - self.bias) * (1 + self.max_mantissa_at_top / 2**self.mantissa_bits)

    @property
    def min_exponent(self) -> int:
        """Exponent of the smallest normal binade, 1 - bias (subnormals share its spacing)."""
        return 1 - self.bias

    @property
    def min_normal(self) -> float:
        return 2.0**self.min_exponent

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (self.min_exponent - self.mantissa_bits)

    @property
    def overflow_threshold(self) -> float:
        """max + half the spacing at max: values beyond it round out of range (at it: a tie)."""
        return self.max + 2.0 ** (self.max_exponent_field - self.bias - self.mantissa_bits) / 2

    @property
    def tie_overflows(self) -> bool:
        """At the threshold, ties go to the even mantissa: past max if max's mantissa is odd (E5M2)."""
        return self.max_mantissa_at_top % 2 == 1

    def code(self, sign: int, exponent: int, mantissa: int) -> int:
        """The byte S E M from its fields."""
        return (sign << 7) | (exponent << self.mantissa_bits) | mantissa


E4M3 = FP8Format("e4m3", exponent_bits=4, mantissa_bits=3, bias=7, ieee_specials=False,
                 torch_dtype=torch.float8_e4m3fn)
E5M2 = FP8Format("e5m2", exponent_bits=5, mantissa_bits=2, bias=15, ieee_specials=True,
                 torch_dtype=torch.float8_e5m2)
FORMATS = {"e4m3": E4M3, "e5m2": E5M2}


def get_format(fmt: str | FP8Format) -> FP8Format:
    """``"e4m3"`` (alias ``"e4m3fn"``) or ``"e5m2"`` -> its ``FP8Format``; anything else: ValueError."""
    if isinstance(fmt, FP8Format):
        return fmt
    name = fmt.lower() if isinstance(fmt, str) else fmt
    name = "e4m3" if name == "e4m3fn" else name
    if name not in FORMATS:
        raise ValueError(f"unknown FP8 format {fmt!r}: use 'e4m3' (forward: weights, activations) or 'e5m2' "
                         "(backward: gradients)")
    return FORMATS[name]


def _overflow_and_nan_codes(f: FP8Format, saturate: bool) -> tuple[int, int]:
    """Codes (sign bit clear) for an out-of-range value and for NaN."""
    top = f.code(0, 2**f.exponent_bits - 1, 2**f.mantissa_bits - 1)  # S.1..1.1..1: NaN in both formats
    if saturate:
        return f.code(0, f.max_exponent_field, f.max_mantissa_at_top), top
    if f.ieee_specials:
        return f.code(0, 2**f.exponent_bits - 1, 0), top  # +-inf
    return top, top  # E4M3 has no infinity: overflow is NaN


# --------------------------------------------------------------------------- the reference
def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x if x.dtype == torch.float64 else x.float()  # bf16/fp16 -> fp32 is exact
        return x.numpy()
    return np.asarray(x)


def encode(x, fmt: str | FP8Format = "e4m3", saturate: bool = True) -> np.ndarray:
    """Round each value of x to the nearest FP8 number (ties to even) and return its byte.

    x: array-like or tensor of any shape (its exact value is used: computed in float64).
    Returns a uint8 array of the same shape. Out of range (see the module docstring): +-max if
    ``saturate``, else E5M2 +-inf / E4M3 NaN.
    """
    f = get_format(fmt)
    with np.errstate(invalid="ignore"):  # signalling NaNs among the inputs stay NaN
        x = _as_numpy(x).astype(np.float64)  # float32 -> float64 is exact; everything below is exact too
    m = f.mantissa_bits
    sign = np.signbit(x).astype(np.int64)  # S, also for -0.0 and NaN
    a = np.where(np.isfinite(x), np.abs(x), 0.0)  # magnitudes; inf/NaN handled at the end
    # 1. The binade [2^e, 2^(e+1)) holding a. Below the smallest normal binade every number has the
    #    subnormal spacing, so e never goes under e_min = 1 - bias (and 0 sits there too).
    _, e = np.frexp(a)  # a = fr * 2^e with fr in [0.5, 1)  ->  floor(log2 a) = e - 1
    e = np.where(a > 0, np.maximum(e - 1, f.min_exponent), f.min_exponent)
    # 2. Neighbouring FP8 numbers in that binade are 2^(e - m) apart: round a to a multiple of it.
    spacing = np.ldexp(1.0, e - m)
    n = np.rint(a / spacing)  # the significand as an integer; rint rounds half to even
    out_of_range = (n * spacing > f.max) | np.isinf(x)  # rounded past max (checked in step 4)
    # 3. n in [2^m, 2^(m+1)): a normal number 1.M; n < 2^m: a subnormal 0.M (only when e = e_min);
    #    n = 2^(m+1): rounding carried into the next binade, which is 1.000 * 2^(e+1).
    carry = n == 2 ** (m + 1)
    e, n = np.where(carry, e + 1, e), np.where(carry, 2**m, n)
    normal = n >= 2**m
    exponent = np.where(normal, e + f.bias, 0).astype(np.int64)  # biased E; 0 marks a subnormal
    mantissa = np.where(normal, n - 2**m, n).astype(np.int64)
    code = (sign << 7) | (exponent << m) | mantissa
    # 4. Out of range: the rounded value is past max (or the input is +-inf); NaN stays NaN.
    overflow_code, nan_code = _overflow_and_nan_codes(f, saturate)
    code = np.where(out_of_range, (sign << 7) | overflow_code, code)
    code = np.where(np.isnan(x), (sign << 7) | nan_code, code)
    return code.astype(np.uint8)


def decode(codes, fmt: str | FP8Format = "e4m3") -> np.ndarray:
    """The value of each FP8 byte (uint8, any shape) as float32 (every FP8 number is one exactly)."""
    f = get_format(fmt)
    c = _as_numpy(codes)
    if c.dtype != np.uint8:
        if np.any((c < 0) | (c > 255)) or np.any(c != np.floor(c)):
            raise ValueError("FP8 codes are bytes: integers 0..255 (np.uint8)")
        c = c.astype(np.uint8)
    c = c.astype(np.int64)
    m = f.mantissa_bits
    sign = np.where(c >> 7 == 1, -1.0, 1.0)
    exponent = (c >> m) & (2**f.exponent_bits - 1)  # E, biased
    mantissa = c & (2**m - 1)  # M
    normal = sign * np.ldexp(1.0 + mantissa / 2**m, exponent - f.bias)
    subnormal = sign * np.ldexp(mantissa / 2**m, f.min_exponent)
    value = np.where(exponent == 0, subnormal, normal)
    top = exponent == 2**f.exponent_bits - 1
    if f.ieee_specials:  # E5M2: top exponent is inf (M = 0) or NaN
        value = np.where(top & (mantissa == 0), sign * np.inf, value)
        value = np.where(top & (mantissa != 0), np.copysign(np.nan, sign), value)
    else:  # E4M3: only S.1111.111 is NaN
        value = np.where(top & (mantissa == 2**m - 1), np.copysign(np.nan, sign), value)
    return value.astype(np.float32)


# ----------------------------------------------------------------------------- fast path
def overflows(x: torch.Tensor, fmt: str | FP8Format = "e4m3") -> torch.Tensor:
    """Bool mask of the values that round past the format's largest number (+-inf included)."""
    f = get_format(fmt)
    a = x.abs()
    return (a >= f.overflow_threshold) if f.tie_overflows else (a > f.overflow_threshold)


def cast_to_fp8(x: torch.Tensor, fmt: str | FP8Format = "e4m3", saturate: bool = True) -> torch.Tensor:
    """x (float, any shape) -> a ``torch.float8_e4m3fn`` / ``float8_e5m2`` tensor, rounded as ``encode``.

    Saturating: clamp to +-max, then PyTorch's cast (round to nearest even). Not saturating: the
    values that overflow are set to the format's overflow value (inf / NaN) first.
    """
    f = get_format(fmt)
    x = x.detach().float()
    y = x.clamp(-f.max, f.max)  # clamp keeps NaN
    return (y if saturate else _overflow_as_defined(x, y, f)).to(f.torch_dtype)


def round_to_fp8(x: torch.Tensor, fmt: str | FP8Format = "e4m3", saturate: bool = True) -> torch.Tensor:
    """x (float32) rounded to the nearest FP8 value, as float32 of the same shape (= ``decode(encode(x))``).

    The training path, in plain float32 arithmetic (no float8 dtype, so it runs on every device,
    Apple's MPS included, and ~2.5x faster on a CPU than a cast to float8 and back): in the binade
    [2^e, 2^(e+1)) FP8 numbers are 2^(e-m) apart, and so are float32 numbers in the binade of
    C = 2^(e + 23 - m). Adding C to |x| makes the FPU itself round |x| to a multiple of 2^(e-m),
    to nearest, ties to even; subtracting C again is exact. Below FP8's smallest normal binade, e
    stays at e_min = 1 - bias: the subnormals' fixed spacing.
    """
    f = get_format(fmt)
    x = x.detach().float()  # rounding has no useful gradient: the result is a constant
    a = x.abs().clamp_(max=f.max)  # (...), |x| saturated; NaN stays NaN
    # C = 2^(e + 23 - m): float32's exponent field of a (bits 23..30), at least e_min, plus 23 - m.
    e_field = a.view(torch.int32) & 0x7F800000
    e_field = e_field.clamp_(min=(f.min_exponent + 127) << 23).add_((23 - f.mantissa_bits) << 23)
    c = e_field.view(torch.float32)
    y = a.add_(c).sub_(c).copysign_(x)  # (...), rounded magnitudes with x's sign (also for -0.0)
    return y if saturate else _overflow_as_defined(x, y, f)


def _overflow_as_defined(x: torch.Tensor, y: torch.Tensor, f: FP8Format) -> torch.Tensor:
    """y where x is in range; where x overflows, E5M2's +-inf or E4M3's NaN (with x's sign)."""
    special = torch.tensor(float("inf") if f.ieee_specials else float("nan"), device=x.device)
    return torch.where(overflows(x, f), special.copysign(x), y)


_WIDE_FORMATS = {"bf16": torch.bfloat16, "fp16": torch.float16}


def representable_values(fmt: str | FP8Format = "e4m3") -> np.ndarray:
    """Every positive finite value of a format, sorted (the grid a widget draws on a log axis).

    ``"e4m3"`` / ``"e5m2"``: decoded from all 128 positive codes (subnormals included; 126 and 123
    values). ``"bf16"`` / ``"fp16"``: all positive finite 16-bit patterns, for contrast.
    """
    if isinstance(fmt, str) and fmt.lower() in _WIDE_FORMATS:
        bits = torch.arange(1, 2**15, dtype=torch.int32).to(torch.int16)  # sign bit 0, nonzero
        v = bits.view(_WIDE_FORMATS[fmt.lower()]).float()
        v = v[torch.isfinite(v)].numpy().astype(np.float64)
    else:
        v = decode(np.arange(1, 128, dtype=np.uint8), get_format(fmt))
    return np.unique(v[np.isfinite(v)])
