"""Tests for minilm.scaling, each against an independent reference: SciPy's huber/logsumexp and
L-BFGS-B, finite differences, brute-force minimisation along the compute constraint, and
synthetic data drawn from a known law."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import huber as scipy_huber
from scipy.special import logsumexp

from minilm.scaling import (
    ChinchillaParams,
    KaplanParams,
    ScalingRuns,
    TrainingCurve,
    bootstrap_chinchilla,
    chinchilla_loss,
    chinchilla_objective,
    compute_optimal,
    fit_chinchilla,
    fit_envelope,
    fit_isoflop,
    fit_kaplan,
    hoffmann_grid,
    kaplan_loss,
    load_runs,
    save_runs,
    training_flops,
)
from minilm.scaling.fit import CHINCHILLA_NAMES, _grid_starts, kaplan_objective
from minilm.scaling.lbfgs import minimize_lbfgs_batched

HOFFMANN = ChinchillaParams.hoffmann()


def _design(k: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A well-spread k x k design: N from 1e5 to 1e11 parameters, D from 1e6 to 1e13 tokens."""
    N, D = np.meshgrid(np.geomspace(1e5, 1e11, k), np.geomspace(1e6, 1e13, k))
    return N.ravel(), D.ravel()


def _noisy_points(params: ChinchillaParams, seed: int = 0, noise: float = 0.01, k: int = 8):
    N, D = _design(k)
    rng = np.random.default_rng(seed)
    return N, D, chinchilla_loss(N, D, params) * (1 + noise * rng.standard_normal(N.size))


# --- the law and its frontier --------------------------------------------------------------------


def test_published_values_and_loss_formula():
    p = ChinchillaParams.hoffmann()
    assert (p.E, p.A, p.B, p.alpha, p.beta) == (1.69, 406.4, 410.7, 0.34, 0.28)
    assert p.a == pytest.approx(0.28 / 0.62) and p.a + p.b == pytest.approx(1.0)
    N, D = 7e10, 1.4e12  # Chinchilla itself
    assert chinchilla_loss(N, D, p) == pytest.approx(1.69 + 406.4 / N**0.34 + 410.7 / D**0.28, rel=1e-14)
    k = KaplanParams.kaplan()
    assert kaplan_loss(N, D, k) == pytest.approx(((6.4e13 / N) ** (0.076 / 0.103) + 1.8e13 / D) ** 0.103)
    with pytest.raises(ValueError, match="N > 0"):
        chinchilla_loss(-1.0, 1e9, p)
    with pytest.raises(ValueError, match="finite"):
        ChinchillaParams(E=float("nan"), A=1, B=1, alpha=0.3, beta=0.3)


@pytest.mark.parametrize("params", [ChinchillaParams.hoffmann(), ChinchillaParams.besiroglu()])
def test_compute_optimal_satisfies_budget_and_brute_force(params):
    C = np.geomspace(1e18, 1e26, 9)
    opt = compute_optimal(C, params)
    np.testing.assert_allclose(6 * opt.N * opt.D, C, rtol=1e-12)
    np.testing.assert_allclose(opt.tokens_per_param, opt.D / opt.N, rtol=1e-12)
    np.testing.assert_allclose(opt.loss, chinchilla_loss(opt.N, opt.D, params), rtol=1e-12)
    for c, n in zip(C, opt.N):
        # Independent check: minimise L(N, C / 6N) numerically over log N.
        res = minimize_scalar(lambda x, c=c: chinchilla_loss(np.exp(x), c / (6 * np.exp(x)), params),
                              bounds=(np.log(c / 6) * 0.2, np.log(c / 6) * 0.8), method="bounded",
                              options={"xatol": 1e-10})
        assert np.exp(res.x) == pytest.approx(n, rel=1e-4)
    # Closed form, exponents: N_opt ∝ C^a, D_opt ∝ C^b.
    slope_N = np.polyfit(np.log(C), np.log(opt.N), 1)[0]
    slope_D = np.polyfit(np.log(C), np.log(opt.D), 1)[0]
    assert slope_N == pytest.approx(params.a, abs=1e-12) and slope_D == pytest.approx(params.b, abs=1e-12)
    assert isinstance(compute_optimal(1e21, params).N, float)
    assert training_flops(2.0, 3.0) == 36.0


def test_compute_optimal_rejects_bad_input():
    with pytest.raises(ValueError, match="C must be finite and > 0"):
        compute_optimal(-1.0, HOFFMANN)
    with pytest.raises(ValueError, match="alpha, beta > 0"):
        compute_optimal(1e20, ChinchillaParams(E=1, A=1, B=1, alpha=0.0, beta=0.3))


