"""Lab 08 beyond tests/test_labs.py: the compute-multiplier maths (minilm.scaling.multiplier), the lab's
recipes and its references.

- the fit of L = E + A C^-alpha recovers known laws and is the least-squares optimum (brute force);
- a multiplier equals the ratio of computes found by bisection on the two curves; its slope is
  the finite-difference derivative of ln k against ln C; the break-even compute is where k = 1;
- the seed statistics (geometric mean, standard errors, verdicts) against hand computations;
- the recipes train seeded, spend the FLOPs they report, and the notebook uses the lab's settings.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _notebook_settings import notebook_settings

from minilm.labs import lab08
from minilm.scaling.multiplier import (
    ComputeLaw,
    MultiplierEstimate,
    break_even_compute,
    compute_multiplier,
    estimate_multiplier,
    fit_compute_law,
    multiplier_at,
    multiplier_slope,
)

C = np.array([1e9, 2e9, 4e9, 8e9])


def _bisect_compute(law: ComputeLaw, level: float) -> float:
    """The compute where ``law`` reaches ``level``, by bisection in ln C (no closed form used)."""
    lo, hi = 0.0, 200.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if law.loss(math.exp(mid)) > level else (lo, mid)
    return math.exp(0.5 * (lo + hi))


def test_fit_recovers_a_known_law():
    law = ComputeLaw(E=1.2, A=300.0, alpha=0.35)
    fit = fit_compute_law(C, law.loss(C), E=1.2)
    assert fit.A == pytest.approx(300.0, rel=1e-9) and fit.alpha == pytest.approx(0.35, rel=1e-9)
    assert fit.compute_for(float(law.loss(3e9))) == pytest.approx(3e9, rel=1e-9)


def test_fit_is_the_least_squares_line_in_log_log():
    rng = np.random.default_rng(0)
    loss = 1.2 + 300.0 * C ** -0.35 * np.exp(rng.normal(0, 0.05, C.size))
    fit = fit_compute_law(C, loss, E=1.2)
    y = np.log(loss - 1.2)

    def sse(alpha):  # for a given alpha the best ln A is the mean residual: brute force over alpha
        r = y + alpha * np.log(C)
        return float(np.sum((r - r.mean()) ** 2))

    grid = np.linspace(0.0, 1.0, 100_001)
    best = grid[np.argmin([sse(a) for a in grid])]
    assert fit.alpha == pytest.approx(best, abs=2e-5)
    assert sse(fit.alpha) <= sse(best) + 1e-12


def test_fit_rejects_losses_at_the_floor_and_nan():
    with pytest.raises(ValueError, match="above the floor"):
        fit_compute_law(C, [2.0, 1.5, 1.2, 1.3], E=1.2)
    with pytest.raises(ValueError, match="diverged"):
        fit_compute_law(C, [2.0, np.inf, 1.5, 1.3], E=1.2)
    with pytest.raises(ValueError, match="two distinct"):
        fit_compute_law([1e9, 1e9], [2.0, 1.9], E=1.2)
    with pytest.raises(ValueError, match="floor"):
        ComputeLaw(1.2, 10.0, 0.3).compute_for(1.1)


def test_multiplier_is_the_ratio_of_bisected_computes():
    base, trick = ComputeLaw(1.2, 300.0, 0.35), ComputeLaw(1.2, 120.0, 0.30)
    for level in (1.5, 1.8, 2.5):
        expected = _bisect_compute(base, level) / _bisect_compute(trick, level)
        assert compute_multiplier(base, trick, level) == pytest.approx(expected, rel=1e-9)
    # closed form: the same exponent and A halved is worth 2^(1/alpha) at every level
    assert compute_multiplier(ComputeLaw(1, 10, 0.5), ComputeLaw(1, 5, 0.5), 1.3) == pytest.approx(4.0)


def test_slope_is_the_derivative_of_ln_k_in_ln_c():
    base, trick = ComputeLaw(1.2, 300.0, 0.35), ComputeLaw(1.2, 120.0, 0.30)
    h = 1e-4
    lnk = [math.log(multiplier_at(base, trick, math.exp(math.log(3e9) + d))) for d in (-h, h)]
    assert multiplier_slope(base, trick) == pytest.approx((lnk[1] - lnk[0]) / (2 * h), rel=1e-6)
    assert multiplier_slope(base, ComputeLaw(1.2, 50.0, 0.35)) == 0.0  # only A moved: a constant multiplier


def test_break_even_is_where_the_multiplier_reaches_one():
    base, trick = ComputeLaw(1.2, 300.0, 0.35), ComputeLaw(1.2, 50.0, 0.30)  # helps now, shrinks
    k0, s = multiplier_at(base, trick, 1e9), multiplier_slope(base, trick)
    assert k0 > 1 and s < 0
    c_star = break_even_compute(k0, s, 1e9)
    assert multiplier_at(base, trick, c_star) == pytest.approx(1.0, rel=1e-9)
    assert break_even_compute(2.0, 0.1, 1e9) == math.inf      # helps and grows: never
    assert break_even_compute(0.5, -0.1, 1e9) == math.inf     # hurts and shrinks: never
    assert break_even_compute(2.0, 0.0, 1e9) == math.inf
    assert break_even_compute(1.0, -0.3, 1e9) == 1e9
    assert break_even_compute(0.5, 0.25, 1e9) == pytest.approx(1e9 * 16)
    with pytest.raises(ValueError):
        break_even_compute(-1.0, 0.1, 1e9)


def test_estimate_statistics_by_hand():
    e = MultiplierEstimate("x", (2.0, 8.0), (0.1, 0.3), 1e9)
    assert e.multiplier == pytest.approx(4.0)
    se_log = np.std(np.log([2.0, 8.0]), ddof=1) / math.sqrt(2)
    assert e.multiplier_se == pytest.approx(4.0 * se_log)
    assert e.slope == pytest.approx(0.2) and e.slope_se == pytest.approx(0.1)
    assert MultiplierEstimate("x", (2.0, 8.0), (0.0, 0.3), 1e9).verdict() == "holds (within noise)"  # 1 se from 0
    # Student's t with n - 1 degrees of freedom: 12.71 standard errors for 2 seeds, 4.30 for 3
    assert MultiplierEstimate("x", (2.0, 2.1), (0.30, 0.32), 1e9).verdict() == "grows"      # 31 se
    assert MultiplierEstimate("x", (2.0, 2.1), (-0.30, -0.32), 1e9).verdict() == "shrinks"
    assert MultiplierEstimate("x", (2, 2), (0.1, 0.2), 1e9).verdict() == "holds (within noise)"  # 3 se, 2 seeds
    assert MultiplierEstimate("x", (2, 2, 2), (0.1, 0.2, 0.3), 1e9).verdict() == "holds (within noise)"  # 3.5 se
    assert MultiplierEstimate("x", (2, 2, 2), (0.2, 0.25, 0.3), 1e9).verdict() == "grows"  # 8.7 se
    assert MultiplierEstimate("x", (0.9, 1.1), (0, 0), 1e9).within_noise_of_one()
    assert not MultiplierEstimate("x", (3.0, 3.1), (0, 0), 1e9).within_noise_of_one()
    assert math.isnan(MultiplierEstimate("x", (2.0,), (0.1,), 1e9).slope_se)


def test_estimate_multiplier_on_exact_laws():
    base, trick = ComputeLaw(1.2, 300.0, 0.35), ComputeLaw(1.2, 120.0, 0.30)
    C_trick = C * 0.7  # a trick with cheaper steps spends fewer FLOPs at the same budgets
    lb = np.stack([base.loss(C), base.loss(C)])
    lt = np.stack([trick.loss(C_trick), trick.loss(C_trick)])
    est = estimate_multiplier("t", C, lb, C_trick, lt, 1.2, 2e9)
    assert est.multiplier == pytest.approx(multiplier_at(base, trick, 2e9), rel=1e-9)
    assert est.slope == pytest.approx(1 - 0.35 / 0.30, rel=1e-9)
    with pytest.raises(ValueError, match="seeds"):
        estimate_multiplier("t", C, lb, C_trick, lt[:1], 1.2, 2e9)


# ----------------------------------------------------------------------------- the lab
def test_references_agree_with_the_library_and_closed_forms():
    assert lab08.compute_multiplier_ref((2.0, 100.0, 0.5), (2.0, 50.0, 0.5), 2.1) == pytest.approx(4.0)
    assert lab08.multiplier_slope_ref(0.3, 0.6) == pytest.approx(0.5)
    assert lab08.break_even_compute_ref(2.0, -0.25, 1e9) == pytest.approx(1e9 * 16)
    rng = np.random.default_rng(1)
    for _ in range(20):   # the hidden cases are well-posed: a finite, positive multiplier
        base, trick, level = lab08._multiplier_case(rng)
        assert math.isfinite(lab08.compute_multiplier_ref(base, trick, level)) and level > base[0]
    kinds = {math.isinf(lab08.break_even_compute_ref(*lab08._break_even_case(rng))) for _ in range(40)}
    assert kinds == {True, False}  # the hidden cases cover lines that reach 1 and lines that never do


@pytest.mark.parametrize("recipe", lab08.RECIPES)
def test_recipes_build_the_model_they_name(recipe):
    from minilm.fp8 import FP8Linear

    model = lab08.make_model(recipe, 0)
    kind = {"rwkv": "rwkv", "lstm": "lstm"}.get(recipe, "gpt")
    assert model.model_type == kind
    assert any(isinstance(m, FP8Linear) for m in model.modules()) == (recipe == "fp8")
    with pytest.raises(ValueError, match="unknown recipe"):
        lab08.make_model("moe", 0)


def test_train_recipe_is_seeded_and_counts_its_flops():
    a = lab08.train_recipe("wsd", 20, seed=3)
    b = lab08.train_recipe("wsd", 20, seed=3)
    c = lab08.train_recipe("wsd", 20, seed=4)
    assert a == b and a[0] != c[0]
    from minilm.ledger import ComputeLedger, training_flops

    model = lab08.make_model("wsd", 0)
    assert a[1] == model.flops_per_token() * 20 * lab08.BATCH * lab08.CONTEXT
    assert a[1] == training_flops(model, 20 * lab08.BATCH * lab08.CONTEXT, lab08.CONTEXT)
    with ComputeLedger() as spent:   # the grid's runs are charged to the notebook's ledger
        lab08.train_recipe("lstm", 20, seed=0)
    assert spent.as_dict()["flops"] == lab08.make_model("lstm", 0).flops_per_token() * 20 * lab08.BATCH * lab08.CONTEXT
    assert math.log(lab08.LANGUAGE["vocab_size"]) + 0.5 > a[0] > lab08.domains()[0].entropy_rate
    with pytest.raises(ValueError, match="steps"):
        lab08.train_recipe("wsd", 5, seed=0)


def test_grid_settings_and_reference_compute():
    assert lab08.grid_settings(True) == (lab08.FAST_STEPS, lab08.FAST_SEEDS)
    with pytest.raises(ValueError, match="FAST"):
        lab08.grid_settings("yes")
    grid = lab08.Grid(lab08.RECIPES, (10, 20, 40), (0,), np.zeros((6, 1, 3)), np.arange(18.0).reshape(6, 3) + 1,
                      1.0, 0.0)
    assert grid.reference_compute == 2.0 and list(grid.compute("lstm")) == [10.0, 11.0, 12.0]


def test_notebook_uses_the_settings_the_references_recompute_with():
    s, source = notebook_settings("08", "grid = run_grid(")
    assert "grid = run_grid(SEED, FAST, str(device))" in source
    q3, q4 = lab08.LAB.question("q3"), lab08.LAB.question("q4")
    assert q3.params == q4.params == {"SEED": 0, "FAST": True}
    assert torch.get_default_dtype() == torch.float32


def test_run_grid_shapes_seeds_and_read_only(monkeypatch):
    monkeypatch.setattr(lab08, "FAST_STEPS", (20, 40))
    monkeypatch.setattr(lab08, "FAST_SEEDS", 2)
    grid = lab08.run_grid.__wrapped__(5, True, "cpu")   # past the cache: these sizes are not the lab's
    assert grid.loss.shape == (6, 2, 2) and grid.flops.shape == (6, 2) and grid.seeds == (5, 6)
    assert grid.losses("wsd")[1, 0] == lab08.train_recipe("wsd", 20, seed=6)[0]   # seed i of every recipe is SEED + i
    assert np.all(grid.flops[:, 1] == 2 * grid.flops[:, 0])
    with pytest.raises(ValueError, match="read-only"):
        grid.loss[0, 0, 0] = 0.0
    with pytest.raises(ValueError, match="SEED"):
        lab08.run_grid.__wrapped__(-1, True, "cpu")
