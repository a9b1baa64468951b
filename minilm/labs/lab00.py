"""Lab 00, language models from n-grams to transformers and RWKV: the graded questions.

Seven questions (15 points). Three functions probed on hidden inputs against closed-form
references (perplexity from log-probabilities, bigram MLE / add-k, the entropy rate of a Markov
chain), two values the grader recomputes itself from the notebook's ``SEED`` and
``MARKOV_TOKENS`` with the library's ``NGramModel`` (under two seconds), one analysis function
(which model wins at equal training compute) and one multiple choice.

Why the neural comparison is graded through a function and not as "which model won in your run":
a 20-second training run cannot be recomputed by the grader, and its winner could in principle
depend on the machine. The student's *function* is probed on synthetic curves where the right
answer is known; the notebook then applies it to the student's own run.

The notebooks are ``solutions/00_language_models.ipynb`` (instructor source) and
``labs/00_language_models.ipynb`` (released student version); the chapter, with the questions'
background, is ``course/00_language_models.md``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from minilm.data import MarkovLanguage
from minilm.grading.questions import Case, Hidden, Lab, choice_question, function_question, value_question
from minilm.models import NGramModel

# The synthetic language of part 2: an order-3 Markov chain over 8 tokens (512 contexts). An
# n-gram model needs order 3 + 1 = 4 to see the whole context the chain uses.
MARKOV_VOCAB = 8
MARKOV_ORDER = 3
MARKOV_CONCENTRATION = 0.3
MARKOV_VAL_TOKENS = 20_000
NGRAM_ORDERS = (1, 2, 3, 4, 5, 6)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"SEED must be an int in [0, 2**32), got {seed!r}")
    return int(seed)


def _check_tokens(n_tokens) -> int:
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, (int, np.integer)) \
            or not 10_000 <= n_tokens <= 2_000_000:
        raise ValueError(f"MARKOV_TOKENS must be an int between 10_000 and 2_000_000, got {n_tokens!r}")
    return int(n_tokens)


def markov_corpus(seed: int, n_tokens: int) -> tuple[MarkovLanguage, np.ndarray, np.ndarray]:
    """The lab's synthetic language and its samples: (language, train tokens, validation tokens).

    The chain itself is drawn with ``seed``; training tokens are sampled with ``seed`` and the
    validation tokens (``MARKOV_VAL_TOKENS`` of them) independently with ``seed + 1``.
    """
    seed, n_tokens = _check_seed(seed), _check_tokens(n_tokens)
    lang = MarkovLanguage(MARKOV_VOCAB, MARKOV_ORDER, MARKOV_CONCENTRATION, seed=seed)
    return lang, lang.sample(n_tokens, seed=seed), lang.sample(MARKOV_VAL_TOKENS, seed=seed + 1)


@lru_cache(maxsize=8)
def markov_sweep(seed: int, n_tokens: int, smoothing: str = "kn") -> tuple[float, ...]:
    """Validation cross-entropy (nats/token) of n-grams of orders 1..6 on the synthetic language.

    Token streams (``pad=False``), Kneser-Ney with the library's default discount 0.75, or add-one
    (``smoothing="addk"``, k = 1). Cached: the grader and the self-check ask for it repeatedly.
    """
    _, train, val = markov_corpus(seed, n_tokens)
    return tuple(
        float(-NGramModel(n, MARKOV_VOCAB, smoothing=smoothing, pad=False).fit(train).logprobs(val).mean())
        for n in NGRAM_ORDERS
    )


# --- reference solutions (run by the grader, never sent to the student's kernel) ---------------


def perplexity_ref(logprobs: np.ndarray) -> float:
    """exp(-mean log p): the perplexity of per-token natural-log probabilities (never a product)."""
    return float(np.exp(-np.mean(logprobs)))


def bigram_probs_ref(tokens: np.ndarray, vocab_size: int, k: float = 0.0) -> np.ndarray:
    """P[a, b] = (c(a b) + k) / (c(a .) + k V); a context never seen (row total 0) -> uniform 1/V.

    k = 0 is the maximum-likelihood estimate; k = 1 is add-one (Laplace) smoothing (Chen &
    Goodman 1998, section 2.1).
    """
    counts = np.zeros((vocab_size, vocab_size), dtype=np.float64)
    np.add.at(counts, (tokens[:-1], tokens[1:]), 1.0)
    counts += k
    totals = counts.sum(axis=1, keepdims=True)  # (V, 1)
    return np.where(totals > 0, counts / np.where(totals > 0, totals, 1.0), 1.0 / vocab_size)


def stationary_ref(P: np.ndarray) -> np.ndarray:
    """The stationary distribution pi = pi P, sum(pi) = 1, as a least-squares linear solve."""
    S = P.shape[0]
    A = np.vstack([P.T - np.eye(S), np.ones((1, S))])  # (S + 1, S)
    b = np.zeros(S + 1)
    b[-1] = 1.0
    return np.linalg.lstsq(A, b, rcond=None)[0]


def entropy_rate_ref(P: np.ndarray) -> float:
    """h = sum_i pi_i H(P[i]) in nats, 0 log 0 = 0 (Cover & Thomas, Thm 4.2.4)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        row_entropy = -np.where(P > 0, P * np.log(P), 0.0).sum(axis=1)
    return float(stationary_ref(P) @ row_entropy)


