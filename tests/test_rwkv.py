"""RWKV-4: WKV forms against the paper's formula, parallel == recurrent model, checkpoints, generation."""

import math

import numpy as np
import pytest
import torch

from minilm.models import RWKV, RWKVConfig, build_model, wkv_parallel, wkv_recurrent


def _random_wkv(B=2, T=37, C=8, seed=0, k_scale=3.0):
    g = torch.Generator().manual_seed(seed)
    w = torch.exp(torch.rand(C, generator=g) * 4 - 3)  # decay rates between e^-3 and e^1
    u = torch.randn(C, generator=g)
    k = torch.randn(B, T, C, generator=g) * k_scale
    v = torch.randn(B, T, C, generator=g)
    return w, u, k, v


def _wkv_formula(w, u, k, v):
    """Eq. 14 of the paper written out literally, in float64 numpy (no stabilisation needed here)."""
    w, u, k, v = (np.asarray(t, dtype=np.float64) for t in (w, u, k, v))
    B, T, C = k.shape
    out = np.zeros((B, T, C))
    for t in range(T):
        i = np.arange(t)
        e = np.exp(-(t - 1 - i)[None, :, None] * w + k[:, :t])  # (B, t, C)
        bonus = np.exp(u + k[:, t])
        out[:, t] = ((e * v[:, :t]).sum(1) + bonus * v[:, t]) / (e.sum(1) + bonus)
    return out


