"""n-gram models: the fast path against the plain reference, brute-force counting and
normalisation, a hand-computed example, valid discounts (properties, hypothesis), the LM wrapper."""

import math
import re
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minilm.models import NGramConfig, NGramLM, NGramModel, build_model
from minilm.models.ngram import KENLM_FALLBACK_DISCOUNTS

V = 6
SMOOTHINGS = [("mle", None), ("addk", None), ("kn", None), ("kn", "estimate"), ("mkn", None), ("mkn", (0.5, 1.1, 1.6))]


def _docs(seed=0, n_docs=25, V=V):
    rng = np.random.default_rng(seed)
    # skewed token frequencies and some structure (token 0 tends to follow 1), plus an empty document
    docs = []
    for _ in range(n_docs):
        d = rng.choice(V, size=rng.integers(0, 14), p=np.linspace(2, 1, V) / np.linspace(2, 1, V).sum())
        d[1:][d[:-1] == 1] = 0
        docs.append(d)
    return docs


def _fit(model: NGramModel, docs) -> NGramModel:
    """Fit, silencing the discount-fallback warning that tiny corpora trigger (tested on its own)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*count-of-counts")
        return model.fit(docs)


def _contexts(model: NGramModel):
    """Seen, unseen, padding and short contexts."""
    bos = model.bos
    return [[], [0], [1, 0], [5, 5, 5], [0, 1, 2, 3], [bos] * 3, [bos, bos, 1], [bos, 4], [2, 2], [3, 0, 1]]


def _sequences(docs, n, V, pad):
    """The documents as the model sees them: padded with BOS = V and EOS = V + 1 if ``pad``."""
    return [([V] * (n - 1) + [int(x) for x in d] + [V + 1]) if pad else [int(x) for x in d] for d in docs]


def _seen_contexts(docs, n, V, pad):
    """Every context (the up to n-1 symbols before a position, oldest first) found in the data."""
    seen = set()
    for s in _sequences(docs, n, V, pad):
        for i in range(len(s) + 1):
            seen.update(tuple(s[i - j : i]) for j in range(min(n - 1, i) + 1) if V + 1 not in s[i - j : i])
    return sorted(seen)


def _matrix(contexts, n):
    """Contexts -> the (N, n-1) matrix of ``NGramModel.distributions``, right-aligned, -1 = absent."""
    rows = np.full((len(contexts), n - 1), -1, np.int64)
    for i, c in enumerate(contexts):
        if c:
            rows[i, n - 1 - len(c) :] = c
    return rows


def _assert_normalised(model, contexts):
    """Brute force: P(o | ctx) of every outcome o through the scalar path sums to 1."""
    for ctx in contexts:
        total = sum(math.exp(model.logprob(list(ctx), int(o))) for o in model.outcomes)
        assert abs(total - 1.0) < 1e-12, (model.order, ctx, total)


# -------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("smoothing,discount", SMOOTHINGS)
@pytest.mark.parametrize("pad", [True, False])
@pytest.mark.parametrize("unk", ["error", "map"])
@pytest.mark.parametrize("fast", [True, False])
def test_every_distribution_sums_to_one(smoothing, discount, pad, unk, fast):
    docs = _docs()
    for order in (1, 2, 3, 4):
        m = _fit(NGramModel(order, V, smoothing, discount, pad=pad, unk=unk, fast=fast), docs)
        for ctx in _contexts(m):
            # enumerate the whole vocabulary of outcomes through the scalar path
            probs = np.exp([m.logprob(ctx, int(o)) for o in m.outcomes])
            assert abs(probs.sum() - 1.0) < 1e-12, (order, ctx)
            # the dense path agrees with it
            assert np.abs(m.distribution(ctx) - probs).max() < 1e-12


def test_outcomes_cover_tokens_eos_and_unk():
    m = NGramModel(2, V, "kn", pad=True, unk="map").fit(_docs())
    assert m.outcomes.tolist() == list(range(V)) + [m.eos, m.unk_id]
    assert m.bos not in m.outcomes
    with pytest.raises(ValueError, match="BOS is never predicted"):
        m.logprob([0], m.bos)
    assert math.isfinite(m.logprob([0], 99))  # unknown -> UNK, which smoothing gives mass to
    assert m.logprob([0], 99) == m.logprob([0], m.unk_id)


# ------------------------------------------------------------ counting, by brute force
def _brute_force_counts(docs, n, pad, continuation, V=V):
    """{m: {n-gram: a}}: raw counts, and (continuation) N1+(. g) below the top order, in plain Python."""
    raw = {m: Counter() for m in range(1, n + 1)}
    for s in _sequences(docs, n, V, pad):
        for m in range(1, n + 1):
            for i in range(len(s) - m + 1):
                if s[i + m - 1] != V:  # BOS = V is never predicted
                    raw[m][tuple(s[i : i + m])] += 1
    if not continuation:
        return {m: dict(c) for m, c in raw.items()}
    return {m: dict(raw[m] if m == n else Counter(g[1:] for g in raw[m + 1])) for m in raw}


def _decoded_counts(model):
    """The model's stored (keys, a) per order as {m: {n-gram: a}} (a key is base-S digits)."""
    S = model.n_symbols
    return {m: {tuple(int(k) // S**j % S for j in reversed(range(m))): int(a) for k, a in zip(keys, counts)}
            for m, (keys, counts) in enumerate(model.counts, start=1)}


@pytest.mark.parametrize("smoothing", ["mle", "kn"])
@pytest.mark.parametrize("pad", [True, False])
def test_counts_match_brute_force_counting(smoothing, pad):
    docs = _docs(seed=1, n_docs=60)
    m = NGramModel(3, V, smoothing, pad=pad).fit(docs)
    assert _decoded_counts(m) == _brute_force_counts(docs, 3, pad, continuation=smoothing == "kn")


# --------------------------------------------------------- the fast path = the reference
@pytest.mark.parametrize("smoothing,discount", SMOOTHINGS)
@pytest.mark.parametrize("pad", [True, False])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_fast_path_matches_the_reference(smoothing, discount, pad, order):
    rng = np.random.default_rng(order)
    for seed in range(3):
        docs = _docs(seed=10 + seed, n_docs=30)
        fast = _fit(NGramModel(order, V, smoothing, discount, pad=pad), docs)
        ref = _fit(NGramModel(order, V, smoothing, discount, pad=pad, fast=False), docs)
        assert fast.discounts == ref.discounts
        unseen = [tuple(rng.integers(0, V, order - 1)) for _ in range(10)]  # mostly never seen
        unseen += [(v,) for v in range(V)] if order > 1 else []
        contexts = _seen_contexts(docs, order, V, pad) + unseen
        np.testing.assert_allclose(fast.distributions(_matrix(contexts, order)),
                                   ref.distributions(_matrix(contexts, order)), rtol=1e-9, atol=0)
        for model in (fast, ref):
            _assert_normalised(model, contexts)
        test = _docs(seed=20 + seed, n_docs=5)
        np.testing.assert_allclose(fast.logprobs(test), ref.logprobs(test), rtol=1e-9, atol=0)


def test_hand_computed_bigram():
    """Stream 0 1 0 2 0 1, V = 3, unpadded. Continuation counts of the unigrams: a(0) = |{1, 2}| = 2,
    a(1) = a(2) = 1 (total 4); bigram counts: a(0 1) = 2, a(0 2) = a(1 0) = a(2 0) = 1."""
    stream = [0, 1, 0, 2, 0, 1]
    for fast in (True, False):
        # "kn", D = 1/2. Unigrams: gamma = 3 D / 4 = 3/8, P(0) = 1.5/4 + 3/8 * 1/3 = 1/2, P(1) = P(2) = 1/4.
        # After 0: gamma = 2 D / 3 = 1/3; P(0|0) = 1/3 * 1/2, P(1|0) = 1.5/3 + 1/3 * 1/4, P(2|0) = 0.5/3 + 1/12.
        # After 1 (and 2): gamma = 1/2; P(0|1) = 0.5 + 1/4, P(1|1) = P(2|1) = 1/2 * 1/4.
        kn = NGramModel(2, 3, "kn", discount=0.5, pad=False, fast=fast).fit(stream)
        np.testing.assert_allclose(kn.distribution([]), [1 / 2, 1 / 4, 1 / 4], rtol=1e-12)
        np.testing.assert_allclose(kn.distribution([0]), [1 / 6, 7 / 12, 1 / 4], rtol=1e-12)
        np.testing.assert_allclose(kn.distribution([2]), [3 / 4, 1 / 8, 1 / 8], rtol=1e-12)
        # the first token from the unigram, then P(1|0) P(0|1) P(2|0) P(0|2) P(1|0)
        expected = np.log([1 / 2, 7 / 12, 3 / 4, 1 / 4, 3 / 4, 7 / 12])
        np.testing.assert_allclose(kn.logprobs(stream), expected, rtol=1e-12)
        # "mkn", (D1, D2, D3+) = (1/2, 1, 3/2). Unigrams: gamma = (1 + 1/2 + 1/2) / 4 = 1/2,
        # P(0) = (2 - 1)/4 + 1/6 = 5/12, P(1) = P(2) = (1 - 1/2)/4 + 1/6 = 7/24.
        # After 0: gamma = (1 + 1/2) / 3 = 1/2; P(0|0) = 5/24, P(1|0) = 1/3 + 7/48, P(2|0) = 1/6 + 7/48.
        mkn = NGramModel(2, 3, "mkn", discount=(0.5, 1.0, 1.5), pad=False, fast=fast).fit(stream)
        np.testing.assert_allclose(mkn.distribution([]), [5 / 12, 7 / 24, 7 / 24], rtol=1e-12)
        np.testing.assert_allclose(mkn.distribution([0]), [5 / 24, 23 / 48, 15 / 48], rtol=1e-12)


# ------------------------------------------------------------------------ discounts
def test_estimated_discounts_follow_the_published_formulas():
    # Zipfian tokens over a large vocabulary: rare tokens give every order singletons, doubletons, ...
    rng = np.random.default_rng(0)
    zipf = 1 / np.arange(1, 1001)
    x = rng.choice(1000, size=20_000, p=zipf / zipf.sum())
    counts = _brute_force_counts([x.tolist()], 3, False, continuation=True, V=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # valid estimates: no fallback, no warning
        mkn = NGramModel(3, 1000, "mkn", pad=False).fit(x)
        kn = NGramModel(3, 1000, "kn", "estimate", pad=False).fit(x)
    for m in (1, 2, 3):
        n1, n2, n3, n4 = (sum(1 for a in counts[m].values() if a == r) for r in (1, 2, 3, 4))
        y = n1 / (n1 + 2 * n2)
        assert kn.discounts[m - 1] == pytest.approx((y,) * 3)  # Ney et al. 1994
        expected = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)  # CG98 eq. 26
        assert mkn.discounts[m - 1] == pytest.approx(expected)


def test_invalid_discount_estimates_fall_back_with_a_warning():
    """The issue's example: order 2 has (n1, n2, n3, n4) = (1, 1, 1, 3), so Y = 1/3 and
    D3+ = 3 - 4 Y 3/1 = -1; clipped to 0 it gave P(3 | 0) = 0 and an infinite perplexity."""
    docs = [[0, 1]] * 4 + [[2, 3]] * 4 + [[4, 5]] * 4 + [[6, 7]] * 3 + [[8, 9]] * 2 + [[10, 11]]
    for fast in (True, False):
        with pytest.warns(UserWarning) as record:
            m = NGramModel(order=2, vocab_size=12, smoothing="mkn", pad=False, fast=fast).fit(docs)
        messages = sorted(str(r.message) for r in record)
        assert len(messages) == 2
        used = r"using D1 = 0.5, D2 = 1, D3\+ = 1.5"
        assert re.search(r"order 1: .* \(6, 0, 0, 0\) .* D2 = undefined, .*" + used, messages[0])
        assert re.search(r"order 2: .* \(1, 1, 1, 3\) .* D3\+ = -1, .*" + used, messages[1])
        assert m.discounts == [KENLM_FALLBACK_DISCOUNTS] * 2
        # by hand: unigram continuation counts a(1) = a(3) = ... = a(11) = 1, so gamma = 6 * 0.5 / 6
        # and P(0) = 0.5 / 12; P(3) = 0.5 / 6 + 0.5 / 12 = 1/8; after 0 (a(0 1) = 4, D3+ = 1.5)
        # P(3 | 0) = 1.5 / 4 * 1/8. The perplexity of [0, 3] is (P(0) P(3 | 0))^(-1/2).
        assert m.perplexity([[0, 3]]) == pytest.approx((1 / 24 * 3 / 64) ** -0.5, rel=1e-12)
    with pytest.warns(UserWarning, match=r"Kneser-Ney, order 1: .* D = 0, .* using D = 0.75"):
        NGramModel(1, 3, "kn", "estimate", pad=False).fit([0, 0, 1, 1, 2, 2])  # n1 = 0: D = 0


corpora = st.integers(1, 5).flatmap(
    lambda v: st.tuples(st.just(v), st.lists(st.lists(st.integers(0, v - 1), max_size=10), min_size=1, max_size=6))
)


@settings(max_examples=150, deadline=None)
@given(corpus=corpora, order=st.integers(1, 4), pad=st.booleans(), data=st.data(),
       smoothing=st.sampled_from([("kn", None), ("kn", "estimate"), ("mkn", None), ("mkn", (0.2, 2.0, 0.1))]))
def test_kneser_ney_is_finite_and_normalised_on_any_corpus(corpus, order, pad, data, smoothing):
    """Any small corpus, any order: finite perplexity on any in-vocabulary sequence, and every
    distribution (seen contexts and the test sequence's) positive and summing to 1."""
    v, docs = corpus
    assume(pad or any(docs))  # an unpadded model needs a token to count
    seq = data.draw(st.lists(st.integers(0, v - 1), min_size=1, max_size=12))
    fast = _fit(NGramModel(order, v, *smoothing, pad=pad), docs)
    ref = _fit(NGramModel(order, v, *smoothing, pad=pad, fast=False), docs)
    for model in (fast, ref):
        assert math.isfinite(model.perplexity(seq))
    contexts = _seen_contexts(docs, order, v, pad) + _seen_contexts([seq], order, v, pad)
    p = fast.distributions(_matrix(contexts, order))
    assert (p > 0).all() and np.abs(p.sum(axis=1) - 1).max() < 1e-12
    np.testing.assert_allclose(p, ref.distributions(_matrix(contexts, order)), rtol=1e-9, atol=0)


# ------------------------------------------------------------------------ behaviour
def test_perplexity_matches_per_token_logprobs():
    docs = _docs(seed=2)
    m = NGramModel(3, V, "kn", pad=True).fit(docs)
    test = _docs(seed=3, n_docs=5)
    total, count = 0.0, 0
    for d in test:
        s = [m.bos, m.bos] + list(d) + [m.eos]
        for t in range(2, len(s)):
            total += m.logprob(s[t - 2 : t], s[t])
            count += 1
    assert m.perplexity(test) == pytest.approx(math.exp(-total / count), rel=1e-12)
    assert len(m.logprobs(test)) == count


def test_unpadded_stream_scores_the_first_tokens_from_shorter_contexts():
    stream = np.array([0, 1, 0, 2, 0, 1, 3, 0, 1, 0])
    m = NGramModel(3, 4, "kn", pad=False).fit(stream)
    lp = m.logprobs(stream)
    assert len(lp) == len(stream)
    assert lp[0] == pytest.approx(m.logprob([], 0))
    assert lp[1] == pytest.approx(m.logprob([0], 1))
    assert lp[5] == pytest.approx(m.logprob([2, 0], 1))


def test_more_context_helps_on_markov_text():
    rng = np.random.default_rng(0)
    trans = rng.dirichlet(np.full(20, 0.1), size=20)
    x = [0]
    for _ in range(60_000):
        x.append(rng.choice(20, p=trans[x[-1]]))
    x = np.array(x)
    train, test = x[:50_000], x[50_000:]
    ppl = {n: NGramModel(n, 20, "kn", pad=False).fit(train).perplexity(test) for n in (1, 2)}
    assert ppl[2] < 0.6 * ppl[1]  # the text is a first-order Markov chain: the bigram sees it


# ------------------------------------------------------------------------- sampling, I/O
def test_sampling_follows_the_distribution():
    m = NGramModel(2, 3, "mle", pad=False).fit(np.array([0, 1, 0, 1, 0, 2] * 50))
    draws = np.concatenate([m.sample(1, context=[0], seed=s) for s in range(2000)])
    freq = np.bincount(draws, minlength=3) / len(draws)
    assert np.abs(freq - m.distribution([0])).max() < 0.04  # 4 standard errors at n = 2000
    padded = NGramModel(2, V, "kn").fit(_docs())
    out = padded.sample(50, seed=0)
    assert len(out) <= 50 and np.all(out < V)  # stops at EOS, which is not returned


def test_save_load_round_trip(tmp_path):
    m = _fit(NGramModel(3, V, "mkn", pad=True, unk="map"), _docs())
    path = tmp_path / "model.npz"
    m.save(path)
    with pytest.warns(UserWarning, match="order 1"):  # the discounts are derived again from the counts
        loaded = NGramModel.load(path)
    assert loaded.discounts == m.discounts
    for ctx in _contexts(m):
        assert np.array_equal(loaded.distribution(ctx), m.distribution(ctx))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="order"):
        NGramModel(0, V)
    with pytest.raises(ValueError, match="smoothing"):
        NGramModel(2, V, "witten-bell")
    with pytest.raises(ValueError, match="discount"):
        NGramModel(2, V, "kn", discount=1.5)
    with pytest.raises(ValueError, match="D_r"):
        NGramModel(2, V, "mkn", discount=(0.5, 2.5, 1.0))
    with pytest.raises(ValueError, match="0 < D_r"):
        NGramModel(2, V, "mkn", discount=(0.5, 1.0, 0.0))  # a zero discount would give zeros
    with pytest.raises(ValueError, match="not been fitted"):
        NGramModel(2, V).logprob([0], 1)
    with pytest.raises(ValueError, match="unk='map'"):
        NGramModel(2, V).fit([np.array([0, 1, 7])])
    with pytest.raises(ValueError, match="int64"):
        NGramModel(5, 70_000)


# --------------------------------------------------------------------- LanguageModel side
def test_lm_wrapper_forward_matches_logprob_and_loss():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 12, 5000)
    lm = NGramLM(NGramConfig(vocab_size=12, order=3)).fit(torch.from_numpy(train))
    idx = torch.from_numpy(rng.integers(0, 12, (2, 7)))
    logits = lm(idx)
    assert logits.shape == (2, 7, 12) and logits.dtype == torch.float32
    assert torch.allclose(logits.exp().sum(-1), torch.ones(2, 7), atol=1e-5)
    for b in range(2):
        for t in range(7):
            ctx = idx[b, max(0, t - 1) : t + 1].tolist()  # the last order-1 tokens of the window
            for w in (0, 5, 11):
                assert logits[b, t, w].item() == pytest.approx(lm.ngram.logprob(ctx, w), abs=1e-5)
    y = torch.from_numpy(rng.integers(0, 12, (2, 7)))
    expected = -np.mean([logits[b, t, y[b, t]].item() for b in range(2) for t in range(7)])
    assert lm.loss(idx, y).item() == pytest.approx(expected, abs=1e-5)
    assert lm.num_params() == lm.ngram.num_counts > 0
    assert lm.flops_per_token() == 0.0


def test_lm_wrapper_generation_and_state_dict():
    train = np.array([0, 1, 2, 3] * 200)
    lm = build_model("ngram", 4, size="small")  # small -> trigram
    assert lm.config.order == 3
    assert build_model("ngram", 4, size="tiny").config.order == 2
    assert build_model("ngram", 4, size="tiny", order=5).config.order == 5
    lm.fit(train)
    out = lm.generate(torch.tensor([[0, 1]]), 6, temperature=0)
    assert out.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]
    fresh = build_model("ngram", 4, size="small")
    fresh.load_state_dict(lm.state_dict())
    idx = torch.tensor([[3, 0, 2]])
    assert torch.equal(fresh(idx), lm(idx))
    with pytest.raises(ValueError, match="fit"):
        build_model("ngram", 4)(idx)
