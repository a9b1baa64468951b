"""Two-dimensional toy losses to watch optimizers move, e.g. behind a slider widget.

``IllConditionedQuadratic`` is f(x) = ½ xᵀAx with A's eigenvalues λ_max and λ_max/κ in a rotated
basis: the simplest loss where curvature decides everything. Gradient descent with step η
shrinks the error along an eigenvector of curvature λ by (1 − ηλ) per step, so it converges iff
η < 2/λ_max, and then needs ~κ steps along the flat direction. ``run_optimizer`` records the path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.optim import Optimizer

from minilm.optim import Sophia, make_optimizer

__all__ = ["IllConditionedQuadratic", "Trajectory", "run_optimizer"]


@dataclass(frozen=True)
class IllConditionedQuadratic:
    """f(x) = ½ xᵀAx, A = R(angle) diag(λ_max, λ_max/κ) R(angle)ᵀ, minimum 0 at x = 0.

    condition_number κ = λ_max/λ_min ≥ 1; angle (radians) rotates the eigenbasis off the axes,
    so that per-coordinate methods (Adam, sign descent) do not get the answer for free.
    """

    condition_number: float = 10.0
    lambda_max: float = 1.0
    angle: float = math.pi / 6

    def __post_init__(self) -> None:
        if not self.condition_number >= 1:
            raise ValueError(f"condition_number must be >= 1, got {self.condition_number}")
        if not self.lambda_max > 0:
            raise ValueError(f"lambda_max must be > 0, got {self.lambda_max}")

    @property
    def lambda_min(self) -> float:
        return self.lambda_max / self.condition_number

    @property
    def max_stable_lr(self) -> float:
        """2/λ_max: the largest gradient-descent step that does not diverge."""
        return 2.0 / self.lambda_max

    def hessian(self) -> Tensor:
        """A, shape (2, 2), float32."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        R = torch.tensor([[c, -s], [s, c]])
        return R @ torch.diag(torch.tensor([self.lambda_max, self.lambda_min])) @ R.T

    def loss(self, x: Tensor) -> Tensor:
        """f at points x of shape (..., 2) → shape (...)."""
        return 0.5 * torch.einsum("...i,ij,...j->...", x, self.hessian().to(x), x)


@dataclass
class Trajectory:
    """An optimizer's path: points (n+1, 2), losses (n+1,), and whether it blew up (then truncated)."""

    points: np.ndarray
    losses: np.ndarray
    diverged: bool


def run_optimizer(
    problem: IllConditionedQuadratic,
    optimizer: str | Callable[[list[Tensor]], Optimizer],
    x0: Sequence[float] = (-2.0, 1.5),
    n_steps: int = 50,
    divergence_threshold: float = 1e3,
    **hyperparameters,
) -> Trajectory:
    """Run an optimizer on the quadratic from x0 and record every iterate.

    ``optimizer`` is a name for ``minilm.optim.make_optimizer`` (its hyper-parameters as keyword
    arguments: ``run_optimizer(q, "sgd", lr=0.5, momentum=0.9)``) or a factory
    ``lambda params: torch.optim.Adam(params, lr=0.1)``. Sophia gets its Hessian from the
    Hutchinson estimator, exact here in expectation. Stops early once ‖x‖ exceeds
    ``divergence_threshold`` (or turns non-finite) and reports ``diverged=True``.

    The parameter is a 1×2 *matrix*, so that Muon has something to orthogonalise: on a single
    row, Newton–Schulz just normalises the momentum (Muon becomes normalised momentum descent).
    """
    if int(n_steps) != n_steps or n_steps < 0:
        raise ValueError(f"n_steps must be a non-negative integer, got {n_steps}")
    if len(x0) != 2:
        raise ValueError(f"x0 must have 2 coordinates, got {len(x0)}")
    x = torch.tensor([[float(v) for v in x0]], requires_grad=True)     # (1, 2)
    if isinstance(optimizer, str):
        if optimizer.lower() == "sophia":
            hyperparameters.setdefault("estimator", "hutchinson")  # no logits on a quadratic
        opt = make_optimizer(optimizer, [x], **hyperparameters)
    else:
        if hyperparameters:
            raise ValueError("pass hyper-parameters inside the factory, or give the optimizer by name")
        opt = optimizer([x])
    points, losses, diverged = [x.detach()[0].clone()], [float(problem.loss(x.detach()))], False
    for _ in range(n_steps):
        opt.zero_grad()
        loss = problem.loss(x).sum()
        if isinstance(opt, Sophia) and opt.hessian_due():
            opt.update_hessian(loss=loss)
        loss.backward()
        opt.step()
        point = x.detach()[0].clone()
        if not torch.isfinite(point).all() or point.norm() > divergence_threshold:
            diverged = True
            break
        points.append(point)
        losses.append(float(problem.loss(point)))
    return Trajectory(points=torch.stack(points).numpy(), losses=np.array(losses), diverged=diverged)
