"""Tests of minilm.models.ssm: the selective scan against its closed form, step = scan, and the SSM LM."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from minilm.models.ssm import SSMLM, SelectiveSSM, SSMConfig, selective_scan


def scan_closed_form(x, delta, A, B, C, D):
    """Unrolled recurrence, all at once: h_t = sum_{s<=t} exp(A * sum_{r=s+1..t} Delta_r) Delta_s B_s x_s.

    Materialises a (Bt, T, T, Dm, N) tensor: an independent, parallel reference for small sizes.
    """
    T = x.size(1)
    cum = delta.cumsum(dim=1)  # (Bt, T, Dm): sum_{r<=t} Delta_r
    gap = cum[:, :, None, :] - cum[:, None, :, :]  # (Bt, t, s, Dm): sum_{r=s+1..t} Delta_r
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[None, :, :, None, None]
    decay = torch.exp(gap[..., None] * A).masked_fill(~causal, 0.0)  # (Bt, t, s, Dm, N)
    inp = delta[..., None] * B[:, :, None, :] * x[..., None]  # (Bt, s, Dm, N)
    h = (decay * inp[:, None]).sum(dim=2)  # (Bt, t, Dm, N)
    return (h * C[:, :, None, :]).sum(-1) + D * x, h[:, -1]


def random_scan_inputs(Bt=2, T=9, Dm=5, N=3, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same numbers on every device
    x = torch.randn(Bt, T, Dm, generator=g)
    delta = torch.nn.functional.softplus(torch.randn(Bt, T, Dm, generator=g))
    A = -torch.exp(torch.randn(Dm, N, generator=g))
    B, C = torch.randn(Bt, T, N, generator=g), torch.randn(Bt, T, N, generator=g)
    D = torch.randn(Dm, generator=g)
    return tuple(t.to(device) for t in (x, delta, A, B, C, D))


def test_selective_scan_matches_closed_form(device):
    args = random_scan_inputs(device=device)
    y, h = selective_scan(*args)
    y_ref, h_ref = scan_closed_form(*args)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)


def test_selective_scan_time_invariant_case_is_a_decaying_sum(device):
    # One channel, N = 1, constant Delta = 1, A = -a, B = C = 1, D = 0: y_t = sum_s exp(-a (t-s)) x_s.
    T, a = 6, 0.7
    x = torch.randn(1, T, 1, generator=torch.Generator().manual_seed(0))
    ones = torch.ones(1, T, 1, device=device)
    y, _ = selective_scan(x.to(device), ones, torch.tensor([[-a]], device=device), ones, ones,
                          torch.zeros(1, device=device))
    ref = [sum(math.exp(-a * (t - s)) * float(x[0, s, 0]) for s in range(t + 1)) for t in range(T)]
    torch.testing.assert_close(y[0, :, 0].cpu(), torch.tensor(ref), atol=1e-5, rtol=1e-5)


def perturbed_layer(seed=0, device="cpu", **kw):
    torch.manual_seed(seed)  # built and perturbed on the CPU: the same weights on every device
    layer = SelectiveSSM(8, **kw)
    with torch.no_grad():  # move every parameter off its init so that no term is trivially zero
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer.to(device)


def randn(*shape, device, seed=0):
    """Standard normal numbers drawn on the CPU (the same on every device), moved to ``device``."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device)


@pytest.mark.parametrize("d_conv", [1, 4])
def test_step_equals_full_sequence_scan(d_conv, device):
    layer = perturbed_layer(d_state=4, d_conv=d_conv, device=device)
    u = randn(2, 13, 8, device=device)
    full, final = layer(u, return_state=True)
    state, ys = None, []
    for t in range(13):
        y, state = layer.step(u[:, t], state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state.ssm, final.ssm, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state.conv, final.conv)


def test_forward_in_two_pieces_carries_the_state(device):
    layer = perturbed_layer(d_state=4, device=device)
    u = randn(2, 12, 8, device=device)
    first, state = layer(u[:, :5], return_state=True)
    second = layer(u[:, 5:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), layer(u), atol=1e-5, rtol=1e-5)


