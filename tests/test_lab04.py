"""Lab 04 beyond tests/test_labs.py: the experiment code it runs (minilm.scaling.hparams) and its references.

- branching a WSD run gives, step for step, the WSD run of that length (exact resume);
- the sweeps' bookkeeping (best_lr, LRSweep, BatchLRGrid, LossCurve) against closed forms;
- the graded references: the WSD and branching-cost references against closed forms, the μP
  reference's hidden parameters against a real GPT's, the truncation probes against the bug they
  target; and the notebook uses the settings the grader's references recompute with.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _notebook_settings import notebook_settings

from minilm.executors import LocalExecutor
from minilm.labs import lab04
from minilm.models.gpt import GPT, GPTConfig
from minilm.mup import param_groups
from minilm.scaling.hparams import (
    BatchLRGrid,
    Branch,
    LossCurve,
    LRSweep,
    batch_lr_grid,
    best_lr,
    branch_wsd,
    lr_sweep,
    make_gpt,
    train_gpt,
    wind_tunnel_data,
)
from minilm.schedules import constant, wsd

TINY = {"n_layers": 1, "d_model": 16, "n_heads": 2}


@pytest.fixture(scope="module")
def data():
    return wind_tunnel_data(seed=3, n_train=40_000, n_val=2_048)


def run_args(data, **extra):
    return {"vocab_size": data.vocab_size, "batch_size": 4, "context_length": 16, "seed": 5, "device": "cpu", **extra}


# ----------------------------------------------------------------------------- branching
def test_a_branch_is_the_wsd_run_of_its_length(data):
    branches = [Branch(30, 10), Branch(20, 12, "cosine"), Branch(30, 6, "1-sqrt")]
    res = branch_wsd(TINY, data.train, data.val, branches, lr=3e-3, warmup_steps=5, curve_every=4, **run_args(data))
    for b in branches:
        full = train_gpt(TINY, data.train, data.val, steps=b.end, lr=3e-3,
                         schedule=wsd(b.end, 5, decay_steps=b.decay_steps, shape=b.shape),
                         curve=LossCurve(data.val, 4, 16), **run_args(data))
        got = res.runs[b]
        assert got.loss == full.loss, b                                     # exact resume: bit for bit
        assert got.history["train_loss"] == full.history["train_loss"]
        assert got.curve == full.curve                                       # parent's points, then its own
        assert got.steps == b.decay_steps and got.tokens == b.decay_steps * 4 * 16
    assert res.parent_steps == 30 and res.steps == 30 + 10 + 12 + 6
    stable = train_gpt(TINY, data.train, data.val, steps=20, lr=3e-3, schedule=constant(5), **run_args(data))
    assert res.stable_loss[20] == stable.loss


def test_branch_wsd_rejects_bad_plans(data):
    with pytest.raises(ValueError, match="at least one Branch"):
        branch_wsd(TINY, data.train, data.val, [], lr=1e-3, **run_args(data))
    with pytest.raises(ValueError, match="inside the warmup"):
        branch_wsd(TINY, data.train, data.val, [Branch(3, 5)], lr=1e-3, warmup_steps=10, **run_args(data))


def test_train_gpt_reports_divergence_as_inf(data):
    run = train_gpt(TINY, data.train, data.val, steps=30, lr=1e4, grad_clip=None, **run_args(data))
    assert run.loss == math.inf


# ----------------------------------------------------------------------------- sweeps
def test_best_lr_is_the_vertex_of_a_parabola_in_log_lr():
    lrs = [1e-3 * 2**k for k in range(7)]
    x = np.log2(lrs)
    true = 2.0 ** (x[3] + 0.3)
    losses = 2.5 + 0.1 * (x - np.log2(true)) ** 2
    assert best_lr(lrs, losses) == pytest.approx(true, rel=1e-9)
    edge = 2.5 + 0.1 * (x - x[-1] - 1) ** 2                                  # optimum beyond the grid
    assert best_lr(lrs, edge) == lrs[-1]
    diverged = losses.copy()
    diverged[4:] = np.inf                                                    # next to a diverged run
    assert best_lr(lrs, diverged) == lrs[3]
    with pytest.raises(ValueError, match="diverged"):
        best_lr(lrs, [np.inf] * 7)
    with pytest.raises(ValueError, match="increasing"):
        best_lr(lrs[::-1], losses)


def test_lr_sweep_shape_and_optimum(data):
    sweep = lr_sweep({"n_layers": 1, "n_heads": 2}, (8, 16), (1e-3, 4e-3, 1.6e-2), (0, 1), tokens=data.train,
                     val_tokens=data.val, vocab_size=data.vocab_size, steps=6, base_width=8, batch_size=4,
                     context_length=16, progress=False)
    assert sweep.loss.shape == (2, 2, 2, 3) and np.isfinite(sweep.loss).all()
    best, spread = sweep.optimum("mup")
    assert best.shape == spread.shape == (2,)
    expected = 2.0 ** np.log2(sweep.best("mup")).mean(axis=1)
    assert best == pytest.approx(expected)
    # the mup run at the base width is the standard model but for its two zero initialisations
    assert not np.array_equal(sweep.loss[0, 0], sweep.loss[1, 0])


def test_the_grids_give_the_same_losses_through_worker_processes(data):
    """Lab 04's grids take an executor (minilm.executors): two local worker processes train the same runs
    to the same losses and curves as this process (same seeds, one thread each)."""
    sweep_args = dict(base_config={"n_layers": 1, "n_heads": 2}, widths=(8,), lrs=(1e-3, 4e-3), seeds=(0,),
                      tokens=data.train, val_tokens=data.val, vocab_size=data.vocab_size, steps=5, base_width=8,
                      batch_size=4, context_length=16, progress=False)
    here = lr_sweep(**sweep_args)
    there = lr_sweep(**sweep_args, executor=LocalExecutor(workers=2, gpus=[]))
    assert np.array_equal(here.loss, there.loss) and np.isfinite(here.loss).all()
    grid_args = dict(tokens=data.train, val_tokens=data.val, vocab_size=data.vocab_size, token_budget=2 * 16 * 20,
                     points=4, context_length=16, progress=False)
    here = batch_lr_grid(TINY, (2, 4), (3e-3,), **grid_args)
    there = batch_lr_grid(TINY, (2, 4), (3e-3,), **grid_args, executor=LocalExecutor(workers=2, gpus=[]))
    assert np.array_equal(here.loss, there.loss)
    for cell in here.curves:
        assert all(np.array_equal(a, b) for a, b in zip(here.curves[cell], there.curves[cell]))


def test_a_failed_grid_run_is_reported_after_the_others(data):
    # width 8 with 3 heads is a bad config (runs 0 and 2: both parametrizations); width 12 trains
    with pytest.raises(RuntimeError, match="2 of 4 runs of the learning-rate sweep failed") as failed:
        lr_sweep({"n_layers": 1, "n_heads": 3}, (8, 12), (1e-3,), (0,), tokens=data.train, val_tokens=data.val,
                 vocab_size=data.vocab_size, steps=3, base_width=8, batch_size=4, context_length=16, progress=False)
    assert "run 0:" in str(failed.value) and "run 2:" in str(failed.value) and "run 1:" not in str(failed.value)
    assert "not divisible by n_heads=3" in str(failed.value)


def test_lr_sweep_optimum_spread_is_the_std_of_log2():
    loss = np.empty((1, 1, 3, 3))
    for s, shift in enumerate((-0.2, 0.0, 0.4)):
        loss[0, 0, s] = (np.log2([1, 2, 4]) - 1 - shift) ** 2
    sweep = LRSweep(["standard"], [32], [0, 1, 2], [1.0, 2.0, 4.0], loss, 0.0)
    best, spread = sweep.optimum("standard")
    assert np.log2(best[0]) == pytest.approx(1 + np.mean([-0.2, 0.0, 0.4]))
    assert spread[0] == pytest.approx(np.std([-0.2, 0.0, 0.4], ddof=1))


def test_batch_lr_grid_near_optimal_and_tokens_to_target():
    curves = {(0, 0): (np.array([100, 200, 300.]), np.array([3.0, 2.8, 2.7])),
              (0, 1): (np.array([100, 200, 300.]), np.array([3.0, 2.9, 2.9])),
              (1, 0): (np.array([200, 400, 600.]), np.array([3.1, 3.0, 2.95])),
              (1, 1): (np.array([200, 400, 600.]), np.array([2.9, 2.75, 2.6]))}
    grid = BatchLRGrid([4, 8], [1e-3, 2e-3], 600, 16, np.array([[2.7, 2.9], [2.95, 2.6]]), curves, 0.0)
    assert grid.near_optimal(0.1).tolist() == [[True, False], [False, True]]
    assert grid.tokens_to(2.75) == {4: 300.0, 8: 400.0}                      # each batch at its best lr
    assert grid.tokens_to(2.65) == {4: None, 8: 600.0}


def test_batch_lr_grid_runs_equal_tokens(data):
    grid = batch_lr_grid(TINY, (2, 8), (3e-3,), tokens=data.train, val_tokens=data.val, vocab_size=data.vocab_size,
                         token_budget=2 * 16 * 40, points=4, context_length=16, progress=False)
    assert grid.loss.shape == (2, 1)
    assert grid.curves[(0, 0)][0][-1] == grid.curves[(1, 0)][0][-1] == 2 * 16 * 40  # the same tokens
    with pytest.raises(ValueError, match="only 2 steps"):
        batch_lr_grid(TINY, (40,), (3e-3,), tokens=data.train, val_tokens=data.val, vocab_size=data.vocab_size,
                      token_budget=2 * 16 * 40, context_length=16, progress=False)


def test_loss_curve_scores_fixed_windows(data):
    model = make_gpt(data.vocab_size, TINY, 16)
    curve = LossCurve(data.val, every=2, context_length=16, n_tokens=256)
    for step in range(5):
        curve({"step": step, "model": model})
    assert curve.steps == [2, 4] and curve.losses[0] == curve.losses[1]       # same model, same windows
    assert curve.copy(until=3).steps == [2]
    with pytest.raises(ValueError, match="every"):
        LossCurve(data.val, every=0)


# ----------------------------------------------------------------------------- the graded references
def test_wsd_reference_closed_form_and_probes():
    assert lab04.wsd_lr_ref(4, 100, 5, 20) == 1.0
    assert lab04.wsd_lr_ref(90, 100, 5, 20, "cosine") == pytest.approx(0.5)
    assert lab04.wsd_lr_ref(96, 100, 0, 16, "1-sqrt") == pytest.approx(1 - math.sqrt(0.75))
    assert lab04.wsd_lr_ref(1, 10, 0, 9) == 1.0 and lab04.wsd_lr_ref(2, 10, 0, 9) == pytest.approx(8 / 9)
    rng = np.random.default_rng(0)
    for _ in range(50):  # the truncation probe always separates the bug from the right answer
        args = lab04._wsd_truncation_case(rng)
        assert lab04._wsd_truncated_start(*args) != lab04.wsd_lr_ref(*args)
    for _ in range(200):
        case = lab04._wsd_boundary_case(rng)
        assert isinstance(lab04.wsd_lr_ref(*case.args, **case.kwargs), float)


def test_branching_steps_reference():
    assert lab04.branching_steps_ref([100, 200, 300, 400], 0.1) == (360 + 100, 1000)
    assert lab04.branching_steps_ref([38, 75, 150], 0.2) == (120 + 8 + 15 + 30, 263)
    assert lab04.branching_steps_ref([1000], 0.25) == (1000, 1000)
    rng = np.random.default_rng(1)
    for _ in range(50):  # hidden lengths avoid rounding ties and always catch int() truncation
        lengths, fraction = lab04._lengths_case(rng)
        assert lab04._branch_truncated_decays(lengths, fraction) != lab04.branching_steps_ref(lengths, fraction)


def test_mup_reference_probes_are_real_gpt_parameters():
    rng = np.random.default_rng(2)
    for _ in range(40):
        name, shape, lr, d_model, base_width = lab04._gpt_parameter(rng)
        n_heads = next(h for h in (8, 4, 2) if d_model % h == 0 and (d_model // h) % 2 == 0)
        with torch.device("meta"):  # shapes only: up to 6 layers of width 1000 would be slow to initialise
            model = GPT(GPTConfig(vocab_size=shape[0] if name in ("tok_emb.weight", "head.weight") else 50,
                                  n_layers=6, d_model=d_model, n_heads=n_heads, parametrization="mup",
                                  base_width=base_width))
        params = dict(model.named_parameters())
        assert tuple(params[name].shape) == tuple(shape), name
        expected = next(g["lr"] for g in param_groups(model, lr, 0.1) if any(p is params[name] for p in g["params"]))
        assert lab04.mup_adam_lr_ref(name, shape, lr, d_model, base_width) == pytest.approx(expected, rel=1e-12)




def test_notebook_uses_the_settings_the_references_recompute_with():
    s, _ = notebook_settings("04")
    assert s["MODEL"] == lab04.MODEL
    assert (s["LR"], s["BATCH"], s["CONTEXT"]) == (lab04.LR, lab04.BATCH, lab04.CONTEXT)
    assert s["COORD_WIDTHS"] == lab04.COORD_WIDTHS
    assert s["STEPS"] == lab04.LAB.questions[3].params["STEPS"]
    assert s["LENGTHS"][-1] == s["STEPS"]
