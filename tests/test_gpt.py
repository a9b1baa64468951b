import math

import pytest
import torch
import torch.nn.functional as F

from minilm.models import GPT, GPTConfig, KVCache, RMSNorm, apply_rope, rope_angles
from minilm.models.gpt import SwiGLU, explicit_attention


def small(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=50, context_length=32, n_layers=2, n_heads=4, d_model=32)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg))


def test_explicit_attention_matches_sdpa_with_any_mask(device):
    q, k, v = torch.randn(3, 2, 4, 7, 8, generator=torch.Generator().manual_seed(0)).to(device).unbind(0)
    causal = torch.ones(7, 7, dtype=torch.bool, device=device).tril()
    ours, w = explicit_attention(q, k, v, causal)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(ours, ref, atol=1e-6)
    assert torch.allclose(w.sum(-1), torch.ones(2, 4, 7, device=device))
    band = causal & ~torch.ones(7, 7, dtype=torch.bool, device=device).tril(-3)
    assert torch.allclose(explicit_attention(q, k, v, band)[0],
                          F.scaled_dot_product_attention(q, k, v, attn_mask=band), atol=1e-6)


def test_gpt_explicit_and_sdpa_paths_agree(device):
    m = small().to(device)
    x = torch.randint(0, 50, (2, 32)).to(device)
    fast = m(x)
    m.config.attn_impl = "explicit"
    assert torch.allclose(m(x), fast, atol=1e-5)


def test_rmsnorm_matches_formula(device):
    # The module's default is the reference formula; the fast kernel is tested in test_kernels.py.
    g = torch.Generator().manual_seed(0)
    norm = RMSNorm(16, eps=1e-5).to(device)
    norm.weight.data = torch.randn(16, generator=g).to(device)
    x = torch.randn(3, 5, 16, generator=g).to(device)
    ref = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    assert torch.allclose(norm(x), ref, atol=1e-6)
    assert norm.eps == 1e-5


def _attention_layer(impl, dropout):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, context_length=16, n_layers=1, n_heads=2, d_model=16, attn_impl=impl,
                    dropout=dropout)
    return GPT(cfg).blocks[0].attn


def test_attention_dropout_is_off_in_eval_mode_and_both_paths_agree(device):
    x = torch.randint(0, 50, (2, 16)).to(device)
    outs = {}
    for impl in ("explicit", "sdpa"):
        for p in (0.0, 0.4):
            torch.manual_seed(0)
            m = GPT(GPTConfig(vocab_size=50, context_length=16, n_layers=2, n_heads=2, d_model=16,
                              attn_impl=impl, dropout=p)).to(device).eval()
            outs[impl, p] = m(x)
    for key, out in outs.items():
        assert torch.allclose(out, outs["explicit", 0.0], atol=1e-5), key


@pytest.mark.parametrize("impl", ["explicit", "sdpa"])
def test_attention_dropout_drops_probabilities_with_inverted_scaling(impl, device):
    # Both paths drop attention *probabilities* (not the output) with probability p and scale the
    # kept ones by 1/(1-p). SDPA returns no weights, so v is the identity: the output row i is then
    # row i of the (dropped) weight matrix. The masks come from the device's generator (seeded by
    # torch.manual_seed), so each device draws its own: the checks below are statistical.
    p, R = 0.3, 300
    attn = _attention_layer(impl, p).to(device)
    B, H, T = 2, 2, 16
    q, k = torch.randn(2, B, H, T, 8, generator=torch.Generator().manual_seed(1)).to(device).unbind(0)
    v = torch.eye(T, device=device).expand(B, H, T, T)
    attn.eval()
    w = attn.attend(q, k, v, None)[0]  # (B, H, T, T): the weights without dropout
    attn.train()
    torch.manual_seed(2)
    draws = torch.stack([attn.attend(q, k, v, None)[0] for _ in range(R)])  # (R, B, H, T, T)
    allowed = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    kept = draws[..., allowed] != 0
    assert w[..., allowed].min() > 0  # so a zero can only come from dropout
    n = kept.numel()
    assert abs((~kept).float().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)  # binomial: 5 sigma
    scaled = (w / (1 - p)).expand_as(draws)[..., allowed]
    assert torch.allclose(draws[..., allowed][kept], scaled[kept], rtol=1e-5)  # kept = w / (1 - p)
    assert (draws[..., ~allowed] == 0).all()  # the mask still holds
    # Monte-Carlo mean = the no-dropout weights, within 5 standard errors w sqrt(p / (1 - p) / R).
    z = (draws.mean(0) - w)[..., allowed] / (w[..., allowed] * math.sqrt(p / (1 - p) / R))
    assert z.abs().max() < 5, z.abs().max()


