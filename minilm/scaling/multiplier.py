"""Compute multipliers (talk sections 1 and 9, lab 08): how much compute a trick is worth, and whether
that worth grows, holds or shrinks as compute grows.

Every efficiency trick moves the scaling law (talk claim C7). On one compute axis C (training
FLOPs), fit each recipe's held-out loss with the reducible-loss power law

    L(C) = E + A * C^(-alpha)                      (Kaplan et al. 2020 eq. 1.3, with the floor E)

where E is the entropy of the data (known exactly for minilm's synthetic languages, so only A and
alpha are fitted: a straight line through (log C, log(L - E))). The compute a recipe needs to reach
a loss level L is the inverse, C(L) = (A / (L - E))^(1 / alpha). A trick's *compute multiplier*
at level L is how many times more compute the baseline needs to get there:

    k(L) = C_base(L) / C_trick(L)                  (> 1: the trick is "worth k x compute")

Read at the loss the baseline reaches with compute C, ln k is a straight line in ln C with slope

    s = d ln k / d ln C_base = 1 - alpha_base / alpha_trick

(substitute L - E = A_base C^(-alpha_base) into ln C_trick(L)). s > 0: the trick's worth grows
with compute (it changed the exponent for the better); s < 0: it shrinks, and if the trend held
the trick would stop paying at C_base = C0 * k0^(-1/s) (Sutton's bitter lesson, claim C30); s = 0:
a constant multiplier (it only moved A). Seeds give the uncertainty: each seed's runs are fitted
alone and the spread of ln k and s across seeds is reported as a standard error; a trend or a
multiplier counts as real when its 95% Student-t interval over the seeds excludes 0 (or 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .isoflop import fit_power_law


@dataclass(frozen=True)
class ComputeLaw:
    """L(C) = E + A * C^(-alpha): a recipe's held-out loss against training compute C (FLOPs)."""

    E: float      # the loss no model beats (nats/token)
    A: float      # the reducible loss at C = 1 FLOP
    alpha: float  # how fast the reducible loss falls with compute

    def loss(self, C: np.ndarray | float) -> np.ndarray | float:
        """The fitted loss at compute ``C``."""
        return self.E + self.A * np.asarray(C, dtype=float) ** (-self.alpha)

    def compute_for(self, level: float) -> float:
        """The compute at which the fitted curve reaches loss ``level`` (must lie above E)."""
        if not level > self.E:
            raise ValueError(f"loss level {level} is at or below the floor E = {self.E}: no compute reaches it")
        return float((self.A / (level - self.E)) ** (1.0 / self.alpha))


def fit_compute_law(C: Sequence[float], loss: Sequence[float], E: float) -> ComputeLaw:
    """Least-squares line through (ln C, ln(L - E)): L = E + A C^-alpha, with the floor E known.

    Needs two or more distinct budgets and every loss above E (a loss at or below the entropy of
    the data means E is wrong, or the loss was measured on too few tokens).
    """
    C, loss = np.asarray(C, dtype=float), np.asarray(loss, dtype=float)
    if C.shape != loss.shape or C.ndim != 1:
        raise ValueError(f"fit_compute_law: C and loss must be 1-D of the same length, got {C.shape}, {loss.shape}")
    if not np.all(np.isfinite(loss)):
        raise ValueError("fit_compute_law: a loss is NaN or infinite (a diverged run?): drop it or rerun it")
    if np.any(loss <= E):
        raise ValueError(f"fit_compute_law: every loss must lie above the floor E = {E:.4f}, got min {loss.min():.4f}")
    law = fit_power_law(C, loss - E)  # reducible loss = A C^exponent, exponent = -alpha
    return ComputeLaw(E=float(E), A=law.coefficient, alpha=-law.exponent)


def compute_multiplier(base: ComputeLaw, trick: ComputeLaw, level: float) -> float:
    """k = C_base(level) / C_trick(level): how many times the baseline's compute the trick saves at ``level``."""
    return base.compute_for(level) / trick.compute_for(level)


def multiplier_at(base: ComputeLaw, trick: ComputeLaw, C: float) -> float:
    """The multiplier at the loss the baseline reaches with compute ``C``: "worth k x compute at C"."""
    return compute_multiplier(base, trick, float(base.loss(C)))


def multiplier_slope(base: ComputeLaw, trick: ComputeLaw) -> float:
    """s = d ln k / d ln C_base = 1 - alpha_base / alpha_trick (> 0 grows, < 0 shrinks with compute)."""
    return 1.0 - base.alpha / trick.alpha


