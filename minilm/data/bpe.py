"""Byte-level byte-pair encoding (BPE), as in GPT-2 (Radford et al. 2019; Sennrich et al. 2016).

Training:
  1. Cut the text out around the special tokens (they are never split and never merged).
  2. Pre-tokenize each piece with GPT-2's regex (words with their leading space, numbers,
     punctuation runs, whitespace), so merges never cross a word boundary.
  3. Start from the 256 byte values and repeatedly merge the most frequent adjacent pair of
     tokens into a new token, until the vocabulary has the requested size.

Ties between equally frequent pairs (``train(..., tie_break=...)``), both deterministic:
  "lexicographic" (default): the pair whose byte strings (vocab[a], vocab[b]) compare greatest,
      e.g. (b"BA", b"A") before (b"B", b"ZZ") before (b"A", b"C"). This is the rule of Stanford
      CS336's assignment 1 and of the implementations that follow it, so a learner coming from
      there gets the same merges. (Two tokens can spell the same bytes; such a tie falls back
      to the smallest ids.)
  "ids": the pair with the smallest token ids (a, b), i.e. the older tokens first (minilm's
      rule before; kept as an option).
The rule only matters for training: a tokenizer is its merges, and loading needs nothing else.

Speed: the words of the text are kept once each with their count ("the" x 1000 is one entry),
pair counts are updated incrementally -- after a merge only the words that contain the merged
pair are recounted -- and the most frequent pair comes from a heap with lazy deletion, whose
entries (-count, tie key, pair) pop in the order of the tie rule. Training on 1 MB of English
takes about a second.

Encoding applies the merges to each pre-token, always the lowest-ranked (earliest learned)
pair first, which gives the same tokens as replaying the training merges in order.

Round trips (tested with hypothesis):
  - ``decode(encode(s)) == s`` for every string of Unicode scalar values (lone surrogates,
    which UTF-8 cannot encode, are rejected with a ValueError).
  - ``encode(decode(ids)) == ids`` for every *canonical* id sequence, i.e. one that ``encode``
    produced. It cannot hold for all sequences: [b"a", b"b"] and the merged [b"ab"] decode to
    the same text, and an arbitrary byte sequence need not be valid UTF-8.

Vocabulary layout: ids 0..255 are the bytes, then one id per merge in learned order, then the
special tokens. Files are JSON, written atomically.
"""

from __future__ import annotations

import heapq
import json
import os
import re
from collections import Counter
from pathlib import Path

import regex

from minilm.atomic import atomic_write_text

# GPT-2's pre-tokenization pattern (Radford et al. 2019, the released encoder.py). It needs the
# third-party `regex` module (a dependency) for the Unicode classes \p{L} (letters), \p{N} (numbers).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
TIE_BREAKS = ("lexicographic", "ids")
_REVERSED_BYTE = {i: 255 - i for i in range(256)}  # a str.translate table


