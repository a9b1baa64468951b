"""Hyperparameter experiments at small scale (talk section 6, lab 04): schedules, branching, sweeps.

MiniCPM (Hu et al. 2024) and Tensor Programs V (Yang et al. 2022) settle hyperparameters on small
"wind tunnel" models and carry them to large ones. These are the small experiments, on a GPT and a
synthetic language whose entropy rate is known (``fast_language``, about 2.38 nats/token):

- ``train_gpt``: one run under a given learning-rate schedule, scored on held-out tokens.
- ``branch_wsd``: one warmup-stable run, checkpointed in its stable phase, each checkpoint decayed
  briefly (``minilm.schedules.wsd_branch``): a loss-vs-length curve for the price of one run plus
  the decays (MiniCPM sec. 4.3), instead of one full cosine run per length.
- ``lr_sweep`` / ``best_lr``: final loss over (parametrization, width, seed, learning rate) and the
  optimum of each curve, to see whether the best learning rate moves with width (SP) or not (μP).
- ``batch_lr_grid``: final loss over (batch size, learning rate) at a fixed token budget, plus
  each run's loss curve to read off how many steps and tokens a target loss takes.

Every run is seeded (initialisation and batches), trains with bf16 autocast *off* so that a CPU,
CUDA and MPS run measure the same thing up to float32 rounding, and is scored on every window of
the validation tokens (``score_loss``), so differences between runs are not sampling noise.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minilm.device import resolve_device
from minilm.executors import Executor, LocalExecutor
from minilm.models.gpt import GPT, GPTConfig
from minilm.schedules import Schedule, constant, cosine, wsd_branch
from minilm.train import TrainingDivergedError, train

from .sweep import fast_language, score_loss


@dataclass
class WindTunnelData:
    """Training and validation tokens of ``fast_language`` and what a model needs to know of them."""

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    entropy_rate: float  # nats/token: the loss no model can beat


def wind_tunnel_data(seed: int = 0, n_train: int = 500_000, n_val: int = 16_384) -> WindTunnelData:
    """Tokens of ``fast_language()`` (a Markov chain over 128 tokens, about 2.38 nats/token):
    ``n_train`` training tokens drawn with ``seed``, ``n_val`` validation tokens with seed + 1."""
    lang = fast_language()
    return WindTunnelData(lang.sample(n_train, seed), lang.sample(n_val + 1, seed + 1), lang.vocab_size,
                          float(lang.entropy_rate()))


@dataclass
class Run:
    """One training run: its held-out loss at the end and what ``train`` recorded on the way."""

    loss: float          # mean next-token loss (nats) over every window of the validation tokens
    history: dict        # ``train``'s history (a resumed run's includes its checkpoint's)
    steps: int           # optimizer steps this run took itself (a branch: its decay only)
    tokens: int          # training tokens those steps consumed
    seconds: float
    curve: tuple[list[int], list[float]] = ((), ())  # (step, held-out loss) every curve_every steps


def make_gpt(vocab_size: int, config: Mapping[str, Any], context_length: int = 32, seed: int = 0) -> GPT:
    """A GPT with ``config``'s fields (n_layers, d_model, n_heads, parametrization, ...), seeded."""
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, context_length=context_length, **dict(config)))


def _score(model: torch.nn.Module, val_tokens: np.ndarray, context_length: int) -> float:
    return score_loss(model, val_tokens, context_length, 0, next(model.parameters()).device)


