"""Lab 08, the capstone: which efficiency moves the law? The experiment and the graded questions.

One compute axis (training FLOPs as ``minilm.ledger`` counts them: ``train``'s history["flops"],
6N plus the attention term per token), six recipes trained at three budgets and several seeds on one task:
a baseline GPT (cosine schedule, the raw two-domain data as crawled, FP32) and five tricks that
each change one thing: the WSD schedule, an RWKV or an LSTM in place of the GPT, a data mixture
weighted toward the target domain, FP8 emulation of every linear layer. Each recipe's held-out
loss on the target domain is fitted with L(C) = E + A C^-alpha (E, the target's entropy rate, is
known) and each trick becomes a compute multiplier with its trend across the budgets
(``minilm.scaling.multiplier``).

Three functions probed on hidden inputs (the multiplier from two fitted laws, the slope of the
multiplier with compute, the compute at which a shrinking trick stops paying), two measured values
the grader recomputes from the same grid (the WSD multiplier, the recipe whose multiplier shrinks
fastest) and one multiple choice (what FP8's multiplier on a FLOP axis does and does not say).

Notebooks: ``solutions/08_moving_the_law.ipynb`` (instructor source) and
``labs/08_moving_the_law.ipynb`` (student version); chapter: ``course/08_moving_the_law.md``.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from minilm.grading.questions import Case, Hidden, Lab, choice_question, function_question, value_question
from minilm.scaling.multiplier import (
    ComputeLaw,
    MultiplierEstimate,
    break_even_compute,
    compute_multiplier,
    estimate_multiplier,
    multiplier_slope,
)

# The lab's settings (tests/test_lab08.py checks the notebook uses these).
LANGUAGE = {"n_domains": 2, "vocab_size": 16, "order": 2, "n_train": 200_000, "n_val": 4_096, "seed": 0}
MODEL = {"n_layers": 2, "d_model": 64, "n_heads": 4}
LR, BATCH, CONTEXT = 1e-2, 16, 32
RAW_MIX = (0.5, 0.5)       # the data as crawled: half target domain, half another one
TUNED_MIX = (0.9, 0.1)     # the mixture trick: mostly target (the domain scored), a little of the other
WSD_DECAY = 0.2            # WSD's decay: the last 20% of the steps (lab 04: a 10% decay is short at tiny scale)
FP8_RECIPE = "current"     # per-tensor current scaling, E4M3 forward / E5M2 backward (lab 06)
RECIPES = ("baseline", "wsd", "rwkv", "lstm", "fp8", "mixture")
TRICKS = RECIPES[1:]
FAST_STEPS, FULL_STEPS = (80, 160, 320), (100, 200, 400, 800, 1600)
FAST_SEEDS, FULL_SEEDS = 3, 5


def _check_seed(SEED) -> None:  # noqa: N803 - notebook names
    if not isinstance(SEED, int) or isinstance(SEED, bool) or not 0 <= SEED < 2**31:
        raise ValueError(f"SEED must be an int in [0, 2**31), got {SEED!r}")


def _check_fast(FAST) -> None:  # noqa: N803 - notebook names
    if not isinstance(FAST, bool):
        raise ValueError(f"FAST must be True or False, got {FAST!r}")


# --- the experiment (shared by the notebook and the grader) ------------------------------------


@functools.lru_cache(maxsize=1)
def domains():
    """The two domains (``minilm.mixing.markov_domains(**LANGUAGE)``): A is the target, B the other one."""
    from minilm.mixing import markov_domains

    return markov_domains(**LANGUAGE, names=("target", "other"))


def make_model(recipe: str, seed: int):
    """The recipe's model, initialised with ``seed``: the GPT (RWKV, LSTM for those tricks; FP8 linears for fp8)."""
    from minilm.fp8 import to_fp8
    from minilm.models.registry import build_model

    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}: use one of {RECIPES}")
    torch.manual_seed(seed)
    kind = recipe if recipe in ("rwkv", "lstm") else "gpt"
    model = build_model(kind, LANGUAGE["vocab_size"], context_length=CONTEXT, **MODEL)
    return to_fp8(model, FP8_RECIPE) if recipe == "fp8" else model


