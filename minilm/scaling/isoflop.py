"""Hoffmann et al.'s Approaches 1 and 2: read the compute-optimal allocation straight off the runs.

Both estimate N_opt(C) and D_opt(C) without assuming the form of L(N, D), then fit power laws
N_opt = k_N C^a and D_opt = k_D C^b (Hoffmann et al., 2022, sec. 3.1-3.2):

Approach 1 (envelope of training curves): for each FLOP count C, the run whose training curve
    is lowest at C gives N_opt(C) = its size and D_opt(C) = C / (6 N).
Approach 2 (IsoFLOP profiles): train several sizes at each fixed budget C, fit a parabola to the
    final loss against log N, and take its vertex as N_opt(C).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .law import FLOPS_PER_PARAM_PER_TOKEN
from .runs import check_points


@dataclass(frozen=True)
class PowerLaw:
    """y = coefficient * C^exponent, fitted by least squares on log y against log C."""

    exponent: float
    coefficient: float

    def __call__(self, C: np.ndarray | float) -> np.ndarray | float:
        return self.coefficient * np.asarray(C, dtype=float) ** self.exponent


def fit_power_law(C: np.ndarray, y: np.ndarray) -> PowerLaw:
    """Least-squares line through (log C, log y): y = k C^e. Needs two distinct C values."""
    C, y = np.asarray(C, dtype=float), np.asarray(y, dtype=float)
    if C.shape != y.shape or C.ndim != 1:
        raise ValueError(f"fit_power_law: C and y must be 1-D of the same length, got {C.shape}, {y.shape}")
    if np.any(~np.isfinite(C)) or np.any(C <= 0) or np.any(~np.isfinite(y)) or np.any(y <= 0):
        raise ValueError("fit_power_law: C and y must be finite and > 0")
    if np.unique(C).size < 2:
        raise ValueError("fit_power_law needs at least two distinct compute budgets")
    slope, intercept = np.polyfit(np.log(C), np.log(y), 1)
    return PowerLaw(exponent=float(slope), coefficient=float(np.exp(intercept)))


@dataclass
class IsoFLOPFit:
    """Approach 2 result: one row per usable IsoFLOP profile, then the power laws across them."""

    budgets: np.ndarray  # (G,) compute C of each profile (geometric mean of its runs)
    N_opt: np.ndarray  # (G,) vertex of each parabola
    D_opt: np.ndarray  # (G,) C / (6 N_opt)
    loss_opt: np.ndarray  # (G,) parabola value at its vertex
    parabolas: np.ndarray  # (G, 3) loss = p0 x^2 + p1 x + p2 with x = log N
    bracketed: np.ndarray  # (G,) bool: the vertex lies inside the profile's range of N
    N_law: PowerLaw  # N_opt = k C^a
    D_law: PowerLaw  # D_opt = k C^b
    skipped: dict[float, str] = field(default_factory=dict)  # budget -> why it was not used

    @property
    def a(self) -> float:
        """Exponent a of N_opt ∝ C^a."""
        return self.N_law.exponent

    @property
    def b(self) -> float:
        """Exponent b of D_opt ∝ C^b."""
        return self.D_law.exponent


def group_budgets(C: np.ndarray, rtol: float = 0.05) -> list[np.ndarray]:
    """Group runs whose compute lies within a factor (1 + rtol) of the smallest run of the group."""
    order = np.argsort(C, kind="stable")
    groups: list[list[int]] = []
    for i in order:
        if groups and C[i] <= C[groups[-1][0]] * (1 + rtol):
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    return [np.array(g) for g in groups]


def fit_isoflop(N, D, loss, C=None, *, rtol: float = 0.05) -> IsoFLOPFit:
    """Approach 2 (Hoffmann et al., 2022, sec. 3.2): a parabola in log N per compute budget.

    Args:
        N, D, loss: size, tokens and final loss of each run.
        C: optional budget label of each run; by default C = 6 N D, and runs whose C agree to
            within ``rtol`` form one IsoFLOP profile.
    Profiles with fewer than 3 distinct sizes, or whose parabola opens downward (no minimum),
    are skipped and listed in ``skipped``; at least two usable profiles are needed.
    """
    N, D, loss = check_points(N, D, loss, min_points=6, what="fit_isoflop")
    C = FLOPS_PER_PARAM_PER_TOKEN * N * D if C is None else np.asarray(C, dtype=float)
    if C.shape != N.shape or np.any(~np.isfinite(C)) or np.any(C <= 0):
        raise ValueError("fit_isoflop: C must hold one finite budget > 0 per run")
    rows, skipped = [], {}
    for idx in group_budgets(C, rtol):
        budget = float(np.exp(np.mean(np.log(C[idx]))))
        x = np.log(N[idx])
        if np.unique(x).size < 3:
            skipped[budget] = f"only {np.unique(x).size} distinct model sizes (a parabola needs 3)"
            continue
        p = np.polyfit(x, loss[idx], 2)
        if p[0] <= 0:
            skipped[budget] = "parabola opens downward: the sizes do not bracket a minimum"
            continue
        x_opt = -p[1] / (2 * p[0])
        n_opt = float(np.exp(x_opt))
        rows.append((budget, n_opt, budget / (FLOPS_PER_PARAM_PER_TOKEN * n_opt), float(np.polyval(p, x_opt)),
                     p, bool(x.min() <= x_opt <= x.max())))
    if len(rows) < 2:
        raise ValueError(
            f"fit_isoflop: {len(rows)} usable IsoFLOP profile(s), need at least 2 budgets with 3+ sizes "
            f"around the optimum each (skipped: {skipped})"
        )
    budgets, N_opt, D_opt, loss_opt, parabolas, bracketed = (np.array(v) for v in zip(*rows))
    return IsoFLOPFit(budgets=budgets, N_opt=N_opt, D_opt=D_opt, loss_opt=loss_opt, parabolas=parabolas,
                      bracketed=bracketed, N_law=fit_power_law(budgets, N_opt),
                      D_law=fit_power_law(budgets, D_opt), skipped=skipped)


@dataclass
class TrainingCurve:
    """Loss of one model (N parameters) as it trains: loss[i] after tokens[i] tokens."""

    N: float
    tokens: np.ndarray
    loss: np.ndarray


@dataclass
class EnvelopeFit:
    """Approach 1 result: the lower envelope of the curves on a grid of FLOP counts."""

    C: np.ndarray  # (G,) FLOP counts
    N_opt: np.ndarray  # (G,) size of the lowest curve at each C
    D_opt: np.ndarray  # (G,) C / (6 N_opt)
    loss: np.ndarray  # (G,) envelope loss
    N_law: PowerLaw
    D_law: PowerLaw

    @property
    def a(self) -> float:
        """Exponent a of N_opt ∝ C^a."""
        return self.N_law.exponent

    @property
    def b(self) -> float:
        """Exponent b of D_opt ∝ C^b."""
        return self.D_law.exponent


def _as_curve(c) -> TrainingCurve:
    curve = c if isinstance(c, TrainingCurve) else TrainingCurve(*c)
    tokens, loss = np.asarray(curve.tokens, dtype=float), np.asarray(curve.loss, dtype=float)
    if tokens.ndim != 1 or tokens.shape != loss.shape or tokens.size < 2:
        raise ValueError("each training curve needs 1-D tokens and loss of the same length (2+ points)")
    if not (np.isfinite(curve.N) and curve.N > 0):
        raise ValueError(f"training curve N must be > 0, got {curve.N}")
    if np.any(~np.isfinite(tokens)) or np.any(tokens <= 0) or np.any(np.diff(tokens) <= 0):
        raise ValueError("training curve tokens must be finite, > 0 and strictly increasing")
    if np.any(~np.isfinite(loss)) or np.any(loss <= 0):
        raise ValueError("training curve losses must be finite and > 0")
    return TrainingCurve(float(curve.N), tokens, loss)


def fit_envelope(curves: Sequence[TrainingCurve | tuple], n_flops: int = 1500, min_cover: int = 2) -> EnvelopeFit:
    """Approach 1 (Hoffmann et al., 2022, sec. 3.1): at each of ``n_flops`` log-spaced FLOP counts,
    the curve with the lowest loss (interpolated in log C) gives N_opt; then power laws in C.

    Only FLOP counts reached by at least ``min_cover`` curves are used (below that there is no
    comparison, just the smallest model). The curves should come from runs whose schedules end at
    each checkpoint, or the envelope favours long runs (Hoffmann et al.'s point about cosine length).
    """
    curves = [_as_curve(c) for c in curves]
    if len({c.N for c in curves}) < 2:
        raise ValueError("fit_envelope needs training curves of at least two model sizes")
    logC = [np.log(FLOPS_PER_PARAM_PER_TOKEN * c.N * c.tokens) for c in curves]
    grid = np.linspace(min(lc[0] for lc in logC), max(lc[-1] for lc in logC), n_flops)
    # (n_curves, n_flops): each curve's loss at each FLOP count, +inf where it has no point.
    L = np.stack([np.where((grid >= lc[0]) & (grid <= lc[-1]), np.interp(grid, lc, c.loss), np.inf)
                  for lc, c in zip(logC, curves)])
    keep = np.isfinite(L).sum(axis=0) >= min_cover
    if keep.sum() < 2:
        raise ValueError(f"fit_envelope: fewer than 2 FLOP counts are covered by {min_cover}+ curves")
    best = np.argmin(L[:, keep], axis=0)
    C = np.exp(grid[keep])
    N_opt = np.array([curves[i].N for i in best])
    D_opt = C / (FLOPS_PER_PARAM_PER_TOKEN * N_opt)
    return EnvelopeFit(C=C, N_opt=N_opt, D_opt=D_opt, loss=L[best, np.flatnonzero(keep)],
                       N_law=fit_power_law(C, N_opt), D_law=fit_power_law(C, D_opt))
