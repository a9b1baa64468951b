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


# --- Bigram-Backcopy (lab 02's attention-sink task) ---------------------------------------------


def test_backcopy_documents_start_with_bos_and_copy_after_every_trigger():
    from minilm.data import BigramBackcopy

    bc = BigramBackcopy(vocab_size=16, triggers=3, seed=1)
    docs = bc.documents(200, 50, np.random.default_rng(0))
    assert docs.shape == (200, 50) and docs.dtype == np.int64
    assert (docs[:, 0] == bc.bos).all() and bc.bos == 16 == bc.max_token
    assert docs[:, 1:].min() >= 0 and docs[:, 1:].max() < 16
    n_copies = 0
    for doc in docs:  # brute force: after a trigger at t >= 2 comes the token before it
        for t in range(2, len(doc) - 1):
            if doc[t] < 3:
                assert doc[t + 1] == doc[t - 1], (t, doc[t - 1 : t + 2])
                n_copies += 1
    assert n_copies > 100  # triggers are frequent enough for the rule to be exercised
    mask = np.stack([bc.copy_positions(doc) for doc in docs])
    assert mask.sum() == n_copies and not mask[:, :2].any()


def test_backcopy_other_transitions_follow_the_bigram_table():
    from minilm.data import BigramBackcopy

    bc = BigramBackcopy(vocab_size=8, triggers=1, concentration=1.0, seed=2)
    docs = bc.documents(4000, 40, np.random.default_rng(3))
    prev, nxt = docs[:, 1:-1].reshape(-1), docs[:, 2:].reshape(-1)
    free = prev >= 1  # not after a trigger: a draw from P(. | prev)
    for b in range(1, 8):
        sel = free & (prev == b)
        counts = np.bincount(nxt[sel], minlength=8)
        n = sel.sum()
        p = bc.transition[b]
        # binomial standard error per entry; 5 sigma keeps the test stable and still catches a wrong row
        assert np.all(np.abs(counts / n - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-9), (b, counts / n, p)


def test_backcopy_is_a_batch_source_for_train():
    from minilm.data import BigramBackcopy
    from minilm.models import build_model
    from minilm.train import train

    bc = BigramBackcopy(seed=0)
    x, y = bc.sample_batch(4, 10, np.random.default_rng(0))
    assert x.shape == y.shape == (4, 10) and x.dtype == y.dtype == torch.int64
    assert (x[:, 0] == bc.bos).all() and torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    torch.manual_seed(0)
    model = build_model("gpt", bc.vocab_size + 1, size="tiny", context_length=16, n_layers=1, d_model=16, n_heads=2)
    hist = train(model, bc, steps=30, batch_size=8, lr=1e-2, device="cpu", progress=False)
    assert hist["train_loss"][-1] < hist["train_loss"][0]
    doc = bc.document(100, seed=5)
    assert doc.shape == (100,) and doc[0] == bc.bos
    with pytest.raises(ValueError, match="triggers"):
        BigramBackcopy(vocab_size=4, triggers=4)
    with pytest.raises(ValueError, match="length"):
        bc.documents(2, 1, np.random.default_rng(0))
