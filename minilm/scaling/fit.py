"""Fitting L(N, D) to runs: Hoffmann et al.'s Approach 3, a Kaplan-form fit, and the bootstrap.

Approach 3 (Hoffmann et al., 2022, sec. 3.3 and App. D.2) fits, in log space,

    min over (e, a, b, alpha, beta) of  sum_i Huber_delta( LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i )

with E = exp(e), A = exp(a), B = exp(b) (so exp(LSE(...)) = E + A/N^alpha + B/D^beta), Huber
delta = 1e-3, and L-BFGS started from every point of the grid alpha, beta in {0, 0.5, ..., 2},
e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}, keeping the best. Besiroglu et al. (2024)
showed the reported numbers are hard to reproduce; one suspect is an *averaged* objective with
the optimizer's default tolerances, which stops early. Both choices are options here so the
effect can be seen: ``reduce="mean"`` with ``tolerance="scipy"``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .law import ChinchillaParams, KaplanParams, chinchilla_loss, kaplan_loss
from .lbfgs import STATUS_MESSAGES, minimize_lbfgs_batched
from .runs import check_points

# Stopping rules. "scipy" = scipy.optimize.minimize(method="L-BFGS-B") defaults; "tight" runs
# each start until f stops changing at the level of rounding error.
TOLERANCES: dict[str, dict[str, float]] = {
    "tight": {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 15000},
    "scipy": {"ftol": 2.220446049250313e-09, "gtol": 1e-5, "maxiter": 15000},
}

CHINCHILLA_NAMES = ("e", "a", "b", "alpha", "beta")  # order of the parameter vector x


def hoffmann_grid() -> dict[str, np.ndarray]:
    """The published grid of starting points (Hoffmann et al., 2022, App. D.2): 4500 starts."""
    return {
        "e": np.arange(-1.0, 1.0 + 1e-9, 0.5),
        "a": np.arange(0.0, 25.0 + 1e-9, 5.0),
        "b": np.arange(0.0, 25.0 + 1e-9, 5.0),
        "alpha": np.arange(0.0, 2.0 + 1e-9, 0.5),
        "beta": np.arange(0.0, 2.0 + 1e-9, 0.5),
    }


def kaplan_grid() -> dict[str, np.ndarray]:
    """Our grid for the Kaplan-form fit (Kaplan et al. give none): log N_c, log D_c, the ratio
    alpha_N / alpha_D and alpha_D; 300 starts spanning N_c, D_c from 1 to e^40 ~ 2e17."""
    return {
        "log_Nc": np.array([0.0, 10.0, 20.0, 30.0, 40.0]),
        "log_Dc": np.array([0.0, 10.0, 20.0, 30.0, 40.0]),
        "ratio": np.array([0.5, 1.0, 2.0]),
        "alpha_D": np.array([0.05, 0.1, 0.2, 0.5]),
    }


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Huber loss: r^2/2 for |r| <= delta, delta (|r| - delta/2) beyond (Huber, 1964)."""
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


def chinchilla_objective(X: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray,
                         delta: float = 1e-3, reduce: str = "sum") -> tuple[np.ndarray, np.ndarray]:
    """Approach 3 objective and its gradient for K parameter vectors at once.

    Args:
        X: (K, 5) rows (e, a, b, alpha, beta).
        logN, logD, logL: (n,) logs of the data points.
    Returns:
        f: (K,) objective; grad: (K, 5) its gradient with respect to each row of X.
    """
    e, a, b, alpha, beta = (X[:, j, None] for j in range(5))  # each (K, 1)
    t1 = a - alpha * logN  # (K, n) log of A / N^alpha
    t2 = b - beta * logD  # (K, n) log of B / D^beta
    t3 = np.broadcast_to(e, t1.shape)  # (K, n) log E
    m = np.maximum(np.maximum(t1, t2), t3)  # subtract the max: a stable log-sum-exp
    w1, w2, w3 = np.exp(t1 - m), np.exp(t2 - m), np.exp(t3 - m)
    s = w1 + w2 + w3
    r = m + np.log(s) - logL  # (K, n) residual log L_pred - log L
    f = huber(r, delta).sum(axis=1)
    dr = np.clip(r, -delta, delta) / s  # Huber'(r), divided by s for the softmax weights below
    g1, g2, g3 = dr * w1, dr * w2, dr * w3  # d f_i / d t_j = Huber'(r_i) softmax_j
    grad = np.stack([g3.sum(1), g1.sum(1), g2.sum(1), -(g1 * logN).sum(1), -(g2 * logD).sum(1)], axis=1)
    if reduce == "mean":
        f, grad = f / logN.size, grad / logN.size
    return f, grad