def train_gpt(config: Mapping[str, Any], tokens: np.ndarray, val_tokens: np.ndarray, *, vocab_size: int,
              steps: int, lr: float, schedule: Schedule | None = None, batch_size: int = 16,
              context_length: int = 32, seed: int = 0, device: str | torch.device = "cpu",
              model: torch.nn.Module | None = None, curve: LossCurve | None = None,
              **train_options) -> Run:
    """Train a fresh GPT (``make_gpt``; or ``model``) for ``steps`` steps and score it on ``val_tokens``.

    curve: a ``LossCurve`` to record the held-out loss during training (it keeps what earlier
    calls recorded, so one curve can follow a run trained in segments). ``train_options`` go to
    ``minilm.train.train`` (checkpoint_path, resume, callbacks, weight_decay, ...). A run that
    diverges returns loss = inf (the sweeps show it as a gap) instead of raising.
    """
    dev = resolve_device(device)
    model = make_gpt(vocab_size, config, context_length, seed) if model is None else model
    counted = _StepCounter()  # the steps this call takes (a resumed run's checkpoint has the others)
    callbacks = (*train_options.pop("callbacks", ()), counted, *([curve] if curve is not None else []))
    t0 = time.perf_counter()
    try:
        history = train(model, tokens, None, steps=steps, batch_size=batch_size, context_length=context_length,
                        lr=lr, schedule=schedule, device=dev, seed=seed, progress=False, autocast=False,
                        callbacks=callbacks, **train_options)
        loss = _score(model, val_tokens, context_length)
    except TrainingDivergedError:
        history, loss = {"step": [], "train_loss": [], "lr": [], "tokens": []}, float("inf")
    recorded = (list(curve.steps), list(curve.losses)) if curve is not None else ((), ())
    return Run(loss, history, counted.n, counted.n * batch_size * context_length, time.perf_counter() - t0,
               recorded)


class LossCurve:
    """A ``train`` callback: the held-out loss on ``val_tokens`` after every ``every`` steps.

    Scores the first ``n_tokens`` validation tokens (every window, as ``score_loss``), the same
    ones each time, so points of one curve and of different runs compare without sampling noise.
    """

    def __init__(self, val_tokens: np.ndarray, every: int, context_length: int = 32, n_tokens: int = 4096):
        if every < 1:
            raise ValueError(f"every must be >= 1 step, got {every}")
        self.val = val_tokens[: n_tokens + 1]
        self.every, self.context_length = every, context_length
        self.steps: list[int] = []
        self.losses: list[float] = []

    def __call__(self, info: dict) -> None:
        done = info["step"] + 1
        if done % self.every == 0:
            self.steps.append(done)
            self.losses.append(_score(info["model"], self.val, self.context_length))

    def copy(self, until: int) -> LossCurve:
        """A new curve holding this one's points up to step ``until`` (a branch continues from there)."""
        other = LossCurve(self.val, self.every, self.context_length, len(self.val) - 1)
        keep = [i for i, s in enumerate(self.steps) if s <= until]
        other.steps, other.losses = [self.steps[i] for i in keep], [self.losses[i] for i in keep]
        return other


class _StepCounter:
    """A ``train`` callback that counts the steps it sees."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, info: dict) -> None:
        self.n += 1


# ------------------------------------------------------------------------------------ branching
@dataclass(frozen=True)
class Branch:
    """Decay the stable-phase checkpoint at ``stable_step`` over ``decay_steps`` steps of ``shape``."""

    stable_step: int
    decay_steps: int
    shape: str = "linear"

    @property
    def end(self) -> int:
        """The length of the run this branch completes: stable_step + decay_steps."""
        return self.stable_step + self.decay_steps


@dataclass
class BranchedWSD:
    """A warmup-stable run and its decayed branches (``branch_wsd``)."""

    parent_history: dict             # the stable run, up to its last checkpoint
    stable_loss: dict[int, float]    # held-out loss at each checkpoint (before any decay)
    runs: dict[Branch, Run]          # each branch's final held-out loss and its history
    parent_steps: int                # steps of the stable run: the largest stable_step

    @property
    def steps(self) -> int:
        """Every optimizer step spent: the stable run once, plus each branch's decay."""
        return self.parent_steps + sum(b.decay_steps for b in self.runs)