class BPETokenizer:
    """Byte-level BPE: ``tok = BPETokenizer.train(text, vocab_size=512)``; ``tok.encode(s)``."""

    def __init__(
        self,
        merges: list[tuple[int, int]],
        special_tokens: list[str] | tuple[str, ...] = (),
        pattern: str = GPT2_PATTERN,
    ):
        """Build a tokenizer from its merges (pairs of ids, in learned order) and special tokens."""
        self.merges = [(int(a), int(b)) for a, b in merges]
        self.pattern = pattern
        self._pat = regex.compile(pattern)
        self.vocab: list[bytes] = [bytes([i]) for i in range(256)]  # id -> bytes
        self.ranks: dict[tuple[int, int], int] = {}  # pair -> id of the merged token
        for a, b in self.merges:
            if not (0 <= a < len(self.vocab) and 0 <= b < len(self.vocab)):
                raise ValueError(f"merge ({a}, {b}) refers to a token that does not exist yet")
            self.ranks[(a, b)] = len(self.vocab)
            self.vocab.append(self.vocab[a] + self.vocab[b])
        specials = list(dict.fromkeys(special_tokens))
        if any(not isinstance(s, str) or not s for s in specials):
            raise ValueError("special tokens must be non-empty strings")
        self.special_tokens = {s: len(self.vocab) + i for i, s in enumerate(specials)}
        self._special_of_id = {i: s for s, i in self.special_tokens.items()}
        # longest first, so "<|a|><|b|>" style overlaps resolve to the longer token
        self._special_pat = (
            re.compile("(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")")
            if specials else None
        )
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + len(self.special_tokens)

    # --------------------------------------------------------------------------- training
    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int = 512,
        special_tokens: list[str] | tuple[str, ...] = (),
        pattern: str = GPT2_PATTERN,
        verbose: bool = False,
        tie_break: str = "lexicographic",
    ) -> BPETokenizer:
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``.

        ``tie_break``: "lexicographic" (default) or "ids", the rule between equally frequent
        pairs (module docstring). Training stops early if no pair is left to merge (a short
        text); ``vocab_size`` of the result then tells the true size.
        """
        n_merges = vocab_size - 256 - len(set(special_tokens))
        if not isinstance(vocab_size, int) or n_merges < 0:
            raise ValueError(
                f"vocab_size={vocab_size!r} is too small: it must be at least 256 (the bytes) plus "
                f"the {len(set(special_tokens))} special tokens"
            )
        if tie_break not in TIE_BREAKS:
            raise ValueError(f"tie_break must be one of {', '.join(map(repr, TIE_BREAKS))}, got {tie_break!r}")
        _check_text(text)
        pat = regex.compile(pattern)
        words: Counter[str] = Counter()
        for piece in _split_specials(text, special_tokens):
            words.update(pat.findall(piece))
        seqs = [list(w.encode("utf-8")) for w in words]  # each distinct pre-token, as token ids
        freq = list(words.values())

        pair_counts: Counter[tuple[int, int]] = Counter()
        where: dict[tuple[int, int], set[int]] = {}  # pair -> words that (may) contain it
        for i, seq in enumerate(seqs):
            for pair in zip(seq, seq[1:]):
                pair_counts[pair] += freq[i]
                where.setdefault(pair, set()).add(i)
        # heapq pops the smallest entry (-count, tie key, pair): the most frequent pair, then the
        # tie rule's choice, then the smallest ids. The tie key of (a, b) is rev[a] + rev[b]
        # (see _tie_string). Stale entries (their count changed) are skipped when popped.
        vocab = [bytes([i]) for i in range(256)]  # id -> bytes, grows with the merges
        rev = [_tie_string(b, tie_break) for b in vocab]
        heap = [(-c, rev[a] + rev[b], (a, b)) for (a, b), c in pair_counts.items()]
        heapq.heapify(heap)

        merges: list[tuple[int, int]] = []
        progress = _progress(n_merges, verbose)
        while len(merges) < n_merges and heap:
            neg, _, pair = heapq.heappop(heap)
            if pair_counts.get(pair, 0) != -neg or neg == 0:
                continue  # stale entry
            new_id = 256 + len(merges)
            merges.append(pair)
            vocab.append(vocab[pair[0]] + vocab[pair[1]])
            rev.append(_tie_string(vocab[new_id], tie_break))
            changed: set[tuple[int, int]] = set()
            for i in where.pop(pair, ()):
                seq, f = seqs[i], freq[i]
                if len(seq) < 2:
                    continue
                for p in zip(seq, seq[1:]):  # take this word's pairs out ...
                    pair_counts[p] -= f
                    changed.add(p)
                seq = seqs[i] = _merge(seq, pair, new_id)
                for p in zip(seq, seq[1:]):  # ... and put the merged word's pairs back
                    pair_counts[p] += f
                    changed.add(p)
                    where.setdefault(p, set()).add(i)
            for p in changed:
                c = pair_counts[p]
                if c > 0:
                    heapq.heappush(heap, (-c, rev[p[0]] + rev[p[1]], p))
                else:
                    del pair_counts[p]
            progress.update(1)
        progress.close()
        return cls(merges, special_tokens, pattern)

    # --------------------------------------------------------------------------- encoding
    def _encode_chunk(self, chunk: str) -> list[int]:
        """One pre-token -> ids: merge the lowest-ranked pair present until none applies."""
        cached = self._cache.get(chunk)
        if cached is not None:
            return cached
        seq = list(chunk.encode("utf-8"))
        while len(seq) >= 2:
            best = min(zip(seq, seq[1:]), key=lambda p: self.ranks.get(p, 1 << 60))
            if best not in self.ranks:
                break
            seq = _merge(seq, best, self.ranks[best])
        if len(self._cache) < 200_000:  # bounded memory on huge, diverse texts
            self._cache[chunk] = seq
        return seq

    def encode(self, text: str) -> list[int]:
        """Text -> token ids. Special tokens in the text become their own id, never split."""
        _check_text(text)
        ids: list[int] = []
        for piece in _split_specials(text, self.special_tokens, self._special_pat, keep=True):
            if piece in self.special_tokens:
                ids.append(self.special_tokens[piece])
                continue
            for chunk in self._pat.findall(piece):
                ids.extend(self._encode_chunk(chunk))
        return ids

    def decode(self, ids) -> str:
        """Token ids -> text. Byte sequences that are not valid UTF-8 (possible for sampled ids)
        become U+FFFD replacement characters."""
        out = bytearray()
        n = len(self.vocab)
        for i in ids:
            i = int(i)
            if 0 <= i < n:
                out += self.vocab[i]
            elif i in self._special_of_id:
                out += self._special_of_id[i].encode("utf-8")
            else:
                raise ValueError(f"token id {i} out of range for a vocabulary of {self.vocab_size}")
        return out.decode("utf-8", errors="replace")

    def token_bytes(self, i: int) -> bytes:
        """The bytes a token stands for (a special token's UTF-8 text)."""
        return self.vocab[i] if i < len(self.vocab) else self._special_of_id[i].encode("utf-8")

    # ------------------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        data = {"type": "bpe", "pattern": self.pattern, "merges": self.merges,
                "special_tokens": list(self.special_tokens)}
        atomic_write_text(path, json.dumps(data))

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("type") != "bpe":
            raise ValueError(f"{path} is not a BPE tokenizer file (type={data.get('type')!r})")
        return cls([tuple(m) for m in data["merges"]], data["special_tokens"], data["pattern"])


