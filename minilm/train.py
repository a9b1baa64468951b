"""Training any model of minilm on any token array: one function, ``train``.

    history = train(model, data.train, data.val, steps=500, lr=1e-3)
    history = train(model, data.train, data.val, TrainConfig(steps=500, lr=1e-3))

AdamW by default, a pluggable optimizer and learning-rate schedule, gradient clipping, periodic
validation, a progress bar, callbacks, ``device="auto"``, bf16 autocast on CUDA, atomic
checkpoints with exact resume (on CPU, CUDA and MPS), and a clear error when the loss diverges.
The options live in one dataclass, ``TrainConfig``; keyword arguments of ``train`` override its fields.

The same code runs data-parallel under ``torchrun --nproc_per_node N`` (``minilm.distributed``
holds the plumbing: each ``self.ranks`` call below is a no-op in a single process).
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import numbers
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from minilm import distributed, ledger, mup
from minilm.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from minilm.data.batching import get_batch, iterate_windows
from minilm.device import configure_threads, ensure_threads, resolve_device


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


def _is_int(x, low: int) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool) and x >= low


def _is_number(x, low: float, strict: bool = False) -> bool:
    return (isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)
            and (x > low if strict else x >= low))


@dataclasses.dataclass
class TrainConfig:
    """Every option of ``train``. ``train(model, tokens, config=cfg, lr=3e-3)`` overrides a field.

    optimizer: None (AdamW, see ``default_optimizer``), an optimizer built on the model's
        parameters, or a callable ``params -> optimizer``.
        ``minilm.optim.Sophia`` gets its Hessian refresh every k steps before ``backward``.
    schedule: callable ``step -> multiplier`` of each group's initial lr (``minilm.schedules``).
    callbacks: each is called after every step with a dict (step, loss, lr, model, optimizer,
        history); returning True stops training.
    checkpoint_path / checkpoint_every / resume: atomic checkpoints; ``resume=True`` continues an
        interrupted run exactly (same batches, same loss curve) on the device it ran on, and with
        the same batches on any number of torchrun processes.
    autocast: "auto" uses bf16 autocast on CUDA only; True/False to force.
    compile: opt in to ``torch.compile`` (off by default: slow to start, not on every platform).
    threads: torch's CPU thread count (``minilm.device.configure_threads``); None keeps minilm's
        default (``ensure_threads``), shared among the processes of a torchrun run on one machine.
    token_weights: None (every token counts the same), or a callable ``(x, y, token_loss) ->
        weights``, all (B, T), called every training step with the per-token loss detached; the
        step's loss becomes sum(w * loss) / sum(w). A 0/1 mask trains on the kept tokens only
        (selective language modelling, ``minilm.selection``). Validation still scores every token.

    ``train_tokens`` may also be a batch source: any object with ``sample_batch(batch_size,
    context_length, rng) -> (x, y)`` and ``max_token`` (e.g. ``minilm.mixing.MixtureSampler``,
    which draws each batch's rows from several domains); it gets the run's seeded generator.

    Under ``torchrun --nproc_per_node N`` (``minilm.distributed``): ``batch_size`` is the global
    batch (each process trains on batch_size / N of its rows), ``lr`` is unchanged, losses are
    averaged over the processes and rank 0 alone shows progress and writes the checkpoint.
    """

    steps: int = 1000
    batch_size: int = 12
    context_length: int | None = None  # None: the model's own
    lr: float = 1e-3
    weight_decay: float = 0.1
    grad_clip: float | None = 1.0
    optimizer: torch.optim.Optimizer | Callable | None = None
    schedule: Callable[[int], float] | None = None
    eval_every: int = 100
    eval_batches: int = 10
    device: str | torch.device = "auto"
    seed: int = 0
    callbacks: Iterable[Callable[[dict], bool | None]] = ()
    checkpoint_path: str | Path | None = None
    checkpoint_every: int | None = None
    resume: bool = False
    progress: bool = True
    autocast: bool | str = "auto"
    compile: bool = False
    threads: int | None = None
    token_weights: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        self.callbacks = tuple(self.callbacks)  # a generator would be used up after the first step
        checks = [  # (valid?, field, what it must be)
            (_is_int(self.steps, 0), "steps", "an integer >= 0"),
            (_is_int(self.batch_size, 1), "batch_size", "an integer >= 1"),
            (self.context_length is None or _is_int(self.context_length, 1), "context_length",
             "None (the model's own) or an integer >= 1"),
            (_is_number(self.lr, 0.0), "lr", "a finite number >= 0"),
            (_is_number(self.weight_decay, 0.0), "weight_decay", "a finite number >= 0"),
            (self.grad_clip is None or _is_number(self.grad_clip, 0.0, strict=True), "grad_clip",
             "None (no clipping) or a number > 0"),
            (self.optimizer is None or isinstance(self.optimizer, torch.optim.Optimizer) or callable(self.optimizer),
             "optimizer", "None (AdamW), a torch optimizer or a callable params -> optimizer"),
            (self.schedule is None or callable(self.schedule), "schedule", "None or a callable step -> lr multiplier"),
            (_is_int(self.eval_every, 1), "eval_every", "an integer >= 1 (steps between validations)"),
            (_is_int(self.eval_batches, 1), "eval_batches", "an integer >= 1"),
            (_is_int(self.seed, 0), "seed", "an integer >= 0"),
            (all(callable(cb) for cb in self.callbacks), "callbacks", "callables info -> bool | None"),
            (self.checkpoint_every is None or _is_int(self.checkpoint_every, 1), "checkpoint_every",
             "None (only at the end) or an integer >= 1"),
            (not self.resume or self.checkpoint_path is not None, "resume",
             "False, or True together with checkpoint_path= (the file to resume from)"),
            (self.autocast in (True, False, "auto"), "autocast", "'auto', True or False"),
            (self.threads is None or _is_int(self.threads, 1), "threads", "None (minilm's default) or an integer >= 1"),
            (self.token_weights is None or callable(self.token_weights), "token_weights",
             "None or a callable (x, y, token_loss) -> weights"),
        ]
        for ok, name, want in checks:
            if not ok:
                raise ValueError(f"TrainConfig.{name} must be {want}, got {getattr(self, name)!r}")


_OPTIONS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def _config_with(config: TrainConfig | None, overrides: dict) -> TrainConfig:
    """``config`` (or the defaults) with ``overrides`` replacing fields; unknown names are an error."""
    for name in overrides:
        if name not in _OPTIONS:
            close = difflib.get_close_matches(name, _OPTIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"train() got an unknown keyword argument {name!r}{hint}; "
                            f"the options are: {', '.join(_OPTIONS)}")
    if config is not None and not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}: pass options as keywords instead")
    return dataclasses.replace(config or TrainConfig(), **overrides)


def default_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.1,
                      betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on norms' gains or other vectors).

    Decaying gains and biases pulls them towards 0 for no benefit; nanoGPT and Llama skip them.
    A μP model (``parametrization="mup"``) gets ``minilm.mup.param_groups``: each kind of
    parameter its own learning rate (hidden matrices lr / width_mult), group 0 at ``lr``.
    """
    if mup.is_mup(model):
        groups = mup.param_groups(model, lr, weight_decay)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
    try:
        # PyTorch's fused AdamW updates all tensors in one kernel: the same update, 2-3x faster
        # than its per-tensor loop. CPU support came in PyTorch 2.4; older ones fall back below.
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas)


