"""Redundancy in trained networks (talk section 3, lab 07): layer removal by Block Influence, and
lottery tickets.

**Block Influence** (ShortGPT, Men et al. 2024, arXiv 2403.03853, eq. 1). With X_i the hidden
state entering layer i (the residual stream, one C-vector per token) and X_{i+1} the one leaving it,

    BI_i = 1 - E_{X, t} [ X_{i,t} . X_{i+1,t} / (||X_{i,t}|| ||X_{i+1,t}||) ]

averaged over every token t of a calibration set. A layer whose output points where its input
pointed (BI near 0) changed little; ShortGPT deletes the layers of lowest BI, without retraining.
``block_influence`` measures it, ``remove_layers`` deletes blocks, ``choose_layers`` gives the
three rules compared in the lab (lowest BI, the last layers, random layers), ``removal_curves``
scores every rule at every k. ``heal`` is the optional short fine-tune after removal ("healing",
Gromov et al. 2024, arXiv 2403.17887, sec. 3.2, who heal with QLoRA; ShortGPT itself does not
retrain); ``next_token_accuracy`` is the lab's small downstream check, an argmax metric like a
multiple-choice benchmark's accuracy, beside the loss.

**Lottery tickets** (Frankle & Carbin 2019, "The Lottery Ticket Hypothesis"). Iterative magnitude
pruning (IMP, their Algorithm 1 with iterative pruning, sec. 1 and 2): train; in every pruned layer
remove the fraction p of its *remaining* weights of smallest magnitude; rewind the surviving
weights to their values at initialisation (or, "late rewinding", Frankle et al. 2020, at an early
training step); repeat. The sparse network of round r, trained from the rewound weights, is a
"winning ticket" if it matches the dense network; the control is the same mask trained from a
fresh random initialisation (``reinit_state``). ``find_ticket`` runs the loop.

Masks are a parametrization of each pruned ``nn.Linear``: its weight *is* W ⊙ M, computed from
the stored weights W (``module.parametrizations.weight.original``) and the boolean mask M at every
use, so pruned weights are exactly zero in every forward pass and get zero gradient through any
number of optimizer steps. Pruned layers are the linear layers inside ``model.blocks`` (attention
and feed-forward matrices), as in Frankle & Carbin's fully connected layers; embeddings and the
output head are kept dense.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

__all__ = [
    "TicketSearch", "apply_masks", "block_influence", "choose_layers", "cosine_matrix", "find_ticket", "heal",
    "hidden_states", "layer_sparsity", "magnitude_mask", "next_token_accuracy", "prunable_layers", "prune_step",
    "reinit_state", "removal_curves", "remove_layers", "removal_order", "rewind", "snapshot", "train_masked",
]

RULES = ("bi", "last", "random")


# ------------------------------------------------------------------------------ hidden states
def _blocks(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ValueError(f"{type(model).__name__} has no `blocks` ModuleList: Block Influence and layer removal "
                         "need a residual stack of blocks (minilm's GPT or RWKV)")
    return blocks


@torch.no_grad()
def hidden_states(model: nn.Module, idx: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream at every depth: [X_0, ..., X_L], each (B, T, C), for token ids idx (B, T).

    X_i is the input of block i and X_{i+1} its output (X_L: the last block's, before the final
    norm). RWKV's ``ln0`` normalises the embedding before block 0 and belongs to the stem, so X_0
    is taken after it (``remove_layers`` keeps it too).
    """
    blocks, states = _blocks(model), []

    def record_input(block, args):
        x = args[0]
        states.append(block.ln0(x) if hasattr(block, "ln0") else x)

    def record_output(block, args, output):
        if block is blocks[-1]:
            states.append(output[0] if isinstance(output, tuple) else output)

    handles = [b.register_forward_pre_hook(record_input) for b in blocks]
    handles += [b.register_forward_hook(record_output) for b in blocks]
    was_training = model.training
    try:
        model.eval()
        model(idx)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return states


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each token's vectors: a, b (..., C) -> (...,), in float32."""
    a, b = a.float(), b.float()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)


def _batches(idx: torch.Tensor | Iterable[torch.Tensor]) -> Iterable[torch.Tensor]:
    return [idx] if isinstance(idx, torch.Tensor) else idx