def _randomize(model: RWKV, seed: int = 0) -> RWKV:
    """Non-trivial weights (the reference init zeroes several matrices)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            elif "time_decay" in name:
                p.copy_(torch.rand(p.shape, generator=g) * 4 - 3)
            elif "time_mix" in name:
                p.copy_(torch.rand(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
    return model


def _tiny(vocab=50, layers=3, d=32, device="cpu", **kw):
    torch.manual_seed(0)  # built on the CPU: the same weights on every device
    return _randomize(RWKV(RWKVConfig(vocab_size=vocab, n_layers=layers, d_model=d, **kw))).to(device)


def _on(device, *tensors):
    return [t.to(device) for t in tensors]


# ------------------------------------------------------------------------------------ WKV
# The inputs are drawn on the CPU and moved to the device; the float64 references run on the CPU.
def test_recurrent_wkv_matches_paper_formula(device):
    w, u, k, v = _random_wkv()
    y, _ = wkv_recurrent(*_on(device, w, u, k, v))
    assert np.abs(y.cpu().numpy() - _wkv_formula(w, u, k, v)).max() < 1e-5


@pytest.mark.parametrize("chunk", [None, 1, 5, 16])
def test_parallel_wkv_matches_paper_formula_and_recurrent_state(chunk, device):
    w, u, k, v = _on(device, *_random_wkv())
    y, (aa, bb, pp) = wkv_parallel(w, u, k, v, chunk_size=chunk)
    assert np.abs(y.cpu().numpy() - _wkv_formula(*(t.cpu() for t in (w, u, k, v)))).max() < 1e-5
    _, (aa_r, bb_r, pp_r) = wkv_recurrent(w, u, k, v)
    # the states may use different max exponents; the sums they stand for must agree
    assert torch.allclose(aa * torch.exp(pp - pp_r), aa_r, rtol=1e-5, atol=1e-6)
    assert torch.allclose(bb * torch.exp(pp - pp_r), bb_r, rtol=1e-5, atol=1e-6)


def test_wkv_continues_from_a_state(device):
    w, u, k, v = _on(device, *_random_wkv(T=30))
    full, _ = wkv_parallel(w, u, k, v)
    _, s = wkv_recurrent(w, u, k[:, :11], v[:, :11])
    rest_par, _ = wkv_parallel(w, u, k[:, 11:], v[:, 11:], state=s, chunk_size=7)
    rest_rec, _ = wkv_recurrent(w, u, k[:, 11:], v[:, 11:], state=s)
    assert (rest_par - full[:, 11:]).abs().max() < 1e-5
    assert (rest_rec - full[:, 11:]).abs().max() < 1e-5


def test_parallel_wkv_gradients_match_recurrent_and_finite_differences(device):
    w, u, k, v = _random_wkv(B=1, T=9, C=3)
    grads = []
    for fn in (lambda *a: wkv_parallel(*a, chunk_size=4), wkv_recurrent):
        ts = [t.to(device).requires_grad_(True) for t in (w, u, k, v)]
        y, _ = fn(*ts)
        (y * torch.linspace(-1, 1, y.numel(), device=device).view_as(y)).sum().backward()
        grads.append([t.grad for t in ts])
    for gp, gr in zip(*grads):
        assert torch.allclose(gp, gr, rtol=1e-4, atol=1e-5)
    # finite differences (float64 only inside this test, on the CPU: MPS has no float64)
    ts = [t.double().requires_grad_(True) for t in (w, u, k, v)]
    assert torch.autograd.gradcheck(lambda *a: wkv_parallel(*a, chunk_size=4)[0], ts)


def test_large_keys_over_a_long_stream_stay_exact(device):
    """Keys up to 90 overflow float32 exp (e^89 > 3.4e38); the running max keeps everything finite."""
    B, T, C = 1, 3000, 4
    g = torch.Generator().manual_seed(1)
    w = torch.tensor([1e-3, 0.05, 0.5, 5.0])  # very slow to very fast decay
    u = torch.tensor([0.5, -1.0, 2.0, 0.0])
    k = torch.rand(B, T, C, generator=g) * 140 - 50  # in [-50, 90]
    v = torch.randn(B, T, C, generator=g)
    assert torch.isinf(torch.exp(k)).any()  # the naive float32 formula would overflow
    y_rec, state = wkv_recurrent(*_on(device, w, u, k, v))
    y_par, _ = wkv_parallel(*_on(device, w, u, k, v), chunk_size=64)
    assert torch.isfinite(y_rec).all() and torch.isfinite(y_par).all()
    assert all(torch.isfinite(s).all() for s in state)
    y_rec, y_par = y_rec.cpu(), y_par.cpu()
    # float64 reference in log space: wkv_t = sum_i softmax(exponents)_i v_i
    kd, vd, wd, ud = k[0].double(), v[0].double(), w.double(), u.double()
    ref = torch.empty(T, C, dtype=torch.float64)
    for t in range(T):
        i = torch.arange(t, dtype=torch.float64)
        expo = torch.cat([-(t - 1 - i)[:, None] * wd + kd[:t], (ud + kd[t])[None]], dim=0)  # (t+1, C)
        ref[t] = (torch.softmax(expo, dim=0) * vd[: t + 1]).sum(0)
    err_rec = (y_rec[0].double() - ref).abs()  # (T, C)
    err_par = (y_par[0].double() - ref).abs()
    # Float32 stores an exponent near 90 only to ulp(90) = 7.6e-6, and the recurrence adds one such
    # rounding per step over the decay window (~1/w steps): about 7.6e-6 * sqrt(1/w) ~ 2.4e-4 for
    # w = 1e-3. The parallel form rounds each exponent once per chunk, so it is ~10x closer.
    assert err_rec.max() < 1e-3
    assert err_par.max() < 2e-4
    # no drift: where the decay window (1/w <= 20 tokens) is long full, the error does not grow
    mid, end = err_rec[1000:2000, 1:].mean(0), err_rec[2000:, 1:].mean(0)
    assert torch.all(end < 2 * mid)


# ---------------------------------------------------------------------------------- model
def test_parallel_and_recurrent_model_agree_to_1e_5(device):
    model = _tiny(device=device)
    idx = torch.randint(0, 50, (2, 40), generator=torch.Generator().manual_seed(3)).to(device)
    with torch.no_grad():
        par = model(idx, mode="parallel")
        rec = model(idx, mode="recurrent")
        # truly one token at a time, carrying the state as generation does
        state, steps = None, []
        for t in range(idx.size(1)):
            logits, state = model(idx[:, t : t + 1], state=state, return_state=True, mode="recurrent")
            steps.append(logits)
        step = torch.cat(steps, dim=1)
    assert par.abs().max() > 0.5  # the comparison is not between near-zero numbers
    assert (par - rec).abs().max() < 1e-5
    assert (par - step).abs().max() < 1e-5


def test_chunk_size_does_not_change_the_result(device):
    model = _tiny(chunk_size=None, device=device)
    idx = torch.randint(0, 50, (2, 33), generator=torch.Generator().manual_seed(4)).to(device)
    with torch.no_grad():
        ref = model(idx)
        for chunk in (1, 8, 32):
            model.config.chunk_size = chunk
            assert (model(idx) - ref).abs().max() < 1e-5


def test_causal_and_state_continuation(device):
    model = _tiny(device=device)
    g = torch.Generator().manual_seed(5)
    idx = torch.randint(0, 50, (1, 20), generator=g).to(device)
    with torch.no_grad():
        ref = model(idx)
        changed = idx.clone()
        changed[0, 12] = (changed[0, 12] + 1) % 50
        out = model(changed)
        assert torch.equal(out[:, :12], ref[:, :12])  # the future does not leak into the past
        assert not torch.allclose(out[:, 12:], ref[:, 12:])
        a, state = model(idx[:, :7], return_state=True)
        b = model(idx[:, 7:], state=state)
        assert (torch.cat([a, b], 1) - ref).abs().max() < 1e-5


def test_token_shift_mixes_the_previous_normalised_token(device):
    """mu = 1 sees only x_t; mu = 0 sees only x_{t-1} (zeros before the first token)."""
    model = _tiny(layers=1, device=device)
    att = model.blocks[0].att
    x = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        att.time_mix_k.fill_(0.0)
        att.time_mix_v.fill_(1.0)
        att.time_mix_r.fill_(1.0)
        k_seen = {}
        att.key.register_forward_hook(lambda m, inp, out: k_seen.setdefault("in", inp[0]))
        att(x, None, "parallel")
    shifted = k_seen["in"]
    assert torch.equal(shifted[:, 0], torch.zeros(1, 32, device=device))
    assert torch.equal(shifted[:, 1:], x[:, :-1])


def test_generate_uses_the_state_and_matches_full_recomputation(device):
    model = _tiny(device=device)
    prompt = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(6)).to(device)
    out = model.generate(prompt, 12, temperature=0)
    # independent check: greedy decoding by re-running the whole parallel model every step
    seq = prompt
    with torch.no_grad():
        for _ in range(12):
            nxt = model(seq)[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)


def test_state_is_constant_size(device):
    model = _tiny(device=device)
    _, s1 = model(torch.zeros(1, 5, dtype=torch.long, device=device), return_state=True)
    _, s2 = model(torch.zeros(1, 300, dtype=torch.long, device=device), return_state=True)
    assert [tuple(t.shape) for layer in s1 for t in layer] == [tuple(t.shape) for layer in s2 for t in layer]
    assert len(s1) == 3 and all(len(layer) == 5 for layer in s1)


# ------------------------------------------------------------------------ initialisation
def test_reference_initialisation():
    torch.manual_seed(0)
    m = RWKV(RWKVConfig(vocab_size=40, n_layers=3, d_model=16))
    td = m.blocks[0].att.time_decay
    assert td[0].item() == pytest.approx(-5.0) and td[-1].item() == pytest.approx(3.0)
    assert torch.all(td[1:] >= td[:-1])  # decay ramp across channels
    assert m.blocks[0].att.time_first[1].item() == pytest.approx(math.log(0.3) + 0.5)
    mix = m.blocks[0].att.time_mix_k.flatten()
    assert mix[0].item() == 0.0 and mix[8].item() == pytest.approx(0.5)  # layer 0: (c/C)^1
    assert m.blocks[2].att.time_mix_v.flatten()[0].item() == pytest.approx(0.3)  # + 0.3 in the last layer
    assert m.blocks[0].att.output.weight.abs().max() == 0 and m.blocks[0].ffn.value.weight.abs().max() == 0
    idx = torch.randint(0, 40, (4, 16))
    with torch.no_grad():
        assert abs(m.loss(idx, idx).item() - math.log(40)) < 0.5  # an untrained model is near uniform


def test_training_reduces_loss(device):
    torch.manual_seed(0)
    m = RWKV(RWKVConfig(vocab_size=12, n_layers=2, d_model=32)).to(device)
    seq = torch.arange(12, device=device).repeat(5)[None, :]  # a fully predictable sequence
    x, y = seq[:, :-1], seq[:, 1:]
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    first = m.loss(x, y).item()
    for _ in range(60):
        loss = m.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


# --------------------------------------------------------------------------- checkpoints
def _issue_key_list(n_layers):
    """The RWKV-LM RWKV-4 key names, typed out from the issue (independent of the model code)."""
    keys = ["emb.weight", "blocks.0.ln0.weight", "blocks.0.ln0.bias", "ln_out.weight", "ln_out.bias", "head.weight"]
    for i in range(n_layers):
        b = f"blocks.{i}."
        keys += [b + f"{ln}.{p}" for ln in ("ln1", "ln2") for p in ("weight", "bias")]
        keys += [b + "att.time_decay", b + "att.time_first"] + [b + f"att.time_mix_{x}" for x in "kvr"]
        keys += [b + f"att.{n}.weight" for n in ("key", "value", "receptance", "output")]
        keys += [b + f"ffn.time_mix_{x}" for x in "kr"]
        keys += [b + f"ffn.{n}.weight" for n in ("key", "receptance", "value")]
    return keys


def test_checkpoint_layout_matches_rwkv_lm():
    m = RWKV(RWKVConfig(vocab_size=30, n_layers=2, d_model=8))
    sd = m.state_dict_rwkv4()
    assert sorted(sd) == sorted(_issue_key_list(2))
    assert sd["blocks.1.att.time_decay"].shape == (8,) and sd["blocks.1.att.time_first"].shape == (8,)
    assert sd["blocks.1.att.time_mix_k"].shape == (1, 1, 8) and sd["blocks.1.ffn.time_mix_r"].shape == (1, 1, 8)
    assert sd["blocks.0.ffn.key.weight"].shape == (32, 8)  # Linear weights are [out, in]
    assert sd["blocks.0.ffn.value.weight"].shape == (8, 32)
    assert sd["head.weight"].shape == (30, 8) and sd["emb.weight"].shape == (30, 8)


def _wkv_step_by_step(w, u, k, v):
    """WKV as an RNN, one token at a time, in float64 and without any stabilisation:

        wkv_t = (a_{t-1} + e^{u + k_t} v_t) / (b_{t-1} + e^{u + k_t})       bonus u for the current token
        a_t = e^{-w} a_{t-1} + e^{k_t} v_t,   b_t = e^{-w} b_{t-1} + e^{k_t},   a_0 = b_0 = 0

    (Peng et al. 2023, the time-mixing block as an RNN cell; RWKV-LM's ``wkv_cuda.cu`` forward,
    which adds a running maximum). w, u: (C,); k, v: (B, T, C). Returns wkv (B, T, C) and (a_T, b_T).
    """
    w, u, k, v = (t.detach().double() for t in (w, u, k, v))
    a, b = torch.zeros_like(k[:, 0]), torch.zeros_like(k[:, 0])  # (B, C) numerator, denominator
    decay = torch.exp(-w)  # (C,): what is left of the past after one step
    out = []
    for t in range(k.size(1)):
        bonus = torch.exp(u + k[:, t])
        out.append((a + bonus * v[:, t]) / (b + bonus))
        a = decay * a + torch.exp(k[:, t]) * v[:, t]
        b = decay * b + torch.exp(k[:, t])
    return torch.stack(out, dim=1), (a, b)


@pytest.mark.parametrize("mode", ["parallel", "recurrent"])
def test_time_mix_wkv_is_the_recurrence_with_decay_exp_of_minus_exp_time_decay(mode, device):
    """time_decay holds log w: TimeMix's WKV (and its state) is the recurrence above with w = exp(time_decay)."""
    m = _tiny(layers=1, d=8, vocab=5, chunk_size=16, device=device)
    att = m.blocks[0].att
    seen = {}  # what the layer computed on the device, moved to the CPU for the float64 reference
    for name in ("key", "value", "receptance"):
        getattr(att, name).register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, out.cpu()))
    att.output.register_forward_hook(lambda mod, inp, out: seen.__setitem__("gated", inp[0].cpu()))  # sigmoid(r) * wkv
    x = torch.randn(2, 23, 8, generator=torch.Generator().manual_seed(7)).to(device)  # 23 tokens: two parallel chunks
    with torch.no_grad():
        _, state = att(x, None, mode)
    aa, bb, pp = (t.cpu() for t in state[1:])
    ref, (a, b) = _wkv_step_by_step(torch.exp(att.time_decay.cpu()), att.time_first.cpu(), seen["key"], seen["value"])
    assert ref.abs().max() > 0.5  # not a comparison of near-zero numbers
    gated_ref = torch.sigmoid(seen["receptance"].double()) * ref
    torch.testing.assert_close(seen["gated"].double(), gated_ref, rtol=1e-5, atol=1e-5)
    # the state holds numerator a = aa e^pp and denominator b = bb e^pp
    torch.testing.assert_close(aa.double() * torch.exp(pp.double()), a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bb.double() * torch.exp(pp.double()), b, rtol=1e-5, atol=1e-5)


