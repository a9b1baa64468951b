"""Token selection (minilm.selection): the top-k% mask by excess loss, noise injection."""

import numpy as np
import pytest
import torch

from minilm.selection import n_kept, noisy_tokens, topk_mask


def test_topk_mask_keeps_exactly_the_top_fraction_brute_force():
    excess = torch.randn(4, 25, generator=torch.Generator().manual_seed(0))
    for ratio in (0.1, 0.3, 0.6, 1.0):
        mask = topk_mask(excess, ratio)
        k = n_kept(100, ratio)
        assert mask.shape == excess.shape and int(mask.sum()) == k
        kept = set(np.argsort(-excess.reshape(-1).numpy(), kind="stable")[:k].tolist())
        assert set(torch.nonzero(mask.reshape(-1)).reshape(-1).tolist()) == kept
        if ratio < 1.0:
            assert excess[mask].min() >= excess[~mask].max()


def test_topk_mask_ties_go_to_the_earlier_token():
    excess = torch.tensor([[1.0, 2.0, 2.0, 2.0], [2.0, 0.0, 2.0, 1.0]])
    mask = topk_mask(excess, 0.25)   # keeps 2 of 8, five tied at 2.0: the first two in row-major order
    assert mask.tolist() == [[False, True, True, False], [False, False, False, False]]
    assert torch.equal(mask, topk_mask(excess.clone(), 0.25))


@pytest.mark.parametrize("ratio", [0.0, 1.5, -0.1])
def test_bad_ratio_is_a_clear_error(ratio):
    with pytest.raises(ValueError, match="ratio"):
        topk_mask(torch.zeros(3), ratio)


def test_topk_mask_rejects_nan_and_integers():
    with pytest.raises(ValueError, match="NaN"):
        topk_mask(torch.tensor([0.0, float("nan")]), 0.5)
    with pytest.raises(ValueError, match="floating-point"):
        topk_mask(torch.tensor([1, 2]), 0.5)


def test_noisy_tokens_rate_and_labels():
    tokens = np.zeros(20_000, dtype=np.int64)
    out, labels = noisy_tokens(tokens, 0.2, vocab_size=10, seed=0, noise_ids=np.arange(5, 10))
    assert abs(labels.mean() - 0.2) < 0.015                       # 4 sigma of a binomial(20000, 0.2)
    assert (out[labels == 0] == 0).all() and (out[labels == 1] >= 5).all()


def test_selector_with_mixture_sampler_through_train():
    from minilm.mixing import MixtureSampler, markov_domains
    from minilm.models import GPT, GPTConfig
    from minilm.selection import ExcessLossSelector
    from minilm.train import train

    doms = markov_domains(3, vocab_size=16, order=1, n_train=5000, n_val=512, seed=0)
    sampler = MixtureSampler(doms, [0.5, 0.3, 0.2])
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=16, context_length=16, n_layers=1, n_heads=2, d_model=32)
    m, ref = GPT(cfg), GPT(cfg)
    sel = ExcessLossSelector(ref, 0.25, labels=sampler.last_labels, record_every=1, snapshot_steps=(0,))
    h = train(m, sampler, doms[0].val, steps=4, batch_size=8, eval_every=4, progress=False, device="cpu",
              token_weights=sel, seed=0)
    assert len(h["train_loss"]) == 4 and np.all(np.isfinite(h["train_loss"]))
    assert np.allclose(list(sampler.realised().values()), [0.5, 0.3, 0.2], atol=1 / 8)   # never a row off per batch
    snap = sel.record.snapshots[0]
    assert int(snap["mask"].sum()) == n_kept(8 * 16, 0.25)
    assert len(sel.record.steps) == 4 and set(sel.record.kept_by_label) <= {0, 1, 2}
    assert not any(p.requires_grad for p in ref.parameters())