def block_influence(model: nn.Module, batches: torch.Tensor | Iterable[torch.Tensor]) -> np.ndarray:
    """BI_i = 1 - mean over tokens of cos(X_i, X_{i+1}) for every block i (ShortGPT eq. 1): (L,).

    batches: token ids (B, T) or an iterable of them (the calibration set); every token of every
    batch counts once.
    """
    total, count = None, 0
    for idx in _batches(batches):
        h = hidden_states(model, idx)
        cos = torch.stack([_cosines(h[i], h[i + 1]).sum() for i in range(len(h) - 1)])  # (L,)
        total = cos if total is None else total + cos
        count += idx.numel()
    if count == 0:
        raise ValueError("block_influence needs at least one calibration batch of token ids (B, T)")
    return 1.0 - (total / count).double().cpu().numpy()


def cosine_matrix(model: nn.Module, batches: torch.Tensor | Iterable[torch.Tensor]) -> np.ndarray:
    """Mean over tokens of cos(X_i, X_j) for every pair of depths: (L + 1, L + 1), 1 on the diagonal.

    Entry (i, i + 1) is 1 - BI_i; the whole matrix shows how far the residual stream turns across depth.
    """
    total, count = None, 0
    for idx in _batches(batches):
        h = torch.stack(hidden_states(model, idx))  # (L + 1, B, T, C)
        h = h.float() / h.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
        cos = torch.einsum("ibtc,jbtc->ij", h, h)  # (L + 1, L + 1): sums over tokens
        total = cos if total is None else total + cos
        count += idx.numel()
    if count == 0:
        raise ValueError("cosine_matrix needs at least one calibration batch of token ids (B, T)")
    return (total / count).double().cpu().numpy()


# ------------------------------------------------------------------------------ layer removal
def removal_order(bi: Sequence[float]) -> list[int]:
    """Layer indices from the lowest Block Influence to the highest: ShortGPT removes them in this order."""
    values = np.asarray(bi, dtype=np.float64)
    if values.ndim != 1 or not np.all(np.isfinite(values)):
        raise ValueError(f"bi must be a 1-D sequence of finite numbers (one per layer), got {bi!r}")
    return [int(i) for i in np.argsort(values, kind="stable")]


def choose_layers(rule: str, k: int, n_layers: int, bi: Sequence[float] | None = None, seed: int = 0) -> list[int]:
    """Which k of n_layers layers to remove: rule "bi" (lowest Block Influence), "last" (the last
    k, the baseline ShortGPT compares with) or "random" (k distinct layers drawn with ``seed``)."""
    if rule not in RULES:
        raise ValueError(f"unknown removal rule {rule!r}: choose one of {', '.join(RULES)}")
    if not isinstance(k, int) or not 0 <= k < n_layers:
        raise ValueError(
            f"k must be an integer in [0, n_layers) = [0, {n_layers}) (keep at least one layer), got {k!r}"
        )
    if rule == "bi":
        if bi is None or len(bi) != n_layers:
            raise ValueError(f"rule 'bi' needs the Block Influence of all {n_layers} layers (bi=...)")
        return sorted(removal_order(bi)[:k])
    if rule == "last":
        return list(range(n_layers - k, n_layers))
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n_layers, size=k, replace=False))


def remove_layers(model: nn.Module, layers: Iterable[int]) -> nn.Module:
    """A copy of ``model`` without the blocks ``layers`` (no retraining): each removed block's residual
    update is simply gone, as if the identity stood in its place. The original is left unchanged.

    The copy's ``config.n_layers`` and block indices are renumbered, so a GPT's KV cache and
    ``flops_per_token`` follow; RWKV's stem norm ``ln0`` moves to the new first block.
    """
    blocks = _blocks(model)
    drop = sorted(set(int(i) for i in layers))
    if any(not 0 <= i < len(blocks) for i in drop):
        raise ValueError(f"layers to remove must be in [0, {len(blocks)}), got {drop}")
    if len(drop) == len(blocks):
        raise ValueError("cannot remove every layer: keep at least one block")
    new = copy.deepcopy(model)
    stem_norm = getattr(new.blocks[0], "ln0", None)
    kept = [b for i, b in enumerate(new.blocks) if i not in drop]
    for i, block in enumerate(kept):  # renumber: the KV cache and RWKV's block 0 read these indices
        if hasattr(block, "attn") and hasattr(block.attn, "layer"):
            block.attn.layer = i
        if hasattr(block, "layer"):
            block.layer = i
    if stem_norm is not None and not hasattr(kept[0], "ln0"):
        kept[0].ln0 = stem_norm
    new.blocks = nn.ModuleList(kept)
    if dataclasses.is_dataclass(getattr(new, "config", None)) and hasattr(new.config, "n_layers"):
        new.config = dataclasses.replace(new.config, n_layers=len(kept))
    return new