def train_recipe(recipe: str, steps: int, seed: int, device="cpu") -> tuple[float, float]:
    """Train ``recipe`` for ``steps`` steps; return (held-out loss on the target domain, training FLOPs).

    AdamW at LR, 5% warmup; cosine to 10% of the peak, or WSD (decay to 0 over the last WSD_DECAY of the
    steps); batches of BATCH windows of CONTEXT tokens drawn from the raw or the tuned mixture; no autocast.
    """
    from minilm.mixing import MixtureSampler
    from minilm.scaling.sweep import score_loss
    from minilm.schedules import cosine, wsd
    from minilm.train import train

    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 20:
        raise ValueError(f"steps must be an int >= 20, got {steps!r}")
    doms = domains()
    model = make_model(recipe, seed).to(device)
    warmup = steps // 20
    schedule = (wsd(steps, warmup, decay_steps=round(WSD_DECAY * steps)) if recipe == "wsd"
                else cosine(steps, warmup, 0.1))
    sampler = MixtureSampler(doms, TUNED_MIX if recipe == "mixture" else RAW_MIX)
    history = train(model, sampler, None, steps=steps, batch_size=BATCH, context_length=CONTEXT, lr=LR,
                    schedule=schedule, seed=seed, device=device, progress=False, autocast=False)
    loss = score_loss(model, doms[0].val, CONTEXT, 0, next(model.parameters()).device)
    return float(loss), float(history["flops"][-1])  # the ledger's count (minilm.ledger.training_flops)


