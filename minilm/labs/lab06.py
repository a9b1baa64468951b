"""Lab 06, FP8 emulation: the graded questions.

Five functions probed on hidden inputs: decoding an E4M3 byte to its value, rounding values to
E5M2 (round-to-nearest-even, subnormals, saturation), DeepSeek-V3's per-tile scales of a tensor,
the scales Transformer Engine's delayed scaling uses step by step, and the training memory of a
model under FP32, BF16 and FP8 recipes. One measured value the grader recomputes (the fraction
of output gradients that flush to zero in the unscaled FP8 run) and one multiple choice about
the training runs (too long for the grader to repeat: five runs).

References come from the library (``minilm.fp8``), which is bit-exact against PyTorch's float8
casts (tests/test_fp8.py), and from ``minilm.scaling.hparams.train_gpt``.

Notebooks: ``solutions/06_fp8.ipynb`` (instructor source) and ``labs/06_fp8.ipynb``
(student version); chapter: ``course/06_fp8.md``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from minilm.fp8 import E4M3, DelayedScaler, decode, memory_table, round_to_fp8, tile_scales
from minilm.grading.questions import Case, Hidden, Lab, choice_question, function_question, value_question

# The training runs of the notebook (its MODEL, LR, BATCH, CONTEXT, STEPS in fast mode, WARMUP =
# STEPS // 20, cosine to 10%): q5 recomputes the unscaled one.
MODEL = {"n_layers": 2, "d_model": 64, "n_heads": 4}
LR = 1e-2
BATCH = 16
CONTEXT = 32
FAST_STEPS = 300


def _check_seed(SEED) -> None:  # noqa: N803 - notebook names
    if not isinstance(SEED, int) or isinstance(SEED, bool) or not 0 <= SEED < 2**31:
        raise ValueError(f"SEED must be an int in [0, 2**31), got {SEED!r}")


def fp8_run(recipe: str, SEED: int = 0, STEPS: int = FAST_STEPS, skip=("tok_emb", "head"),  # noqa: N803
            device: str = "cpu", data=None) -> tuple:
    """One training run of the lab: (``Run``, ``quantization_counts``) of the GPT under ``recipe``.

    recipe: "fp32" or a name in ``minilm.fp8.RECIPES``; the GPT, data, batches and schedule are
    those of the notebook's section 4 (seeded by SEED). About 10 s on one CPU thread at 300 steps.
    """
    from minilm.fp8 import quantization_counts, to_fp8, track_quantization
    from minilm.scaling.hparams import make_gpt, train_gpt, wind_tunnel_data
    from minilm.schedules import cosine

    _check_seed(SEED)
    if not isinstance(STEPS, int) or isinstance(STEPS, bool) or not 50 <= STEPS <= 5000:
        raise ValueError(f"STEPS must be an int in [50, 5000] (fast mode: {FAST_STEPS}), got {STEPS!r}")
    data = wind_tunnel_data(SEED) if data is None else data
    model = make_gpt(data.vocab_size, MODEL, CONTEXT, SEED)
    if recipe != "fp32":
        track_quantization(to_fp8(model, recipe, skip=skip))
    run = train_gpt(MODEL, data.train, data.val, vocab_size=data.vocab_size, steps=STEPS, lr=LR,
                    schedule=cosine(STEPS, STEPS // 20, 0.1), batch_size=BATCH, context_length=CONTEXT, seed=SEED,
                    device=device, model=model)
    return run, (quantization_counts(model) if recipe != "fp32" else {})


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


def delayed_scales_ref(amaxes, history_len, algo):
    """The E4M3 scale delayed scaling uses at each step, given each step's amax (``DelayedScaler``)."""
    scaler = DelayedScaler("e4m3", history_len=history_len, algo=algo)
    out = []
    for a in amaxes:
        out.append(float(scaler.scale))  # the scale this step is quantised with: from earlier steps only
        scaler.record(torch.tensor(a, dtype=torch.float32))
    return out


def training_gb_ref(n_params, n_activations, recipe):
    """GB of weights, gradients, master weights, Adam state and saved activations under ``recipe``."""
    row = memory_table(n_params, n_activations)[recipe]
    return row["params_GB"] + row["activations_GB"]


@functools.lru_cache(maxsize=16)  # a pure function of its parameters; the release gates ask many times
def dy_underflow_ref(SEED: int = 0, STEPS: int = FAST_STEPS) -> float:  # noqa: N803 - notebook names
    """Fraction of the output gradients dy entering the FP8 linears that flushed to zero in E5M2,
    over every layer and step of the unscaled ("none") run. About 10 s on one CPU thread."""
    _, counts = fp8_run("none", SEED, STEPS)
    return float(counts["dy"]["underflow_fraction"])


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


def _amax_case(rng: np.random.Generator) -> tuple:
    """A stream of amaxes, longer than the history, with a jump up and a fall back (maybe a zero)."""
    history_len = int(rng.integers(1, 6))
    n = int(rng.integers(history_len + 3, 16))
    amax = 10.0 ** rng.uniform(-2, 2) * np.exp(rng.normal(0, 0.2, size=n))
    jump = int(rng.integers(1, n - 2))
    amax[jump] *= 30.0  # the jump: an outlier arrives
    if rng.random() < 0.3:
        amax[int(rng.choice([k for k in range(1, n) if k != jump]))] = 0.0  # all zeros: the scale stays
    return ([float(np.float32(a)) for a in amax], history_len, str(rng.choice(["max", "most_recent"])))