def best_order_ref(SEED: int, MARKOV_TOKENS: int) -> int:  # noqa: N803 - named after the notebook parameters
    """q4: the n-gram order with the lowest Kneser-Ney validation cross-entropy, recomputed."""
    losses = markov_sweep(_check_seed(SEED), _check_tokens(MARKOV_TOKENS), "kn")
    return int(NGRAM_ORDERS[int(np.argmin(losses))])


def kn_gap_ref(SEED: int, MARKOV_TOKENS: int) -> float:  # noqa: N803
    """q5: best Kneser-Ney validation cross-entropy minus the exact entropy rate, nats/token."""
    seed, n_tokens = _check_seed(SEED), _check_tokens(MARKOV_TOKENS)
    lang, _, _ = markov_corpus(seed, n_tokens)
    return float(min(markov_sweep(seed, n_tokens, "kn")) - lang.entropy_rate())


def best_at_equal_compute_ref(curves: dict) -> str:
    """q6: the model with the lowest validation loss at the largest compute every model reached.

    ``curves[name] = (flops, losses)``, flops increasing. The budget is C = min over models of
    their last flops; each loss curve is interpolated linearly in flops at C (``np.interp``,
    which holds the first value before a curve's first point).
    """
    budget = min(float(np.max(f)) for f, _ in curves.values())
    at_budget = {name: float(np.interp(budget, f, loss)) for name, (f, loss) in curves.items()}
    return min(at_budget, key=at_budget.get)


# --- hidden inputs -----------------------------------------------------------------------------


def _logprobs(rng: np.random.Generator) -> tuple:
    return (np.log(rng.uniform(0.02, 1.0, size=int(rng.integers(5, 60)))),)


def _long_logprobs(rng: np.random.Generator) -> tuple:
    # 20,000 tokens: the product of the probabilities underflows to 0.0 in float64
    return (np.log(rng.uniform(0.001, 0.6, size=20_000)),)


def _bigram_mle(rng: np.random.Generator) -> Case:
    V = int(rng.integers(4, 10))
    tokens = rng.integers(0, V - 1, size=int(rng.integers(20, 80))).astype(np.int64)  # V-1 never seen
    return Case(args=(tokens, V), kwargs={"k": 0.0})


def _bigram_addk(rng: np.random.Generator) -> Case:
    V = int(rng.integers(3, 9))
    tokens = rng.integers(0, V, size=int(rng.integers(20, 80))).astype(np.int64)
    return Case(args=(tokens, V), kwargs={"k": float(rng.uniform(0.1, 2.0))})


def _chain(rng: np.random.Generator) -> tuple:
    S = int(rng.integers(3, 12))
    return (rng.dirichlet(np.full(S, rng.uniform(0.2, 1.0)), size=S),)


def _sparse_chain(rng: np.random.Generator) -> tuple:
    """A chain with exact zeros; the diagonal and the cycle i -> i+1 stay positive, so it is
    irreducible and aperiodic."""
    S = int(rng.integers(4, 10))
    P = rng.dirichlet(np.full(S, 0.5), size=S) * (rng.random((S, S)) < 0.5)
    P[np.arange(S), np.arange(S)] += 0.1
    P[np.arange(S), (np.arange(S) + 1) % S] += 0.2
    return (P / P.sum(axis=1, keepdims=True),)


