"""Time and memory of attention variants vs sequence length: log-log slopes and crossover n.

    PYTHONPATH=. python benchmarks/bench_attention.py                 # forward, 1 thread, about a minute
    PYTHONPATH=. python benchmarks/bench_attention.py --backward      # forward + backward
    PYTHONPATH=. python benchmarks/bench_attention.py --ssm           # also the (slow, Python-loop) SSM layer

One attention layer (d_model=64, 4 heads, batch 1, float32), no positional encoding. Times are
medians of ``--repeats`` calls; memory is the peak allocated during one call (CPU: torch profiler
allocation records; CUDA: max_memory_allocated). Slopes are fitted on n >= --fit-from, where the
quadratic term dominates the fixed overheads.
"""

from __future__ import annotations

import argparse
import time

import torch

from minilm.attention import crossover_n, layer_builder, measure_scaling
from minilm.device import resolve_device


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ns", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fit-from", type=int, default=1024)
    p.add_argument("--backward", action="store_true")
    p.add_argument("--ssm", action="store_true", help="also time the selective SSM layer (Python loop)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    kinds = ["explicit", "sdpa", "window", "linear"] + (["ssm"] if args.ssm else [])
    print(f"device={device}  threads={torch.get_num_threads()}  torch={torch.__version__}  "
          f"d_model={args.d_model} heads={args.heads} window={args.window}  "
          f"{'forward+backward' if args.backward else 'forward'}  median of {args.repeats}")
    t0 = time.perf_counter()
    results = {}
    for kind in kinds:
        build = layer_builder(kind, args.d_model, args.heads, args.window, device=device, backward=args.backward)
        results[kind] = measure_scaling(build, args.ns, backward=args.backward, repeats=args.repeats, progress=False)

    header = " ".join(f"{k + ' ms':>12}" for k in kinds) + "   " + " ".join(f"{k + ' MB':>12}" for k in kinds)
    print(f"\n{'n':>6} {header}")
    for i, n in enumerate(args.ns):
        times = " ".join(f"{results[k].seconds[i] * 1e3:12.2f}" for k in kinds)
        mems = " ".join(f"{(results[k].peak_bytes[i] or 0) / 2**20:12.2f}" for k in kinds)
        print(f"{n:>6} {times}   {mems}")

    print(f"\nlog-log slopes of time on n >= {args.fit_from} (median / fastest call; all n in brackets), memory:")
    for k in kinds:
        r = results[k]
        med, fast = r.time_slope(args.fit_from), r.time_slope(args.fit_from, stat="min")
        print(f"  {k:>9}: time {med:5.2f} / {fast:5.2f} ({r.time_slope():5.2f} / {r.time_slope(stat='min'):5.2f})"
              f"   memory {r.memory_slope():5.2f}")

    print("\ncrossover n (first variant becomes slower than the second; '<' = already slower at the smallest n):")
    for a, b in (("sdpa", "linear"), ("explicit", "linear"), ("sdpa", "window"), ("explicit", "window")):
        n_x = crossover_n(results[a], results[b])
        if n_x is None:
            slower_at_start = results[a].seconds[0] > results[b].seconds[0]
            extra = crossover_n(results[a], results[b], extrapolate=True)
            where = f"< {args.ns[0]}" if slower_at_start else f"> {args.ns[-1]}"
            extra = f"power-law extrapolation: {extra:.0f}" if extra else "fits do not cross"
            print(f"  {a:>8} vs {b:<7}: {where} ({extra})")
        else:
            print(f"  {a:>8} vs {b:<7}: {n_x:.0f}")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
