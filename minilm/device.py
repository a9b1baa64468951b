"""Choosing where tensors live: ``device="auto"`` tries CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto", verbose: bool = False) -> torch.device:
    """Turn ``"auto"`` (or an explicit name) into a ``torch.device``.

    ``"auto"`` picks CUDA when available, then Apple's MPS, else CPU. With ``verbose=True`` the
    choice is printed, so a learner always knows where their model runs.
    """
    if isinstance(device, torch.device):
        chosen = device
    elif device == "auto":
        if torch.cuda.is_available():
            chosen = torch.device("cuda")
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            chosen = torch.device("mps")
        else:
            chosen = torch.device("cpu")
    else:
        try:
            chosen = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(
                f"unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:0' or 'mps'"
            ) from err
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available: use 'auto' or 'cpu'")
        if chosen.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r} asked for, but MPS is not available: use 'auto' or 'cpu'")
    if verbose:
        print(f"minilm: using device {chosen}")
    return chosen


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices) so a run can be repeated exactly on CPU."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
