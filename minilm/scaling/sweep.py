"""A scaling sweep: GPTs of several sizes, each trained on several token budgets, on a synthetic
language whose entropy rate (the irreducible loss E) is known exactly. Every finished point is
cached in a JSON file under the hash of its configuration, so a rerun (or a crashed notebook, or
a re-submitted cluster sweep) only trains what is missing.

The runs go through an executor (``minilm.executors``): this process by default, local worker
processes (one per GPU), or SLURM jobs through submitit. A run that fails is reported with the
others kept (``SweepError``); its configuration is simply missing from the cache next time.

Each run follows Hoffmann et al. (2022, sec. 3.1): a cosine schedule whose length matches the
run's own token budget (a schedule longer than the run overestimates its final loss), decaying
to 10% of the peak. N is the non-embedding parameter count (Kaplan et al., 2020) and C the
model's own training-FLOP count (``GPT.flops_per_token()`` times the tokens seen).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from minilm.atomic import atomic_write_text
from minilm.data.batching import iterate_windows
from minilm.data.languages import LANGUAGES, MarkovLanguage
from minilm.device import resolve_device
from minilm.executors import Executor, LocalExecutor
from minilm.models.gpt import GPT, GPTConfig
from minilm.schedules import cosine
from minilm.train import train

from .isoflop import TrainingCurve
from .runs import ScalingRuns

CACHE_FORMAT = "minilm-sweep-v1"

# Fast mode: 5 sizes x 3 budgets = 15 runs, about a minute on 2 CPU cores.
FAST_SIZES: tuple[dict[str, int], ...] = (
    {"n_layers": 1, "n_heads": 2, "d_model": 8},
    {"n_layers": 1, "n_heads": 2, "d_model": 16},
    {"n_layers": 2, "n_heads": 2, "d_model": 24},
    {"n_layers": 2, "n_heads": 4, "d_model": 40},
    {"n_layers": 2, "n_heads": 4, "d_model": 64},
)
FAST_TOKEN_BUDGETS: tuple[int, ...] = (65_536, 196_608, 589_824)

# Full mode (a GPU, or patience): 7 sizes x 6 budgets = 42 runs.
FULL_SIZES: tuple[dict[str, int], ...] = FAST_SIZES + (
    {"n_layers": 4, "n_heads": 4, "d_model": 96},
    {"n_layers": 4, "n_heads": 8, "d_model": 128},
)
FULL_TOKEN_BUDGETS: tuple[int, ...] = (65_536, 196_608, 589_824, 1_769_472, 5_308_416, 15_925_248)


def fast_language() -> MarkovLanguage:
    """The default language: a random first-order Markov chain over 128 tokens (Dirichlet(0.05)
    rows), entropy rate about 2.38 nats/token. Tiny models learn it smoothly within the fast
    budgets, with no sudden "aha" phase that a power law could not describe (the topic mixture
    ``ZipfMarkovMixture`` shows one when models first learn to read the topic marker)."""
    return MarkovLanguage(vocab_size=128, order=1, concentration=0.05, seed=0)


@dataclass
class SweepResult:
    """Every point of the grid (cached or freshly trained), in grid order: sizes outer for token
    budgets, FLOP budgets outer for an IsoFLOP design."""

    points: list[dict[str, Any]]
    n_trained: int  # points trained by this call
    n_cached: int  # points read from the cache
    entropy_rate: float  # exact entropy rate h of the language (nats/token): the true E
    val_entropy: float | None  # -mean log P(x | full past) on the validation tokens (h up to sampling noise)
    wall_time_s: float

    def runs(self) -> ScalingRuns:
        """(N, D, loss) of every point, N = non-embedding parameters, D = tokens seen; the extra
        columns hold the total parameter count and the model's own FLOP count."""
        p = self.points
        return ScalingRuns(
            N=np.array([q["n_params"] for q in p], dtype=float),
            D=np.array([q["tokens"] for q in p], dtype=float),
            loss=np.array([q["loss"] for q in p], dtype=float),
            extra={"n_params_total": [str(q["n_params_total"]) for q in p],
                   "flops": [repr(q["flops"]) for q in p],
                   "flop_budget": [repr(q["flop_budget"]) if q.get("flop_budget") else "" for q in p]},
        )

    def curves(self) -> list[TrainingCurve]:
        """Smoothed training-loss curves of every run (for Approach 1, ``fit_envelope``)."""
        return [TrainingCurve(q["n_params"], np.array(q["curve_tokens"], dtype=float),
                              np.array(q["curve_loss"], dtype=float)) for q in self.points]