def _model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's first parameter (or buffer) lives; CPU for a model with neither (a fitted n-gram)."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(model, tokens: np.ndarray, context_length: int | None = None, batch_size: int = 32,
             device: str | torch.device | None = None, max_batches: int | None = None) -> float:
    """Mean next-token loss (nats) over consecutive non-overlapping windows of ``tokens``.

    Deterministic: every window in order (or the first ``max_batches`` batches of them).
    device: where the windows go; None (the default) is where the model's parameters are.
    """
    dev = _model_device(model) if device is None else resolve_device(device)
    T = context_length or getattr(model, "context_length", None) or 64
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i, (x, y) in enumerate(iterate_windows(tokens, T, batch_size)):  # x, y: (batch, T)
        if max_batches is not None and i >= max_batches:
            break
        loss = model.loss(x.to(dev), y.to(dev))
        total += float(loss) * y.numel()
        count += y.numel()
    model.train(was_training)
    return total / count


def _refresh_curvature(opt: torch.optim.Optimizer, logits: torch.Tensor, loss: torch.Tensor) -> None:
    """Let a curvature-aware optimizer (``minilm.optim.Sophia``) refresh its Hessian estimate.

    Sophia needs the graph of this step's forward pass, so it must happen before ``backward``;
    it asks for it every k steps through ``hessian_due()``. Other optimizers are left alone.
    """
    if not hasattr(opt, "hessian_due") or not opt.hessian_due():
        return
    if getattr(opt, "estimator", "gnb") == "gnb":
        opt.update_hessian(logits=logits)   # Sophia-G: labels resampled from the model's softmax
    else:
        opt.update_hessian(loss=loss)       # Sophia-H: one Hutchinson probe u⊙(Hu)