# ---------------------------------------------------------------------------------- helpers
def _merge(seq: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``pair`` in ``seq`` (left to right) by ``new_id``."""
    a, b = pair
    out, i, n = [], 0, len(seq)
    while i < n:
        if i < n - 1 and seq[i] == a and seq[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def _tie_string(b: bytes, tie_break: str) -> str:
    """A token's part of the heap's tie key, which the heap pops smallest first.

    "lexicographic": a str whose order is the reverse of the bytes order, so the greatest byte
    strings pop first: each byte x becomes chr(255 - x), and a final chr(256) sorts a prefix
    after its extensions (as bytes, a prefix is the smaller). The final chr(256) also makes the
    key of a pair, the concatenation of its two tokens' strings, compare as the pair of strings.
    "ids": "" for every token, so the pair itself decides, smallest ids first.
    """
    if tie_break == "ids":
        return ""
    return b.decode("latin-1").translate(_REVERSED_BYTE) + "\u0100"


def _split_specials(text: str, specials, special_pat=None, keep: bool = False) -> list[str]:
    """Cut ``text`` around special tokens; ``keep=True`` keeps them as pieces of their own."""
    if not specials:
        return [text] if text else []
    if special_pat is None:
        special_pat = re.compile(
            "(" + "|".join(re.escape(s) for s in sorted(set(specials), key=len, reverse=True)) + ")"
        )
    parts = special_pat.split(text)  # odd positions are the special tokens themselves
    return [p for j, p in enumerate(parts) if p and (keep or j % 2 == 0)]


def _check_text(text: str) -> None:
    if not isinstance(text, str):
        raise ValueError(f"expected a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"text contains a lone surrogate {text[err.start]!r} at position {err.start}, which UTF-8 "
            "cannot encode: clean the text (e.g. s.encode('utf-8', 'replace').decode())"
        ) from None


def _progress(total: int, verbose: bool):
    if verbose:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="BPE merges")

    class _Silent:
        def update(self, n):
            pass

        def close(self):
            pass

    return _Silent()
