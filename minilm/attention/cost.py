"""What each attention variant costs: formulas (FLOPs, memory) and a measurement helper.

Notation: n tokens, d = d_model, H heads of size h = d / H, one sequence (batch 1), one layer,
forward pass. A multiply-add counts 2 FLOPs; softmax, exp and other elementwise work is left out
(it is O(pairs) or O(n d), never the leading term). A training step (forward + backward) costs
about 3x the forward FLOPs.

FLOPs (``attention_flops``), projections 8 n d^2 (Q, K, V, output) included in all softmax and
linear variants:
    full         8 n d^2 + 4 n^2 d        dense kernels (explicit, SDPA with a mask) score all n^2 pairs
    window       8 n d^2 + 8 n' w d       block-banded kernel: 2w scores per query (n' = n rounded up
                                          to a multiple of w); the ideal band would be 4 n w d
    causal, sinks, strided, fixed, block_sparse
                 8 n d^2 + 4 P d          an *ideal* sparse kernel: P = attended pairs of the mask
                                          (``pattern_pairs``); strided/fixed with l ~ sqrt(n): P ~ n^1.5
    linear       8 n d^2 + 4 n d h + 4 n d   per token and head: phi(k) v^T and phi(q)^T S (2 h^2 each),
                                          z update and phi(q).z (2 h each)          (Katharopoulos eq. 20)
    ssm          see ``ssm_flops``: O(n d N), N the state size per channel

Activation memory in numbers (``attention_memory``; multiply by bytes per element), leading
terms only (``measure_scaling`` measures the real thing), besides the q, k, v and output tensors
(4 n d) that every variant holds:
    explicit     2 H n^2           scores and softmax weights, both materialised
    sdpa         0 (+ O(d) tiles)  fused kernels never store the n x n matrix (when they can run
                                   fused: on some back ends a boolean mask falls back to explicit)
    window       4 H n w + 4 n d   scores/weights of the (w x 2w) blocks; keys/values of blocks b-1, b
    linear       H n c + 2 H (n/c) h^2   chunked form: intra-chunk scores, chunk states (c = chunk)
    linear_cumsum  H n h^2         every prefix state S_i
    kv_cache     2 n d             inference: keys and values of all n tokens (per layer)
    linear_state H (h^2 + h)       inference: the RNN state (S, z), independent of n
    ssm_state    D N + D (k - 1)   inference: SSM state and the conv's last k-1 inputs (D = expand d)
"""

from __future__ import annotations

import inspect
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = [
    "LAYER_KINDS",
    "DecodingResult",
    "ScalingResult",
    "StreamingCost",
    "attention_flops",
    "attention_memory",
    "crossover_n",
    "fit_loglog_slope",
    "layer_builder",
    "measure_decoding",
    "measure_scaling",
    "measure_streaming",
    "pattern_pairs",
    "ssm_flops",
]


