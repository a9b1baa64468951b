"""``minilm bench``: training speed of minilm's GPT against nanoGPT's, on this machine.

Three models of nanoGPT's CPU recipe shape (4 layers, 4 heads, d_model 128, context 64, batch 12),
trained on the same character-level batches of the pydoc corpus:

  - minilm's GPT with its default config (``kernels="fast"``) and ``minilm.train.default_optimizer``:
    what ``minilm train`` runs.
  - the same GPT with ``kernels="reference"``: the formulas of ``minilm.models.gpt`` differentiated
    by autograd, i.e. the same model written plainly. The ratio says what ``minilm.kernels`` buys.
  - ``NanoGPT``: nanoGPT's ``model.py`` as its README's CPU recipe runs it
    (``train.py config/train_shakespeare_char.py --device=cpu --compile=False --block_size=64
    --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --dropout=0.0``, train.py's default
    bias=False): LayerNorm without bias, exact-GELU MLP of width 4d, learned positions, dropout
    modules at p=0, tied wte/lm_head, its initialisation, SDPA with ``is_causal``, and the AdamW of
    its ``configure_optimizers``. nanoGPT fuses AdamW only on CUDA; here the baseline gets
    whichever of fused and per-tensor AdamW is faster on this device, so the ratio cannot flatter
    minilm (the report says which).

The models take turns step by step, in alternating order, so a busy machine slows all of them
alike; figures are medians. ``run_to_loss`` trains minilm (as ``minilm train`` does) and nanoGPT
(its recipe) on the same batches and reports how long minilm needs to reach nanoGPT's final
validation loss (``benchmarks/bench_nanogpt.py`` runs it).
"""

from __future__ import annotations

import copy
import math
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from minilm.data import get_batch, load_dataset
from minilm.device import configure_threads, resolve_device
from minilm.ledger import charge, training_flops
from minilm.models import GPT, GPTConfig
from minilm.train import default_optimizer

SHAPE = dict(n_layers=4, n_heads=4, d_model=128)
# nanoGPT's config/train_shakespeare_char.py with the README's CPU overrides, and train.py's defaults.
RECIPE = dict(lr=1e-3, min_lr=1e-4, warmup_iters=100, max_iters=2000, weight_decay=0.1, betas=(0.9, 0.99),
              grad_clip=1.0)
MINILM_TRAIN_LR = 3e-3  # ``minilm train``'s default --lr (constant; AdamW betas (0.9, 0.95), clip 1.0)


# ------------------------------------------------------------------------------ nanoGPT baseline
class _LayerNorm(nn.Module):
    """LayerNorm with a gain and no bias (nanoGPT's bias=False)."""

    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, None, 1e-5)


