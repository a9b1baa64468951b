"""``minilm bench``: its nanoGPT baseline is what it claims to be, and its reports are complete.

Speed itself is measured by running the benchmark, never asserted in a test.
"""

import math

import pytest
import torch

import minilm.bench as bench
from minilm.bench import NanoGPT, format_bench, format_to_loss, nanogpt_lr, nanogpt_optimizer, run_bench, run_to_loss


def _nano(V=65, T=64, L=4, H=4, d=128):
    torch.manual_seed(0)
    return NanoGPT(V, T, L, H, d)


def test_nanogpt_baseline_has_nanogpts_parameter_count_and_structure():
    V, T, L, d = 65, 64, 4, 128
    m = _nano(V, T, L, 4, d)
    # nanoGPT with bias=False: tied wte/lm_head (V d), wpe (T d), per block c_attn 3d^2 + c_proj d^2
    # + c_fc 4d^2 + c_proj 4d^2 + two LayerNorm gains 2d, and ln_f's gain d.
    assert sum(p.numel() for p in m.parameters()) == V * d + T * d + L * (12 * d * d + 2 * d) + d
    assert m.lm_head.weight is m.transformer.wte.weight
    assert not any(name.endswith("bias") for name, _ in m.named_parameters())
    assert isinstance(m.transformer.h[0].mlp.gelu, torch.nn.GELU) and m.transformer.h[0].mlp.gelu.approximate == "none"
    assert all(mod.p == 0.0 for mod in m.modules() if isinstance(mod, torch.nn.Dropout))
    # Its initialisation: N(0, 0.02), and 0.02 / sqrt(2 L) on the residual projections.
    c_proj = torch.cat([b.attn.c_proj.weight.flatten() for b in m.transformer.h])
    assert abs(c_proj.std().item() - 0.02 / math.sqrt(2 * L)) < 0.1 * 0.02 / math.sqrt(2 * L)
    assert abs(m.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.002


def test_nanogpt_baseline_starts_at_ln_vocab_and_takes_an_optimizer_step():
    m = _nano(V=65)
    x, y = torch.randint(0, 65, (2, 12, 64), generator=torch.Generator().manual_seed(1))
    loss = m.loss(x, y)
    assert abs(loss.item() - math.log(65)) < 0.05  # small init: nearly uniform predictions
    opt = nanogpt_optimizer(m)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert decay["betas"] == (0.9, 0.99) and decay["lr"] == 1e-3  # config/train_shakespeare_char.py
    before = m.lm_head.weight.detach().clone()
    loss.backward()
    opt.step()
    assert not torch.equal(before, m.lm_head.weight)
    assert m.loss(x, y).item() < loss.item()


def test_nanogpt_learning_rate_schedule():
    assert nanogpt_lr(0) == pytest.approx(1e-3 / 101)  # linear warmup over 100 steps
    assert nanogpt_lr(100) == pytest.approx(1e-3)  # then cosine decay...
    assert nanogpt_lr(1050) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))
    assert nanogpt_lr(2000) == pytest.approx(1e-4) and nanogpt_lr(5000) == pytest.approx(1e-4)  # ...to min_lr


def test_crossing_time_interpolates_between_evaluations():
    assert bench._crossing_time([0, 10, 20], [4.0, 3.0, 2.0], 2.5) == pytest.approx(15.0)
    assert bench._crossing_time([0, 10], [4.0, 3.0], 1.0) is None


def test_clock_waits_for_cuda_and_mps(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append("cuda"))
    monkeypatch.setattr(torch.mps, "synchronize", lambda *a: calls.append("mps"))
    for dev in ("cpu", "cuda", "mps"):
        bench._sync(torch.device(dev))
    assert calls == ["cuda", "mps"]


def test_bench_runs_and_reports_its_figures():
    r = run_bench(steps=2, warmup=1, device="cpu")
    for name in ("minilm", "reference", "nanogpt"):
        assert r[f"{name}_ms_per_step"] > r[f"{name}_fwd_bwd_ms"] > 0
    assert r["minilm_params"] == r["reference_params"]  # the same model, two kernel sets
    assert 0 < r["minilm_mfu"] < 1 and r["steps"] == 2 and r["threads"] == torch.get_num_threads()
    assert set(r["nanogpt_adamw_ms"]) <= {True, False} and r["nanogpt_fused_adamw"] in r["nanogpt_adamw_ms"]
    text = format_bench(r)
    for part in ("MFU", "nanoGPT", "reference kernels", "x the speed per step", "thread(s)", "device cpu"):
        assert part in text


def test_run_to_loss_reports_the_time_to_nanogpts_final_loss():
    r = run_to_loss(steps=6, eval_every=3, eval_batches=1, device="cpu")
    for name in ("minilm", "nanogpt"):
        assert r["history"][name]["step"] == [0, 3, 6]
    assert r["target_loss"] == r["history"]["nanogpt"]["val_loss"][-1]
    assert r["minilm_time_s"] > 0 and r["nanogpt_time_s"] > 0
    if r["time_ratio"] is not None:
        assert r["time_ratio"] == pytest.approx(r["nanogpt_time_s"] / r["minilm_time_to_target_s"])
    assert "nanoGPT" in format_to_loss(r)
    with pytest.raises(ValueError, match="steps"):
        run_to_loss(steps=0)
