"""Lab 00's grading references against independent ones: the library's n-gram model and Markov
languages, closed forms and brute force. (The release gates in tests/test_labs.py check the
notebook against these references; this file checks the references themselves.)"""

import math

import numpy as np
import pytest

from minilm.data import MarkovLanguage
from minilm.labs import lab00
from minilm.models import NGramModel


def test_perplexity_of_uniform_guessing_is_the_vocabulary_size():
    for V in (2, 7, 103):
        assert lab00.perplexity_ref(np.log(np.full(50, 1.0 / V))) == pytest.approx(V, rel=1e-12)


def test_perplexity_matches_the_library_ngram_perplexity():
    tokens = np.random.default_rng(0).integers(0, 5, 400)
    model = NGramModel(2, 5, smoothing="kn", pad=False).fit(tokens[:300])
    held_out = tokens[300:]
    assert lab00.perplexity_ref(model.logprobs(held_out)) == pytest.approx(model.perplexity(held_out), rel=1e-12)


@pytest.mark.parametrize("k", [0.5, 1.0, 2.0])
def test_bigram_addk_matches_the_library(k):
    rng = np.random.default_rng(1)
    V = 6
    tokens = rng.integers(0, V - 1, 200)  # token V-1 never occurs: an unseen context
    lib = NGramModel(2, V, smoothing="addk", k=k, pad=False).fit(tokens)
    expected = lib.distributions(np.arange(V)[:, None])
    np.testing.assert_allclose(lab00.bigram_probs_ref(tokens, V, k), expected, rtol=1e-12)


def test_bigram_mle_matches_the_library_where_every_context_was_seen():
    tokens = np.random.default_rng(2).integers(0, 5, 300)
    lib = NGramModel(2, 5, smoothing="mle", pad=False).fit(tokens)
    np.testing.assert_allclose(lab00.bigram_probs_ref(tokens, 5, 0.0), lib.distributions(np.arange(5)[:, None]),
                               rtol=1e-12)


def test_bigram_mle_unseen_context_is_uniform_and_rows_sum_to_one():
    P = lab00.bigram_probs_ref(np.array([0, 1, 0, 0, 1]), 4, 0.0)
    np.testing.assert_allclose(P.sum(axis=1), 1.0)
    np.testing.assert_allclose(P[2:], 0.25)


def test_entropy_rate_two_state_closed_form():
    a, b = 0.1, 0.5  # P(0 -> 1), P(1 -> 0); pi = (b, a) / (a + b)
    P = np.array([[1 - a, a], [b, 1 - b]])

    def H(p):
        return -sum(x * math.log(x) for x in p if x > 0)

    expected = b / (a + b) * H([1 - a, a]) + a / (a + b) * H([b, 1 - b])
    assert lab00.entropy_rate_ref(P) == pytest.approx(expected, rel=1e-12)


def test_entropy_rate_matches_the_library_markov_language():
    for seed in range(3):
        lang = MarkovLanguage(vocab_size=7, order=1, concentration=0.3, seed=seed)
        assert lab00.entropy_rate_ref(lang.transition) == pytest.approx(lang.entropy_rate(), rel=1e-9)


def test_entropy_rate_of_the_context_chain_is_the_order_k_language_rate():
    lang = MarkovLanguage(vocab_size=4, order=2, concentration=0.5, seed=3)
    S, V = 16, 4
    Q = np.zeros((S, S))
    for s in range(S):
        for w in range(V):
            Q[s, (s * V) % S + w] = lang.transition[s, w]
    assert lab00.entropy_rate_ref(Q) == pytest.approx(lang.entropy_rate(), rel=1e-9)


def test_entropy_rate_is_close_to_a_long_sample_average():
    # brute force: the mean of -log P(x_t | x_{t-1}) over a long simulated path
    rng = np.random.default_rng(4)
    P = lab00._sparse_chain(rng)[0]
    x, total, n = 0, 0.0, 200_000
    u = rng.random(n)
    cdf = np.cumsum(P, axis=1)
    for t in range(n):
        y = min(int(np.searchsorted(cdf[x], u[t], side="right")), P.shape[0] - 1)
        total -= math.log(P[x, y])
        x = y
    assert total / n == pytest.approx(lab00.entropy_rate_ref(P), abs=0.02)


def test_hidden_chains_are_stochastic_irreducible_and_have_zeros():
    rng = np.random.default_rng(5)
    for _ in range(20):
        P = lab00._sparse_chain(rng)[0]
        np.testing.assert_allclose(P.sum(axis=1), 1.0)
        assert (lab00.stationary_ref(P) > 0).all()
    assert any((lab00._sparse_chain(np.random.default_rng(s))[0] == 0).any() for s in range(5))


def test_best_at_equal_compute_interpolates_at_the_common_budget():
    curves = lab00._PUBLIC_CURVES
    # budget 1.5e11: gpt 2.45, lstm 2.7, rwkv 2.6 (rwkv has the lowest final loss)
    assert lab00.best_at_equal_compute_ref(curves) == "gpt"
    for make in (lab00._cheap_wins, lab00._middle_wins):
        for seed in range(5):
            (c,) = make(np.random.default_rng(seed))
            answer = lab00.best_at_equal_compute_ref(c)
            assert answer != lab00._final_loss_winner(c) and answer != lab00._ratio_winner(c)


def test_markov_values_are_sane_and_parameters_are_validated():
    best = lab00.best_order_ref(0, 100_000)
    assert best > lab00.MARKOV_ORDER  # orders <= k cannot see the whole context the chain uses
    gap = lab00.kn_gap_ref(0, 100_000)
    assert 0.0 < gap < 0.1  # cannot beat the entropy rate; 100k tokens get close
    for bad in (-1, 2**32, 1.5, "0", True):
        with pytest.raises(ValueError, match="SEED"):
            lab00.kn_gap_ref(bad, 100_000)
    for bad in (9_999, 3_000_000, 1e5):
        with pytest.raises(ValueError, match="MARKOV_TOKENS"):
            lab00.best_order_ref(0, bad)
