"""Optimizers from scratch: SGD, Adam(W), sign descent, Lion, Sophia and Muon.

Every optimizer is a ``torch.optim.Optimizer`` subclass whose ``step()`` is a few lines that read
like the paper's update rule (cited in a comment). They drop into any PyTorch training loop::

    opt = AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    loss.backward(); opt.step(); opt.zero_grad()

Notation in the comments: g = gradient, θ = parameter, η = learning rate, λ = weight decay,
m / v = first / second moment estimates, t = step count (from 1).

All state tensors have the parameter's dtype (float32 in minilm): no float64 anywhere, so every
optimizer runs on Apple MPS too. Bias-correction factors are plain Python floats.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

from minilm.sharpness import gauss_newton_bartlett_diagonal, hutchinson_diagonal

__all__ = [
    "OPTIMIZERS",
    "SGD",
    "Adam",
    "AdamW",
    "Lion",
    "Muon",
    "SignSGD",
    "Sophia",
    "make_optimizer",
    "newton_schulz",
]


def _check_nonneg(name: str, value: float) -> None:
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {value}")


def _check_beta(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def _run_closure(closure: Callable[[], Tensor] | None) -> Tensor | None:
    """Re-evaluate the loss (with gradients on) when the caller passes a closure, as torch does."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


# --------------------------------------------------------------------------------------------
# SGD
# --------------------------------------------------------------------------------------------