def _curve(rng, floor: float, scale: float, budget: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    flops = budget * np.arange(1, n + 1) / n
    return flops, floor + scale * (flops / 1e11) ** -0.5 + rng.normal(0.0, 0.003, n)


def _names(rng) -> list[str]:
    return [str(s) for s in rng.permutation(["gpt", "lstm", "rwkv", "mamba", "ngram"])[:3]]


def _cheap_wins(rng: np.random.Generator) -> tuple:
    """The cheapest model wins at equal compute; the most expensive one has the lowest final loss."""
    a, b, c = _names(rng)
    n = int(rng.integers(4, 9))
    C = 1e11 * rng.uniform(0.5, 2.0)
    r = rng.uniform(2.5, 4.0)  # how much more compute the expensive model used
    curves = {
        a: _curve(rng, 1.5, 0.5 * math.sqrt(C / 1e11), C, n),  # 2.0 at C
        b: _curve(rng, 1.2, 1.0 * math.sqrt(C / 1e11), r * C, n),  # 2.2 at C, 1.2 + 1/sqrt(r) at the end
        c: _curve(rng, 1.8, 0.6 * math.sqrt(C / 1e11), 1.5 * C, n),  # 2.4 at C
    }
    return (curves,)


def _middle_wins(rng: np.random.Generator) -> tuple:
    """The cheapest model is poor; a mid-priced one wins at equal compute; the dearest ends lowest."""
    a, b, c = _names(rng)
    n = int(rng.integers(4, 9))
    C = 1e11 * rng.uniform(0.5, 2.0)
    s = math.sqrt(C / 1e11)
    curves = {
        a: _curve(rng, 2.3, 0.5 * s, C, n),  # 2.8 at C
        b: _curve(rng, 1.6, 0.4 * s, 1.6 * C, n),  # 2.0 at C
        c: _curve(rng, 1.0, 1.4 * s, 4.0 * C, n),  # 2.4 at C, 1.7 at the end
    }
    return (curves,)


# --- known-wrong answers: each must score less than full (checked by `minilm release`) --------


def _ppl_sum(logprobs):
    with np.errstate(over="ignore"):
        return float(np.exp(-np.sum(logprobs)))  # the probability of the whole text, not per token


def _ppl_base2(logprobs):
    return float(2.0 ** (-np.mean(logprobs)))  # natural-log probabilities read as bits


def _ppl_mean_inverse(logprobs):
    return float(np.mean(np.exp(-logprobs)))  # mean of 1/p: not the geometric mean


def _ppl_product(logprobs):
    with np.errstate(over="ignore", divide="ignore"):
        return float(np.prod(np.exp(logprobs)) ** (-1.0 / len(logprobs)))  # underflows on long texts


def _ppl_no_minus(logprobs):
    return float(np.exp(np.mean(logprobs)))  # the sign dropped: 1 / perplexity


def _ppl_negates_in_place(logprobs):
    logprobs *= -1.0  # the right number, but the caller's log-probabilities are now negated
    return float(np.exp(np.mean(logprobs)))


def _bigram_transposed(tokens, vocab_size, k=0.0):
    return bigram_probs_ref(tokens, vocab_size, k).T.copy()


def _bigram_joint(tokens, vocab_size, k=0.0):
    counts = np.zeros((vocab_size, vocab_size))
    np.add.at(counts, (tokens[:-1], tokens[1:]), 1.0)
    return (counts + k) / (counts + k).sum()  # P(a, b) instead of P(b | a)


def _bigram_columns_normalised(tokens, vocab_size, k=0.0):
    counts = np.zeros((vocab_size, vocab_size))
    np.add.at(counts, (tokens[:-1], tokens[1:]), 1.0)
    counts += k
    with np.errstate(divide="ignore", invalid="ignore"):  # wrong axis: columns sum to one, not rows
        return np.where(counts.sum(axis=0) > 0, counts / counts.sum(axis=0, keepdims=True), 1.0 / vocab_size)


def _bigram_k_not_kv(tokens, vocab_size, k=0.0):
    counts = np.zeros((vocab_size, vocab_size))
    np.add.at(counts, (tokens[:-1], tokens[1:]), 1.0)
    total = counts.sum(axis=1, keepdims=True)  # adds k to the row total once, not once per column
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total + k > 0, (counts + k) / (total + k), 1.0 / vocab_size)