def test_checkpoint_round_trip(tmp_path, device):
    m = _tiny(device=device)
    path = tmp_path / "rwkv4.pth"
    m.save_rwkv4(path)
    loaded = RWKV.from_rwkv4(path)  # read onto the CPU (map_location="cpu"), whatever saved it
    assert loaded.config.n_layers == 3 and loaded.config.d_model == 32 and loaded.config.d_ff == 128
    assert all(t.device.type == "cpu" for t in loaded.state_dict().values())
    idx = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(8)).to(device)
    with torch.no_grad():
        assert torch.equal(loaded.to(device)(idx), m(idx))  # the same weights, the same kernels: bit for bit
    # half-precision files (like the published Pile models) load as float32
    half = {k: v.to(torch.bfloat16) for k, v in m.state_dict_rwkv4().items()}
    fresh = RWKV(RWKVConfig(vocab_size=50, n_layers=3, d_model=32)).load_rwkv4(half)
    assert fresh.head.weight.dtype == torch.float32


def test_bad_checkpoint_lists_missing_and_misshaped_keys():
    m = RWKV(RWKVConfig(vocab_size=30, n_layers=2, d_model=8))
    sd = m.state_dict_rwkv4()
    del sd["blocks.1.att.time_first"]
    del sd["ln_out.bias"]
    sd["blocks.0.ffn.key.weight"] = torch.zeros(16, 8)
    sd["head_q.weight"] = torch.zeros(4, 8)
    with pytest.raises(ValueError) as err:
        m.load_rwkv4(sd)
    msg = str(err.value)
    for key in ("blocks.1.att.time_first", "ln_out.bias", "blocks.0.ffn.key.weight", "head_q.weight"):
        assert key in msg
    with pytest.raises(ValueError, match="no checkpoint file"):
        m.load_rwkv4("/nonexistent/model.pth")