def _size_case(rng: np.random.Generator) -> tuple:
    return (float(np.round(10 ** rng.uniform(8, 12), -6)), float(np.round(10 ** rng.uniform(9, 12), -6)),
            str(rng.choice(["fp32", "bf16", "fp8"])))


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


def _current_not_delayed(amaxes, history_len, algo):
    return [448.0 / a if a > 0 else 1.0 for a in amaxes]  # this step's own amax: current scaling


def _history_forever(amaxes, history_len, algo):
    return delayed_scales_ref(amaxes, len(amaxes) + 1, algo)  # the outlier never leaves the window


def _always_most_recent(amaxes, history_len, algo):
    return delayed_scales_ref(amaxes, history_len, "most_recent")


def _first_scale_from_its_amax(amaxes, history_len, algo):
    out = delayed_scales_ref(amaxes, history_len, algo)
    return [448.0 / amaxes[0] if amaxes[0] > 0 else 1.0] + out[1:]


def _fp8_weights_only(n_params, n_activations, recipe):
    """Only the compute copy of each weight: forgets gradients, master weights and Adam."""
    per = {"fp32": 4.0, "bf16": 2.0, "fp8": 1.0 + 4.0 / 128}[recipe]
    return (n_params + n_activations) * per / 1e9


def _no_scales(n_params, n_activations, recipe):
    row = memory_table(n_params, n_activations, tile=10**12)[recipe]  # one scale per 10^12 values: none
    return row["params_GB"] + row["activations_GB"]


def _adam_one_moment(n_params, n_activations, recipe):
    return training_gb_ref(n_params, n_activations, recipe) - 4.0 * n_params / 1e9


def _gib_not_gb(n_params, n_activations, recipe):
    return training_gb_ref(n_params, n_activations, recipe) * 1e9 / 2**30


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
        function_question(
            "q4", 2, target="delayed_scales", reference=delayed_scales_ref,
            title="Delayed scaling: the E4M3 scale used at each step, from the amax history of earlier steps",
            public=[Case(args=([1.0, 2.0, 2.0, 8.0, 1.0, 1.0, 1.0], 2, "max"), label="a jump, history of 2, max"),
                    Case(args=([4.0, 4.0, 0.5, 0.5], 3, "most_recent"), label="a fall, most recent")],
            hidden=[Hidden(_amax_case, n=6, label="random amax streams with a jump")],
            rtol=1e-6, atol=0.0,
            hint="the first step has no history (scale 1); after each step push its amax, keep the last "
                 "history_len, reduce them, scale = 448 / that; an amax of 0 leaves the scale as it was",
            wrong=[_current_not_delayed, _history_forever, _always_most_recent, _first_scale_from_its_amax],
        ),
        value_question(
            "q5", 2, target="dy_underflow", reference=dy_underflow_ref, params={"SEED": 0, "STEPS": FAST_STEPS},
            title="The fraction of output gradients that flushed to zero in the unscaled FP8 run",
            # Noise: over data/init seeds 0-3 the fast-mode fraction was 0.4305, 0.4267, 0.4259, 0.4119
            # (0.424 +- 0.008 std); it counts hundreds of thousands of values per step, so float32
            # rounding on another device moves it far less. 0.02 is 2.5 seed-to-seed standard
            # deviations; the known-wrong answers are >= 0.4 away.
            rtol=0.0, atol=0.02,
            hint="quantization_counts(model) of the unscaled run, role 'dy', its underflow_fraction: a "
                 "fraction in [0, 1], not a percentage",
            # Typical slips, SEED 0, fast mode: the current-scaled run's fraction (0.0005), the inputs' x
            # (0.024), a percentage (43.0), and every gradient flushed (1.0).
            wrong=[0.0005, 0.024, 43.0, 1.0],
        ),
        choice_question(
            "q6", 2, target="fp8_finding",
            title="FP32 vs FP8 training of the tiny GPT: what do your runs show?",
            choices={
                "a": "The unscaled run is clearly the worst: with so many gradients flushed to zero its final "
                     "loss is several percent above FP32's.",
                "b": "Every recipe with the head in FP32, the unscaled one included, ends within about 0.1% of "
                     "FP32's loss, no more than FP32's own seed-to-seed spread: at this scale the ranking of "
                     "the recipes is noise.",
                "c": "DeepSeek-V3's fine-grained tiles beat per-tensor scaling by more than 1% of the loss.",
                "d": "Delayed scaling diverged, as its amax history lags behind the tensors.",
            },
            answer="b",
            # Over data/init seeds 0-3 (fast mode) the gaps to FP32 were -0.011% to +0.103% for every
            # recipe with the head in FP32; FP32's spread over three init seeds (seed 0) was 0.080%.
            hint="set each recipe's gap to FP32 beside the spread of FP32's own final loss over seeds",
        ),
        function_question(
            "q7", 2, target="training_gb", reference=training_gb_ref,
            title="Training memory in GB: weights, gradients, master weights, Adam and saved activations",
            public=[Case(args=(1e9, 0.0, "fp32"), label="1B parameters, FP32"),
                    Case(args=(1e9, 0.0, "bf16"), label="1B parameters, BF16 mixed precision"),
                    Case(args=(7e9, 2e10, "fp8"), label="7B parameters, FP8 with saved activations")],
            hidden=[Hidden(_size_case, n=6, label="random model sizes and recipes")],
            rtol=1e-9, atol=0.0,
            hint="per parameter: the copy the matmul reads, the gradient, the FP32 master, Adam's two FP32 "
                 "moments; FP8 tensors also carry one FP32 scale per 128 values",
            wrong=[_fp8_weights_only, _no_scales, _adam_one_moment, _gib_not_gb],
        ),
    ],
)