def _bigram_ignores_k(tokens, vocab_size, k=0.0):
    return bigram_probs_ref(tokens, vocab_size, 0.0)


def _bigram_unseen_zero(tokens, vocab_size, k=0.0):
    counts = np.zeros((vocab_size, vocab_size))
    np.add.at(counts, (tokens[:-1], tokens[1:]), 1.0)
    counts += k
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1e-300)  # unseen context: a zero row


def _rate_uniform_average(P):
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.mean(-np.where(P > 0, P * np.log(P), 0.0).sum(axis=1)))  # ignores pi


def _rate_stationary_entropy(P):
    pi = stationary_ref(P)
    return float(-(pi * np.log(pi)).sum())  # H(pi): the unigram entropy, context ignored


def _rate_bits(P):
    return entropy_rate_ref(P) / math.log(2.0)


def _rate_column_entropies(P):
    with np.errstate(divide="ignore", invalid="ignore"):  # wrong axis: entropies of the columns
        return float(stationary_ref(P) @ -np.where(P > 0, P * np.log(P), 0.0).sum(axis=0))


def _rate_naive_log(P):
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(stationary_ref(P) @ (-(P * np.log(P)).sum(axis=1)))  # 0 * log 0 = nan


def _final_loss_winner(curves):
    return min(curves, key=lambda name: float(curves[name][1][-1]))  # ignores compute


def _cheapest_winner(curves):
    return min(curves, key=lambda name: float(curves[name][0][-1]))  # ignores loss


def _ratio_winner(curves):
    return min(curves, key=lambda name: float(curves[name][1][-1] / curves[name][0][-1]))  # loss / FLOP


def _wrong_values() -> tuple[list, list]:
    """Known-wrong answers of q4 and q5 at the released parameters (one cached sweep, ~1 s)."""
    kn = markov_sweep(0, 100_000, "kn")
    h = markov_corpus(0, 100_000)[0].entropy_rate()
    gap = min(kn) - h
    return [6, MARKOV_ORDER, 1], [gap / math.log(2.0), kn[-1] - h, 0.0]


_WRONG_ORDER, _WRONG_GAP = _wrong_values()

_PUBLIC_CURVES = {
    "gpt": (np.array([1e11, 2e11, 3e11]), np.array([2.6, 2.3, 2.1])),
    "lstm": (np.array([0.5e11, 1e11, 1.5e11]), np.array([3.0, 2.8, 2.7])),
    "rwkv": (np.array([1e11, 2e11, 3e11, 4e11]), np.array([2.8, 2.4, 2.05, 1.9])),
}