# --- the Approach 3 objective --------------------------------------------------------------------


def test_objective_matches_scipy_huber_and_logsumexp():
    N, D, L = _noisy_points(HOFFMANN, k=4)
    rng = np.random.default_rng(1)
    X = rng.uniform([-1, 0, 0, 0, 0], [1, 25, 25, 2, 2], size=(7, 5))
    f, _ = chinchilla_objective(X, np.log(N), np.log(D), np.log(L), delta=1e-3)
    for row, fk in zip(X, f):
        e, a, b, alpha, beta = row
        lse = logsumexp(np.stack([a - alpha * np.log(N), b - beta * np.log(D), np.full(N.size, e)]), axis=0)
        assert fk == pytest.approx(scipy_huber(1e-3, lse - np.log(L)).sum(), rel=1e-12)
    f_mean, _ = chinchilla_objective(X, np.log(N), np.log(D), np.log(L), reduce="mean")
    np.testing.assert_allclose(f_mean, f / N.size, rtol=1e-14)


@pytest.mark.parametrize("objective,n_params", [(chinchilla_objective, 5), (kaplan_objective, 4)])
def test_objective_gradient_matches_finite_differences(objective, n_params):
    N, D, L = _noisy_points(HOFFMANN, k=4)
    logs = (np.log(N), np.log(D), np.log(L))
    rng = np.random.default_rng(2)
    # delta = 1 keeps residuals in the smooth quadratic region, where differences are accurate.
    X = np.column_stack([rng.uniform(0.2, 1.0, 3), rng.uniform(5, 8, 3), rng.uniform(5, 8, 3),
                         rng.uniform(0.2, 0.5, 3), rng.uniform(0.2, 0.5, 3)])[:, :n_params]
    _, grad = objective(X, *logs, delta=1.0)
    h = 1e-6
    for j in range(n_params):
        step = np.zeros(n_params)
        step[j] = h
        fd = (objective(X + step, *logs, delta=1.0)[0] - objective(X - step, *logs, delta=1.0)[0]) / (2 * h)
        np.testing.assert_allclose(grad[:, j], fd, rtol=1e-6, atol=1e-9)


def test_batched_lbfgs_finds_rosenbrock_minimum():
    def rosen(X):
        x, y = X[:, 0], X[:, 1]
        f = (1 - x) ** 2 + 100 * (y - x**2) ** 2
        g = np.stack([-2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)], axis=1)
        return f, g

    x0 = np.array([[-1.2, 1.0], [2.0, -1.0], [0.0, 0.0], [-3.0, 5.0]])
    res = minimize_lbfgs_batched(rosen, x0, ftol=1e-15, gtol=1e-10)
    np.testing.assert_allclose(res.x, 1.0, atol=1e-6)
    assert res.converged.all()


def test_batched_optimizer_matches_scipy_lbfgsb():
    N, D, L = _noisy_points(HOFFMANN, seed=3, k=5)
    grid = {"e": [0.0, 1.0], "a": [0.0, 10.0, 20.0], "b": [5.0, 15.0], "alpha": [0.5], "beta": [0.5, 1.5]}
    batched = fit_chinchilla(N, D, L, grid=grid)
    reference = fit_chinchilla(N, D, L, grid=grid, optimizer="scipy")
    assert batched.n_starts == reference.n_starts == 24
    assert batched.objective <= reference.objective * (1 + 1e-9)
    assert batched.params.alpha == pytest.approx(reference.params.alpha, abs=1e-5)
    assert batched.params.beta == pytest.approx(reference.params.beta, abs=1e-5)
    assert batched.params.E == pytest.approx(reference.params.E, rel=1e-5)


# --- fit_chinchilla ------------------------------------------------------------------------------


def test_fit_recovers_known_law_from_noisy_points():
    N, D, L = _noisy_points(HOFFMANN, seed=0, noise=0.01)
    fit = fit_chinchilla(N, D, L)  # the published procedure: 4500 starts, summed Huber, delta=1e-3
    assert fit.n_starts == 4500 and fit.converged
    assert abs(fit.params.alpha - HOFFMANN.alpha) < 0.01
    assert abs(fit.params.beta - HOFFMANN.beta) < 0.01
    assert abs(fit.params.E - HOFFMANN.E) < 0.05
    # The fitted curve is within the noise of the data.
    assert np.median(np.abs(fit.predict(N, D) / L - 1)) < 0.01
    # Never worse than the best grid start, checked independently of the fitter's bookkeeping.
    starts = _grid_starts(None, CHINCHILLA_NAMES, hoffmann_grid())
    f0, _ = chinchilla_objective(starts, np.log(N), np.log(D), np.log(L))
    assert fit.objective <= f0.min()
    assert fit.grid_best_objective == pytest.approx(f0.min(), rel=1e-12)
    # The documented shortcut (L-BFGS from the 20 best starts only) lands on the same optimum here.
    short = fit_chinchilla(N, D, L, top_k=20)
    assert short.n_starts == 20
    assert short.objective == pytest.approx(fit.objective, rel=1e-8)