def _context_length(model: torch.nn.Module, train_tokens: np.ndarray, cfg: TrainConfig) -> int:
    """The window length T to train on, after checking that the model and the data fit together."""
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            f"{type(model).__name__} has no trainable parameters: count-based models (n-grams) are "
            "fitted with model.fit(tokens), not trained"
        )
    T = cfg.context_length or getattr(model, "context_length", None)
    if T is None:
        raise ValueError("context_length is required for a model without a fixed context (RWKV, LSTM)")
    if getattr(model, "context_length", None) is not None and T > model.context_length:
        raise ValueError(
            f"context_length={T} is longer than the model's context_length={model.context_length}: "
            "pass a shorter context_length or build a model with a longer one"
        )
    vocab = getattr(model, "vocab_size", None)
    top = _max_token(train_tokens)
    if vocab is not None and top is not None and top >= vocab:
        raise ValueError(
            f"the data holds token id {top} but the model's vocab_size is {vocab}: "
            "build the model with vocab_size = the tokenizer's vocab_size"
        )
    return T


def _is_source(train_tokens) -> bool:
    """A batch source (``sample_batch``, e.g. ``minilm.mixing.MixtureSampler``) rather than a token array."""
    return hasattr(train_tokens, "sample_batch")


def _max_token(train_tokens) -> int | None:
    """The largest token id the training data can hold (None for an empty array)."""
    if _is_source(train_tokens):
        return int(train_tokens.max_token)
    return int(np.max(train_tokens)) if len(train_tokens) else None


