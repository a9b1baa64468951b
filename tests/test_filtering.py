"""Filtering (minilm.filtering): shingles, MinHash vs brute-force Jaccard, LSH dedup."""

import numpy as np
import pytest

from minilm.filtering import (
    MinHasher,
    candidate_probability,
    estimate_jaccard,
    exact_duplicates,
    jaccard,
    near_duplicates,
    shingles,
)

BASE = "the quick brown fox jumps over the lazy dog while the cat sleeps in the warm afternoon sun"


def _variants(n=12, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = BASE.split()
        cut = int(rng.integers(1, len(words) - 1))
        out.append(" ".join(words[:cut] + ["zebra"] * int(rng.integers(0, 4)) + words[cut:]))
    return out


def test_jaccard_brute_force():
    a, b = shingles("abcdef", 3), shingles("abcxef", 3)
    assert a == {"abc", "bcd", "cde", "def"}
    assert jaccard(a, b) == pytest.approx(1 / 7)     # {abc} shared of 7 distinct
    assert jaccard(set(), set()) == 1.0


def test_minhash_estimates_jaccard_within_its_standard_error():
    n = 256
    hasher = MinHasher(n_hashes=n, k=5, seed=0)
    texts = [BASE] + _variants()
    sig = hasher.signatures(texts)
    for i in range(1, len(texts)):
        j = jaccard(shingles(texts[0], 5), shingles(texts[i], 5))
        se = np.sqrt(j * (1 - j) / n)                     # the estimate is a mean of n Bernoulli(J)
        assert abs(estimate_jaccard(sig[0], sig[i]) - j) <= 4 * se + 1e-12


def test_identical_texts_identical_signatures():
    h = MinHasher(64)
    assert estimate_jaccard(h.signature(BASE), h.signature(BASE)) == 1.0


def test_candidate_probability_s_curve():
    assert candidate_probability(0.0, 32, 4) == pytest.approx(0.0)
    assert candidate_probability(1.0, 32, 4) == pytest.approx(1.0)
    assert candidate_probability(0.8, 32, 4) == pytest.approx(1 - (1 - 0.8**4) ** 32)


def test_exact_and_near_duplicates():
    other = "a completely different sentence about numbers seven eleven and thirteen in order"
    texts = [BASE, other, "  " + BASE.replace(" ", "  "), BASE + " again", other]
    assert exact_duplicates(texts).tolist() == [0, 1, 0, 3, 1]     # equal up to whitespace counts as exact
    texts[2] = BASE                                                 # MinHash shingles see whitespace: use a copy
    d = near_duplicates(texts, threshold=0.5)
    assert d.cluster.tolist() == [0, 1, 0, 0, 1]
    assert d.keep.tolist() == [True, True, False, False, False]


def test_bad_arguments():
    with pytest.raises(ValueError, match="threshold"):
        near_duplicates([BASE], threshold=0.0)
    with pytest.raises(ValueError, match="equal length"):
        estimate_jaccard(np.zeros(3), np.zeros(4))


def test_dedup_of_a_polluted_corpus_removes_exact_and_near_copies():
    from minilm.filtering import polluted_corpus

    rng = np.random.default_rng(1)
    words = BASE.split() + ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
    docs = [" ".join(rng.choice(words, size=40)) for _ in range(30)]
    pc = polluted_corpus(docs, n_duplicated=3, copies=5, n_near=3, near_copies=4, edit_rate=0.02, n_junk=5, seed=0)
    assert len(pc.texts) == 30 + 15 + 12 + 5 and np.bincount(pc.kind).tolist() == [30, 15, 12, 5]
    d = near_duplicates(pc.texts, threshold=0.5)
    kept_sources = pc.source[d.keep & (pc.source >= 0)]
    assert len(kept_sources) == len(set(kept_sources.tolist())) == 30    # one copy of every clean document
