import numpy as np
import pytest
import torch

from minilm.data import (
    ByteTokenizer,
    CharTokenizer,
    MarkovLanguage,
    ZipfMarkovMixture,
    ZipfUnigram,
    get_batch,
    iterate_windows,
    load_dataset,
    pydoc_text,
    stdlib_code,
    train_val_split,
)
from minilm.data.languages import _entropy


def _monte_carlo_check(lang, n=400_000, seed=3):
    """Exact entropy rate vs -mean log P(x_t | past) on a long sample: within 4 standard errors."""
    sample = lang.sample(n, seed=seed)
    lp = lang.log_prob(sample)
    est, se = -lp.mean(), lp.std() / np.sqrt(len(lp))
    assert abs(est - lang.entropy_rate()) < 4 * se + 2e-3, (est, lang.entropy_rate(), se)


def test_zipf_entropy_closed_form_and_monte_carlo():
    lang = ZipfUnigram(vocab_size=100, exponent=1.0)
    p = 1 / np.arange(1, 101)
    p /= p.sum()
    assert lang.entropy_rate() == pytest.approx(-(p * np.log(p)).sum(), rel=1e-12)
    _monte_carlo_check(lang)


@pytest.mark.parametrize("order", [1, 2])
def test_markov_entropy_rate_exact_vs_monte_carlo(order):
    _monte_carlo_check(MarkovLanguage(vocab_size=12, order=order, concentration=0.3, seed=order))


def test_markov_stationary_distribution_is_stationary():
    lang = MarkovLanguage(vocab_size=6, order=2, seed=1)
    # Brute force: dense transition matrix over the 36 contexts.
    S, V = 36, 6
    T = np.zeros((S, S))
    for s in range(S):
        for v in range(V):
            T[s, (s * V) % S + v] += lang.transition[s, v]
    assert np.allclose(lang.stationary @ T, lang.stationary, atol=1e-12)
    # Empirical context frequencies agree with it.
    x = lang.sample(200_000, seed=0)
    ctx = x[:-1] * V + x[1:]
    freq = np.bincount(ctx, minlength=S) / len(ctx)
    assert np.abs(freq - lang.stationary).max() < 0.01


def test_mixture_entropy_rate_exact_vs_monte_carlo():
    _monte_carlo_check(ZipfMarkovMixture(n_topics=16, vocab_size_base=8, doc_length=10, seed=2), n=330_000)


def test_mixture_documents_start_with_marker():
    lang = ZipfMarkovMixture(n_topics=5, vocab_size_base=7, doc_length=4)
    x = lang.sample(50, seed=0).reshape(-1, 5)
    assert (x[:, 0] >= 7).all() and (x[:, 1:] < 7).all()


def test_sampling_is_reproducible_and_in_range():
    for lang in (ZipfUnigram(), MarkovLanguage(), ZipfMarkovMixture()):
        a, b = lang.sample(5000, seed=7), lang.sample(5000, seed=7)
        assert np.array_equal(a, b) and a.dtype == np.int64
        assert a.min() >= 0 and a.max() < lang.vocab_size
        assert not np.array_equal(a, lang.sample(5000, seed=8))


def test_bad_language_arguments():
    with pytest.raises(ValueError, match="n_tokens"):
        ZipfUnigram().sample(0)
    with pytest.raises(ValueError, match="order"):
        MarkovLanguage(order=0)
    with pytest.raises(ValueError, match="too many"):
        MarkovLanguage(vocab_size=1000, order=3)


def test_corpora_are_deterministic_and_split():
    text = pydoc_text()
    assert len(text) > 300_000 and text == pydoc_text()
    code = stdlib_code(max_bytes=100_000)
    assert "def " in code and len(code) == 100_000
    tr, va = train_val_split(text, 0.1)
    assert tr + va == text and len(va) == pytest.approx(0.1 * len(text), abs=1)
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(text, 1.5)


def test_char_tokenizer_round_trip_and_errors(tmp_path):
    tok = CharTokenizer.fit("hello world")
    s = "hello low"
    assert tok.decode(tok.encode(s)) == s
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("xyz")
    rep = CharTokenizer.fit("abc", unknown="replace")
    assert rep.decode(rep.encode("abz")) == "ab\ufffd"
    tok.save(tmp_path / "t.json")
    assert CharTokenizer.load(tmp_path / "t.json").encode(s) == tok.encode(s)


def test_byte_tokenizer_round_trip_unicode(tmp_path):
    tok = ByteTokenizer()
    s = "naïve ∑ 🐍 日本"
    assert tok.decode(tok.encode(s)) == s and max(tok.encode(s)) < 256
    tok.save(tmp_path / "b.json")
    with pytest.raises(ValueError, match="not a character tokenizer"):
        CharTokenizer.load(tmp_path / "b.json")


def test_get_batch_shift_and_memmap(tmp_path):
    tokens = np.arange(1000, dtype=np.uint16)
    path = tmp_path / "tokens.bin"
    tokens.tofile(path)
    mm = np.memmap(path, dtype=np.uint16, mode="r")
    for src in (tokens, mm):
        x, y = get_batch(src, 8, 16, "cpu", np.random.default_rng(0))
        assert x.shape == y.shape == (8, 16) and x.dtype == torch.int64
        assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y, x + 1)
    with pytest.raises(ValueError, match="context_length"):
        get_batch(tokens[:10], 2, 16)


def test_iterate_windows_covers_split_in_order():
    tokens = np.arange(101)
    xs = [x for x, _ in iterate_windows(tokens, 10, 4)]
    assert torch.equal(torch.cat(xs).reshape(-1), torch.arange(100))


def test_load_dataset():
    d = load_dataset("markov", n_tokens=20_000)
    assert d.entropy_rate is not None and d.vocab_size == 32 and len(d.train) == 20_000
    p = load_dataset("pydoc")
    assert p.entropy_rate is None and p.decode(p.train[:20].tolist()) == pydoc_text()[:20]
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")
    assert _entropy(np.array([0.5, 0.5])) == pytest.approx(np.log(2))
