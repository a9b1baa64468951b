"""Data-parallel training on CPU: 2 torchrun processes against 1, the same global batch.

    python benchmarks/bench_distributed.py                      # tiny GPT, 60 steps, global batch 16
    python benchmarks/bench_distributed.py --size small --steps 40 --repeats 1

Runs ``minilm.train.train`` three ways on the same data, model and seed: one process with two
torch threads, then pairs of one process with one thread and ``torchrun --nproc_per_node 2``
with one thread each (gloo), alternating. Prints the training throughput of each (tokens/s over
the steps after the first 10, so start-up and warm-up are left out) and how far the 2-process loss
curves are from the 1-process ones.
On a 2-core machine, and more so a shared one, expect 2 processes to be no faster: they compete
for the same cores (with each other and everything else running), and every step adds an
all-reduce of the gradients through gloo (TCP on loopback) plus one of the loss.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WARMUP = 10


def _run(args, threads: int, out: Path | None = None) -> dict:
    import torch

    from minilm.data import load_dataset
    from minilm.models import build_model
    from minilm.train import train

    data = load_dataset("markov", n_tokens=200_000, seed=0)
    torch.manual_seed(0)
    model = build_model("gpt", data.vocab_size, size=args.size, context_length=args.context)
    h = train(model, data.train, None, steps=args.steps, batch_size=args.batch_size, context_length=args.context,
              lr=3e-3, device="cpu", seed=0, progress=False, threads=threads)
    t = h["time"][-1] - h["time"][WARMUP - 1]
    result = {"tokens_per_s": (args.steps - WARMUP) * args.batch_size * args.context / t, "loss": h["train_loss"],
              "params": model.num_params()}
    if out is not None and os.environ.get("RANK", "0") == "0":
        out.write_text(json.dumps(result))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="tiny")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="alternating 1-process / 2-process pairs")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # the torchrun side: where to write
    args = p.parse_args()
    if args.worker:
        _run(args, threads=1, out=Path(args.worker))
        return
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}")
    one_2t = _run(args, threads=2)
    ones, twos = [], []
    for _ in range(args.repeats):  # alternate, so a burst of other work hits both sides alike
        ones.append(_run(args, threads=1))
        twos.append(_torchrun(args))
    one = ones[0]
    gap = max(abs(a - b) for o, t in zip(ones, twos) for a, b in zip(o["loss"], t["loss"]))
    rate = lambda runs: [r["tokens_per_s"] for r in runs]  # noqa: E731
    ratios = [t / o for o, t in zip(rate(ones), rate(twos))]
    print(f"GPT {args.size} ({one['params']:,} parameters), global batch {args.batch_size} x {args.context} tokens, "
          f"{args.steps} steps (throughput over the last {args.steps - WARMUP}), {args.repeats} alternating repeat(s)")
    print(f"  1 process x 2 threads: {one_2t['tokens_per_s']:9,.0f} tokens/s")
    print("  1 process x 1 thread : " + ", ".join(f"{r:,.0f}" for r in rate(ones)) + " tokens/s")
    print("  2 processes x 1 thread (torchrun, gloo): " + ", ".join(f"{r:,.0f}" for r in rate(twos)) + " tokens/s")
    print("  2 processes / 1 process, each pair: " + ", ".join(f"{r:.2f}x" for r in ratios)
          + f" (median {statistics.median(ratios):.2f}x)")
    print(f"  largest |train loss, 2 processes - 1 process| over {args.steps} steps: {gap:.2e} nats")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def _torchrun(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "two.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
               "--worker", str(out), "--size", args.size, "--steps", str(args.steps), "--batch-size",
               str(args.batch_size), "--context", str(args.context)]
        subprocess.run(cmd, check=True, capture_output=True)
        return json.loads(out.read_text())


if __name__ == "__main__":
    main()