def branch_wsd(config: Mapping[str, Any], tokens: np.ndarray, val_tokens: np.ndarray, branches: Sequence[Branch],
               *, vocab_size: int, lr: float, warmup_steps: int = 0, batch_size: int = 16, context_length: int = 32,
               seed: int = 0, device: str | torch.device = "cpu", curve_every: int | None = None,
               workdir: str | Path | None = None, progress: bool = False) -> BranchedWSD:
    """Run one WSD stable phase and decay each requested checkpoint (MiniCPM sec. 4.3).

    The stable run (warmup, then the peak: ``constant(warmup_steps)``) trains in segments up to
    each distinct ``stable_step`` and saves a checkpoint there; ``train``'s exact resume makes
    the segmented run the same as one uninterrupted run. Each branch then resumes a copy of its
    checkpoint under ``wsd_branch``, so its first ``stable_step`` steps *are* the parent's. The
    checkpoints live in a temporary folder (in ``workdir`` if given) deleted at the end.
    curve_every: record each run's held-out loss every this many steps (``Run.curve``; a
    branch's curve starts with the parent's points up to its checkpoint).
    """
    from tqdm.auto import tqdm

    if not branches:
        raise ValueError("branch_wsd needs at least one Branch(stable_step, decay_steps)")
    points = sorted({b.stable_step for b in branches})
    if points[0] < warmup_steps:
        raise ValueError(f"a branch starts at step {points[0]}, inside the warmup of {warmup_steps} steps: "
                         "branch from the stable phase")
    common = {"vocab_size": vocab_size, "lr": lr, "batch_size": batch_size, "context_length": context_length,
              "seed": seed, "device": device}
    curve = LossCurve(val_tokens, curve_every, context_length) if curve_every else None
    stable_loss, runs = {}, {}
    bar = tqdm(total=points[-1] + sum(b.decay_steps for b in branches), desc="WSD: stable run and branches",
               unit="step", disable=not progress)
    with tempfile.TemporaryDirectory(prefix="minilm-wsd-", dir=workdir) as tmp:
        folder = Path(tmp)
        parent = make_gpt(vocab_size, config, context_length, seed)
        history: dict = {}
        for s in points:  # the stable run, one segment per checkpoint
            run = train_gpt(config, tokens, val_tokens, steps=s, schedule=constant(warmup_steps), model=parent,
                            checkpoint_path=folder / "parent.pt", resume=True, curve=curve, **common)
            history, stable_loss[s] = run.history, run.loss
            bar.update(run.steps)
            shutil.copyfile(folder / "parent.pt", folder / f"stable_{s}.pt")
        for b in branches:
            shutil.copyfile(folder / f"stable_{b.stable_step}.pt", folder / "branch.pt")
            schedule = wsd_branch(b.stable_step, b.decay_steps, warmup_steps, shape=b.shape)
            runs[b] = train_gpt(config, tokens, val_tokens, steps=b.end, schedule=schedule,
                                checkpoint_path=folder / "branch.pt", resume=True,
                                curve=curve.copy(b.stable_step) if curve else None, **common)
            bar.update(b.decay_steps)
    bar.close()
    return BranchedWSD(history, stable_loss, runs, points[-1])


