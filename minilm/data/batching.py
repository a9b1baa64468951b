"""Random training windows from a token array: inputs x and next-token targets y."""

from __future__ import annotations

import numpy as np
import torch

from minilm.device import resolve_device


def get_batch(
    tokens: np.ndarray,
    batch_size: int,
    context_length: int,
    device: str | torch.device = "cpu",
    rng: np.random.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``batch_size`` windows of ``context_length`` tokens.

    x[b] = tokens[i : i + T] and y[b] = tokens[i + 1 : i + T + 1] (the next-token shift), with
    random starts i. Works on numpy arrays and on ``np.memmap`` token files (only the windows are
    read). Returns int64 tensors of shape (batch_size, context_length) on ``device``.
    """
    if batch_size < 1 or context_length < 1:
        raise ValueError(f"batch_size and context_length must be >= 1, got {batch_size}, {context_length}")
    n = len(tokens)
    if n < context_length + 1:
        raise ValueError(
            f"only {n} tokens, but a window needs context_length + 1 = {context_length + 1}: "
            "use more data or a shorter context_length"
        )
    rng = rng if rng is not None else np.random.default_rng()
    starts = rng.integers(0, n - context_length, size=batch_size)
    windows = np.stack([np.asarray(tokens[s : s + context_length + 1], dtype=np.int64) for s in starts])
    xy = torch.from_numpy(windows)
    dev = resolve_device(device)
    x, y = xy[:, :-1], xy[:, 1:]
    if dev.type == "cuda":  # pinned memory lets the copy overlap with compute
        return x.pin_memory().to(dev, non_blocking=True), y.pin_memory().to(dev, non_blocking=True)
    return x.contiguous().to(dev), y.contiguous().to(dev)


def iterate_windows(tokens: np.ndarray, context_length: int, batch_size: int):
    """Every non-overlapping window in order (for exact evaluation over a whole split)."""
    n_windows = (len(tokens) - 1) // context_length
    if n_windows < 1:
        raise ValueError(f"need more than context_length={context_length} tokens, got {len(tokens)}")
    arr = np.asarray(tokens[: n_windows * context_length + 1], dtype=np.int64)
    x_all = arr[:-1].reshape(n_windows, context_length)
    y_all = arr[1:].reshape(n_windows, context_length)
    for i in range(0, n_windows, batch_size):
        yield torch.from_numpy(x_all[i : i + batch_size]), torch.from_numpy(y_all[i : i + batch_size])