class SweepError(RuntimeError):
    """Some runs of a sweep failed. The others finished and are cached (``result`` holds them);
    ``failures`` has one dict per failed run: size, token_budget, key, error and log."""

    def __init__(self, failures: list[dict], result: SweepResult, cache_path: Path | None):
        self.failures, self.result = failures, result
        lines = [f"  {f['size']} x {f['token_budget']:,} tokens: {f['error']}" + (f" (log: {f['log']})"
                 if f.get("log") and "\n" not in f["log"] else "") for f in failures]
        kept = (f"; the {len(result.points)} finished runs are cached in {cache_path}: run the sweep again to retry "
                "only the failed ones") if cache_path else f"; {len(result.points)} runs finished"
        super().__init__(f"{len(failures)} of {len(failures) + len(result.points)} sweep runs failed{kept}:\n"
                         + "\n".join(lines))


def _atomic_write_json(obj: Any, path: Path) -> None:
    """Write JSON to a temporary file in the same folder, then rename: never a half-written cache."""
    atomic_write_text(path, json.dumps(obj, indent=1))


def _read_cache(path: Path | None) -> dict[str, dict]:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"sweep cache {path} is not valid JSON ({err}); delete it to start over") from None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        raise ValueError(f"{path} is not a minilm sweep cache (format {CACHE_FORMAT}); choose another cache_path")
    return data["points"]


def _runs_dir(cache_file: Path | None) -> Path | None:
    """Where each run also drops its record (``<cache>.runs/<key>.json``): a job that finishes after
    the sweep that submitted it was interrupted is not lost; the next sweep merges it."""
    return None if cache_file is None else cache_file.with_name(cache_file.name + ".runs")


def _run_files(runs_dir: Path | None) -> dict[str, Path]:
    if runs_dir is None or not runs_dir.is_dir():
        return {}
    return {p.stem: p for p in sorted(runs_dir.glob("*.json"))}


def _read_run_files(files: dict[str, Path]) -> dict[str, dict]:
    records = {}
    for key, path in files.items():
        try:
            records[key] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):  # being written by a job right now: it is atomic, so next time
            continue
    return records


@torch.no_grad()
def score_loss(model: torch.nn.Module, tokens: np.ndarray, context_length: int, score_from: int,
               device: torch.device, batch_size: int = 64) -> float:
    """Mean next-token loss over non-overlapping windows, counting only positions >= score_from.

    Early positions of a window lack context, so even a perfect model pays more than the entropy
    rate there. Once a position sees a whole document (or the Markov order), the best possible
    loss is exactly h, which makes the fitted E comparable with the true one.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in iterate_windows(tokens, context_length, batch_size):  # each (b, T)
        logits = model(x.to(device))  # (b, T, V)
        nll = F.cross_entropy(logits.float().transpose(1, 2), y.to(device), reduction="none")  # (b, T)
        total += float(nll[:, score_from:].sum())
        count += nll[:, score_from:].numel()
    model.train(was_training)
    return total / count


def _smooth_curve(tokens: Sequence[int], losses: Sequence[float], n_points: int) -> tuple[list[float], list[float]]:
    """Block means of the per-step training loss: n_points (tokens at block end, mean loss)."""
    tokens, losses = np.asarray(tokens, dtype=float), np.asarray(losses, dtype=float)
    edges = np.unique(np.linspace(0, len(losses), min(n_points, len(losses)) + 1).astype(int))
    return ([float(tokens[e - 1]) for e in edges[1:]],
            [float(losses[s:e].mean()) for s, e in zip(edges[:-1], edges[1:])])


_DATA: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # the last sweep's samples, kept for its next run


def _sweep_data(lang, settings: dict, pool_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(training pool, validation sample) of a sweep, sampled once per process and reused by its runs."""
    key = (settings["language"], settings["seed"], settings["val_tokens"], pool_tokens)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = (lang.sample(pool_tokens, seed=settings["seed"]),
                      lang.sample(settings["val_tokens"] + 1, seed=settings["seed"] + 1))
    return _DATA[key]


