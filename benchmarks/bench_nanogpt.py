"""minilm's GPT vs nanoGPT's model.py: speed per training step, and time to the same validation loss.

    python benchmarks/bench_nanogpt.py [--threads 1 2] [--runs 3] [--steps 90] [--to-loss-steps 2000]

1. Per step: ``minilm.bench.run_bench`` (what ``minilm bench`` prints) ``--runs`` times for each
   thread count. Each run interleaves minilm's default GPT (fast kernels), the same GPT on the
   reference kernels, and nanoGPT (its CPU recipe, with whichever AdamW is faster here) step by
   step on the same batches and reports medians; this script prints every run and the median of
   the runs' ratios, so the spread shows how noisy the machine was.
2. Time to a loss: ``minilm.bench.run_to_loss`` trains minilm as ``minilm train`` does and nanoGPT
   with its recipe, ``--to-loss-steps`` steps each on the same batches (interleaved), and reports
   how long minilm takes to reach nanoGPT's final validation loss (``--to-loss-steps 0`` skips it;
   2000 steps, the README's CPU recipe, take a few minutes).
"""

from __future__ import annotations

import argparse
import statistics

from minilm.bench import format_bench, format_to_loss, run_bench, run_to_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--runs", type=int, default=3, help="bench runs per thread count")
    p.add_argument("--steps", type=int, default=90, help="timed steps per model per run")
    p.add_argument("--to-loss-steps", type=int, default=2000, help="training steps of the time-to-loss race (0: skip)")
    p.add_argument("--to-loss-threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    summary = []
    for threads in args.threads:
        ratios, ref_ratios, ours, nano = [], [], [], []
        for run in range(args.runs):
            r = run_bench(steps=args.steps, threads=threads, device=args.device)
            print(f"--- {threads} thread(s), run {run + 1}/{args.runs}\n{format_bench(r)}\n", flush=True)
            ratios.append(r["speed_vs_nanogpt"])
            ref_ratios.append(r["speed_vs_reference"])
            ours.append(r["minilm_ms_per_step"])
            nano.append(r["nanogpt_ms_per_step"])
        summary.append(
            f"{threads} thread(s): minilm {statistics.median(ours):.1f} ms/step, nanoGPT {statistics.median(nano):.1f} "
            f"ms/step; minilm/nanoGPT speed {statistics.median(ratios):.2f}x (runs: "
            f"{', '.join(f'{x:.2f}' for x in ratios)}); fast/reference kernels {statistics.median(ref_ratios):.2f}x")
    print("=== per-step speed, medians over runs (>1 = minilm faster)")
    print("\n".join(summary), flush=True)

    if args.to_loss_steps > 0:
        print(f"\n=== time to nanoGPT's final validation loss ({args.to_loss_steps} steps)", flush=True)
        print(format_to_loss(run_to_loss(steps=args.to_loss_steps, threads=args.to_loss_threads, device=args.device)))


if __name__ == "__main__":
    main()
