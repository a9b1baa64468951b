"""Lab 04, hyperparameters and schedules (WSD, branching, μP, batch size): the graded questions.

Three functions probed on hidden inputs (the WSD multiplier at boundary steps, the μP Adam
learning rate of a named GPT parameter, the steps that branching and separate cosine runs cost),
two measured values the grader recomputes (the loss drop in a 10% WSD decay, the coord-check slope
of SP's logits) and two multiple choices about runs too long for the grader to repeat (the decay
fraction ablation, the learning-rate sweep across widths).

References come from the library (``minilm.schedules.wsd``, ``minilm.mup``,
``minilm.scaling.hparams.branch_wsd``) or from closed forms.

Notebooks: ``solutions/04_schedules.ipynb`` (instructor source) and
``labs/04_schedules.ipynb`` (student version); chapter: ``course/04_schedules.md``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from minilm.grading.questions import Case, Hidden, Lab, choice_question, function_question, value_question
from minilm.mup import mup_lr, parameter_kind
from minilm.schedules import wsd

# The main runs of the notebook (its MODEL, LR, BATCH, CONTEXT, WARMUP = STEPS // 20): q4 recomputes one.
MODEL = {"n_layers": 2, "d_model": 64, "n_heads": 4}
LR = 1e-2
BATCH = 16
CONTEXT = 32
COORD_WIDTHS = (32, 64, 128, 256, 512)  # q6's coordinate check (the notebook's COORD_WIDTHS)
COORD_MODEL = {"n_layers": 2, "n_heads": 4}


def _check_seed(SEED) -> None:  # noqa: N803 - notebook names
    if not isinstance(SEED, int) or isinstance(SEED, bool) or not 0 <= SEED < 2**31:
        raise ValueError(f"SEED must be an int in [0, 2**31), got {SEED!r}")


# --- reference solutions (run by the grader, never sent to the student's kernel) ---------------


def wsd_lr_ref(step, total_steps, warmup_steps, decay_steps, shape="linear"):
    """The WSD multiplier of ``minilm.schedules.wsd`` (decay of ``decay_steps`` whole steps, to 0)."""
    return float(wsd(total_steps, warmup_steps, decay_steps=decay_steps, shape=shape)(step))


def mup_adam_lr_ref(name, shape, lr, d_model, base_width):
    """μP's AdamW learning rate of the GPT parameter ``name`` (TP5 Table 3, ``minilm.mup``)."""
    return float(mup_lr(parameter_kind(name, torch.empty(tuple(shape), device="meta")), lr, d_model / base_width))


def branching_steps_ref(lengths, decay_fraction):
    """(steps of one WSD run branched at every length, steps of one cosine run per length).

    Branch i decays round(f * L_i) steps from the stable checkpoint at L_i - round(f * L_i); the
    stable run goes only as far as the last checkpoint, so it costs max_i(L_i - D_i) + sum_i D_i.
    """
    decays = [round(decay_fraction * n) for n in lengths]
    return (max(n - d for n, d in zip(lengths, decays)) + sum(decays), sum(lengths))


