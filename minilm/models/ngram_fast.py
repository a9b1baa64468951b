"""The fast path of ``minilm.models.ngram``: its smoothing recursions for many contexts at once.

``minilm.models.ngram`` states the model plainly: ``interpolated_prob`` is the (modified)
Kneser-Ney recursion over dictionaries, one probability at a time. This module evaluates the
same recursion for N contexts together with numpy, and it is what ``NGramModel`` uses unless
built with ``fast=False``; ``tests/test_ngram.py`` holds the two equal.

Storage: an m-gram of symbols (s_1 .. s_m) is the int64 code s_1 S^(m-1) + ... + s_m (base S =
the number of symbols). Sorted codes are sorted by context first, so the m-grams after one
context h are a contiguous run of the sorted keys, and the context of a code is code // S. A
look-up is a binary search (np.searchsorted); no Python loop runs over tokens or contexts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class OrderTable:
    """The m-grams of one order m with a(h w) > 0, indexed by their context h (first m-1 symbols)."""

    keys: np.ndarray  # (G,) sorted int64 codes of the m-grams
    counts: np.ndarray  # (G,) int64 a(h w): raw counts, or continuation counts (KN lower orders)
    adjusted: np.ndarray  # (G,) a(h w) - D(a(h w)): the discounted counts
    ctx_keys: np.ndarray  # (H,) sorted codes of the contexts h
    ctx_start: np.ndarray  # (H,) where each context's run of m-grams starts in keys
    ctx_stop: np.ndarray  # (H,) ... and where it stops
    ctx_total: np.ndarray  # (H,) a(h .) = sum_w a(h w)
    ctx_gamma: np.ndarray  # (H,) sum_w D(a(h w)): the freed mass, gamma(h) * a(h .)


def build_table(keys: np.ndarray, counts: np.ndarray, discounts: tuple, S: int) -> OrderTable:
    """Index one order's (keys, counts) by context and discount them with (D1, D2, D3+)."""
    if len(keys) == 0:
        empty_i, empty_f = np.zeros(0, np.int64), np.zeros(0)
        return OrderTable(keys, counts, empty_f, empty_i, empty_i, empty_i, empty_f, empty_f)
    d = np.asarray(discounts, dtype=np.float64)[np.minimum(counts, 3) - 1]  # (G,) D(a), a >= 1
    ctx_keys, ctx_start = np.unique(keys // S, return_index=True)
    ctx_stop = np.append(ctx_start[1:], len(keys))
    total = np.add.reduceat(counts, ctx_start).astype(np.float64)
    return OrderTable(keys, counts, counts - d, ctx_keys, ctx_start, ctx_stop, total, np.add.reduceat(d, ctx_start))


def _find_contexts(t: OrderTable, ctx: np.ndarray, m: int, S: int):
    """The rows of ctx (N, n-1) whose last m-1 symbols are present (>= 0) and a context of t.

    Returns (rows (R,), their index in t.ctx_keys (R,), their context codes (R,))."""
    tail = ctx[:, ctx.shape[1] - (m - 1) :]  # (N, m-1)
    h = np.zeros(len(ctx), np.int64)
    for column in tail.T:
        h = h * S + np.maximum(column, 0)
    i = np.minimum(np.searchsorted(t.ctx_keys, h), max(len(t.ctx_keys) - 1, 0))
    found = (tail >= 0).all(axis=1) & (len(t.ctx_keys) > 0)
    if len(t.ctx_keys):
        found &= t.ctx_keys[i] == h
    rows = np.flatnonzero(found)
    return rows, i[rows], h[rows]


def _gather(t: OrderTable, values: np.ndarray, ci: np.ndarray, h: np.ndarray, w: np.ndarray | None, S: int):
    """``values`` of the m-grams (h, w) (0 where unseen): (R, 1) for symbols w (R,), (R, S) for all."""
    if w is not None:  # one symbol per row: binary search of its code
        g = h * S + w
        gi = np.minimum(np.searchsorted(t.keys, g), len(t.keys) - 1)
        return np.where(t.keys[gi] == g, values[gi], 0)[:, None]
    # every symbol: scatter each context's contiguous run of m-grams into a dense row
    dense = np.zeros((len(ci), S))
    lengths = t.ctx_stop[ci] - t.ctx_start[ci]
    row = np.repeat(np.arange(len(ci)), lengths)
    entry = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths - t.ctx_start[ci], lengths)
    dense[row, t.keys[entry] % S] = values[entry]
    return dense


def interpolated_probs(tables: list[OrderTable], ctx: np.ndarray, w: np.ndarray | None, S: int,
                       outcomes: np.ndarray) -> np.ndarray:
    """Interpolated (modified) Kneser-Ney, the recursion of ``ngram.interpolated_prob`` for N rows.

    ctx: (N, n-1) symbols, right-aligned, -1 = absent (a shorter context). w: (N,) target
    symbols, or None for whole distributions. Returns (N,) or (N, len(outcomes)).

    The recursion runs bottom-up: P_0 is uniform; at order m, every row whose context h was
    seen becomes (a(h w) - D(a(h w)) + gamma(h) a(h .) P_{m-1}) / a(h .) (CG98 eq. 19 with
    D(a) of their §3); a row whose context was not seen keeps P_{m-1}. Discounts of 0 give
    the "longest seen suffix" maximum likelihood of smoothing="mle".
    """
    p = np.full((len(ctx), S if w is None else 1), 1.0 / len(outcomes))  # (N, K) P_0: uniform
    for m, t in enumerate(tables, start=1):
        rows, ci, h = _find_contexts(t, ctx, m, S)
        if len(rows):
            adjusted = _gather(t, t.adjusted, ci, h, None if w is None else w[rows], S)  # (R, K)
            p[rows] = (adjusted + t.ctx_gamma[ci, None] * p[rows]) / t.ctx_total[ci, None]
    return p[:, 0] if w is not None else p[:, outcomes]


def addk_probs(tables: list[OrderTable], ctx: np.ndarray, w: np.ndarray | None, S: int,
               outcomes: np.ndarray, k: float) -> np.ndarray:
    """Add-k at the highest order each row's context allows: (c(h w) + k) / (c(h .) + k |outcomes|)
    (CG98 §2.1); same arguments and result as ``interpolated_probs``."""
    counts = np.zeros((len(ctx), S if w is None else 1))  # (N, K) c(h w), 0 if h was never seen
    total = np.zeros(len(ctx))  # (N,) c(h .)
    order = (ctx >= 0).sum(axis=1) + 1  # (N,) the order each row uses
    for m, t in enumerate(tables, start=1):
        sel = np.flatnonzero(order == m)
        rows, ci, h = _find_contexts(t, ctx[sel], m, S)
        if len(rows):
            rows = sel[rows]
            counts[rows] = _gather(t, t.counts, ci, h, None if w is None else w[rows], S)
            total[rows] = t.ctx_total[ci]
    p = (counts + k) / (total[:, None] + k * len(outcomes))
    return p[:, 0] if w is not None else p[:, outcomes]
