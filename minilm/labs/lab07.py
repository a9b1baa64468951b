"""Lab 07, redundancy (layer removal by Block Influence, lottery tickets): the graded questions,
and the lab's experiment recipe, so that the notebook and the grader train the very same models.

Three functions probed on hidden inputs (Block Influence from a layer's input and output hidden
states, the layers ShortGPT removes given BI values, the magnitude mask at a sparsity), one function
checked against a closed form (what finding a lottery ticket costs and saves), one measured value the
grader recomputes (the held-out loss increase after removing the two lowest-BI layers of the lab's
8-layer GPT) and one multiple choice about the IMP runs (too long for the grader to repeat).

References come from the library (``minilm.redundancy``) or from closed forms.

Notebooks: ``solutions/07_redundancy.ipynb`` (instructor source) and
``labs/07_redundancy.ipynb`` (student version); chapter: ``course/07_redundancy.md``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from minilm.grading.questions import Case, Hidden, Lab, choice_question, function_question, value_question
from minilm.redundancy import block_influence, choose_layers, magnitude_mask, remove_layers

# The notebook's settings (its sizes cell; tests/test_lab07.py checks the notebook uses these).
LANGUAGE = {"n_topics": 16, "doc_length": 15}   # ZipfMarkovMixture: documents of 16 tokens, a topic marker first
GPT_MODEL = {"n_layers": 8, "d_model": 32, "n_heads": 4}
RWKV_MODEL = {"n_layers": 6, "d_model": 32}
LR, RWKV_LR, BATCH, CONTEXT = 1e-2, 1e-2, 16, 32
FAST_GPT_STEPS = 400
CALIBRATION_WINDOWS = 64                        # BI's calibration set: 64 windows of CONTEXT tokens
N_TRAIN, N_VAL = 300_000, 8_192


def _check_seed(SEED) -> None:  # noqa: N803 - notebook names
    if not isinstance(SEED, int) or isinstance(SEED, bool) or not 0 <= SEED < 2**31:
        raise ValueError(f"SEED must be an int in [0, 2**31), got {SEED!r}")


def _check_steps(name: str, steps, low: int = 50, high: int = 20_000) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or not low <= steps <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {steps!r}")


# --- the experiment recipe (shared by the notebook and the grader) -----------------------------


@dataclass(frozen=True)
class LabData:
    """The lab's tokens: a topic mixture whose best possible loss and accuracy are known."""

    train: np.ndarray
    val: np.ndarray
    calibration: torch.Tensor  # (CALIBRATION_WINDOWS, CONTEXT) token ids for Block Influence, apart from val
    vocab_size: int
    entropy_rate: float        # nats/token: the loss no model can beat
    oracle_accuracy: float     # next-token accuracy on val of the true distribution's argmax


def language():
    """The lab's language: ``ZipfMarkovMixture(**LANGUAGE)``, 16 topics of 16-token documents."""
    from minilm.data.languages import ZipfMarkovMixture

    return ZipfMarkovMixture(**LANGUAGE)


def oracle_predictions(lang, tokens: np.ndarray) -> np.ndarray:
    """The Bayes-optimal next-token guess for tokens[1:], given each token's document so far.

    ``tokens`` starts at a document boundary. Position 0 of a document is its topic marker (best
    guess: the most frequent topic's marker), position 1 is drawn from the topic's stationary
    distribution, later ones from its transition row of the previous token.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    n, doc = len(tokens), lang.doc_length + 1
    guess = np.empty(n - 1, dtype=np.int64)
    for i in range(1, n):
        start = i - i % doc
        z = int(tokens[start]) - lang.vocab_size_base
        if i % doc == 0:
            guess[i - 1] = lang.vocab_size_base + int(np.argmax(lang.topic_probs))
        elif i % doc == 1:
            guess[i - 1] = int(np.argmax(lang.topics[z].stationary))
        else:
            guess[i - 1] = int(np.argmax(lang.topics[z].transition[tokens[i - 1]]))
    return guess


@functools.lru_cache(maxsize=4)
def lab_data(SEED: int = 0) -> LabData:  # noqa: N803 - notebook names
    """Training tokens (seed SEED), held-out tokens (SEED + 1), BI's calibration windows (SEED + 2)."""
    _check_seed(SEED)
    lang = language()
    val = lang.sample(N_VAL + 1, SEED + 1)
    n_scored = (len(val) - 1) // CONTEXT * CONTEXT  # the positions next_token_accuracy scores
    oracle = float(np.mean(oracle_predictions(lang, val[: n_scored + 1]) == val[1 : n_scored + 1]))
    calibration = torch.as_tensor(lang.sample(CALIBRATION_WINDOWS * CONTEXT, SEED + 2)).view(-1, CONTEXT)
    return LabData(lang.sample(N_TRAIN, SEED), val, calibration, lang.vocab_size, float(lang.entropy_rate()), oracle)


