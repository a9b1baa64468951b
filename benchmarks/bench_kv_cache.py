"""KV caches before and after preallocation / ring buffers: ms per token and memory, side by side.

    python benchmarks/bench_kv_cache.py [--size small] [--contexts 100 1000 10000] [--window 512]
        [--sinks 4] [--steps 20] [--repeats 5] [--stream 100000] [--threads 1]

"old" is a faithful copy of the caches as they were before (kept in this file only, as the
reference): every step concatenated the new keys to the whole cache (``torch.cat``), rotated
every cached key again, and an evicting cache gathered the kept tokens into new tensors.
"new" is ``minilm``'s caches: preallocated buffers that double when full (keep-all, keys stored
rotated) and fixed ring buffers (sinks + window).

1. For each context n: read an n-token prompt (chunks of 1,000; the sinks cache with its policy
   mask), take one untimed step, then time ``--steps`` greedy single-token steps from a copy of
   that state, ``--repeats`` times, old and new interleaved (every repeat runs each cache once):
   the median per token. RWKV's recurrent step (a fixed-size state) for comparison.
   Memory: "held" = bytes the cache (or state) holds between tokens (new: its buffers, room not
   yet filled included; old: its tensors), "step peak" = peak bytes newly allocated during one
   step (torch profiler allocation records: the old cache's copies show here; activations too).
2. Streaming: ``--stream`` tokens one at a time through the new sinks + window cache (memory
   checked along the way), then its per-token time after the whole stream vs after 1,000 tokens,
   interleaved (the old cache's states at both points, from a chunked prefill, alongside).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from minilm.attention.cost import _cpu_peak_bytes


# ------------------------------------------------------ before: the concatenating caches (verbatim)
class _OldKVCache:
    def __init__(self, n_layers: int):
        self.k: list[torch.Tensor | None] = [None] * n_layers  # each (B, H, L, hd)
        self.v: list[torch.Tensor | None] = [None] * n_layers
        self.pos: torch.Tensor | None = None  # (L,) absolute positions of the cached tokens
        self.seen = 0  # tokens processed so far (the next token's absolute position)

    def __len__(self) -> int:
        return 0 if self.pos is None else int(self.pos.numel())

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k[layer] is not None:
            k = torch.cat([self.k[layer], k], dim=2)
            v = torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    def new_positions(self, T: int, device: torch.device) -> torch.Tensor:
        return torch.arange(self.seen, self.seen + T, device=device)

    def key_positions(self, new_pos: torch.Tensor) -> torch.Tensor:
        return new_pos if self.pos is None else torch.cat([self.pos, new_pos])

    def rope_positions(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return q_pos, k_pos

    def commit(self, new_pos: torch.Tensor) -> None:
        self.pos = self.key_positions(new_pos)
        self.seen += int(new_pos.numel())
        self.evict()

    def evict(self) -> None:
        pass

    def _keep(self, index: torch.Tensor) -> None:
        self.k = [None if k is None else k[:, :, index] for k in self.k]
        self.v = [None if v is None else v[:, :, index] for v in self.v]
        self.pos = self.pos[index]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v if t is not None)


class _OldWindowCache(_OldKVCache):
    def __init__(self, n_layers: int, window: int):
        super().__init__(n_layers)
        self.window = window

    def _allowed(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        dist = q_pos[:, None] - k_pos[None, :]
        return (dist >= 0) & (dist < self.window)

    def _keep_index(self) -> torch.Tensor:
        L = len(self)
        return torch.arange(max(0, L - (self.window - 1)), L)

    def evict(self) -> None:
        if len(self) > self.window - 1:
            self._keep(self._keep_index().to(self.pos.device))

    def attn_mask(self, T: int, device: torch.device | None = None) -> torch.Tensor:
        if device is None:
            device = self.pos.device if self.pos is not None else torch.device("cpu")
        q_pos = self.new_positions(T, device)
        return self._allowed(q_pos, self.key_positions(q_pos))


class _OldSinksWindowCache(_OldWindowCache):
    def __init__(self, n_layers: int, window: int, sinks: int = 4, positions: str = "cache"):
        super().__init__(n_layers, window)
        self.sinks, self.positions = sinks, positions

    def _allowed(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        return super()._allowed(q_pos, k_pos) | ((k_pos[None, :] < self.sinks) & (k_pos[None, :] <= q_pos[:, None]))

    def _keep_index(self) -> torch.Tensor:
        return torch.cat([torch.arange(self.sinks), super()._keep_index()])

    def evict(self) -> None:
        if len(self) > self.sinks + self.window - 1:
            self._keep(self._keep_index().to(self.pos.device))

    def rope_positions(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.positions == "absolute":
            return q_pos, k_pos
        Lk, T = k_pos.numel(), q_pos.numel()
        in_cache = torch.arange(Lk, device=k_pos.device)
        return in_cache[Lk - T :], in_cache


class _Before:
    """An old cache behind today's step protocol, doing per step what the old GPT.forward and
    attention did: positions by concatenation, the causal mask, and RoPE of every cached key."""

    rotate_all = True

    def __init__(self, old: _OldKVCache):
        self.old = old

    def __len__(self) -> int:
        return len(self.old)

    def begin(self, T: int, device: torch.device | None = None) -> None:
        self.q_pos = self.old.new_positions(T, device)
        self.k_pos = self.old.key_positions(self.q_pos)

    def rope_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.old.rope_positions(self.q_pos, self.k_pos)

    def causal_mask(self) -> torch.Tensor:
        return self.k_pos[None, :] <= self.q_pos[:, None]

    def attn_mask(self, T: int) -> torch.Tensor | None:
        return self.old.attn_mask(T) if hasattr(self.old, "attn_mask") else None

    def update(self, layer, k, v, rotate):
        k, v = self.old.update(layer, k, v)  # the whole cache, copied
        return rotate(k), v  # and every key rotated again

    def commit(self) -> None:
        self.old.commit(self.q_pos)

    def nbytes(self) -> int:
        return self.old.nbytes()

    allocated_bytes = nbytes


# ------------------------------------------------------------------------------------ helpers
def _prefill(model, cache, prompt: torch.Tensor, chunk: int = 1000) -> None:
    """Read ``prompt`` (1, n) into ``cache`` in chunks (an evicting cache with its policy mask),
    then one single-token step, so the state is the one decoding runs in."""
    for s in range(0, prompt.size(1), chunk):
        part = prompt[:, s : s + chunk]
        mask = cache.attn_mask(part.size(1)) if hasattr(cache, "attn_mask") else None
        model(part, cache=cache, attn_mask=mask)
    model(prompt[:, -1:], cache=cache)


def _gpt_stepper(model, state):
    """(run(steps) -> seconds per token from a fresh copy of the state, peak() -> bytes one step allocates)."""
    def run(steps: int) -> float:
        cache, tok = copy.deepcopy(state), torch.zeros(1, 1, dtype=torch.long)
        t0 = time.perf_counter()
        for _ in range(steps):
            tok = model(tok, cache=cache)[:, -1:].argmax(-1)  # greedy
        return (time.perf_counter() - t0) / steps

    def peak() -> int:
        cache = copy.deepcopy(state)  # copied before the measurement, not during it
        return _cpu_peak_bytes(lambda: model(torch.zeros(1, 1, dtype=torch.long), cache=cache))

    return run, peak


def _rwkv_stepper(model, state):
    def run(steps: int) -> float:
        s, tok = [tuple(t.clone() for t in layer) for layer in state], torch.zeros(1, 1, dtype=torch.long)
        t0 = time.perf_counter()
        for _ in range(steps):
            logits, s = model(tok, state=s, return_state=True, mode="recurrent")
            tok = logits[:, -1:].argmax(-1)
        return (time.perf_counter() - t0) / steps

    def peak() -> int:
        return _cpu_peak_bytes(lambda: model(torch.zeros(1, 1, dtype=torch.long), state=state, return_state=True,
                                             mode="recurrent"))

    return run, peak


def _interleaved(runs: dict, steps: int, repeats: int) -> dict:
    """Median seconds per token of each run, the runs taking turns within every repeat."""
    times = {name: [] for name in runs}
    for run in runs.values():  # warm-up, untimed
        run(1)
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(run(steps))
    return {name: statistics.median(ts) for name, ts in times.items()}


def _mb(n: float) -> str:
    return f"{n / 2**20:9.3f}"


# --------------------------------------------------------------------------------------- main
@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=["tiny", "small", "medium"])
    parser.add_argument("--contexts", type=int, nargs="+", default=[100, 1000, 10_000])
    parser.add_argument("--window", type=int, default=512, help="sinks cache: keys seen per token")
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stream", type=int, default=100_000, help="tokens streamed (0: skip part 2)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vocab", type=int, default=256)
    args = parser.parse_args()

    from minilm.attention import SinksWindowCache
    from minilm.device import configure_threads
    from minilm.models import KVCache, build_model

    configure_threads(args.threads)
    torch.manual_seed(0)
    V, w, s = args.vocab, args.window, args.sinks
    gpt = build_model("gpt", V, size=args.size, context_length=w + s).eval()
    rwkv = build_model("rwkv", V, size=args.size).eval()
    print(f"KV-cache benchmark: GPT size={args.size} ({gpt.num_params():,} parameters), vocab={V}, batch 1, "
          f"CPU float32, torch threads={torch.get_num_threads()}; sinks cache: window={w}, sinks={s}; "
          f"{args.steps} steps x {args.repeats} repeats, old and new interleaved (median)")
    g = torch.Generator().manual_seed(1)
    caches = {
        "full": (lambda: _Before(_OldKVCache(gpt.config.n_layers)), lambda: KVCache(gpt.config.n_layers)),
        "sinks": (lambda: _Before(_OldSinksWindowCache(gpt.config.n_layers, w, s)),
                  lambda: SinksWindowCache(gpt.config.n_layers, w, s)),
    }
    print(f"\n{'cache':6s} {'context':>7s} | {'ms/token':>9s} {'old':>3s}/{'new':<5s} {'speed-up':>8s} | "
          f"{'held MB':>9s} {'old':>3s}/{'new':<5s} | {'step peak MB':>12s} {'old':>3s}/{'new':<5s}")
    for n in args.contexts:
        prompt = torch.randint(0, V, (1, n), generator=g)
        runs, peaks, held = {}, {}, {}
        for name, (old, new) in caches.items():
            for when, make in (("old", old), ("new", new)):
                cache = make()
                _prefill(gpt, cache, prompt)
                runs[name, when], peaks[name, when] = _gpt_stepper(gpt, cache)
                held[name, when] = cache.allocated_bytes()
        _, state = rwkv(prompt, return_state=True)
        runs["rwkv"], peaks["rwkv"] = _rwkv_stepper(rwkv, state)
        held["rwkv"] = sum(t.numel() * t.element_size() for layer in state for t in layer)
        med = _interleaved(runs, args.steps, args.repeats)
        peak = {key: measure() for key, measure in peaks.items()}
        for name in caches:
            o, nw = med[name, "old"], med[name, "new"]
            print(f"{name:6s} {n:7d} | {1e3 * o:9.2f} {1e3 * nw:9.2f} {o / nw:7.1f}x | "
                  f"{_mb(held[name, 'old'])} {_mb(held[name, 'new'])} | "
                  f"{_mb(peak[name, 'old'])} {_mb(peak[name, 'new'])}")
        print(f"{'RWKV':6s} {n:7d} | {1e3 * med['rwkv']:9.2f} {'':9s} {'':8s} | {_mb(held['rwkv'])} {'':9s} | "
              f"{_mb(peak['rwkv'])}")

    if args.stream:
        _streaming(gpt, args, caches["sinks"], g)


def _streaming(gpt, args, sinks_cache, g: torch.Generator) -> None:
    """Part 2: stream tokens one at a time through the new sinks cache; time after 1k vs after all."""
    old, new = sinks_cache
    n, early = args.stream, min(1000, args.stream)
    tokens = torch.randint(0, args.vocab, (1, n), generator=g)
    cache, at_early, allocated, nbytes = new(), None, set(), set()
    t0 = time.perf_counter()
    for t in range(n):
        gpt(tokens[:, t : t + 1], cache=cache)
        if t + 1 == early:
            at_early = copy.deepcopy(cache)
        if t + 1 >= args.window + args.sinks:  # once the window is full
            allocated.add(cache.allocated_bytes())
            nbytes.add(cache.nbytes())
    seconds = time.perf_counter() - t0
    print(f"\nstreamed {n:,} tokens one at a time through the new sinks cache: {seconds:.1f} s "
          f"({1e3 * seconds / n:.2f} ms/token on average); once the window was full, nbytes took "
          f"{len(nbytes)} value(s) {sorted(nbytes)} and the buffers {len(allocated)} size(s) {sorted(allocated)} bytes")
    olds = {}
    for count, label in ((early, "early"), (n, "late")):  # the old cache's states, by chunked prefill
        olds[label] = old()
        _prefill(gpt, olds[label], tokens[:, : count - 1])
    runs = {("new", "early"): _gpt_stepper(gpt, at_early)[0], ("new", "late"): _gpt_stepper(gpt, cache)[0],
            ("old", "early"): _gpt_stepper(gpt, olds["early"])[0], ("old", "late"): _gpt_stepper(gpt, olds["late"])[0]}
    med = _interleaved(runs, args.steps, args.repeats)
    for when in ("new", "old"):
        a, b = med[when, "early"], med[when, "late"]
        print(f"sinks cache ({when}): {1e3 * a:.2f} ms/token after {early:,} tokens, {1e3 * b:.2f} after {n:,}: "
              f"ratio {b / a:.2f} (goal for new: <= 1.2)")


if __name__ == "__main__":
    main()
