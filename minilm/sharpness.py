"""Curvature of the loss: Hessian-vector products, sharpness, Hutchinson estimators, edge of stability.

The Hessian H of a model with P parameters is a P×P matrix, far too big to build. Everything here
uses only Hessian-vector products Hv, which cost about two backward passes (Pearlmutter 1994):
differentiate the gradient once more, in the direction v ("double backward").

* ``hvp`` / ``HessianOperator``: Hv by double backward.
* ``top_eigenvalue``: the sharpness λ_max(H), by power iteration or Lanczos.
* ``hutchinson_trace`` / ``hutchinson_diagonal``: tr(H) ≈ E[uᵀHu], diag(H) ≈ E[u⊙Hu]
  (Hutchinson 1989; Bekas et al. 2007), for any u with E[uuᵀ] = I.
* ``gauss_newton_bartlett_diagonal``: the diagonal of the Gauss–Newton matrix from one resampled
  gradient (Liu et al. 2023, Sophia, Section 2.3).
* ``preconditioned_sharpness``: λ_max(P⁻¹H) with Adam's preconditioner P = diag(√v̂ + ε).
* ``gd_sharpness_threshold`` / ``momentum_sharpness_threshold`` / ``adam_sharpness_threshold``:
  the edge-of-stability lines 2/η, (2+2β)/η and (2+2β₁)/((1−β₁)η) (Cohen et al. 2021, 2022).
* ``track_sharpness``: full-batch training that measures the sharpness every few steps, the
  experiment behind the edge of stability.

Vectors are lists of tensors shaped like the parameters ("per-parameter") or one flat float32
vector of length P; ``HessianOperator.matvec_flat`` converts between the two.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "HessianOperator",
    "SharpnessTrace",
    "adam_preconditioner",
    "adam_sharpness_threshold",
    "gauss_newton_bartlett_diagonal",
    "gd_sharpness_threshold",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "hvp",
    "lanczos",
    "momentum_sharpness_threshold",
    "power_iteration",
    "preconditioned_sharpness",
    "top_eigenvalue",
    "track_sharpness",
]


def _as_list(params: Tensor | Sequence[Tensor]) -> list[Tensor]:
    params = [params] if isinstance(params, Tensor) else list(params)
    if not params:
        raise ValueError("params is empty: pass the tensors to differentiate, e.g. list(model.parameters())")
    for p in params:
        if not p.requires_grad:
            raise ValueError("every tensor in params must have requires_grad=True "
                             "(filter with [p for p in model.parameters() if p.requires_grad])")
    return params


def _draw_device(generator: torch.Generator | None, device: torch.device | str) -> torch.device | str:
    """Where random numbers are drawn: on the generator's own device (a seeded CPU generator may
    drive work on a GPU, and gives the same numbers everywhere), else on ``device``."""
    return generator.device if generator is not None else device


def _random_like(p: Tensor, distribution: str, generator: torch.Generator | None) -> Tensor:
    """A random probe u with E[u] = 0 and E[uuᵀ] = I (what Hutchinson's estimator needs)."""
    if distribution == "rademacher":  # ±1 with probability ½: the lowest-variance choice
        bits = torch.randint(0, 2, p.shape, generator=generator, device=_draw_device(generator, p.device))
        return (2 * bits - 1).to(device=p.device, dtype=p.dtype)
    if distribution == "gaussian":
        return torch.randn(p.shape, generator=generator, device=_draw_device(generator, p.device),
                           dtype=p.dtype).to(p.device)
    raise ValueError(f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}")


class HessianOperator:
    """The Hessian of ``loss`` w.r.t. ``params`` as a linear map v ↦ Hv, never built explicitly.

    The gradient is computed once with ``create_graph=True``; each product then costs one more
    backward through that gradient: Hv = ∇_θ(∇_θL · v). ``loss`` must still have its graph.
    """

    def __init__(self, loss: Tensor, params: Tensor | Sequence[Tensor]) -> None:
        if loss.dim() != 0:
            raise ValueError(f"loss must be a scalar, got shape {tuple(loss.shape)}: reduce it (e.g. .mean())")
        self.params = _as_list(params)
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        # A parameter the loss ignores, or enters linearly, has a gradient without a graph: H's
        # rows for it are zero, and autograd must not be asked to differentiate it.
        self._grads = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self.dim = sum(p.numel() for p in self.params)

    @classmethod
    def from_loss_fn(cls, loss_fn: Callable[[], Tensor], params: Tensor | Sequence[Tensor]) -> HessianOperator:
        """Evaluate ``loss_fn()`` (e.g. the full-batch loss) and wrap its Hessian."""
        return cls(loss_fn(), params)

    def matvec(self, v: Sequence[Tensor]) -> list[Tensor]:
        """Hv for v given per parameter (a list shaped like ``params``)."""
        v = list(v)
        if len(v) != len(self.params) or any(a.shape != p.shape for a, p in zip(v, self.params)):
            raise ValueError("v must be a list of tensors with the same shapes as params")
        out = [torch.zeros_like(p) for p in self.params]
        if not self._grads:
            return out
        hv = torch.autograd.grad(
            [g for _, g in self._grads], self.params,
            grad_outputs=[v[i] for i, _ in self._grads],
            retain_graph=True, allow_unused=True,
        )
        return [h.detach() if h is not None else z for h, z in zip(hv, out)]

    def flatten(self, tensors: Sequence[Tensor]) -> Tensor:
        """Per-parameter list → one vector of length ``dim``."""
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, v: Tensor) -> list[Tensor]:
        """One vector of length ``dim`` → list shaped like ``params``."""
        out, start = [], 0
        for p in self.params:
            out.append(v[start:start + p.numel()].view_as(p))
            start += p.numel()
        return out

    def matvec_flat(self, v: Tensor) -> Tensor:
        """Hv for a flat vector v of length ``dim``."""
        return self.flatten(self.matvec(self.unflatten(v)))


