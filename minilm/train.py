"""Training any model of minilm on any token array: one function, ``train``.

    history = train(model, data.train, data.val, steps=500, lr=1e-3)

AdamW by default, a pluggable optimizer and learning-rate schedule, gradient clipping, periodic
validation, a progress bar, callbacks, ``device="auto"``, bf16 autocast on CUDA, atomic
checkpoints with exact resume, and a clear error when the loss diverges.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from minilm.checkpoint import load_checkpoint, save_checkpoint
from minilm.data.batching import get_batch, iterate_windows
from minilm.device import resolve_device


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


def default_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.1,
                      betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on norms' gains or other vectors).

    Decaying gains and biases pulls them towards 0 for no benefit; nanoGPT and Llama skip them.
    """
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


@torch.no_grad()
def evaluate(model, tokens: np.ndarray, context_length: int | None = None, batch_size: int = 32,
             device: str | torch.device = "auto", max_batches: int | None = None) -> float:
    """Mean next-token loss (nats) over consecutive non-overlapping windows of ``tokens``.

    Deterministic: every window in order (or the first ``max_batches`` batches of them).
    """
    dev = resolve_device(device)
    T = context_length or model.context_length or 64
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i, (x, y) in enumerate(iterate_windows(tokens, T, batch_size)):
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


def _rng_state(rng: np.random.Generator) -> dict:
    return {"numpy": json.dumps(rng.bit_generator.state), "torch": torch.get_rng_state()}


def _set_rng_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = json.loads(state["numpy"])
    torch.set_rng_state(state["torch"])


