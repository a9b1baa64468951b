"""Byte-level BPE: a brute-force reference trainer (both tie rules), round-trip properties
(hypothesis), special tokens."""

from collections import Counter

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from minilm.data.bpe import GPT2_PATTERN, TIE_BREAKS, BPETokenizer

SPECIALS = ["<|endoftext|>", "<|pad|>"]
TEXT = (
    "The quick brown fox jumps over the lazy dog. It's 2024; they'll say 'hello'!\n"
    "héllo wörld — naïve café, 日本語のテキスト, emoji 🙂🙃 and   spaces\ttabs\n"
    "def f(x):\n    return x ** 2  # squares\n"
) * 40 + "<|endoftext|>".join(f"document {i} ends here" for i in range(30))


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(TEXT, vocab_size=256 + 150 + len(SPECIALS), special_tokens=SPECIALS)


def _naive_train(text, n_merges, tie_break="lexicographic"):
    """Reference BPE: recount every pair over every word occurrence after each merge; take the
    most frequent pair, ties to the greatest byte strings (then the smallest ids) or the smallest ids."""
    words = [list(w.encode("utf-8")) for w in regex.findall(GPT2_PATTERN, text)]
    vocab = [bytes([i]) for i in range(256)]
    merges = []
    for new_id in range(256, 256 + n_merges):
        counts = Counter(p for w in words for p in zip(w, w[1:]))
        if not counts:
            break
        if tie_break == "lexicographic":
            best = max(counts, key=lambda p: (counts[p], vocab[p[0]], vocab[p[1]], -p[0], -p[1]))
        else:
            best = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))
        merges.append(best)
        vocab.append(vocab[best[0]] + vocab[best[1]])
        for w in words:
            i = 0
            while i < len(w) - 1:
                if (w[i], w[i + 1]) == best:
                    w[i : i + 2] = [new_id]
                i += 1
    return merges


@pytest.mark.parametrize("tie_break", TIE_BREAKS)
def test_incremental_training_matches_naive_reference(tie_break):
    text = TEXT[:6000]
    fast = BPETokenizer.train(text, vocab_size=256 + 120, tie_break=tie_break)
    assert fast.merges == _naive_train(text, 120, tie_break)


# few distinct characters (many ties, long merges, tokens that are prefixes of others) and any text
random_texts = st.one_of(st.text(alphabet="ab c\né", max_size=80), st.text(max_size=40))


@settings(max_examples=200, deadline=None)
@given(text=random_texts, n_merges=st.integers(1, 30), tie_break=st.sampled_from(TIE_BREAKS))
def test_training_matches_naive_reference_on_random_texts(text, n_merges, tie_break):
    fast = BPETokenizer.train(text, vocab_size=256 + n_merges, tie_break=tie_break)
    assert fast.merges == _naive_train(text, n_merges, tie_break)


def test_encode_matches_replaying_the_merges_in_order(tok):
    text = "The naïve fox's café, 日本語 🙂 and 12345 unknown-words_here"
    ids = []
    for chunk in regex.findall(GPT2_PATTERN, text):
        seq = list(chunk.encode("utf-8"))
        for rank, (a, b) in enumerate(tok.merges):
            i, out = 0, []
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == (a, b):
                    out.append(256 + rank)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seq = out
        ids += seq
    assert tok.encode(text) == ids


def test_merges_compress_the_training_text(tok):
    body = TEXT.replace("<|endoftext|>", "")
    assert len(tok.encode(body)) < 0.5 * len(body.encode("utf-8"))
    assert tok.vocab_size == 256 + 150 + 2


# ------------------------------------------------------------------------ round trips
texts_with_specials = st.lists(st.one_of(st.text(), st.sampled_from(SPECIALS)), max_size=6).map("".join)


@settings(max_examples=300, deadline=None)
@given(texts_with_specials)
def test_decode_encode_is_identity_on_any_text(tok, s):
    """decode(encode(s)) == s for every string of Unicode scalar values."""
    assert tok.decode(tok.encode(s)) == s


@settings(max_examples=300, deadline=None)
@given(texts_with_specials)
def test_encode_decode_is_identity_on_canonical_ids(tok, s):
    """encode(decode(ids)) == ids for every id sequence that encode produced."""
    ids = tok.encode(s)
    assert tok.encode(tok.decode(ids)) == ids