def _train_point(job: dict) -> dict:
    """Train and score one run of a sweep; returns its cache record. Runs wherever the executor
    puts it (this process, a worker, a cluster job): everything it needs is in ``job``."""
    s, size, budget = job["settings"], job["size"], job["token_budget"]
    lang, T, B = job["language"], s["context_length"], s["batch_size"]
    dev = resolve_device(job["device"])
    train_pool, val = _sweep_data(lang, s, job["pool_tokens"])
    torch.manual_seed(s["seed"])
    model = GPT(GPTConfig(vocab_size=lang.vocab_size, context_length=T, **size))
    steps = max(1, round(budget / (B * T)))
    schedule = cosine(steps, warmup_steps=max(1, int(s["warmup_fraction"] * steps)),
                      final_fraction=s["final_lr_fraction"])
    t_run = time.perf_counter()
    history = train(model, train_pool, None, steps=steps, batch_size=B, context_length=T, lr=s["lr"],
                    schedule=schedule, device=dev, seed=s["seed"], progress=False)
    loss = score_loss(model, val, T, s["score_from"], dev)
    if not math.isfinite(loss):
        raise RuntimeError(f"run {size} x {budget} tokens ended with loss {loss}; lower lr")
    tokens = steps * B * T
    curve_tokens, curve_loss = _smooth_curve(history["tokens"], history["train_loss"], s["curve_points"])
    record = {
        "size": size, "token_budget": budget, **s, "key": job["key"],
        "n_params": model.num_params(non_embedding=True), "n_params_total": model.num_params(), "tokens": tokens,
        "steps": steps, "flops": model.flops_per_token() * tokens,
        "flops_6ND": 6.0 * model.num_params(non_embedding=True) * tokens,
        "loss": loss, "final_train_loss": float(np.mean(history["train_loss"][-max(1, steps // 20):])),
        "curve_tokens": curve_tokens, "curve_loss": curve_loss,
        "train_time_s": time.perf_counter() - t_run, "device": str(dev),
    }
    if job["runs_dir"] is not None:
        _atomic_write_json(record, Path(job["runs_dir"]) / f"{job['key']}.json")
    return record


def _language(language) -> Any:
    if language is None:
        return fast_language()
    if isinstance(language, str):
        if language not in LANGUAGES:
            raise ValueError(f"unknown language {language!r}: choose one of {list(LANGUAGES)} or pass an object")
        return LANGUAGES[language]()
    for attr in ("sample", "entropy_rate", "vocab_size"):
        if not hasattr(language, attr):
            raise ValueError(f"language must have sample(), entropy_rate() and vocab_size; it lacks {attr}")
    return language


def run_sweep(
    sizes: Sequence[Mapping[str, int]] = FAST_SIZES,
    token_budgets: Sequence[int] | None = FAST_TOKEN_BUDGETS,
    language=None,
    cache_path: str | Path | None = None,
    *,
    seed: int = 0,
    device: str | torch.device = "auto",
    context_length: int = 32,
    batch_size: int = 32,
    lr: float = 1e-2,
    warmup_fraction: float = 0.05,
    final_lr_fraction: float = 0.1,
    score_from: int | None = None,
    val_tokens: int = 32_768,
    curve_points: int = 32,
    flop_budgets: Sequence[float] | None = None,
    progress: bool = True,
    executor: Executor | None = None,
) -> SweepResult:
    """Train a GPT for every (size, token budget) pair and return the final losses.

    Args:
        sizes: GPTConfig fields for each size (n_layers, n_heads, d_model, ...); vocab_size and
            context_length are set by the sweep.
        token_budgets: training tokens D of each run (rounded to whole steps of
            batch_size * context_length tokens).
        flop_budgets: instead of token budgets, an IsoFLOP design (Hoffmann et al.'s Approach 2):
            every size is trained on D = C / (6 N) tokens for each budget C, skipping sizes whose
            D would be under one step. Each point records its ``flop_budget`` for ``fit_isoflop``.
        language: a synthetic language object (``minilm.data.languages``), a name in LANGUAGES,
            or None for ``fast_language()``.
        cache_path: JSON file of finished points; a point whose size, budget, language and
            settings match a cached one is not trained again. None: no cache.
        seed: seeds the data samples, each model's initialisation and its batches.
        score_from: validation loss counts positions >= score_from of each window (default
            context_length // 2, which must exceed the document length or Markov order).
        val_tokens: held-out tokens for the final loss (the same for every run).
        curve_points: points kept of each smoothed training curve.
        executor: where the runs train (``minilm.executors``): None is ``LocalExecutor()`` -- this
            process, or one worker process per GPU when several are visible; ``SubmititExecutor``
            sends each run to a SLURM job. Out of this process, ``cache_path`` must be a path the
            workers see (each run also writes ``<cache_path>.runs/<key>.json``, merged next time).
    Returns:
        SweepResult; ``.runs()`` gives (N, D, loss) for the fitters, ``.curves()`` the curves.
    Raises:
        SweepError: after every run has ended, if some failed; the finished ones are cached.
    """
    t0 = time.perf_counter()
    lang = _language(language)
    sizes = [dict(s) for s in sizes]
    tokens_per_step = batch_size * context_length
    if (token_budgets is None) == (flop_budgets is None):
        raise ValueError("give either token_budgets or flop_budgets (set the other to None)")
    if not sizes or not (token_budgets or flop_budgets):
        raise ValueError("run_sweep needs at least one size and one token (or FLOP) budget")
    if token_budgets is not None and any(d < tokens_per_step for d in token_budgets):
        raise ValueError(f"every token budget must be >= one step of batch_size * context_length = {tokens_per_step}")
    score_from = context_length // 2 if score_from is None else int(score_from)
    if not 0 <= score_from < context_length:
        raise ValueError(f"score_from must be in [0, context_length), got {score_from}")
    # A position p sees p + 1 tokens: enough for order k when p >= k - 1, and for a whole document
    # of ZipfMarkovMixture (marker + doc_length tokens) when p >= doc_length.
    context_needed = getattr(lang, "doc_length", getattr(lang, "order", 0))
    if context_needed > score_from:
        warnings.warn(f"score_from={score_from} does not exceed the language's document length / order "
                      f"({context_needed}): scored positions may lack context, so the loss floor sits above "
                      "the entropy rate; raise context_length", stacklevel=2)
    # Non-embedding parameter count of each size (building a model also checks the config).
    n_params = [GPT(GPTConfig(vocab_size=lang.vocab_size, context_length=context_length, **s)).num_params(True)
                for s in sizes]
    if token_budgets is not None:
        grid = [(s, int(d), None) for s in sizes for d in token_budgets]  # (size, tokens, FLOP budget)
    else:
        grid = [(s, int(round(C / (6 * n) / tokens_per_step)) * tokens_per_step, float(C))
                for C in flop_budgets for s, n in zip(sizes, n_params) if C / (6 * n) >= tokens_per_step]
        if not grid:
            raise ValueError("every FLOP budget is too small for one training step of every size")
    h = float(lang.entropy_rate())
    settings = {
        "language": f"{type(lang).__name__}(vocab_size={lang.vocab_size}, entropy_rate={h!r})",
        "seed": seed, "context_length": context_length, "batch_size": batch_size, "lr": lr,
        "warmup_fraction": warmup_fraction, "final_lr_fraction": final_lr_fraction,
        "score_from": score_from, "val_tokens": val_tokens, "curve_points": curve_points,
    }
    if executor is None:
        executor = LocalExecutor()
    elif not callable(getattr(executor, "run", None)):
        raise ValueError(f"executor must have a run(fn, jobs) method (minilm.executors), got {executor!r}")
    cache_file = Path(cache_path).resolve() if cache_path is not None else None
    runs_dir = _runs_dir(cache_file)
    cache = _read_cache(cache_file)
    run_files = _run_files(runs_dir)
    cache.update(_read_run_files(run_files))  # runs that finished after their sweep was interrupted

    # The validation sample is the same for every run (and gives the sample's own entropy). One pool of
    # training data serves all runs: twice the largest budget, so random windows are almost all fresh
    # (scaling laws assume no repeated data); each process that trains samples it once.
    val = lang.sample(val_tokens + 1, seed=seed + 1)
    val_entropy = float(-np.mean(lang.log_prob(val))) if hasattr(lang, "log_prob") else None
    pool_tokens = 2 * max(d for _, d, _ in grid) + context_length + 1
    # Local runs get the resolved device; a job elsewhere resolves "auto" where it runs (a cluster's GPU).
    job_device = resolve_device(device) if isinstance(executor, LocalExecutor) and executor.workers == 1 else device

    points: list[dict | None] = [None] * len(grid)
    todo: dict[str, list[int]] = {}  # configuration hash -> the grid entries it serves (an IsoFLOP grid can repeat one)
    jobs: list[dict] = []
    for i, (size, budget, _) in enumerate(grid):
        key_fields = {"size": size, "token_budget": budget, **settings}
        key = hashlib.sha1(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:16]
        if key in cache:
            points[i] = cache[key]
        elif key in todo:
            todo[key].append(i)
        else:
            todo[key] = [i]
            jobs.append({"key": key, "size": size, "token_budget": budget, "settings": settings, "language": lang,
                         "pool_tokens": pool_tokens, "device": job_device,
                         "runs_dir": str(runs_dir) if runs_dir is not None else None})
    if cache_file is not None and run_files:
        _atomic_write_json({"format": CACHE_FORMAT, "points": cache}, cache_file)

    n_trained, failures = 0, []
    bar = tqdm(total=len(grid), initial=len(grid) - sum(map(len, todo.values())), desc="scaling sweep",
               disable=not progress)
    for outcome in executor.run(_train_point, jobs):
        job = jobs[outcome.index]
        if outcome.ok:
            cache[job["key"]] = outcome.result
            for i in todo[job["key"]]:
                points[i] = outcome.result
            n_trained += 1
            if cache_file is not None:
                _atomic_write_json({"format": CACHE_FORMAT, "points": cache}, cache_file)
        else:
            failures.append({"size": job["size"], "token_budget": job["token_budget"], "key": job["key"],
                             "error": outcome.error, "log": outcome.log})
        bar.update(len(todo[job["key"]]))
        bar.set_postfix(trained=n_trained, failed=len(failures))
    bar.close()
    _DATA.clear()  # this process's copy of the sweep's data is not needed any more
    for path in run_files.values():  # merged into the cache above: no longer needed
        path.unlink(missing_ok=True)
    if runs_dir is not None and runs_dir.is_dir():
        for job in jobs:
            if job["key"] in cache:
                (runs_dir / f"{job['key']}.json").unlink(missing_ok=True)
        if not any(runs_dir.iterdir()):
            runs_dir.rmdir()

    done = [{**p, "flop_budget": flop_budget} for p, (_, _, flop_budget) in zip(points, grid) if p is not None]
    result = SweepResult(points=done, n_trained=n_trained, n_cached=len(done) - n_trained, entropy_rate=h,
                         val_entropy=val_entropy, wall_time_s=time.perf_counter() - t0)
    if failures:
        raise SweepError(failures, result, cache_file)
    return result