@dataclass(frozen=True)
class Grid:
    """Every recipe at every budget and seed: held-out target loss and the FLOPs each run spent."""

    recipes: tuple[str, ...]
    steps: tuple[int, ...]
    seeds: tuple[int, ...]
    loss: np.ndarray     # (recipes, seeds, budgets) nats/token on the target domain's held-out tokens
    flops: np.ndarray    # (recipes, budgets) training FLOPs of one run (the same for every seed)
    entropy: float       # the target domain's entropy rate: the floor E of every fit
    seconds: float

    def losses(self, recipe: str) -> np.ndarray:
        return self.loss[self.recipes.index(recipe)]

    def compute(self, recipe: str) -> np.ndarray:
        return self.flops[self.recipes.index(recipe)]

    @property
    def reference_compute(self) -> float:
        """Where multipliers are read: the baseline's middle budget."""
        return float(self.compute("baseline")[len(self.steps) // 2])


def grid_settings(FAST: bool = True) -> tuple[tuple[int, ...], int]:  # noqa: N803 - notebook names
    """(budgets in steps, number of seeds) of fast or full mode."""
    _check_fast(FAST)
    return (FAST_STEPS, FAST_SEEDS) if FAST else (FULL_STEPS, FULL_SEEDS)


@functools.lru_cache(maxsize=4)  # the notebook's grid is the graders' grid: one run per (SEED, FAST, device)
def run_grid(SEED: int = 0, FAST: bool = True, device: str = "cpu") -> Grid:  # noqa: N803 - notebook names
    """Train every recipe at every budget for seeds SEED, SEED + 1, ... (fast: 3 budgets x 3 seeds).

    Fast mode: 6 recipes x 3 budgets x 3 seeds = 54 runs of 80-320 steps, about 90 s on one CPU thread.
    """
    from tqdm.auto import tqdm

    _check_seed(SEED)
    steps, n_seeds = grid_settings(FAST)
    seeds = tuple(SEED + i for i in range(n_seeds))
    loss = np.zeros((len(RECIPES), n_seeds, len(steps)))
    flops = np.zeros((len(RECIPES), len(steps)))
    t0 = time.perf_counter()
    jobs = [(r, s, b) for s in range(n_seeds) for r in range(len(RECIPES)) for b in range(len(steps))]
    for r, s, b in tqdm(jobs, desc="recipes x seeds x budgets"):
        loss[r, s, b], flops[r, b] = train_recipe(RECIPES[r], steps[b], seeds[s], device)
    loss.setflags(write=False)   # the cached grid is also the references' grid: a notebook must not edit it
    flops.setflags(write=False)
    return Grid(RECIPES, tuple(steps), seeds, loss, flops, float(domains()[0].entropy_rate),
                time.perf_counter() - t0)


def estimates(grid: Grid) -> dict[str, MultiplierEstimate]:
    """Each trick's multiplier over the baseline at the reference compute, with its trend, seed by seed."""
    return {t: estimate_multiplier(t, grid.compute("baseline"), grid.losses("baseline"), grid.compute(t),
                                   grid.losses(t), grid.entropy, grid.reference_compute) for t in TRICKS}


def _reference_grid(SEED: int, FAST: bool) -> Grid:  # noqa: N803 - notebook names
    """The grid on this machine's default device: in a self-study notebook run with DEVICE = "auto" it is
    the notebook's own ``run_grid(SEED, FAST, str(device))`` (cached, so checking costs nothing); the
    grader recomputes it (fast mode: 54 tiny runs, 1-3 minutes on one CPU thread)."""
    from minilm.device import resolve_device

    return run_grid(SEED, FAST, str(resolve_device("auto")))


@functools.lru_cache(maxsize=16)
def wsd_multiplier_ref(SEED: int = 0, FAST: bool = True) -> float:  # noqa: N803 - notebook names
    """The WSD multiplier (geometric mean over the seeds) at the baseline's middle budget."""
    return estimates(_reference_grid(SEED, FAST))["wsd"].multiplier


@functools.lru_cache(maxsize=16)
def fastest_shrinking_ref(SEED: int = 0, FAST: bool = True) -> str:  # noqa: N803 - notebook names
    """The trick whose multiplier has the lowest mean slope d ln k / d ln C (shrinks fastest, or grows least)."""
    est = estimates(_reference_grid(SEED, FAST))
    return min(TRICKS, key=lambda t: est[t].slope)


# --- reference solutions (run by the grader, never sent to the student's kernel) ---------------


def compute_multiplier_ref(base, trick, level):
    """k = C_base(level) / C_trick(level) for laws given as (E, A, alpha): L(C) = E + A C^-alpha."""
    return compute_multiplier(ComputeLaw(*map(float, base)), ComputeLaw(*map(float, trick)), float(level))


def multiplier_slope_ref(alpha_base, alpha_trick):
    """d ln k / d ln C_base = 1 - alpha_base / alpha_trick."""
    return multiplier_slope(ComputeLaw(0.0, 1.0, float(alpha_base)), ComputeLaw(0.0, 1.0, float(alpha_trick)))


def break_even_compute_ref(k0, slope, C0):  # noqa: N803 - the chapter's names
    """The compute at which a multiplier k0 at C0 with log-log slope ``slope`` reaches 1 (inf: never)."""
    return break_even_compute(float(k0), float(slope), float(C0))


# --- hidden inputs ----------------------------------------------------------------------------


def _law(rng: np.random.Generator, E: float | None = None) -> tuple[float, float, float]:  # noqa: N803
    E = float(rng.uniform(0.5, 3.0)) if E is None else E
    return (E, float(10 ** rng.uniform(0.5, 3.5)), float(rng.uniform(0.1, 0.9)))


def _multiplier_case(rng: np.random.Generator) -> tuple:
    """Two laws on one floor and a level the baseline reaches between 1e6 and 1e12 FLOPs."""
    base = _law(rng)
    trick = _law(rng, E=base[0])
    C = 10 ** rng.uniform(6, 12)
    return (base, trick, float(base[0] + base[1] * C ** -base[2]))


def _slope_case(rng: np.random.Generator) -> tuple:
    return (float(rng.uniform(0.05, 1.0)), float(rng.uniform(0.05, 1.0)))


def _break_even_case(rng: np.random.Generator) -> tuple:
    """A multiplier above or below 1, a slope towards 1 (a finite answer) or away from it (inf)."""
    k0 = float(np.exp(rng.choice([-1, 1]) * rng.uniform(0.05, 1.5)))
    toward = rng.random() < 0.7
    slope = float(rng.uniform(0.02, 0.5) * (-np.sign(np.log(k0)) if toward else np.sign(np.log(k0))))
    return (k0, slope, float(10 ** rng.uniform(6, 12)))


# --- known-wrong answers: each must score less than full (checked by `minilm release`) --------


def _needed(law, level, power=None):
    E, A, alpha = law
    return (A / (level - E)) ** (1 / alpha if power is None else power)


def _multiplier_inverted(base, trick, level):
    return _needed(trick, level) / _needed(base, level)


def _multiplier_without_floor(base, trick, level):
    return _needed((0.0, *base[1:]), level) / _needed((0.0, *trick[1:]), level)


def _multiplier_alpha_not_inverse(base, trick, level):
    return _needed(base, level, base[2]) / _needed(trick, level, trick[2])


def _multiplier_loss_ratio(base, trick, level):  # the reducible losses' ratio at the baseline's compute
    C = _needed(base, level)
    return (base[1] * C ** -base[2]) / (trick[1] * C ** -trick[2])


def _slope_flipped(alpha_base, alpha_trick):
    return alpha_base / alpha_trick - 1


def _slope_inverse_ratio(alpha_base, alpha_trick):
    return alpha_trick / alpha_base - 1


def _slope_difference(alpha_base, alpha_trick):
    return alpha_trick - alpha_base


def _break_even_sign(k0, slope, C0):  # noqa: N803
    return C0 * k0 ** (1 / slope)


def _break_even_always(k0, slope, C0):  # noqa: N803 - forgets that a line moving away never gets there
    return C0 * k0 ** (-1 / slope) if slope != 0 else math.inf


def _break_even_linear(k0, slope, C0):  # noqa: N803 - k, not ln k, on the line
    return C0 * math.exp(-(k0 - 1) / slope) if (k0 > 1) == (slope < 0) else math.inf


LAB = Lab(
    "08",
    "moving_the_law",
    "Capstone: which efficiency moves the law",
    [
        function_question(
            "q1", 3, target="compute_multiplier", reference=compute_multiplier_ref,
            title="The compute multiplier of a trick at a loss level, from two fitted laws (E, A, alpha)",
            public=[
                Case(args=((2.0, 100.0, 0.5), (2.0, 50.0, 0.5), 2.1), label="half the A, the same alpha: 4x"),
                Case(args=((1.2, 40.0, 0.3), (1.2, 40.0, 0.3), 1.5), label="the same law: 1x"),
                Case(args=((1.2, 300.0, 0.4), (1.2, 60.0, 0.3), 1.35), label="different exponents"),
            ],
            hidden=[Hidden(_multiplier_case, n=8, label="random laws and levels")],
            rtol=1e-7, atol=0.0,
            hint="invert L = E + A C^-alpha for the compute each recipe needs to reach the level, then take "
                 "the baseline's over the trick's (more than 1 when the trick needs less)",
            wrong=[_multiplier_inverted, _multiplier_without_floor, _multiplier_alpha_not_inverse,
                   _multiplier_loss_ratio],
        ),
        function_question(
            "q2", 2, target="multiplier_slope", reference=multiplier_slope_ref,
            title="How fast the multiplier moves with compute: d ln k / d ln C from the two exponents",
            public=[(0.5, 0.5), (0.3, 0.6), (0.6, 0.3)],
            hidden=[Hidden(_slope_case, n=6, label="random exponents")],
            rtol=1e-9, atol=1e-12,
            hint="write ln C_trick at the loss the baseline reaches with C, as a function of ln C, and differentiate "
                 "ln k = ln C - ln C_trick",
            wrong=[_slope_flipped, _slope_inverse_ratio, _slope_difference],
        ),
        value_question(
            "q3", 2, target="wsd_multiplier", reference=wsd_multiplier_ref, params={"SEED": 0, "FAST": True},
            title="Your WSD multiplier over the cosine baseline at the baseline's middle budget",
            # Noise: in the fast grid (SEED 0) the three seeds' WSD multipliers were 1.120, 1.085, 1.088 (std
            # 0.019; geometric mean 1.097 +- 0.011); CPU runs repeat bit for bit. 0.04 is two seed-to-seed
            # standard deviations; the known-wrong answers are >= 0.09 away.
            rtol=0.0, atol=0.04,
            hint="estimates(grid)['wsd'].multiplier, or by hand: fit each seed's two curves, take the multiplier "
                 "at grid.reference_compute, and the geometric mean over seeds",
            # Typical slips, SEED 0: the ratio inverted (0.911), "no gain" (1.0), RWKV's multiplier (8.61).
            wrong=[0.911, 1.0, 8.61],
        ),
        value_question(
            "q4", 2, target="fastest_shrinking", reference=fastest_shrinking_ref, params={"SEED": 0, "FAST": True},
            title="The trick whose multiplier fell fastest with compute in your grid (lowest mean slope)",
            hint="one of 'wsd', 'rwkv', 'lstm', 'fp8', 'mixture': the lowest mean slope d ln k / d ln C over the seeds",
            # SEED 0, fast mode: rwkv's slope was -0.44 +- 0.04, every other trick's positive (wsd +0.07,
            # lstm +0.13, fp8 +0.07, mixture +0.34): the highest slope instead of the lowest gives "mixture".
            wrong=["mixture", "wsd", "lstm"],
        ),
        choice_question(
            "q5", 2, target="fp8_reading",
            title="FP8's multiplier on a FLOP axis: what does it measure?",
            choices={
                "a": "FP8 does half the FLOPs of FP32 per step, so its multiplier should be about 2 on this axis.",
                "b": "It measures only what FP8's rounding costs in loss per FLOP (about 1 when the recipe works); "
                     "FP8's gain is FLOPs per second and memory on hardware with FP8 tensor cores, which a FLOP axis "
                     "cannot show.",
                "c": "A multiplier near 1 shows FP8 training is useless.",
                "d": "Emulated FP8 is exact, so the multiplier is exactly 1 and any difference is a bug.",
            },
            answer="b",
            hint="what is on the x axis, and which of FP8's benefits would move a point along it?",
        ),
        function_question(
            "q6", 2, target="break_even_compute", reference=break_even_compute_ref,
            title="If the trend held: the compute at which a trick stops paying (k = 1)",
            public=[(2.0, -0.25, 1e9), (0.8, 0.1, 1e8), (1.5, 0.2, 1e10)],
            hidden=[Hidden(_break_even_case, n=8, label="random multipliers and trends")],
            rtol=1e-9, atol=0.0,
            hint="ln k is a straight line in ln C through (ln C0, ln k0); where does it cross 0, and when does it "
                 "never (return math.inf)?",
            wrong=[_break_even_sign, _break_even_always, _break_even_linear],
        ),
    ],
)