def train(
    model: torch.nn.Module,
    train_tokens: np.ndarray,
    val_tokens: np.ndarray | None = None,
    *,
    steps: int = 1000,
    batch_size: int = 12,
    context_length: int | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    grad_clip: float | None = 1.0,
    optimizer: torch.optim.Optimizer | Callable | None = None,
    schedule: Callable[[int], float] | None = None,
    eval_every: int = 100,
    eval_batches: int = 10,
    device: str | torch.device = "auto",
    seed: int = 0,
    callbacks: Iterable[Callable[[dict], bool | None]] = (),
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    progress: bool = True,
    autocast: bool | str = "auto",
    compile: bool = False,
) -> dict:
    """Train ``model`` for ``steps`` steps on random windows of ``train_tokens``.

    optimizer: None (AdamW, see ``default_optimizer``), an optimizer built on the model's
        parameters, or a callable ``params -> optimizer``.
        ``minilm.optim.Sophia`` gets its Hessian refresh every k steps before ``backward``.
    schedule: callable ``step -> multiplier`` of each group's initial lr (``minilm.schedules``).
    callbacks: each is called after every step with a dict (step, loss, lr, model, optimizer,
        history); returning True stops training.
    checkpoint_path / checkpoint_every / resume: atomic checkpoints; ``resume=True`` continues an
        interrupted run exactly (same batches, same loss curve).
    autocast: "auto" uses bf16 autocast on CUDA only; True/False to force.
    compile: opt in to ``torch.compile`` (off by default: slow to start, not on every platform).

    Returns the history: a dict of lists ("step", "train_loss", "lr", "tokens", "time",
    "val_step", "val_loss") plus "device".
    """
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1, got steps={steps}, batch_size={batch_size}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(
            f"{type(model).__name__} has no trainable parameters: count-based models (n-grams) are "
            "fitted with model.fit(tokens), not trained"
        )
    T = context_length or getattr(model, "context_length", None)
    if T is None:
        raise ValueError("context_length is required for a model without a fixed context (RWKV, LSTM)")
    if getattr(model, "context_length", None) is not None and T > model.context_length:
        raise ValueError(
            f"context_length={T} is longer than the model's context_length={model.context_length}: "
            "pass a shorter context_length or build a model with a longer one"
        )
    vocab = getattr(model, "vocab_size", None)
    if vocab is not None and len(train_tokens) and int(np.max(train_tokens)) >= vocab:
        raise ValueError(
            f"the data holds token id {int(np.max(train_tokens))} but the model's vocab_size is {vocab}: "
            "build the model with vocab_size = the tokenizer's vocab_size"
        )
    dev = resolve_device(device)
    model.to(dev)
    if optimizer is None:
        opt = default_optimizer(model, lr, weight_decay)
    elif isinstance(optimizer, torch.optim.Optimizer):
        opt = optimizer
    else:
        opt = optimizer(params)
    for group in opt.param_groups:
        group.setdefault("initial_lr", group["lr"])
    use_autocast = (dev.type == "cuda") if autocast == "auto" else bool(autocast)
    amp = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if use_autocast else nullcontext
    fwd = torch.compile(model) if compile else model

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    history = {"step": [], "train_loss": [], "lr": [], "tokens": [], "time": [], "val_step": [], "val_loss": [],
               "device": str(dev)}
    start_step = 0
    if resume and checkpoint_path is not None and Path(checkpoint_path).is_file():
        ckpt = load_checkpoint(checkpoint_path, map_location=dev)
        model.load_state_dict(ckpt["model"])
        if ckpt["optimizer"] is not None:
            opt.load_state_dict(ckpt["optimizer"])
        _set_rng_state(rng, ckpt["rng"])
        start_step = ckpt["step"]
        history.update(ckpt["history"])
        history["device"] = str(dev)

    def save(step: int) -> None:
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, model, opt, step, _rng_state(rng),
                            {k: v for k, v in history.items() if k != "device"})

    def validate(step: int) -> None:
        if val_tokens is None:
            return
        # The same windows every time (a fixed seed), so validation losses are comparable.
        vrng = np.random.default_rng(10_000 + seed)
        model.eval()
        with torch.no_grad(), amp():
            losses = [float(fwd_loss(*get_batch(val_tokens, batch_size, T, dev, vrng))) for _ in range(eval_batches)]
        model.train()
        history["val_step"].append(step)
        history["val_loss"].append(sum(losses) / len(losses))

    def fwd_logits_loss(x, y):
        logits = fwd(x)
        return logits, torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))

    def fwd_loss(x, y):
        return fwd_logits_loss(x, y)[1]

    model.train()
    t0 = time.perf_counter()
    bar = tqdm(range(start_step, steps), total=steps, initial=start_step, disable=not progress,
               desc=f"train {type(model).__name__} on {dev}")
    for step in bar:
        mult = schedule(step) if schedule is not None else 1.0
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * mult
        x, y = get_batch(train_tokens, batch_size, T, dev, rng)
        with amp():
            logits, loss = fwd_logits_loss(x, y)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            where = f"; the last good checkpoint is {checkpoint_path}" if checkpoint_path else ""
            raise TrainingDivergedError(
                f"loss became {loss_value} at step {step} (lr={opt.param_groups[0]['lr']:.3g}){where}. "
                "Try a lower learning rate, a warmup schedule, or gradient clipping (grad_clip=1.0)."
            )
        opt.zero_grad(set_to_none=True)
        _refresh_curvature(opt, logits, loss)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()

        history["step"].append(step)
        history["train_loss"].append(loss_value)
        history["lr"].append(opt.param_groups[0]["lr"])
        history["tokens"].append((step + 1) * batch_size * T)
        history["time"].append(time.perf_counter() - t0)
        if (step + 1) % eval_every == 0 or step == steps - 1:
            validate(step + 1)
            val = f"{history['val_loss'][-1]:.3f}" if history["val_loss"] else "-"
            bar.set_postfix(loss=f"{loss_value:.3f}", val=val)
        elif step % 10 == 0:
            bar.set_postfix(loss=f"{loss_value:.3f}")
        if checkpoint_every and (step + 1) % checkpoint_every == 0:
            save(step + 1)
        info = {"step": step, "loss": loss_value, "lr": opt.param_groups[0]["lr"], "model": model,
                "optimizer": opt, "history": history}
        if any(cb(info) for cb in callbacks):
            break
    bar.close()
    if checkpoint_path is not None:
        save(history["step"][-1] + 1 if history["step"] else start_step)
    return history