def kaplan_objective(X: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray,
                     delta: float = 1e-3, reduce: str = "sum") -> tuple[np.ndarray, np.ndarray]:
    """Huber objective of the Kaplan form in log space, for K rows (log N_c, log D_c, ratio, alpha_D):

        log L_pred = alpha_D * LSE(ratio (log N_c - log N), log D_c - log D),  ratio = alpha_N / alpha_D.
    """
    nc, dc, ratio, alpha_D = (X[:, j, None] for j in range(4))  # each (K, 1)
    z1 = ratio * (nc - logN)  # (K, n)
    z2 = dc - logD  # (K, n)
    m = np.maximum(z1, z2)
    w1, w2 = np.exp(z1 - m), np.exp(z2 - m)
    s = w1 + w2
    lse = m + np.log(s)
    r = alpha_D * lse - logL
    f = huber(r, delta).sum(axis=1)
    dr = np.clip(r, -delta, delta)
    p1, p2 = w1 / s, w2 / s
    grad = np.stack([
        (dr * alpha_D * p1 * ratio).sum(1),
        (dr * alpha_D * p2).sum(1),
        (dr * alpha_D * p1 * (nc - logN)).sum(1),
        (dr * lse).sum(1),
    ], axis=1)
    if reduce == "mean":
        f, grad = f / logN.size, grad / logN.size
    return f, grad


def _grid_starts(grid, names: Sequence[str], default: dict[str, np.ndarray]) -> np.ndarray:
    """Turn a grid (None, a mapping name -> values, or an explicit (K, P) array) into (K, P) starts."""
    if grid is None:
        grid = default
    if isinstance(grid, Mapping):
        unknown = set(grid) - set(names)
        if unknown:
            raise ValueError(f"grid has unknown keys {sorted(unknown)}; use {list(names)}")
        axes = [np.atleast_1d(np.asarray(grid.get(k, default[k]), dtype=float)) for k in names]
        starts = np.array(list(itertools.product(*axes)), dtype=float)
    else:
        starts = np.asarray(grid, dtype=float)
        if starts.ndim != 2 or starts.shape[1] != len(names):
            raise ValueError(f"grid as an array must have shape (n_starts, {len(names)}) in order {names}")
    if starts.size == 0 or not np.all(np.isfinite(starts)):
        raise ValueError("grid must hold at least one start and only finite values")
    return starts


def _tolerance(tolerance: str | Mapping[str, float]) -> dict[str, float]:
    if isinstance(tolerance, str):
        if tolerance not in TOLERANCES:
            raise ValueError(f"tolerance must be one of {list(TOLERANCES)} or a dict of ftol/gtol/maxiter")
        return dict(TOLERANCES[tolerance])
    out = dict(TOLERANCES["tight"])
    out.update(tolerance)
    return out


@dataclass
class _GridResult:
    x: np.ndarray  # (P,) best parameters
    objective: float
    status: int
    message: str
    start: np.ndarray  # (P,) the start that led to x
    n_starts: int
    n_converged: int
    grid_best_objective: float  # min objective over the starting points themselves


def _minimise_from_grid(fun_grad: Callable, starts: np.ndarray, tol: dict[str, float], top_k: int | None,
                        optimizer: str, progress: bool) -> _GridResult:
    """Run L-BFGS from each start (or the top_k best starts) and keep the lowest objective."""
    f0, _ = fun_grad(starts)
    grid_best = float(np.nanmin(f0))
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None (all starts), got {top_k}")
        order = np.argsort(np.where(np.isfinite(f0), f0, np.inf), kind="stable")
        starts = starts[order[:top_k]]
    if optimizer == "batched":
        res = minimize_lbfgs_batched(fun_grad, starts, **tol, progress=progress)
        fun, xs, status = res.fun, res.x, res.status
        messages = [STATUS_MESSAGES[s] for s in status]
    elif optimizer == "scipy":
        # The reference: SciPy's L-BFGS-B once per start (slow: Python overhead per call).
        from scipy.optimize import minimize  # imported here: scipy.optimize alone takes ~0.5 s to import

        fun, xs, status, messages = np.empty(len(starts)), np.empty_like(starts), np.empty(len(starts), int), []
        opts = {"ftol": tol["ftol"], "gtol": tol["gtol"], "maxiter": int(tol["maxiter"]), "maxfun": 10**6}
        for k in tqdm(range(len(starts)), desc="L-BFGS-B starts", disable=not progress):

            def single(x):
                f, g = fun_grad(x[None, :])
                return float(f[0]), g[0]

            r = minimize(single, starts[k], jac=True, method="L-BFGS-B", options=opts)
            fun[k], xs[k] = r.fun, r.x
            status[k] = 0 if r.success else (2 if r.status == 1 else 3)
            messages.append(str(r.message))
    else:
        raise ValueError(f"optimizer must be 'batched' or 'scipy', got {optimizer!r}")
    best = int(np.nanargmin(np.where(np.isfinite(fun), fun, np.inf)))
    return _GridResult(x=xs[best], objective=float(fun[best]), status=int(status[best]), message=messages[best],
                       start=starts[best], n_starts=len(starts), n_converged=int(np.sum(status <= 1)),
                       grid_best_objective=grid_best)