def removal_curves(model: nn.Module, bi: Sequence[float], ks: Iterable[int], score: Callable[[nn.Module], Any],
                   rules: Sequence[str] = RULES, seed: int = 0) -> dict[str, list[Any]]:
    """``score(remove_layers(model, choose_layers(rule, k, L, bi, seed)))`` for every rule and k:
    {rule: [score at each k]}. ``score`` may return anything (a loss, an accuracy, a tuple of both)."""
    n_layers, ks = len(_blocks(model)), list(ks)
    return {rule: [score(remove_layers(model, choose_layers(rule, k, n_layers, bi, seed))) for k in ks]
            for rule in rules}


@torch.no_grad()
def next_token_accuracy(model: nn.Module, tokens: np.ndarray, context_length: int, batch_size: int = 64,
                        score_from: int = 0) -> float:
    """Fraction of next tokens the model ranks first (argmax of its logits), over every
    non-overlapping window of ``tokens``, counting positions >= ``score_from`` of each window."""
    from minilm.data.batching import iterate_windows

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    hits, count = 0, 0
    try:
        for x, y in iterate_windows(tokens, context_length, batch_size):  # each (b, T)
            logits = model(x.to(device))
            logits = logits[0] if isinstance(logits, tuple) else logits  # (b, T, V)
            right = logits.argmax(-1) == y.to(device)                     # (b, T)
            hits += int(right[:, score_from:].sum())
            count += right[:, score_from:].numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError(f"score_from={score_from} leaves no position of a {context_length}-token window to score")
    return hits / count


def heal(model: nn.Module, tokens: np.ndarray, steps: int, lr: float, **train_options) -> nn.Module:
    """A copy of ``model`` (e.g. a ``remove_layers`` result) fine-tuned for ``steps`` steps on ``tokens``.

    The optional "healing" after removal (Gromov et al. 2024, sec. 3.2): a short training run that
    lets the remaining layers adapt to the missing ones. ``train_options`` go to ``minilm.train.train``
    (batch_size, context_length, schedule, seed, device, ...); by default no progress bar, no autocast
    (the same numbers on every device, up to float32 rounding) and weight decay 0 (a few steps from a
    trained model should not pull it towards zero). The original is left unchanged.
    """
    from minilm.train import train

    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1 (healing steps), got {steps!r}")
    healed = copy.deepcopy(model)
    options = {"progress": False, "autocast": False, "weight_decay": 0.0,
               "device": next(model.parameters()).device, **train_options}
    train(healed, tokens, None, steps=steps, lr=lr, **options)
    return healed


