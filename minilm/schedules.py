"""Learning-rate schedules: functions of the step that return a multiplier of the peak lr.

A schedule is any callable ``step -> float``; the trainer sets lr = peak_lr * schedule(step) at
each step 0, 1, ..., total_steps - 1 (``minilm.train``). Conventions shared by every schedule here:

- Warmup of ``w`` steps is linear and ends *at* the peak: step s < w gets (s + 1) / w, so step
  w - 1 already trains at the peak (no step is wasted at lr 0).
- A decay of ``D`` whole steps covers steps ``start, ..., start + D - 1`` with progress
  p = (step - start) / D in [0, 1): the first decay step is still at the peak and the end value is
  reached at step ``start + D``, one past the last trained step, exactly as
  ``torch.optim.lr_scheduler.LinearLR`` and ``CosineAnnealingLR`` do. Past the end the
  multiplier stays at its end value.

Schedules:
- ``constant``: warmup, then the peak for ever.
- ``cosine``: warmup, then half a cosine down to ``final_fraction`` (GPT-3; Hoffmann et al. 2022).
- ``inverse_sqrt``: warmup, then 1/sqrt(step) (Vaswani et al. 2017, sec. 5.3), no fixed end.
- ``wsd``: warmup-stable-decay (MiniCPM, Hu et al. 2024, sec. 4): warmup, hold the peak, then
  decay over the last ``decay_steps`` in one of four shapes (``DECAY_SHAPES``).
- ``wsd_branch``: the schedule that continues a WSD run from a stable-phase checkpoint at step s
  through a decay of D steps: the run then ends at step s + D.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

Schedule = Callable[[int], float]

DECAY_SHAPES = ("linear", "cosine", "exp", "1-sqrt")


# ------------------------------------------------------------------------------------ checks
def _check_int(name: str, value, low: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be a whole number of steps >= {low}, got {value!r}")
    return int(value)


def _check_fraction(name: str, value) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _warmup(step: int, warmup_steps: int) -> float:
    """Linear warmup that reaches the peak at step warmup_steps - 1."""
    return (step + 1) / warmup_steps


# ------------------------------------------------------------------------------------ schedules
def constant(warmup_steps: int = 0) -> Schedule:
    """1.0 after a linear warmup of ``warmup_steps``."""
    warmup_steps = _check_int("warmup_steps", warmup_steps, 0)

    def f(step: int) -> float:
        return min(1.0, _warmup(step, warmup_steps)) if warmup_steps > 0 else 1.0
    return f


def cosine(total_steps: int, warmup_steps: int = 0, final_fraction: float = 0.1) -> Schedule:
    """Linear warmup, then cosine decay to ``final_fraction`` of the peak at ``total_steps``.

    m = final + (1 - final) * (1 + cos(pi * p)) / 2 with p = (step - warmup) / (total - warmup):
    the GPT-3 / Chinchilla recipe (Hoffmann et al. 2022 decay to 10% of the peak).
    """
    total_steps = _check_int("total_steps", total_steps, 1)
    warmup_steps = _check_int("warmup_steps", warmup_steps, 0)
    final_fraction = _check_fraction("final_fraction", final_fraction)
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} is longer than total_steps={total_steps}")

    def f(step: int) -> float:
        if step < warmup_steps:
            return _warmup(step, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def inverse_sqrt(warmup_steps: int) -> Schedule:
    """Linear warmup, then decay as 1/sqrt(step): the original Transformer schedule.

    Vaswani et al. (2017, eq. 3) use lr = d^-0.5 * min(n^-0.5, n * w^-1.5) at step n = 1, 2, ...;
    divided by its peak w^-0.5 this is min(n / w, sqrt(w / n)) with n = step + 1, which is 1 at
    the end of the warmup and has no fixed end (it never reaches 0).
    """
    warmup_steps = _check_int("warmup_steps", warmup_steps, 1)

    def f(step: int) -> float:
        n = step + 1
        return min(n / warmup_steps, math.sqrt(warmup_steps / n))
    return f


def _decay_shape(shape: str, decay_steps: int, half_life: float | None) -> Callable[[float], float]:
    """g(p) for the decay progress p in [0, 1]: g(0) = 1, falling; the multiplier is final + (1 - final) g."""
    if shape == "linear":
        return lambda p: 1.0 - p
    if shape == "cosine":
        return lambda p: 0.5 * (1.0 + math.cos(math.pi * p))
    if shape == "1-sqrt":  # Hägele et al. 2024, sec. 3: falls fastest at the start of the decay
        return lambda p: 1.0 - math.sqrt(p)
    if shape == "exp":  # MiniCPM (Hu et al. 2024, sec. 4.2): f(s) = 0.5^(s / T), T the half-life in steps
        h = decay_steps / 4 if half_life is None else half_life
        return lambda p: 0.5 ** (p * decay_steps / h)
    raise ValueError(f"unknown decay shape {shape!r}: choose one of {', '.join(DECAY_SHAPES)}")


def wsd(total_steps: int, warmup_steps: int = 0, decay_fraction: float | None = None, final_fraction: float = 0.0,
        *, decay_steps: int | None = None, shape: str = "linear", half_life: float | None = None) -> Schedule:
    """Warmup-stable-decay (MiniCPM, Hu et al. 2024, sec. 4.1): warm up, hold the peak, decay at the end.

    The decay takes the last ``decay_steps`` whole steps (or, if ``decay_fraction`` is given
    instead, ``round(decay_fraction * total_steps)`` of them; default 10%). At decay step
    k = step - (total_steps - decay_steps) the multiplier is final + (1 - final) * g(k / decay_steps):

    - "linear": g = 1 - p;  "cosine": g = (1 + cos(pi p)) / 2;
    - "1-sqrt": g = 1 - sqrt(p) (Hägele et al. 2024);
    - "exp": g = 0.5^(k / half_life), MiniCPM's exponential decay with a half-life in steps
      (default decay_steps / 4, so it ends near 1/16 of the way down; it never reaches ``final``).

    The stable phase can be branched into a decay at any step: see ``wsd_branch``.
    """
    total_steps = _check_int("total_steps", total_steps, 1)
    warmup_steps = _check_int("warmup_steps", warmup_steps, 0)
    final_fraction = _check_fraction("final_fraction", final_fraction)
    if decay_steps is not None and decay_fraction is not None:
        raise ValueError("give decay_steps (whole steps) or decay_fraction (of total_steps), not both")
    if decay_steps is None:
        # round, not int: int(10 * (1 - 0.9)) truncated 0.999... to 0 and decayed one step early
        decay_steps = round(total_steps * _check_fraction("decay_fraction", 0.1 if decay_fraction is None
                                                          else decay_fraction))
    decay_steps = _check_int("decay_steps", decay_steps, 0)
    if warmup_steps + decay_steps > total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} + decay_steps={decay_steps} exceed total_steps="
                         f"{total_steps}: shorten the warmup or the decay")
    if half_life is not None and (not isinstance(half_life, numbers.Real) or not half_life > 0):
        raise ValueError(f"half_life must be a number of steps > 0, got {half_life!r}")
    if half_life is not None and shape != "exp":
        raise ValueError(f"half_life sets the 'exp' decay; the {shape!r} decay has none")
    g = _decay_shape(shape, decay_steps, half_life)
    decay_start = total_steps - decay_steps

    def f(step: int) -> float:
        if step < warmup_steps:
            return _warmup(step, warmup_steps)
        if step < decay_start or decay_steps == 0:
            return 1.0
        progress = min(1.0, (step - decay_start) / decay_steps)
        return final_fraction + (1.0 - final_fraction) * g(progress)
    return f


def wsd_branch(stable_step: int, decay_steps: int, warmup_steps: int = 0, *, shape: str = "linear",
               final_fraction: float = 0.0, half_life: float | None = None) -> Schedule:
    """Continue a WSD run from its stable-phase checkpoint at step ``stable_step`` through a decay.

    The branch trains steps stable_step, ..., stable_step + decay_steps - 1 and ends there. Up to
    ``stable_step`` it equals the parent run (warmup, then the peak), so one schedule serves both
    the parent's checkpoint and its continuation: ``train(..., steps=stable_step + decay_steps,
    schedule=wsd_branch(s, d), checkpoint_path=copy_of_checkpoint_at_s, resume=True)``.
    """
    stable_step = _check_int("stable_step", stable_step, 0)
    warmup_steps = _check_int("warmup_steps", warmup_steps, 0)
    if stable_step < warmup_steps:
        raise ValueError(f"stable_step={stable_step} is inside the warmup (warmup_steps={warmup_steps}): "
                         "branch from a checkpoint of the stable phase")
    decay_steps = _check_int("decay_steps", decay_steps, 1)
    return wsd(stable_step + decay_steps, warmup_steps, final_fraction=final_fraction, decay_steps=decay_steps,
               shape=shape, half_life=half_life)


def cumulative_lr(schedule: Schedule, total_steps: int) -> list[float]:
    """Running sum of the multipliers over steps 0..total_steps-1: the area under the schedule.

    Two schedules with the same peak lr move the weights by amounts that grow with this area
    (for plain SGD the displacement is lr times the summed gradients), so it is the fair way to
    compare, e.g., WSD and cosine "of equal budget".
    """
    total_steps = _check_int("total_steps", total_steps, 0)
    out, running = [], 0.0
    for step in range(total_steps):
        running += schedule(step)
        out.append(running)
    return out