@pytest.mark.parametrize("kwargs", [{"reduce": "mean"}, {"delta": 0.1},
                                    {"grid": {"alpha": [1.0], "beta": [1.0], "e": [0.0]}}])
def test_fit_objective_never_worse_than_best_start(kwargs):
    N, D, L = _noisy_points(ChinchillaParams.besiroglu(), seed=4, k=5)
    fit = fit_chinchilla(N, D, L, top_k=30, **kwargs)
    assert fit.objective <= fit.grid_best_objective
    assert fit.n_starts == min(30, 5 * 5 * 5 * 5 * 5 if "grid" not in kwargs else 36)


def test_mean_objective_with_default_tolerances_stops_early():
    """Besiroglu et al.'s diagnosis, as a lesson: averaging shrinks the objective n-fold, so
    SciPy's default stopping rules fire early; summing (or tight tolerances) runs to the optimum."""
    gaps = []
    for seed in range(5):
        # A Chinchilla-like design: 50 random runs, N in [1e6, 1e10], D in [1e8, 1e12].
        rng = np.random.default_rng(seed)
        N, D = np.exp(rng.uniform(np.log(1e6), np.log(1e10), 50)), np.exp(rng.uniform(np.log(1e8), np.log(1e12), 50))
        L = chinchilla_loss(N, D, HOFFMANN) * np.exp(0.01 * rng.standard_normal(50))
        summed = fit_chinchilla(N, D, L, top_k=100)
        early = fit_chinchilla(N, D, L, top_k=100, reduce="mean", tolerance="scipy")
        gaps.append(early.objective * 50 / summed.objective - 1)
        if seed == 0:
            patient = fit_chinchilla(N, D, L, top_k=100, reduce="mean", tolerance="tight")
            assert patient.objective * 50 == pytest.approx(summed.objective, rel=1e-9)
            assert patient.params.beta == pytest.approx(summed.params.beta, abs=1e-6)
    assert min(gaps) >= -1e-9  # stopping early never finds a better fit ...
    assert np.median(gaps) > 1e-3  # ... and typically a visibly worse one


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda N, D, L: (N, D, np.where(np.arange(L.size) == 3, np.nan, L)), "NaN"),
        (lambda N, D, L: (-N, D, L), "N must be > 0"),
        (lambda N, D, L: (N, np.where(np.arange(D.size) == 0, 0.0, D), L), "D must be > 0"),
        (lambda N, D, L: (N, D, -L), "loss must be > 0"),
        (lambda N, D, L: (N[:4], D[:4], L[:4]), "at least 5"),
        (lambda N, D, L: (N, D[:-1], L), "same length"),
    ],
)
def test_fit_rejects_bad_input(mutate, match):
    N, D, L = _noisy_points(HOFFMANN, k=3)
    with pytest.raises(ValueError, match=match):
        fit_chinchilla(*mutate(N, D, L))


def test_fit_rejects_bad_options():
    N, D, L = _noisy_points(HOFFMANN, k=3)
    with pytest.raises(ValueError, match="reduce"):
        fit_chinchilla(N, D, L, reduce="median")
    with pytest.raises(ValueError, match="delta"):
        fit_chinchilla(N, D, L, delta=0.0)
    with pytest.raises(ValueError, match="unknown keys"):
        fit_chinchilla(N, D, L, grid={"gamma": [1.0]})
    with pytest.raises(ValueError, match="tolerance"):
        fit_chinchilla(N, D, L, tolerance="loose")
    with pytest.raises(ValueError, match="optimizer"):
        fit_chinchilla(N, D, L, optimizer="adam")


def test_bootstrap_intervals_are_reproducible_and_consistent():
    N, D, L = _noisy_points(HOFFMANN, seed=7, k=5)
    boot = bootstrap_chinchilla(N, D, L, n_boot=6, seed=11, top_k=10, progress=False)
    again = bootstrap_chinchilla(N, D, L, n_boot=6, seed=11, top_k=10, progress=False)
    for name in ("E", "A", "B", "alpha", "beta", "a"):
        np.testing.assert_array_equal(boot.samples[name], again.samples[name])
        lo, hi = boot.interval(name, 0.8)
        assert lo <= hi
    s = boot.samples
    np.testing.assert_allclose(s["a"], s["beta"] / (s["alpha"] + s["beta"]), rtol=1e-12)
    assert np.std(s["alpha"]) > 0  # resamples differ, so the fits do
    other = bootstrap_chinchilla(N, D, L, n_boot=6, seed=12, top_k=10, progress=False)
    assert not np.array_equal(other.samples["alpha"], boot.samples["alpha"])
    with pytest.raises(ValueError, match="unknown parameter"):
        boot.interval("gamma")


