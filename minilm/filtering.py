"""Data filtering (talk section 8, lab 05): exact and near-duplicate detection, and a quality score.

Near duplicates, from the definitions:

- A document is the set of its character k-shingles (every substring of k characters); the
  resemblance of two documents is the Jaccard similarity of their sets, J(A, B) = |A ∩ B| / |A ∪ B|
  (Broder 1997, "On the resemblance and containment of documents").
- MinHash (Broder 1997): for a random hash function h, P[min h(A) = min h(B)] = J(A, B). With n
  independent hash functions, the fraction of equal signature entries is an unbiased estimate of
  J with standard error sqrt(J (1 - J) / n). Random permutations are replaced by universal hash
  functions h_i(x) = (a_i x + b_i) mod p (Leskovec, Rajaraman & Ullman, *Mining of Massive
  Datasets*, sec. 3.3.5).
- Locality-sensitive hashing by banding (MMDS sec. 3.4): cut each signature into b bands of r
  rows; two documents become a *candidate pair* if they agree on every row of at least one band.
  A pair with similarity s is a candidate with probability 1 - (1 - s^r)^b, an S-curve with its
  threshold near (1/b)^(1/r). Only candidate pairs are compared, instead of all N^2 / 2.

Exact duplicates are found by hashing each document's text (whitespace normalised). The quality
filter scores each document by its mean loss (nats/token) under a small reference model trained
on clean text (``quality_scores``): junk is what a clean model finds surprising.
``text_documents`` cuts a text into documents and ``polluted_corpus`` builds the lab's corpus
from them: clean documents plus injected duplicates, near duplicates and junk, each labelled.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MERSENNE_31 = (1 << 31) - 1  # the prime p of the hash family: a * x < 2^62 fits in uint64
KINDS = ("clean", "duplicate", "near-duplicate", "junk")


def shingles(text: str, k: int = 5) -> set[str]:
    """The set of character k-shingles of ``text`` (a text shorter than k is its own one shingle)."""
    if k < 1:
        raise ValueError(f"shingle length k must be >= 1, got {k}")
    if len(text) < k:
        return {text} if text else set()
    return {text[i: i + k] for i in range(len(text) - k + 1)}


def jaccard(a: set, b: set) -> float:
    """|A ∩ B| / |A ∪ B| (1.0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def _shingle_ids(text: str, k: int) -> np.ndarray:
    """Each shingle as a stable 32-bit number (CRC-32; Python's hash() changes between processes)."""
    return np.array([zlib.crc32(s.encode("utf-8")) for s in shingles(text, k)], dtype=np.uint64)


class MinHasher:
    """``n_hashes`` universal hash functions h_i(x) = (a_i x + b_i) mod p and the signatures they give."""

    def __init__(self, n_hashes: int = 128, k: int = 5, seed: int = 0):
        if n_hashes < 1:
            raise ValueError(f"n_hashes must be >= 1, got {n_hashes}")
        rng = np.random.default_rng(seed)
        self.n_hashes, self.k = int(n_hashes), int(k)
        self.a = rng.integers(1, MERSENNE_31, size=n_hashes, dtype=np.uint64)   # (n,)
        self.b = rng.integers(0, MERSENNE_31, size=n_hashes, dtype=np.uint64)   # (n,)

    def signature(self, text: str) -> np.ndarray:
        """min over the shingles x of h_i(x), for each i: (n_hashes,) uint64 (all p for an empty text)."""
        x = _shingle_ids(text, self.k) % MERSENNE_31                             # (S,)
        if len(x) == 0:
            return np.full(self.n_hashes, MERSENNE_31, dtype=np.uint64)
        return ((self.a[:, None] * x[None, :] + self.b[:, None]) % MERSENNE_31).min(axis=1)   # (n,)

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """Every text's signature: (N, n_hashes) uint64."""
        return np.stack([self.signature(t) for t in texts]) if len(texts) else np.zeros((0, self.n_hashes), np.uint64)


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """The MinHash estimate of J: the fraction of positions where the two signatures agree."""
    sig_a, sig_b = np.asarray(sig_a), np.asarray(sig_b)
    if sig_a.shape != sig_b.shape or sig_a.ndim != 1:
        raise ValueError(f"signatures must be 1-D and of equal length, got {sig_a.shape} and {sig_b.shape}")
    return float(np.mean(sig_a == sig_b))


def candidate_probability(s, bands: int, rows: int):
    """P(a pair of similarity s is a candidate) under LSH with ``bands`` bands of ``rows`` rows."""
    return 1.0 - (1.0 - np.asarray(s, dtype=np.float64) ** rows) ** bands


def lsh_candidates(signatures: np.ndarray, bands: int) -> set[tuple[int, int]]:
    """Pairs (i, j), i < j, whose signatures agree on every row of at least one band."""
    N, n = signatures.shape
    if bands < 1 or n % bands:
        raise ValueError(f"{n} signature rows cannot be cut into {bands} equal bands: choose a divisor of {n}")
    rows = n // bands
    pairs: set[tuple[int, int]] = set()
    for b in range(bands):
        buckets: dict[bytes, list[int]] = {}
        for i in range(N):
            buckets.setdefault(signatures[i, b * rows: (b + 1) * rows].tobytes(), []).append(i)
        for members in buckets.values():
            pairs.update((members[p], members[q]) for p in range(len(members)) for q in range(p + 1, len(members)))
    return pairs


def _clusters(n: int, pairs) -> np.ndarray:
    """Union-find: each item's cluster, named by the smallest index in it."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([root(i) for i in range(n)], dtype=np.int64)


def exact_duplicates(texts: Sequence[str]) -> np.ndarray:
    """Cluster id of each text (the index of its first copy); texts equal up to whitespace share one."""
    first: dict[bytes, int] = {}
    out = np.empty(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        key = hashlib.sha1(" ".join(text.split()).encode("utf-8")).digest()
        out[i] = first.setdefault(key, i)
    return out


@dataclass
class Dedup:
    """What ``near_duplicates`` found."""

    cluster: np.ndarray        # (N,) the smallest index of each document's cluster
    candidates: int            # candidate pairs LSH proposed
    confirmed: int             # of those, pairs whose estimated Jaccard passed the threshold

    @property
    def keep(self) -> np.ndarray:
        """(N,) bool: the first document of every cluster."""
        return self.cluster == np.arange(len(self.cluster))


def near_duplicates(texts: Sequence[str], threshold: float = 0.5, n_hashes: int = 128, bands: int = 32,
                    k: int = 5, seed: int = 0) -> Dedup:
    """Cluster texts whose estimated Jaccard similarity (MinHash) is at least ``threshold``.

    LSH (``bands`` bands of n_hashes / bands rows) proposes candidate pairs; a pair is confirmed
    when its signatures agree on >= threshold of their entries; confirmed pairs are merged
    transitively. Exact duplicates always end up together (identical signatures).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    sig = MinHasher(n_hashes, k, seed).signatures(texts)
    cand = lsh_candidates(sig, bands)
    confirmed = [(i, j) for i, j in cand if np.mean(sig[i] == sig[j]) >= threshold]
    return Dedup(_clusters(len(texts), confirmed), len(cand), len(confirmed))


def quality_scores(docs: Sequence[np.ndarray], reference) -> np.ndarray:
    """Mean negative log-likelihood (nats/token) of each tokenized document under ``reference``,
    any model with ``logprobs(tokens) -> log-probabilities`` (e.g. ``minilm.models.NGramModel``
    fitted on clean text). Higher = more surprising to a clean model."""
    return np.array([-float(np.mean(reference.logprobs(np.asarray(d)))) for d in docs])


def text_documents(text: str, min_chars: int = 300, max_chars: int = 800) -> list[str]:
    """``text`` cut into documents: consecutive paragraphs (split at blank lines) joined until a
    document holds at least ``min_chars`` characters, then cut to ``max_chars``. A last short
    remainder is dropped."""
    if not 0 < min_chars <= max_chars:
        raise ValueError(f"need 0 < min_chars <= max_chars, got {min_chars}, {max_chars}")
    docs, current = [], ""
    for paragraph in (p.strip() for p in text.split("\n\n")):
        if not paragraph:
            continue
        current = f"{current}\n\n{paragraph}" if current else paragraph
        if len(current) >= min_chars:
            docs.append(current[:max_chars])
            current = ""
    return docs


def split_documents(docs: Sequence[str], sizes: Sequence[int], seed: int = 0) -> list[list[str]]:
    """Disjoint random subsets of ``docs`` of the given ``sizes`` (e.g. train, held-out, reference)."""
    if sum(sizes) > len(docs) or min(sizes, default=0) < 0:
        raise ValueError(f"cannot draw disjoint subsets of sizes {list(sizes)} from {len(docs)} documents")
    order = np.random.default_rng(seed).permutation(len(docs))
    ends = np.cumsum([0, *sizes])
    return [[docs[i] for i in order[a:b]] for a, b in zip(ends[:-1], ends[1:])]


@dataclass
class PollutedCorpus:
    """Documents with injected duplicates, near duplicates and junk, each labelled."""

    texts: list[str]
    kind: np.ndarray     # (N,) index into KINDS
    source: np.ndarray   # (N,) index in ``docs`` of the clean document it is or was copied from; -1 for junk


def _edit(text: str, rate: float, alphabet: str, rng: np.random.Generator) -> str:
    """``text`` with each character replaced, with probability ``rate``, by a random one of ``alphabet``."""
    chars = list(text)
    for i in np.flatnonzero(rng.random(len(chars)) < rate):
        chars[i] = alphabet[int(rng.integers(len(alphabet)))]
    return "".join(chars)


def polluted_corpus(docs: Sequence[str], n_duplicated: int = 10, copies: int = 30, n_near: int = 10,
                    near_copies: int = 10, edit_rate: float = 0.03, n_junk: int = 200, seed: int = 0) -> PollutedCorpus:
    """``docs`` plus: ``n_duplicated`` of them repeated ``copies`` extra times verbatim, ``n_near``
    others copied ``near_copies`` times with a fraction ``edit_rate`` of characters changed, and
    ``n_junk`` documents of random characters (lengths drawn from the clean documents'), shuffled."""
    rng = np.random.default_rng(seed)
    docs = list(docs)
    if n_duplicated + n_near > len(docs):
        raise ValueError(f"cannot pick {n_duplicated} + {n_near} documents to copy out of {len(docs)}")
    alphabet = "".join(sorted(set("".join(docs))))
    picked = rng.permutation(len(docs))[: n_duplicated + n_near]
    texts, kind, source = list(docs), [0] * len(docs), list(range(len(docs)))
    for i in picked[:n_duplicated]:
        texts += [docs[i]] * copies
        kind += [1] * copies
        source += [int(i)] * copies
    for i in picked[n_duplicated:]:
        texts += [_edit(docs[i], edit_rate, alphabet, rng) for _ in range(near_copies)]
        kind += [2] * near_copies
        source += [int(i)] * near_copies
    for _ in range(n_junk):
        n = len(docs[int(rng.integers(len(docs)))])
        texts.append("".join(alphabet[j] for j in rng.integers(len(alphabet), size=n)))
        kind.append(3)
        source.append(-1)
    order = rng.permutation(len(texts))
    return PollutedCorpus([texts[i] for i in order], np.array(kind)[order], np.array(source)[order])