# ---------------------------------------------------------------------------------- formulas
def pattern_pairs(name: str, n: int, **params) -> int:
    """Attended (query, key) pairs of a mask pattern, counted row by row from closed forms.

    Independent of the mask code (tests compare the two). Per query i (0-based):
      causal        i + 1
      window w      min(i + 1, w)
      sinks s, w    min(i + 1, w) + max(0, min(s, i - w + 1))    (sinks outside the window)
      strided l     (min(i, l) + 1) + (floor(i / l) + 1) - (1 + [i >= l])   (|A1| + |A2| - overlap)
      fixed l, c    (i mod l) + 1 + c * floor(i / l)             (own block + summaries of earlier blocks)
      block_sparse b, g first global tokens, one local block:
                    i + 1 if i < g, else (i mod b) + 1 + min(g, b * floor(i / b))
    """
    i = np.arange(n)
    if name in ("causal", "full"):
        rows = i + 1
    elif name == "window":
        rows = np.minimum(i + 1, params["window"])
    elif name == "sinks":
        w, s = params["window"], params.get("sinks", 4)
        rows = np.minimum(i + 1, w) + np.maximum(0, np.minimum(s, i - w + 1))
    elif name == "strided":
        l = params["stride"]
        rows = (np.minimum(i, l) + 1) + (i // l + 1) - (1 + (i >= l))
    elif name == "fixed":
        l, c = params["stride"], params.get("c", 1)
        rows = i % l + 1 + c * (i // l)
    elif name == "block_sparse":
        b, g = params["block"], params.get("global_tokens", 1)
        if not isinstance(g, int) or params.get("local_blocks", 1) != 1:
            raise ValueError("pattern_pairs('block_sparse') covers g first global tokens and local_blocks=1 only")
        rows = np.where(i < g, i + 1, i % b + 1 + np.minimum(g, b * (i // b)))
    else:
        raise ValueError(f"unknown pattern {name!r}: choose causal, window, sinks, strided, fixed or block_sparse")
    return int(rows.sum())


def ssm_flops(n: int, d: int, d_state: int = 16, expand: int = 2, d_conv: int = 4, dt_rank: int | None = None) -> float:
    """Forward FLOPs of one selective-SSM (Mamba) layer on n tokens (``minilm.models.ssm.SelectiveSSM``).

    With D = expand * d and r = dt_rank, per token: in_proj 2 d (2D), conv 2 D k, x_proj 2 D (r + 2N),
    dt_proj 2 r D, out_proj 2 D d, and the scan 7 D N (exp(Delta A), A_bar h, Delta B x, the sum,
    C h as a multiply-add).
    """
    D = expand * d
    r = dt_rank if dt_rank is not None else math.ceil(d / 16)
    per_token = 4 * d * D + 2 * D * d_conv + 2 * D * (r + 2 * d_state) + 2 * r * D + 2 * D * d + 7 * D * d_state
    return float(n * per_token)


def attention_flops(variant: str, n: int, d: int, n_heads: int = 1, **params) -> float:
    """Forward FLOPs of one layer of ``variant`` on n tokens (formulas in the module docstring).

    variant: "full", "window" (window=), "linear", "ssm" (ssm_flops parameters), or a pattern for an
    ideal sparse kernel: "causal", "sinks", "strided", "fixed", "block_sparse" (their parameters).
    """
    if d % n_heads:
        raise ValueError(f"d={d} must be divisible by n_heads={n_heads}")
    proj = 8.0 * n * d * d
    if variant == "full":
        return proj + 4.0 * n * n * d
    if variant == "window":
        w = params["window"]
        return proj + 8.0 * math.ceil(n / w) * w * w * d
    if variant == "linear":
        h = d // n_heads
        return proj + 4.0 * n * d * h + 4.0 * n * d
    if variant == "ssm":
        return ssm_flops(n, d, **params)
    return proj + 4.0 * pattern_pairs(variant, n, **params) * d


def attention_memory(variant: str, n: int, d: int, n_heads: int = 1, bytes_per_element: int = 4, **params) -> float:
    """Memory in bytes of ``variant`` on n tokens (formulas in the module docstring).

    Activations ("explicit", "sdpa", "window", "linear", "linear_cumsum": q, k, v, out included)
    or inference state ("kv_cache", "linear_state", "ssm_state": d_state, expand, d_conv).
    """
    H, h = n_heads, d // n_heads
    qkvo = 4 * n * d
    if variant == "explicit":
        numbers = qkvo + 2 * H * n * n
    elif variant == "sdpa":
        numbers = qkvo
    elif variant == "window":
        w = params["window"]
        numbers = qkvo + 4 * H * n * w + 4 * n * d
    elif variant == "linear":
        c = params.get("chunk_size", 64)
        numbers = qkvo + H * n * c + 2 * H * math.ceil(n / c) * h * h
    elif variant == "linear_cumsum":
        numbers = qkvo + H * n * h * h
    elif variant == "kv_cache":
        numbers = 2 * n * d
    elif variant == "linear_state":
        numbers = H * (h * h + h)
    elif variant == "ssm_state":
        D = params.get("expand", 2) * d
        numbers = D * params.get("d_state", 16) + D * (params.get("d_conv", 4) - 1)
    else:
        raise ValueError(
            f"unknown variant {variant!r}: choose explicit, sdpa, window, linear, linear_cumsum, "
            "kv_cache, linear_state or ssm_state"
        )
    return float(numbers * bytes_per_element)


# ------------------------------------------------------------------------------- measurement
def fit_loglog_slope(ns: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit of log y = slope * log n + intercept; returns (slope, intercept).

    y ~ n^slope: slope 2 for quadratic cost, 1 for linear. Needs >= 2 points with y > 0.
    """
    x, y = np.log(np.asarray(ns, dtype=float)), np.asarray(ys, dtype=float)
    if x.size < 2 or x.size != y.size or np.any(y <= 0):
        raise ValueError(f"need >= 2 positive (n, y) points of equal count, got {x.size} n and {y.size} y")
    slope, intercept = np.polyfit(x, np.log(y), 1)
    return float(slope), float(intercept)


@dataclass
class ScalingResult:
    """Timings and peak memory over sequence lengths, from ``measure_scaling``."""

    ns: list[int]
    seconds: list[float]  # median wall time per call
    peak_bytes: list[int | None]  # peak memory allocated during one call, above what was live before
    memory_source: str  # how peak_bytes was measured
    all_seconds: list[list[float]] = field(default_factory=list)

    def time_slope(self, min_n: int = 0, stat: str = "median") -> float:
        """log-log slope of time vs n, fitted on n >= min_n (small n is dominated by overheads).

        stat="median" (default) or "min": the fastest call, less sensitive to other programs
        competing for the CPU."""
        if stat not in ("median", "min"):
            raise ValueError(f"stat must be 'median' or 'min', got {stat!r}")
        times = self.seconds if stat == "median" else [min(ts) for ts in self.all_seconds]
        pts = [(n, t) for n, t in zip(self.ns, times) if n >= min_n]
        return fit_loglog_slope([p[0] for p in pts], [p[1] for p in pts])[0]

    def memory_slope(self, min_n: int = 0) -> float:
        """log-log slope of peak memory vs n, fitted on n >= min_n."""
        pts = [(n, m) for n, m in zip(self.ns, self.peak_bytes) if n >= min_n and m]
        return fit_loglog_slope([p[0] for p in pts], [p[1] for p in pts])[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _cpu_peak_bytes(run: Callable[[], None]) -> int:
    """Peak CPU bytes allocated by ``run`` above the level at its start, from the profiler's
    allocation records (``profile_memory=True``: every allocation and free, with the allocator's
    running total). Exact for tensors allocated by PyTorch; memory held by libraries outside
    PyTorch's allocator (e.g. oneDNN scratch space) is not seen."""
    from torch.profiler import ProfilerActivity, profile

    # Kineto (the profiler's back end) logs two "USDT ... profiler_start/stop" lines per use at its
    # default level, which would flood a notebook's output; level 6 keeps it quiet. It reads the
    # variable when first started, and an explicit setting by the user wins.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    records = []

    def walk(nodes):
        for node in nodes:
            extra = node.extra_fields
            if hasattr(extra, "total_allocated") and hasattr(extra, "alloc_size"):
                records.append((node.start_time_ns, extra.alloc_size, extra.total_allocated))
            walk(node.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    if not records:
        return 0
    records.sort()
    start = records[0][2] - records[0][1]  # total before the first recorded allocation
    return max(0, max(total for _, _, total in records) - start)


def measure_scaling(
    fn_builder: Callable[[int], Callable[[], torch.Tensor]],
    ns: Sequence[int],
    backward: bool = False,
    repeats: int = 5,
    warmup: int = 1,
    measure_memory: bool = True,
    progress: bool = True,
) -> ScalingResult:
    """Time ``fn_builder(n)()`` for each n in ``ns`` (median of ``repeats``) and record peak memory.

    ``fn_builder(n)`` builds the inputs for length n and returns a zero-argument function that
    runs the variant and returns a tensor. With ``backward=True`` each timed call also runs
    ``out.sum().backward()`` (build inputs or modules with ``requires_grad`` for that).
    Peak memory of one extra call, above what was allocated before it:
      CUDA: ``torch.cuda.max_memory_allocated`` (after ``reset_peak_memory_stats``);
      CPU: the torch profiler's allocation records (see ``_cpu_peak_bytes``);
      MPS: not measured (None).
    Time on CPU depends on the thread count: set ``torch.set_num_threads`` and report it.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    ns = [int(n) for n in ns]
    medians, peaks, raw = [], [], []
    source = "not measured"
    for n in tqdm(ns, desc="measure", disable=not progress):
        fn = fn_builder(n)

        def run(fn=fn):
            out = fn()
            if backward:
                out.float().sum().backward()
            return out

        device = torch.device("cpu")
        for _ in range(warmup):
            device = run().device
            _sync(device)
        times = []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            device = run().device
            _sync(device)
            times.append(time.perf_counter() - t0)
        medians.append(statistics.median(times))
        raw.append(times)
        peak = None
        if measure_memory and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            run()
            _sync(device)
            peak, source = torch.cuda.max_memory_allocated(device) - base, "torch.cuda.max_memory_allocated"
        elif measure_memory and device.type == "cpu":
            peak, source = _cpu_peak_bytes(run), "torch.profiler allocation records (CPU)"
        peaks.append(peak)
        del fn
    return ScalingResult(ns, medians, peaks, source, raw)


def crossover_n(
    a: ScalingResult | tuple[Sequence[float], Sequence[float]],
    b: ScalingResult | tuple[Sequence[float], Sequence[float]],
    extrapolate: bool = False,
) -> float | None:
    """The n beyond which ``a`` costs more than ``b`` (e.g. a = full attention, b = linear).

    Takes two ``ScalingResult`` (their median times) or (ns, values) pairs over the same ns. Finds
    the last measured n where a <= b and interpolates linearly in log-log space to the next point,
    where a > b. If a <= b over the whole range: None, or with ``extrapolate=True`` where the
    fitted power laws a ~ c_a n^s_a and b ~ c_b n^s_b meet. If a > b already at the first n: None
    (or the extrapolated point below the range).
    """
    ns_a, ya = (a.ns, a.seconds) if isinstance(a, ScalingResult) else a
    ns_b, yb = (b.ns, b.seconds) if isinstance(b, ScalingResult) else b
    if list(ns_a) != list(ns_b):
        raise ValueError("crossover_n needs both curves measured at the same ns")
    x = np.log(np.asarray(ns_a, dtype=float))
    r = np.log(np.asarray(ya, dtype=float)) - np.log(np.asarray(yb, dtype=float))  # > 0: a costs more
    below = np.nonzero(r <= 0)[0]
    if below.size and below[-1] < r.size - 1:
        k = int(below[-1])
        frac = -r[k] / (r[k + 1] - r[k])
        return float(np.exp(x[k] + frac * (x[k + 1] - x[k])))
    if not extrapolate:
        return None
    sa, ca = fit_loglog_slope(ns_a, ya)
    sb, cb = fit_loglog_slope(ns_b, yb)
    if sa == sb:
        return None
    return float(np.exp((cb - ca) / (sa - sb)))


# ------------------------------------------------------------------- layers and generation
LAYER_KINDS = ("explicit", "sdpa", "window", "linear", "rwkv", "ssm")


def layer_builder(
    kind: str,
    d_model: int = 64,
    n_heads: int = 4,
    window: int = 64,
    d_state: int = 16,
    device: str | torch.device = "cpu",
    backward: bool = False,
    seed: int = 0,
) -> Callable[[int], Callable[[], torch.Tensor]]:
    """A ``fn_builder`` for ``measure_scaling``: one sequence-mixing layer of ``kind`` on a random
    (1, n, d_model) input, so every variant is timed under the same conditions.

    kind: "explicit" or "sdpa" (full softmax attention, ``SoftmaxAttention``), "window" (banded
    kernel, ``window`` keys per query), "linear" (chunked linear attention), "rwkv" (RWKV-4 time
    mixing, chunked parallel WKV) or "ssm" (the selective SSM layer: a Python-loop scan, slow).
    With ``backward=True`` the input requires grad, for ``measure_scaling(..., backward=True)``.
    """
    from minilm.attention.kernels import SoftmaxAttention
    from minilm.attention.linear import LinearAttention
    from minilm.device import resolve_device

    if kind not in LAYER_KINDS:
        raise ValueError(f"unknown layer kind {kind!r}: choose one of {', '.join(LAYER_KINDS)}")
    dev = resolve_device(device)

    def build(n: int) -> Callable[[], torch.Tensor]:
        torch.manual_seed(seed)
        if kind == "linear":
            layer = LinearAttention(d_model, n_heads, method="chunked", chunk_size=64)
        elif kind == "rwkv":
            layer = _RWKVTimeMix(d_model)
        elif kind == "ssm":
            from minilm.models.ssm import SelectiveSSM

            layer = SelectiveSSM(d_model, d_state=d_state)
        else:
            layer = SoftmaxAttention(d_model, n_heads, impl=kind, window=window if kind == "window" else None)
        layer.to(dev)
        x = torch.randn(1, n, d_model, device=dev, requires_grad=backward)  # (1, n, d_model)
        if backward:
            return lambda: layer(x)

        def run() -> torch.Tensor:
            with torch.no_grad():
                return layer(x)

        return run

    return build


class _RWKVTimeMix(torch.nn.Module):
    """RWKV-4 time mixing alone, x (B, T, C) -> (B, T, C), its state dropped: the layer to time."""

    def __init__(self, d_model: int):
        super().__init__()
        from minilm.models.rwkv import RWKVConfig, TimeMix

        self.mix = TimeMix(RWKVConfig(vocab_size=1, n_layers=1, d_model=d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x, None, "parallel")[0]


@dataclass
class DecodingResult:
    """Per-token generation cost after prompts of several lengths, from ``measure_decoding``."""

    lengths: list[int]  # prompt (context) lengths
    seconds_per_token: list[float]  # median over repeats of the time of one new token
    state_bytes: list[int]  # memory the model keeps between tokens: KV cache or recurrent state
    model: str  # the model's kind ("gpt", "rwkv", ...)
    all_seconds: list[list[float]] = field(default_factory=list)  # per length: each repeat's time per token

    @property
    def fastest_per_token(self) -> list[float]:
        """The fastest repeat per length: less sensitive than the median to other programs on the CPU."""
        return [min(ts) for ts in self.all_seconds]


def _state_nbytes(state) -> int:
    """Bytes of the tensors in a recurrent state (nested tuples/lists of tensors or objects with nbytes())."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if hasattr(state, "nbytes") and callable(state.nbytes):
        return int(state.nbytes())
    if isinstance(state, (list, tuple)):
        return sum(_state_nbytes(s) for s in state)
    return 0


def _prefill(model, prompt: torch.Tensor, chunk: int = 1024, steps: int = 0):
    """Read ``prompt`` (1, L) once; return (step(token (1, 1)) -> logits (1, V), memory-in-bytes function).

    A GPT's KV cache is allocated once for the prompt and ``steps`` more tokens, so no timed step
    pays for growing it."""
    from minilm.models.gpt import GPT
    from minilm.models.kv_cache import KVCache

    if isinstance(model, GPT):
        cache = KVCache(model.config.n_layers, max_length=prompt.size(1) + steps)
        for s in range(0, prompt.size(1), chunk):  # chunks bound the (T, L) score matrices
            model(prompt[:, s : s + chunk], cache=cache)
        return (lambda tok: model(tok, cache=cache)[:, -1]), cache.nbytes
    extra = {"mode": "recurrent"} if model.model_type == "rwkv" else {}
    _, state = model(prompt, return_state=True)
    holder = [state]

    def step(tok: torch.Tensor) -> torch.Tensor:
        logits, holder[0] = model(tok, state=holder[0], return_state=True, **extra)
        return logits[:, -1]

    return step, (lambda: _state_nbytes(holder[0]))


@torch.no_grad()
def measure_decoding(
    model,
    lengths: Sequence[int],
    new_tokens: int = 8,
    repeats: int = 3,
    seed: int = 0,
    progress: bool = True,
) -> DecodingResult:
    """Time generation one token at a time after a random prompt of each length in ``lengths``.

    The prompt is read once (GPT: into a ``KVCache`` that keeps every token; RWKV, LSTM, SSM: into
    their fixed-size state); then ``new_tokens`` greedy steps are timed, ``repeats`` times, and the
    median time per token is kept. ``state_bytes`` is what the model holds between tokens after
    the prompt: the KV cache grows as 2 * n_layers * L * d_model numbers, a recurrent state not
    at all. A GPT is run past its training context here (RoPE accepts any position): only the cost
    is measured, not the quality.
    """
    from minilm.models.gpt import GPT

    lengths = [int(n) for n in lengths]
    if not lengths or min(lengths) < 1 or new_tokens < 1 or repeats < 1:
        raise ValueError(f"need lengths >= 1, new_tokens >= 1 and repeats >= 1, got {lengths}, {new_tokens}, {repeats}")
    if not isinstance(model, GPT) and "return_state" not in inspect.signature(model.forward).parameters:
        raise ValueError(
            f"measure_decoding needs a GPT (KV cache) or a recurrent model with forward(idx, state=..., "
            f"return_state=True) (RWKV, LSTMLM, SSMLM), got {type(model).__name__}"
        )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    secs, mems, raw = [], [], []
    try:
        for n in tqdm(lengths, desc=f"decode {type(model).__name__}", disable=not progress):
            prompt = torch.randint(0, model.vocab_size, (1, n), generator=g).to(device)
            step, nbytes = _prefill(model, prompt, steps=new_tokens * repeats)
            mems.append(int(nbytes()))
            tok = prompt[:, -1:]
            times = []
            for _ in range(repeats):
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(new_tokens):
                    tok = step(tok).argmax(dim=-1, keepdim=True)  # (1, 1) greedy
                _sync(device)
                times.append((time.perf_counter() - t0) / new_tokens)
            secs.append(statistics.median(times))
            raw.append(times)
    finally:
        model.train(was_training)
    return DecodingResult(lengths, secs, mems, getattr(model, "model_type", type(model).__name__), raw)


@dataclass
class StreamingCost:
    """Cost of streaming tokens one at a time through a GPT with one cache policy (``measure_streaming``)."""

    policy: str
    tokens: list[int]  # tokens streamed at the end of each block
    ms_per_token: list[float]  # median time of one token within the block
    cache_bytes: list[int]  # ``cache.nbytes()`` (the kept tokens) at the end of each block
    allocated_bytes: list[int]  # ``cache.allocated_bytes()`` (its buffers) at the end of each block


@torch.no_grad()
def measure_streaming(model, tokens: torch.Tensor | np.ndarray, policy: str = "sinks", window: int | None = None,
                      sinks: int = 4, block: int = 256, progress: bool = True) -> StreamingCost:
    """Feed ``tokens`` (n,) one at a time through a GPT with a ``make_cache(policy, ...)`` cache and
    time every step: the median per block of ``block`` tokens, and the cache's memory after it.

    A keep-all cache ("full") writes into preallocated buffers but each token attends over all
    earlier ones: its time per token grows with n. The ring-buffer caches ("window", "sinks") hold
    a fixed number of keys, so time and memory per token stay flat however long the stream
    (StreamingLLM, Xiao et al. 2023). Only the cost is measured: a GPT run past its training
    context is fine here.
    """
    from minilm.attention.cache import make_cache

    ids = torch.as_tensor(np.asarray(tokens), dtype=torch.long).flatten()
    if not isinstance(block, int) or block < 1 or ids.numel() < block:
        raise ValueError(f"need block >= 1 and at least one block of tokens, got block={block!r}, {ids.numel()} tokens")
    device = next(model.parameters()).device
    ids = ids.to(device)
    cache = make_cache(policy, model.config.n_layers, window=window, sinks=sinks)
    was_training = model.training
    model.eval()
    result = StreamingCost(policy, [], [], [], [])
    times: list[float] = []
    try:
        for t in tqdm(range(ids.numel() - ids.numel() % block), desc=f"stream ({policy})", disable=not progress):
            _sync(device)
            t0 = time.perf_counter()
            model(ids[None, t : t + 1], cache=cache)
            _sync(device)
            times.append(time.perf_counter() - t0)
            if len(times) == block:
                result.tokens.append(t + 1)
                result.ms_per_token.append(1e3 * statistics.median(times))
                result.cache_bytes.append(cache.nbytes())
                result.allocated_bytes.append(cache.allocated_bytes())
                times = []
    finally:
        model.train(was_training)
    return result