# ------------------------------------------------------------------------------------ sweeps
def best_lr(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """The learning rate at the minimum of a loss-vs-lr curve, refined by a parabola in log2(lr).

    The grid's best point and its two neighbours define a parabola in log2(lr) whose vertex is
    the estimate (clipped to the neighbours); at the grid's edge, or next to a diverged run
    (loss inf), the grid point itself is returned: the true optimum may then lie beyond the grid.
    """
    x, y = np.log2(np.asarray(lrs, dtype=float)), np.asarray(losses, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 1 or np.any(np.diff(x) <= 0):
        raise ValueError("lrs must be increasing and as many as losses")
    if not np.isfinite(y).any():
        raise ValueError("every run diverged: no best learning rate")
    i = int(np.argmin(np.where(np.isfinite(y), y, np.inf)))
    if i == 0 or i == len(x) - 1 or not np.isfinite(y[i - 1 : i + 2]).all():
        return float(2.0 ** x[i])
    a, b, _ = np.polyfit(x[i - 1 : i + 2], y[i - 1 : i + 2], 2)
    vertex = -b / (2 * a) if a > 0 else x[i]
    return float(2.0 ** np.clip(vertex, x[i - 1], x[i + 1]))


@dataclass
class LRSweep:
    """Final held-out losses of ``lr_sweep``: ``loss[p, w, s, l]`` for parametrization p, width w,
    seed s and learning rate l (inf where the run diverged)."""

    parametrizations: list[str]
    widths: list[int]
    seeds: list[int]
    lrs: list[float]
    loss: np.ndarray
    seconds: float

    def best(self, parametrization: str) -> np.ndarray:
        """(widths, seeds): the best learning rate of each (width, seed) curve (``best_lr``)."""
        p = self.parametrizations.index(parametrization)
        return np.array([[best_lr(self.lrs, self.loss[p, w, s]) for s in range(len(self.seeds))]
                         for w in range(len(self.widths))])

    def optimum(self, parametrization: str) -> tuple[np.ndarray, np.ndarray]:
        """Per width: the geometric mean of the seeds' best learning rates and its spread, the
        standard deviation of log2(best lr) over seeds (0 with one seed: no spread measured)."""
        logs = np.log2(self.best(parametrization))  # (widths, seeds)
        spread = logs.std(axis=1, ddof=1) if logs.shape[1] > 1 else np.zeros(len(self.widths))
        return 2.0 ** logs.mean(axis=1), spread


def _lr_sweep_point(job: dict) -> float:
    """One run of ``lr_sweep`` (module level, so an executor can send it to another process)."""
    steps = job["steps"]
    run = train_gpt(job["config"], job["tokens"], job["val_tokens"], vocab_size=job["vocab_size"], steps=steps,
                    lr=job["lr"], schedule=cosine(steps, job["warmup_steps"], 0.1), batch_size=job["batch_size"],
                    context_length=job["context_length"], seed=job["seed"], device=job["device"])
    return run.loss


def _run_grid(fn: Callable[[dict], Any], jobs: list[dict], executor: Executor | None, desc: str,
              progress: bool) -> Iterator[tuple[int, Any]]:
    """(job index, result) for every job run by ``executor`` (``minilm.executors``; None: this process), with a
    progress bar over runs; a failed run does not stop the others, and the failures are raised together at the end."""
    from tqdm.auto import tqdm

    executor = LocalExecutor() if executor is None else executor
    failures = []
    with tqdm(total=len(jobs), desc=desc, disable=not progress) as bar:
        for outcome in executor.run(fn, jobs):
            if outcome.ok:
                yield outcome.index, outcome.result
            else:
                log = f" (log: {outcome.log})" if outcome.log else ""
                failures.append(f"run {outcome.index}: {outcome.error}{log}")
            bar.update(1)
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(jobs)} runs of the {desc} failed:\n" + "\n".join(failures))


def lr_sweep(base_config: Mapping[str, Any], widths: Sequence[int], lrs: Sequence[float], seeds: Sequence[int], *,
             tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int, steps: int, base_width: int,
             parametrizations: Sequence[str] = ("standard", "mup"), warmup_steps: int = 0,
             batch_size: int = 16, context_length: int = 32, device: str | torch.device = "cpu",
             progress: bool = True, executor: Executor | None = None) -> LRSweep:
    """Train every (parametrization, width, seed, lr) for ``steps`` steps of cosine decay to 10%.

    base_config: GPTConfig fields shared by every run (n_layers, n_heads, ...); d_model is the
    width, and "mup" runs get ``base_width`` (μP's width_mult = width / base_width).
    executor: where the runs train (``minilm.executors``: local worker processes, one per GPU, or a
    SLURM cluster through submitit); None trains them one after another in this process.
    """
    t0 = time.perf_counter()
    loss = np.full((len(parametrizations), len(widths), len(seeds), len(lrs)), np.inf)
    cells = [(p, w, s, k) for p in range(len(parametrizations)) for w in range(len(widths))
             for s in range(len(seeds)) for k in range(len(lrs))]
    jobs = []
    for p, w, s, k in cells:
        config = {**base_config, "d_model": widths[w], "parametrization": parametrizations[p]}
        if parametrizations[p] == "mup":
            config["base_width"] = base_width
        jobs.append({"config": config, "tokens": tokens, "val_tokens": val_tokens, "vocab_size": vocab_size,
                     "steps": steps, "lr": lrs[k], "warmup_steps": warmup_steps, "batch_size": batch_size,
                     "context_length": context_length, "seed": seeds[s], "device": str(device)})
    for i, run_loss in _run_grid(_lr_sweep_point, jobs, executor, "learning-rate sweep", progress):
        loss[cells[i]] = run_loss
    return LRSweep(list(parametrizations), list(widths), list(seeds), list(lrs), loss, time.perf_counter() - t0)


@dataclass
class BatchLRGrid:
    """Final held-out losses of ``batch_lr_grid``: ``loss[b, l]`` for batch size b and learning
    rate l at one token budget; ``curves[(b, l)]`` = (tokens seen, held-out loss) along each run."""

    batch_sizes: list[int]
    lrs: list[float]
    token_budget: int
    context_length: int
    loss: np.ndarray
    curves: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]
    seconds: float

    def near_optimal(self, tolerance: float) -> np.ndarray:
        """(batch sizes, lrs) bool: the cells whose loss is within ``tolerance`` nats of the best."""
        return self.loss <= np.min(self.loss) + tolerance

    def tokens_to(self, target: float) -> dict[int, float | None]:
        """Per batch size, at its best learning rate: tokens seen when the held-out loss first
        reached ``target`` (None: never within the budget)."""
        out: dict[int, float | None] = {}
        for b, batch in enumerate(self.batch_sizes):
            tokens, losses = self.curves[(b, int(np.argmin(self.loss[b])))]
            hit = np.flatnonzero(losses <= target)
            out[batch] = float(tokens[hit[0]]) if len(hit) else None
        return out


