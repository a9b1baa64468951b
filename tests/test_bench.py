"""``minilm bench``: its baselines are what they claim to be, and its report is complete.

Speed itself is measured by running the benchmark, never asserted in a test.
"""

import torch

from minilm.bench import _Llama, format_bench, run_bench
from minilm.models import GPT, GPTConfig


def test_llama_style_baseline_is_the_same_model_as_minilms_gpt():
    # The like-for-like baseline is an independent, plainly written implementation of minilm's
    # architecture: given the same weights it must give the same loss and the same gradients.
    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=50, context_length=16, n_layers=2, n_heads=4, d_model=32))
    plain = _Llama(50, 16, 2, 32, 4, ours.config.d_ff)
    plain.tok.weight.data.copy_(ours.tok_emb.weight)
    plain.head.weight.data.copy_(ours.head.weight)
    for b, p in zip(ours.blocks, plain.blocks):
        wq, wk, wv = b.attn.wqkv.weight.chunk(3, dim=0)
        for dst, src in [(p.wq, wq), (p.wk, wk), (p.wv, wv), (p.wo, b.attn.wo.weight),
                         (p.w1, b.ffn.w1.weight), (p.w2, b.ffn.w2.weight), (p.w3, b.ffn.w3.weight)]:
            dst.weight.data.copy_(src)
    idx = torch.randint(0, 50, (3, 17))
    a, b = ours.loss(idx[:, :-1], idx[:, 1:]), plain.loss(idx[:, :-1], idx[:, 1:])
    assert abs(a.item() - b.item()) < 1e-5
    a.backward()
    b.backward()
    assert torch.allclose(ours.blocks[1].ffn.w2.weight.grad, plain.blocks[1].w2.weight.grad, atol=1e-5)
    assert torch.allclose(ours.blocks[0].attn.wqkv.weight.grad[:32], plain.blocks[0].wq.weight.grad, atol=1e-5)


def test_bench_runs_and_reports_its_figures():
    r = run_bench(steps=2, warmup=1, device="cpu")
    for name in ("minilm", "llama", "gpt2"):
        assert r[f"{name}_ms_per_step"] > r[f"{name}_fwd_bwd_ms"] > 0
    assert r["minilm_params"] == r["llama_params"]  # the same architecture
    assert 0 < r["minilm_mfu"] < 1 and r["steps"] == 2
    text = format_bench(r)
    assert "MFU" in text and "Llama-style" in text and "GPT-2" in text and "x the speed per step" in text
