"""minilm.schedules against closed forms at every boundary step and against torch.optim.lr_scheduler.

Boundaries checked for each schedule: step 0, the last warmup step and the first one after it,
the last stable step, the first and last decay steps, the end (total_steps) and past the end.
"""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
from torch.optim import lr_scheduler as tls

from minilm import schedules
from minilm.schedules import DECAY_SHAPES, constant, cosine, cumulative_lr, inverse_sqrt, wsd, wsd_branch


def torch_multipliers(make_scheduler, n_steps: int) -> list[float]:
    """The lr that a torch scheduler gives at steps 0..n_steps-1 of an optimizer whose base lr is 1."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR's deprecation chatter about epochs
        for _ in range(n_steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return out


def values(schedule, n_steps: int) -> list[float]:
    return [schedule(s) for s in range(n_steps)]


# ----------------------------------------------------------------------------- closed forms
def test_constant_warmup_boundaries():
    f = constant(4)
    assert [f(s) for s in (0, 1, 2, 3, 4, 1000)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert constant()(0) == 1.0


def test_cosine_boundaries_closed_form():
    total, warm, final = 100, 10, 0.1
    f = cosine(total, warmup_steps=warm, final_fraction=final)
    assert f(0) == pytest.approx(0.1) and f(warm - 1) == pytest.approx(1.0)   # end of warmup: the peak
    assert f(warm) == pytest.approx(1.0)                                       # first decay step
    for s in (11, 37, 55, 99):
        p = (s - warm) / (total - warm)
        assert f(s) == pytest.approx(final + (1 - final) * 0.5 * (1 + math.cos(math.pi * p)), abs=1e-12)
    assert f(55) == pytest.approx(0.55)                                        # half way: the mean
    assert f(total) == pytest.approx(final) and f(total + 50) == pytest.approx(final)  # the end and past it


@pytest.mark.parametrize("shape", DECAY_SHAPES)
def test_wsd_boundaries_every_shape(shape):
    total, warm, decay, final = 50, 5, 10, 0.05
    f = wsd(total, warm, final_fraction=final, decay_steps=decay, shape=shape)
    start = total - decay
    assert f(0) == pytest.approx(1 / warm) and f(warm - 1) == 1.0 and f(warm) == 1.0
    assert f(start - 1) == 1.0                               # last stable step
    assert f(start) == 1.0                                   # first decay step: progress 0
    assert f(start + 1) < 1.0                                # then it falls
    decay_values = [f(s) for s in range(start, total + 1)]
    assert all(a > b for a, b in zip(decay_values, decay_values[1:])), "the decay must be strictly decreasing"
    assert f(total + 7) == f(total)                          # past the end: stays at its end value


@pytest.mark.parametrize("shape, g", [
    ("linear", lambda p: 1 - p),
    ("cosine", lambda p: 0.5 * (1 + math.cos(math.pi * p))),
    ("1-sqrt", lambda p: 1 - math.sqrt(p)),
])
def test_wsd_decay_shapes_closed_form(shape, g):
    total, decay, final = 40, 16, 0.1
    f = wsd(total, decay_steps=decay, final_fraction=final, shape=shape)
    for s in range(total - decay, total + 3):
        p = min(1.0, (s - (total - decay)) / decay)
        assert f(s) == pytest.approx(final + (1 - final) * g(p), abs=1e-12), s
    assert f(total) == pytest.approx(final)                  # these three shapes end exactly at the floor


def test_wsd_exp_is_minicpm_half_life():
    # MiniCPM's f(s) = 0.5^(s / T) on the decay steps s = 0, 1, ...: halves every T steps.
    f = wsd(100, decay_steps=40, shape="exp", half_life=10)
    assert [f(60 + k) for k in (0, 10, 20, 30)] == pytest.approx([1.0, 0.5, 0.25, 0.125])
    assert f(60 + 7) == pytest.approx(0.5 ** 0.7)
    assert f(100) == pytest.approx(0.5 ** 4) and f(500) == f(100)
    default = wsd(100, decay_steps=40, shape="exp")          # default half-life: decay_steps / 4
    assert default(70) == pytest.approx(0.5 ** (10 / 10))
    floored = wsd(100, decay_steps=40, shape="exp", half_life=10, final_fraction=0.2)
    assert floored(70) == pytest.approx(0.2 + 0.8 * 0.5)


def test_wsd_decay_length_is_whole_steps_not_truncated():
    # The old int(total * (1 - fraction)) gave int(0.999...) = 0: the decay started one step early.
    f = wsd(10, decay_fraction=0.9)
    assert f(0) == 1.0 and f(1) == 1.0 and f(2) < 1.0        # decay of 9 steps starting at step 1
    assert f(2) == pytest.approx(1 - 1 / 9)
    for total in range(1, 300):
        for fraction in (0.025, 0.1, 0.2, 0.3, 0.7, 0.9):
            d = round(fraction * total)
            g = wsd(total, decay_fraction=fraction)
            start = total - d
            assert start == 0 or g(start - 1) == 1.0, (total, fraction)
            assert d == 0 or g(start) == 1.0, (total, fraction)
            assert d < 2 or g(start + 1) < 1.0, (total, fraction)


def test_wsd_default_and_old_signature():
    # minilm.scaling, labs 02/03 and tests/test_train.py call wsd(total, warmup, decay_fraction, final)
    assert values(wsd(100), 101) == values(wsd(100, decay_steps=10), 101)
    w = wsd(100, 5, 0.2)
    assert w(50) == 1.0 and w(79) == 1.0 and w(90) == pytest.approx(0.5) and w(100) == 0.0
    assert wsd(100, 0, 0.2, 0.1)(90) == pytest.approx(0.55)
    assert values(wsd(20, 2, 0.0), 25) == values(constant(2), 25)   # no decay: constant


def test_inverse_sqrt_is_the_transformer_schedule():
    w, d_model = 8, 64
    f = inverse_sqrt(w)
    for n in range(1, 200):   # Vaswani et al. eq. 3 at step n = step + 1, divided by its peak d^-0.5 w^-0.5
        vaswani = d_model ** -0.5 * min(n ** -0.5, n * w ** -1.5)
        assert f(n - 1) == pytest.approx(vaswani / (d_model ** -0.5 * w ** -0.5), rel=1e-12)
    assert f(w - 1) == 1.0 and f(0) == pytest.approx(1 / w) and f(4 * w - 1) == pytest.approx(0.5)


def test_wsd_branch_equals_parent_then_decays():
    warm, s, d = 4, 30, 12
    parent = constant(warm)                                   # a WSD run's stable phase, no end fixed
    branch = wsd_branch(s, d, warm, shape="cosine", final_fraction=0.1)
    assert values(branch, s) == values(parent, s)             # identical up to the checkpoint
    assert values(branch, s + d + 3) == values(wsd(s + d, warm, final_fraction=0.1, decay_steps=d, shape="cosine"),
                                               s + d + 3)
    assert branch(s) == 1.0 and branch(s + d) == pytest.approx(0.1)
    # A full WSD run of length s + d and the branch of its stable phase at s are the same schedule.
    assert values(wsd_branch(90, 10), 105) == values(wsd(100, decay_fraction=0.1), 105)


def test_cumulative_lr():
    f = wsd(10, 2, final_fraction=0.0, decay_steps=4)
    area = cumulative_lr(f, 10)
    assert area == pytest.approx(list(itertools.accumulate(values(f, 10))))
    assert area[-1] == pytest.approx(0.5 + 1.0 + 4 * 1.0 + (1 + 0.75 + 0.5 + 0.25))
    assert cumulative_lr(constant(), 0) == []


# ----------------------------------------------------------------------------- torch schedulers
def test_cosine_matches_torch_cosine_annealing():
    total, final = 60, 0.1
    ours = values(cosine(total, final_fraction=final), total + 1)
    ref = torch_multipliers(lambda o: tls.CosineAnnealingLR(o, T_max=total, eta_min=final), total + 1)
    assert ours == pytest.approx(ref, abs=1e-9)


def test_warmup_cosine_matches_torch_sequential():
    total, warm, final = 50, 6, 0.1
    ours = values(cosine(total, warm, final), total + 1)
    ref = torch_multipliers(lambda o: tls.SequentialLR(o, [
        tls.LinearLR(o, start_factor=1 / warm, end_factor=1.0, total_iters=warm - 1),
        tls.CosineAnnealingLR(o, T_max=total - warm, eta_min=final)], milestones=[warm]), total + 1)
    assert ours == pytest.approx(ref, abs=1e-9)


@pytest.mark.parametrize("shape", ["linear", "cosine", "exp"])
def test_wsd_matches_torch_sequential(shape):
    total, warm, decay = 80, 5, 20
    final = 0.0 if shape == "exp" else 0.1
    kwargs = {"half_life": 6.0} if shape == "exp" else {}
    ours = values(wsd(total, warm, final_fraction=final, decay_steps=decay, shape=shape, **kwargs), total + 10)

    def decay_phase(o):
        if shape == "linear":
            return tls.LinearLR(o, start_factor=1.0, end_factor=final, total_iters=decay)
        if shape == "cosine":
            return tls.CosineAnnealingLR(o, T_max=decay, eta_min=final)
        return tls.ExponentialLR(o, gamma=0.5 ** (1 / 6.0))

    n = total + (10 if shape != "cosine" else 1)  # CosineAnnealingLR rises again after T_max
    ref = torch_multipliers(lambda o: tls.SequentialLR(o, [
        tls.LinearLR(o, start_factor=1 / warm, end_factor=1.0, total_iters=warm - 1),
        tls.ConstantLR(o, factor=1.0, total_iters=0),
        decay_phase(o)], milestones=[warm, total - decay]), n)
    if shape == "exp":
        ours, ref = ours[:total], ref[:total]   # ExponentialLR keeps falling past the end; ours stops
    assert ours[:len(ref)] == pytest.approx(ref, abs=1e-9)


def test_wsd_branch_matches_torch_linear_decay_from_the_checkpoint():
    s, d = 25, 10
    ours = values(wsd_branch(s, d), s + d + 1)
    ref = torch_multipliers(lambda o: tls.SequentialLR(o, [
        tls.ConstantLR(o, factor=1.0, total_iters=0),
        tls.LinearLR(o, start_factor=1.0, end_factor=0.0, total_iters=d)], milestones=[s]), s + d + 1)
    assert ours == pytest.approx(ref, abs=1e-9)


def test_lambda_lr_applies_our_schedule_like_train():
    f = wsd(30, 3, decay_steps=9, shape="1-sqrt")
    assert torch_multipliers(lambda o: tls.LambdaLR(o, f), 35) == pytest.approx(values(f, 35), abs=1e-12)


# ----------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("call, match", [
    (lambda: wsd(0), "total_steps"),
    (lambda: wsd(10.5), "total_steps"),
    (lambda: wsd(10, -1), "warmup_steps"),
    (lambda: wsd(10, decay_fraction=1.5), "decay_fraction"),
    (lambda: wsd(10, decay_steps=3, decay_fraction=0.3), "not both"),
    (lambda: wsd(10, decay_steps=2.5), "decay_steps"),
    (lambda: wsd(10, 5, decay_steps=6), "exceed total_steps"),
    (lambda: wsd(10, shape="step"), "unknown decay shape"),
    (lambda: wsd(10, shape="exp", half_life=0), "half_life"),
    (lambda: wsd(10, shape="linear", half_life=3), "half_life"),
    (lambda: wsd(10, final_fraction=-0.1), "final_fraction"),
    (lambda: cosine(10, warmup_steps=11), "longer than total_steps"),
    (lambda: cosine(10, final_fraction=2), "final_fraction"),
    (lambda: inverse_sqrt(0), "warmup_steps"),
    (lambda: constant(-2), "warmup_steps"),
    (lambda: wsd_branch(3, 10, warmup_steps=5), "inside the warmup"),
    (lambda: wsd_branch(30, 0), "decay_steps"),
    (lambda: cumulative_lr(constant(), -1), "total_steps"),
])
def test_bad_arguments_raise_clear_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_module_names():
    assert set(DECAY_SHAPES) == {"linear", "cosine", "exp", "1-sqrt"}
    assert callable(schedules.wsd_branch)
