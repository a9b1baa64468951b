"""Scaling laws (talk section 1): the Chinchilla and Kaplan laws, fitting them, and a sweep to fit.

- ``law``: L(N, D), compute C = 6ND, the compute-optimal frontier (Hoffmann et al., 2022, eq. 4).
- ``fit``: Approach 3 (Huber + L-BFGS from a grid), a Kaplan-form fit, bootstrap intervals.
- ``isoflop``: Approaches 1 (envelope of training curves) and 2 (IsoFLOP parabolas).
- ``runs``: checking (N, D, loss) points and reading/writing them as CSV.
- ``lbfgs``: L-BFGS from thousands of starting points at once.
- ``sweep``: train a grid of GPT sizes x token budgets on a known-entropy language, cached, on any
  executor (``minilm.executors``: this process, local workers, SLURM through submitit).
- ``hparams``: lab 04's experiments: WSD branching, learning-rate sweeps, batch x lr grids.
- ``multiplier``: lab 08's compute multipliers: L(C) = E + A C^-alpha per recipe, how much compute a
  trick is worth, and whether that worth grows or shrinks with compute.
"""

from .fit import (
    TOLERANCES,
    ChinchillaBootstrap,
    ChinchillaFit,
    KaplanFit,
    bootstrap_chinchilla,
    chinchilla_objective,
    fit_chinchilla,
    fit_kaplan,
    hoffmann_grid,
    huber,
    kaplan_grid,
)
from .hparams import Branch, LossCurve, batch_lr_grid, best_lr, branch_wsd, lr_sweep, train_gpt, wind_tunnel_data
from .isoflop import (
    EnvelopeFit,
    IsoFLOPFit,
    PowerLaw,
    TrainingCurve,
    fit_envelope,
    fit_isoflop,
    fit_power_law,
)
from .law import (
    ChinchillaParams,
    ComputeOptimal,
    KaplanParams,
    chinchilla_loss,
    compute_optimal,
    kaplan_loss,
    training_flops,
)
from .multiplier import (
    ComputeLaw,
    MultiplierEstimate,
    break_even_compute,
    compute_multiplier,
    estimate_multiplier,
    fit_compute_law,
    multiplier_at,
    multiplier_slope,
)
from .runs import ScalingRuns, check_points, load_runs, save_runs
from .sweep import (
    FAST_SIZES,
    FAST_TOKEN_BUDGETS,
    FULL_SIZES,
    FULL_TOKEN_BUDGETS,
    SweepError,
    SweepResult,
    fast_language,
    run_sweep,
    score_loss,
)

__all__ = [
    "TOLERANCES", "ChinchillaBootstrap", "ChinchillaFit", "KaplanFit", "bootstrap_chinchilla",
    "chinchilla_objective", "fit_chinchilla", "fit_kaplan", "hoffmann_grid", "huber", "kaplan_grid",
    "EnvelopeFit", "IsoFLOPFit", "PowerLaw", "TrainingCurve", "fit_envelope", "fit_isoflop", "fit_power_law",
    "ChinchillaParams", "ComputeOptimal", "KaplanParams", "chinchilla_loss", "compute_optimal", "kaplan_loss",
    "training_flops", "ScalingRuns", "check_points", "load_runs", "save_runs",
    "FAST_SIZES", "FAST_TOKEN_BUDGETS", "FULL_SIZES", "FULL_TOKEN_BUDGETS", "SweepError", "SweepResult",
    "fast_language", "run_sweep", "score_loss",
    "Branch", "LossCurve", "batch_lr_grid", "best_lr", "branch_wsd", "lr_sweep", "train_gpt", "wind_tunnel_data",
    "ComputeLaw", "MultiplierEstimate", "break_even_compute", "compute_multiplier", "estimate_multiplier",
    "fit_compute_law", "multiplier_at", "multiplier_slope",
]
