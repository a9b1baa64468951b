"""``minilm bench``: training throughput of minilm's GPT on this machine.

Trains a character-level GPT of the classic small CPU shape (4 layers, 4 heads, d=128, context 64,
batch 12) on the documentation corpus, side by side with a straightforward nanoGPT-style model of
the same shape (LayerNorm, GELU MLP, learned positions, SDPA), alternating the two in rounds so a
busy machine slows both alike. Prints tokens/s, ms/step (medians) and model-FLOPs utilisation
(MFU) against the float32 matmul throughput measured on the same machine in the same run.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from minilm.data import get_batch, load_dataset
from minilm.device import resolve_device
from minilm.models import GPT, GPTConfig
from minilm.train import default_optimizer


class _NanoGPTBlock(nn.Module):
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


class _NanoGPT(nn.Module):
    """The baseline: GPT-2 as in nanoGPT's model.py, at the same shape."""

    def __init__(self, vocab: int, ctx: int, n_layers: int, d: int, n_heads: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(_NanoGPTBlock(d, n_heads) for _ in range(n_layers))
        self.ln_f, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)
        self.wte.weight = self.head.weight  # nanoGPT ties them

    def loss(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def matmul_flops(device: torch.device, n: int = 512, repeats: int = 20) -> float:
    """Measured float32 matmul throughput (FLOP/s): median over ``repeats`` n x n x n products."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    times = []
    for _ in range(repeats + 3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) / 4)
    return 2 * n**3 / statistics.median(times[3:])


def _time_steps(model, opt, data, steps, batch, ctx, device, rng_seed) -> list[float]:
    import numpy as np

    rng = np.random.default_rng(rng_seed)
    out = []
    for _ in range(steps):
        x, y = get_batch(data, batch, ctx, device, rng)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return out


def run_bench(steps: int = 60, rounds: int = 3, threads: int | None = None, device: str = "auto",
              batch_size: int = 12, context_length: int = 64) -> dict:
    """Time both models; returns the figures ``minilm bench`` prints."""
    if threads is not None:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    data = load_dataset("pydoc")
    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=data.vocab_size, context_length=context_length, n_layers=4, n_heads=4,
                         d_model=128)).to(dev)
    base = _NanoGPT(data.vocab_size, context_length, 4, 128, 4).to(dev)
    opts = {"minilm": default_optimizer(ours, 1e-3), "nanogpt": torch.optim.AdamW(base.parameters(), 1e-3)}
    models = {"minilm": ours, "nanogpt": base}
    times: dict[str, list[float]] = {"minilm": [], "nanogpt": []}
    for name, m in models.items():  # warm-up: first steps allocate and pick kernels
        _time_steps(m, opts[name], data.train, 5, batch_size, context_length, dev, 0)
    per_round = max(1, steps // rounds)
    for r in range(rounds):
        for name, m in models.items():
            times[name] += _time_steps(m, opts[name], data.train, per_round, batch_size, context_length, dev, r + 1)
    peak = matmul_flops(dev)
    tokens = batch_size * context_length
    out = {"device": str(dev), "threads": torch.get_num_threads(), "matmul_gflops": peak / 1e9,
           "params_minilm": ours.num_params(), "params_nanogpt": sum(p.numel() for p in base.parameters())}
    for name in models:
        ms = statistics.median(times[name]) * 1e3
        out[f"{name}_ms_per_step"] = ms
        out[f"{name}_tokens_per_s"] = tokens / (ms / 1e3)
    out["minilm_mfu"] = ours.flops_per_token() * out["minilm_tokens_per_s"] / peak
    out["speed_ratio"] = out["nanogpt_ms_per_step"] / out["minilm_ms_per_step"]
    return out


def format_bench(r: dict) -> str:
    return "\n".join([
        f"device {r['device']}, {r['threads']} thread(s); measured fp32 matmul {r['matmul_gflops']:.1f} GFLOP/s",
        "shape: 4 layers, 4 heads, d_model 128, context 64, batch 12 (char-level, pydoc corpus)",
        f"minilm GPT   {r['params_minilm']/1e6:.2f}M params  {r['minilm_ms_per_step']:7.1f} ms/step  "
        f"{r['minilm_tokens_per_s']:8.0f} tokens/s  MFU {100 * r['minilm_mfu']:.1f}%",
        f"nanoGPT-style {r['params_nanogpt']/1e6:.2f}M params  {r['nanogpt_ms_per_step']:7.1f} ms/step  "
        f"{r['nanogpt_tokens_per_s']:8.0f} tokens/s",
        f"minilm is {r['speed_ratio']:.2f}x the speed of the baseline (median ms/step ratio; >1 = faster)",
    ])