class SGD(Optimizer):
    """Stochastic gradient descent with heavy-ball or Nesterov momentum and L2 weight decay.

    Same conventions as ``torch.optim.SGD`` (weight decay is added to the gradient; the first
    momentum step copies the gradient), so the two agree step for step.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        _check_nonneg("lr", lr)
        _check_nonneg("momentum", momentum)
        _check_nonneg("weight_decay", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening = 0")
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening,
                    "weight_decay": weight_decay, "nesterov": nesterov}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = _run_closure(closure)
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if wd != 0:
                    g = g.add(p, alpha=wd)                       # g ← g + λθ  (L2 penalty)
                if mu != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        buf = state["momentum_buffer"] = g.clone()   # b₁ = g₁
                    else:
                        buf = state["momentum_buffer"]
                        buf.mul_(mu).add_(g, alpha=1 - group["dampening"])  # b ← μb + (1−τ)g
                    # Nesterov (Sutskever et al. 2013): step along g + μb, else along b.
                    g = g.add(buf, alpha=mu) if group["nesterov"] else buf
                p.add_(g, alpha=-lr)                              # θ ← θ − η·g
        return loss


# --------------------------------------------------------------------------------------------
# Adam / AdamW
# --------------------------------------------------------------------------------------------


def _adam_update(
    p: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    decoupled: bool,
    amsgrad: bool,
) -> None:
    """One Adam(W) step on one tensor, in place (Kingma & Ba 2015, Alg. 1; Loshchilov & Hutter 2019).

    Shared by ``Adam``, ``AdamW`` and ``Muon``'s fallback for non-matrix parameters.
    """
    beta1, beta2 = betas
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p)          # m
        state["exp_avg_sq"] = torch.zeros_like(p)       # v
        if amsgrad:
            state["max_exp_avg_sq"] = torch.zeros_like(p)
    state["step"] += 1
    t = state["step"]
    m, v = state["exp_avg"], state["exp_avg_sq"]

    if weight_decay != 0:
        if decoupled:
            p.mul_(1 - lr * weight_decay)                 # AdamW: θ ← θ − ηλθ, outside the moments
        else:
            grad = grad.add(p, alpha=weight_decay)        # Adam: g ← g + λθ (L2, enters m and v)
    m.lerp_(grad, 1 - beta1)                              # m ← β₁m + (1−β₁)g
    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)   # v ← β₂v + (1−β₂)g²
    if amsgrad:                                           # AMSGrad (Reddi et al. 2018): v̂ never shrinks
        torch.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
        v = state["max_exp_avg_sq"]
    bias_correction1 = 1 - beta1**t                       # m̂ = m / (1−β₁ᵗ)
    bias_correction2 = 1 - beta2**t                       # v̂ = v / (1−β₂ᵗ)
    denom = (v.sqrt() / bias_correction2**0.5).add_(eps)  # √v̂ + ε
    p.addcdiv_(m, denom, value=-lr / bias_correction1)    # θ ← θ − η·m̂ / (√v̂ + ε)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with L2 weight decay added to the gradient, as ``torch.optim.Adam``.

    The L2 term passes through the adaptive scaling, so large-gradient coordinates are barely
    regularised; ``AdamW`` fixes that by decoupling the decay.
    """

    _decoupled = False

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        _check_nonneg("lr", lr)
        _check_beta("betas[0]", betas[0])
        _check_beta("betas[1]", betas[1])
        _check_nonneg("eps", eps)
        _check_nonneg("weight_decay", weight_decay)
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay, "amsgrad": amsgrad}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = _run_closure(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                _adam_update(p, p.grad, self.state[p], lr=group["lr"], betas=group["betas"],
                             eps=group["eps"], weight_decay=group["weight_decay"],
                             decoupled=self._decoupled, amsgrad=group["amsgrad"])
        return loss


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay θ ← θ(1 − ηλ).

    Matches ``torch.optim.AdamW``, including its default ``weight_decay=0.01``.
    """

    _decoupled = True

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


# --------------------------------------------------------------------------------------------
# Sign descent and Lion
# --------------------------------------------------------------------------------------------


class SignSGD(Optimizer):
    """Sign descent: θ ← θ − η·sign(g) (Bernstein et al. 2018, signSGD).

    With ``momentum=β > 0`` it is *signum*: m ← βm + (1−β)g, θ ← θ − η·sign(m). Weight decay is
    decoupled (θ ← θ − ηλθ). Every coordinate moves by exactly η whatever its gradient's size,
    which is why sign descent, like Adam, is not slowed by rare classes with tiny gradients.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        _check_nonneg("lr", lr)
        _check_beta("momentum", momentum)
        _check_nonneg("weight_decay", weight_decay)
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = _run_closure(closure)
        for group in self.param_groups:
            lr, beta, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                direction = p.grad
                if beta != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    direction = state["momentum_buffer"].lerp_(p.grad, 1 - beta)  # m ← βm + (1−β)g
                if wd != 0:
                    p.mul_(1 - lr * wd)                           # θ ← θ − ηλθ
                p.add_(direction.sign(), alpha=-lr)               # θ ← θ − η·sign(m)
        return loss


class Lion(Optimizer):
    """Lion, EvoLved Sign Momentum (Chen et al. 2023, Algorithm 2).

    c ← β₁m + (1−β₁)g;  θ ← θ − η(sign(c) + λθ);  m ← β₂m + (1−β₂)g.

    The sign makes every step size η per coordinate, so Lion wants a learning rate 3–10× smaller
    than AdamW's and a weight decay 3–10× larger (paper, Section 5).
    """

    def __init__(self, params: Iterable, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0) -> None:
        _check_nonneg("lr", lr)
        _check_beta("betas[0]", betas[0])
        _check_beta("betas[1]", betas[1])
        _check_nonneg("weight_decay", weight_decay)
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = _run_closure(closure)
        for group in self.param_groups:
            lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p)
                m, g = state["exp_avg"], p.grad
                c = m.lerp(g, 1 - beta1)                          # c = β₁m + (1−β₁)g (interpolation)
                p.mul_(1 - lr * wd)                               # θ ← θ − ηλθ
                p.add_(c.sign_(), alpha=-lr)                      # θ ← θ − η·sign(c)
                m.lerp_(g, 1 - beta2)                             # m ← β₂m + (1−β₂)g (tracking)
        return loss


# --------------------------------------------------------------------------------------------
# Sophia
# --------------------------------------------------------------------------------------------