class _Run:
    """One training run: what ``train`` sets up once (device, optimizer, autocast, seeds, resumed
    state) and the three things it does over and over (a step, a validation, a checkpoint)."""

    def __init__(self, model: torch.nn.Module, train_tokens: np.ndarray, val_tokens: np.ndarray | None,
                 cfg: TrainConfig, ranks: distributed.Ranks):
        self.model, self.train_tokens, self.val_tokens, self.cfg = model, train_tokens, val_tokens, cfg
        self.T = _context_length(model, train_tokens, cfg)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.ranks = ranks  # this process's place in a torchrun run (one rank without torchrun)
        self.ranks.check_batch_size(cfg.batch_size)
        self.dev = self.ranks.device
        model.to(self.dev)
        if cfg.optimizer is None:
            self.opt = default_optimizer(model, cfg.lr, cfg.weight_decay)
        elif isinstance(cfg.optimizer, torch.optim.Optimizer):
            self.opt = cfg.optimizer
        else:
            self.opt = cfg.optimizer(self.params)
        for group in self.opt.param_groups:
            group.setdefault("initial_lr", group["lr"])  # what the schedule multiplies
        if self.ranks.distributed and hasattr(self.opt, "hessian_due"):
            raise ValueError("Sophia's Hessian refresh needs a second backward pass that DistributedDataParallel "
                             "does not support: train with Sophia in one process, or use AdamW under torchrun")
        use_autocast = (self.dev.type == "cuda") if cfg.autocast == "auto" else bool(cfg.autocast)
        self.amp = (lambda: torch.autocast(self.dev.type, dtype=torch.bfloat16)) if use_autocast else nullcontext
        self.fwd = self.ranks.wrap(model)  # under torchrun: DDP, which averages the ranks' gradients
        if cfg.compile:
            self.fwd = torch.compile(self.fwd)

        # torch's generators (CPU and every GPU): dropout; each rank its own stream, rank 0 the run's seed.
        torch.manual_seed(distributed.rank_seed(cfg.seed, self.ranks.rank))
        self.rng = np.random.default_rng(cfg.seed)  # the batch sampler: the same global batches on every rank
        self.history = {"step": [], "train_loss": [], "lr": [], "tokens": [], "flops": [], "time": [],
                        "val_step": [], "val_loss": [], "device": str(self.dev)}
        # Training FLOPs per token at this run's window length (6N + the sequence term); the global
        # batch's under torchrun, as history["tokens"] counts the global batch.
        self.flops_per_token = ledger.training_flops(model, 1, self.T)
        self.run_id = object()  # the open ledgers count this run once however many steps it charges
        self.start_step = 0
        if cfg.resume and Path(cfg.checkpoint_path).is_file():
            self._resume()
        self.t0 = time.perf_counter()

    def _resume(self) -> None:
        """Continue from the checkpoint: weights, optimizer state, random streams and history."""
        ckpt = load_checkpoint(self.cfg.checkpoint_path, map_location=self.dev)
        self.model.load_state_dict(ckpt["model"])
        if ckpt["optimizer"] is not None:
            self.opt.load_state_dict(ckpt["optimizer"])
        restore_rng_state(self.rng, ckpt["rng"], self.dev)
        self.ranks.restore_rng(ckpt["rng"], self.cfg.seed, ckpt["step"])  # dropout's stream of each rank
        self.start_step = ckpt["step"]
        self.history.update(ckpt["history"])
        self.history["device"] = str(self.dev)
        if len(self.history["flops"]) != len(self.history["tokens"]):  # a checkpoint from before the count
            self.history["flops"] = [self.flops_per_token * t for t in self.history["tokens"]]

    def _logits_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.fwd(x)  # (B, T, V)
        return logits, torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A fresh random batch (x, y), (B, T) each, from the token array or the batch source;
        under torchrun, this rank's B / N rows of the global batch."""
        cfg = self.cfg
        if _is_source(self.train_tokens):
            x, y = self.train_tokens.sample_batch(cfg.batch_size, self.T, self.rng)
            x, y = x.to(self.dev), y.to(self.dev)
        else:
            x, y = get_batch(self.train_tokens, cfg.batch_size, self.T, self.dev, self.rng)
        return self.ranks.share(x), self.ranks.share(y)

    def _weighted_loss(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """sum(w * loss) / sum(w) over the batch's tokens, w = cfg.token_weights(x, y, loss) (B, T).

        Under torchrun the denominator is the mean of sum(w) over the ranks, so the gradient DDP
        averages is that of the global batch's weighted mean, however the kept tokens fall."""
        token_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1),
                                                       reduction="none").view_as(y)  # (B, T)
        w = self.cfg.token_weights(x, y, token_loss.detach()).to(token_loss.dtype)  # (B, T)
        return (w * token_loss).sum() / self.ranks.mean(w.sum()).clamp_min(1e-12)

    def step(self, step: int) -> float:
        """One optimizer step on a fresh random batch; returns its loss (before the update)."""
        opt, cfg = self.opt, self.cfg
        t_start = time.perf_counter()
        mult = cfg.schedule(step) if cfg.schedule is not None else 1.0
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * mult
        x, y = self._batch()  # (B, T) each
        with self.amp():
            if cfg.token_weights is None:
                logits, loss = self._logits_loss(x, y)
            else:
                logits = self.fwd(x)  # (B, T, V)
                loss = self._weighted_loss(logits, x, y)
        loss_value = self.ranks.mean(loss).item()  # the global batch's loss: every rank sees (and checks) it
        if not math.isfinite(loss_value):
            where = f"; the last good checkpoint is {cfg.checkpoint_path}" if cfg.checkpoint_path else ""
            raise TrainingDivergedError(
                f"loss became {loss_value} at step {step} (lr={opt.param_groups[0]['lr']:.3g}){where}. "
                "Try a lower learning rate, a warmup schedule, or gradient clipping (grad_clip=1.0)."
            )
        opt.zero_grad(set_to_none=True)
        _refresh_curvature(opt, logits, loss)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        opt.step()
        h = self.history
        h["step"].append(step)
        h["train_loss"].append(loss_value)
        h["lr"].append(opt.param_groups[0]["lr"])
        h["tokens"].append((step + 1) * cfg.batch_size * self.T)
        h["flops"].append(self.flops_per_token * h["tokens"][-1])
        h["time"].append(time.perf_counter() - self.t0)
        # Every open ledger hears each step, so an interrupted run still counts what it spent.
        # Under torchrun each process charges the global batch: any rank's ledger holds the run's total.
        step_tokens = cfg.batch_size * self.T
        ledger.charge(self.flops_per_token * step_tokens, tokens=step_tokens,
                      seconds=time.perf_counter() - t_start, label="train", run=self.run_id)
        return loss_value

    def validate(self, step: int) -> None:
        """Mean loss on ``eval_batches`` validation batches, recorded at ``step``; under torchrun
        each rank scores its rows of the same batches and the ranks average their means."""
        if self.val_tokens is None:
            return
        # The same windows every time (a fixed seed), so validation losses are comparable.
        vrng = np.random.default_rng(10_000 + self.cfg.seed)
        self.model.eval()
        batches = (get_batch(self.val_tokens, self.cfg.batch_size, self.T, self.dev, vrng)
                   for _ in range(self.cfg.eval_batches))
        with torch.no_grad(), self.amp():
            losses = [float(self._logits_loss(self.ranks.share(x), self.ranks.share(y))[1]) for x, y in batches]
        self.model.train()
        self.history["val_step"].append(step)
        self.history["val_loss"].append(self.ranks.mean(sum(losses) / len(losses)))

    def save(self, step: int) -> None:
        """Write a checkpoint (atomically) if the run has a ``checkpoint_path``; under torchrun
        rank 0 writes it, with every rank's random stream, and the others wait until it is there."""
        if self.cfg.checkpoint_path is None:
            return
        rng = {**capture_rng_state(self.rng, self.dev), **self.ranks.gather_rng()}
        if self.ranks.is_main:
            save_checkpoint(self.cfg.checkpoint_path, self.model, self.opt, step, rng,
                            {k: v for k, v in self.history.items() if k != "device"})
        self.ranks.barrier()


