"""μP (minilm.mup): the table parameter by parameter, the forward multipliers against a forward
pass written out by hand, the optimizer's groups, bad configs, checkpoints, and the coordinate
check's slopes (flat under μP, rising under SP) on tiny widths."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minilm import mup
from minilm.checkpoint import save_checkpoint
from minilm.data import MarkovLanguage
from minilm.models import GPT, GPTConfig, KVCache, build_model, model_from_checkpoint
from minilm.models.gpt import apply_rope, rope_angles
from minilm.train import default_optimizer, train

V, BASE, L, H, SIGMA = 50, 64, 2, 4, 0.02


def gpt(d_model, parametrization="mup", base_width=BASE, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=V, context_length=16, n_layers=L, n_heads=H, d_model=d_model,
                    parametrization=parametrization, base_width=base_width, **kw)
    return GPT(cfg)


def expected_rule(name: str, d_model: int, lr: float, wd: float) -> tuple[str, float | None, float, float]:
    """The module docstring's table, written out again by name: (kind, init std, lr, weight decay).
    init std None: the parameter is not random (gains at 1, readout at 0)."""
    m = d_model / BASE
    residual = SIGMA / math.sqrt(2 * L)
    if name == "tok_emb.weight":
        return "embedding", SIGMA, lr, wd
    if name == "head.weight":
        return "readout", None, lr, wd
    if name.endswith("norm.weight"):
        return "vector", None, lr, 0.0
    std = residual if name.endswith(("attn.wo.weight", "ffn.w2.weight")) else SIGMA
    assert name.endswith(("attn.wqkv.weight", "attn.wo.weight", "ffn.w1.weight", "ffn.w2.weight", "ffn.w3.weight"))
    return "hidden", std / math.sqrt(m), lr / m, wd * m


@pytest.mark.parametrize("d_model", [128, 256])
def test_every_parameter_follows_the_table(d_model):
    model, lr, wd = gpt(d_model), 3e-3, 0.1
    groups = {id(p): g for g in default_optimizer(model, lr, wd).param_groups for p in g["params"]}
    C = d_model
    for name, p in model.named_parameters():
        kind, std, want_lr, want_wd = expected_rule(name, d_model, lr, wd)
        assert mup.parameter_kind(name, p) == kind, name
        assert groups[id(p)]["kind"] == kind, name
        assert groups[id(p)]["lr"] == pytest.approx(want_lr, rel=1e-12), name
        assert groups[id(p)]["weight_decay"] == pytest.approx(want_wd, rel=1e-12), name
        assert mup.mup_lr(kind, lr, d_model / BASE) == pytest.approx(want_lr, rel=1e-12), name
        w = p.detach().double()
        if kind == "readout":
            assert torch.count_nonzero(w) == 0, name
        elif kind == "vector":
            assert torch.equal(w, torch.ones_like(w)), name
        elif name.endswith("wqkv.weight"):
            assert torch.count_nonzero(w[:C]) == 0, f"{name}: the query rows start at 0"
            kv = w[C:]  # (2C, C): keys and values
            assert kv.std().item() == pytest.approx(std, rel=8 / math.sqrt(2 * kv.numel())), name
        else:  # ~8 standard errors of a sample std
            assert w.std().item() == pytest.approx(std, rel=8 / math.sqrt(2 * w.numel())), name


def test_mup_lr_and_init_scale_by_kind():
    assert mup.mup_lr("hidden", 1e-2, 4.0) == pytest.approx(2.5e-3)
    for kind in ("embedding", "vector", "readout"):
        assert mup.mup_lr(kind, 1e-2, 4.0) == 1e-2
    assert mup.mup_init_scale("hidden", 4.0) == pytest.approx(0.5)
    assert mup.mup_init_scale("readout", 4.0) == 0.0
    assert mup.mup_init_scale("embedding", 4.0) == mup.mup_init_scale("vector", 4.0) == 1.0
    with pytest.raises(ValueError, match="unknown parameter kind"):
        mup.mup_lr("bias", 1e-2, 2.0)
    with pytest.raises(ValueError, match="width_mult"):
        mup.mup_lr("hidden", 1e-2, 0.0)


def test_one_adam_step_moves_hidden_weights_by_lr_over_width_mult():
    # What the groups are for: Adam's first step moves every entry by about lr (the sign of its
    # gradient), so a hidden matrix's largest change is lr / m and an embedding's is lr.
    model, lr = gpt(256), 1e-2
    m = 256 / BASE
    with torch.no_grad():  # a non-zero readout, so that gradients reach every layer
        model.head.weight.normal_(0.0, 0.02)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = default_optimizer(model, lr, weight_decay=0.0)
    x = torch.randint(0, V, (4, 16), generator=torch.Generator().manual_seed(0))
    model.loss(x[:, :-1], x[:, 1:]).backward()
    opt.step()
    for name, p in model.named_parameters():
        step = (p.detach() - before[name]).abs().max().item()
        want = lr / m if mup.parameter_kind(name, p) == "hidden" else lr
        assert 0.9 * want < step <= want * (1 + 1e-5), (name, step, want)


def _hand_forward(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """μP's GPT forward in float64, each step written out: 1/d attention with the base head size's
    constant, and logits divided by width_mult."""
    c = model.config
    C, hd = c.d_model, c.d_model // c.n_heads
    d0 = c.base_width / c.n_heads
    W = {n: p.detach().double() for n, p in model.named_parameters()}
    B, T = idx.shape
    cos, sin = (a.double() for a in rope_angles(torch.arange(T), hd, c.rope_base))  # (T, hd/2)

    def rms(x, g):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + c.norm_eps) * g

    x = W["tok_emb.weight"][idx]  # (B, T, C)
    for i in range(c.n_layers):
        h = rms(x, W[f"blocks.{i}.attn_norm.weight"])
        q, k, v = (h @ W[f"blocks.{i}.attn.wqkv.weight"].T).split(C, dim=-1)  # (B, T, C) each
        q, k, v = (t.view(B, T, c.n_heads, hd).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        scores = q @ k.transpose(-2, -1) * math.sqrt(d0) / hd  # (B, H, T, T)
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        y = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ W[f"blocks.{i}.attn.wo.weight"].T
        h = rms(x, W[f"blocks.{i}.ffn_norm.weight"])
        a, b = h @ W[f"blocks.{i}.ffn.w1.weight"].T, h @ W[f"blocks.{i}.ffn.w3.weight"].T
        x = x + (F.silu(a) * b) @ W[f"blocks.{i}.ffn.w2.weight"].T
    return rms(x, W["norm.weight"]) @ W["head.weight"].T * BASE / C  # (B, T, V): the readout / width_mult


@pytest.mark.parametrize("attn_impl", ["sdpa", "explicit"])
@pytest.mark.parametrize("kernels", ["fast", "reference"])
def test_mup_logits_equal_a_hand_computed_forward(attn_impl, kernels, device):
    model = gpt(128, attn_impl=attn_impl, kernels=kernels)
    with torch.no_grad():  # weights large enough that attention is far from uniform
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
            else:
                p.uniform_(0.5, 1.5)
    idx = torch.randint(0, V, (3, 16), generator=torch.Generator().manual_seed(1))
    want = _hand_forward(model, idx)
    got = model.to(device)(idx.to(device)).cpu().double()
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (got - want).abs().max()
    # the test can tell the scales apart: SP's 1/sqrt(hd) and no readout multiplier differ
    assert not torch.allclose(got * 128 / BASE, want, rtol=1e-2, atol=1e-2)
    model.blocks[0].attn.scale = None
    assert not torch.allclose(model(idx.to(device)).cpu().double(), want, rtol=1e-2, atol=1e-2)


def test_mup_kv_cache_decoding_matches_the_full_forward(device):
    model = gpt(128).to(device).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    idx = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(2)).to(device)
    full = model(idx)  # (B, T, V)
    cache = KVCache(L, max_length=16)
    steps = [model(idx[:, :5], cache=cache)] + [model(idx[:, t : t + 1], cache=cache) for t in range(5, 12)]
    # float32 through two layers with logits up to ~7: measured differences ~1e-5
    assert torch.allclose(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)


def test_at_width_mult_one_mup_differs_from_sp_only_where_the_table_says():
    sp, mu = gpt(BASE, "standard", None), gpt(BASE, "mup", BASE)
    C = BASE
    for (name, a), (_, b) in zip(sp.named_parameters(), mu.named_parameters()):
        if name == "head.weight":
            assert torch.count_nonzero(b) == 0 and torch.count_nonzero(a) > 0
        elif name.endswith("wqkv.weight"):
            assert torch.count_nonzero(b[:C]) == 0 and torch.equal(a[C:], b[C:])  # same draws for k, v
        else:
            assert torch.equal(a, b), name  # same seed, same draws, same scale at m = 1
    assert mu.blocks[0].attn.scale == pytest.approx(1 / math.sqrt(BASE // H), rel=1e-15)  # SP's 1/sqrt(hd)
    assert mu.readout_mult == 1.0
    mu.load_state_dict(sp.state_dict())  # same weights -> same function
    idx = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(mu(idx), sp(idx), rtol=0, atol=1e-6)


def test_default_optimizer_builds_mup_groups_and_schedules_scale_each():
    model = build_model("gpt", V, size="tiny", parametrization="mup", base_width=32)  # d_model 64: m = 2
    assert model.config.width_mult == 2.0
    opt = default_optimizer(model, 1e-3, 0.1)
    kinds = [g["kind"] for g in opt.param_groups]
    assert kinds == ["embedding", "readout", "hidden", "vector"]
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-3, 5e-4, 1e-3])
    assert [g["weight_decay"] for g in opt.param_groups] == pytest.approx([0.1, 0.1, 0.2, 0.0])
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each parameter exactly once

    seen = []

    def check(info):
        seen.append([(g["lr"], g["initial_lr"]) for g in info["optimizer"].param_groups])

    tokens = np.random.default_rng(0).integers(0, V, 2000)
    history = train(model, tokens, steps=2, lr=1e-3, batch_size=2, progress=False, device="cpu",
                    schedule=lambda step: 0.5, callbacks=[check])
    assert [lr for lr, _ in seen[-1]] == pytest.approx([5e-4, 5e-4, 2.5e-4, 5e-4])  # each group's own lr x 0.5
    assert history["lr"][-1] == pytest.approx(5e-4)  # group 0 carries the base lr


def test_standard_model_keeps_two_groups():
    opt = default_optimizer(gpt(64, "standard", None), 1e-3)
    assert len(opt.param_groups) == 2 and "kind" not in opt.param_groups[0]


@pytest.mark.parametrize("kw, match", [
    (dict(parametrization="mup"), "needs base_width"),
    (dict(parametrization="mup", base_width=0), "base_width must be a positive integer"),
    (dict(parametrization="mup", base_width=-64), "base_width must be a positive integer"),
    (dict(parametrization="mup", base_width=32.0), "base_width must be a positive integer"),
    (dict(parametrization="mup", base_width=True), "base_width must be a positive integer"),
    (dict(parametrization="muP", base_width=32), "parametrization must be 'standard' or 'mup'"),
    (dict(parametrization="mup", base_width=32, tie_embeddings=True), "tie_embeddings"),
])
def test_bad_mup_configs_raise_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(vocab_size=V, d_model=64, n_heads=4, **kw)
    with pytest.raises(ValueError, match=match):
        build_model("gpt", V, size="tiny", **kw)


def test_mup_checkpoint_round_trips(tmp_path):
    model = gpt(128)
    tokens = np.random.default_rng(0).integers(0, V, 2000)
    train(model, tokens, steps=3, lr=1e-2, batch_size=2, progress=False, device="cpu")
    save_checkpoint(tmp_path / "mup.pt", model)
    again = model_from_checkpoint(tmp_path / "mup.pt")
    assert again.config == model.config and again.config.parametrization == "mup"
    assert again.readout_mult == model.readout_mult == BASE / 128
    assert again.blocks[1].attn.scale == model.blocks[1].attn.scale
    idx = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0))
    model.eval()
    assert torch.equal(again(idx), model(idx))


# ------------------------------------------------------------------------------ coordinate check
def _tokens():
    return MarkovLanguage(vocab_size=64, order=1, seed=0).sample(20_000, seed=0)


def _tiny(parametrization):
    def build(width):
        return GPT(GPTConfig(vocab_size=64, context_length=32, n_layers=2, n_heads=4, d_model=width,
                             parametrization=parametrization, base_width=32 if parametrization == "mup" else None))
    return build


def test_coord_check_slopes_are_flat_under_mup_and_rise_under_sp():
    # widths 32-128, 4 AdamW steps at lr 1e-2, slopes at the last step averaged over 3 seeds.
    # Measured over 7 such 3-seed groups (21 seeds): μP every layer in [-0.28, +0.02] (finite
    # width pulls slightly below 0 and fades with width); SP attention/FFN outputs >= 1.55,
    # logits >= 0.70; embedding and final norm within 0.03 of 0 in both.
    tokens, widths = _tokens(), [32, 64, 128]
    slopes = {}
    for p in ("standard", "mup"):
        runs = [mup.coord_check(_tiny(p), widths, 4, tokens=tokens, lr=1e-2, seed=s).slopes() for s in range(3)]
        slopes[p] = {layer: float(np.mean([r[layer] for r in runs])) for layer in runs[0]}
    blocks = [f"block{i}.{part}" for i in range(2) for part in ("attn", "ffn")]
    assert list(slopes["mup"]) == ["embedding", *blocks, "norm", "logits"]
    for layer, s in slopes["mup"].items():
        assert abs(s) < 0.45, (layer, s, slopes)
    for layer in blocks:
        assert slopes["standard"][layer] > 1.0, (layer, slopes)
    assert slopes["standard"]["logits"] > 0.5, slopes
    for layer in ("embedding", "norm"):  # width-independent by construction in both
        assert abs(slopes["standard"][layer]) < 0.1 and abs(slopes["mup"][layer]) < 0.1, slopes


def test_coord_check_records_the_layers_outputs(device):
    tokens = _tokens()
    result = mup.coord_check(_tiny("mup"), [32, 64], 2, tokens=tokens, batch_size=2, seed=3, device=device)
    assert result.means["logits"].shape == (2, 2) and result.losses.shape == (2, 2)
    assert np.all(result.means["logits"][:, 0] == 0.0)  # the readout starts at 0
    assert math.isnan(result.slopes(0)["logits"]) and math.isfinite(result.slopes(1)["logits"])
    # step 0 is the untrained model on the first batch: recompute two layers by hand
    from minilm.data import get_batch
    x, _ = get_batch(tokens, 2, 32, "cpu", np.random.default_rng(3))
    torch.manual_seed(3)
    model = _tiny("mup")(64)
    assert result.means["embedding"][1, 0] == pytest.approx(model.tok_emb(x).abs().mean().item(), rel=1e-5)
    h = model.tok_emb(x)
    attn = model.blocks[0].attn(model.blocks[0].attn_norm(h), *[rope_angles(torch.arange(32), 16)] * 2, None)[0]
    assert result.means["block0.attn"][1, 0] == pytest.approx(attn.abs().mean().item(), rel=1e-4)
    assert np.isclose(result.losses[:, 0], math.log(64), rtol=1e-5).all()  # zero logits: ln V


def test_coord_check_slopes_recover_a_known_power_law():
    widths = [16, 32, 64, 128]
    w = np.array(widths, dtype=float)
    means = {"a": np.stack([3 * w**0.0, 2 * w**1.0], axis=1), "b": np.stack([w**-0.5, 0 * w], axis=1)}
    result = mup.CoordCheck(widths, ["a", "b"], means, np.zeros((4, 2)))
    assert result.slopes(0) == pytest.approx({"a": 0.0, "b": -0.5}, abs=1e-12)
    assert result.slopes(1)["a"] == pytest.approx(1.0, abs=1e-12) and math.isnan(result.slopes(1)["b"])


def test_plot_coord_check_draws_one_panel_per_step():
    import matplotlib.pyplot as plt

    result = mup.coord_check(_tiny("standard"), [32, 64], 3, tokens=_tokens(), batch_size=2)
    axes = mup.plot_coord_check(result)
    assert len(axes) == 3 and all(len(a.get_lines()) == len(result.layers) for a in axes)
    assert axes[0].get_xscale() == axes[0].get_yscale() == "log"
    _, ax = plt.subplots()
    assert len(mup.plot_coord_check(result, ax=ax)) == 1 and len(ax.get_lines()) == len(result.layers)
    with pytest.raises(ValueError, match="one per step"):
        mup.plot_coord_check(result, ax=plt.subplots(1, 2)[1])
    plt.close("all")


def test_coord_check_rejects_bad_arguments():
    with pytest.raises(ValueError, match="widths"):
        mup.coord_check(_tiny("mup"), [32], tokens=_tokens())
    with pytest.raises(ValueError, match="steps"):
        mup.coord_check(_tiny("mup"), [32, 64], 0, tokens=_tokens())
    with pytest.raises(ValueError, match="tokens"):
        mup.coord_check(_tiny("mup"), [32, 64], tokens=np.arange(10))


def test_coord_check_charges_the_compute_ledger():
    """Lab 04's coordinate checks train real GPTs: their FLOPs go on the lab's bill like train()'s."""
    from minilm.ledger import ComputeLedger, training_flops

    tokens = np.random.default_rng(0).integers(0, 64, 5000)
    with ComputeLedger() as spent:
        mup.coord_check(_tiny("mup"), [32, 64], 3, tokens=tokens, batch_size=2, context_length=16, seed=0)
    expected = sum(training_flops(_tiny("mup")(w), 3 * 2 * 16, 16) for w in (32, 64))
    assert spent.as_dict()["flops"] == pytest.approx(expected)
    assert spent.as_dict()["tokens"] == 2 * 3 * 2 * 16 and spent.as_dict()["runs"] == 2
