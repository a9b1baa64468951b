"""Lab 03, optimizers and sharpness: the graded questions.

Five functions probed on hidden inputs (Adam's update, power iteration, the largest stable step of
a quadratic, equal-mass frequency bins, the per-bin loss), one measured value the grader recomputes
(the edge-of-stability plateau of a one-second full-batch run) and one multiple choice about the
class-imbalance run, whose training is too long for the grader to repeat.

References come from the library (``minilm.optim.Adam``, ``minilm.imbalance``,
``minilm.sharpness.track_sharpness``) or from closed forms (``numpy.linalg.eigvalsh``).

Notebooks: ``solutions/03_optimizers.ipynb`` (instructor source) and
``labs/03_optimizers.ipynb`` (student version); chapter: ``course/03_optimizers.md``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from minilm.grading.questions import Case, Hidden, Lab, choice_question, function_question, value_question
from minilm.imbalance import frequency_bins, per_bin_loss
from minilm.optim import SGD, Adam

EOS_LR = 0.4  # the step size of the graded edge-of-stability run (one of the notebook's EOS_LRS)
EOS_TAIL = 0.6  # the plateau averages the measurements at steps >= EOS_TAIL * EOS_STEPS


# --- reference solutions (run by the grader, never sent to the student's kernel) ---------------


def adam_step_ref(param, grad, m, v, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    """One Adam step (Kingma & Ba 2015, Alg. 1), taken by ``minilm.optim.Adam`` from state (m, v, t−1)."""
    p = param.clone().requires_grad_(True)
    opt = Adam([p], lr=lr, betas=betas, eps=eps)
    opt.state[p] = {"step": int(t) - 1, "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
    p.grad = grad.clone()
    opt.step()
    state = opt.state[p]
    return p.detach().clone(), state["exp_avg"].clone(), state["exp_avg_sq"].clone()


def lambda_max_ref(A, n_iter=100, seed=0):
    """λ_max of a symmetric matrix, exactly (LAPACK), whatever the iteration count."""
    return float(np.linalg.eigvalsh(A)[-1])


def max_stable_lr_ref(H):
    """2/λ_max(H): gradient descent on ½xᵀHx multiplies the top eigen-direction by 1 − ηλ_max."""
    return float(2.0 / np.linalg.eigvalsh(H)[-1])


def equal_mass_bins_ref(counts, n_bins):
    return frequency_bins(counts, n_bins)


def bin_losses_ref(logits, targets, bins, n_bins):
    return per_bin_loss(logits, targets, bins, n_bins)


@functools.lru_cache(maxsize=64)  # a pure function of its parameters; the release gates ask many times
def eos_ratio_ref(SEED: int = 0, EOS_STEPS: int = 600) -> float:  # noqa: N803 - notebook names
    """The plateau λ_max / (2/η) of full-batch GD at η = 0.4 on the toy MLP, as the notebook measures it.

    About two seconds on one CPU thread at 600 steps. Validates its parameters (they come from the
    notebook).
    """
    from minilm.sharpness import track_sharpness
    from minilm.toy_problems import random_label_mlp

    if not isinstance(SEED, int) or isinstance(SEED, bool) or not 0 <= SEED < 2**31:
        raise ValueError(f"SEED must be an int in [0, 2**31), got {SEED!r}")
    if not isinstance(EOS_STEPS, int) or isinstance(EOS_STEPS, bool) or not 500 <= EOS_STEPS <= 3000:
        raise ValueError(f"EOS_STEPS must be an int in [500, 3000] (fast mode: 600), got {EOS_STEPS!r}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: on a busy 2-core machine two threads ran 30x slower
    try:
        model, loss_fn = random_label_mlp(seed=SEED)
        params = list(model.parameters())
        trace = track_sharpness(loss_fn, params, SGD(params, lr=EOS_LR), n_steps=EOS_STEPS)
    finally:
        torch.set_num_threads(threads)
    steps, sharp = np.array(trace.steps), np.array(trace.sharpness)
    return float(sharp[steps >= EOS_TAIL * EOS_STEPS].mean() / (2.0 / EOS_LR))


# --- hidden inputs ----------------------------------------------------------------------------


def _t32(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _adam_case(rng: np.random.Generator) -> Case:
    shape = tuple(int(s) for s in rng.integers(1, 6, size=int(rng.integers(1, 3))))
    t = int(rng.integers(1, 30)) if rng.random() < 0.7 else int(rng.integers(100, 3000))
    grad = rng.normal(size=shape) * 10 ** rng.uniform(-3, 1)
    m = np.zeros(shape) if t == 1 else rng.normal(size=shape) * 10 ** rng.uniform(-3, 0)
    v = np.zeros(shape) if t == 1 else rng.uniform(0.0, 1.0, size=shape) * 10 ** rng.uniform(-6, 0)
    kwargs = {"lr": float(10 ** rng.uniform(-3, -1)),
              "betas": (float(rng.uniform(0.8, 0.95)), float(rng.uniform(0.95, 0.9999))),
              "eps": float(10 ** rng.uniform(-8, -2))}
    return Case(args=(_t32(rng.normal(size=shape)), _t32(grad), _t32(m), _t32(v), t), kwargs=kwargs)


def _spd(rng: np.random.Generator, n: int, eigenvalues: np.ndarray) -> np.ndarray:
    """Q diag(λ) Qᵀ with a random orthogonal Q: symmetric, not diagonal, known spectrum."""
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    A = (Q * eigenvalues) @ Q.T
    return (A + A.T) / 2


def _psd_with_gap(rng: np.random.Generator) -> tuple:
    """Positive semi-definite, λ₂/λ₁ ≤ 0.7, so 100 power iterations converge to ~1e-15."""
    n = int(rng.integers(4, 30))
    top = float(10 ** rng.uniform(-1, 2))
    rest = rng.uniform(0.0, 0.7, size=n - 1) * top
    return (_spd(rng, n, np.concatenate([[top], rest])),)


def _spd_wide_spectrum(rng: np.random.Generator) -> tuple:
    n = int(rng.integers(2, 9))
    return (_spd(rng, n, 10 ** rng.uniform(-2, 2, size=n)),)


def _zipf_counts(rng: np.random.Generator) -> tuple:
    """Heavy-tailed counts in shuffled id order, with ties and unseen (zero-count) tokens."""
    vocab = int(rng.integers(6, 60))
    counts = np.floor(rng.uniform(200, 2000) / np.arange(1, vocab + 1) ** rng.uniform(0.8, 1.6)).astype(np.int64)
    counts[rng.random(vocab) < 0.1] = 0
    rng.shuffle(counts)
    if counts.sum() == 0:
        counts[0] = 1
    return (torch.from_numpy(counts), int(rng.integers(2, 9)))


def _bin_loss_case(rng: np.random.Generator) -> tuple:
    """Random logits and targets; the last bin never holds a target, so its loss must be NaN."""
    vocab, n_bins = int(rng.integers(4, 16)), int(rng.integers(2, 7))
    bins = rng.integers(0, n_bins - 1, size=vocab)
    bins[rng.integers(vocab)] = n_bins - 1                      # a bin with a token but no target
    allowed = np.flatnonzero(bins != n_bins - 1)
    targets = rng.choice(allowed, size=int(rng.integers(5, 40)))
    logits = rng.normal(size=(len(targets), vocab)) * 3
    return (_t32(logits), torch.from_numpy(targets.astype(np.int64)), torch.from_numpy(bins.astype(np.int64)), n_bins)


# --- known-wrong answers: each must score less than full (checked by `minilm release`) --------


def _adam_no_bias_correction(param, grad, m, v, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    b1, b2 = betas
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad * grad
    return param - lr * m / (v.sqrt() + eps), m, v


def _adam_eps_inside_sqrt(param, grad, m, v, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    b1, b2 = betas
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad * grad
    return param - lr * (m / (1 - b1**t)) / (v / (1 - b2**t) + eps).sqrt(), m, v


def _adam_old_moments(param, grad, m, v, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    b1, b2 = betas  # steps with the moments of the previous step, then updates them
    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
    new_param = param - lr * m_hat / (v_hat.sqrt() + eps)
    return new_param, b1 * m + (1 - b1) * grad, b2 * v + (1 - b2) * grad * grad


def _adam_in_place(param, grad, m, v, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    b1, b2 = betas  # right numbers, but the caller's param, m and v are overwritten
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    param.sub_(lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps))
    return param, m, v


def _adam_step_off_by_one(param, grad, m, v, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    b1, b2 = betas  # counts this step twice: t is already the number of the step being taken
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad * grad
    return param - lr * (m / (1 - b1 ** (t + 1))) / ((v / (1 - b2 ** (t + 1))).sqrt() + eps), m, v


def _max_diagonal(A, n_iter=100, seed=0):
    return float(np.max(np.diag(A)))


def _frobenius(A, n_iter=100, seed=0):
    return float(np.linalg.norm(A))


def _one_rayleigh_step(A, n_iter=100, seed=0):
    v = np.ones(len(A)) / np.sqrt(len(A))
    return float(v @ A @ v)


def _power_unnormalised(A, n_iter=100, seed=0):
    v = np.ones(len(A))
    for _ in range(n_iter):
        v = A @ v  # never rescaled: v.Av grows (or shrinks) like lambda^(2 n_iter)
    return float(v @ A @ v)


def _power_too_few_iterations(A, n_iter=100, seed=0):
    v = np.random.default_rng(seed).normal(size=len(A))
    for _ in range(5):  # stops long before convergence, whatever n_iter says
        v = A @ v
        v /= np.linalg.norm(v)
    return float(v @ A @ v)


def _two_over_lambda_min(H):
    return float(2.0 / np.linalg.eigvalsh(H)[0])


def _one_over_lambda_max(H):
    return float(1.0 / np.linalg.eigvalsh(H)[-1])


def _two_over_max_diagonal(H):
    return float(2.0 / np.max(np.diag(H)))


def _two_over_frobenius(H):
    return float(2.0 / np.linalg.norm(H))  # a bound on lambda_max, not lambda_max


def _equal_count_bins(counts, n_bins):
    order = torch.sort(-counts, stable=True).indices
    bins = torch.empty_like(counts)
    bins[order] = torch.arange(len(counts)) * n_bins // len(counts)   # same number of tokens, not mass
    return bins


def _rare_first_bins(counts, n_bins):
    return n_bins - 1 - frequency_bins(counts, n_bins)


def _ties_larger_id_first(counts, n_bins):
    order = torch.flip(torch.sort(counts, stable=True).indices, [0])   # equal counts: larger id first
    before = torch.cumsum(counts[order], 0) - counts[order]
    bins = torch.empty_like(counts)
    bins[order] = n_bins * before // counts.sum()
    return bins


def _bins_in_id_order(counts, n_bins):
    before = torch.cumsum(counts, 0) - counts                          # never sorted by frequency
    return n_bins * before // counts.sum()


def _mass_including_self(counts, n_bins):
    order = torch.sort(-counts, stable=True).indices
    mass = torch.cumsum(counts[order], 0)                               # S_after instead of S_before
    bins = torch.empty_like(counts)
    bins[order] = torch.clamp(n_bins * mass // counts.sum(), max=n_bins - 1)
    return bins


def _bin_sum_not_mean(logits, targets, bins, n_bins):
    losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    return torch.zeros(n_bins).index_add_(0, bins[targets], losses)


def _bin_by_prediction(logits, targets, bins, n_bins):
    return per_bin_loss(logits, logits.argmax(-1), bins, n_bins)


def _bin_loss_bits(logits, targets, bins, n_bins):
    return per_bin_loss(logits, targets, bins, n_bins) / math.log(2.0)  # log2: bits, not nats


def _bin_mean_over_all_tokens(logits, targets, bins, n_bins):
    losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    sums = torch.zeros(n_bins).index_add_(0, bins[targets], losses)
    counts = torch.zeros(n_bins).index_add_(0, bins[targets], torch.ones_like(losses))
    return torch.where(counts > 0, sums / len(targets), torch.nan)  # divides by N, not the bin's count


def _empty_bin_zero(logits, targets, bins, n_bins):
    return torch.nan_to_num(per_bin_loss(logits, targets, bins, n_bins), nan=0.0)


LAB = Lab(
    "03",
    "optimizers",
    "Optimizers and sharpness",
    [
        function_question(
            "q1", 2, target="max_stable_lr", reference=max_stable_lr_ref,
            title="The largest stable gradient-descent step on the quadratic with Hessian H",
            public=[(np.diag([4.0, 1.0]),), (np.array([[3.0, 1.0], [1.0, 3.0]]),)],
            hidden=[Hidden(_spd_wide_spectrum, n=4, label="random symmetric positive definite H")],
            rtol=1e-6, atol=1e-12,
            hint="along an eigenvector GD multiplies the error by (1 - lr * lambda): which lambda binds?",
            wrong=[_two_over_lambda_min, _one_over_lambda_max, _two_over_max_diagonal, _two_over_frobenius],
        ),
        function_question(
            "q2", 3, target="lambda_max_power", reference=lambda_max_ref,
            title="Power iteration: the largest eigenvalue of a symmetric positive semi-definite matrix",
            public=[(np.array([[2.0, 1.0], [1.0, 2.0]]),), (np.diag([0.5, 3.0, 1.0]),)],
            hidden=[Hidden(_psd_with_gap, n=4, label="random PSD matrices")],
            # 100 iterations at λ₂/λ₁ ≤ 0.7 converge far below 1e-6; float32 work would still pass.
            rtol=1e-5, atol=1e-9,
            hint="multiplying by A again and again amplifies the top eigen-direction most; keep the vector's "
                 "length under control, and ask which quantity of a unit eigenvector gives its eigenvalue",
            wrong=[_max_diagonal, _frobenius, _one_rayleigh_step, _power_unnormalised, _power_too_few_iterations],
        ),
        value_question(
            "q3", 2, target="eos_ratio", reference=eos_ratio_ref, params={"SEED": 0, "EOS_STEPS": 600},
            title="Edge of stability: the measured plateau of the sharpness over 2/eta at eta = 0.4",
            # Noise: over seeds 0-7 the fast-mode plateau was 1.056 ± 0.005 (std; range 1.049-1.064);
            # perturbing the initial weights by 1e-6 (far above float32 rounding, i.e. another
            # device's arithmetic) moved it by < 0.01, and 1 vs 2 CPU threads by 0.005.
            # 0.03 is 6 seed-to-seed standard deviations; the known-wrong answers are > 0.4 away.
            rtol=0.0, atol=0.03,
            hint="average over the plateau (the late part of the run), not one reading; then compare "
                 "it with the threshold the stability analysis of q1 gives for this step size",
            # Typical slips, at SEED 0 in fast mode: eta * lambda_max without the 1/2 (~2.1), the raw
            # sharpness not divided by 2/eta (~5.2), the ratio at step 0 instead of the plateau (~0.48).
            wrong=[2.1, 5.2, 0.48],
        ),
        function_question(
            "q4", 3, target="adam_step", reference=adam_step_ref,
            title="One Adam step: (param, grad, m, v, t, lr, betas, eps) -> (param, m, v)",
            public=[
                Case(args=(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.1]), torch.zeros(2), torch.zeros(2), 1),
                     kwargs={"lr": 0.1}, label="first step from zero moments"),
                Case(args=(torch.tensor([[0.3, 0.0], [1.0, -1.0]]), torch.tensor([[1.0, -3.0], [0.0, 2.0]]),
                           torch.tensor([[0.1, 0.2], [0.0, -0.3]]), torch.tensor([[0.01, 0.5], [0.02, 0.1]]), 5),
                     kwargs={"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-3}, label="step 5, large eps"),
            ],
            hidden=[Hidden(_adam_case, n=4, label="random tensors, steps and hyper-parameters")],
            # float32 arithmetic in a different order: a few ulps of |param| ~ 1.
            rtol=1e-5, atol=1e-6,
            hint="follow Algorithm 1 of Kingma & Ba line by line: which moments does step t use, why do "
                 "they start biased towards zero, and where does eps go? Return new tensors: the "
                 "caller's inputs must not change",
            wrong=[_adam_no_bias_correction, _adam_eps_inside_sqrt, _adam_old_moments, _adam_in_place,
                   _adam_step_off_by_one],
            pure=True,
        ),
        function_question(
            "q5", 3, target="equal_mass_bins", reference=equal_mass_bins_ref,
            title="Frequency bins of equal mass (bin 0 = most frequent tokens)",
            public=[(torch.tensor([1, 6, 3, 0, 10]), 2), (torch.tensor([5, 5, 5, 5]), 4)],
            hidden=[Hidden(_zipf_counts, n=4, label="heavy-tailed counts")],
            rtol=0.0, atol=0.0,
            hint="equal mass, not an equal number of tokens: a token's bin depends on how much of the "
                 "total count comes before it in frequency order (ties: the smaller id counts as more "
                 "frequent), not including its own",
            wrong=[_equal_count_bins, _rare_first_bins, _mass_including_self, _ties_larger_id_first,
                   _bins_in_id_order],
        ),
        function_question(
            "q6", 2, target="bin_losses", reference=bin_losses_ref,
            title="Mean cross-entropy per frequency bin of the target token (NaN for an empty bin)",
            public=[(torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]]), torch.tensor([0, 1, 1]),
                     torch.tensor([0, 1, 1]), 2)],
            hidden=[Hidden(_bin_loss_case, n=3, label="random logits with an empty bin")],
            rtol=1e-5, atol=1e-6, equal_nan=True,
            hint="keep one loss per token (in nats), group the tokens by the bin of their *target*, and "
                 "average within each group; an empty group has no mean",
            wrong=[_bin_sum_not_mean, _bin_by_prediction, _empty_bin_zero, _bin_loss_bits,
                   _bin_mean_over_all_tokens],
        ),
        choice_question(
            "q7", 2, target="sgd_fails_on",
            title="Heavy-tailed imbalance: where is SGD's loss far above Adam's after 300 steps of your run?",
            choices={
                "a": "On the most frequent bins: SGD's steps are too large for them.",
                "b": "On the rarest bins: their gradients are small, so SGD moves them slowly.",
                "c": "Equally on every bin: SGD is uniformly slower.",
                "d": "Nowhere: with a tuned learning rate SGD matches Adam on every bin.",
            },
            answer="b",
            hint="compare the two optimizers' per-bin losses at step 300, bin by bin",
        ),
    ],
)