LAB = Lab(
    "00",
    "language_models",
    "Language models from n-grams to transformers and RWKV",
    [
        function_question(
            "q1", 2, target="perplexity", reference=perplexity_ref,
            title="Perplexity from per-token log-probabilities (natural log)",
            public=[
                Case(args=(np.log(np.full(10, 0.25)),), label="uniform over 4 tokens: perplexity 4"),
                Case(args=(np.log(np.array([0.5, 0.25, 0.125])),), label="three tokens"),
            ],
            hidden=[Hidden(_logprobs, n=2, label="random text"),
                    Hidden(_long_logprobs, n=1, label="a 20,000-token text")],
            rtol=1e-9, atol=0.0,
            hint="perplexity is the geometric mean of 1/p over the tokens, a per-token quantity; the "
                 "log-probabilities are natural logs, and a product of 20,000 probabilities is 0.0 in "
                 "floating point. Leave the input array as it was; return a Python float",
            wrong=[_ppl_sum, _ppl_base2, _ppl_mean_inverse, _ppl_product, _ppl_no_minus, _ppl_negates_in_place],
            pure=True,
        ),
        function_question(
            "q2", 3, target="bigram_probs", reference=bigram_probs_ref,
            title="Bigram probabilities: maximum likelihood (k = 0) and add-k smoothing",
            public=[
                Case(args=(np.array([0, 1, 1, 2, 0, 1], dtype=np.int64), 3), kwargs={"k": 0.0}, label="MLE"),
                Case(args=(np.array([0, 1, 1, 2, 0, 1], dtype=np.int64), 3), kwargs={"k": 1.0}, label="add-one"),
                Case(args=(np.array([0, 1, 0, 0, 1], dtype=np.int64), 4), kwargs={"k": 0.0},
                     label="tokens 2 and 3 never seen as a context"),
            ],
            hidden=[Hidden(_bigram_mle, n=2, label="MLE, a context never seen"),
                    Hidden(_bigram_addk, n=2, label="add-k")],
            rtol=1e-9, atol=1e-12,
            hint="rows are the previous token, columns the next; every row sums to one; a row whose "
                 "total count is zero (with k = 0) is the uniform distribution 1/V",
            wrong=[_bigram_transposed, _bigram_joint, _bigram_ignores_k, _bigram_unseen_zero,
                   _bigram_columns_normalised, _bigram_k_not_kv],
        ),
        function_question(
            "q3", 3, target="entropy_rate", reference=entropy_rate_ref,
            title="The exact entropy rate of a first-order Markov chain, in nats",
            public=[Case(args=(np.array([[0.9, 0.1], [0.5, 0.5]]),), label="two states")],
            hidden=[Hidden(_chain, n=2, label="random chain"),
                    Hidden(_sparse_chain, n=2, label="a chain with impossible transitions")],
            rtol=1e-7, atol=1e-10,
            hint="each row of P is the next-token distribution of one state, and the chain does not "
                 "visit the states equally often in the long run: how much weight does each row's "
                 "uncertainty get? Mind impossible transitions (p = 0) and the unit (nats); return a "
                 "Python float",
            wrong=[_rate_uniform_average, _rate_stationary_entropy, _rate_bits, _rate_naive_log,
                   _rate_column_entropies],
        ),
        value_question(
            "q4", 2, target="best_order", reference=best_order_ref,
            params={"SEED": 0, "MARKOV_TOKENS": 100_000},
            title="The n-gram order with the lowest Kneser-Ney validation cross-entropy on the "
                  "synthetic language",
            # An argmin over exact float64 sums of exact integer counts: no noise, compared exactly.
            rtol=0.0, atol=0.0,
            hint="read it from the validation curve (not the training one) as a Python int",
            wrong=_WRONG_ORDER,
        ),
        value_question(
            "q5", 2, target="kn_gap", reference=kn_gap_ref,
            params={"SEED": 0, "MARKOV_TOKENS": 100_000},
            title="How far the best Kneser-Ney model stays above the exact entropy rate (nats/token)",
            # Integer counts and float64 sums over 20,000 tokens: only the summation order can differ
            # between the notebook and the grader (relative error ~1e-13), far inside rtol=1e-6.
            rtol=1e-6, atol=1e-9,
            hint="compare the best model's validation loss with the lowest loss any predictor can "
                 "have on this language (q3's quantity), both in nats, as a Python float",
            wrong=_WRONG_GAP,
        ),
        function_question(
            "q6", 2, target="best_at_equal_compute", reference=best_at_equal_compute_ref,
            title="Which model reaches the lowest validation loss at equal training compute?",
            public=[Case(args=(_PUBLIC_CURVES,), label="three short curves")],
            hidden=[Hidden(_cheap_wins, n=2, label="the cheapest model wins"),
                    Hidden(_middle_wins, n=2, label="a mid-priced model wins")],
            rtol=0.0, atol=0.0,
            hint="compare the models at one training budget that every run actually reached; a run "
                 "need not have a measurement exactly there, so estimate its loss between the two "
                 "nearest points; return the model's name",
            wrong=[_final_loss_winner, _cheapest_winner, _ratio_winner],
        ),
        choice_question(
            "q7", 1, target="below_entropy",
            title="A model scores below the exact entropy rate on fresh data. What do you conclude?",
            choices={
                "a": "The model is excellent: it found structure the Markov chain does not have.",
                "b": "Something is wrong (a bug, or validation tokens leaked into training): on fresh "
                     "samples no model beats the entropy rate by more than the sampling noise.",
                "c": "Nothing: cross-entropy and entropy rate measure different things.",
                "d": "The entropy rate is in bits and the loss in nats: convert, and it is fine.",
            },
            answer="b",
            hint="the entropy rate is the expected loss of the true chain itself: the lowest expected "
                 "loss any predictor can have",
        ),
    ],
)
