"""Toy losses to watch optimizers move: a 2-D quadratic (behind a slider widget) and a tiny MLP.

``IllConditionedQuadratic`` is f(x) = ½ xᵀAx with A's eigenvalues λ_max and λ_max/κ in a rotated
basis: the simplest loss where curvature decides everything. Gradient descent with step η
shrinks the error along an eigenvector of curvature λ by (1 − ηλ) per step, so it converges iff
η < 2/λ_max, and then needs ~κ steps along the flat direction. ``run_optimizer`` records the path.

``random_label_mlp`` is the smallest network on which the edge of stability shows cleanly: a tanh
MLP fitting random labels with the squared loss, full batch (Cohen et al. 2021's setting, shrunk).
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

__all__ = ["IllConditionedQuadratic", "Trajectory", "random_label_mlp", "run_optimizer"]


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


def random_label_mlp(
    n_examples: int = 256,
    input_dim: int = 32,
    n_classes: int = 10,
    width: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[torch.nn.Module, Callable[[], Tensor]]:
    """A tanh MLP and its full-batch squared loss on random labels: ``(model, loss_fn)``.

    Cohen et al. (2021) saw the edge of stability most cleanly on tanh networks trained by
    full-batch gradient descent with the squared loss; this is that setting at toy size:
    X ~ N(0, I) of shape (n, input_dim), Y = one-hot random classes (n, n_classes),
    f = Linear → tanh → Linear → tanh → Linear, and L(θ) = (1/2n) Σ_i ‖f(x_i) − y_i‖².
    Random labels leave nothing to generalise, so the net must memorise, and its curvature grows
    while it does ("progressive sharpening"). ``seed`` fixes the data and the initial weights.
    """
    for name, value in (("n_examples", n_examples), ("input_dim", input_dim), ("n_classes", n_classes),
                        ("width", width)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n_examples, input_dim, generator=gen)                         # (n, d)
    labels = torch.randint(0, n_classes, (n_examples,), generator=gen)
    Y = torch.nn.functional.one_hot(labels, n_classes).float()                    # (n, k)
    with torch.random.fork_rng(devices=[]):                                        # seed the init only
        torch.manual_seed(seed)
        model = torch.nn.Sequential(
            torch.nn.Linear(input_dim, width), torch.nn.Tanh(),
            torch.nn.Linear(width, width), torch.nn.Tanh(),
            torch.nn.Linear(width, n_classes),
        )
    model.to(device)
    X, Y = X.to(device), Y.to(device)

    def loss_fn() -> Tensor:
        return 0.5 * ((model(X) - Y) ** 2).sum(dim=1).mean()                     # (1/2n) Σ ‖f(x) − y‖²

    return model, loss_fn