def train(model: torch.nn.Module, train_tokens: np.ndarray, val_tokens: np.ndarray | None = None,
          config: TrainConfig | None = None, **options) -> dict:
    """Train ``model`` for ``config.steps`` steps on random windows of ``train_tokens``.

    config: a ``TrainConfig`` (None: the defaults); keyword ``options`` override its fields, so
        ``train(model, tokens, steps=500, lr=3e-3)`` works without one. See ``TrainConfig`` for them.

    Returns the history: a dict of lists ("step", "train_loss", "lr", "tokens", "flops", "time",
    "val_step", "val_loss") plus "device". "flops" is the cumulative training FLOPs at each step,
    ``minilm.ledger.training_flops(model, tokens, context_length)`` (6N per token + the sequence
    term); every open ``minilm.ledger.ComputeLedger`` receives them step by step. Not counted:
    validation passes and Sophia's extra Hessian-refresh backward (every k steps).
    """
    cfg = _config_with(config, options)
    ranks = distributed.start(cfg.device, cfg.threads)  # under torchrun: joins the process group
    if not ranks.distributed:
        if cfg.threads is not None:
            configure_threads(cfg.threads)
        else:
            ensure_threads()
    run = _Run(model, train_tokens, val_tokens, cfg, ranks)
    model.train()
    bar = tqdm(range(run.start_step, cfg.steps), total=cfg.steps, initial=run.start_step,
               disable=not cfg.progress or not ranks.is_main,
               desc=f"train {type(model).__name__} on {ranks.describe()}")
    for step in bar:
        loss = run.step(step)
        if (step + 1) % cfg.eval_every == 0 or step == cfg.steps - 1:
            run.validate(step + 1)
            val = f"{run.history['val_loss'][-1]:.3f}" if run.history["val_loss"] else "-"
            bar.set_postfix(loss=f"{loss:.3f}", val=val)
        elif step % 10 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
            run.save(step + 1)
        info = {"step": step, "loss": loss, "lr": run.opt.param_groups[0]["lr"], "model": model,
                "optimizer": run.opt, "history": run.history}
        if run.ranks.any(any(cb(info) for cb in cfg.callbacks)):  # one rank's stop stops all
            break
    bar.close()
    run.save(run.history["step"][-1] + 1 if run.history["step"] else run.start_step)
    return run.history