def test_kaplan_fit_recovers_kaplan_law():
    k = KaplanParams(N_c=1e12, D_c=1e12, alpha_N=0.2, alpha_D=0.25)
    N, D = _design(8)
    rng = np.random.default_rng(8)
    L = kaplan_loss(N, D, k) * (1 + 0.01 * rng.standard_normal(N.size))
    fit = fit_kaplan(N, D, L)
    assert fit.converged
    assert fit.params.alpha_N == pytest.approx(0.2, abs=0.01)
    assert fit.params.alpha_D == pytest.approx(0.25, abs=0.01)


def test_kaplan_form_cannot_fit_an_irreducible_loss():
    """Kaplan's form has no E: on data with an entropy floor it fits worse than Chinchilla's."""
    N, D, L = _noisy_points(HOFFMANN, seed=9, noise=0.0)
    assert fit_kaplan(N, D, L).objective > 10 * fit_chinchilla(N, D, L, top_k=20).objective


# --- Approaches 1 and 2 --------------------------------------------------------------------------


def test_isoflop_recovers_allocation_exponent():
    params = HOFFMANN
    rows = []
    for C in np.geomspace(1e18, 1e22, 5):
        n_star = compute_optimal(C, params).N
        for n in n_star * np.geomspace(0.25, 4.0, 9):  # sizes bracketing the optimum
            rows.append((n, C / (6 * n)))
    N, D = np.array(rows).T
    rng = np.random.default_rng(10)
    L = chinchilla_loss(N, D, params) * (1 + 1e-4 * rng.standard_normal(N.size))
    iso = fit_isoflop(N, D, L)
    assert len(iso.budgets) == 5 and iso.bracketed.all()
    assert iso.a == pytest.approx(params.a, abs=0.01)
    assert iso.b == pytest.approx(params.b, abs=0.01)
    np.testing.assert_allclose(iso.N_opt, compute_optimal(iso.budgets, params).N, rtol=0.1)


def test_isoflop_needs_bracketing_profiles():
    N = np.array([1e6, 2e6, 1e6, 2e6, 1e6, 2e6])
    D = 1e18 / (6 * N)
    with pytest.raises(ValueError, match="usable IsoFLOP"):
        fit_isoflop(N, D, chinchilla_loss(N, D, HOFFMANN))


def test_envelope_recovers_allocation_exponent():
    params = HOFFMANN
    tokens = np.geomspace(1e7, 1e13, 200)
    curves = [TrainingCurve(n, tokens, chinchilla_loss(n, tokens, params)) for n in np.geomspace(1e6, 1e10, 25)]
    env = fit_envelope(curves)
    assert env.a == pytest.approx(params.a, abs=0.03)
    assert env.b == pytest.approx(params.b, abs=0.03)
    with pytest.raises(ValueError, match="two model sizes"):
        fit_envelope(curves[:1])
    with pytest.raises(ValueError, match="increasing"):
        fit_envelope([(1e6, tokens[::-1], np.ones(200)), curves[1]])


# --- CSV runs ------------------------------------------------------------------------------------


def test_runs_roundtrip_and_C_column(tmp_path):
    N, D, L = _noisy_points(HOFFMANN, k=3)
    runs = ScalingRuns(N=N, D=D, loss=L, extra={"name": [f"run{i}" for i in range(N.size)]})
    save_runs(runs, tmp_path / "runs.csv")
    back = load_runs(tmp_path / "runs.csv")
    np.testing.assert_array_equal(back.N, N)
    np.testing.assert_array_equal(back.loss, L)
    np.testing.assert_allclose(back.D, D, rtol=1e-15)
    assert back.extra["name"][2] == "run2"
    (tmp_path / "c.csv").write_text("n,C,Loss\n1e6,6e15,3.0\n2e6,2.4e16,2.9\n")
    c_runs = load_runs(tmp_path / "c.csv")
    np.testing.assert_allclose(c_runs.D, [1e9, 2e9])
    np.testing.assert_allclose(c_runs.C, [6e15, 2.4e16])


