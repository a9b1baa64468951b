"""Cost of emulated FP8 training: a tiny GPT's training step in FP32 vs with ``minilm.fp8.to_fp8``.

    PYTHONPATH=. python benchmarks/bench_fp8.py [--d-model 64] [--layers 2] [--batch 16] [--context 64]
        [--steps 5] [--repeats 7] [--threads 1] [--recipes none current delayed deepseek]

1. Training step (forward, backward, AdamW) of the same GPT (same initial weights, same batch)
   in FP32 and with every linear but the head swapped for an ``FP8Linear`` under each recipe.
   Every repeat times ``--steps`` steps of each variant, in turn (interleaved, so a busy machine
   slows all of them alike); the median ms/step and its ratio to FP32 are printed (goal <= 3x).
2. The quantiser itself: ns per value of the numpy reference ``encode`` and of the fast path
   ``round_to_fp8`` on one million float32 values (medians of 5).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch

from minilm.data import MarkovLanguage, get_batch
from minilm.device import configure_threads
from minilm.fp8 import encode, round_to_fp8, to_fp8
from minilm.models import GPT, GPTConfig


def _step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bench_steps(args: argparse.Namespace) -> None:
    cfg = GPTConfig(vocab_size=64, context_length=args.context, n_layers=args.layers, n_heads=4, d_model=args.d_model)
    tokens = MarkovLanguage(vocab_size=64, order=1, seed=0).sample(50_000, seed=0)
    x, y = get_batch(tokens, args.batch, args.context, rng=np.random.default_rng(0))
    torch.manual_seed(0)
    base = GPT(cfg)
    variants = {"fp32": _step_fn(copy.deepcopy(base), x, y)}
    for name in args.recipes:
        variants[name] = _step_fn(to_fp8(copy.deepcopy(base), recipe=name), x, y)
    for step in variants.values():  # warm-up (allocator, first-call costs)
        step()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, step in variants.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - t0) / args.steps * 1e3)
    n_tokens = args.batch * args.context
    print(f"\n1. training step, GPT d_model={args.d_model} layers={args.layers} batch={args.batch}x{args.context} "
          f"({n_tokens} tokens), {args.repeats} repeats x {args.steps} steps, interleaved")
    print(f"{'variant':<10} {'median ms/step':>15} {'min':>8} {'max':>8} {'vs fp32':>8}")
    fp32 = statistics.median(times["fp32"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<10} {med:>15.2f} {min(ts):>8.2f} {max(ts):>8.2f} {med / fp32:>7.2f}x")


def bench_quantiser() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(1_000_000) * np.exp2(rng.integers(-12, 10, 1_000_000))).astype(np.float32)
    xt = torch.from_numpy(x)
    print("\n2. quantiser, 1,000,000 float32 values, ns per value (median of 5)")
    for fmt in ("e4m3", "e5m2"):
        ref, fast = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            encode(x, fmt)
            ref.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            round_to_fp8(xt, fmt)
            fast.append(time.perf_counter() - t0)
        r, f = statistics.median(ref) * 1e3, statistics.median(fast) * 1e3
        print(f"{fmt}: reference encode {r:6.1f} ns, fast round_to_fp8 {f:6.1f} ns ({r / f:.0f}x faster)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--recipes", nargs="+", default=["none", "current", "delayed", "deepseek"])
    args = p.parse_args()
    n = configure_threads(args.threads, verbose=False)
    print(f"torch {torch.__version__}, {n} CPU thread(s)")
    bench_steps(args)
    bench_quantiser()


if __name__ == "__main__":
    main()