class _Attention(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.c_attn = nn.Linear(d, 3 * d, bias=False)
        self.c_proj = nn.Linear(d, d, bias=False)
        self.attn_dropout = nn.Dropout(dropout)  # used by nanoGPT's non-flash path only
        self.resid_dropout = nn.Dropout(dropout)
        self.n_heads, self.dropout = n_heads, dropout

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=p, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class _MLP(nn.Module):
    def __init__(self, d: int, dropout: float):
        super().__init__()
        self.c_fc, self.gelu = nn.Linear(d, 4 * d, bias=False), nn.GELU()  # exact (erf) GELU
        self.c_proj, self.dropout = nn.Linear(4 * d, d, bias=False), nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class _Block(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.ln_1, self.attn = _LayerNorm(d), _Attention(d, n_heads, dropout)
        self.ln_2, self.mlp = _LayerNorm(d), _MLP(d, dropout)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """nanoGPT's GPT (model.py, bias=False) at a given shape; ``model(idx, targets) -> logits, loss``."""

    def __init__(self, vocab_size: int, block_size: int = 64, n_layer: int = 4, n_head: int = 4,
                 n_embd: int = 128, dropout: float = 0.0):
        super().__init__()
        self.block_size = block_size
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd), wpe=nn.Embedding(block_size, n_embd), drop=nn.Dropout(dropout),
            h=nn.ModuleList(_Block(n_embd, n_head, dropout) for _ in range(n_layer)), ln_f=_LayerNorm(n_embd)))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        pos = torch.arange(idx.size(1), device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def loss(self, idx, targets):
        return self(idx, targets)[1]


def nanogpt_optimizer(model: nn.Module, lr: float = RECIPE["lr"], weight_decay: float = RECIPE["weight_decay"],
                      betas: tuple[float, float] = RECIPE["betas"], fused: bool = False) -> torch.optim.AdamW:
    """nanoGPT's ``configure_optimizers``: weight decay on tensors with dim >= 2, none on the rest."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, **({"fused": True} if fused else {}))


def _faster_adamw(model: nn.Module, x, y, device, repeats: int = 12) -> tuple[bool, dict]:
    """Time nanoGPT's optimizer step fused and as PyTorch's default, on copies of ``model``."""
    times: dict[bool, list[float]] = {}
    runs = {}
    for fused in (True, False):
        try:
            m = copy.deepcopy(model)
            runs[fused] = (m, nanogpt_optimizer(m, fused=fused))
            m.loss(x, y).backward()
            runs[fused][1].step()  # fused AdamW raises here where the device does not support it
            times[fused] = []
        except (RuntimeError, TypeError, ValueError):
            runs.pop(fused, None)
    for _ in range(repeats):
        for fused, (_, opt) in runs.items():
            _sync(device)
            t = time.perf_counter()
            opt.step()
            _sync(device)
            times[fused].append(time.perf_counter() - t)
    ms = {fused: 1e3 * statistics.median(ts) for fused, ts in times.items()}
    return min(ms, key=ms.get), ms


# ------------------------------------------------------------------------------------ measuring
def _sync(device: torch.device) -> None:
    """Wait for queued GPU work before reading the clock (CUDA and Apple MPS run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_flops(device: torch.device, n: int = 512, repeats: int = 20) -> float:
    """Measured float32 matmul throughput (FLOP/s): median over ``repeats`` n x n x n products."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    times = []
    for _ in range(repeats + 3):
        _sync(device)
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        _sync(device)
        times.append((time.perf_counter() - t) / 4)
    return 2 * n**3 / statistics.median(times[3:])


def _time_step(model, opt, x, y, device) -> tuple[float, float]:
    """Seconds of (forward + backward, optimizer step) for one training step."""
    _sync(device)
    t0 = time.perf_counter()
    loss = model.loss(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    _sync(device)
    t1 = time.perf_counter()
    opt.step()
    _sync(device)
    return t1 - t0, time.perf_counter() - t1


def _models(V: int, T: int, dev: torch.device, x, y) -> tuple[dict, dict]:
    """The three models with their optimizers, and how the baseline's AdamW was chosen."""
    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=V, context_length=T, **SHAPE)).to(dev)
    torch.manual_seed(0)
    plain = GPT(GPTConfig(vocab_size=V, context_length=T, kernels="reference", **SHAPE)).to(dev)
    torch.manual_seed(0)
    nano = NanoGPT(V, T, SHAPE["n_layers"], SHAPE["n_heads"], SHAPE["d_model"]).to(dev)
    fused, opt_ms = _faster_adamw(nano, x, y, dev)
    models = {
        "minilm": (ours, default_optimizer(ours, RECIPE["lr"])),
        "reference": (plain, default_optimizer(plain, RECIPE["lr"])),
        "nanogpt": (nano, nanogpt_optimizer(nano, fused=fused)),
    }
    return models, {"nanogpt_fused_adamw": fused, "nanogpt_adamw_ms": opt_ms}


def run_bench(steps: int = 90, threads: int | None = None, device: str = "auto",
              batch_size: int = 12, context_length: int = 64, warmup: int = 5) -> dict:
    """Time minilm's GPT (fast and reference kernels) and nanoGPT, taking turns step by step."""
    configure_threads(threads, verbose=False)
    dev = resolve_device(device)
    data = load_dataset("pydoc")
    V, T = data.vocab_size, context_length
    rng = np.random.default_rng(0)
    models, out = _models(V, T, dev, *get_batch(data.train, batch_size, T, dev, rng))
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    runs = {name: object() for name in models}  # each model's steps are one run of the open ledgers
    for i in range(warmup + steps):  # the first steps allocate memory and pick kernels: not timed
        x, y = get_batch(data.train, batch_size, T, dev, rng)
        order = list(models) if i % 2 == 0 else list(models)[::-1]  # no model always goes first
        for name in order:
            t = _time_step(*models[name], x, y, dev)
            charge(training_flops(models[name][0], x.numel(), T), tokens=x.numel(), seconds=sum(t),
                   label=f"bench {name}", run=runs[name])
            if i >= warmup:
                times[name].append(t)
    peak = matmul_flops(dev)
    tokens = batch_size * T
    out.update({"device": str(dev), "threads": torch.get_num_threads(), "matmul_gflops": peak / 1e9, "steps": steps})
    for name, (model, _) in models.items():
        ms = statistics.median(fb + op for fb, op in times[name]) * 1e3
        out[f"{name}_params"] = sum(p.numel() for p in model.parameters())
        out[f"{name}_ms_per_step"] = ms
        out[f"{name}_fwd_bwd_ms"] = statistics.median(fb for fb, _ in times[name]) * 1e3
        out[f"{name}_optimizer_ms"] = statistics.median(op for _, op in times[name]) * 1e3
        out[f"{name}_tokens_per_s"] = tokens / (ms / 1e3)
    out["minilm_mfu"] = models["minilm"][0].flops_per_token() * out["minilm_tokens_per_s"] / peak
    for base in ("nanogpt", "reference"):  # > 1: minilm's default is faster
        out[f"speed_vs_{base}"] = out[f"{base}_ms_per_step"] / out["minilm_ms_per_step"]
        out[f"fwd_bwd_vs_{base}"] = out[f"{base}_fwd_bwd_ms"] / out["minilm_fwd_bwd_ms"]
    return out


