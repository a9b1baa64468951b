"""Tests for minilm.imbalance against brute-force definitions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from minilm.imbalance import frequency_bins, per_bin_loss


def _brute_force_bins(counts: list[int], n_bins: int) -> list[int]:
    """Walk the tokens from most to least frequent (ties: smaller id first), with exact fractions:
    a token belongs to the bin b whose mass interval [b/n, (b+1)/n) contains the share of the
    corpus held by the tokens before it (the last bin also takes share 1, i.e. unseen tokens)."""
    total = sum(counts)
    order = sorted(range(len(counts)), key=lambda i: (-counts[i], i))
    bins, before = [0] * len(counts), 0
    for tok in order:
        share = before / total
        bins[tok] = next(b for b in range(n_bins) if b / n_bins <= share < (b + 1) / n_bins
                         or b == n_bins - 1)
        before += counts[tok]
    return bins


def test_frequency_bins_hand_example():
    counts = torch.tensor([50, 0, 20, 10, 10, 5, 3, 2])
    # sorted: 0(50) 2(20) 3(10) 4(10) 5(5) 6(3) 7(2) 1(0); mass before: 0 50 70 80 90 95 98 100 %
    assert frequency_bins(counts, 4).tolist() == [0, 3, 2, 2, 3, 3, 3, 3]   # bin 1 empty: token 0 is 50 %


@pytest.mark.parametrize("n_bins", [1, 2, 3, 5, 10])
def test_frequency_bins_match_brute_force_on_zipf_counts(n_bins):
    g = torch.Generator().manual_seed(0)
    V = 200
    zipf = 1.0 / torch.arange(1, V + 1).float()
    ids = torch.multinomial(zipf / zipf.sum(), 20_000, replacement=True, generator=g)
    counts = torch.bincount(ids, minlength=V)[torch.randperm(V, generator=g)]   # ids not sorted by freq
    bins = frequency_bins(counts, n_bins)
    assert bins.tolist() == _brute_force_bins(counts.tolist(), n_bins)
    # Equal mass: away from single heavy tokens each bin holds ≈ 1/n of the data.
    mass = torch.zeros(n_bins).index_add_(0, bins, counts.float()) / counts.sum()
    # Each bin boundary sits within one token's count of the ideal quantile.
    assert (mass - 1 / n_bins).abs().max() < float(counts.max()) / float(counts.sum())
    # Rare bins hold many more token types than frequent ones (the heavy tail).
    sizes = torch.bincount(bins, minlength=n_bins)
    assert n_bins == 1 or sizes[-1] > sizes[0]


def test_frequency_bins_rejects_bad_input():
    with pytest.raises(ValueError, match="integer"):
        frequency_bins(torch.tensor([1.0, 2.0]), 2)
    with pytest.raises(ValueError, match="n_bins"):
        frequency_bins(torch.tensor([1, 2]), 0)
    with pytest.raises(ValueError, match="zero"):
        frequency_bins(torch.tensor([0, 0]), 2)


def test_per_bin_loss_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    B, T, V, n_bins = 3, 7, 11, 4
    logits = torch.randn(B, T, V, generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[0, 0] = -100                                        # ignored position
    bins = frequency_bins(torch.randint(1, 50, (V,), generator=g), n_bins)
    got = per_bin_loss(logits, targets, bins, n_bins=n_bins)
    for b in range(n_bins):
        losses = [F.cross_entropy(logits[i, t], targets[i, t]).item()
                  for i in range(B) for t in range(T)
                  if targets[i, t] != -100 and bins[targets[i, t]] == b]
        if losses:
            assert got[b].item() == pytest.approx(sum(losses) / len(losses), rel=1e-5)
        else:
            assert math.isnan(got[b].item())
    # The bins' mean losses, weighted by their target counts, give back the overall mean loss.
    keep = targets != -100
    per_bin_count = torch.bincount(bins[targets[keep]], minlength=n_bins).float()
    overall = F.cross_entropy(logits[keep], targets[keep])
    weighted = (torch.nan_to_num(got) * per_bin_count).sum() / per_bin_count.sum()
    assert weighted.item() == pytest.approx(overall.item(), rel=1e-5)


def test_per_bin_loss_empty_bin_is_nan_and_shapes_are_checked():
    logits, targets = torch.zeros(4, 3), torch.tensor([0, 0, 1, 1])
    bins = torch.tensor([0, 1, 2])
    out = per_bin_loss(logits, targets, bins)
    assert out[:2].tolist() == pytest.approx([math.log(3)] * 2) and math.isnan(out[2].item())
    with pytest.raises(ValueError, match="disagree"):
        per_bin_loss(logits, targets[:3], bins)
    with pytest.raises(ValueError, match="one entry per vocabulary"):
        per_bin_loss(logits, targets, bins[:2])


def test_per_bin_loss_tracker_records_what_per_bin_loss_says_during_train():
    import numpy as np

    from minilm.data import ZipfUnigram
    from minilm.imbalance import PerBinLossTracker
    from minilm.models import GPT, GPTConfig
    from minilm.train import train

    tokens = ZipfUnigram(vocab_size=12, exponent=1.2).sample(4000, seed=0)
    bins = frequency_bins(torch.bincount(torch.from_numpy(tokens), minlength=12), 3)
    x = torch.from_numpy(tokens[:64].reshape(4, 16))
    y = torch.from_numpy(tokens[1:65].reshape(4, 16))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=12, context_length=16, n_layers=1, n_heads=2, d_model=16))
    tracker = PerBinLossTracker(x, y, bins, n_bins=3, every=4, total_steps=10)
    tracker.record(model, 0)
    start = per_bin_loss(model(x), y, bins, 3)
    train(model, tokens, steps=10, batch_size=4, context_length=16, progress=False, device="cpu",
          callbacks=[tracker])
    assert tracker.steps == [0, 4, 8, 10]
    readings = tracker.as_array()
    assert readings.shape == (4, 3)
    np.testing.assert_allclose(readings[0], start.detach().numpy(), rtol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(readings[-1], per_bin_loss(model(x), y, bins, 3).numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="every"):
        PerBinLossTracker(x, y, bins, every=0)