def break_even_compute(k0: float, slope: float, C0: float) -> float:
    """Where ln k = ln k0 + slope * ln(C / C0) crosses 0 (k = 1): C0 * k0^(-1 / slope).

    inf when the multiplier never reaches 1 on that line (slope = 0 with k0 != 1, or the line moves away
    from 1); C0 itself when k0 = 1.
    """
    if k0 <= 0 or C0 <= 0:
        raise ValueError(f"k0 and C0 must be > 0, got k0={k0}, C0={C0}")
    if k0 == 1.0:
        return float(C0)
    if slope == 0 or (math.log(k0) > 0) == (slope > 0):
        return math.inf
    return float(C0 * k0 ** (-1.0 / slope))


@dataclass(frozen=True)
class MultiplierEstimate:
    """One trick's multiplier and its trend across seeds (each seed's runs fitted on their own).

    ``multiplier`` is the geometric mean over seeds (multipliers are ratios) and
    ``multiplier_se`` its standard error by the delta method, multiplier * se(ln k);
    ``slope``/``slope_se`` the mean and standard error of s. With one seed the errors are nan.
    """

    name: str
    per_seed_multiplier: tuple[float, ...]
    per_seed_slope: tuple[float, ...]
    at_compute: float

    @property
    def multiplier(self) -> float:
        return float(np.exp(np.mean(np.log(self.per_seed_multiplier))))

    @property
    def multiplier_se(self) -> float:
        return self.multiplier * _se(np.log(self.per_seed_multiplier))

    @property
    def slope(self) -> float:
        return float(np.mean(self.per_seed_slope))

    @property
    def slope_se(self) -> float:
        return _se(self.per_seed_slope)

    def verdict(self, level: float = 0.95) -> str:
        """"grows" / "shrinks" when the slope's ``level`` confidence interval (Student's t over the seeds)
        excludes 0, else "holds (within noise)"."""
        half = _t_quantile(level, len(self.per_seed_slope)) * self.slope_se
        if not math.isfinite(half) or abs(self.slope) <= half:
            return "holds (within noise)"
        return "grows" if self.slope > 0 else "shrinks"

    def within_noise_of_one(self, level: float = 0.95) -> bool:
        """Whether the ``level`` confidence interval of ln k (Student's t over the seeds) contains 0 (k = 1)."""
        se_log = _se(np.log(self.per_seed_multiplier))
        half = _t_quantile(level, len(self.per_seed_multiplier)) * se_log
        return not math.isfinite(half) or abs(math.log(self.multiplier)) <= half


def _t_quantile(level: float, n: int) -> float:
    """Student's t quantile for a two-sided ``level`` interval of a mean of ``n`` values (nan if n < 2).

    With a handful of seeds it is far wider than the normal's 1.96: 12.7 for 2 seeds, 4.30 for 3, 2.78 for 5.
    """
    if n < 2:
        return math.nan
    from scipy import stats  # lazy: scipy is heavy to import

    return float(stats.t.ppf(0.5 + level / 2, n - 1))


def _se(values: Sequence[float]) -> float:
    values = np.asarray(values, dtype=float)
    return float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else math.nan


def estimate_multiplier(name: str, C_base: Sequence[float], loss_base: np.ndarray, C_trick: Sequence[float],  # noqa: N803
                        loss_trick: np.ndarray, E: float, at_compute: float) -> MultiplierEstimate:
    """The multiplier of a trick over the baseline at the baseline's compute ``at_compute``, seed by seed.

    loss_base: (seeds, budgets) held-out losses of the baseline at the budgets C_base; loss_trick
    likewise at C_trick (a trick may spend different FLOPs per step, so its budgets differ). Seed i
    of the trick is compared with seed i of the baseline.
    """
    loss_base, loss_trick = np.atleast_2d(np.asarray(loss_base, float)), np.atleast_2d(np.asarray(loss_trick, float))
    if loss_base.shape[0] != loss_trick.shape[0]:
        raise ValueError(f"{name}: {loss_base.shape[0]} baseline seeds but {loss_trick.shape[0]} seeds of the trick")
    ks, ss = [], []
    for lb, lt in zip(loss_base, loss_trick):
        base, trick = fit_compute_law(C_base, lb, E), fit_compute_law(C_trick, lt, E)
        ks.append(multiplier_at(base, trick, at_compute))
        ss.append(multiplier_slope(base, trick))
    return MultiplierEstimate(name, tuple(ks), tuple(ss), float(at_compute))