def _chunked(fn: Callable, n_points: int, max_elements: int = 1 << 18) -> Callable:
    """Evaluate fn on blocks of rows so the (K, n_points) temporaries stay a few MB for big grids."""
    rows = max(1, max_elements // max(n_points, 1))

    def wrapped(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(X) <= rows:
            return fn(X)
        parts = [fn(X[i:i + rows]) for i in range(0, len(X), rows)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    return wrapped


@dataclass
class ChinchillaFit:
    """Result of fit_chinchilla. ``x`` is (e, a, b, alpha, beta), with E, A, B = exp(e, a, b)."""

    params: ChinchillaParams
    objective: float  # the objective at the best fit (sum or mean of Huber losses)
    converged: bool  # the best start stopped by a tolerance test, not a limit or failure
    message: str  # the optimizer's stopping message for the best start
    n_starts: int  # L-BFGS runs made
    n_converged: int  # of those, how many stopped by a tolerance test
    x: np.ndarray
    start: np.ndarray  # the grid point the best run started from
    grid_best_objective: float  # lowest objective among the grid points themselves
    n_points: int
    settings: dict = field(default_factory=dict)  # delta, reduce, tolerance, optimizer, top_k

    def predict(self, N, D) -> np.ndarray | float:
        """Fitted loss L(N, D)."""
        return chinchilla_loss(N, D, self.params)


def fit_chinchilla(
    N, D, loss, *, delta: float = 1e-3, grid: Mapping[str, Sequence[float]] | np.ndarray | None = None,
    reduce: str = "sum", tolerance: str | Mapping[str, float] = "tight", top_k: int | None = None,
    optimizer: str = "batched", progress: bool = False,
) -> ChinchillaFit:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta by Hoffmann et al.'s Approach 3.

    Args:
        N, D, loss: parameters, tokens and final loss (nats/token) of each run; at least 5 runs.
        delta: Huber threshold on log-loss residuals (published: 1e-3).
        grid: starting points; None = the published 4500-point grid (``hoffmann_grid()``), a
            mapping overriding some axes (keys e, a, b, alpha, beta), or a (K, 5) array of starts.
        reduce: "sum" (as published, and as Besiroglu et al. recommend) or "mean" of the Huber losses.
        tolerance: "tight" (run to convergence), "scipy" (SciPy's L-BFGS-B defaults), or a dict
            with ftol, gtol, maxiter.
        top_k: None (default, the published procedure: L-BFGS from every start) or k to run
            L-BFGS only from the k starts with the lowest objective (a shortcut, not Hoffmann's).
        optimizer: "batched" (all starts together, fast) or "scipy" (scipy.optimize.minimize
            L-BFGS-B once per start: the reference implementation, ~10x slower).
        progress: a progress bar over the starts.
    """
    N, D, loss = check_points(N, D, loss, min_points=5, what="fit_chinchilla")
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    if not (np.isfinite(delta) and delta > 0):
        raise ValueError(f"delta (Huber threshold) must be > 0, got {delta}")
    logN, logD, logL = np.log(N), np.log(D), np.log(loss)
    starts = _grid_starts(grid, CHINCHILLA_NAMES, hoffmann_grid())
    tol = _tolerance(tolerance)
    fg = _chunked(lambda X: chinchilla_objective(X, logN, logD, logL, delta, reduce), len(N))
    res = _minimise_from_grid(fg, starts, tol, top_k, optimizer, progress)
    e, a, b, alpha, beta = res.x
    params = ChinchillaParams(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)),
                              alpha=float(alpha), beta=float(beta))
    return ChinchillaFit(
        params=params, objective=res.objective, converged=res.status <= 1, message=res.message,
        n_starts=res.n_starts, n_converged=res.n_converged, x=res.x, start=res.start,
        grid_best_objective=res.grid_best_objective, n_points=len(N),
        settings={"delta": delta, "reduce": reduce, "tolerance": tolerance, "optimizer": optimizer, "top_k": top_k},
    )


@dataclass
class KaplanFit:
    """Result of fit_kaplan. ``x`` is (log N_c, log D_c, alpha_N / alpha_D, alpha_D)."""

    params: KaplanParams
    objective: float
    converged: bool
    message: str
    n_starts: int
    x: np.ndarray
    n_points: int

    def predict(self, N, D) -> np.ndarray | float:
        """Fitted loss L(N, D)."""
        return kaplan_loss(N, D, self.params)


def fit_kaplan(
    N, D, loss, *, delta: float = 1e-3, grid: Mapping[str, Sequence[float]] | np.ndarray | None = None,
    reduce: str = "sum", tolerance: str | Mapping[str, float] = "tight",
) -> KaplanFit:
    """Fit Kaplan et al.'s L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D with the same
    machinery as Approach 3 (Huber on log residuals, L-BFGS from a grid, keep the best), so a
    comparison isolates the functional form. Kaplan's form has no irreducible loss E.

    ``grid`` keys: log_Nc, log_Dc, ratio (alpha_N/alpha_D), alpha_D; default ``kaplan_grid()``.
    """
    N, D, loss = check_points(N, D, loss, min_points=4, what="fit_kaplan")
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    logN, logD, logL = np.log(N), np.log(D), np.log(loss)
    starts = _grid_starts(grid, ("log_Nc", "log_Dc", "ratio", "alpha_D"), kaplan_grid())
    fg = _chunked(lambda X: kaplan_objective(X, logN, logD, logL, delta, reduce), len(N))
    # Many starts slide down flat valleys (alpha_D -> 0 with N_c -> 0) where tight tolerances
    # make them crawl for thousands of steps; so the grid runs with SciPy's tolerances and only
    # the best run is then continued to the requested tolerance.
    res = _minimise_from_grid(fg, starts, TOLERANCES["scipy"], None, "batched", False)
    polished = minimize_lbfgs_batched(fg, res.x[None, :], **_tolerance(tolerance))
    if polished.fun[0] <= res.objective:
        res.x, res.objective = polished.x[0], float(polished.fun[0])
        res.status, res.message = int(polished.status[0]), STATUS_MESSAGES[int(polished.status[0])]
    nc, dc, ratio, alpha_D = res.x
    params = KaplanParams(N_c=float(np.exp(nc)), D_c=float(np.exp(dc)), alpha_N=float(ratio * alpha_D),
                          alpha_D=float(alpha_D))
    return KaplanFit(params=params, objective=res.objective, converged=res.status <= 1, message=res.message,
                     n_starts=res.n_starts, x=res.x, n_points=len(N))


@dataclass
class ChinchillaBootstrap:
    """Bootstrap distribution of the Approach 3 fit (resampling runs with replacement)."""

    fit: ChinchillaFit  # the fit on all points
    samples: dict[str, np.ndarray]  # name -> (n_boot,) values of E, A, B, alpha, beta, a
    n_unconverged: int  # bootstrap fits whose best start hit a limit (kept, but worth knowing)

    def interval(self, name: str, level: float = 0.8) -> tuple[float, float]:
        """Percentile interval; level 0.8 gives the 10th-90th percentiles Hoffmann et al. report."""
        if name not in self.samples:
            raise ValueError(f"unknown parameter {name!r}; choose from {list(self.samples)}")
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        lo, hi = np.quantile(self.samples[name], [(1 - level) / 2, (1 + level) / 2])
        return float(lo), float(hi)

    def intervals(self, level: float = 0.8) -> dict[str, tuple[float, float]]:
        """Percentile intervals for every parameter and for a = beta / (alpha + beta)."""
        return {name: self.interval(name, level) for name in self.samples}

    def std(self) -> dict[str, float]:
        """Bootstrap standard errors (what Besiroglu et al. report)."""
        return {name: float(np.std(v, ddof=1)) for name, v in self.samples.items()}


def bootstrap_chinchilla(N, D, loss, *, n_boot: int = 100, seed: int = 0, progress: bool = True,
                         **fit_kwargs) -> ChinchillaBootstrap:
    """Refit on ``n_boot`` resamples of the runs (drawn with replacement) to see how much the
    parameters move. ``fit_kwargs`` go to fit_chinchilla (e.g. ``top_k=50`` or a coarser ``grid``
    to trade the published procedure for speed). Same seed, same resamples.
    """
    N, D, loss = check_points(N, D, loss, min_points=5, what="bootstrap_chinchilla")
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2 to estimate a spread, got {n_boot}")
    full = fit_chinchilla(N, D, loss, **fit_kwargs)
    rng = np.random.default_rng(seed)
    names = ("E", "A", "B", "alpha", "beta", "a")
    samples = {k: np.empty(n_boot) for k in names}
    n_unconverged = 0
    for i in tqdm(range(n_boot), desc="bootstrap fits", disable=not progress):
        idx = rng.integers(0, len(N), size=len(N))
        f = fit_chinchilla(N[idx], D[idx], loss[idx], **fit_kwargs)
        n_unconverged += not f.converged
        for k, v in f.params.as_dict().items():
            samples[k][i] = v
    return ChinchillaBootstrap(fit=full, samples=samples, n_unconverged=n_unconverged)