def test_non_canonical_ids_do_not_round_trip(tok):
    """Why the property above is restricted: two id sequences can spell the same text."""
    merged = 256  # the first merge (a, b)
    a, b = tok.merges[0]
    assert tok.decode([a, b]) == tok.decode([merged])
    assert tok.encode(tok.decode([a, b])) == [merged]
    # an arbitrary byte sequence need not be UTF-8: decoding replaces it, encoding differs
    assert tok.decode([0xFF]) == "\ufffd" and tok.encode("\ufffd") != [0xFF]


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_pretokenizer_covers_every_character(s):
    """GPT-2's pattern loses no character (so round trips can hold)."""
    assert "".join(regex.findall(GPT2_PATTERN, s)) == s


def test_lone_surrogates_are_rejected(tok):
    with pytest.raises(ValueError, match="surrogate"):
        tok.encode("abc\ud800")


# ------------------------------------------------------------------------ pre-tokenizer
def test_gpt2_pretokenization():
    pieces = regex.findall(GPT2_PATTERN, "Hello world's 123  foo!! x²")
    assert pieces == ["Hello", " world", "'s", " 123", " ", " foo", "!!", " x", "²"]


# ----------------------------------------------------------------------- special tokens
def test_special_tokens_are_never_split_nor_merged(tok):
    eot = tok.special_tokens["<|endoftext|>"]
    ids = tok.encode("a<|endoftext|>b<|pad|><|endoftext|>")
    assert ids.count(eot) == 2 and tok.special_tokens["<|pad|>"] in ids
    # the training text had "<|endoftext|>" 29 times, yet no merge learned its pieces
    assert not any(b"endoftext" in t or b"<|" in t for t in tok.vocab)
    assert tok.decode([eot]) == "<|endoftext|>"


def test_tie_breaking_rules():
    # pre-tokens "zy", " ab", " dc": every pair occurs once
    lex = BPETokenizer.train("zy ab dc", vocab_size=256 + 3)
    # greatest byte strings first: (z, y); then (d, c) > (a, b) > (" ", a), and (a, b) > (" ", dc)
    assert [lex.vocab[i] for i in range(256, 259)] == [b"zy", b"dc", b"ab"]
    ids = BPETokenizer.train("zy ab dc", vocab_size=256 + 3, tie_break="ids")
    # smallest ids first: (32, 97) " a"; " ab" is then (256, 98), so (32, 100) " d"; then (122, 121)
    assert ids.merges == [(32, 97), (32, 100), (122, 121)]
    # a byte string sorts after its prefix: "aaab" -> (a, a), then (aa, a) beats (a, b) ...
    assert [BPETokenizer.train("aaab", 258).vocab[i] for i in (256, 257)] == [b"aa", b"aaa"]
    # ... while by ids (97, 98) beats (256, 97)
    assert [BPETokenizer.train("aaab", 258, tie_break="ids").vocab[i] for i in (256, 257)] == [b"aa", b"ab"]
    for rule in TIE_BREAKS:  # deterministic
        first, again = (BPETokenizer.train(TEXT, 300, tie_break=rule).merges for _ in range(2))
        assert first == again
    with pytest.raises(ValueError, match="tie_break"):
        BPETokenizer.train(TEXT, 300, tie_break="frequency")


# --------------------------------------------------------------------------------- files
def test_save_load_round_trip(tok, tmp_path):
    path = tmp_path / "bpe.json"
    tok.save(path)
    loaded = BPETokenizer.load(path)
    s = "héllo <|endoftext|> wörld 🙂"
    assert loaded.encode(s) == tok.encode(s) and loaded.vocab_size == tok.vocab_size
    (tmp_path / "other.json").write_text('{"type": "char"}')
    with pytest.raises(ValueError, match="not a BPE tokenizer"):
        BPETokenizer.load(tmp_path / "other.json")


def test_bad_inputs_raise_clear_errors(tok):
    with pytest.raises(ValueError, match="at least 256"):
        BPETokenizer.train("abc", vocab_size=100)
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="does not exist"):
        BPETokenizer([(0, 300)])
    short = BPETokenizer.train("ab", vocab_size=1000)  # stops early: only one pair exists
    assert short.vocab_size == 257