def test_rope_score_depends_only_on_offset(device):
    q, k = torch.randn(2, 16, generator=torch.Generator().manual_seed(0)).to(device)
    def score(m, n):
        cq, sq = rope_angles(torch.tensor([m], device=device), 16)
        ck, sk = rope_angles(torch.tensor([n], device=device), 16)
        return (apply_rope(q[None], cq, sq) * apply_rope(k[None], ck, sk)).sum()
    for offset in (0, 1, 5, 17):
        s = [float(score(m + offset, m)) for m in (0, 3, 40, 500)]
        assert max(s) - min(s) < 1e-4, s
    assert abs(score(5, 0) - score(6, 0)) > 1e-3  # and it does depend on the offset


def test_rope_interleaved_pairs_closed_form_and_half_convention(device):
    x = torch.arange(8.0, device=device)[None]  # one position, head_dim 8
    cos, sin = rope_angles(torch.tensor([3], device=device), 8, base=100.0)
    out = apply_rope(x, cos, sin, "interleaved")
    for i in range(4):  # pair (x[2i], x[2i+1]) rotated by angle 3 * 100^(-2i/8)
        a = 3 * 100 ** (-2 * i / 8)
        x0, x1 = float(x[0, 2 * i]), float(x[0, 2 * i + 1])
        assert float(out[0, 2 * i]) == pytest.approx(x0 * math.cos(a) - x1 * math.sin(a), abs=1e-5)
        assert float(out[0, 2 * i + 1]) == pytest.approx(x0 * math.sin(a) + x1 * math.cos(a), abs=1e-5)
    # The half convention is the interleaved one on permuted channels.
    perm = torch.tensor([0, 2, 4, 6, 1, 3, 5, 7], device=device)
    assert torch.allclose(apply_rope(x[:, perm], cos, sin, "half"), out[:, perm], atol=1e-6)
    with pytest.raises(ValueError, match="pairing"):
        apply_rope(x, cos, sin, "neox")


def test_rope_gradient_is_the_inverse_rotation(device):
    # RoPE is orthogonal, so its backward pass rotates the gradient by minus the angle: checked
    # against that closed form for both pairings, on a contiguous tensor and on a strided view
    # like the q or k slice of a fused qkv projection.
    gen = torch.Generator().manual_seed(0)
    cos, sin = rope_angles(torch.arange(6, device=device), 8)
    g = torch.randn(2, 1, 6, 8, generator=gen).to(device)
    expected = {p: apply_rope(g, cos, -sin, p) for p in ("interleaved", "half")}  # rotation by -angle
    for pairing in ("interleaved", "half"):
        leaf = torch.randn(2, 1, 6, 8, generator=gen).to(device).requires_grad_()
        (apply_rope(leaf, cos, sin, pairing) * g).sum().backward()
        assert torch.allclose(leaf.grad, expected[pairing], atol=1e-6), pairing
        qkv = torch.randn(2, 6, 24, generator=gen).to(device).requires_grad_()
        k = qkv[..., 8:16].view(2, 6, 1, 8).transpose(1, 2)  # (B, H, T, hd), non-contiguous
        (apply_rope(k, cos, sin, pairing) * g).sum().backward()
        assert torch.allclose(qkv.grad[..., 8:16], expected[pairing].transpose(1, 2).reshape(2, 6, 8), atol=1e-6)
        assert qkv.grad[..., :8].abs().max() == 0 and qkv.grad[..., 16:].abs().max() == 0