def format_bench(r: dict) -> str:
    """The report ``minilm bench`` prints."""
    def row(label, name):
        return (f"{label:34s}{r[f'{name}_params'] / 1e6:5.2f}M params {r[f'{name}_ms_per_step']:7.1f} ms/step "
                f"(fwd+bwd {r[f'{name}_fwd_bwd_ms']:5.1f}, optimizer {r[f'{name}_optimizer_ms']:4.1f}) "
                f"{r[f'{name}_tokens_per_s']:7.0f} tokens/s")

    adamw = "fused" if r["nanogpt_fused_adamw"] else "per-tensor"
    opt = ", ".join(f"{'fused' if f else 'per-tensor'} {ms:.1f} ms" for f, ms in r["nanogpt_adamw_ms"].items())
    return "\n".join([
        f"device {r['device']}, {r['threads']} thread(s); measured fp32 matmul {r['matmul_gflops']:.1f} GFLOP/s",
        "shape: nanoGPT's CPU recipe (4 layers, 4 heads, d_model 128, context 64, batch 12), char-level pydoc; "
        f"medians of {r['steps']} steps each, the models taking turns",
        row("minilm GPT (default, fast kernels)", "minilm") + f"  MFU {100 * r['minilm_mfu']:.1f}%",
        row("minilm GPT (reference kernels)", "reference"),
        row(f"nanoGPT model.py ({adamw} AdamW)", "nanogpt"),
        f"nanoGPT's optimizer step: {opt} -> the faster ({adamw}) is used (nanoGPT itself fuses on CUDA only)",
        f"minilm vs nanoGPT: {r['speed_vs_nanogpt']:.2f}x the speed per step "
        f"({r['fwd_bwd_vs_nanogpt']:.2f}x in forward+backward alone; >1 = minilm faster)",
        f"fast vs reference kernels: {r['speed_vs_reference']:.2f}x the speed per step",
    ])


