"""Tests for minilm.optim against torch.optim, closed forms and known Hessians.

On agreement with torch: our SGD/Adam/AdamW perform the same float32 operations in the same order
as torch's single-tensor (CPU) implementations, so they agree to the last bit. We still assert
the brief's strict bound, max |θ_ours − θ_torch| < 1e-6 after 1000 steps, with parameters of
magnitude O(1) (asserted), so 1e-6 is ~10 float32 ulps: a reordered sum would still pass, a
wrong update rule (a missing bias correction, coupled vs decoupled decay) fails by orders of
magnitude.

On a GPU (the tests that take the ``device`` fixture run on $MINILM_TEST_DEVICE) torch's default
is its multi-tensor ("foreach") loop, so the references are built with ``foreach=False``: the
single-tensor loop is the one our code mirrors operation by operation. Data and initial weights
are drawn on the CPU and moved, so every device starts from the same numbers; estimators that
draw their own random probes get a generator on the device (each device has its own stream, so
those checks are statistical).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minilm import optim
from minilm.optim import (
    SGD,
    Adam,
    AdamW,
    Lion,
    Muon,
    SignSGD,
    Sophia,
    make_optimizer,
    newton_schulz,
)

# --------------------------------------------------------------------------------------------
# Agreement with torch.optim over 1000 steps
# --------------------------------------------------------------------------------------------


def _mlp_problem(device="cpu"):
    torch.manual_seed(0)  # data and weights drawn on the CPU: the same numbers on every device
    X = torch.randn(32, 6)
    y = (X[:, 0] - X[:, 1] > 0).float()
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    return X.to(device), y.to(device), model.to(device)


def _loss(model, X, y):
    return F.binary_cross_entropy_with_logits(model(X).squeeze(-1), y)


def _max_param_diff_over_run(ours_cls, torch_cls, kwargs, device, n_steps=1000):
    X, y, m_ours = _mlp_problem(device)
    m_ref = copy.deepcopy(m_ours)
    opt_ours = ours_cls(m_ours.parameters(), **kwargs)
    opt_ref = torch_cls(m_ref.parameters(), foreach=False, **kwargs)  # the single-tensor loop (see top)
    first_loss = float(_loss(m_ours, X, y).detach())
    worst = 0.0
    for _ in range(n_steps):
        for model, opt in ((m_ours, opt_ours), (m_ref, opt_ref)):
            opt.zero_grad()
            _loss(model, X, y).backward()
            opt.step()
        diff = max(float((a - b).detach().abs().max()) for a, b in zip(m_ours.parameters(), m_ref.parameters()))
        worst = max(worst, diff)
    magnitude = max(float(p.detach().abs().max()) for p in m_ours.parameters())
    return worst, magnitude, first_loss, float(_loss(m_ours, X, y).detach())


SGD_CONFIGS = [
    {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
    {"lr": 0.05, "momentum": 0.8, "dampening": 0.1, "weight_decay": 1e-2},
]


@pytest.mark.parametrize("kwargs", SGD_CONFIGS)
def test_sgd_matches_torch_over_1000_steps(kwargs, device):
    worst, magnitude, first, last = _max_param_diff_over_run(SGD, torch.optim.SGD, kwargs, device)
    assert last < 0.5 * first            # it trained: the comparison is not between idle params
    assert magnitude < 10.0              # so 1e-6 absolute is a strict, ~ulp-level bound
    assert worst < 1e-6, f"max |θ_ours − θ_torch| = {worst:.3g}"


ADAM_CONFIGS = [
    (Adam, torch.optim.Adam, {"lr": 1e-2, "weight_decay": 1e-2}),
    (AdamW, torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
    (AdamW, torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True, "betas": (0.8, 0.99)}),
]


@pytest.mark.parametrize(("ours", "ref", "kwargs"), ADAM_CONFIGS)
def test_adam_family_matches_torch_over_1000_steps(ours, ref, kwargs, device):
    worst, magnitude, first, last = _max_param_diff_over_run(ours, ref, kwargs, device)
    assert last < 0.5 * first
    assert magnitude < 10.0
    assert worst < 1e-6, f"max |θ_ours − θ_torch| = {worst:.3g}"


def test_adamw_decay_is_decoupled_not_l2(device):
    """Sanity of the reference itself: Adam with L2 and AdamW end in different places."""
    X, y, m1 = _mlp_problem(device)
    m2 = copy.deepcopy(m1)
    o1, o2 = Adam(m1.parameters(), lr=1e-2, weight_decay=0.1), AdamW(m2.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(50):
        for m, o in ((m1, o1), (m2, o2)):
            o.zero_grad()
            _loss(m, X, y).backward()
            o.step()
    diff = max(float((a - b).detach().abs().max()) for a, b in zip(m1.parameters(), m2.parameters()))
    assert diff > 1e-3


# --------------------------------------------------------------------------------------------
# Every optimizer reduces a convex loss
# --------------------------------------------------------------------------------------------


def _softmax_regression_data(n=128, d=5, classes=4, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    W_true = 2.0 * torch.randn(classes, d, generator=g)
    y = torch.distributions.Categorical(logits=X @ W_true.T).sample()
    return X.to(device), y.to(device)


CONVEX_CONFIGS = {
    "sgd": {"lr": 0.5, "momentum": 0.9},
    "adam": {"lr": 0.05},
    "adamw": {"lr": 0.05, "weight_decay": 0.01},
    "signsgd": {"lr": 0.01, "momentum": 0.9},
    "lion": {"lr": 0.01},
    "sophia": {"lr": 0.05, "weight_decay": 0.0, "hessian_interval": 5},
    "muon": {"lr": 0.05, "adamw_lr": 0.05},
}


def test_convex_configs_cover_every_optimizer():
    assert set(CONVEX_CONFIGS) == set(optim.OPTIMIZERS)


@pytest.mark.parametrize("name", sorted(CONVEX_CONFIGS))
def test_each_optimizer_reduces_softmax_regression_loss(name, device):
    """Multinomial logistic regression is convex; 200 full-batch steps must cut the loss a lot."""
    torch.manual_seed(0)
    X, y = _softmax_regression_data(device=device)
    model = torch.nn.Linear(5, 4).to(device)
    opt = make_optimizer(name, model.parameters(), **CONVEX_CONFIGS[name])
    first = float(F.cross_entropy(model(X), y).detach())
    for _ in range(200):
        logits = model(X)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        if isinstance(opt, Sophia) and opt.hessian_due():
            opt.update_hessian(logits=logits)
        loss.backward()
        opt.step()
    last = float(F.cross_entropy(model(X), y).detach())
    assert last < 0.6 * first, f"{name}: loss {first:.3f} → {last:.3f}"


def test_sophia_hutchinson_reduces_loss_too(device):
    torch.manual_seed(0)
    X, y = _softmax_regression_data(device=device)
    model = torch.nn.Linear(5, 4).to(device)
    opt = Sophia(model.parameters(), lr=0.05, weight_decay=0.0, estimator="hutchinson")
    first = float(F.cross_entropy(model(X), y).detach())
    for _ in range(200):
        loss = F.cross_entropy(model(X), y)
        opt.zero_grad()
        if opt.hessian_due():
            opt.update_hessian(loss=loss)
        loss.backward()
        opt.step()
    assert float(F.cross_entropy(model(X), y).detach()) < 0.6 * first


# --------------------------------------------------------------------------------------------
# Closed-form steps: Lion, sign descent, Sophia, Muon
# --------------------------------------------------------------------------------------------


def test_lion_matches_closed_form_two_steps(device):
    lr, (b1, b2), wd = 0.1, (0.9, 0.99), 0.5
    theta0 = np.array([0.5, -1.0, 2.0, 0.0], dtype=np.float32)
    g1 = np.array([0.3, 0.2, -0.1, 1e-4], dtype=np.float32)
    g2 = np.array([-0.3, 0.1, 0.005, -1.0], dtype=np.float32)
    p = torch.nn.Parameter(torch.tensor(theta0, device=device))
    opt = Lion([p], lr=lr, betas=(b1, b2), weight_decay=wd)
    # Step 1 from m = 0: c = (1−β₁)g₁, so θ₁ = θ₀ − η(sign(g₁) + λθ₀); then m₁ = (1−β₂)g₁.
    p.grad = torch.tensor(g1, device=device)
    opt.step()
    theta1 = theta0 - lr * (np.sign(g1) + wd * theta0)
    np.testing.assert_allclose(p.detach().cpu().numpy(), theta1, rtol=0, atol=1e-6)
    m1 = (1 - b2) * g1
    np.testing.assert_allclose(opt.state[p]["exp_avg"].cpu().numpy(), m1, rtol=1e-6, atol=1e-9)
    # Step 2: c = β₁m₁ + (1−β₁)g₂ — with these numbers sign(c) ≠ sign(g₂) in coordinate 2 (the
    # momentum term wins), which a "sign of the gradient" implementation would get wrong.
    p.grad = torch.tensor(g2, device=device)
    opt.step()
    c = b1 * m1 + (1 - b1) * g2
    assert np.sign(c[2]) != np.sign(g2[2])
    theta2 = theta1 - lr * (np.sign(c) + wd * theta1)
    np.testing.assert_allclose(p.detach().cpu().numpy(), theta2, rtol=0, atol=1e-6)


def test_signsgd_and_signum_closed_form(device):
    g1, g2 = torch.tensor([0.5, -2.0, 1e-6], device=device), torch.tensor([-1.0, 1.0, 1.0], device=device)
    p = torch.nn.Parameter(torch.tensor([1.0, 1.0, 1.0], device=device))
    opt = SignSGD([p], lr=0.1)
    p.grad = g1.clone()
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.9, 1.1, 0.9], device=device))
    q = torch.nn.Parameter(torch.tensor([1.0, 1.0, 1.0], device=device))
    signum = SignSGD([q], lr=0.1, momentum=0.9)
    for g in (g1, g2):
        q.grad = g.clone()
        signum.step()
    m = 0.9 * (0.1 * g1) + 0.1 * g2          # m₂ = β(1−β)g₁ + (1−β)g₂ → signs (+, −, +)
    expected = torch.tensor([1.0, 1.0, 1.0], device=device) - 0.1 * torch.sign(0.1 * g1) - 0.1 * torch.sign(m)
    torch.testing.assert_close(q.detach(), expected)


def test_sophia_step_closed_form_on_diagonal_quadratic(device):
    """For a diagonal Hessian a Rademacher probe is exact: u⊙(Hu) = diag(H) since u_i² = 1."""
    d = torch.tensor([4.0, 0.01, 100.0, 1.0], device=device)
    theta0 = torch.tensor([1.0, -1.0, 0.5, 0.1], device=device)
    lr, (b1, b2), gamma, wd = 0.1, (0.9, 0.95), 0.5, 0.1
    p = torch.nn.Parameter(theta0.clone())
    opt = Sophia([p], lr=lr, betas=(b1, b2), gamma=gamma, weight_decay=wd, estimator="hutchinson",
                 hessian_interval=3)
    due = []
    for _ in range(2):
        loss = 0.5 * (d * p * p).sum()
        opt.zero_grad()
        due.append(opt.hessian_due())
        if due[-1]:
            opt.update_hessian(loss=loss)
        loss.backward()
        opt.step()
        if len(due) == 1:
            h = (1 - b2) * d
            torch.testing.assert_close(opt.state[p]["hessian"], h)
            m = (1 - b1) * d * theta0
            ratio = torch.clamp(m / torch.clamp(gamma * h, min=1e-12), -1, 1)
            expected = theta0 * (1 - lr * wd) - lr * ratio
            torch.testing.assert_close(p.detach(), expected)
            # Clipping is active on some coordinates and not on others with these numbers.
            assert (ratio.abs() == 1).any() and (ratio.abs() < 1).any()
            assert opt.clip_fraction() == float((ratio.abs() == 1).float().mean())
    assert due == [True, False]                      # refreshed at t = 1, 1 + k, ...
    assert not opt.hessian_due()
    opt.zero_grad()
    (0.5 * (d * p * p).sum()).backward()
    opt.step()                                       # t = 3 → the next (t = 4 = 1 + k) is due
    assert opt.hessian_due()
    torch.testing.assert_close(opt.state[p]["hessian"], (1 - b2) * d)   # unchanged when not refreshed


def test_sophia_estimator_argument_errors_are_clear():
    p = torch.nn.Parameter(torch.ones(3))
    loss = (p * p).sum()
    with pytest.raises(ValueError, match="logits"):
        Sophia([p]).update_hessian(loss=loss)
    with pytest.raises(ValueError, match="loss"):
        Sophia([p], estimator="hutchinson").update_hessian(logits=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="estimator"):
        Sophia([p], estimator="exact")


def test_sophia_state_dict_round_trip_keeps_schedule():
    p = torch.nn.Parameter(torch.ones(3))
    opt = Sophia([p], hessian_interval=4, estimator="hutchinson")
    for _ in range(4):
        p.grad = torch.ones(3)
        opt.step()
    q = torch.nn.Parameter(torch.ones(3))
    opt2 = Sophia([q], hessian_interval=4, estimator="hutchinson")
    assert opt2.hessian_due() and opt2.steps_taken == 0
    opt.steps_taken -= 1                              # mid-cycle: t = 3 of k = 4, not due
    opt2.load_state_dict(opt.state_dict())
    assert opt2.steps_taken == 3 and not opt2.hessian_due()
    torch.testing.assert_close(opt2.state[q]["exp_avg"], opt.state[p]["exp_avg"])


def _svd_check(G, X):
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    return U, S, Vh, torch.linalg.svdvals(X)


# G is built on the CPU and moved; newton_schulz runs on the device; the SVDs that check it run
# on the CPU (MPS has no SVD).
@pytest.mark.parametrize("shape", [(32, 64), (64, 32), (48, 48)])
def test_newton_schulz_singular_values_near_one_and_vectors_kept(shape, device):
    torch.manual_seed(0)
    if shape[0] == shape[1]:   # a square Gaussian matrix has σ_min ≈ 0; keep it well-posed
        G = torch.linalg.qr(torch.randn(shape)).Q @ torch.diag(torch.linspace(0.1, 3.0, shape[0])) \
            @ torch.linalg.qr(torch.randn(shape)).Q.T
    else:
        G = torch.randn(shape)
    X = newton_schulz(G.to(device)).cpu()
    U, S, Vh, sv = _svd_check(G, X)
    # The quintic maps every normalised σ into ≈ [0.7, 1.2] after 5 steps (Jordan et al. 2024).
    assert sv.min() > 0.6 and sv.max() < 1.25, (float(sv.min()), float(sv.max()))
    # It acts on singular values only: Uᵀ X V is diagonal (X shares G's singular vectors).
    core = U.T @ X @ Vh.T
    off = core - torch.diag(torch.diagonal(core))
    assert float(off.abs().max()) < 1e-3
    assert float(torch.diagonal(core).min()) > 0.6


def test_newton_schulz_of_orthogonal_matrix_stays_orthogonal(device):
    torch.manual_seed(1)
    Q = torch.linalg.qr(torch.randn(16, 16)).Q
    X = newton_schulz(Q.to(device)).cpu()
    c = float((X * Q).sum() / (Q * Q).sum())         # best scalar fit X ≈ cQ
    assert 0.6 < c < 1.25
    assert float((X - c * Q).abs().max()) < 1e-4     # all σ equal → still exactly a multiple of Q
    # The classical cubic iteration converges to exactly UVᵀ = Q (and to UVᵀ in general).
    torch.testing.assert_close(newton_schulz(Q.to(device), steps=30, coefficients=(1.5, -0.5, 0.0)).cpu(), Q,
                               atol=1e-5, rtol=0)
    G = torch.randn(8, 20)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    torch.testing.assert_close(newton_schulz(G.to(device), steps=40, coefficients=(1.5, -0.5, 0.0)).cpu(), U @ Vh,
                               atol=1e-4, rtol=0)


def test_muon_step_closed_form_and_adamw_fallback(device):
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.randn(8, 2).to(device))   # tall: scale = √(8/2) = 2
    b = torch.nn.Parameter(torch.randn(8).to(device))
    b_ref = torch.nn.Parameter(b.detach().clone())
    W0 = W.detach().clone()
    lr, mu, wd = 0.02, 0.95, 0.1
    opt = Muon([W, b], lr=lr, momentum=mu, weight_decay=wd, adamw_lr=1e-2, adamw_betas=(0.9, 0.95))
    assert [g["use_muon"] for g in opt.param_groups] == [True, False]
    ref = torch.optim.AdamW([b_ref], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=wd, foreach=False)
    gW = torch.randn(8, 2).to(device)
    for step in range(5):
        gb = torch.randn(8).to(device)
        W.grad, b.grad, b_ref.grad = gW.clone(), gb.clone(), gb.clone()
        opt.step()
        ref.step()
        if step == 0:
            buf = (1 - mu) * gW                        # B₁ = (1−μ)G
            update = gW + mu * (buf - gW)              # Nesterov look-ahead
            expected = W0 * (1 - lr * wd) - lr * 2.0 * newton_schulz(update)
            torch.testing.assert_close(W.detach(), expected)
    torch.testing.assert_close(b.detach(), b_ref.detach(), atol=1e-6, rtol=0)


def test_muon_rejects_vectors_in_a_muon_group():
    with pytest.raises(ValueError, match="use_muon=False"):
        Muon([{"params": [torch.nn.Parameter(torch.ones(3))], "use_muon": True}])


# --------------------------------------------------------------------------------------------
# Sophia's curvature estimators are unbiased
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_sophia_hutchinson_estimate_is_unbiased(distribution, device):
    """f = ½θᵀAθ, diag(H) = diag(A). Mean of n one-sample estimates vs diag(A), within 5 standard
    errors computed from A: Var = Σ_{j≠i} A_ij² (Rademacher), plus 2A_ii² (Gaussian)."""
    g = torch.Generator().manual_seed(0)
    B = torch.randn(6, 6, generator=g)
    A = (B @ B.T / 6 + torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))).to(device)
    p = torch.nn.Parameter(torch.randn(6, generator=g).to(device))
    probes = torch.Generator(device=device).manual_seed(0)    # the probes are drawn where p lives
    opt = Sophia([p], betas=(0.9, 0.0), estimator="hutchinson",      # β₂ = 0: h = ĥ after each update
                 hutchinson_distribution=distribution)
    n = 2000
    samples = torch.empty(n, 6, device=device)
    for i in range(n):
        opt.update_hessian(loss=0.5 * p @ A @ p, generator=probes)
        samples[i] = opt.state[p]["hessian"]
    diag = torch.diagonal(A)
    var = (A**2).sum(1) - diag**2 + (2 * diag**2 if distribution == "gaussian" else 0)
    # The samples' spread matches the derived variance (so the tolerance below is the right one).
    torch.testing.assert_close(samples.var(0), var, rtol=0.2, atol=0)
    tol = 5 * (var / n).sqrt()
    assert (tol < 0.25 * diag).all()                       # the test can tell a biased estimator apart
    assert ((samples.mean(0) - diag).abs() < tol).all(), (samples.mean(0), diag, tol)


def test_sophia_gnb_estimate_is_unbiased_on_softmax_regression(device):
    """Softmax regression logits = XWᵀ + b. Gauss–Newton diagonal in closed form:
    G[W_cd] = (1/N) Σ_n p_nc(1−p_nc) x_nd²,  G[b_c] = (1/N) Σ_n p_nc(1−p_nc);
    for a linear model it equals the Hessian (checked with torch.autograd.functional.hessian)."""
    g = torch.Generator().manual_seed(0)
    N, D, V = 32, 3, 4
    X = torch.randn(N, D, generator=g).to(device)
    model = torch.nn.Linear(D, V).to(device)
    with torch.no_grad():
        model.weight.copy_(torch.randn(V, D, generator=g))
        model.bias.copy_(torch.randn(V, generator=g))
    P = torch.softmax(model(X), -1).detach()                     # (N, V)
    w = P * (1 - P)                                              # (N, V)
    gn_W = (w.T @ X**2) / N                                      # (V, D)
    gn_b = w.mean(0)                                             # (V,)

    def loss_of(flat):                                           # mean CE as a function of (W, b)
        Wf, bf = flat[: V * D].view(V, D), flat[V * D:]
        return F.cross_entropy(X @ Wf.T + bf, torch.zeros(N, dtype=torch.long, device=device))

    flat = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])
    H = torch.autograd.functional.hessian(loss_of, flat)
    torch.testing.assert_close(torch.diagonal(H), torch.cat([gn_W.reshape(-1), gn_b]), atol=1e-6, rtol=1e-5)

    opt = Sophia(model.parameters(), betas=(0.9, 0.0))          # β₂ = 0: h = one fresh estimate
    n = 3000
    samples = torch.empty(n, V * D + V, device=device)
    labels = torch.Generator(device=device).manual_seed(0)      # the resampled labels: on the device
    for i in range(n):
        opt.update_hessian(logits=model(X), generator=labels)
        samples[i] = torch.cat([opt.state[model.weight]["hessian"].reshape(-1), opt.state[model.bias]["hessian"]])
    truth = torch.cat([gn_W.reshape(-1), gn_b])
    tol = 5 * samples.std(0) / math.sqrt(n)                      # 5 standard errors (CLT)
    assert (tol < 0.25 * truth).all()                            # informative: a wrong scale would fail
    assert ((samples.mean(0) - truth).abs() < tol).all(), (samples.mean(0), truth, tol)
    assert all(p.grad is None for p in model.parameters())       # the estimator leaves .grad alone


# --------------------------------------------------------------------------------------------
# Hygiene: float32 state, clear errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_no_float64_in_optimizer_state(name, device):
    model = torch.nn.Linear(4, 3).to(device)
    opt = make_optimizer(name, model.parameters(), **CONVEX_CONFIGS[name])   # with momentum state
    logits = model(torch.randn(5, 4).to(device))
    loss = F.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1], device=device))
    if isinstance(opt, Sophia):
        opt.update_hessian(logits=logits)
    loss.backward()
    opt.step()
    tensors = [v for state in opt.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    assert tensors and all(t.dtype == torch.float32 for t in tensors)
    assert all(t.device.type == device.type for t in tensors)  # state lives with the parameters


def test_bad_hyperparameters_raise_clear_errors():
    p = [torch.nn.Parameter(torch.ones(2))]
    with pytest.raises(ValueError, match="lr"):
        SGD(p, lr=-1.0)
    with pytest.raises(ValueError, match="nesterov"):
        SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        AdamW(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("adagrad", p)


def test_sophia_clip_fraction_needs_a_step():
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="no step yet"):
        Sophia([p]).clip_fraction()