def hvp(loss_fn: Callable[[], Tensor], params: Tensor | Sequence[Tensor],
        v: Tensor | Sequence[Tensor]) -> list[Tensor]:
    """Hessian-vector product Hv of ``loss_fn()`` w.r.t. ``params``, by double backward.

    ``v`` is shaped like ``params`` (a tensor, or a list of tensors). Returns a list.
    """
    v = [v] if isinstance(v, Tensor) else list(v)
    return HessianOperator.from_loss_fn(loss_fn, params).matvec(v)


# --------------------------------------------------------------------------------------------
# Eigenvalues from matrix-vector products
# --------------------------------------------------------------------------------------------


def power_iteration(
    matvec: Callable[[Tensor], Tensor],
    dim: int,
    n_iter: int = 200,
    tol: float = 1e-3,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[float, Tensor]:
    """Dominant eigenpair (largest |λ|) of a symmetric linear map, by power iteration.

    v ← Av/‖Av‖ converges to the top eigenvector at rate |λ₂/λ₁| per step; λ is read from the
    Rayleigh quotient vᵀAv, whose error is only of the order of the residual squared. Stops when
    the residual ‖Av − λv‖ ≤ ``tol``·|λ|, or after ``n_iter`` products. Returns (λ, v), ‖v‖ = 1.
    """
    v = torch.randn(dim, generator=generator, device=_draw_device(generator, device)).to(device)
    v = v / v.norm()
    eig = 0.0
    for _ in range(n_iter):
        w = matvec(v)
        eig = float(v @ w)                                   # Rayleigh quotient vᵀAv (‖v‖ = 1)
        if float((w - eig * v).norm()) <= tol * abs(eig):    # Av ≈ λv: converged
            break
        norm = w.norm()
        if norm == 0:                                        # Av = 0: v is in the null space
            return 0.0, v
        v = w / norm
    return eig, v


def lanczos(
    matvec: Callable[[Tensor], Tensor],
    dim: int,
    n_iter: int = 30,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Ritz values (ascending) of a symmetric linear map after ``n_iter`` Lanczos steps.

    Builds an orthonormal basis Q of the Krylov space {v, Av, A²v, ...} in which A is the
    tridiagonal T = QᵀAQ (diagonal α, off-diagonal β); T's eigenvalues approximate A's extreme
    eigenvalues far faster than power iteration (Golub & Van Loan, Alg. 10.1.1). We
    re-orthogonalise against all previous vectors, cheap at these sizes, to stay exact in float32.
    With ``n_iter ≥ dim`` they are all of A's eigenvalues.
    """
    n_iter = min(n_iter, dim)
    q = torch.randn(dim, generator=generator, device=_draw_device(generator, device)).to(device)
    Q = [q / q.norm()]
    alphas, betas = [], []
    for j in range(n_iter):
        w = matvec(Q[j])
        alpha = w @ Q[j]
        alphas.append(alpha)
        basis = torch.stack(Q)                               # (j+1, dim)
        for _ in range(2):                                   # full re-orthogonalisation, twice
            w = w - basis.T @ (basis @ w)
        beta = w.norm()
        scale = max(abs(float(a)) for a in alphas + betas)     # ≈ ‖A‖ seen so far
        if j == n_iter - 1 or beta <= 1e-6 * scale + 1e-30:     # Krylov space exhausted
            break
        betas.append(beta)
        Q.append(w / beta)
    T = torch.diag(torch.stack(alphas))
    if betas:
        off = torch.stack(betas)
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigvalsh(T)


def _top_eigenvalue_of(matvec: Callable[[Tensor], Tensor], dim: int, method: str, n_iter: int | None,
                       generator: torch.Generator | None, device: torch.device) -> float:
    if method == "lanczos":
        return float(lanczos(matvec, dim, n_iter=n_iter or 30, generator=generator, device=device)[-1])
    if method == "power":
        n_iter = n_iter or 200
        lam, _ = power_iteration(matvec, dim, n_iter=n_iter, generator=generator, device=device)
        if lam >= 0:
            return lam
        # The dominant eigenvalue is negative. Shift it to zero: A − λI has λ_max − λ ≥ 0 as its
        # dominant eigenvalue, and power iteration on it finds λ_max.
        shifted, _ = power_iteration(lambda v: matvec(v) - lam * v, dim, n_iter=n_iter,
                                     generator=generator, device=device)
        return shifted + lam
    raise ValueError(f"method must be 'power' or 'lanczos', got {method!r}")


def top_eigenvalue(
    loss_fn: Callable[[], Tensor],
    params: Tensor | Sequence[Tensor],
    method: str = "lanczos",
    n_iter: int | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """The sharpness λ_max(H) of ``loss_fn()`` at the current ``params``.

    ``method="power"`` (default 200 iterations, stops early when converged) or ``"lanczos"``
    (default 30 iterations; exact once ``n_iter`` ≥ number of parameters). Both return the
    algebraically largest eigenvalue; power iteration gets it from a shifted second run when the
    dominant eigenvalue is negative.
    """
    op = HessianOperator.from_loss_fn(loss_fn, params)
    return _top_eigenvalue_of(op.matvec_flat, op.dim, method, n_iter, generator, op.params[0].device)


# --------------------------------------------------------------------------------------------
# Stochastic estimators
# --------------------------------------------------------------------------------------------


def _check_samples(n_samples: int) -> None:
    if int(n_samples) != n_samples or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples}")


def hutchinson_trace(
    loss_fn: Callable[[], Tensor],
    params: Tensor | Sequence[Tensor],
    n_samples: int = 100,
    distribution: str = "rademacher",
    generator: torch.Generator | None = None,
) -> float:
    """tr(H) ≈ (1/n) Σ uᵀHu with random u, E[uuᵀ] = I (Hutchinson 1989).

    Unbiased: E[uᵀHu] = tr(H E[uuᵀ]) = tr(H). With Rademacher u the variance of one sample is
    2 Σ_{i≠j} H_ij²; with Gaussian u it is 2‖H‖_F².
    """
    _check_samples(n_samples)
    op = HessianOperator.from_loss_fn(loss_fn, params)
    total = 0.0
    for _ in range(n_samples):
        u = [_random_like(p, distribution, generator) for p in op.params]
        total += float(sum((a * b).sum() for a, b in zip(u, op.matvec(u))))
    return total / n_samples


def hutchinson_diagonal(
    loss_fn: Callable[[], Tensor],
    params: Tensor | Sequence[Tensor],
    n_samples: int = 1,
    distribution: str = "rademacher",
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """diag(H) ≈ (1/n) Σ u⊙(Hu) with random u, E[uuᵀ] = I (Bekas et al. 2007). One list entry per param.

    Unbiased: E[u_i (Hu)_i] = Σ_j H_ij E[u_i u_j] = H_ii. One sample's variance at coordinate i is
    Σ_{j≠i} H_ij² (Rademacher) or 2H_ii² + Σ_{j≠i} H_ij² (Gaussian). Sophia-H uses n = 1.
    """
    _check_samples(n_samples)
    op = HessianOperator.from_loss_fn(loss_fn, params)
    diag = [torch.zeros_like(p) for p in op.params]
    for _ in range(n_samples):
        u = [_random_like(p, distribution, generator) for p in op.params]
        for d, a, b in zip(diag, u, op.matvec(u)):
            d.add_(a * b, alpha=1.0 / n_samples)
    return diag


def gauss_newton_bartlett_diagonal(
    logits: Tensor,
    params: Tensor | Sequence[Tensor],
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """Unbiased estimate of diag(G), G the Gauss–Newton matrix of the mean cross-entropy (Sophia-G).

    logits: (..., V), still attached to the graph of ``params``; the N = numel/V rows are the
    predictions the training loss averages over. Following Liu et al. (2023, Alg. 2):

        ŷ_n ~ softmax(logits_n)          labels resampled from the model itself
        ĝ = ∇_θ (1/N) Σ_n CE(logits_n, ŷ_n)
        ĥ = N · ĝ ⊙ ĝ

    Why it works (Bartlett's identity): with ŷ drawn from the model, each per-example gradient
    ĝ_n = J_nᵀ(p_n − e_ŷ) has mean 0 and covariance J_nᵀ(diag p_n − p_n p_nᵀ)J_n, the n-th
    Gauss–Newton term. The ĝ_n are independent, so E[N ĝ⊙ĝ] = (1/N) Σ_n diag(J_nᵀ(...)J_n) = diag(G).
    If the training loss skips tokens (padding), pass only the logits of the tokens it counts.
    Does not touch ``.grad`` and keeps the graph, so ``loss.backward()`` can follow.
    """
    params = _as_list(params)
    flat = logits.reshape(-1, logits.shape[-1])                       # (N, V)
    n_rows = flat.shape[0]
    with torch.no_grad():
        probs = torch.softmax(flat.float(), dim=-1)
        y_hat = torch.multinomial(probs.to(_draw_device(generator, probs.device)), 1,
                                  generator=generator).squeeze(-1).to(probs.device)  # (N,)
    loss = F.cross_entropy(flat, y_hat)
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else n_rows * g * g for p, g in zip(params, grads)]


# --------------------------------------------------------------------------------------------
# Adam's preconditioned sharpness and the edge-of-stability thresholds
# --------------------------------------------------------------------------------------------


def adam_preconditioner(optimizer: torch.optim.Optimizer, params: Sequence[Tensor]) -> list[Tensor]:
    """Adam's diagonal preconditioner P = √v̂ + ε, v̂ = v/(1 − β₂ᵗ), one tensor per parameter.

    Reads the state of ``torch.optim.Adam``/``AdamW`` or ``minilm.optim.Adam``/``AdamW`` (the
    same keys: ``exp_avg_sq``, ``max_exp_avg_sq`` when ``amsgrad``, ``step``). Adam's step is
    θ ← θ − η·m̂/P, so P⁻¹ plays the role of a per-coordinate learning-rate multiplier.
    """
    group_of = {p: group for group in optimizer.param_groups for p in group["params"]}
    out = []
    for p in params:
        if p not in group_of:
            raise ValueError("a parameter is not managed by this optimizer: pass the optimizer's own params")
        state, group = optimizer.state.get(p, {}), group_of[p]
        if "exp_avg_sq" not in state or "betas" not in group:
            raise ValueError("no Adam second-moment state for a parameter: use an Adam/AdamW optimizer "
                             "and take at least one optimizer.step() first")
        v = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
        t = float(state["step"])                       # torch stores a tensor, minilm an int
        v_hat = v / (1 - group["betas"][1] ** t)
        out.append(v_hat.sqrt() + group["eps"])
    return out


def preconditioned_sharpness(
    loss_fn: Callable[[], Tensor],
    params: Sequence[Tensor],
    optimizer: torch.optim.Optimizer,
    method: str = "lanczos",
    n_iter: int | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """λ_max(P⁻¹H) for Adam's current preconditioner P (Cohen et al. 2022, "Adaptive gradient
    methods at the edge of stability").

    P⁻¹H is not symmetric, but it is similar to the symmetric P^{-1/2} H P^{-1/2}
    (same eigenvalues), which is what we feed to Lanczos / power iteration. Adam is stable on a
    quadratic while this stays below ``adam_sharpness_threshold(lr, beta1)`` = 38/η at β₁ = 0.9.
    Cohen et al. also fold m's bias correction (1 − β₁ᵗ) into P; it is ≈ 1 after ~50 steps,
    so we leave it out.
    """
    op = HessianOperator.from_loss_fn(loss_fn, params)
    s = op.flatten(adam_preconditioner(optimizer, op.params)).rsqrt()   # P^{-1/2}, (dim,)

    def matvec(v: Tensor) -> Tensor:
        return s * op.matvec_flat(s * v)                                 # P^{-1/2} H P^{-1/2} v

    return _top_eigenvalue_of(matvec, op.dim, method, n_iter, generator, op.params[0].device)


def _check_lr(lr: float) -> None:
    if not lr > 0:
        raise ValueError(f"learning rate must be > 0, got {lr}")


def gd_sharpness_threshold(lr: float) -> float:
    """2/η: gradient descent on a quadratic diverges along any direction with curvature > 2/η.

    GD multiplies the error along an eigenvector of curvature λ by (1 − ηλ) each step, so
    |1 − ηλ| < 1 ⇔ λ < 2/η. Cohen et al. (2021) found full-batch GD drives λ_max(H) up to this
    line and then hovers there: the edge of stability.
    """
    _check_lr(lr)
    return 2.0 / lr


def momentum_sharpness_threshold(lr: float, momentum: float) -> float:
    """(2 + 2β)/η for heavy-ball momentum (``minilm.optim.SGD``/``torch.optim.SGD`` with momentum β).

    From the roots of z² − (1 + β − ηλ)z + β on a quadratic (Cohen et al. 2021, Appendix).
    """
    _check_lr(lr)
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    return (2.0 + 2.0 * momentum) / lr


def adam_sharpness_threshold(lr: float, beta1: float = 0.9) -> float:
    """(2 + 2β₁)/((1 − β₁)η): the limit on the *preconditioned* sharpness λ_max(P⁻¹H) for Adam.

    Adam with a frozen preconditioner is heavy-ball momentum with step (1−β₁)η on P⁻¹H, so the
    momentum threshold applies: 38/η at β₁ = 0.9 (Cohen et al. 2022, Section 2).
    """
    _check_lr(lr)
    if not 0 <= beta1 < 1:
        raise ValueError(f"beta1 must be in [0, 1), got {beta1}")
    return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr)


# --------------------------------------------------------------------------------------------
# The edge-of-stability experiment
# --------------------------------------------------------------------------------------------


@dataclass
class SharpnessTrace:
    """What ``track_sharpness`` saw.

    loss: the full-batch loss before each step (one per step taken, plus the final one);
    steps: the steps at which curvature was measured; sharpness: λ_max(H) there;
    preconditioned: λ_max(P⁻¹H) there (NaN at step 0, before Adam has a preconditioner), or
    empty when not asked for; diverged: the loss became NaN/inf or exceeded the limit (the trace
    stops there).
    """

    loss: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    sharpness: list[float] = field(default_factory=list)
    preconditioned: list[float] = field(default_factory=list)
    diverged: bool = False


def track_sharpness(
    loss_fn: Callable[[], Tensor],
    params: Sequence[Tensor],
    optimizer: torch.optim.Optimizer,
    n_steps: int,
    every: int = 10,
    preconditioned: bool = False,
    n_iter: int = 20,
    seed: int = 0,
    divergence_limit: float = 1e6,
    progress: bool = False,
) -> SharpnessTrace:
    """Train on the *full batch* ``loss_fn()`` for ``n_steps`` steps, measuring the sharpness.

    Every ``every`` steps (and at step 0) it records λ_max(H) by Lanczos (``n_iter`` products;
    at the edge several eigenvalues crowd near the top, and 12 products read up to ~3% low),
    and with ``preconditioned=True`` also Adam's λ_max(P⁻¹H). Full batch, because the edge of
    stability is a statement about the deterministic dynamics (Cohen et al. 2021, Section 3):
    the sharpness rises ("progressive sharpening") until it reaches 2/η for gradient descent,
    38/η for Adam's preconditioned sharpness (β₁ = 0.9), and then hovers there while the loss
    keeps falling, non-monotonically. Stops early, with ``diverged=True``, when the loss turns
    non-finite or exceeds ``divergence_limit``.
    """
    if int(n_steps) != n_steps or n_steps < 0:
        raise ValueError(f"n_steps must be a non-negative integer, got {n_steps}")
    if int(every) != every or every < 1:
        raise ValueError(f"every must be a positive integer, got {every}")
    params = _as_list(params)
    gen = torch.Generator(device=params[0].device).manual_seed(seed)  # Lanczos start vectors
    trace = SharpnessTrace()
    steps = range(n_steps + 1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="full-batch steps", leave=False)
    for step in steps:
        loss = loss_fn()
        value = float(loss.detach())
        if not math.isfinite(value) or abs(value) > divergence_limit:
            trace.diverged = True
            break
        trace.loss.append(value)
        if step % every == 0:
            trace.steps.append(step)
            trace.sharpness.append(top_eigenvalue(loss_fn, params, n_iter=n_iter, generator=gen))
            if preconditioned:
                has_state = any("exp_avg_sq" in optimizer.state.get(p, {}) for p in params)
                trace.preconditioned.append(
                    preconditioned_sharpness(loss_fn, params, optimizer, n_iter=n_iter, generator=gen)
                    if has_state else math.nan)
        if step == n_steps:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return trace
