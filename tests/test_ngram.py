"""n-gram models: normalisation by enumeration, a brute-force Kneser–Ney reference, the LM wrapper."""

import math
from collections import Counter

import numpy as np
import pytest
import torch

from minilm.models import NGramConfig, NGramLM, NGramModel, build_model

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


def _contexts(model: NGramModel):
    """Seen, unseen, padding and short contexts."""
    bos = model.bos
    return [[], [0], [1, 0], [5, 5, 5], [0, 1, 2, 3], [bos] * 3, [bos, bos, 1], [bos, 4], [2, 2], [3, 0, 1]]


# -------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("smoothing,discount", SMOOTHINGS)
@pytest.mark.parametrize("pad", [True, False])
@pytest.mark.parametrize("unk", ["error", "map"])
def test_every_distribution_sums_to_one(smoothing, discount, pad, unk):
    docs = _docs()
    for order in (1, 2, 3, 4):
        m = NGramModel(order, V, smoothing, discount, pad=pad, unk=unk).fit(docs)
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


# ----------------------------------------------------------------- brute-force reference
def _reference(docs, n, smoothing, D, pad, k=1.0):
    """A literal, dictionary-based implementation of CG98's formulas (slow, obviously correct)."""
    BOS, EOS = V, V + 1
    outcomes = list(range(V)) + ([EOS] if pad else [])
    seqs = [([BOS] * (n - 1) + list(d) + [EOS]) if pad else list(d) for d in docs]
    raw = {m: Counter() for m in range(1, n + 1)}
    for s in seqs:
        for m in range(1, n + 1):
            for i in range(len(s) - m + 1):
                g = tuple(s[i : i + m])
                if g[-1] != BOS:
                    raw[m][g] += 1
    if smoothing in ("kn", "mkn"):  # continuation counts below the top order
        a = {n: raw[n]}
        for m in range(1, n):
            a[m] = Counter(g[1:] for g in raw[m + 1])
    else:
        a = raw

    def disc(m, c):
        return D[m][min(c, 3) - 1]

    def prob(m, h, w):
        if m == 0:
            return 1.0 / len(outcomes)
        h = h[len(h) - (m - 1) :] if m > 1 else ()
        seen = {g: c for g, c in a[m].items() if g[:-1] == h}
        total = sum(seen.values())
        if smoothing == "addk":
            return (a[m].get(h + (w,), 0) + k) / (total + k * len(outcomes))
        if total == 0:
            return prob(m - 1, h[1:] if h else (), w)
        if smoothing == "mle":
            return seen.get(h + (w,), 0) / total
        c = seen.get(h + (w,), 0)
        gamma = sum(disc(m, cc) for cc in seen.values()) / total
        lower = prob(m - 1, h[1:] if h else (), w)
        return (max(c - disc(m, c), 0) if c else 0) / total + gamma * lower

    return prob, a, outcomes


def _count_of_counts(a_m):
    return [sum(1 for c in a_m.values() if c == r) for r in (1, 2, 3, 4)]


@pytest.mark.parametrize("smoothing", ["mle", "addk", "kn", "kn-estimate", "mkn", "mkn-fixed"])
@pytest.mark.parametrize("pad", [True, False])
def test_matches_brute_force_reference(smoothing, pad):
    docs = _docs(seed=1, n_docs=60)
    n = 3
    kind = smoothing.split("-")[0]
    disc = {"kn": 0.75, "kn-estimate": "estimate", "mkn": None, "mkn-fixed": (0.5, 1.1, 1.6)}.get(smoothing)
    m = NGramModel(n, V, kind, disc, k=0.5, pad=pad).fit(docs)
    _, a, _ = _reference(docs, n, kind, None, pad)
    D = None
    if kind in ("kn", "mkn"):
        D = {order: t.discounts for order, t in enumerate(m.tables, start=1)}
        # the estimated discounts are the published formulas wherever their count-of-counts exist
        for order in a:
            n1, n2, n3, n4 = _count_of_counts(a[order])
            if smoothing == "kn" or smoothing == "mkn-fixed":
                assert D[order] == ((0.75,) * 3 if smoothing == "kn" else (0.5, 1.1, 1.6))
            elif smoothing == "kn-estimate" and n1 > 0:
                assert D[order][0] == pytest.approx(n1 / (n1 + 2 * n2))  # Ney et al. 1994
            elif smoothing == "mkn" and min(n1, n2, n3, n4) > 0:
                y = n1 / (n1 + 2 * n2)  # CG98 eq. 26
                expected = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
                assert np.allclose(D[order], np.clip(expected, 0, [1, 2, 3]))
            assert all(0 <= d <= r for r, d in zip((1, 2, 3), D[order]))
        assert smoothing != "mkn" or min(_count_of_counts(a[n])) > 0  # the top order was checked
    prob, _, outcomes = _reference(docs, n, kind, D, pad, k=0.5)
    for ctx in ([], [0], [1], [2, 0], [4, 4], [1, 0], [V, V], [V, 3]):
        if not pad and V in ctx:
            continue
        h = tuple(ctx[-(n - 1) :]) if ctx else ()
        for w in outcomes:
            ref = prob(min(len(h) + 1, n), h, w)  # a short context uses the highest order it allows
            got = m.logprob(ctx, w)
            assert (got == pytest.approx(math.log(ref), abs=1e-12)) if ref > 0 else got == -math.inf


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
    m = NGramModel(3, V, "mkn", pad=True, unk="map").fit(_docs())
    path = tmp_path / "model.npz"
    m.save(path)
    loaded = NGramModel.load(path)
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
