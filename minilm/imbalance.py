"""Heavy-tailed class imbalance: loss per token-frequency bin (Kunstner et al. 2024).

Language is Zipfian: a few tokens make up most of the text and most tokens are rare. Kunstner
et al. sort the classes by frequency, cut them into bins holding equal shares of the data, and
plot each bin's training loss: under SGD the rare bins barely move, under Adam all of them do.

``frequency_bins`` makes the bins, ``per_bin_loss`` measures one batch's loss per bin, and
``PerBinLossTracker`` records it during ``minilm.train.train`` (a callback).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PerBinLossTracker", "frequency_bins", "per_bin_loss"]


def frequency_bins(token_counts: Tensor, n_bins: int) -> Tensor:
    """Group token ids into ``n_bins`` bins of (about) equal total frequency mass.

    token_counts: (V,) non-negative integer counts (e.g. ``torch.bincount(ids, minlength=V)``).
    Returns bins: (V,) int64, bin 0 = the most frequent tokens, bin n_bins−1 = the rarest.

    Rule: sort tokens by decreasing count (ties: smaller id first); a token whose predecessors
    hold mass S_before of the total S goes to bin ⌊n_bins · S_before / S⌋. So bin b collects the
    tokens that start inside the b-th n_bins-quantile of the mass. A token heavier than S/n_bins
    spans several quantiles and leaves the bins after it empty; unseen tokens (count 0) land in
    the last bin, where they never show up as targets. Computed in exact integer arithmetic.
    """
    if token_counts.dim() != 1:
        raise ValueError(f"token_counts must be 1-D (one count per token id), got shape {tuple(token_counts.shape)}")
    if token_counts.dtype.is_floating_point or token_counts.dtype == torch.bool:
        raise ValueError("token_counts must hold integer counts, e.g. torch.bincount(ids, minlength=vocab_size)")
    if (token_counts < 0).any():
        raise ValueError("token_counts must be non-negative")
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}")
    counts = token_counts.long().cpu()
    total = int(counts.sum())
    if total == 0:
        raise ValueError("token_counts sums to zero: count tokens of a non-empty corpus first")
    # Stable sort on −count gives decreasing counts with ties in id order.
    order = torch.sort(-counts, stable=True).indices                # (V,) token ids, most frequent first
    sorted_counts = counts[order]
    mass_before = torch.cumsum(sorted_counts, 0) - sorted_counts    # S_before for each sorted token
    sorted_bins = torch.clamp((n_bins * mass_before) // total, max=n_bins - 1)
    bins = torch.empty_like(counts)
    bins[order] = sorted_bins
    return bins.to(token_counts.device)


def per_bin_loss(
    logits: Tensor,
    targets: Tensor,
    bins: Tensor,
    n_bins: int | None = None,
    ignore_index: int = -100,
) -> Tensor:
    """Mean cross-entropy of the predictions whose *target* token falls in each frequency bin.

    logits: (..., V); targets: (...) token ids (``ignore_index`` entries are skipped);
    bins: (V,) from ``frequency_bins``; n_bins defaults to ``bins.max() + 1``.
    Returns (n_bins,) float32: NaN for a bin without any target in this batch.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits (..., V) and targets (...) disagree: {tuple(logits.shape)} vs {tuple(targets.shape)}")
    if bins.shape != (logits.shape[-1],):
        raise ValueError(f"bins must have one entry per vocabulary id ({logits.shape[-1]}), "
                         f"got shape {tuple(bins.shape)}")
    n_bins = int(bins.max()) + 1 if n_bins is None else int(n_bins)
    if int(bins.max()) >= n_bins:
        raise ValueError(f"bins holds bin id {int(bins.max())} but n_bins = {n_bins}")
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()      # (N, V)
    flat_targets = targets.reshape(-1)                              # (N,)
    keep = flat_targets != ignore_index
    flat_logits, flat_targets = flat_logits[keep], flat_targets[keep]
    losses = F.cross_entropy(flat_logits, flat_targets, reduction="none")   # (N,)
    target_bins = bins.to(flat_targets.device)[flat_targets]              # (N,)
    sums = torch.zeros(n_bins, device=losses.device).index_add_(0, target_bins, losses.detach())
    counts = torch.bincount(target_bins, minlength=n_bins).float()
    return sums / counts                                                  # 0/0 = NaN for empty bins


class PerBinLossTracker:
    """Per-bin loss on one fixed batch, every ``every`` steps: a callback for ``minilm.train.train``.

    x, y: (B, T) token ids and next-token targets (``ignore_index`` = −100 entries are skipped);
    bins: (V,) from ``frequency_bins``. Call ``record(model, 0)`` before training for the
    starting point; then ``train(..., callbacks=[tracker])`` adds a reading after steps
    ``every, 2·every, ...`` (counted from 1) and after the last one. ``steps`` and ``losses``
    ((n_readings, n_bins) via ``as_array()``) hold what it saw, as in Kunstner et al. (2024), Fig. 1.
    """

    def __init__(self, x: Tensor, y: Tensor, bins: Tensor, n_bins: int | None = None, every: int = 20,
                 total_steps: int | None = None) -> None:
        if int(every) != every or every < 1:
            raise ValueError(f"every must be a positive integer, got {every}")
        self.x, self.y, self.bins = x, y, bins
        self.n_bins = int(bins.max()) + 1 if n_bins is None else int(n_bins)
        self.every, self.total_steps = int(every), total_steps
        self.steps: list[int] = []
        self.losses: list[Tensor] = []

    @torch.no_grad()
    def record(self, model: torch.nn.Module, step: int) -> None:
        """Measure the per-bin loss of ``model`` now and file it under ``step``."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        logits = model(self.x.to(device))                                  # (B, T, V)
        self.losses.append(per_bin_loss(logits, self.y.to(device), self.bins, self.n_bins).cpu())
        self.steps.append(int(step))
        model.train(was_training)

    def __call__(self, info: dict) -> bool:
        done = info["step"] + 1                                            # steps taken so far
        if done % self.every == 0 or done == self.total_steps:
            self.record(info["model"], done)
        return False                                                       # never stops training

    def as_array(self):
        """(n_readings, n_bins) numpy array of the recorded per-bin losses (NaN: no target in a bin)."""
        return torch.stack(self.losses).numpy()