@pytest.mark.parametrize(
    "text,match",
    [
        ("N,loss\n1,2\n", r"D \(tokens\) or C"),
        ("N,D\n1,2\n", "loss"),
        ("N,D,loss\n1e6,1e9,nan\n", "row 2, column 'loss'"),
        ("N,D,loss\n1e6,1e9,3\n-1e6,1e9,3\n", "row 3, column 'N'"),
        ("N,D,loss\n1e6,abc,3\n", "not a number"),
        ("N,D,loss\n", "no data rows"),
        ("", "empty"),
        ("N,D,C,loss\n1e6,1e9,1e10,3\n", "C != 6"),
    ],
)
def test_load_runs_errors(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_runs(path)


def test_load_runs_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_runs(tmp_path / "nope.csv")


# --- the sweep -----------------------------------------------------------------------------------


def test_score_loss_of_an_oracle_is_the_exact_conditional_entropy():
    """A model that outputs the true log P(next | previous) scores exactly -mean log P on the
    scored positions, and close to the entropy rate h."""
    import torch

    from minilm.data.languages import MarkovLanguage
    from minilm.scaling.sweep import score_loss

    lang = MarkovLanguage(vocab_size=8, order=1, concentration=0.3, seed=0)

    class Oracle(torch.nn.Module):
        def forward(self, idx):  # (B, T) -> (B, T, V): log P(. | idx[t])
            return torch.log(torch.tensor(lang.transition, dtype=torch.float32))[idx]

    T, tokens = 16, lang.sample(16 * 400 + 1, seed=3)
    got = score_loss(Oracle(), tokens, T, score_from=4, device=torch.device("cpu"))
    logp = lang.log_prob(tokens)  # log P(x_t | x_{t-1}) for t >= 1
    y_pos = np.arange(1, 16 * 400 + 1).reshape(400, T)  # target index of each window position
    expected = -logp[y_pos[:, 4:] - 1].mean()
    assert got == pytest.approx(expected, rel=1e-5)
    assert got == pytest.approx(lang.entropy_rate(), rel=0.05)


def test_sweep_caches_finished_points(tmp_path):
    from minilm.data.languages import MarkovLanguage
    from minilm.scaling.sweep import run_sweep

    lang = MarkovLanguage(vocab_size=8, order=1, concentration=0.3, seed=0)
    sizes = [{"n_layers": 1, "n_heads": 2, "d_model": 8}, {"n_layers": 1, "n_heads": 2, "d_model": 16}]
    kwargs = dict(token_budgets=[512, 1024], language=lang, cache_path=tmp_path / "sweep.json", seed=1,
                  device="cpu", context_length=16, batch_size=8, val_tokens=1024, progress=False)
    first = run_sweep(sizes, **kwargs)
    assert (first.n_trained, first.n_cached) == (4, 0)
    second = run_sweep(sizes, **kwargs)
    assert (second.n_trained, second.n_cached) == (0, 4)  # nothing trained again
    assert [p["loss"] for p in second.points] == [p["loss"] for p in first.points]
    for p in first.points:
        assert p["tokens"] == p["steps"] * 8 * 16 and p["tokens"] == p["token_budget"]
        assert p["flops"] > p["flops_6ND"] > 0  # attention adds FLOPs beyond 6ND
        assert np.isfinite(p["loss"]) and p["loss"] > 0
    runs = first.runs()
    assert len(runs) == 4 and runs.N[0] < runs.N[2] and runs.D[0] < runs.D[1]
    assert len(first.curves()) == 4
    assert first.entropy_rate == pytest.approx(lang.entropy_rate())
    # A new point (or changed settings) trains only what is missing.
    third = run_sweep(sizes, **{**kwargs, "token_budgets": [512, 1024, 1536]})
    assert (third.n_trained, third.n_cached) == (2, 4)
    with pytest.raises(ValueError, match="n_heads"):
        run_sweep([{"n_layers": 1, "n_heads": 3, "d_model": 8}], **kwargs)
    # IsoFLOP design: each size gets D = C / 6N tokens (to the nearest step of 128 tokens).
    C = 6 * first.points[2]["n_params"] * 1024
    iso = run_sweep(sizes, **{**kwargs, "token_budgets": None, "flop_budgets": [C]})
    assert iso.n_trained == 1  # the larger size at 1024 tokens is already cached
    for p in iso.points:
        assert p["flop_budget"] == C
        assert abs(6 * p["n_params"] * p["tokens"] - C) <= 6 * p["n_params"] * 64
    with pytest.raises(ValueError, match="either token_budgets or flop_budgets"):
        run_sweep(sizes, **{**kwargs, "flop_budgets": [C]})
