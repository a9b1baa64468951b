"""n-gram language models in numpy: maximum likelihood, add-k and (modified) Kneser–Ney.

An n-gram model predicts a token from the previous n - 1 tokens only: P(w | h), h = the last
n - 1 tokens (the "context"). Smoothing methods (``smoothing=``), following Chen & Goodman (1998),
"An Empirical Study of Smoothing Techniques for Language Modeling" (CG98):

  "mle"   c(h w) / c(h .). For a context never seen in training the MLE is undefined; we then
          use the MLE of the longest suffix of h that was seen (down to the unigram).
  "addk"  (c(h w) + k) / (c(h .) + k |V|)   (add-one / Laplace for k = 1; CG98 §2.1).
  "kn"    interpolated Kneser–Ney, one absolute discount D per order (default 0.75):
              P(w | h) = (a(h w) - D(a(h w))) / a(h .)  +  gamma(h) P(w | h')
              gamma(h) = sum_w D(a(h w)) / a(h .)       (CG98 eq. 19; D(0) = 0)
          h' drops the oldest token of h. a = raw counts at the highest order and *continuation*
          counts N1+(. h w) (how many different tokens precede h w) at the lower orders (CG98
          §3; KenLM's "adjusted counts", Heafield et al. 2013 §3.2). The recursion ends in the
          uniform distribution 1 / |V|; a context never seen at an order passes the lower order's
          distribution through unchanged.
  "mkn"   modified Kneser–Ney: D(a) is one of three discounts D1, D2, D3+ for n-grams with
          a = 1, 2 and 3 or more (CG98 §3). Estimated per order from the count-of-counts n_r
          (CG98 eq. 26): Y = n1 / (n1 + 2 n2), D_r = r - (r + 1) Y n_{r+1} / n_r.

The recursion is written once, plainly, in ``interpolated_prob`` (the reference, what a student
reads); ``minilm.models.ngram_fast`` evaluates it for many contexts at once with numpy, which
is what ``NGramModel`` uses unless built with ``fast=False``. Tests hold the two equal.

Valid discounts: a discount must lie in (0, r]. An estimated D_r <= 0 gives gamma(h) = 0 for
every context whose continuations all have count r: unseen continuations then get probability 0
and perplexity is infinite. Small or skewed data produce such estimates (or zero count-of-counts,
where they are undefined); the order then falls back, as KenLM's ``lmplz --discount_fallback``
does, to (D1, D2, D3+) = (0.5, 1, 1.5) (0.75 for "kn" with ``discount="estimate"``), with a
warning. So every Kneser–Ney model gives every in-vocabulary sequence a finite perplexity.

Every conditional distribution sums to 1 over the outcomes: the tokens 0..V-1, plus the end
symbol EOS when documents are padded, plus UNK when unknown tokens are mapped.

Padding (``pad=True``): each document (or sentence) becomes [BOS] * (n-1) + doc + [EOS], so the
model learns how documents start and end, and the perplexity counts predicting EOS. With
``pad=False`` a document is used as is (a token stream): its first tokens are predicted from the
shorter contexts available (the lower orders).

Unknown tokens (``unk=``): "error" rejects ids outside 0..V-1 with a ValueError; "map" maps them
to the UNK symbol, which is then an ordinary outcome (smoothing gives it probability even if
training never showed one).

Counting: n-grams are encoded as int64 numbers (base-S digits, S = V + 3 symbols) and counted
with ``np.unique`` -- no Python loop over tokens, so fitting and scoring a trigram on a million
tokens takes about a second.

``NGramLM`` wraps a model behind the shared ``LanguageModel`` interface (``fit`` then ``forward``
returns log-probabilities as logits), so the trainer, the CLI and the labs can use it like GPT.
(One idea, the n-gram model, with its reference and its wrapper: hence a module above 400 lines.)
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from minilm.atomic import atomic_open
from minilm.models import ngram_fast
from minilm.models.base import LanguageModel

SMOOTHINGS = ("mle", "addk", "kn", "mkn")
KENLM_FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # (D1, D2, D3+) of KenLM's lmplz --discount_fallback
KN_FALLBACK_DISCOUNT = 0.75  # "kn" with discount="estimate" where n1 / (n1 + 2 n2) is not valid


def estimate_discounts(a: np.ndarray, smoothing: str, order: int) -> tuple[float, float, float]:
    """(D1, D2, D3+) of one order from the count-of-counts n_r = #{n-grams with a = r} of its counts a.

    "kn": one D = n1 / (n1 + 2 n2) (Ney et al. 1994) for every count. "mkn": CG98 eq. 26. An
    estimate that is undefined (n_r = 0) or outside (0, r] is replaced for the whole order by the
    fallback (KenLM's for "mkn"), with a warning naming the order and the estimates.
    """
    n = {r: int(np.sum(a == r)) for r in (1, 2, 3, 4)}
    y = n[1] / (n[1] + 2 * n[2]) if n[1] + n[2] else None  # None: undefined
    if smoothing == "kn":
        est, fallback, names = [y] * 3, (KN_FALLBACK_DISCOUNT,) * 3, ["D"]
        source = "this library's default discount"
    else:  # D_r = r - (r + 1) Y n_{r+1} / n_r, CG98 eq. 26
        est = [r - (r + 1) * y * n[r + 1] / n[r] if y is not None and n[r] else None for r in (1, 2, 3)]
        fallback, names = KENLM_FALLBACK_DISCOUNTS, ["D1", "D2", "D3+"]
        source = "KenLM's lmplz --discount_fallback"
    if all(d is not None and 0 < d <= r for r, d in zip((1, 2, 3), est)):
        return tuple(float(d) for d in est)
    shown = ", ".join(f"{name} = {'undefined' if d is None else f'{d:.4g}'}" for name, d in zip(names, est))
    used = ", ".join(f"{name} = {d:g}" for name, d in zip(names, fallback))
    warnings.warn(
        f"{'modified ' if smoothing == 'mkn' else ''}Kneser-Ney, order {order}: the discounts estimated "
        f"from the count-of-counts (n1, n2, n3, n4) = ({n[1]}, {n[2]}, {n[3]}, {n[4]}) are {shown}, not all "
        f"in the valid range 0 < D_r <= r (small or skewed data); using {used} ({source}) for this order "
        "instead. Pass discount=... to choose the discounts yourself.",
        stacklevel=_caller_stacklevel(),
    )
    return fallback


# ------------------------------------------------------------------ the plain reference
def interpolated_prob(counts: list[dict], discounts: list[tuple], h: tuple, w: int, n_outcomes: int) -> float:
    """P(w | h) by interpolated (modified) Kneser–Ney, one probability at a time (the reference).

    counts[m-1] = {context h of m-1 symbols: {w: a(h w)}} for the orders m = 1..n, a the raw
    counts at the top order and the continuation counts below; discounts[m-1] = (D1, D2, D3+) of
    order m; h = the last m-1 symbols (m <= n), oldest first. With D = (0, 0, 0) this is the
    maximum likelihood of the longest context seen ("mle").

        P_m(w | h) = (a(h w) - D(a(h w))) / a(h .) + gamma(h) P_{m-1}(w | h')    CG98 eq. 19, §3
        gamma(h)   = (D1 N1(h .) + D2 N2(h .) + D3+ N3+(h .)) / a(h .)          CG98 §3
        P_0(w)     = 1 / n_outcomes                                                (uniform)

    N_r(h .) is the number of w with a(h w) = r (r or more for 3+); this is Heafield et al.
    (2013) §3.3-3.5 with the unigrams interpolated with the uniform distribution.
    """
    m = len(h) + 1
    lower = 1.0 / n_outcomes if m == 1 else interpolated_prob(counts, discounts, h[1:], w, n_outcomes)
    after_h = counts[m - 1].get(h)  # {w': a(h w')}; None: h was never seen at this order
    if after_h is None:
        return lower  # nothing to discount: the lower order passes through
    D = discounts[m - 1]
    total = sum(after_h.values())
    gamma = sum(_discount(D, a) for a in after_h.values()) / total
    a = after_h.get(w, 0)
    return (a - _discount(D, a)) / total + gamma * lower


def addk_prob(counts: list[dict], h: tuple, w: int, n_outcomes: int, k: float) -> float:
    """P(w | h) = (c(h w) + k) / (c(h .) + k n_outcomes) at the order of h (CG98 §2.1): no recursion."""
    after_h = counts[len(h)].get(h, {})
    return (after_h.get(w, 0) + k) / (sum(after_h.values()) + k * n_outcomes)


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the first frame outside this module."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    return level


def _discount(D: tuple, a: int) -> float:
    """D(a): 0 for an unseen n-gram, else D1, D2 or D3+."""
    return D[min(a, 3) - 1] if a > 0 else 0.0


def _by_context(keys: np.ndarray, counts: np.ndarray, m: int, S: int) -> dict[tuple, dict[int, int]]:
    """{h: {w: a(h w)}} from the int64 codes of one order m (base-S digits, the oldest first)."""
    table: dict[tuple, dict[int, int]] = {}
    for code, a in zip(keys.tolist(), counts.tolist()):
        symbols = [code // S**j % S for j in range(m - 1, -1, -1)]
        table.setdefault(tuple(symbols[:-1]), {})[symbols[-1]] = a
    return table


# -------------------------------------------------------------------------- the model
class NGramModel:
    """An order-n language model over integer tokens 0..vocab_size-1 (numpy, float64 statistics).

    ``NGramModel(order=3, vocab_size=65, smoothing="kn").fit(tokens)``; then ``logprob``,
    ``perplexity``, ``distribution`` and ``sample``. ``data`` arguments are a 1-D sequence of
    token ids (one document) or a list of them (several documents).
    """

    def __init__(
        self,
        order: int = 3,
        vocab_size: int | None = None,
        smoothing: str = "kn",
        discount=None,
        k: float = 1.0,
        pad: bool = True,
        unk: str = "error",
        fast: bool = True,
    ):
        """
        order: n >= 1 (1 = unigram, 2 = bigram, ...).
        vocab_size: V, tokens are 0..V-1; None = max token id seen in ``fit`` + 1.
        smoothing: "mle", "addk", "kn" or "mkn" (see the module docstring).
        discount: for "kn" a float in (0, 1] (default 0.75) or "estimate" (D = n1 / (n1 + 2 n2)
            per order); for "mkn" None / "estimate" (CG98 eq. 26, the default) or a tuple
            (D1, D2, D3+) with 0 < D_r <= r. Invalid estimates fall back (module docstring).
        k: the pseudo-count of "addk" (> 0).
        pad: add BOS/EOS around each document (see module docstring).
        unk: "error" or "map" (out-of-range ids become the UNK symbol).
        fast: score with the vectorised ``ngram_fast`` (default), or with the plain reference
            ``interpolated_prob`` / ``addk_prob`` (slow: for reading, checking, tiny corpora).
        """
        if not isinstance(order, (int, np.integer)) or order < 1:
            raise ValueError(f"order must be a positive integer (1 = unigram), got {order!r}")
        if vocab_size is not None and (not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1):
            raise ValueError(f"vocab_size must be a positive integer or None, got {vocab_size!r}")
        if smoothing not in SMOOTHINGS:
            raise ValueError(f"unknown smoothing {smoothing!r}: choose one of {', '.join(SMOOTHINGS)}")
        if unk not in ("error", "map"):
            raise ValueError(f"unk must be 'error' (reject unknown ids) or 'map' (map them to UNK), got {unk!r}")
        if smoothing == "addk" and not k > 0:
            raise ValueError(f"add-k smoothing needs k > 0, got k={k}")
        self.order = int(order)
        self.smoothing = smoothing
        self.discount = self._check_discount(smoothing, discount)
        self.k = float(k)
        self.pad = bool(pad)
        self.unk = unk
        self.fast = bool(fast)
        self.vocab_size = None if vocab_size is None else int(vocab_size)
        self.counts: list[tuple[np.ndarray, np.ndarray]] | None = None  # per order (keys, a), after fit
        self.discounts: list[tuple[float, float, float]] = []  # per order (D1, D2, D3+)
        if self.vocab_size is not None:
            self._set_vocab(self.vocab_size)

    @staticmethod
    def _check_discount(smoothing: str, discount):
        if smoothing == "kn":
            discount = 0.75 if discount is None else discount
            if discount == "estimate":
                return discount
            if isinstance(discount, (int, float)) and 0 < discount <= 1:
                return float(discount)
            raise ValueError(f"Kneser-Ney needs a discount in (0, 1] or 'estimate', got {discount!r}")
        if smoothing == "mkn":
            if discount is None or discount == "estimate":
                return "estimate"
            d = tuple(float(x) for x in discount) if isinstance(discount, (tuple, list)) else ()
            if len(d) != 3 or not all(0 < x <= r for r, x in zip((1, 2, 3), d)):
                raise ValueError(
                    f"modified Kneser-Ney needs discounts (D1, D2, D3+) with 0 < D_r <= r (a zero discount "
                    f"gives unseen continuations probability 0), or 'estimate', got {discount!r}"
                )
            return d
        if discount is not None:
            raise ValueError(f"discount only applies to 'kn' and 'mkn' smoothing, not {smoothing!r}")
        return None

    def _set_vocab(self, V: int) -> None:
        self.vocab_size = V
        self.bos, self.eos, self.unk_id = V, V + 1, V + 2  # special symbols after the tokens
        self.n_symbols = V + 3  # the base S of the int64 codes
        if self.n_symbols ** self.order >= 2**63:
            raise ValueError(
                f"order {self.order} with {V} tokens does not fit the int64 n-gram codes "
                f"((V + 3)^order must stay below 2^63): lower the order or the vocabulary"
            )
        out = list(range(V)) + ([self.eos] if self.pad else []) + ([self.unk_id] if self.unk == "map" else [])
        self.outcomes = np.asarray(out, dtype=np.int64)  # the symbols a distribution is over

    # ------------------------------------------------------------------------------ input
    def _symbols(self, tokens, what: str = "tokens") -> np.ndarray:
        """Token ids -> int64 symbols, applying the unknown-token policy."""
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise ValueError(f"{what} must be a 1-D sequence of token ids, got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{what} must be integer token ids, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        bad = (arr < 0) | (arr >= self.vocab_size)
        if bad.any():
            if self.unk == "error":
                raise ValueError(
                    f"token id {int(arr[bad][0])} in {what} is outside 0..{self.vocab_size - 1}: fix the "
                    "data, raise vocab_size, or build the model with unk='map'"
                )
            arr = np.where(bad, self.unk_id, arr)
        return arr

    def _documents(self, data) -> list[np.ndarray]:
        if isinstance(data, (list, tuple)) and data and not np.isscalar(data[0]):
            return [np.asarray(d) for d in data]
        return [np.asarray(data)]

    def _padded(self, docs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Concatenate documents (padded if ``pad``) -> symbols, document index, position in document."""
        n = self.order
        parts = []
        for i, d in enumerate(docs):
            s = self._symbols(d, f"document {i}")
            if self.pad:
                s = np.concatenate([np.full(n - 1, self.bos, np.int64), s, [self.eos]])
            parts.append(s)
        lengths = np.array([len(p) for p in parts], dtype=np.int64)
        x = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        doc = np.repeat(np.arange(len(parts)), lengths)
        pos = np.arange(len(x)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return x, doc, pos

    # -------------------------------------------------------------------------------- fit
    def fit(self, data) -> NGramModel:
        """Count all n-grams of orders 1..n in ``data`` (one document or a list of them)."""
        docs = self._documents(data)
        if self.vocab_size is None:
            top = max((int(np.max(d)) for d in docs if np.asarray(d).size), default=-1)
            if top < 0:
                raise ValueError("cannot infer vocab_size from empty data: pass vocab_size")
            self._set_vocab(top + 1)
        x, doc, _ = self._padded(docs)
        if len(x) == 0:
            raise ValueError("no tokens to fit on: give at least one non-empty document")
        S, n = self.n_symbols, self.order
        raw = []  # per order: unique m-grams and their counts
        codes = x.copy()  # codes[s] = code of x[s : s + m]
        for m in range(1, n + 1):
            if m > 1:
                codes = codes[:-1] * S + x[m - 1 :]
            inside = doc[: len(codes)] == doc[m - 1 :]  # the window does not cross documents
            grams = codes[inside]
            grams = grams[grams % S != self.bos]  # BOS is only ever a context, never predicted
            raw.append(np.unique(grams, return_counts=True))
        counts = []
        for m in range(1, n + 1):
            if self.smoothing in ("kn", "mkn") and m < n:
                # continuation count of an m-gram g: the number of distinct (m+1)-grams ending in g
                suffix = raw[m][0] % S**m
                counts.append(np.unique(suffix, return_counts=True))
            else:
                counts.append(raw[m - 1])
        self._set_counts([(k.astype(np.int64), c.astype(np.int64)) for k, c in counts])
        return self

    def _set_counts(self, counts: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Store the per-order (keys, a), their discounts, and the scorer's view of them."""
        self.counts = counts
        self.discounts = [self._discounts_for(a, m) for m, (_, a) in enumerate(counts, start=1)]
        S = self.n_symbols
        if self.fast:
            self.tables = [ngram_fast.build_table(keys, a, d, S) for (keys, a), d in zip(counts, self.discounts)]
        else:
            self.reference = [_by_context(keys, a, m, S) for m, (keys, a) in enumerate(counts, start=1)]

    def _discounts_for(self, a: np.ndarray, m: int) -> tuple[float, float, float]:
        """(D1, D2, D3+) of order m: configured, estimated, or 0 (MLE; add-k does not use them)."""
        if self.smoothing in ("mle", "addk"):
            return (0.0, 0.0, 0.0)
        if self.discount == "estimate":
            return estimate_discounts(a, self.smoothing, m)
        return (self.discount,) * 3 if self.smoothing == "kn" else self.discount

    def _check_fitted(self) -> None:
        if self.counts is None:
            raise ValueError("this n-gram model has not been fitted: call fit(tokens) first")

    # ------------------------------------------------------------------------- scoring
    def _probs(self, ctx: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
        """P(w_i | ctx_i) (N,) for target symbols w (N,), or the distributions (N, len(outcomes))
        when w is None. ctx: (N, order-1) symbols, right-aligned, -1 = absent (a shorter context)."""
        if not self.fast:
            return self._reference_probs(ctx, w)
        args = (self.tables, ctx, w, self.n_symbols, self.outcomes)
        if self.smoothing == "addk":
            return ngram_fast.addk_probs(*args, self.k)
        return ngram_fast.interpolated_probs(*args)

    def _reference_probs(self, ctx: np.ndarray, w: np.ndarray | None) -> np.ndarray:
        """``_probs`` by the plain reference, one context and one outcome at a time."""
        n_out, probs = len(self.outcomes), []
        for i, row in enumerate(ctx.tolist()):
            h = tuple(s for s in row if s >= 0)  # the context present, oldest first
            for x in (self.outcomes.tolist() if w is None else [int(w[i])]):
                if self.smoothing == "addk":
                    probs.append(addk_prob(self.reference, h, x, n_out, self.k))
                else:
                    probs.append(interpolated_prob(self.reference, self.discounts, h, x, n_out))
        p = np.asarray(probs, dtype=np.float64)
        return p if w is not None else p.reshape(len(ctx), n_out)

    def _context_rows(self, contexts) -> np.ndarray:
        """Contexts (sequences of symbols) -> (N, n-1) matrix, right-aligned, -1 = absent."""
        n1 = self.order - 1
        rows = np.full((len(contexts), n1), -1, np.int64)
        for i, c in enumerate(contexts):
            c = self._context_symbols(c)
            if n1 and len(c):
                tail = c[-n1:]
                rows[i, n1 - len(tail) :] = tail
        return rows

    def _context_symbols(self, context) -> np.ndarray:
        """A context as symbols: tokens (unknown-token policy applied) and BOS; never EOS."""
        c = np.asarray(context, dtype=np.int64).reshape(-1)
        if (c == self.eos).any():
            raise ValueError("a context cannot contain EOS: start a new document with BOS symbols instead")
        is_bos = c == self.bos
        if self.unk == "map":
            is_bos |= c == self.unk_id  # already a symbol
        s = c.copy()
        if (~is_bos).any():
            s[~is_bos] = self._symbols(c[~is_bos], "context")
        return s

    def _target_symbol(self, token: int) -> int:
        token = int(token)
        if token in (self.eos, self.unk_id) and token in set(self.outcomes.tolist()):
            return token
        if token == self.bos:
            raise ValueError("BOS is never predicted: ask for a token, or model.eos")
        return int(self._symbols([token], "token")[0])

    def logprob(self, context, token: int) -> float:
        """Natural log of P(token | context); the context's last order-1 symbols are used.

        The context is used as given: a shorter one uses the lower orders. To mean "the start of
        a document" in a padded model, put ``model.bos`` symbols in the context. ``token`` may be
        ``model.eos`` in a padded model.
        """
        self._check_fitted()
        p = self._probs(self._context_rows([context]), np.array([self._target_symbol(token)]))
        with np.errstate(divide="ignore"):
            return float(np.log(p[0]))

    def distribution(self, context) -> np.ndarray:
        """P(. | context) over ``self.outcomes`` (tokens 0..V-1, then EOS / UNK if used)."""
        self._check_fitted()
        return self._probs(self._context_rows([context]))[0]

    def distributions(self, contexts: np.ndarray, block_size: int = 1 << 22) -> np.ndarray:
        """Distributions (N, len(outcomes)) for a context matrix (N, order-1) of symbols, -1 = absent.

        Computed in blocks of rows so that memory stays near ``block_size`` numbers.
        """
        self._check_fitted()
        contexts = np.asarray(contexts, dtype=np.int64).reshape(len(contexts), self.order - 1)
        step = max(1, block_size // self.n_symbols)
        return np.concatenate(
            [self._probs(contexts[i : i + step]) for i in range(0, len(contexts), step)]
        ) if len(contexts) else np.zeros((0, len(self.outcomes)))

    def logprobs(self, data) -> np.ndarray:
        """Log-probability of every predicted symbol of ``data`` (padded: each document's tokens
        and its EOS; unpadded: every token, the first ones from shorter contexts)."""
        self._check_fitted()
        x, _, pos = self._padded(self._documents(data))
        n1 = self.order - 1
        targets = np.flatnonzero(pos >= (n1 if self.pad else 0))  # BOS padding is context only
        ctx = np.full((len(targets), n1), -1, np.int64)
        for j in range(n1):  # column j holds the symbol n1 - j places before the target
            back = n1 - j
            ok = pos[targets] >= back
            ctx[ok, j] = x[targets[ok] - back]
        p = self._probs(ctx, x[targets])
        with np.errstate(divide="ignore"):
            return np.log(p)

    def perplexity(self, data) -> float:
        """exp(mean negative log-likelihood per predicted symbol) of ``data``."""
        lp = self.logprobs(data)
        if len(lp) == 0:
            raise ValueError("perplexity needs at least one token to predict")
        return float(np.exp(-lp.mean()))

    def sample(self, max_tokens: int, context=(), seed: int | None = 0, temperature: float = 1.0) -> np.ndarray:
        """Draw up to ``max_tokens`` symbols after ``context``; a padded model starts from BOS
        (when no context is given) and stops at EOS (not returned)."""
        self._check_fitted()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        rng = np.random.default_rng(seed)
        hist = list(self._context_symbols(context)) if len(context) else []
        if self.pad and not hist:
            hist = [self.bos] * (self.order - 1)
        out = []
        for _ in range(max_tokens):
            p = self.distribution(hist)
            if temperature != 1.0:
                with np.errstate(divide="ignore"):
                    logit = np.log(p) / temperature
                p = np.exp(logit - logit.max())
                p /= p.sum()
            s = int(self.outcomes[rng.choice(len(p), p=p / p.sum())])
            if self.pad and s == self.eos:
                break
            out.append(s)
            hist.append(s)
        return np.asarray(out, dtype=np.int64)

    # ---------------------------------------------------------------------- bookkeeping
    @property
    def num_counts(self) -> int:
        """Number of stored n-gram counts, all orders together (the model's "parameters")."""
        self._check_fitted()
        return int(sum(len(keys) for keys, _ in self.counts))

    def config(self) -> dict:
        d = self.discount
        return {"order": self.order, "vocab_size": self.vocab_size, "smoothing": self.smoothing,
                "discount": list(d) if isinstance(d, tuple) else d, "k": self.k, "pad": self.pad,
                "unk": self.unk}

    def count_arrays(self) -> dict[str, np.ndarray]:
        """The fitted counts as named int64 arrays (everything else is derived from them)."""
        self._check_fitted()
        out = {}
        for m, (keys, a) in enumerate(self.counts, start=1):
            out[f"keys_{m}"], out[f"counts_{m}"] = keys, a
        return out

    def set_count_arrays(self, arrays: dict) -> None:
        """Inverse of ``count_arrays`` (for loading)."""
        try:
            counts = [(np.asarray(arrays[f"keys_{m}"], np.int64), np.asarray(arrays[f"counts_{m}"], np.int64))
                      for m in range(1, self.order + 1)]
        except KeyError as err:
            raise ValueError(f"n-gram counts incomplete: missing {err.args[0]!r}") from None
        self._set_counts(counts)

    def save(self, path: str | os.PathLike) -> None:
        """Write config and counts to a ``.npz`` file (atomically)."""
        with atomic_open(path, "wb") as f:
            np.savez_compressed(f, config=np.array(json.dumps(self.config())), **self.count_arrays())

    @classmethod
    def load(cls, path: str | os.PathLike) -> NGramModel:
        with np.load(os.fspath(path), allow_pickle=False) as f:
            cfg = json.loads(str(f["config"]))
            disc = cfg.pop("discount")
            model = cls(discount=tuple(disc) if isinstance(disc, list) else disc, **cfg)
            model.set_count_arrays(dict(f))
        return model


# ----------------------------------------------------------------- LanguageModel wrapper
@dataclass
class NGramConfig:
    """An n-gram model behind the ``LanguageModel`` interface (token streams: no padding)."""

    vocab_size: int
    order: int = 3
    smoothing: str = "kn"
    discount: float | str | list | None = None  # see NGramModel
    k: float = 1.0
    context_length: int | None = None  # evaluation window hint only; the model reads order-1 tokens

    def __post_init__(self) -> None:
        if not isinstance(self.vocab_size, int) or self.vocab_size < 1:
            raise ValueError(f"NGramConfig.vocab_size must be a positive integer, got {self.vocab_size!r}")
        if not isinstance(self.order, int) or self.order < 1:
            raise ValueError(f"NGramConfig.order must be a positive integer (1 = unigram), got {self.order!r}")
        if isinstance(self.discount, tuple):
            self.discount = list(self.discount)  # JSON-friendly in config_dict()


class NGramLM(LanguageModel):
    """``NGramLM(NGramConfig(vocab_size=65, order=3)).fit(train_tokens)``; then use it like GPT.

    ``forward(idx)`` returns log-probabilities (float32) as logits, so ``loss`` is the exact
    cross-entropy of the n-gram model. Inside a window, position t is predicted from the tokens
    t-n+2..t of that window; the first positions of a window have fewer tokens and use the
    lower orders (the model does not see text before the window).

    It has no trainable parameters: ``fit`` counts. ``num_params()`` reports the number of
    stored n-gram counts (all orders); ``flops_per_token()`` is 0 (no gradient training -- scoring
    is order-many binary searches per token, not multiply-adds).
    """

    model_type = "ngram"

    def __init__(self, config: NGramConfig):
        super().__init__()
        if not isinstance(config, NGramConfig):
            raise ValueError(f"NGramLM needs an NGramConfig, got {type(config).__name__}")
        self.config = config
        self.context_length = None  # any window; only the last order-1 tokens matter
        disc = tuple(config.discount) if isinstance(config.discount, list) else config.discount
        self.ngram = NGramModel(config.order, config.vocab_size, config.smoothing, disc, config.k,
                                pad=False, unk="error")

    def fit(self, tokens) -> NGramLM:
        """Count the n-grams of a token stream (numpy array, tensor or list)."""
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().cpu().numpy()
        self.ngram.fit(np.asarray(tokens).reshape(-1))
        return self

    def _windows(self, idx: torch.Tensor) -> np.ndarray:
        """(B, T) ids -> (B*T, order-1) context rows for every position (-1 = before the window)."""
        B, T = idx.shape
        n1 = self.config.order - 1
        x = idx.detach().cpu().numpy().astype(np.int64)
        padded = np.concatenate([np.full((B, n1), -1, np.int64), x], axis=1)  # (B, n1 + T)
        # the context of position t (predicting token t+1) is x[t-n1+1 .. t]
        if n1 == 0:
            return np.zeros((B * T, 0), np.int64)
        win = np.lib.stride_tricks.sliding_window_view(padded, n1, axis=1)[:, 1:]  # (B, T, n1)
        return win.reshape(B * T, n1)

    def _check(self, idx: torch.Tensor) -> None:
        self.ngram._check_fitted()
        self.check_tokens(idx)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) -> log P(next token | last order-1 tokens), (B, T, V) float32."""
        self._check(idx)
        B, T = idx.shape
        p = self.ngram.distributions(self._windows(idx))  # (B*T, V)
        with np.errstate(divide="ignore"):
            logp = np.log(p).astype(np.float32)
        return torch.from_numpy(logp).view(B, T, -1).to(idx.device)

    def _next_logits(self, idx, state):
        self._check(idx)
        n1 = self.config.order - 1
        ctx = np.full((idx.size(0), n1), -1, np.int64)
        if n1:  # the last order-1 tokens, right-aligned
            tail = idx[:, -n1:].detach().cpu().numpy()
            ctx[:, n1 - tail.shape[1] :] = tail
        with np.errstate(divide="ignore"):
            logp = np.log(self.ngram.distributions(ctx)).astype(np.float32)
        return torch.from_numpy(logp).to(idx.device), state

    def num_params(self, non_embedding: bool = False) -> int:
        """The number of stored n-gram counts, all orders (0 before ``fit``)."""
        return self.ngram.num_counts if self.ngram.counts is not None else 0

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """0: counting is not gradient training (see the class docstring)."""
        return 0.0

    # counts travel in state_dict() / load_state_dict() like weights
    def get_extra_state(self):
        if self.ngram.counts is None:
            return {}
        return {k: torch.from_numpy(v.copy()) for k, v in self.ngram.count_arrays().items()}

    def set_extra_state(self, state) -> None:
        if state:
            self.ngram.set_count_arrays({k: v.cpu().numpy() for k, v in state.items()})