def make_model(kind: str, vocab_size: int, SEED: int = 0):  # noqa: N803 - notebook names
    """The lab's 8-layer GPT (kind "gpt") or 6-layer RWKV (kind "rwkv"), initialised with SEED."""
    from minilm.models.gpt import GPT, GPTConfig
    from minilm.models.rwkv import RWKV, RWKVConfig

    torch.manual_seed(SEED)
    if kind == "gpt":
        return GPT(GPTConfig(vocab_size=vocab_size, context_length=CONTEXT, **GPT_MODEL))
    if kind == "rwkv":
        return RWKV(RWKVConfig(vocab_size=vocab_size, context_length=CONTEXT, **RWKV_MODEL))
    raise ValueError(f"kind must be 'gpt' or 'rwkv', got {kind!r}")


def train_lab_model(kind: str, data: LabData, SEED: int, steps: int, device="cpu", progress: bool = False,  # noqa: N803
                    snapshot_every: int | None = None):
    """Train the lab's GPT or RWKV for ``steps`` steps: AdamW, 5% warmup, cosine to 10%, no autocast.

    Returns (model, history, snapshots): snapshots maps a step (0 = initialisation) to a copy of the
    weights every ``snapshot_every`` steps (None: none). The whole fast-mode notebook, both models
    and the IMP runs included, took 93 s of CPU time on one thread.
    """
    from minilm.schedules import cosine
    from minilm.train import train

    _check_seed(SEED)
    _check_steps("steps", steps)
    model = make_model(kind, data.vocab_size, SEED).to(device)
    snapshots = {}

    def keep(info):
        if snapshot_every and (info["step"] + 1) % snapshot_every == 0:
            snapshots[info["step"] + 1] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    if snapshot_every:
        snapshots[0] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    lr = LR if kind == "gpt" else RWKV_LR
    history = train(model, data.train, None, steps=steps, batch_size=BATCH, context_length=CONTEXT, lr=lr,
                    schedule=cosine(steps, steps // 20, 0.1), seed=SEED, device=device, progress=progress,
                    autocast=False, callbacks=[keep])
    return model.eval(), history, snapshots


def val_loss(model, data: LabData) -> float:
    """Mean next-token loss (nats) over every CONTEXT-token window of the held-out tokens."""
    from minilm.scaling.sweep import score_loss

    return score_loss(model, data.val, CONTEXT, 0, next(model.parameters()).device)


@functools.lru_cache(maxsize=16)  # a pure function of its parameters; the release gates ask many times
def bi_loss_increase_ref(SEED: int = 0, GPT_STEPS: int = FAST_GPT_STEPS) -> float:  # noqa: N803
    """Held-out loss of the lab's GPT without its two lowest-BI layers minus the full GPT's.

    One training run of GPT_STEPS steps (30-100 s of wall time at 400 steps on a shared 2-core CPU,
    less on a quiet one), BI on the calibration windows, the two layers removed without retraining.
    """
    _check_seed(SEED)
    _check_steps("GPT_STEPS", GPT_STEPS, 100, 20_000)
    data = lab_data(SEED)
    model, _, _ = train_lab_model("gpt", data, SEED, GPT_STEPS)
    bi = block_influence(model, data.calibration)
    small = remove_layers(model, choose_layers("bi", 2, len(model.blocks), bi))
    return float(val_loss(small, data) - val_loss(model, data))


# --- real checkpoints (optional: LLAMA_PATH) ----------------------------------------------------


def checkpoint_block_influence(path: str | Path, n_windows: int = 8, window: int = 128, text: str | None = None):
    """Block Influence of every layer of a Llama-format checkpoint folder (nothing is downloaded).

    Calibration: ``n_windows`` windows of ``window`` tokens of ``text`` (default: Python's own
    documentation, ``minilm.data.corpora.pydoc_text``) in the checkpoint's tokenizer. Returns
    (bi, n_params, seconds). Memory: about 4 bytes per parameter (0.5 GB for a 135M model).
    """
    import time

    from minilm.data.corpora import pydoc_text
    from minilm.models.llama_format import load_llama, load_llama_tokenizer

    t0 = time.perf_counter()
    model = load_llama(path)
    ids = load_llama_tokenizer(path).encode(text if text is not None else pydoc_text()[:400_000])
    window = min(window, model.config.context_length)
    if len(ids) < n_windows * window:
        raise ValueError(f"the calibration text gives {len(ids)} tokens, fewer than {n_windows} x {window}")
    idx = torch.tensor(ids[: n_windows * window], dtype=torch.long).view(n_windows, window)
    bi = block_influence(model, list(idx.split(2)))  # two windows at a time: bounded memory
    return bi, model.num_params(), time.perf_counter() - t0


# --- reference solutions (run by the grader, never sent to the student's kernel) ---------------


def block_influence_ref(x_in, x_out):
    """BI of one layer: 1 - mean over tokens of cos(x_in[t], x_out[t]); x_in, x_out (B, T, C) arrays."""
    a = np.asarray(x_in, dtype=np.float64).reshape(-1, np.shape(x_in)[-1])
    b = np.asarray(x_out, dtype=np.float64).reshape(-1, np.shape(x_out)[-1])
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return float(1.0 - cos.mean())


def layers_to_remove_ref(bi, k):
    """The k layers of lowest Block Influence, as a sorted list of ints (``choose_layers("bi", ...)``)."""
    return choose_layers("bi", int(k), len(bi), list(bi))


def magnitude_mask_ref(weight, sparsity):
    """Bool tensor, True = kept: the round(sparsity * n) entries of smallest |w| are pruned."""
    return magnitude_mask(weight, float(sparsity))


def ticket_economics_ref(rounds, rate, prunable_fraction):
    """(search cost, saving per run, break-even runs), in units of one dense training run.

    With training cost proportional to the weights kept (ideal sparse kernels), a run after r
    pruning rounds costs c_r = (1 - f) + f (1 - p)^r. Finding the ticket trains rounds 0 .. R-1;
    each later training of the ticket saves 1 - c_R; break-even = search / saving.
    """
    f, p, n = float(prunable_fraction), float(rate), int(rounds)
    search = sum((1 - f) + f * (1 - p) ** r for r in range(n))
    saving = f * (1 - (1 - p) ** n)
    return (search, saving, search / saving)


# --- hidden inputs ----------------------------------------------------------------------------


def _hidden_pair(rng: np.random.Generator) -> tuple:
    """A layer's input and output: token norms over 4 orders of magnitude, outputs partly turned."""
    B, T, C = int(rng.integers(1, 5)), int(rng.integers(3, 17)), int(rng.integers(4, 33))
    scale = 10.0 ** rng.uniform(-2, 2, size=(B, T, 1))
    x_in = (rng.normal(size=(B, T, C)) * scale).astype(np.float32)
    turn = rng.uniform(0.05, 2.0, size=(B, T, 1))
    x_out = (x_in + turn * rng.normal(size=(B, T, C)) * scale * rng.uniform(0.2, 5, size=(B, T, 1))).astype(np.float32)
    return (x_in, x_out)


def _bi_values(rng: np.random.Generator) -> tuple:
    """BI values of 4-40 layers (distinct, first and last layers often high, as in ShortGPT) and k."""
    n = int(rng.integers(4, 41))
    bi = rng.uniform(0.01, 0.4, size=n)
    bi[0] = rng.uniform(0.3, 0.9)
    bi = [round(float(v), 6) for v in bi]
    if len(set(bi)) < n:
        bi = [v + 1e-4 * i for i, v in enumerate(bi)]
    return (bi, int(rng.integers(1, n // 2 + 1)))


def _weights(rng: np.random.Generator) -> tuple:
    """A weight matrix (odd shapes, negative entries) and a sparsity whose count is not a whole number."""
    shape = (int(rng.integers(3, 40)), int(rng.integers(3, 40)))
    n = shape[0] * shape[1]
    while True:
        sparsity = round(float(rng.uniform(0.05, 0.95)), 3)
        if 0.55 < (sparsity * n) % 1 < 0.95:  # round() and int() disagree, far from a tie
            break
    w = torch.as_tensor(rng.normal(size=shape) * rng.uniform(0.01, 1), dtype=torch.float32)
    return (w, sparsity)


def _economics(rng: np.random.Generator) -> tuple:
    return (int(rng.integers(1, 16)), round(float(rng.uniform(0.1, 0.5)), 3), round(float(rng.uniform(0.3, 0.99)), 3))


# --- known-wrong answers: each must score less than full (checked by `minilm release`) --------


def _bi_without_one_minus(x_in, x_out):
    return float(np.mean(_cos_rows(x_in, x_out)))  # the mean cosine itself: high for a layer that did little


def _cos_rows(x_in, x_out):
    a = np.asarray(x_in, dtype=np.float64).reshape(-1, np.shape(x_in)[-1])
    b = np.asarray(x_out, dtype=np.float64).reshape(-1, np.shape(x_out)[-1])
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _bi_global_cosine(x_in, x_out):
    a, b = np.asarray(x_in, dtype=np.float64).ravel(), np.asarray(x_out, dtype=np.float64).ravel()
    return float(1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _bi_relative_change(x_in, x_out):
    a, b = np.asarray(x_in, dtype=np.float64), np.asarray(x_out, dtype=np.float64)
    return float(np.mean(np.linalg.norm(b - a, axis=-1) / np.linalg.norm(a, axis=-1)))


def _remove_highest(bi, k):
    return sorted(int(i) for i in np.argsort(bi)[::-1][:k])


def _remove_last(bi, k):
    return list(range(len(bi) - k, len(bi)))


def _remove_one_too_many(bi, k):
    return sorted(int(i) for i in np.argsort(bi)[: k + 1])


def _mask_by_value(weight, sparsity):
    return magnitude_mask(weight - weight.min() + 1e-3, sparsity)  # smallest signed values pruned


def _mask_keeps_sparsity(weight, sparsity):
    return magnitude_mask(weight, 1.0 - sparsity)


def _mask_truncates(weight, sparsity):
    n_prune = int(sparsity * weight.numel())
    return magnitude_mask(weight, n_prune / weight.numel())


def _economics_linear(rounds, rate, prunable_fraction):
    f, p, n = prunable_fraction, rate, rounds
    kept = [max(0.0, 1 - p * r) for r in range(n + 1)]
    search = sum((1 - f) + f * k for k in kept[:n])
    return (search, f * (1 - kept[n]), search / (f * (1 - kept[n])) if kept[n] < 1 else math.inf)


def _economics_all_prunable(rounds, rate, prunable_fraction):
    return ticket_economics_ref(rounds, rate, 1.0)


def _economics_counts_ticket(rounds, rate, prunable_fraction):
    f, p, n = prunable_fraction, rate, rounds
    search = sum((1 - f) + f * (1 - p) ** r for r in range(n + 1))
    saving = f * (1 - (1 - p) ** n)
    return (search, saving, search / saving)


LAB = Lab(
    "07",
    "redundancy",
    "Redundancy: layer removal and lottery tickets",
    [
        function_question(
            "q1", 3, target="block_influence_fn", reference=block_influence_ref,
            title="Block Influence of one layer from its input and output hidden states (B, T, C)",
            public=[Case(args=(np.ones((1, 2, 4), np.float32), np.ones((1, 2, 4), np.float32)), label="unchanged"),
                    Case(args=(np.array([[[1.0, 0.0], [3.0, 0.0]]], np.float32),
                               np.array([[[0.0, 2.0], [3.0, 0.0]]], np.float32)), label="one token turned 90°"),
                    Case(args=_hidden_pair(np.random.default_rng(7)), label="a random layer")],
            hidden=[Hidden(_hidden_pair, n=6, label="random layers, token norms over 4 decades")],
            rtol=1e-4, atol=1e-5,
            hint="one cosine per token (over the C channels), then the mean over every token of every "
                 "sequence; BI is one minus that mean",
            wrong=[_bi_without_one_minus, _bi_global_cosine, _bi_relative_change],
        ),
        function_question(
            "q2", 2, target="layers_to_remove", reference=layers_to_remove_ref,
            title="The k layers ShortGPT removes, given every layer's BI (a sorted list of ints)",
            public=[([0.3, 0.05, 0.2, 0.01], 2), ([0.9, 0.1, 0.12, 0.11, 0.3, 0.08], 3)],
            hidden=[Hidden(_bi_values, n=6, label="BI of 4-40 layers")],
            rtol=0.0, atol=0.0,
            hint="a layer whose output still points where its input pointed changed little",
            wrong=[_remove_highest, _remove_last, _remove_one_too_many],
        ),
        function_question(
            "q3", 3, target="magnitude_mask_fn", reference=magnitude_mask_ref,
            title="The magnitude mask of a weight matrix at a sparsity (bool tensor, True = kept)",
            public=[(torch.tensor([[0.5, -2.0], [0.1, -0.05]]), 0.5),
                    (torch.tensor([[1.0, -3.0, 0.2, 0.0, -0.7]]), 0.4)],
            hidden=[Hidden(_weights, n=6, label="random matrices and sparsities")],
            rtol=0.0, atol=0.0,
            hint="prune by magnitude |w|; the number pruned is round(sparsity * number of weights)",
            wrong=[_mask_by_value, _mask_keeps_sparsity, _mask_truncates],
        ),
        value_question(
            "q4", 2, target="bi_loss_increase", reference=bi_loss_increase_ref,
            params={"SEED": 0, "GPT_STEPS": FAST_GPT_STEPS},
            title="The held-out loss increase after removing the GPT's two lowest-BI layers",
            # Noise: training at lr 1e-2 is chaotic here. Perturbing the initial weights by 1e-6 (far
            # above float32 rounding, i.e. another device's arithmetic) gave 0.017-0.053 over six
            # perturbations of seed 0 (0.032 unperturbed; std 0.014), since it reorders the near-tied
            # middle layers' BI; over seeds 0-3: 0.032, 0.054, 0.086, 0.037. 0.03 is about two standard
            # deviations of the perturbed runs; the known-wrong answers are >= 0.06 away.
            rtol=0.0, atol=0.03,
            hint="held-out loss of remove_layers(model, the two lowest-BI layers) minus the full model's, "
                 "as a positive float in nats",
            # Typical slips, SEED 0, fast mode: the sign flipped (-0.032), the loss after removal itself
            # (2.436), the last two layers removed instead (0.357).
            wrong=[-0.032, 2.436, 0.357],
        ),
        function_question(
            "q5", 2, target="ticket_economics", reference=ticket_economics_ref,
            title="What finding a ticket costs, what each later run saves, and the break-even number of runs",
            public=[(5, 0.2, 0.8), (1, 0.5, 1.0), (10, 0.2, 0.6)],
            hidden=[Hidden(_economics, n=5, label="random rounds, rates and prunable fractions")],
            rtol=1e-9, atol=1e-12,
            hint="the kept fraction compounds: (1 - p) per round; the unprunable part costs the same in "
                 "every run; the ticket's own training is not part of the search",
            wrong=[_economics_linear, _economics_all_prunable, _economics_counts_ticket],
        ),
        choice_question(
            "q6", 2, target="ticket_finding",
            title="Lottery tickets: what did your fast-mode IMP runs show?",
            choices={
                "a": "The ticket (rewound to its initial weights) reached a lower held-out loss than the same mask "
                     "from a fresh random initialisation at every sparsity.",
                "b": "Ticket and random reinitialisation ended within 0.01 nats of each other: the mask alone "
                     "carries the information.",
                "c": "The random reinitialisation beat the ticket at every sparsity.",
                "d": "The ticket beat the random reinitialisation only at the highest sparsity.",
            },
            answer="a",
            hint="set each round's ticket loss beside the reinitialised control with the same mask",
        ),
    ],
)