@functools.lru_cache(maxsize=16)  # a pure function of its parameters; the release gates ask many times
def decay_drop_ref(SEED: int = 0, STEPS: int = 400) -> float:  # noqa: N803 - notebook names
    """Held-out loss at the start of the 10% linear decay minus at its end, in the STEPS-long WSD run.

    About 4 s on one CPU thread at STEPS = 400 (one stable run of 360 steps and one decay of 40).
    """
    from minilm.scaling.hparams import Branch, branch_wsd, wind_tunnel_data

    _check_seed(SEED)
    if not isinstance(STEPS, int) or isinstance(STEPS, bool) or not 200 <= STEPS <= 2000:
        raise ValueError(f"STEPS must be an int in [200, 2000] (fast mode: 400), got {STEPS!r}")
    data = wind_tunnel_data(SEED)
    decay = round(0.1 * STEPS)
    branch = Branch(STEPS - decay, decay)
    res = branch_wsd(MODEL, data.train, data.val, [branch], vocab_size=data.vocab_size, lr=LR,
                     warmup_steps=STEPS // 20, batch_size=BATCH, context_length=CONTEXT, seed=SEED, device="cpu")
    return float(res.stable_loss[branch.stable_step] - res.runs[branch].loss)


@functools.lru_cache(maxsize=16)
def logit_slope_ref(SEED: int = 0) -> float:  # noqa: N803 - notebook names
    """Log-log slope of the logits' mean |x| against width after 3 Adam steps, standard parametrization.

    ``minilm.mup.coord_check`` at widths 32-512 (4 forward passes each): about 1 s on one CPU thread.
    """
    from minilm import mup
    from minilm.scaling.hparams import make_gpt, wind_tunnel_data

    _check_seed(SEED)
    data = wind_tunnel_data(SEED)  # the notebook's tokens: coord_check's windows depend on them
    result = mup.coord_check(lambda w: make_gpt(data.vocab_size, {**COORD_MODEL, "d_model": w}),
                             COORD_WIDTHS, steps=4, tokens=data.train, seed=SEED, device="cpu")
    return float(result.slopes()["logits"])


# --- hidden inputs ----------------------------------------------------------------------------


def _wsd_boundary_case(rng: np.random.Generator) -> Case:
    """A random WSD run and one of its boundary steps (or a random step), with a random shape."""
    total = int(rng.integers(20, 5000))
    decay = int(rng.integers(1, total // 2))
    warmup = int(rng.integers(0, min(200, total - decay) + 1))
    start = total - decay
    steps = [max(0, warmup - 1), warmup, start - 1, start, start + 1, start + decay // 2, total - 1, total,
             total + int(rng.integers(1, 50)), int(rng.integers(0, total))]
    step = int(steps[int(rng.integers(len(steps)))])
    shape = str(rng.choice(["linear", "cosine", "1-sqrt"]))
    return Case(args=(step, total, warmup, decay), kwargs={"shape": shape}, label=f"{shape} decay")


def _wsd_truncation_case(rng: np.random.Generator) -> tuple:
    """A run where int(total * (1 - decay / total)) lands one step early, probed at the true decay start."""
    while True:
        total = int(rng.integers(10, 3000))
        decay = int(rng.integers(1, total))
        if int(total * (1 - decay / total)) != total - decay:
            return (total - decay, total, 0, decay, "linear")


_PARAMETER_NAMES = ("tok_emb.weight", "attn_norm.weight", "attn.wqkv.weight", "attn.wo.weight", "ffn_norm.weight",
                    "ffn.w1.weight", "ffn.w3.weight", "ffn.w2.weight", "norm.weight", "head.weight")


def _gpt_parameter(rng: np.random.Generator, which: str | None = None) -> tuple:
    """(name, shape, lr, d_model, base_width) of one parameter of a random minilm GPT."""
    n_heads = int(rng.choice([2, 4, 8]))
    d_model = n_heads * 2 * int(rng.integers(2, 64))
    base_width = int(rng.choice([d_model // 4, d_model // 2, d_model * 2] if d_model % 4 == 0 else [d_model * 2]))
    vocab, d_ff = int(rng.integers(30, 600)), 8 * math.ceil(8 * d_model / 3 / 8)
    kind = which or str(rng.choice(_PARAMETER_NAMES))
    shapes = {"tok_emb.weight": (vocab, d_model), "head.weight": (vocab, d_model), "norm.weight": (d_model,),
              "attn_norm.weight": (d_model,), "ffn_norm.weight": (d_model,), "attn.wqkv.weight": (3 * d_model, d_model),
              "attn.wo.weight": (d_model, d_model), "ffn.w1.weight": (d_ff, d_model),
              "ffn.w3.weight": (d_ff, d_model), "ffn.w2.weight": (d_model, d_ff)}
    top_level = kind in ("tok_emb.weight", "head.weight", "norm.weight")
    name = kind if top_level else f"blocks.{int(rng.integers(0, 6))}.{kind}"
    return (name, shapes[kind], float(10 ** rng.uniform(-4, -1)), d_model, base_width)


def _lengths_case(rng: np.random.Generator) -> tuple:
    """2-6 distinct run lengths and a decay fraction whose decays never sit at a .5 (no rounding
    ties), and where rounding a shorter run's decay up changes the total (truncation shows)."""
    while True:
        lengths = sorted({int(x) for x in rng.integers(20, 20_000, size=int(rng.integers(2, 7)))})
        fraction = float(rng.choice([0.025, 0.05, 0.1, 0.15, 0.2, 0.3]) if rng.random() < 0.5
                         else round(float(rng.uniform(0.01, 0.5)), 3))
        parts = [fraction * n - math.floor(fraction * n) for n in lengths]
        truncated = [math.floor(fraction * n) for n in lengths]
        if all(abs(p - 0.5) > 1e-6 for p in parts) and len(lengths) > 1 and branching_steps_ref(
                lengths, fraction)[0] != max(n - d for n, d in zip(lengths, truncated)) + sum(truncated):
            return (lengths, fraction)


# --- known-wrong answers: each must score less than full (checked by `minilm release`) --------


def _decay_g(p: float, shape: str) -> float:
    return {"linear": 1 - p, "cosine": 0.5 * (1 + math.cos(math.pi * p)), "1-sqrt": 1 - math.sqrt(p)}[shape]


def _wsd_decay_one_step_early(step, total_steps, warmup_steps, decay_steps, shape="linear"):
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    start = total_steps - decay_steps
    return 1.0 if step < start else _decay_g(min(1.0, (step - start + 1) / decay_steps), shape)


def _wsd_warmup_from_zero(step, total_steps, warmup_steps, decay_steps, shape="linear"):
    if step < warmup_steps:
        return step / warmup_steps
    return wsd_lr_ref(step, total_steps, warmup_steps, decay_steps, shape)


def _wsd_truncated_start(step, total_steps, warmup_steps, decay_steps, shape="linear"):
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    start = int(total_steps * (1 - decay_steps / total_steps))  # float truncation: one step early
    return 1.0 if step < start else _decay_g(min(1.0, (step - start) / (total_steps - start)), shape)


def _wsd_sqrt_of_one_minus(step, total_steps, warmup_steps, decay_steps, shape="linear"):
    if shape != "1-sqrt":
        return wsd_lr_ref(step, total_steps, warmup_steps, decay_steps, shape)
    start = total_steps - decay_steps
    if step < max(start, warmup_steps):
        return wsd_lr_ref(step, total_steps, warmup_steps, decay_steps, shape)
    return math.sqrt(1 - min(1.0, (step - start) / decay_steps))


def _mup_every_matrix(name, shape, lr, d_model, base_width):
    return lr * base_width / d_model if len(shape) >= 2 else lr


def _mup_sqrt(name, shape, lr, d_model, base_width):
    kind = parameter_kind(name, torch.empty(tuple(shape), device="meta"))
    return lr * math.sqrt(base_width / d_model) if kind == "hidden" else lr


def _standard_parametrization(name, shape, lr, d_model, base_width):
    return lr


def _mup_readout_too(name, shape, lr, d_model, base_width):
    kind = parameter_kind(name, torch.empty(tuple(shape), device="meta"))
    return lr * base_width / d_model if kind in ("hidden", "readout") else lr


def _branch_from_the_end(lengths, decay_fraction):
    decays = [round(decay_fraction * n) for n in lengths]
    return (max(lengths) + sum(decays), sum(lengths))   # the stable run goes all the way


def _branch_truncated_decays(lengths, decay_fraction):
    decays = [int(decay_fraction * n) for n in lengths]
    return (max(n - d for n, d in zip(lengths, decays)) + sum(decays), sum(lengths))


def _branch_forgets_decays(lengths, decay_fraction):
    return (max(lengths), sum(lengths))


LAB = Lab(
    "04",
    "schedules",
    "Hyperparameters and schedules",
    [
        function_question(
            "q1", 3, target="wsd_lr", reference=wsd_lr_ref,
            title="The warmup-stable-decay multiplier at a step (decay of decay_steps whole steps, to 0)",
            public=[
                Case(args=(4, 100, 5, 20), label="end of warmup"),
                Case(args=(80, 100, 5, 20), label="first decay step"),
                Case(args=(90, 100, 5, 20), kwargs={"shape": "cosine"}, label="cosine decay, half way"),
                Case(args=(96, 100, 0, 16), kwargs={"shape": "1-sqrt"}, label="1-sqrt decay"),
                Case(args=(1, 10, 0, 9), label="decay of 9 of 10 steps"),
                Case(args=(150, 100, 5, 20), label="past the end"),
            ],
            hidden=[Hidden(_wsd_boundary_case, n=8, label="random runs at boundary steps"),
                    Hidden(_wsd_truncation_case, n=2, label="decay lengths that float truncation gets wrong")],
            rtol=1e-9, atol=1e-12,
            hint="steps count from 0; warmup step s gives (s + 1) / warmup_steps; the decay starts at "
                 "total_steps - decay_steps with progress p = k / decay_steps, computed in whole steps",
            wrong=[_wsd_decay_one_step_early, _wsd_warmup_from_zero, _wsd_truncated_start, _wsd_sqrt_of_one_minus],
        ),
        function_question(
            "q2", 2, target="mup_adam_lr", reference=mup_adam_lr_ref,
            title="μP: the Adam learning rate of a named GPT parameter at width d_model (base width base_width)",
            public=[
                Case(args=("blocks.0.ffn.w1.weight", (344, 128), 0.01, 128, 32), label="a hidden matrix, m = 4"),
                Case(args=("tok_emb.weight", (128, 128), 0.01, 128, 32), label="the embedding, m = 4"),
                Case(args=("head.weight", (128, 64), 0.02, 64, 32), label="the readout, m = 2"),
                Case(args=("blocks.1.attn_norm.weight", (256,), 0.003, 256, 64), label="an RMSNorm gain"),
            ],
            hidden=[Hidden(_gpt_parameter, n=6, label="parameters of random GPTs"),
                    Hidden(lambda rng: _gpt_parameter(rng, "attn.wqkv.weight"), n=1, label="attention weights"),
                    Hidden(lambda rng: _gpt_parameter(rng, "head.weight"), n=1, label="the readout")],
            rtol=1e-9, atol=0.0,
            hint="classify the parameter first (which of its dimensions grow with width?), then read "
                 "the Adam column of Table 3 with the readout multiplier already in the forward pass",
            wrong=[_mup_every_matrix, _mup_sqrt, _standard_parametrization, _mup_readout_too],
        ),
        function_question(
            "q3", 2, target="branching_steps", reference=branching_steps_ref,
            title="Steps spent: one WSD run branched at every length vs one cosine run per length",
            public=[([100, 200, 300, 400], 0.1), ([38, 75, 150], 0.2), ([1000], 0.25)],
            hidden=[Hidden(_lengths_case, n=5, label="random lengths and decay fractions")],
            rtol=0.0, atol=0.0,
            hint="the stable run only has to reach the last checkpoint; each branch adds its decay; "
                 "decay lengths are whole steps, round(fraction * length)",
            wrong=[_branch_from_the_end, _branch_truncated_decays, _branch_forgets_decays],
        ),
        value_question(
            "q4", 2, target="decay_drop", reference=decay_drop_ref, params={"SEED": 0, "STEPS": 400},
            title="The held-out loss drop during the 10% decay of the STEPS-long WSD run",
            # Noise: over data/init seeds 0-3 the fast-mode drop was 0.092 +- 0.005 (std; 0.085-0.096);
            # perturbing the initial weights by 1e-6 (far above float32 rounding, i.e. another
            # device's arithmetic) moved it by 1e-6, and autocast is off on every device.
            # 0.01 is two seed-to-seed standard deviations; the known-wrong answers are >= 0.04 away.
            rtol=0.0, atol=0.01,
            hint="the branch's held-out loss at its checkpoint (res.stable_loss) minus its final held-out "
                 "loss, as a positive float in nats",
            # Typical slips, SEED 0, fast mode: the sign flipped (-0.095), WSD's gap to cosine (0.046),
            # the 2.5% decay's drop (0.019), the final loss itself (2.56).
            wrong=[-0.095, 0.046, 0.019, 2.56],
        ),
        choice_question(
            "q5", 2, target="decay_fraction_finding",
            title="The decay-fraction ablation at STEPS steps: what do your runs show?",
            choices={
                "a": "A 2.5% decay already matches cosine, as MiniCPM found for 10% at scale.",
                "b": "10% of the steps suffices to match cosine, as in MiniCPM.",
                "c": "The longer the decay the lower the final loss; only the 40% decay comes within 0.01 nats "
                     "of cosine.",
                "d": "The decay fraction barely matters: all four land within 0.01 nats of each other.",
            },
            answer="c",
            hint="set each fraction's final held-out loss beside the cosine run of the same length",
        ),
        value_question(
            "q6", 2, target="logit_slope_sp", reference=logit_slope_ref, params={"SEED": 0},
            title="Coordinate check: the log-log slope of SP's logits against width after 3 Adam steps",
            # Noise: over seeds 0-5 the slope was 0.84 +- 0.05 (std; 0.78-0.91); a 1e-6 perturbation of
            # the initial weights moved it by 1e-5. 0.05 is one seed-to-seed standard deviation; the
            # known-wrong answers are >= 0.29 away.
            rtol=0.0, atol=0.05,
            hint="slopes() of the standard-parametrization coord check, at the last step, entry 'logits'",
            # Typical slips, SEED 0: μP's slope (-0.23), SP's at step 0 (0.50), an FFN block's (2.48), the
            # ratio of mean |logit| at width 512 to width 32 instead of a slope (9.4).
            wrong=[-0.23, 0.5, 2.48, 9.4],
        ),
        choice_question(
            "q7", 2, target="lr_transfer",
            title="The learning-rate sweep from width 32 to 128: how did the best learning rate move?",
            choices={
                "a": "It fell as the model got wider, under both parametrizations alike.",
                "b": "Under SP it fell by a factor of about 4 or more; under μP it moved by less than a factor of 2.",
                "c": "Under μP it fell; under SP it stayed put.",
                "d": "Neither moved: at widths this small the parametrization makes no difference.",
            },
            answer="b",
            hint="compare each parametrization's optimum at the narrowest and the widest width, with its seed spread",
        ),
    ],
)
