"""Wall time of Hoffmann et al.'s Approach 3 fit (L-BFGS from the published 4500-point grid).

    PYTHONPATH=. python benchmarks/bench_scaling_fit.py                # 50 points, 1 thread
    PYTHONPATH=. python benchmarks/bench_scaling_fit.py --points 50 200 --scipy

Points are drawn from Hoffmann's published law (N in [1e6, 1e10], D in [1e8, 1e12], 1% noise).
Compares the batched L-BFGS (all starts advanced together, minilm's default) with SciPy's
L-BFGS-B called once per start (the reference, ``--scipy``; slow), and the ``top_k`` shortcut.
Times are medians of ``--repeats`` runs; the numpy thread count is set by the environment
(OMP_NUM_THREADS), printed below.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from minilm.scaling import ChinchillaParams, chinchilla_loss, fit_chinchilla


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, nargs="+", default=[50])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scipy", action="store_true", help="also time SciPy's L-BFGS-B per start (about 10x slower)")
    args = p.parse_args()
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, cores={os.cpu_count()}")
    truth = ChinchillaParams.hoffmann()
    for n in args.points:
        rng = np.random.default_rng(0)
        N = np.exp(rng.uniform(np.log(1e6), np.log(1e10), n))
        D = np.exp(rng.uniform(np.log(1e8), np.log(1e12), n))
        L = chinchilla_loss(N, D, truth) * (1 + 0.01 * rng.standard_normal(n))
        configs = [("batched, full grid, tight", {}), ("batched, full grid, scipy tol", {"tolerance": "scipy"}),
                   ("batched, top_k=50, tight", {"top_k": 50})]
        if args.scipy:
            configs.append(("scipy L-BFGS-B, full grid, tight", {"optimizer": "scipy"}))
        ref = None
        for name, kw in configs:
            t, fit = timed(lambda kw=kw, N=N, D=D, L=L: fit_chinchilla(N, D, L, **kw),
                           1 if kw.get("optimizer") else args.repeats)
            ref = ref or fit
            print(f"n={n:4d}  {name:34s} {t:7.2f} s  starts={fit.n_starts:4d}  objective={fit.objective:.10g}  "
                  f"alpha={fit.params.alpha:.5f} beta={fit.params.beta:.5f}  "
                  f"(objective vs first row: {fit.objective / ref.objective - 1:+.1e})")


if __name__ == "__main__":
    main()