def test_swiglu_matches_formula(device):
    torch.manual_seed(0)
    ffn = SwiGLU(GPTConfig(vocab_size=10, d_model=16, n_heads=2, d_ff=24)).to(device)
    x = torch.randn(4, 16).to(device)
    W1, W2, W3 = ffn.w1.weight, ffn.w2.weight, ffn.w3.weight
    h = x @ W1.T
    ref = (h * torch.sigmoid(h) * (x @ W3.T)) @ W2.T
    assert torch.allclose(ffn(x), ref, atol=1e-6)
    assert W1.shape == (24, 16) and W2.shape == (16, 24)  # PyTorch's (out, in) layout


def test_num_params_matches_count_by_hand():
    V, C, L, F_ = 50, 32, 2, GPTConfig(vocab_size=50, d_model=32, n_heads=4).d_ff
    per_block = 4 * C * C + 3 * C * F_ + 2 * C  # attention, SwiGLU, two RMSNorm gains
    untied = small()
    assert untied.num_params() == V * C + L * per_block + C + V * C
    assert untied.num_params(non_embedding=True) == L * per_block + C + V * C
    tied = small(tie_embeddings=True)
    assert tied.num_params() == V * C + L * per_block + C
    assert sum(p.numel() for p in tied.parameters()) == tied.num_params()
    assert not any(n.endswith("bias") for n, _ in untied.named_parameters())


def test_flops_per_token_formula():
    m = small()
    c = m.config
    assert m.flops_per_token() == 6 * m.num_params(non_embedding=True) + 6 * c.n_layers * c.context_length * c.d_model


def test_initial_loss_is_ln_vocab(device):
    m = small(vocab_size=200).to(device)
    x = torch.randint(0, 200, (8, 32)).to(device)
    assert abs(m.loss(x, x).item() - math.log(200)) < 0.05


