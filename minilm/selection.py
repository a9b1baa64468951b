"""Selective language modelling (talk section 8, lab 05): train only on the tokens worth learning.

Lin et al. 2024, "Rho-1: Not All Tokens Are What You Need" (arXiv 2404.07965, sec. 2.2):

1. train a *reference model* on a small, clean corpus that looks like the target;
2. score every token x_i of a training batch by its *excess loss*
       L_delta(x_i) = L_theta(x_i) - L_ref(x_i),
   the current model's loss minus the reference model's, computed on the fly as training runs;
3. back-propagate only through the top k% of the batch's tokens by excess loss:
       L_SLM = - 1 / (N k%) * sum_i I_k%(x_i) log P(x_i | x_<i; theta),
   the mean loss over the kept tokens (N tokens in the batch).

A token with a high excess loss is one the reference (which saw clean target-like text) predicts
well but the model does not yet: learnable and on target. Noise (neither predicts it) and
off-target text (the reference predicts it badly) score low and are dropped.

``ExcessLossSelector`` is that step 2-3 as a ``token_weights`` hook of ``minilm.train.train``
(which turns its 0/1 mask into the mean over kept tokens) and records what it kept, step by step.
``noisy_tokens`` pollutes a token stream; ``slm_data`` builds the lab's whole setting (a clean
target language, a reference corpus, and a training stream of noisy target text mixed with
off-target text), and ``train_reference`` / ``train_selective`` run the two stages on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from minilm.mixing import Domain, MixtureSampler, markov_domains
from minilm.scaling.hparams import LossCurve, make_gpt, train_gpt

LABELS = ("clean", "noise", "off-target")   # the label of every training token of ``slm_data``


def token_losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of every position, no reduction: (B, T) float32, without gradients."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(x)                                                   # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), reduction="none")
    model.train(was_training)
    return loss.view(y.shape)


def n_kept(n_tokens: int, ratio: float) -> int:
    """How many of ``n_tokens`` the top-``ratio`` selection keeps: round(ratio * n), at least 1."""
    if not (isinstance(ratio, (int, float)) and 0.0 < ratio <= 1.0):
        raise ValueError(f"ratio must be in (0, 1] (the fraction of tokens to keep), got {ratio!r}")
    return min(n_tokens, max(1, round(ratio * n_tokens)))


def topk_mask(excess: torch.Tensor, ratio: float) -> torch.Tensor:
    """The top ``ratio`` of the batch's tokens by excess loss, as a boolean mask of excess's shape.

    Selection is over the whole batch (all rows together), keeping ``n_kept(excess.numel(), ratio)``
    tokens; among equal scores the earlier token (in row-major order) wins, so the mask is
    deterministic.
    """
    if not torch.is_tensor(excess) or not excess.is_floating_point():
        raise ValueError("excess must be a floating-point tensor (the per-token excess loss)")
    if torch.isnan(excess).any():
        raise ValueError("excess holds NaN: a per-token loss was NaN")
    flat = excess.reshape(-1)
    order = torch.sort(flat, descending=True, stable=True).indices         # ties: original order kept
    mask = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
    mask[order[: n_kept(flat.numel(), ratio)]] = True
    return mask.view(excess.shape)


@dataclass
class SelectionRecord:
    """What an ``ExcessLossSelector`` saw: per recorded step, and snapshots of a few whole batches."""

    steps: list[int] = field(default_factory=list)
    kept_by_label: dict[int, list[float]] = field(default_factory=dict)   # label -> kept fraction per step
    excess_kept: list[float] = field(default_factory=list)     # mean excess loss of the kept tokens
    excess_dropped: list[float] = field(default_factory=list)  # ... and of the dropped ones
    snapshots: list[dict] = field(default_factory=list)        # {"step", "x", "y", "excess", "mask", "labels"}


class ExcessLossSelector:
    """A ``token_weights`` hook for ``minilm.train.train``: keep the top ``ratio`` of each batch by
    excess loss against ``reference`` (Rho-1's SLM), return the 0/1 mask, and record it.

    reference: the reference model (frozen; moved to the batch's device on first use).
    labels: optional callable returning the (B, T) labels of the current batch's targets (e.g.
        ``MixtureSampler.last_labels``): then ``record.kept_by_label`` tracks the kept share of
        each kind of token (clean, noise, off-target) over training.
    record_every: record statistics every this many steps; snapshot_steps: steps at which the
        whole batch (tokens, excess, mask) is kept for display.
    """

    def __init__(self, reference: torch.nn.Module, ratio: float, labels: Callable[[], torch.Tensor] | None = None,
                 record_every: int = 10, snapshot_steps: tuple[int, ...] = ()):
        n_kept(1, ratio)  # validates the ratio
        self.reference, self.ratio, self.labels = reference, float(ratio), labels
        self.reference.requires_grad_(False)
        self.record_every, self.snapshot_steps = int(record_every), set(snapshot_steps)
        self.record = SelectionRecord()
        self.step = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor, token_loss: torch.Tensor) -> torch.Tensor:
        """0/1 weights (B, T): the current model's ``token_loss`` minus the reference's, top ``ratio`` kept."""
        if next(self.reference.parameters()).device != x.device:
            self.reference.to(x.device)
        excess = token_loss.float() - token_losses(self.reference, x, y)   # (B, T)
        mask = topk_mask(excess, self.ratio)
        self._remember(x, y, excess, mask)
        self.step += 1
        return mask.to(token_loss.dtype)

    def _remember(self, x, y, excess, mask) -> None:
        step, rec = self.step, self.record
        labels = self.labels().to(mask.device) if self.labels is not None else None
        if step in self.snapshot_steps:
            rec.snapshots.append({"step": step, "x": x.cpu(), "y": y.cpu(), "excess": excess.cpu(),
                                  "mask": mask.cpu(), "labels": None if labels is None else labels.cpu()})
        if step % self.record_every:
            return
        rec.steps.append(step)
        rec.excess_kept.append(float(excess[mask].mean()))
        rec.excess_dropped.append(float(excess[~mask].mean()) if (~mask).any() else float("nan"))
        if labels is not None:
            for lab in sorted(set(rec.kept_by_label) | set(labels.unique().tolist())):
                sel = labels == lab
                kept = float(mask[sel].float().mean()) if sel.any() else float("nan")
                rec.kept_by_label.setdefault(lab, [float("nan")] * (len(rec.steps) - 1)).append(kept)


def noisy_tokens(tokens: np.ndarray, noise_rate: float, vocab_size: int, seed: int = 0,
                 noise_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``tokens`` with a fraction ``noise_rate`` of positions replaced by random tokens.

    Each position is replaced independently with probability ``noise_rate`` by a token drawn
    uniformly from ``noise_ids`` (default: the whole vocabulary 0..vocab_size-1). Returns the
    noisy tokens and their labels: 0 = the original token, 1 = noise.
    """
    if not 0.0 <= noise_rate < 1.0:
        raise ValueError(f"noise_rate must be in [0, 1), got {noise_rate}")
    rng = np.random.default_rng(seed)
    ids = np.arange(vocab_size) if noise_ids is None else np.asarray(noise_ids)
    noise = rng.random(len(tokens)) < noise_rate
    out = np.array(tokens, copy=True)
    out[noise] = rng.choice(ids, size=int(noise.sum())).astype(out.dtype)
    return out, noise.astype(np.int64)


# ------------------------------------------------------------------------------ the lab's setting
@dataclass
class SLMData:
    """Rho-1's setting in miniature (``slm_data``).

    target: the clean target language; ``target.train`` is the reference model's (small) corpus,
        ``target.val`` the held-out text every run is scored on.
    sources: the training domains: the target's text with noise tokens (labels 0 clean, 1 noise)
        and an off-target language (label 2), mixed in ``proportions``.
    """

    target: Domain
    sources: list[Domain]
    proportions: tuple[float, ...]
    vocab_size: int

    def sampler(self) -> MixtureSampler:
        """A fresh batch source over ``sources`` (its ``last_labels`` give every token's label)."""
        return MixtureSampler(self.sources, self.proportions)


def slm_data(seed: int = 0, vocab_size: int = 32, noise_rate: float = 0.3, off_target: float = 0.3,
             overlap: float = 0.3, n_train: int = 100_000, n_reference: int = 20_000, n_val: int = 4_096) -> SLMData:
    """A clean target language and a polluted training stream (two ``markov_domains`` of order 1).

    The target's own text (``n_train`` tokens) gets a fraction ``noise_rate`` of its tokens replaced
    by uniformly random ones (``noisy_tokens``); an off-target language sharing a fraction ``overlap``
    of the target's next-token rows makes up ``off_target`` of the training rows. The reference
    corpus is ``n_reference`` further clean tokens of the target, never trained on by the main runs.
    """
    if not 0.0 <= off_target < 1.0:
        raise ValueError(f"off_target must be in [0, 1) (the share of off-target rows), got {off_target}")
    target, other = markov_domains(2, vocab_size=vocab_size, order=1, overlap=overlap, concentrations=0.1,
                                   n_train=n_train + n_reference, n_val=n_val, seed=seed, names=["target", "other"])
    noisy, labels = noisy_tokens(target.train[n_reference:], noise_rate, vocab_size, seed=seed + 1)
    sources = [Domain("target (noisy)", noisy, target.val, labels=labels),
               Domain("off-target", other.train[:n_train], other.val, labels=np.full(n_train, 2, dtype=np.int64),
                      entropy_rate=other.entropy_rate)]
    clean = Domain("target", target.train[:n_reference], target.val, entropy_rate=target.entropy_rate)
    return SLMData(clean, sources, (1.0 - off_target, off_target), vocab_size)


def train_reference(config: Mapping, data: SLMData, *, steps: int, lr: float, batch_size: int = 16,
                    context_length: int = 32, seed: int = 0, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rho-1's step 1: a GPT trained on the clean reference corpus ``data.target.train``."""
    model = make_gpt(data.vocab_size, config, context_length, seed)
    train_gpt(config, data.target.train, data.target.val, vocab_size=data.vocab_size, steps=steps, lr=lr,
              batch_size=batch_size, context_length=context_length, seed=seed, device=device, model=model)
    return model


@dataclass
class SLMRun:
    """One training run on the polluted stream (``train_selective``)."""

    ratio: float                     # the fraction of each batch's tokens trained on (1.0: all tokens)
    loss: float                      # held-out loss on the clean target after training
    curve: tuple[list[int], list[float]]   # (steps, held-out target loss) along the run
    record: SelectionRecord | None   # what the selector kept (None for the all-token baseline)
    realised: dict[str, float]       # the share of rows drawn from each source
    seconds: float


def train_selective(config: Mapping, data: SLMData, *, ratio: float = 1.0, reference: torch.nn.Module | None = None,
                    steps: int, lr: float, batch_size: int = 16, context_length: int = 32, seed: int = 0,
                    device: str | torch.device = "cpu", curve_every: int | None = None, record_every: int = 10,
                    snapshot_steps: tuple[int, ...] = ()) -> SLMRun:
    """Train a fresh GPT on ``data``'s polluted stream, on the top ``ratio`` of each batch's tokens by
    excess loss against ``reference`` (Rho-1's SLM), or on every token (``ratio=1.0``, no reference).

    Every run of one seed starts from the same weights and sees the same batches, so SLM and the
    baseline differ only in which tokens the loss counts. Scored on every window of the clean
    target's held-out text.
    """
    n_kept(1, ratio)
    if ratio < 1.0 and reference is None:
        raise ValueError(f"ratio={ratio} selects tokens by excess loss: pass reference= (train_reference)")
    sampler = data.sampler()
    selector = (ExcessLossSelector(reference, ratio, labels=sampler.last_labels, record_every=record_every,
                                   snapshot_steps=snapshot_steps) if ratio < 1.0 else None)
    curve = LossCurve(data.target.val, curve_every, context_length, len(data.target.val) - 1) if curve_every else None
    t0 = time.perf_counter()
    run = train_gpt(config, sampler, data.target.val, vocab_size=data.vocab_size, steps=steps, lr=lr,
                    batch_size=batch_size, context_length=context_length, seed=seed, device=device, curve=curve,
                    token_weights=selector)
    return SLMRun(float(ratio), run.loss, run.curve, selector.record if selector else None, sampler.realised(),
                  time.perf_counter() - t0)
