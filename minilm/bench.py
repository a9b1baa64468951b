"""``minilm bench``: training throughput of minilm's GPT on this machine.

Trains a character-level GPT of the classic small CPU shape (4 layers, 4 heads, d=128, context 64,
batch 12) on the documentation corpus side by side with two straightforward nanoGPT-style models of
the same shape, written the way their well-known single-file versions write them:

  - "Llama-style": the same architecture as minilm's GPT (RMSNorm, rotary embeddings on interleaved
    pairs, SwiGLU, untied head, no biases) with separate q/k/v projections, RMSNorm and RoPE in
    plain autograd arithmetic, and PyTorch's AdamW with its defaults. Like for like: it measures
    how efficiently minilm implements its model.
  - "GPT-2": nanoGPT's model.py (LayerNorm, GELU MLP, learned positions, tied head, biases). A
    cheaper architecture per step: the modern recipe adds rotary embeddings and a gated MLP.

Each baseline uses nanoGPT's optimizer choice (fused AdamW on CUDA only, the per-tensor loop
elsewhere); minilm uses its ``default_optimizer`` (fused AdamW wherever PyTorch supports it, CPU
included). The three models take turns step by step, so a busy machine slows all of them alike.
Prints medians of ms/step (split into forward+backward and optimizer), tokens/s, and minilm's
model-FLOPs utilisation (MFU) against the float32 matmul throughput measured in the same run.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from minilm.data import get_batch, load_dataset
from minilm.device import resolve_device
from minilm.models import GPT, GPTConfig
from minilm.train import default_optimizer

SHAPE = dict(n_layers=4, n_heads=4, d_model=128)


# ------------------------------------------------------------------------- GPT-2 (nanoGPT) baseline
class _GPT2Block(nn.Module):
    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.n_heads = n_heads

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class _GPT2(nn.Module):
    """GPT-2 as in nanoGPT's model.py, at the bench's shape."""

    def __init__(self, vocab: int, ctx: int, n_layers: int, d_model: int, n_heads: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d_model), nn.Embedding(ctx, d_model)
        self.blocks = nn.ModuleList(_GPT2Block(d_model, n_heads) for _ in range(n_layers))
        self.ln_f, self.head = nn.LayerNorm(d_model), nn.Linear(d_model, vocab, bias=False)
        self.wte.weight = self.head.weight  # nanoGPT ties them

    def loss(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


# ------------------------------------------------------------- Llama-style (same model) baseline
class _PlainRMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _plain_rope(x, cos, sin):
    """x (B, T, H, hd); cos, sin (T, hd/2): rotate the pairs (x[2i], x[2i+1]) in real arithmetic."""
    a, b = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)  # (B, T, H, hd/2) each
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(3)


class _LlamaBlock(nn.Module):
    def __init__(self, d: int, n_heads: int, d_ff: int):
        super().__init__()
        self.n1, self.n2 = _PlainRMSNorm(d), _PlainRMSNorm(d)
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.w1, self.w3 = nn.Linear(d, d_ff, bias=False), nn.Linear(d, d_ff, bias=False)
        self.w2 = nn.Linear(d_ff, d, bias=False)
        self.n_heads = n_heads

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        h = self.n1(x)
        q, k, v = (w(h).view(B, T, self.n_heads, C // self.n_heads) for w in (self.wq, self.wk, self.wv))
        q, k = _plain_rope(q, cos, sin), _plain_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.wo(y)
        h = self.n2(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class _Llama(nn.Module):
    """The architecture of minilm's GPT, written the straightforward single-file way."""

    def __init__(self, vocab: int, ctx: int, n_layers: int, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.blocks = nn.ModuleList(_LlamaBlock(d_model, n_heads, d_ff) for _ in range(n_layers))
        self.norm, self.head = _PlainRMSNorm(d_model), nn.Linear(d_model, vocab, bias=False)
        hd = d_model // n_heads
        angles = torch.arange(ctx).float()[:, None] * 10000.0 ** (-torch.arange(0, hd, 2).float() / hd)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def loss(self, idx, targets):
        T = idx.size(1)
        x = self.tok(idx)
        for b in self.blocks:
            x = b(x, self.cos[:T], self.sin[:T])
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


# ------------------------------------------------------------------------------------ measuring
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


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


def run_bench(steps: int = 90, threads: int | None = None, device: str = "auto",
              batch_size: int = 12, context_length: int = 64, warmup: int = 5) -> dict:
    """Time minilm's GPT and the two baselines, taking turns step by step; returns the figures."""
    if threads is not None:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    data = load_dataset("pydoc")
    V, T = data.vocab_size, context_length
    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=V, context_length=T, **SHAPE)).to(dev)
    llama = _Llama(V, T, SHAPE["n_layers"], SHAPE["d_model"], SHAPE["n_heads"], ours.config.d_ff).to(dev)
    gpt2 = _GPT2(V, T, SHAPE["n_layers"], SHAPE["d_model"], SHAPE["n_heads"]).to(dev)
    fused = dev.type == "cuda"  # nanoGPT's choice
    models = {
        "minilm": (ours, default_optimizer(ours, 1e-3)),
        "llama": (llama, torch.optim.AdamW(llama.parameters(), 1e-3, fused=fused)),
        "gpt2": (gpt2, torch.optim.AdamW(gpt2.parameters(), 1e-3, fused=fused)),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    rng = np.random.default_rng(0)
    for i in range(warmup + steps):  # the first steps allocate memory and pick kernels: not timed
        x, y = get_batch(data.train, batch_size, T, dev, rng)
        order = list(models) if i % 2 == 0 else list(models)[::-1]  # no model always goes first
        for name in order:
            t = _time_step(*models[name], x, y, dev)
            if i >= warmup:
                times[name].append(t)
    peak = matmul_flops(dev)
    tokens = batch_size * T
    out = {"device": str(dev), "threads": torch.get_num_threads(), "matmul_gflops": peak / 1e9, "steps": steps}
    for name, (model, _) in models.items():
        ms = statistics.median(fb + op for fb, op in times[name]) * 1e3
        out[f"{name}_params"] = sum(p.numel() for p in model.parameters())
        out[f"{name}_ms_per_step"] = ms
        out[f"{name}_fwd_bwd_ms"] = statistics.median(fb for fb, _ in times[name]) * 1e3
        out[f"{name}_optimizer_ms"] = statistics.median(op for _, op in times[name]) * 1e3
        out[f"{name}_tokens_per_s"] = tokens / (ms / 1e3)
    out["minilm_mfu"] = ours.flops_per_token() * out["minilm_tokens_per_s"] / peak
    for base in ("llama", "gpt2"):  # > 1: minilm is faster
        out[f"speed_vs_{base}"] = out[f"{base}_ms_per_step"] / out["minilm_ms_per_step"]
        out[f"fwd_bwd_vs_{base}"] = out[f"{base}_fwd_bwd_ms"] / out["minilm_fwd_bwd_ms"]
    return out


def format_bench(r: dict) -> str:
    """The report ``minilm bench`` prints."""
    def row(label, name):
        return (f"{label:22s}{r[f'{name}_params'] / 1e6:5.2f}M params {r[f'{name}_ms_per_step']:7.1f} ms/step "
                f"(fwd+bwd {r[f'{name}_fwd_bwd_ms']:5.1f}, optimizer {r[f'{name}_optimizer_ms']:4.1f}) "
                f"{r[f'{name}_tokens_per_s']:7.0f} tokens/s")

    def ratio(base, label):
        return (f"minilm vs {label}: {r[f'speed_vs_{base}']:.2f}x the speed per step "
                f"({r[f'fwd_bwd_vs_{base}']:.2f}x in forward+backward alone; >1 = minilm faster)")

    return "\n".join([
        f"device {r['device']}, {r['threads']} thread(s); measured fp32 matmul {r['matmul_gflops']:.1f} GFLOP/s",
        "shape: 4 layers, 4 heads, d_model 128, context 64, batch 12 (char-level, pydoc corpus); "
        f"medians of {r['steps']} steps each, the models taking turns",
        row("minilm GPT", "minilm") + f"  MFU {100 * r['minilm_mfu']:.1f}%",
        row("Llama-style baseline", "llama"),
        row("GPT-2 (nanoGPT)", "gpt2"),
        ratio("llama", "the same model written plainly"),
        ratio("gpt2", "nanoGPT's GPT-2"),
    ])