def test_kv_cache_decoding_equals_full_forward(device):
    m = small().to(device).eval()
    x = torch.randint(0, 50, (2, 20)).to(device)
    with torch.no_grad():
        full = m(x)
        cache = KVCache(m.config.n_layers)
        parts = [m(x[:, :7], cache=cache)] + [m(x[:, t : t + 1], cache=cache) for t in range(7, 20)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
    assert len(cache) == 20 and cache.nbytes() == 2 * 2 * 2 * 20 * 32 * 4


def test_generate_greedy_matches_argmax_and_topk_respected(device):
    m = small().to(device).eval()
    prompt = torch.randint(0, 50, (1, 5)).to(device)
    out = m.generate(prompt, 40, temperature=0)  # runs past context_length=32
    assert out.shape == (1, 45)
    with torch.no_grad():
        assert out[0, 5] == m(prompt)[0, -1].argmax()
        assert out[0, 40] == m(out[:, 40 - 32 : 40])[0, -1].argmax()
    g = torch.Generator(device=device).manual_seed(0)  # torch.multinomial wants one on the logits' device
    sampled = m.generate(prompt, 30, temperature=1.0, top_k=1, generator=g)
    assert torch.equal(sampled[:, :30], out[:, :30])  # top-1 sampling is greedy


@pytest.mark.parametrize(
    "kw, field",
    [({"d_model": 30, "n_heads": 4}, "d_model"), ({"n_layers": 0}, "n_layers"), ({"attn_impl": "flash"}, "attn_impl"),
     ({"d_model": 12, "n_heads": 4}, "even"), ({"vocab_size": -1}, "vocab_size")],
)
def test_bad_config_names_field(kw, field):
    cfg = dict(vocab_size=50, d_model=32, n_heads=4)
    cfg.update(kw)
    with pytest.raises(ValueError, match=field):
        GPTConfig(**cfg)


def test_bad_inputs():
    m = small()
    with pytest.raises(ValueError, match="context_length"):
        m(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size"):
        m(torch.full((1, 4), 50))
    with pytest.raises(ValueError, match="batch, time"):
        m(torch.zeros(4, dtype=torch.long))


# ------------------------------------------------------------------------------ grouped-query attention
def _gqa(n_kv_heads, impl="sdpa", seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=23, context_length=32, n_layers=2, n_heads=4, d_model=32,
                    n_kv_heads=n_kv_heads, attn_impl=impl)
    return GPT(cfg).eval()


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_gqa_attention_matches_sdpa_with_repeated_kv(n_kv_heads):
    """Reference: q, k, v sliced from wqkv by hand, k/v heads repeated (HF's repeat_kv), PyTorch's SDPA."""
    model = _gqa(n_kv_heads)
    attn, cfg = model.blocks[0].attn, model.config
    H, hd, B, T = cfg.n_heads, cfg.head_dim, 2, 9
    assert attn.wqkv.weight.shape == (cfg.d_model + 2 * n_kv_heads * hd, cfg.d_model)
    x = torch.randn(B, T, cfg.d_model, generator=torch.Generator().manual_seed(1))
    cos, sin = rope_angles(torch.arange(T), hd, cfg.rope_base)
    with torch.no_grad():
        out, _ = attn(x, (cos, sin), (cos, sin), None)
        w = attn.wqkv.weight
        q = (x @ w[: cfg.d_model].T).view(B, T, H, hd)
        k = (x @ w[cfg.d_model : cfg.d_model + n_kv_heads * hd].T).view(B, T, n_kv_heads, hd)
        v = (x @ w[cfg.d_model + n_kv_heads * hd :].T).view(B, T, n_kv_heads, hd)
        q = apply_rope(q, cos[:, None], sin[:, None], cfg.rope_pairing).transpose(1, 2)
        k = apply_rope(k, cos[:, None], sin[:, None], cfg.rope_pairing).transpose(1, 2)
        v = v.transpose(1, 2)
        rep = H // n_kv_heads
        k = k[:, :, None].expand(B, n_kv_heads, rep, T, hd).reshape(B, H, T, hd)  # head h -> kv head h // rep
        v = v[:, :, None].expand(B, n_kv_heads, rep, T, hd).reshape(B, H, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, cfg.d_model)
        ref = attn.wo(y)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_kv_heads", [1, 2])
def test_gqa_explicit_equals_sdpa_and_kv_cache_equals_full_forward(n_kv_heads):
    sdpa, explicit = _gqa(n_kv_heads), _gqa(n_kv_heads, impl="explicit")
    idx = torch.randint(0, 23, (2, 13), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = sdpa(idx)
        torch.testing.assert_close(explicit(idx), full, atol=1e-5, rtol=1e-5)
        cache, out = KVCache(2), []
        for t in range(idx.size(1)):
            out.append(sdpa(idx[:, t : t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(out, dim=1), full, atol=1e-5, rtol=1e-5)
    hd = sdpa.config.head_dim  # the cache holds n_kv_heads heads per layer, not n_heads: GQA's memory saving
    assert cache.nbytes() == 2 * 2 * 2 * n_kv_heads * hd * 4 * idx.size(1)  # layers * (k, v) * B * Hkv * hd * fp32


def test_gqa_default_is_multi_head_and_checkpoint_round_trips(tmp_path):
    assert GPTConfig(vocab_size=5, n_heads=4, d_model=32).n_kv_heads == 4
    torch.manual_seed(0)
    a = GPT(GPTConfig(vocab_size=23, n_heads=4, d_model=32))
    torch.manual_seed(0)
    b = GPT(GPTConfig(vocab_size=23, n_heads=4, d_model=32, n_kv_heads=4))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    from minilm.checkpoint import load_checkpoint, save_checkpoint

    model = _gqa(2)
    save_checkpoint(tmp_path / "gqa.pt", model)
    assert load_checkpoint(tmp_path / "gqa.pt")["config"]["n_kv_heads"] == 2
    for bad in (3, 0, 2.0):
        with pytest.raises(ValueError, match="n_kv_heads"):
            GPTConfig(vocab_size=5, n_heads=4, d_model=32, n_kv_heads=bad)