def test_layer_is_causal(device):
    layer = perturbed_layer(device=device)
    u = randn(1, 10, 8, device=device)
    v = u.clone()
    v[:, 6:] += randn(1, 4, 8, device=device, seed=1)
    torch.testing.assert_close(layer(u)[:, :6], layer(v)[:, :6])
    assert not torch.allclose(layer(u)[:, 6:], layer(v)[:, 6:])


def test_state_size_is_fixed():
    layer = SelectiveSSM(8, d_state=4, expand=2, d_conv=4)
    _, s_short = layer(torch.randn(1, 3, 8), return_state=True)
    _, s_long = layer(torch.randn(1, 40, 8), return_state=True)
    assert s_short.nbytes() == s_long.nbytes() == (16 * 4 + 16 * 3) * 4


def tiny_lm(seed=0, device="cpu"):
    torch.manual_seed(seed)
    return SSMLM(SSMConfig(vocab_size=19, n_layers=2, d_model=16, d_state=4)).to(device)


def test_ssmlm_step_equals_forward_and_generates(device):
    model = tiny_lm(device=device).eval()
    idx = torch.randint(0, 19, (2, 10), generator=torch.Generator().manual_seed(0)).to(device)
    logits = model(idx)
    assert logits.shape == (2, 10, 19)
    state, steps = None, []
    for t in range(10):
        out, state = model.step(idx[:, t], state)
        steps.append(out)
    torch.testing.assert_close(torch.stack(steps, 1), logits, atol=1e-5, rtol=1e-5)
    out = model.generate(idx[:, :4], max_new_tokens=6, temperature=0)
    # greedy generation through the recurrent state = argmax of a full forward at each step
    for t in range(4, 10):
        assert torch.equal(out[:, t], model(out[:, :t])[:, -1].argmax(-1))


def test_ssmlm_trains_and_counts(device):
    model = tiny_lm(device=device)
    idx = torch.randint(0, 19, (4, 12), generator=torch.Generator().manual_seed(0)).to(device)
    loss = model.loss(idx[:, :-1], idx[:, 1:])
    assert abs(loss.item() - math.log(19)) < 0.3  # untrained: close to uniform
    loss.backward()
    mixer = model.blocks[0].mixer
    for p in (mixer.A_log, mixer.D, mixer.dt_proj.weight, mixer.conv.weight, model.tok_emb.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert model.context_length is None


def test_ssmlm_flops_per_token_against_the_flop_counter():
    """The 6N part of ``flops_per_token`` against torch's FlopCounterMode on one training step.

    The counter sees the matmuls (in_proj, x_proj, dt_proj, out_proj, head: 6 FLOPs per weight and
    token, forward + both gradients) and the depthwise convolution (2 per weight and token
    forward). It does not see the scan (elementwise exp, products, sums) nor the parameters that do
    no matmul (A_log, D, biases, norm gains), which ``flops_per_token`` counts in N at 6 each.
    """
    model = tiny_lm()
    B, T, V = 2, 12, model.config.vocab_size
    idx = torch.randint(0, V, (B, T + 1), generator=torch.Generator().manual_seed(1))
    with FlopCounterMode(display=False) as counter:
        model.loss(idx[:, :-1], idx[:, 1:]).backward()
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    tokens = B * T
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    conv = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv1d))
    assert counts["aten.mm"] == 6 * linear * tokens
    assert counts["aten.convolution"] == 2 * conv * tokens
    # Not asserted: aten.convolution_backward. torch 2.13's counter ignores groups in the weight
    # gradient of a grouped (depthwise) convolution: d_inner times too many FLOPs there.
    other = model.num_params(non_embedding=True) - linear - conv  # A_log, D, biases, norm gains
    c = model.config
    scan = 3 * c.n_layers * 7 * (c.expand * c.d_model) * c.d_state  # elementwise: the formula's own count
    expected = counts["aten.mm"] + 3 * counts["aten.convolution"] + (6 * other + scan) * tokens
    assert model.flops_per_token() * tokens == expected


def test_ssm_errors():
    with pytest.raises(ValueError, match="d_state"):
        SelectiveSSM(8, d_state=0)
    with pytest.raises(ValueError, match="vocab_size"):
        SSMConfig(vocab_size=0)
    with pytest.raises(ValueError, match="out of range"):
        tiny_lm()(torch.tensor([[25]]))
    with pytest.raises(ValueError, match="SSMConfig"):
        SSMLM({"vocab_size": 3})