# ---------------------------------------------------------------------- interface, errors
def test_interface_and_counts():
    m = build_model("rwkv", 100, size="tiny", context_length=32)
    assert m.context_length is None and m.config.context_length == 32
    n_emb = 100 * 64
    assert m.num_params() - m.num_params(non_embedding=True) == n_emb
    # per layer: 4 C^2 (time mixing) + 2 * 4 C^2 + C^2 (channel mixing), 5C + 2C time parameters,
    # 4C LayerNorm; plus ln0 and ln_out (2C each) and the head (V x C)
    C, L = 64, 2
    expected = L * (4 * C * C + 9 * C * C + 7 * C + 4 * C) + 2 * C + 2 * C + 100 * C
    assert m.num_params(non_embedding=True) == expected
    assert m.flops_per_token() == 6 * expected
    assert m.config_dict()["model"] == "rwkv"


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="d_model"):
        RWKVConfig(vocab_size=10, d_model=0)
    with pytest.raises(ValueError, match="wkv_mode"):
        RWKVConfig(vocab_size=10, wkv_mode="fast")
    m = RWKV(RWKVConfig(vocab_size=10, n_layers=1, d_model=8))
    with pytest.raises(ValueError, match="vocab_size"):
        m(torch.tensor([[3, 10]]))
    with pytest.raises(ValueError, match="batch, time"):
        m(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="mode"):
        m(torch.tensor([[1, 2]]), mode="fast")
