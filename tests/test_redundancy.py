"""Tests for minilm.redundancy: Block Influence against brute force, layer removal against the
identity in place of removed blocks, IMP masks' sparsity and exact rewinding."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from minilm.models.gpt import GPT, GPTConfig
from minilm.models.rwkv import RWKV, RWKVConfig
from minilm.redundancy import (
    apply_masks,
    block_influence,
    choose_layers,
    cosine_matrix,
    find_ticket,
    heal,
    layer_sparsity,
    magnitude_mask,
    next_token_accuracy,
    prunable_layers,
    prune_step,
    removal_curves,
    removal_order,
    remove_layers,
    rewind,
    snapshot,
)


def _gpt(n_layers=4, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=17, context_length=16, n_layers=n_layers, n_heads=2, d_model=16)).eval()


def _rwkv(n_layers=3, seed=0):
    torch.manual_seed(seed)
    return RWKV(RWKVConfig(vocab_size=17, n_layers=n_layers, d_model=16)).eval()


def _idx(seed=1, B=3, T=10):
    return torch.randint(0, 17, (B, T), generator=torch.Generator().manual_seed(seed))


class _Identity(nn.Module):
    """Stands in for a removed block: returns its input (and passes any state through)."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x, *args, **kwargs):
        out = self.block(x, *args, **kwargs)  # for the output's structure (weights, state) only
        ln0 = getattr(self.block, "ln0", None)
        x = ln0(x) if ln0 is not None and getattr(self.block, "layer", 0) == 0 else x  # RWKV's stem norm stays
        return (x, *out[1:]) if isinstance(out, tuple) else x


def _brute_force_bi(model, idx):
    """Run the blocks one by one by hand, recording the residual stream; BI from a python loop."""
    states = []
    hooks = [b.register_forward_pre_hook(lambda b, a: states.append(a[0].clone())) for b in model.blocks]
    last = model.blocks[-1].register_forward_hook(
        lambda b, a, o: states.append((o[0] if isinstance(o, tuple) else o).clone()))
    with torch.no_grad():
        model(idx)
    for h in [*hooks, last]:
        h.remove()
    if hasattr(model.blocks[0], "ln0"):
        states[0] = model.blocks[0].ln0(states[0])
    bi = []
    for i in range(len(states) - 1):
        a, b = states[i].reshape(-1, states[i].shape[-1]), states[i + 1].reshape(-1, states[i].shape[-1])
        cos = [float(F.cosine_similarity(a[t], b[t], dim=0).detach()) for t in range(a.shape[0])]
        bi.append(1.0 - np.mean(cos))
    return np.array(bi)


@pytest.mark.parametrize("make", [_gpt, _rwkv])
def test_block_influence_matches_brute_force(make):
    model, idx = make(), _idx()
    np.testing.assert_allclose(block_influence(model, idx), _brute_force_bi(model, idx), atol=1e-5)
    # two calibration batches count every token once: the mean over both
    idx2 = _idx(seed=2)
    both = block_influence(model, [idx, idx2])
    np.testing.assert_allclose(both, (block_influence(model, idx) + block_influence(model, idx2)) / 2, atol=1e-5)


def test_cosine_matrix_has_bi_on_the_superdiagonal():
    model, idx = _gpt(), _idx()
    m = cosine_matrix(model, idx)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-5)
    np.testing.assert_allclose(1 - np.diag(m, 1), block_influence(model, idx), atol=1e-5)


@pytest.mark.parametrize("make", [_gpt, _rwkv])
@pytest.mark.parametrize("drop", [[0], [1, 2], [2]])
def test_removal_equals_identity_in_place(make, drop):
    model, idx = make(), _idx()
    before = [p.clone() for p in model.parameters()]
    small = remove_layers(model, drop)
    assert len(small.blocks) == len(model.blocks) - len(drop)
    ref = __import__("copy").deepcopy(model)
    for i in drop:
        ref.blocks[i] = _Identity(ref.blocks[i])
    with torch.no_grad():
        out_small, out_ref = small(idx), ref(idx)
    out_small = out_small[0] if isinstance(out_small, tuple) else out_small
    out_ref = out_ref[0] if isinstance(out_ref, tuple) else out_ref
    torch.testing.assert_close(out_small, out_ref)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # original untouched


def test_choose_layers_and_errors():
    bi = [0.3, 0.05, 0.2, 0.01]
    assert removal_order(bi) == [3, 1, 2, 0]
    assert choose_layers("bi", 2, 4, bi) == [1, 3]
    assert choose_layers("last", 2, 4) == [2, 3]
    r = choose_layers("random", 3, 8, seed=5)
    assert len(set(r)) == 3 and r == choose_layers("random", 3, 8, seed=5)
    with pytest.raises(ValueError, match="rule"):
        choose_layers("middle", 1, 4)
    with pytest.raises(ValueError, match="k must be"):
        choose_layers("last", 4, 4)
    with pytest.raises(ValueError, match="keep at least one"):
        remove_layers(_gpt(n_layers=2), [0, 1])


@pytest.mark.parametrize("sparsity", [0.0, 0.2, 0.5, 0.9, 1.0])
def test_magnitude_mask_sparsity_and_smallest(sparsity):
    w = torch.randn(13, 7, generator=torch.Generator().manual_seed(0))
    m = magnitude_mask(w, sparsity)
    assert int((~m).sum()) == round(sparsity * w.numel())
    if 0 < sparsity < 1:
        assert w[~m].abs().max() <= w[m].abs().min()


