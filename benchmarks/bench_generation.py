"""Per-token generation time at short and long context: RWKV (recurrent state) vs GPT (KV cache).

    python benchmarks/bench_generation.py [--size small] [--contexts 100 10000] [--threads 1]

For each context length n the model first reads an n-token prompt, then we time ``--steps``
single-token steps (median over ``--repeats`` runs, reported per token):
  - RWKV: the prompt goes through the parallel form once (chunked), then each token is one
    recurrent step on a fixed-size state -- the time should not depend on n.
  - GPT: built with context_length >= n + steps + 100 so nothing is cropped; the prompt fills a
    ``KVCache`` (in chunks of 1,000 tokens to bound memory -- the same cache as one call), then
    each token attends to all n cached keys -- the time grows with n. (``bench_kv_cache.py``
    compares the caches themselves: keep-all vs sinks + window, before and after preallocation.)
Also prints the memory each model keeps between tokens (RWKV state vs KV cache), and the largest
difference between RWKV's parallel and recurrent logits on a random-weight model.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time

import torch


def _per_token_times(step, first_token: torch.Tensor, steps: int, repeats: int, fork) -> float:
    """Median over repeats of (time for ``steps`` greedy steps) / steps, from a fresh copy of the state."""
    times = []
    for _ in range(repeats):
        state = fork()
        tok = first_token
        t0 = time.perf_counter()
        for _ in range(steps):
            logits, state = step(tok, state)
            tok = logits[:, -1:].argmax(-1)
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=["tiny", "small", "medium"])
    parser.add_argument("--contexts", type=int, nargs="+", default=[100, 10_000])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vocab", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from minilm.models import KVCache, build_model

    torch.manual_seed(0)
    V = args.vocab
    print(f"generation benchmark: size={args.size}, vocab={V}, batch 1, {args.steps} steps x "
          f"{args.repeats} repeats (median), torch threads={torch.get_num_threads()}, CPU float32")
    rwkv = build_model("rwkv", V, size=args.size).eval()
    gpt = build_model("gpt", V, size=args.size, context_length=max(args.contexts) + args.steps + 100).eval()
    print(f"RWKV {rwkv.num_params():,} parameters, GPT {gpt.num_params():,} parameters")

    # agreement of the two RWKV forms, on random (not reference-initialised) weights
    probe = build_model("rwkv", V, size=args.size)
    g = torch.Generator().manual_seed(1)
    for name, p in probe.named_parameters():
        if p.dim() == 2:
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
        elif "time_decay" in name:
            p.copy_(torch.rand(p.shape, generator=g) * 4 - 3)
        elif "time_mix" in name:
            p.copy_(torch.rand(p.shape, generator=g))
    idx = torch.randint(0, V, (2, 512), generator=g)
    par, rec = probe(idx, mode="parallel"), probe(idx, mode="recurrent")
    print(f"RWKV parallel vs recurrent, 2 x 512 tokens: max |logit difference| = "
          f"{(par - rec).abs().max().item():.2e} (logits up to {par.abs().max().item():.1f})")

    print(f"{'model':6s} {'context':>8s} {'prefill s':>10s} {'ms/token':>9s} {'state MB':>9s}")
    for n in args.contexts:
        prompt = torch.randint(0, V, (1, n), generator=g)
        nxt = prompt[:, -1:]

        # RWKV: prompt once (parallel, chunked), then O(1) recurrent steps
        t0 = time.perf_counter()
        _, state = rwkv(prompt, return_state=True)
        prefill = time.perf_counter() - t0
        ms = 1e3 * _per_token_times(
            lambda tok, s: rwkv(tok, state=s, return_state=True, mode="recurrent"),
            nxt, args.steps, args.repeats, lambda s=state: [tuple(t.clone() for t in layer) for layer in s])
        mb = _nbytes(t for layer in state for t in layer) / 2**20
        print(f"{'RWKV':6s} {n:8d} {prefill:10.2f} {ms:9.2f} {mb:9.3f}")

        # GPT: fill the KV cache, then one token at a time attending to everything cached
        t0 = time.perf_counter()
        cache = KVCache(gpt.config.n_layers, max_length=n + args.steps)  # preallocated: no growth while timed
        for s in range(0, n, 1000):
            gpt(prompt[:, s : s + 1000], cache=cache)
        prefill = time.perf_counter() - t0

        def fork(cache=cache):
            return copy.deepcopy(cache)  # each repeat writes into its own buffers

        def gpt_step(tok, c):
            return gpt(tok, cache=c), c

        ms = 1e3 * _per_token_times(gpt_step, nxt, args.steps, args.repeats, fork)
        print(f"{'GPT':6s} {n:8d} {prefill:10.2f} {ms:9.2f} {cache.nbytes() / 2**20:9.3f}")


if __name__ == "__main__":
    main()