class Sophia(Optimizer):
    """Sophia, Second-order Clipped Stochastic Optimization (Liu et al. 2023, Algorithm 3).

    m ← β₁m + (1−β₁)g                                  every step
    h ← β₂h + (1−β₂)ĥ                                  every k steps, ĥ ≈ diag(Hessian)
    θ ← θ − ηλθ                                         decoupled weight decay
    θ ← θ − η·clip(m / max(γ·h, ε), 1)                  clip(z, 1) = max(min(z, 1), −1)

    Dividing by the curvature h takes large steps in flat directions and small ones in sharp
    directions (a diagonal Newton step); the clip bounds every coordinate's step by η, which keeps
    the update safe where h is tiny, stale or negative (there it reduces to sign momentum).

    ĥ comes from one of two estimators (see ``minilm.sharpness``):

    * ``"gnb"`` (Sophia-G): Gauss–Newton–Bartlett. Resample labels ŷ from the model's own
      softmax, take the gradient ĝ of the mean cross-entropy on ŷ, and use ĥ = N·ĝ⊙ĝ
      (N = number of predicted tokens). Needs the logits.
    * ``"hutchinson"`` (Sophia-H): ĥ = u⊙(Hu) for a random u with E[uuᵀ] = I, Rademacher (±1,
      the paper's choice and the lower-variance one) or Gaussian (``hutchinson_distribution``).
      Needs a loss whose graph is still alive (one Hessian-vector product by double backward).

    The estimate is refreshed by calling ``update_hessian`` whenever ``hessian_due()`` says so
    (steps 1, k+1, 2k+1, ...; the paper's "t mod k = 1"). Usage with a language model::

        opt = Sophia(model.parameters(), lr=3e-4, hessian_interval=10)   # Sophia-G
        for x, y in batches:                                  # x, y: (B, T) token ids
            logits = model(x)                                 # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            opt.zero_grad()
            if opt.hessian_due():
                opt.update_hessian(logits=logits)             # extra backward on resampled labels;
            loss.backward()                                   # the graph is kept for this backward
            opt.step()

    For Sophia-H, build ``Sophia(..., estimator="hutchinson")`` and call
    ``opt.update_hessian(loss=loss)`` instead.

    Defaults follow the paper's GPT-2 runs (β = (0.965, 0.99), γ = 0.01, k = 10, λ = 0.1).
    State: ``exp_avg`` (m), ``hessian`` (h) and ``step`` per parameter, all in the parameter's dtype.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.965, 0.99),
        gamma: float = 0.01,
        eps: float = 1e-12,
        weight_decay: float = 0.1,
        hessian_interval: int = 10,
        estimator: str = "gnb",
        hutchinson_distribution: str = "rademacher",
    ) -> None:
        _check_nonneg("lr", lr)
        _check_beta("betas[0]", betas[0])
        _check_beta("betas[1]", betas[1])
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0 (it guards the division), got {eps}")
        _check_nonneg("weight_decay", weight_decay)
        if int(hessian_interval) != hessian_interval or hessian_interval < 1:
            raise ValueError(f"hessian_interval must be a positive integer, got {hessian_interval}")
        if estimator not in ("gnb", "hutchinson"):
            raise ValueError(f"estimator must be 'gnb' or 'hutchinson', got {estimator!r}")
        if hutchinson_distribution not in ("rademacher", "gaussian"):
            raise ValueError("hutchinson_distribution must be 'rademacher' or 'gaussian', "
                             f"got {hutchinson_distribution!r}")
        defaults = {"lr": lr, "betas": tuple(betas), "gamma": gamma, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self.hessian_interval = int(hessian_interval)
        self.estimator = estimator
        self.hutchinson_distribution = hutchinson_distribution
        self.steps_taken = 0  # optimizer steps so far; decides when the Hessian estimate is due

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["steps_taken"] = self.steps_taken
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        self.steps_taken = state_dict.pop("steps_taken", 0)
        super().load_state_dict(state_dict)

    def _trainable(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.requires_grad]

    def hessian_due(self) -> bool:
        """True when the next ``step()`` is one at which the paper refreshes h (t mod k = 1)."""
        return self.steps_taken % self.hessian_interval == 0

    @torch.no_grad()
    def update_hessian(
        self,
        *,
        logits: Tensor | None = None,
        loss: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        """Refresh h ← β₂h + (1−β₂)ĥ with one fresh estimate ĥ of the diagonal Hessian.

        Pass ``logits`` (shape (..., V), graph alive) for ``estimator="gnb"`` or the scalar
        ``loss`` (graph alive) for ``estimator="hutchinson"``. Neither call touches ``.grad``
        nor frees the graph, so ``loss.backward()`` can follow.
        """
        params = self._trainable()
        with torch.enable_grad():
            if self.estimator == "gnb":
                if logits is None or loss is not None:
                    raise ValueError("estimator='gnb' needs update_hessian(logits=...), the model's "
                                     "logits of shape (..., vocab); for a loss use estimator='hutchinson'")
                h_hat = gauss_newton_bartlett_diagonal(logits, params, generator=generator)
            else:
                if loss is None or logits is not None:
                    raise ValueError("estimator='hutchinson' needs update_hessian(loss=...), a scalar "
                                     "loss whose graph is still alive (call it before loss.backward())")
                h_hat = hutchinson_diagonal(lambda: loss, params, n_samples=1,
                                            distribution=self.hutchinson_distribution, generator=generator)
        param_to_group = {p: group for group in self.param_groups for p in group["params"]}
        for p, est in zip(params, h_hat):
            state = self._init_state(p)
            beta2 = param_to_group[p]["betas"][1]
            state["hessian"].lerp_(est, 1 - beta2)               # h ← β₂h + (1−β₂)ĥ

    def _init_state(self, p: Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["hessian"] = torch.zeros_like(p)
        return state

    @torch.no_grad()
    def clip_fraction(self) -> float:
        """Share of coordinates whose last step was clipped, |m| ≥ max(γh, ε): there Sophia took a
        sign-momentum step of size η rather than a Newton-like one. Early in training h is still
        small (it starts at 0 and moves by 1 − β₂ per refresh), so nearly every coordinate clips.
        """
        clipped, total = 0, 0
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p, {})
                if "exp_avg" not in state:
                    continue
                ratio = state["exp_avg"] / (group["gamma"] * state["hessian"]).clamp(min=group["eps"])
                clipped += int((ratio.abs() >= 1).sum())
                total += ratio.numel()
        if total == 0:
            raise ValueError("Sophia has taken no step yet: call clip_fraction() after optimizer.step()")
        return clipped / total

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = _run_closure(closure)
        for group in self.param_groups:
            lr, (beta1, _), wd = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._init_state(p)
                state["step"] += 1
                m, h = state["exp_avg"], state["hessian"]
                m.lerp_(p.grad, 1 - beta1)                        # m ← β₁m + (1−β₁)g
                p.mul_(1 - lr * wd)                               # θ ← θ − ηλθ
                ratio = m / (group["gamma"] * h).clamp_(min=group["eps"])  # m / max(γh, ε)
                p.add_(ratio.clamp_(-1.0, 1.0), alpha=-lr)        # θ ← θ − η·clip(ratio, 1)
        self.steps_taken += 1
        return loss


# --------------------------------------------------------------------------------------------
# Muon
# --------------------------------------------------------------------------------------------


def newton_schulz(
    G: Tensor,
    steps: int = 5,
    coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
    eps: float = 1e-7,
) -> Tensor:
    """Approximately orthogonalise a matrix: G = USVᵀ ↦ ≈ UVᵀ (Jordan et al. 2024, Muon).

    Iterates X ← aX + b(XXᵀ)X + c(XXᵀ)²X, an odd polynomial that acts on each singular value
    separately, p(σ) = aσ + bσ³ + cσ⁵, leaving U and V untouched. Starting from X = G/‖G‖_F
    (all σ ≤ 1), the default quintic coefficients push every σ quickly into roughly [0.7, 1.2]:
    not exactly 1, which Muon does not need. ``coefficients=(1.5, -0.5, 0.0)`` is the classical
    cubic Newton–Schulz iteration, slower but converging to exactly UVᵀ.

    G: (..., rows, cols). Works on the short side (transposing tall matrices) so XXᵀ is small.
    """
    if G.ndim < 2:
        raise ValueError(f"newton_schulz needs a matrix (ndim >= 2), got shape {tuple(G.shape)}")
    a, b, c = coefficients
    X = G.float() if G.dtype == torch.float64 else G            # keep float32 even if given float64
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT                                                 # (..., cols, rows): rows ≤ cols
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)          # σ_max ≤ ‖X‖_F = 1
    for _ in range(steps):
        A = X @ X.mT                                             # (..., r, r)
        B = b * A + c * (A @ A)
        X = a * X + B @ X                                        # p(σ) = aσ + bσ³ + cσ⁵
    return X.mT if tall else X


class Muon(Optimizer):
    """Muon, MomentUm Orthogonalized by Newton–Schulz (Jordan et al. 2024), with an AdamW fallback.

    For each matrix parameter W (rows × cols; conv kernels are flattened to rows × rest):
        B ← μB + (1−μ)G                               momentum (EMA form)
        U = G + μ(B − G) if nesterov else B           Nesterov look-ahead, as in the reference code
        O = NewtonSchulz(U) ≈ orthogonal factor of U   every singular value ≈ 1
        W ← W(1 − ηλ) − η·max(1, rows/cols)^½·O

    Orthogonalising equalises the update's singular values, so rare directions of the gradient
    get as large a step as dominant ones.

    Muon is meant for the hidden weight matrices only. Scalars and vectors (biases, norm gains)
    have nothing to orthogonalise, so this optimizer updates them with AdamW (``adamw_*``
    hyper-parameters) inside the same ``step()``. Given a plain iterable of tensors, it splits them
    itself: ndim ≥ 2 → Muon, else AdamW. Embeddings and the output head are matrices but work
    better with AdamW (Jordan et al.); route them there with explicit groups::

        hidden = [p for n, p in model.named_parameters() if p.ndim >= 2 and "emb" not in n and "head" not in n]
        rest = [p for n, p in model.named_parameters() if not any(p is q for q in hidden)]
        opt = Muon([dict(params=hidden, use_muon=True), dict(params=rest, use_muon=False)], lr=0.02)

    Groups with ``use_muon=False`` use ``adamw_lr``, ``adamw_betas``, ``adamw_eps`` and the group's
    ``weight_decay``, unless the group dict sets ``lr``/``betas``/``eps`` itself.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        adamw_lr: float = 3e-4,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
    ) -> None:
        _check_nonneg("lr", lr)
        _check_beta("momentum", momentum)
        _check_nonneg("weight_decay", weight_decay)
        _check_nonneg("adamw_lr", adamw_lr)
        if int(ns_steps) != ns_steps or ns_steps < 1:
            raise ValueError(f"ns_steps must be a positive integer, got {ns_steps}")
        params = list(params)
        if params and isinstance(params[0], Tensor):
            # Plain tensors: matrices go to Muon, the rest to AdamW (empty groups are dropped).
            groups = [{"params": [p for p in params if p.ndim >= 2], "use_muon": True},
                      {"params": [p for p in params if p.ndim < 2], "use_muon": False}]
            params = [g for g in groups if g["params"]]
        else:
            params = [dict(g, use_muon=g.get("use_muon", True)) for g in params]
        for g in params:
            g["params"] = list(g["params"])
            if g["use_muon"] and any(p.ndim < 2 for p in g["params"]):
                raise ValueError("a use_muon=True group holds a parameter with ndim < 2; put biases and "
                                 "norm gains in a group with use_muon=False (AdamW)")
            if not g["use_muon"]:  # AdamW group: its own defaults, filled before the base class does
                g.setdefault("lr", adamw_lr)
                g.setdefault("betas", tuple(adamw_betas))
                g.setdefault("eps", adamw_eps)
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "ns_steps": int(ns_steps),
                    "weight_decay": weight_decay, "use_muon": True}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = _run_closure(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not group["use_muon"]:
                    _adam_update(p, p.grad, self.state[p], lr=group["lr"], betas=group["betas"],
                                 eps=group["eps"], weight_decay=group["weight_decay"],
                                 decoupled=True, amsgrad=False)
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                g, buf, mu = p.grad, state["momentum_buffer"], group["momentum"]
                buf.lerp_(g, 1 - mu)                              # B ← μB + (1−μ)G
                update = g.lerp(buf, mu) if group["nesterov"] else buf   # G + μ(B − G)
                matrix = update.reshape(len(update), -1)          # (rows, cols)
                ortho = newton_schulz(matrix, steps=group["ns_steps"])
                rows, cols = matrix.shape
                scale = max(1.0, rows / cols) ** 0.5              # keeps RMS of tall updates comparable
                p.mul_(1 - group["lr"] * group["weight_decay"])  # W ← W(1 − ηλ)
                p.add_(ortho.view_as(p).to(p.dtype), alpha=-group["lr"] * scale)
        return loss


# --------------------------------------------------------------------------------------------
# By name
# --------------------------------------------------------------------------------------------

OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "adam": Adam,
    "adamw": AdamW,
    "signsgd": SignSGD,
    "lion": Lion,
    "sophia": Sophia,
    "muon": Muon,
}


def make_optimizer(name: str, params: Iterable, **hyperparameters) -> Optimizer:
    """Build one of this module's optimizers by name (``sorted(OPTIMIZERS)`` lists them).

    Example: ``make_optimizer("sgd", model.parameters(), lr=0.1, momentum=0.9)``.
    """
    key = name.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: choose one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[key](params, **hyperparameters)