def _batch_lr_point(job: dict) -> tuple[float, list[int], list[float]]:
    """One run of ``batch_lr_grid``: its final loss and its held-out curve (steps, losses)."""
    steps = job["steps"]
    curve = LossCurve(job["val_tokens"], job["every"], job["context_length"])
    run = train_gpt(job["config"], job["tokens"], job["val_tokens"], vocab_size=job["vocab_size"], steps=steps,
                    lr=job["lr"], schedule=constant(max(1, steps // 10)), batch_size=job["batch_size"],
                    context_length=job["context_length"], seed=job["seed"], device=job["device"], curve=curve)
    return run.loss, list(curve.steps), list(curve.losses)


def batch_lr_grid(config: Mapping[str, Any], batch_sizes: Sequence[int], lrs: Sequence[float], *,
                  tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int, token_budget: int,
                  points: int = 16, context_length: int = 32, seed: int = 0, device: str | torch.device = "cpu",
                  progress: bool = True, executor: Executor | None = None) -> BatchLRGrid:
    """Train every (batch size, lr) on the same ``token_budget`` tokens: fewer, larger steps or
    more, smaller ones. Constant learning rate after a warmup of 10% of the steps, so the loss
    curves show how fast each setting learns (a decay would add its own drop at the end).
    ``points``: held-out losses recorded along each run (at equal token intervals).
    ``executor``: where the runs train, as in ``lr_sweep``.
    """
    t0 = time.perf_counter()
    loss = np.full((len(batch_sizes), len(lrs)), np.inf)
    curves = {}
    cells = [(b, k) for b in range(len(batch_sizes)) for k in range(len(lrs))]
    jobs = []
    for b, k in cells:
        steps = token_budget // (batch_sizes[b] * context_length)
        if steps < 10:
            raise ValueError(f"batch size {batch_sizes[b]} gets only {steps} steps of the {token_budget}-token "
                             "budget: raise token_budget or drop that batch size")
        jobs.append({"config": dict(config), "tokens": tokens, "val_tokens": val_tokens, "vocab_size": vocab_size,
                     "steps": steps, "lr": lrs[k], "batch_size": batch_sizes[b], "context_length": context_length,
                     "seed": seed, "device": str(device), "every": max(1, steps // points)})
    for i, (run_loss, curve_steps, curve_losses) in _run_grid(_batch_lr_point, jobs, executor,
                                                              "batch size x learning rate", progress):
        b, k = cells[i]
        loss[b, k] = run_loss
        seen = np.array(curve_steps, dtype=float) * batch_sizes[b] * context_length
        curves[(b, k)] = (seen, np.array(curve_losses, dtype=float))
    return BatchLRGrid(list(batch_sizes), list(lrs), token_budget, context_length, loss, curves,
                       time.perf_counter() - t0)
