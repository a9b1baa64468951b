"""Lab 06, FP8 emulation: the graded questions (first part: the three probed functions).

Three functions probed on hidden inputs: decoding an E4M3 byte to its value, rounding values to
E5M2 (round-to-nearest-even, subnormals, saturation), and DeepSeek-V3's per-tile scales of a
tensor. References come from the library (``minilm.fp8``), which is bit-exact against PyTorch's
float8 casts (tests/test_fp8.py).

Not yet registered in ``minilm.labs.LAB_MODULES``: the notebooks ``labs/solutions/06_fp8.ipynb``
and ``labs/06_fp8.ipynb`` and the measured questions (underflow fraction of the unscaled run, the
recipe with the smallest final-loss gap) are still to come.
"""

from __future__ import annotations

import numpy as np
import torch

from minilm.fp8 import E4M3, decode, round_to_fp8, tile_scales
from minilm.grading.questions import Case, Hidden, Lab, function_question

# --- reference solutions (run by the grader, never sent to the student's kernel) ---------------


def e4m3_decode_ref(code):
    """The value of the E4M3 byte ``code`` (0-255; NaN codes 127 and 255 are not probed)."""
    return float(decode(np.uint8(code), "e4m3"))


def round_to_e5m2_ref(values):
    """Each value rounded to the nearest E5M2 number (ties to even, saturating at +-57344)."""
    x = torch.tensor(values, dtype=torch.float32)
    return [float(v) for v in round_to_fp8(x, "e5m2", saturate=True)]


def tile_scales_ref(x, tile):
    """E4M3 scales 448 / amax, one per ``tile`` (rows, cols) of the 2-D list ``x`` (1 for an all-zero tile)."""
    t = tile_scales(torch.tensor(x, dtype=torch.float32), "e4m3", tile=tuple(tile))
    return t.tolist()


# --- hidden inputs ----------------------------------------------------------------------------


def _code_case(rng: np.random.Generator) -> tuple:
    while True:
        code = int(rng.integers(0, 256))
        if code & 0x7F != 0x7F:
            return (code,)


def _subnormal_code_case(rng: np.random.Generator) -> tuple:
    return (int(rng.integers(1, 8)) | (int(rng.integers(0, 2)) << 7),)


def _values_case(rng: np.random.Generator) -> tuple:
    """Values over every magnitude of E5M2: subnormal, normal, exact ties and beyond max."""
    mags = 2.0 ** rng.uniform(-18, 17, size=6)
    ties = [2.0**e * (1 + (2 * int(rng.integers(0, 4)) + 1) / 8) for e in rng.integers(-10, 12, size=2)]
    vals = np.concatenate([mags, ties]) * rng.choice([-1.0, 1.0], size=8)
    return ([float(np.float32(v)) for v in vals],)


def _tile_case(rng: np.random.Generator) -> tuple:
    tr, tc = int(rng.choice([1, 2])), int(rng.choice([2, 4]))
    r, c = tr * int(rng.integers(1, 4)), tc * int(rng.integers(1, 4))
    x = rng.normal(size=(r, c)) * 10.0 ** rng.uniform(-3, 3)
    x[int(rng.integers(r)), int(rng.integers(c))] *= 100.0  # an outlier in one tile
    return ([[float(np.float32(v)) for v in row] for row in x], [tr, tc])


# --- known-wrong answers ----------------------------------------------------------------------


def _decode_no_subnormals(code):
    s, e, m = code >> 7, (code >> 3) & 0xF, code & 7
    return (-1.0) ** s * 2.0 ** (e - 7) * (1 + m / 8)  # treats E = 0 as normal


def _decode_bias_8(code):
    s, e, m = code >> 7, (code >> 3) & 0xF, code & 7
    return (-1.0) ** s * (2.0 ** (e - 8) * (1 + m / 8) if e else 2.0**-7 * m / 8)


def _decode_ignores_sign(code):
    return abs(e4m3_decode_ref(code))


def _round_half_up(values):
    out = []
    for v in values:
        a = abs(v)
        e = max(int(np.floor(np.log2(a))) if a else -16, -14)
        step = 2.0 ** (e - 2)
        out.append(float(np.sign(v) * min(np.floor(a / step + 0.5) * step, 57344.0)))
    return out


def _round_e4m3_instead(values):
    return [float(v) for v in round_to_fp8(torch.tensor(values, dtype=torch.float32), "e4m3")]


def _truncate(values):
    out = []
    for v in values:
        a = abs(v)
        e = max(int(np.floor(np.log2(a))) if a else -16, -14)
        step = 2.0 ** (e - 2)
        out.append(float(np.sign(v) * min(np.floor(a / step) * step, 57344.0)))
    return out


def _per_tensor_scale(x, tile):
    nr, nc = len(x) // tile[0], len(x[0]) // tile[1]
    s = float(E4M3.max / np.float32(np.abs(np.asarray(x, dtype=np.float32)).max()))
    return [[s] * nc for _ in range(nr)]


def _amax_over_max(x, tile):
    return (1.0 / torch.tensor(tile_scales_ref(x, tile))).tolist()


def _transposed_tiles(x, tile):
    return tile_scales_ref(x, tile[::-1]) if len(x) % tile[1] == 0 and len(x[0]) % tile[0] == 0 else [[0.0]]


LAB = Lab(
    "06",
    "fp8",
    "FP8 emulation",
    [
        function_question(
            "q1", 2, target="e4m3_decode", reference=e4m3_decode_ref,
            title="The value of an E4M3 byte (S EEEE MMM, bias 7)",
            public=[Case(args=(0x38,), label="1.0"), Case(args=(0x7E,), label="the largest, 448"),
                    Case(args=(0x01,), label="the smallest subnormal"), Case(args=(0xC4,), label="a negative")],
            hidden=[Hidden(_code_case, n=8, label="random codes"),
                    Hidden(_subnormal_code_case, n=2, label="subnormal codes")],
            rtol=0.0, atol=0.0,
            hint="E = 0 is subnormal: 2^(1 - bias) * M / 8, no implicit 1",
            wrong=[_decode_no_subnormals, _decode_bias_8, _decode_ignores_sign],
        ),
        function_question(
            "q2", 2, target="round_to_e5m2", reference=round_to_e5m2_ref,
            title="Values rounded to E5M2 (nearest, ties to even, subnormals, saturating at 57344)",
            public=[([1.0, 1.1, 1.125, 1.375],), ([3e-6, 1e-7, 60000.0, -0.3],)],
            hidden=[Hidden(_values_case, n=6, label="values across every magnitude, with ties")],
            rtol=0.0, atol=0.0,
            hint="two mantissa bits: the spacing at 2^e is 2^(e-2), and never below 2^-16",
            wrong=[_round_half_up, _round_e4m3_instead, _truncate],
        ),
        function_question(
            "q3", 2, target="tile_scales", reference=tile_scales_ref,
            title="DeepSeek-V3 fine-grained scaling: the E4M3 scale 448 / amax of each tile",
            public=[([[1.0, -2.0, 0.5, 4.0], [0.0, 0.0, 8.0, 1.0]], [1, 2]),
                    ([[1.0, 2.0], [3.0, -448.0]], [2, 2])],
            hidden=[Hidden(_tile_case, n=5, label="random tensors with an outlier")],
            rtol=1e-6, atol=0.0,
            hint="one amax per (rows x cols) tile; scale = 448 / amax; an all-zero tile keeps scale 1",
            wrong=[_per_tensor_scale, _amax_over_max, _transposed_tiles],
        ),
    ],
)