def test_prune_step_compounds():
    w = torch.randn(50, 20, generator=torch.Generator().manual_seed(0))
    m = torch.ones_like(w, dtype=torch.bool)
    for _ in range(3):
        new = prune_step(w, m, 0.2)
        assert not (new & ~m).any()  # pruned stays pruned
        assert int(new.sum()) == int(m.sum()) - round(0.2 * int(m.sum()))
        m = new
    assert abs(1 - m.float().mean().item() - (1 - 0.8 ** 3)) < 1e-3


def test_masks_zero_weights_and_gradients_and_rewind_is_exact():
    model = _gpt()
    start = snapshot(model)
    masks = {n: magnitude_mask(m.weight, 0.5) for n, m in prunable_layers(model).items()}
    apply_masks(model, masks)
    assert all(abs(s - 0.5) < 0.01 for s in layer_sparsity(model).values())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(2):
        loss = model(_idx(), targets=_idx(seed=3))[1] if _forward_takes_targets(model) else _lm_loss(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n, m in prunable_layers(model).items():
        assert (m.weight[~masks[n]] == 0).all()
    rewind(model, start)
    after = snapshot(model)
    assert after.keys() == start.keys()
    assert all(torch.equal(after[k], start[k]) for k in start)


def _forward_takes_targets(model):
    import inspect
    return "targets" in inspect.signature(model.forward).parameters


def _lm_loss(model):
    idx = _idx()
    logits = model(idx)
    logits = logits[0] if isinstance(logits, tuple) else logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))


def test_find_ticket_rounds_sparsity():
    model = _gpt(n_layers=2)
    calls = []
    search = find_ticket(model, lambda m: calls.append(1) or len(calls), rounds=3, rate=0.2)
    assert len(search.masks) == 4 and search.results == [1, 2, 3, 4]
    for r, s in enumerate(search.sparsity):
        assert abs(s - (1 - 0.8 ** r)) < 0.01
    with pytest.raises(ValueError, match="rate"):
        find_ticket(model, lambda m: None, rounds=1, rate=1.5)


# ------------------------------------------------------------------------------ after removal
@pytest.mark.parametrize("make", [_gpt, _rwkv])
@pytest.mark.parametrize("drop", [[0], [1]])
def test_removed_model_decodes_incrementally_like_its_full_forward(make, drop):
    """Renumbered blocks: a GPT's KV cache and RWKV's recurrent state still index the right layer."""
    small = remove_layers(make(), drop)
    prompt = _idx(B=2, T=4)
    fast = small.generate(prompt, 6, temperature=0)       # KV cache / recurrent state
    slow = prompt
    with torch.no_grad():
        for _ in range(6):                                # the whole sequence again at every step
            logits = small(slow)
            slow = torch.cat([slow, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(fast, slow)


def test_removal_curves_score_every_rule_and_k():
    model = _gpt(n_layers=4)
    bi = [0.3, 0.05, 0.2, 0.01]
    curves = removal_curves(model, bi, [1, 2], lambda m: tuple(i for i, _ in enumerate(m.blocks)), seed=3)
    assert curves["bi"] == [(0, 1, 2), (0, 1)]            # 3 blocks left, then 2
    scored = removal_curves(model, bi, [2], lambda m: m, rules=("bi",))["bi"][0]
    kept = [b for i, b in enumerate(model.blocks) if i not in (1, 3)]
    assert all(torch.equal(a.attn.wqkv.weight, b.attn.wqkv.weight) for a, b in zip(scored.blocks, kept))
    assert removal_curves(model, bi, [1], lambda m: 0, rules=("random",), seed=3) == {"random": [0]}


def test_next_token_accuracy_against_a_loop():
    model = _gpt()
    tokens = np.random.default_rng(0).integers(0, 17, size=16 * 5 + 3)
    hits = total = 0
    with torch.no_grad():
        for w in range(5):                                # every non-overlapping window of 16
            x = torch.as_tensor(tokens[16 * w : 16 * w + 16]).unsqueeze(0)
            y = tokens[16 * w + 1 : 16 * w + 17]
            pred = model(x)[0].argmax(-1).numpy()
            hits += int((pred[4:] == y[4:]).sum())
            total += 12
    assert next_token_accuracy(model, tokens, 16, batch_size=2, score_from=4) == pytest.approx(hits / total)
    # a model that always predicts the data's next token scores 1
    copier = _NextTokenOracle(17)
    assert next_token_accuracy(copier, np.arange(40) % 17, 8) == 1.0
    with pytest.raises(ValueError, match="score_from"):
        next_token_accuracy(model, tokens, 16, score_from=16)


class _NextTokenOracle(nn.Module):
    """Predicts token (x + 1) mod V: right on every step of 0, 1, 2, ... mod V."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        return F.one_hot((idx + 1) % self.vocab, self.vocab).float() + 0 * self.dummy


@pytest.mark.parametrize("make", [_gpt, _rwkv])
def test_heal_trains_a_copy_and_lowers_the_training_loss(make):
    from minilm.data.languages import MarkovLanguage
    from minilm.train import evaluate

    tokens = MarkovLanguage(17, 1, 0.1, seed=0).sample(4000, seed=1)
    small = remove_layers(make(n_layers=3), [1])
    before = snapshot(small)
    loss_before = evaluate(small, tokens, context_length=16)
    healed = heal(small, tokens, steps=30, lr=1e-2, batch_size=8, context_length=16, seed=0)
    assert evaluate(healed, tokens, context_length=16) < loss_before - 0.1   # it learned
    assert all(torch.equal(v, snapshot(small)[k]) for k, v in before.items())  # the removed model untouched
    assert len(healed.blocks) == len(small.blocks)
    again = heal(small, tokens, steps=30, lr=1e-2, batch_size=8, context_length=16, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(healed.parameters(), again.parameters()))  # seeded
    with pytest.raises(ValueError, match="steps"):
        heal(small, tokens, steps=0, lr=1e-3)
