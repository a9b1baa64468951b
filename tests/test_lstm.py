"""LSTM baseline: the LSTM equations by hand, state carrying, generation, counts, errors."""

import math

import pytest
import torch

from minilm.models import LSTMLM, LSTMConfig, build_model


def _manual_logits(model: LSTMLM, idx: torch.Tensor) -> torch.Tensor:
    """The LSTM equations written out (gates i, f, g, o in PyTorch's order), one step at a time."""
    C, L = model.config.d_model, model.config.n_layers
    B, T = idx.shape
    h = [torch.zeros(B, C, device=idx.device) for _ in range(L)]
    c = [torch.zeros(B, C, device=idx.device) for _ in range(L)]
    outs = []
    for t in range(T):
        x = model.emb.weight[idx[:, t]]
        for layer in range(L):
            W_ih = getattr(model.lstm, f"weight_ih_l{layer}")
            W_hh = getattr(model.lstm, f"weight_hh_l{layer}")
            b = getattr(model.lstm, f"bias_ih_l{layer}") + getattr(model.lstm, f"bias_hh_l{layer}")
            z = x @ W_ih.T + h[layer] @ W_hh.T + b
            i, f, g, o = z.split(C, dim=1)
            c[layer] = torch.sigmoid(f) * c[layer] + torch.sigmoid(i) * torch.tanh(g)
            h[layer] = torch.sigmoid(o) * torch.tanh(c[layer])
            x = h[layer]
        outs.append(x @ model.head.weight.T)
    return torch.stack(outs, dim=1)


# On a GPU nn.LSTM runs cuDNN's fused kernels (TF32 off for the tests, tests/conftest.py); the
# equations above are plain matmuls, so the two sum in different orders: a few float32 ulps of
# the O(1) logits, far below the O(0.1) a wrong gate or a dropped state would cost.
def test_matches_the_lstm_equations(device):
    torch.manual_seed(0)
    m = LSTMLM(LSTMConfig(vocab_size=20, n_layers=2, d_model=16, init_range=0.5)).to(device)
    idx = torch.randint(0, 20, (3, 11)).to(device)
    with torch.no_grad():
        assert (m(idx) - _manual_logits(m, idx)).abs().max() < 1e-5


def test_state_continuation_and_generation(device):
    torch.manual_seed(1)
    m = LSTMLM(LSTMConfig(vocab_size=20, n_layers=2, d_model=16, init_range=0.5)).to(device)
    idx = torch.randint(0, 20, (2, 15)).to(device)
    with torch.no_grad():
        ref = m(idx)
        a, state = m(idx[:, :6], return_state=True)
        b = m(idx[:, 6:], state=state)
        # 1e-5, not the CPU's 1e-6: cuDNN may pick another kernel for 6 and 9 steps than for 15
        # (another summation order, a few ulps of the O(1) logits).
        assert (torch.cat([a, b], 1) - ref).abs().max() < 1e-5
        out = m.generate(idx[:, :5], 8, temperature=0)
        seq = idx[:, :5]
        for _ in range(8):  # greedy by re-running the whole sequence each step
            seq = torch.cat([seq, m(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


def test_forget_gate_bias_and_initial_loss(device):
    torch.manual_seed(0)
    m = LSTMLM(LSTMConfig(vocab_size=30, n_layers=2, d_model=16)).to(device)
    total = m.lstm.bias_ih_l0 + m.lstm.bias_hh_l0
    assert torch.allclose(total[16:32], torch.ones(16, device=device))  # forget gate
    assert total[:16].abs().max() <= 0.2
    idx = torch.randint(0, 30, (4, 20)).to(device)
    with torch.no_grad():
        assert abs(m.loss(idx, idx).item() - math.log(30)) < 0.1


def test_training_reduces_loss(device):
    torch.manual_seed(0)
    m = LSTMLM(LSTMConfig(vocab_size=10, n_layers=1, d_model=32)).to(device)
    seq = torch.arange(10, device=device).repeat(4)[None, :]
    x, y = seq[:, :-1], seq[:, 1:]
    opt = torch.optim.AdamW(m.parameters(), lr=2e-2)
    first = m.loss(x, y).item()
    for _ in range(60):
        loss = m.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


def test_counts_and_registry():
    m = build_model("lstm", 100, size="tiny", context_length=32)
    assert isinstance(m, LSTMLM) and m.context_length is None and m.config.context_length == 32
    C, L = 64, 2
    per_layer = 4 * (C * C + C * C) + 2 * 4 * C  # 4 gates: input and recurrent weights, two biases
    assert m.num_params(non_embedding=True) == L * per_layer + 100 * C  # + the head
    assert m.num_params() == m.num_params(non_embedding=True) + 100 * C
    assert m.flops_per_token() == 6 * (L * per_layer + 100 * C)
    tied = LSTMLM(LSTMConfig(vocab_size=100, n_layers=2, d_model=64, tie_embeddings=True))
    assert tied.head.weight is tied.emb.weight
    assert tied.flops_per_token() == m.flops_per_token()  # the head still costs its matmul


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="n_layers"):
        LSTMConfig(vocab_size=10, n_layers=0)
    with pytest.raises(ValueError, match="dropout"):
        LSTMConfig(vocab_size=10, dropout=1.5)
    m = LSTMLM(LSTMConfig(vocab_size=10, d_model=8))
    with pytest.raises(ValueError, match="vocab_size"):
        m(torch.tensor([[1, 12]]))
    with pytest.raises(ValueError, match="batch, time"):
        m(torch.tensor([1, 2]))
