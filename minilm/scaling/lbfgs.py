"""L-BFGS run from many starting points at once (one numpy array op per step for all of them).

Hoffmann et al. (2022, App. D.2) fit their law by running L-BFGS from every point of a
4500-point grid and keeping the best result. Calling ``scipy.optimize.minimize`` 4500 times
spends most of its time in Python overhead, so this module runs the *same algorithm* for all
starts together: each start keeps its own history, its own line search and its own stopping
test, but every objective evaluation is one vectorised call over the starts still running.

The algorithm is textbook L-BFGS (Nocedal & Wright, 2006, Alg. 7.4 two-loop recursion and
Alg. 7.5) with a backtracking Armijo line search, and SciPy's stopping rules (``ftol`` on the
relative reduction of f, ``gtol`` on the largest gradient component), so the same tolerance
values mean the same thing as in ``scipy.optimize.minimize(method="L-BFGS-B")``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

# Why each start stopped (SciPy's wording, so messages can be compared).
STATUS_MESSAGES = {
    0: "CONVERGENCE: NORM OF PROJECTED GRADIENT <= PGTOL",
    1: "CONVERGENCE: RELATIVE REDUCTION OF F <= FACTR*EPSMCH",
    2: "STOP: TOTAL NO. OF ITERATIONS REACHED LIMIT",
    3: "ABNORMAL: LINE SEARCH COULD NOT DECREASE F",
}

FunGrad = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class BatchedLBFGSResult:
    """Final state of every start. Arrays have one row per start (K starts, P parameters)."""

    x: np.ndarray  # (K, P) final parameters
    fun: np.ndarray  # (K,) final objective
    grad: np.ndarray  # (K, P) final gradient
    status: np.ndarray  # (K,) int, key of STATUS_MESSAGES
    nit: np.ndarray  # (K,) iterations taken
    nfev: int  # batched objective calls (each evaluates a subset of starts)

    @property
    def converged(self) -> np.ndarray:
        """(K,) bool: stopped by a tolerance test (status 0 or 1), not by a limit or a failure."""
        return self.status <= 1


def minimize_lbfgs_batched(
    fun_grad: FunGrad,
    x0: np.ndarray,
    *,
    ftol: float = 2.220446049250313e-09,
    gtol: float = 1e-5,
    maxiter: int = 15000,
    memory: int = 10,
    max_linesearch: int = 60,
    c1: float = 1e-4,
    c2: float = 0.9,
    progress: bool = False,
) -> BatchedLBFGSResult:
    """Minimise ``f`` from each row of ``x0`` with independent L-BFGS runs, evaluated together.

    Args:
        fun_grad: maps X of shape (k, P) to (f of shape (k,), gradient of shape (k, P)); it must
            treat rows independently (row i of the output depends on row i of X only).
        x0: (K, P) starting points.
        ftol: stop a start when (f_old - f_new) <= ftol * max(|f_old|, |f_new|, 1)
            (SciPy's default is 2.2e-9).
        gtol: stop a start when max_i |g_i| <= gtol (SciPy's default is 1e-5).
        maxiter: iteration limit per start.
        memory: number of (s, y) pairs kept (SciPy's ``maxcor`` default is 10).
        max_linesearch: trial steps before the line search gives up on a start.
        c1, c2: Wolfe constants (sufficient decrease, curvature); N&W's usual 1e-4 and 0.9.
        progress: show a bar of finished starts.
    """
    x = np.array(x0, dtype=np.float64, copy=True)
    if x.ndim != 2:
        raise ValueError(f"x0 must have shape (n_starts, n_params), got {x.shape}")
    K, P = x.shape
    f, g = fun_grad(x)
    nfev = 1
    status = np.full(K, -1)  # -1: still running
    nit = np.zeros(K, dtype=int)
    status[np.max(np.abs(g), axis=1) <= gtol] = 0

    # History of the last `memory` steps, per start. A pair with rho = 0 is a no-op in the
    # two-loop recursion, which is how a start skips an update that fails the curvature test.
    S = np.zeros((memory, K, P))
    Y = np.zeros((memory, K, P))
    rho = np.zeros((memory, K))
    gamma = np.ones(K)  # initial inverse-Hessian scale s.y / y.y (N&W eq. 7.20)
    has_pair = np.zeros(K, dtype=bool)

    bar = tqdm(total=K, desc="L-BFGS starts finished", disable=not progress)
    for it in range(maxiter):
        act = np.flatnonzero(status < 0)
        bar.update(K - act.size - bar.n)
        if act.size == 0:
            break
        ga = g[act]
        # Two-loop recursion (N&W Alg. 7.4): d = -H g, newest pair first.
        q = ga.copy()
        order = [(it - 1 - j) % memory for j in range(min(it, memory))]
        alphas = []
        for j in order:
            a_j = rho[j, act] * np.einsum("kp,kp->k", S[j, act], q)
            q -= a_j[:, None] * Y[j, act]
            alphas.append(a_j)
        r = gamma[act, None] * q
        for j, a_j in zip(reversed(order), reversed(alphas)):
            b_j = rho[j, act] * np.einsum("kp,kp->k", Y[j, act], r)
            r += (a_j - b_j)[:, None] * S[j, act]
        d = -r
        slope = np.einsum("kp,kp->k", ga, d)
        # A start with no curvature pair yet (or a non-descent direction) takes a steepest
        # descent step of unit length, as SciPy's first iteration does.
        fresh = ~has_pair[act] | (slope >= 0)
        if fresh.any():
            gn = np.linalg.norm(ga[fresh], axis=1)
            d[fresh] = -ga[fresh] / gn[:, None]
            slope[fresh] = -gn

        # Weak Wolfe line search by bisection (Lewis & Overton, 2013): each start keeps a
        # bracket [lo, hi] on its step t. Too long (f did not drop enough, N&W eq. 3.6a) -> hi = t;
        # too short (slope still steep, eq. 3.6b) -> lo = t; t moves to the bracket's middle,
        # or doubles while hi is unknown. The Wolfe curvature test keeps every (s, y) pair usable.
        fa = f[act]
        t = np.ones(act.size)
        lo = np.zeros(act.size)
        hi = np.full(act.size, np.inf)
        x_new = np.empty((act.size, P))
        f_new = np.empty(act.size)
        g_new = np.empty((act.size, P))
        pending = np.arange(act.size)
        for _ in range(max_linesearch):
            xt = x[act[pending]] + t[pending, None] * d[pending]
            ft, gt = fun_grad(xt)
            nfev += 1
            armijo = ft <= fa[pending] + c1 * t[pending] * slope[pending]
            curvature = np.einsum("kp,kp->k", gt, d[pending]) >= c2 * slope[pending]
            ok = armijo & curvature
            done = pending[ok]
            x_new[done], f_new[done], g_new[done] = xt[ok], ft[ok], gt[ok]
            too_long, too_short = pending[~armijo], pending[armijo & ~curvature]
            hi[too_long] = t[too_long]
            lo[too_short] = t[too_short]
            # A step that decreases f enough is kept as the fallback if the search runs out.
            x_new[too_short], f_new[too_short], g_new[too_short] = (
                xt[armijo & ~curvature], ft[armijo & ~curvature], gt[armijo & ~curvature])
            pending = pending[~ok]
            if pending.size == 0:
                break
            t[pending] = np.where(np.isfinite(hi[pending]), 0.5 * (lo[pending] + hi[pending]),
                                  2.0 * lo[pending])
        # Out of tries: accept the last sufficient-decrease step if there was one, else fail.
        failed = np.zeros(act.size, dtype=bool)
        failed[pending[lo[pending] == 0.0]] = True

        moved = ~failed
        idx = act[moved]
        s = x_new[moved] - x[idx]
        y = g_new[moved] - g[idx]
        sy = np.einsum("kp,kp->k", s, y)
        yy = np.einsum("kp,kp->k", y, y)
        good = sy > np.finfo(float).eps * yy  # curvature condition, as in SciPy
        slot = it % memory
        S[slot, act], Y[slot, act], rho[slot, act] = 0.0, 0.0, 0.0
        S[slot, idx[good]], Y[slot, idx[good]] = s[good], y[good]
        rho[slot, idx[good]] = 1.0 / sy[good]
        gamma[idx[good]] = sy[good] / yy[good]
        has_pair[idx[good]] = True

        f_old = f[idx]
        x[idx], f[idx], g[idx] = x_new[moved], f_new[moved], g_new[moved]
        nit[act] += 1
        status[act[failed]] = 3
        small_step = (f_old - f[idx]) <= ftol * np.maximum(np.maximum(np.abs(f_old), np.abs(f[idx])), 1.0)
        status[idx[small_step]] = 1
        status[idx[np.max(np.abs(g[idx]), axis=1) <= gtol]] = 0
    status[status < 0] = 2
    bar.update(K - bar.n)
    bar.close()
    return BatchedLBFGSResult(x=x, fun=f, grad=g, status=status, nit=nit, nfev=nfev)