# ------------------------------------------------------------------------------ magnitude masks
def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask (weight's shape), True = kept: prune the round(sparsity * n) entries of smallest |w|."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity!r}")
    return prune_step(weight, torch.ones_like(weight, dtype=torch.bool), sparsity)


def prune_step(weight: torch.Tensor, mask: torch.Tensor, rate: float) -> torch.Tensor:
    """One IMP round in one layer: remove round(rate * kept) of the kept weights of smallest |w|.

    weight, mask: same shape (mask True = kept). Returns the new mask; pruned entries stay pruned.
    Ties in |w| are broken by position (a stable sort), so the kept count is exact.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"the pruning rate must be in [0, 1], got {rate!r}")
    if weight.shape != mask.shape:
        raise ValueError(f"weight {tuple(weight.shape)} and mask {tuple(mask.shape)} must have the same shape")
    kept = mask.flatten().nonzero().squeeze(1)  # (n_kept,) positions still in the network
    n_prune = int(round(rate * kept.numel()))
    magnitude = weight.detach().flatten()[kept].abs().float()
    order = torch.sort(magnitude, stable=True).indices  # smallest |w| first
    new = mask.flatten().clone()
    new[kept[order[:n_prune]]] = False
    return new.view_as(mask)


# ------------------------------------------------------------------------------ masking a model
class _Mask(nn.Module):
    """Parametrization weight = W ⊙ M: pruned entries are 0 and get no gradient."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def prunable_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """The linear layers IMP prunes, by name: every ``nn.Linear`` inside ``model.blocks``."""
    return {f"blocks.{name}": m for name, m in _blocks(model).named_modules() if isinstance(m, nn.Linear)}


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Make each named layer's weight W ⊙ mask (in place; a later call replaces the masks). Returns model."""
    layers = prunable_layers(model)
    unknown = sorted(set(masks) - set(layers))
    if unknown:
        raise ValueError(f"no prunable layer named {', '.join(unknown)}; the layers are {', '.join(layers)}")
    for name, mask in masks.items():
        module = layers[name]
        if tuple(mask.shape) != tuple(module.weight.shape):
            raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, its weight {tuple(module.weight.shape)}")
        mask = mask.to(device=module.weight.device, dtype=torch.bool)
        if parametrize.is_parametrized(module, "weight"):
            module.parametrizations.weight[0].mask.copy_(mask)
        else:
            parametrize.register_parametrization(module, "weight", _Mask(mask))
    return model


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of each prunable layer's weights that its mask removes (0 for a layer without one), by name."""
    return {name: float(1.0 - m.parametrizations.weight[0].mask.float().mean())
            if parametrize.is_parametrized(m, "weight") else 0.0 for name, m in prunable_layers(model).items()}


def _plain(name: str) -> str:
    return name.replace(".parametrizations.weight.original", ".weight")


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter, by its plain name (``blocks.0.ffn.w1.weight`` also when masked:
    the stored, unmasked values). ``rewind`` puts them back."""
    return {_plain(name): p.detach().clone() for name, p in model.named_parameters()}


@torch.no_grad()
def rewind(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Set every parameter to its value in ``state`` (a ``snapshot``), keeping the masks: IMP's rewind."""
    params = {_plain(name): p for name, p in model.named_parameters()}
    missing = sorted(set(params) - set(state))
    if missing:
        raise ValueError(f"the saved state lacks {', '.join(missing[:5])}: was it taken from this kind of model?")
    for name, p in params.items():
        p.copy_(state[name])
    return model


def reinit_state(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A fresh random initialisation of the same architecture (drawn with ``seed``), as a snapshot:
    the random-reinitialisation control of Frankle & Carbin."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(model)(copy.deepcopy(model.config))
    return snapshot(fresh)


# ------------------------------------------------------------------------------ the IMP loop
@dataclass
class TicketSearch:
    """What ``find_ticket`` found: round r = 0 is the dense network, round r has pruned r times."""

    masks: list[dict[str, torch.Tensor]]  # masks[r][layer]: the mask trained in round r (True = kept)
    sparsity: list[float]                 # fraction of prunable weights removed in round r
    layer_sparsity: list[dict[str, float]]
    results: list[Any]                    # what train_fn returned in round r
    start: dict[str, torch.Tensor]        # the weights every round rewound to


def _overall_sparsity(masks: dict[str, torch.Tensor]) -> float:
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())


def train_masked(model: nn.Module, masks: dict[str, torch.Tensor], start: dict[str, torch.Tensor],
                 train_fn: Callable[[nn.Module], Any]) -> Any:
    """Apply ``masks``, rewind to ``start``, train with ``train_fn(model)`` (in place); return its result.

    With ``start`` a ``reinit_state`` this is the random-reinitialisation control of a ticket.
    """
    apply_masks(model, masks)
    rewind(model, start)
    return train_fn(model)


def find_ticket(model: nn.Module, train_fn: Callable[[nn.Module], Any], rounds: int = 5, rate: float = 0.2,
                start: dict[str, torch.Tensor] | None = None) -> TicketSearch:
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019), layer-wise.

    Round 0 trains the dense network from ``start`` (default: the model's current weights, i.e. its
    initialisation; pass a ``snapshot`` taken at step k for late rewinding). Each later round prunes
    ``rate`` of every layer's remaining weights by magnitude (after the previous round's training),
    rewinds to ``start`` and trains again. ``train_fn(model)`` trains in place and returns what to
    record (e.g. a held-out loss curve); it must be deterministic for a fair comparison. The model
    ends with the last round's masks and trained weights.
    """
    if not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"rounds must be an integer >= 0, got {rounds!r}")
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must be in (0, 1) (the fraction of remaining weights pruned per round), got {rate!r}")
    start = snapshot(model) if start is None else start
    masks = {name: torch.ones_like(m.weight, dtype=torch.bool) for name, m in prunable_layers(model).items()}
    search = TicketSearch([], [], [], [], start)
    for r in range(rounds + 1):
        if r > 0:  # prune by the magnitudes the previous round trained to
            masks = {name: prune_step(m.weight, masks[name], rate) for name, m in prunable_layers(model).items()}
        search.results.append(train_masked(model, masks, start, train_fn))
        search.masks.append({name: m.detach().cpu().clone() for name, m in masks.items()})
        search.sparsity.append(_overall_sparsity(masks))
        search.layer_sparsity.append(layer_sparsity(model))
    return search
