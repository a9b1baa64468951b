"""Learning-rate schedules: functions of the step that return a multiplier of the peak lr.

A schedule is any callable ``step -> float``; the trainer sets lr = peak_lr * schedule(step).
"""

from __future__ import annotations

import math
from collections.abc import Callable

Schedule = Callable[[int], float]


def constant(warmup_steps: int = 0) -> Schedule:
    """1.0 after a linear warmup of ``warmup_steps``."""
    def f(step: int) -> float:
        return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return f


def cosine(total_steps: int, warmup_steps: int = 0, final_fraction: float = 0.1) -> Schedule:
    """Linear warmup, then cosine decay to ``final_fraction`` of the peak at ``total_steps``.

    The GPT-3 / Chinchilla recipe (Hoffmann et al. 2022 decay to 10% of the peak).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def wsd(total_steps: int, warmup_steps: int = 0, decay_fraction: float = 0.1, final_fraction: float = 0.0) -> Schedule:
    """Warmup-stable-decay (MiniCPM, Hu et al. 2024): warm up, hold the peak, decay at the end.

    The last ``decay_fraction`` of the steps decays linearly to ``final_fraction``; the stable
    phase can be branched into a decay at any point.
    """
    if not 0 <= decay_fraction <= 1:
        raise ValueError(f"decay_fraction must be in [0, 1], got {decay_fraction}")
    decay_start = int(total_steps * (1 - decay_fraction))

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
        return 1.0 + (final_fraction - 1.0) * progress
    return f