# ---------------------------------------------------------------------------- time to a loss
def nanogpt_lr(step: int, recipe: dict = RECIPE) -> float:
    """nanoGPT's learning rate: linear warmup, then cosine decay to min_lr at max_iters."""
    lr, min_lr, warmup, total = recipe["lr"], recipe["min_lr"], recipe["warmup_iters"], recipe["max_iters"]
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if step > total:
        return min_lr
    ratio = (step - warmup) / (total - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def _crossing_time(times: list[float], losses: list[float], target: float) -> float | None:
    """First time the validation loss reaches ``target``, interpolated linearly between evaluations."""
    for i, (t, loss) in enumerate(zip(times, losses)):
        if loss <= target:
            if i == 0:
                return t
            t0, l0 = times[i - 1], losses[i - 1]
            return t0 + (t - t0) * (l0 - target) / (l0 - loss)
    return None


def _val_loss(model, batches) -> float:
    model.eval()
    with torch.no_grad():
        losses = [float(model.loss(x, y)) for x, y in batches]
    model.train()
    return sum(losses) / len(losses)


def run_to_loss(steps: int = RECIPE["max_iters"], eval_every: int = 50, eval_batches: int = 20,
                threads: int | None = None, device: str = "auto", batch_size: int = 12,
                context_length: int = 64, seed: int = 0) -> dict:
    """Train minilm's GPT and nanoGPT on the same batches; time minilm to nanoGPT's final val loss.

    minilm trains as ``minilm train`` does (default config, ``default_optimizer`` at lr 3e-3,
    constant, gradient clipping at 1.0); nanoGPT with its recipe (``RECIPE``: lr 1e-3 with 100
    warmup steps and cosine decay to 1e-4 at ``steps``, betas (0.9, 0.99), clipping at 1.0). Both
    take turns step by step; only training steps are timed. Validation (the same ``eval_batches``
    windows for both) every ``eval_every`` steps; minilm's time to nanoGPT's final loss is
    interpolated between its evaluations.
    """
    if steps < 1 or eval_every < 1 or eval_batches < 1:
        raise ValueError(f"steps, eval_every and eval_batches must be >= 1, got {steps}, {eval_every}, {eval_batches}")
    configure_threads(threads, verbose=False)
    dev = resolve_device(device)
    data = load_dataset("pydoc")
    V, T = data.vocab_size, context_length
    rng, vrng = np.random.default_rng(seed), np.random.default_rng(10_000 + seed)
    val = [get_batch(data.val, batch_size, T, dev, vrng) for _ in range(eval_batches)]
    torch.manual_seed(seed)
    ours = GPT(GPTConfig(vocab_size=V, context_length=T, **SHAPE)).to(dev)
    torch.manual_seed(seed)
    nano = NanoGPT(V, T, SHAPE["n_layers"], SHAPE["n_heads"], SHAPE["d_model"]).to(dev)
    fused, _ = _faster_adamw(nano, *val[0], dev)
    recipe = dict(RECIPE, max_iters=steps)
    runs = {"minilm": (ours, default_optimizer(ours, MINILM_TRAIN_LR), lambda s: MINILM_TRAIN_LR),
            "nanogpt": (nano, nanogpt_optimizer(nano, fused=fused), lambda s: nanogpt_lr(s, recipe))}
    clock = dict.fromkeys(runs, 0.0)
    run_ids = {name: object() for name in runs}  # each model's steps are one run of the open ledgers
    hist = {name: {"step": [0], "time": [0.0], "val_loss": [_val_loss(m, val)]} for name, (m, _, _) in runs.items()}
    for step in range(steps):
        x, y = get_batch(data.train, batch_size, T, dev, rng)
        for name in (list(runs) if step % 2 == 0 else list(runs)[::-1]):
            model, opt, lr = runs[name]
            _sync(dev)
            t = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = lr(step)
            loss = model.loss(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            _sync(dev)
            clock[name] += time.perf_counter() - t
            charge(training_flops(model, x.numel(), T), tokens=x.numel(), seconds=time.perf_counter() - t,
                   label=f"run_to_loss {name}", run=run_ids[name])
        if (step + 1) % eval_every == 0 or step == steps - 1:
            for name, (model, _, _) in runs.items():
                h = hist[name]
                h["step"].append(step + 1), h["time"].append(clock[name]), h["val_loss"].append(_val_loss(model, val))
    target = hist["nanogpt"]["val_loss"][-1]
    reach = _crossing_time(hist["minilm"]["time"], hist["minilm"]["val_loss"], target)
    return {"device": str(dev), "threads": torch.get_num_threads(), "steps": steps, "nanogpt_fused_adamw": fused,
            "target_loss": target, "nanogpt_time_s": clock["nanogpt"], "minilm_time_s": clock["minilm"],
            "minilm_time_to_target_s": reach, "minilm_final_loss": hist["minilm"]["val_loss"][-1],
            "time_ratio": None if reach is None else clock["nanogpt"] / reach, "history": hist}


def format_to_loss(r: dict) -> str:
    """The report of ``run_to_loss``."""
    n, m = r["steps"], r["history"]["minilm"]
    lines = [
        f"device {r['device']}, {r['threads']} thread(s); {n} steps each on the same batches, taking turns",
        f"nanoGPT (its recipe, {'fused' if r['nanogpt_fused_adamw'] else 'per-tensor'} AdamW): final val loss "
        f"{r['target_loss']:.4f} after {r['nanogpt_time_s']:.1f} s of training "
        f"({1e3 * r['nanogpt_time_s'] / n:.1f} ms/step)",
        f"minilm (as `minilm train`): final val loss {r['minilm_final_loss']:.4f} after {r['minilm_time_s']:.1f} s "
        f"({1e3 * r['minilm_time_s'] / n:.1f} ms/step)",
    ]
    if r["time_ratio"] is None:
        lines.append(f"minilm did not reach {r['target_loss']:.4f} within {n} steps")
    else:
        i = next(i for i, loss in enumerate(m["val_loss"]) if loss <= r["target_loss"])
        lines.append(f"minilm reached nanoGPT's final loss after {r['minilm_time_to_target_s']:.1f} s (between steps "
                     f"{m['step'][max(i - 1, 0)]} and {m['step'][i]}): {r['time_ratio']:.2f}x nanoGPT's speed "
                     "to that loss")
    return "\n".join(lines)
