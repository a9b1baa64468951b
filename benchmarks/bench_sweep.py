"""Wall time of the fast scaling sweep (``minilm.scaling.run_sweep`` defaults), then its fit.

    PYTHONPATH=. python benchmarks/bench_sweep.py              # 1 torch thread, fresh cache
    PYTHONPATH=. python benchmarks/bench_sweep.py --threads 2

Trains the 12 runs of fast mode from scratch (a temporary cache, so nothing is reused), prints
the wall time, the per-run times, then fits Approach 3 and compares the fitted E with the
language's exact entropy rate. Tiny models are overhead-bound: one torch thread is usually as
fast as two, and far faster on a busy machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from minilm.scaling import fit_chinchilla
from minilm.scaling.sweep import run_sweep


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads={torch.get_num_threads()}, cores={os.cpu_count()}, device={args.device}, "
          f"load average before={os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        sweep = run_sweep(cache_path=os.path.join(tmp, "sweep.json"), device=args.device, progress=False)
        wall = time.perf_counter() - t
        t = time.perf_counter()
        again = run_sweep(cache_path=os.path.join(tmp, "sweep.json"), device=args.device, progress=False)
        rerun = time.perf_counter() - t
    for q in sweep.points:
        print(f"  N={q['n_params']:7d}  D={q['tokens']:8d}  loss={q['loss']:.4f}  {q['train_time_s']:5.1f} s")
    print(f"fast sweep: {len(sweep.points)} runs trained in {wall:.1f} s wall; cached rerun {rerun:.2f} s "
          f"(trained {again.n_trained})")
    runs = sweep.runs()
    t = time.perf_counter()
    fit = fit_chinchilla(runs.N, runs.D, runs.loss)
    print(f"Approach 3 fit in {time.perf_counter() - t:.1f} s: {fit.params}")
    print(f"fitted E = {fit.params.E:.4f} vs exact entropy rate h = {sweep.entropy_rate:.4f} "
          f"(sample estimate on the validation tokens: {sweep.val_entropy:.4f}); load average after="
          f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
