"""Lab 99, the demo lab: a tiny bigram language model, graded end to end by the grader's tests.

It shows every kind of question a real lab declares: two functions probed on hidden inputs
(softmax, add-alpha bigram probabilities), a measured value the grader recomputes itself
(held-out negative log-likelihood under the notebook's seed) and a multiple choice. Its
notebooks are ``tests/fixtures/demo_lab/solutions/99_demo.ipynb`` (instructor source) and
``tests/fixtures/demo_lab/99_demo.ipynb`` (released student version); it is registered in
``minilm.labs.DEMO_MODULES``, apart from the course's labs. The background is lab 00's
(``course/00_language_models.md``).
"""

from __future__ import annotations

import math

import numpy as np

from minilm.grading.questions import Case, Hidden, Lab, choice_question, function_question, value_question

VOCAB = 6  # tokens 0..5


def make_corpus(seed: int, n_tokens: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Token ids drawn from a fixed random Markov chain: (train, held_out) int64 arrays.

    The chain's transition matrix is fixed (seed 1234) so the text has structure a bigram model
    can learn; ``seed`` picks the sample.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    chain = np.random.default_rng(1234).dirichlet(np.full(VOCAB, 0.3), size=VOCAB)  # (V, V) rows sum to 1
    rng = np.random.default_rng(seed)
    tokens = np.empty(n_tokens, dtype=np.int64)
    tokens[0] = rng.integers(VOCAB)
    for t in range(1, n_tokens):
        tokens[t] = rng.choice(VOCAB, p=chain[tokens[t - 1]])
    split = int(0.8 * n_tokens)
    return tokens[:split], tokens[split:]


# --- reference solutions (run by the grader, never sent to the student's kernel) ---------------


def softmax_ref(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, stable for large logits: exp(x - max) / sum exp(x - max)."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def bigram_probs_ref(tokens: np.ndarray, vocab_size: int, alpha: float = 1.0) -> np.ndarray:
    """P[a, b] = (count(a→b) + alpha) / (count(a→·) + alpha·V): add-alpha smoothed bigrams."""
    counts = np.zeros((vocab_size, vocab_size), dtype=np.float64)
    np.add.at(counts, (tokens[:-1], tokens[1:]), 1.0)
    return (counts + alpha) / (counts.sum(axis=1, keepdims=True) + alpha * vocab_size)


def heldout_nll_ref(SEED: int) -> float:  # noqa: N803 - named after the notebook parameter
    """The measured value of q3, recomputed by the grader under the notebook's own seed."""
    train, held = make_corpus(SEED)
    probs = bigram_probs_ref(train, VOCAB, 1.0)
    return float(-np.mean(np.log(probs[held[:-1], held[1:]])))


def _logits(rng: np.random.Generator) -> tuple:
    rows, cols = rng.integers(2, 5), rng.integers(3, 7)
    return (rng.normal(size=(rows, cols)) * 3.0,)


def _large_logits(rng: np.random.Generator) -> tuple:
    sign = rng.choice([-1.0, 1.0])
    return (sign * 900.0 + rng.normal(size=(3, 5)) * 30.0,)  # exp(x) over- or underflows float64 here


def _tokens(rng: np.random.Generator) -> Case:
    vocab = int(rng.integers(3, 8))
    tokens = rng.integers(0, vocab, size=int(rng.integers(20, 60))).astype(np.int64)
    return Case(args=(tokens, vocab), kwargs={"alpha": float(rng.uniform(0.1, 2.0))})


# --- known-wrong answers: each must score less than full (checked by `minilm release`) --------


def _softmax_naive(x: np.ndarray) -> np.ndarray:
    return np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True)  # overflows: NaN for large logits


def _softmax_wrong_axis(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def _bigram_unsmoothed(tokens: np.ndarray, vocab_size: int, alpha: float = 1.0) -> np.ndarray:
    counts = np.zeros((vocab_size, vocab_size))
    np.add.at(counts, (tokens[:-1], tokens[1:]), 1.0)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)  # ignores alpha


def _bigram_transposed(tokens: np.ndarray, vocab_size: int, alpha: float = 1.0) -> np.ndarray:
    return bigram_probs_ref(tokens[::-1].copy(), vocab_size, alpha)


LAB = Lab(
    "99",
    "demo",
    "Demo lab: a bigram language model",
    [
        function_question(
            "q1", 3, target="softmax", reference=softmax_ref,
            title="Implement a numerically stable softmax over the last axis",
            public=[
                (np.array([1.0, 2.0, 3.0]),),
                Case(args=(np.array([[0.0, 1.0], [5.0, 5.0]]),), label="a batch of two rows"),
            ],
            hidden=[Hidden(_logits, n=2, label="random logits"), Hidden(_large_logits, n=1, label="large logits")],
            rtol=1e-6, atol=1e-12,
            hint="work along the last axis (axis=-1) and subtract the row maximum before exponentiating",
            wrong=[_softmax_naive, _softmax_wrong_axis],
        ),
        function_question(
            "q2", 3, target="bigram_probs", reference=bigram_probs_ref,
            title="Add-alpha smoothed bigram probabilities P[previous, next]",
            public=[Case(args=(np.array([0, 1, 1, 2, 0, 1], dtype=np.int64), 3), kwargs={"alpha": 1.0})],
            hidden=[Hidden(_tokens, n=3, label="random text")],
            rtol=1e-9, atol=1e-12,
            hint="rows are the previous token, columns the next; every row must sum to one",
            wrong=[_bigram_unsmoothed, _bigram_transposed],
        ),
        value_question(
            "q3", 2, target="heldout_nll", reference=heldout_nll_ref, params={"SEED": 0},
            title="Report the held-out negative log-likelihood (nats per token) of your alpha=1 model",
            # Deterministic float64 arithmetic: only summation order differs across machines.
            rtol=1e-6, atol=1e-9,
            hint="mean of -log P[previous, next] over consecutive held-out pairs, natural log, as a float",
            wrong=[heldout_nll_ref(0) / math.log(2.0), 0.0],  # in bits instead of nats; a placeholder
        ),
        choice_question(
            "q4", 2, target="why_max",
            title="Why does a stable softmax subtract the maximum?",
            choices={
                "a": "It makes the probabilities sum to one.",
                "b": "exp overflows for large logits; subtracting a constant leaves softmax unchanged.",
                "c": "It makes gradient descent converge faster.",
            },
            answer="b",
            hint="softmax(x - c) = softmax(x) for any constant c",
        ),
    ],
)
