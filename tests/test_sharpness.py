"""Tests for minilm.sharpness against explicit Hessians of small problems.

References: closed forms for quadratics and logistic regression, and
torch.autograd.functional.hessian (the full matrix) with torch.linalg.eigvalsh for a small MLP.

Devices: the tests that take the ``device`` fixture compute the Hessian-vector products, Lanczos
and power iterations on $MINILM_TEST_DEVICE; data are drawn on the CPU and moved, and the explicit
Hessians and their eigenvalues (the references) are computed on the CPU (MPS has no eigvalsh).
The random start vectors and probes are drawn where the parameters live, from a generator on the
device (each device has its own stream: the statistical tolerances hold for any of them).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from minilm import optim
from minilm.sharpness import (
    HessianOperator,
    adam_preconditioner,
    adam_sharpness_threshold,
    gauss_newton_bartlett_diagonal,
    gd_sharpness_threshold,
    hutchinson_diagonal,
    hutchinson_trace,
    hvp,
    lanczos,
    momentum_sharpness_threshold,
    power_iteration,
    preconditioned_sharpness,
    top_eigenvalue,
)

# --------------------------------------------------------------------------------------------
# Small problems with explicit Hessians
# --------------------------------------------------------------------------------------------

SHAPES = [(5, 3), (5,), (1, 5), (1,)]         # a 3 → 5 → 1 tanh MLP: 26 parameters
DIM = sum(math.prod(s) for s in SHAPES)


def _split(theta):
    out, i = [], 0
    for s in SHAPES:
        out.append(theta[i:i + math.prod(s)].view(s))
        i += math.prod(s)
    return out


def _mlp_loss(X, y, W1, b1, W2, b2):
    return ((torch.tanh(X @ W1.T + b1) @ W2.T + b2).squeeze(-1) - y).pow(2).mean()


@pytest.fixture(scope="module")
def mlp_problem():
    """(X, y, theta, explicit Hessian (DIM, DIM)) on the CPU: computed once per module."""
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(40, 3, generator=g), torch.randn(40, generator=g)
    theta = 0.8 * torch.randn(DIM, generator=g)
    H = torch.autograd.functional.hessian(lambda t: _mlp_loss(X, y, *_split(t)), theta)
    return X, y, theta, H


@pytest.fixture
def mlp(mlp_problem, device):
    """(loss_fn, params, explicit Hessian (DIM, DIM)): the loss and parameters on the device, H on the CPU."""
    X, y, theta, H = mlp_problem
    X, y = X.to(device), y.to(device)
    params = [p.detach().clone().to(device).requires_grad_() for p in _split(theta)]
    return (lambda: _mlp_loss(X, y, *params)), params, H


def _gen(device, seed):
    """A seeded generator on ``device``: the library draws its random vectors where the parameters are."""
    return torch.Generator(device=device).manual_seed(seed)


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


# --------------------------------------------------------------------------------------------
# Hessian-vector products
# --------------------------------------------------------------------------------------------


def test_hvp_of_quadratic_is_A_v_across_two_tensors(device):
    """f(a, b) = ½ zᵀAz + cᵀz with z = [a; vec(b)]: H = A, including the a–b cross block."""
    g = torch.Generator().manual_seed(1)
    M = torch.randn(7, 7, generator=g)
    A, c = M + M.T, torch.randn(7, generator=g)
    a = torch.randn(3, generator=g).to(device).requires_grad_()
    b = torch.randn(2, 2, generator=g).to(device).requires_grad_()
    A_dev, c_dev = A.to(device), c.to(device)

    def loss_fn():
        z = torch.cat([a, b.reshape(-1)])
        return 0.5 * z @ A_dev @ z + c_dev @ z

    v = torch.randn(7, generator=g)
    out = hvp(loss_fn, [a, b], [v[:3].to(device), v[3:].view(2, 2).to(device)])
    torch.testing.assert_close(_flat(out).cpu(), A @ v, atol=1e-5, rtol=1e-5)


def test_hvp_of_logistic_regression_matches_closed_form(device):
    """Mean logistic loss: H = (1/N) Xᵀ diag(p(1−p)) X."""
    g = torch.Generator().manual_seed(2)
    X = torch.randn(50, 4, generator=g)
    y = (torch.rand(50, generator=g) < 0.5).float()
    w0 = torch.randn(4, generator=g)
    H = X.T @ (torch.sigmoid(X @ w0) * (1 - torch.sigmoid(X @ w0)))[:, None].mul(X) / 50  # on the CPU
    v = torch.randn(4, generator=g)
    X, y, w = X.to(device), y.to(device), w0.to(device).requires_grad_()
    (out,) = hvp(lambda: F.binary_cross_entropy_with_logits(X @ w, y), w, v.to(device))
    torch.testing.assert_close(out.cpu(), H @ v, atol=1e-6, rtol=1e-5)


def test_hvp_matches_explicit_hessian_of_mlp(mlp, device):
    loss_fn, params, H = mlp
    v = torch.randn(DIM, generator=torch.Generator().manual_seed(3))
    op = HessianOperator.from_loss_fn(loss_fn, params)
    torch.testing.assert_close(op.matvec_flat(v.to(device)).cpu(), H @ v, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(_flat(hvp(loss_fn, params, _split(v.to(device)))).cpu(), H @ v, atol=1e-5, rtol=1e-4)


def test_hessian_operator_handles_parameters_the_loss_ignores_or_uses_linearly(device):
    a = torch.tensor([1.0, 2.0], device=device, requires_grad=True)
    b = torch.tensor([3.0], device=device, requires_grad=True)        # linear: zero Hessian rows
    c = torch.tensor([5.0], device=device, requires_grad=True)        # unused
    op = HessianOperator((a**3).sum() + 2 * b.sum(), [a, b, c])
    out = op.matvec_flat(torch.ones(4, device=device))
    torch.testing.assert_close(out.cpu(), torch.tensor([6.0, 12.0, 0.0, 0.0]))   # diag(6a) on a


# --------------------------------------------------------------------------------------------
# Top eigenvalue: power iteration = Lanczos = eigvalsh
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["power", "lanczos"])
def test_top_eigenvalue_matches_eigvalsh_on_mlp(mlp, method, device):
    loss_fn, params, H = mlp
    eig = torch.linalg.eigvalsh(H)
    assert eig[0] < 0 < eig[-1]                     # an indefinite Hessian, a real test
    got = top_eigenvalue(loss_fn, params, method=method, generator=_gen(device, 0))
    assert got == pytest.approx(float(eig[-1]), rel=1e-3)


def test_power_iteration_and_lanczos_find_the_largest_not_the_dominant_eigenvalue(device):
    """Eigenvalues {−5, −1, 0.5, 2}: λ_max = 2 although |−5| dominates."""
    Q = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(4))).Q
    A = (Q @ torch.diag(torch.tensor([-5.0, -1.0, 0.5, 2.0])) @ Q.T).to(device)
    w = torch.zeros(4, device=device, requires_grad=True)
    g = _gen(device, 4)

    def loss_fn():
        return 0.5 * w @ A @ w

    lam_dom, vec = power_iteration(lambda v: A @ v, 4, n_iter=500, tol=1e-5, generator=g, device=device)
    assert lam_dom == pytest.approx(-5.0, rel=1e-4)
    torch.testing.assert_close(A @ vec, lam_dom * vec, atol=1e-4, rtol=0)
    for method in ("power", "lanczos"):
        assert top_eigenvalue(loss_fn, w, method=method, generator=g) == pytest.approx(2.0, rel=1e-4)


def test_lanczos_with_full_krylov_space_gives_every_eigenvalue(device):
    M = torch.randn(12, 12, generator=torch.Generator().manual_seed(5))
    A = M @ M.T / 12
    A_dev = A.to(device)
    ritz = lanczos(lambda v: A_dev @ v, 12, n_iter=12, generator=_gen(device, 5), device=device)
    torch.testing.assert_close(ritz.cpu(), torch.linalg.eigvalsh(A), atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# Hutchinson trace and diagonal, Gauss–Newton–Bartlett
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hutchinson_trace_within_statistical_tolerance(mlp, distribution, device):
    """One sample uᵀHu has variance 2Σ_{i≠j}H_ij² (Rademacher) or 2‖H‖_F² (Gaussian); the mean of
    n samples must land within 5 standard errors of tr(H)."""
    loss_fn, params, H = mlp
    n = 1000
    est = hutchinson_trace(loss_fn, params, n_samples=n, distribution=distribution, generator=_gen(device, 6))
    fro2, diag2 = float((H**2).sum()), float((torch.diagonal(H) ** 2).sum())
    var = 2 * (fro2 - diag2) if distribution == "rademacher" else 2 * fro2
    tol = 5 * math.sqrt(var / n)
    assert tol < 0.2 * abs(float(H.trace()))       # tight enough to be informative
    assert abs(est - float(H.trace())) < tol


def test_hutchinson_diagonal_within_statistical_tolerance(mlp, device):
    loss_fn, params, H = mlp
    n = 2000
    est = _flat(hutchinson_diagonal(loss_fn, params, n_samples=n, generator=_gen(device, 7))).cpu()
    var = (H**2).sum(1) - torch.diagonal(H) ** 2       # Rademacher: Σ_{j≠i} H_ij²
    tol = 5 * (var / n).sqrt() + 1e-6
    assert ((est - torch.diagonal(H)).abs() < tol).all()
    # On a diagonal Hessian a Rademacher probe is exact with a single sample.
    w = torch.tensor([1.0, -2.0, 0.5], device=device, requires_grad=True)
    curvature = torch.tensor([3.0, 1.0, 7.0], device=device)
    (d,) = hutchinson_diagonal(lambda: (curvature * w**2).sum(), w)
    torch.testing.assert_close(d.cpu(), torch.tensor([6.0, 2.0, 14.0]))


def test_gnb_keeps_graph_and_grad_untouched(device):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 4).to(device)
    x, y = torch.randn(6, 3).to(device), torch.tensor([0, 1, 2, 3, 0, 1], device=device)
    logits = model(x)
    est = gauss_newton_bartlett_diagonal(logits, list(model.parameters()))
    assert [e.shape for e in est] == [p.shape for p in model.parameters()]
    assert all((e >= 0).all() for e in est)                 # N·ĝ² is a square
    assert all(p.grad is None for p in model.parameters())
    F.cross_entropy(logits, y).backward()                   # the graph is still usable


# --------------------------------------------------------------------------------------------
# Preconditioned sharpness for Adam
# --------------------------------------------------------------------------------------------


def _explicit_preconditioned_top_eig(H, opt, params, beta2, eps):
    """λ_max(P^{-1/2} H P^{-1/2}) with P built here from the optimizer's raw state."""
    d = []
    for p in params:
        st = opt.state[p]
        v_hat = st["exp_avg_sq"] / (1 - beta2 ** float(st["step"]))
        d.append(v_hat.sqrt() + eps)
    s = _flat(d).rsqrt().cpu()                       # H and eigvalsh: on the CPU
    return float(torch.linalg.eigvalsh(s[:, None] * H * s[None, :])[-1])


@pytest.mark.parametrize("opt_cls", [torch.optim.AdamW, optim.AdamW, torch.optim.Adam, optim.Adam])
def test_preconditioned_sharpness_matches_explicit_eigvals(mlp, mlp_problem, opt_cls, device):
    _, params0, _ = mlp
    params = [p.detach().clone().requires_grad_() for p in params0]
    X_cpu, y_cpu = mlp_problem[:2]
    X, y = X_cpu.to(device), y_cpu.to(device)
    g = _gen(device, 0)

    def loss_fn2():
        return _mlp_loss(X, y, *params)

    opt = opt_cls(params, lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    for _ in range(20):
        opt.zero_grad()
        loss_fn2().backward()
        opt.step()
    theta = _flat([p.detach() for p in params]).cpu()
    H = torch.autograd.functional.hessian(lambda t: _mlp_loss(X_cpu, y_cpu, *_split(t)), theta)
    expected = _explicit_preconditioned_top_eig(H, opt, params, beta2=0.99, eps=1e-8)
    # The preconditioner really reshapes the spectrum (else this test would not test it).
    assert abs(expected - float(torch.linalg.eigvalsh(H)[-1])) > 0.5 * abs(expected)
    got_l = preconditioned_sharpness(loss_fn2, params, opt, method="lanczos", n_iter=DIM, generator=g)
    got_p = preconditioned_sharpness(loss_fn2, params, opt, method="power", n_iter=2000, generator=g)
    assert got_l == pytest.approx(expected, rel=1e-3)
    assert got_p == pytest.approx(expected, rel=1e-3)


def test_adam_preconditioner_reads_amsgrad_max_and_rejects_non_adam(device):
    w = torch.nn.Parameter(torch.ones(3, device=device))
    opt = torch.optim.AdamW([w], lr=0.1, amsgrad=True, betas=(0.9, 0.5))
    for g in (torch.tensor([3.0, 1.0, 1.0]), torch.tensor([0.1, 1.0, 2.0])):
        w.grad = g.to(device)
        opt.step()
    (P,) = adam_preconditioner(opt, [w])
    v_max = torch.maximum(0.5 * torch.tensor([9.0, 1.0, 1.0], device=device), opt.state[w]["exp_avg_sq"])
    torch.testing.assert_close(P, (v_max / (1 - 0.5**2)).sqrt() + 1e-8)
    with pytest.raises(ValueError, match="Adam"):
        adam_preconditioner(torch.optim.SGD([w], lr=0.1), [w])
    with pytest.raises(ValueError, match="step"):
        fresh = torch.nn.Parameter(torch.ones(2))
        adam_preconditioner(optim.AdamW([fresh]), [fresh])           # no step taken yet


# --------------------------------------------------------------------------------------------
# Edge-of-stability thresholds, checked by simulation on a 1-D quadratic
# --------------------------------------------------------------------------------------------


def _final_distance(make_opt, curvature, n=3000):
    """Run an optimizer on f(x) = ½·curvature·x² from x = 1; |x| at the end (inf once |x| > 1e6)."""
    x = torch.nn.Parameter(torch.tensor([1.0]))
    opt = make_opt([x])
    for _ in range(n):
        opt.zero_grad()
        (0.5 * curvature * x**2).sum().backward()
        opt.step()
        if abs(float(x.detach())) > 1e6:
            return math.inf
    return abs(float(x.detach()))


@pytest.mark.parametrize(
    ("threshold", "factory"),
    [
        (gd_sharpness_threshold(0.1), lambda ps: optim.SGD(ps, lr=0.1)),
        (momentum_sharpness_threshold(0.1, 0.9), lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9)),
        # Adam with a frozen preconditioner (here P = 1) is EMA momentum m ← β₁m + (1−β₁)g,
        # x ← x − ηm: SGD with momentum β₁ and dampening β₁ (its first step differs, which does
        # not change stability; bias correction → 1).
        (adam_sharpness_threshold(0.1, 0.9), lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.9)),
    ],
)
def test_thresholds_separate_convergence_from_divergence(threshold, factory):
    assert _final_distance(factory, 0.98 * threshold) < 1e-3
    assert _final_distance(factory, 1.02 * threshold) == math.inf


def test_threshold_values():
    assert gd_sharpness_threshold(0.01) == pytest.approx(200.0)
    assert adam_sharpness_threshold(0.01, 0.9) == pytest.approx(3800.0)     # 38/η
    assert momentum_sharpness_threshold(0.01, 0.0) == pytest.approx(200.0)
    with pytest.raises(ValueError):
        gd_sharpness_threshold(0.0)


def test_bad_inputs_raise_clear_errors():
    w = torch.ones(3, requires_grad=True)
    with pytest.raises(ValueError, match="scalar"):
        HessianOperator(w * 2, [w])
    with pytest.raises(ValueError, match="requires_grad"):
        HessianOperator((w * 2).sum(), [torch.ones(3)])
    with pytest.raises(ValueError, match="method"):
        top_eigenvalue(lambda: (w**2).sum(), [w], method="qr")
    with pytest.raises(ValueError, match="distribution"):
        hutchinson_trace(lambda: (w**2).sum(), [w], distribution="uniform")


# --------------------------------------------------------------------------------------------
# The edge-of-stability experiment
# --------------------------------------------------------------------------------------------


def test_track_sharpness_on_a_quadratic_is_constant_and_detects_divergence(device):
    """On ½xᵀAx the Hessian is A everywhere: the trace reads λ_max(A) at every measurement."""
    from minilm.sharpness import track_sharpness

    A = torch.diag(torch.tensor([4.0, 1.0, 0.25], device=device))
    x = torch.tensor([1.0, -2.0, 3.0], device=device, requires_grad=True)
    loss_fn = lambda: 0.5 * x @ A @ x  # noqa: E731
    trace = track_sharpness(loss_fn, [x], optim.SGD([x], lr=0.4), n_steps=20, every=5, n_iter=3)
    assert trace.steps == [0, 5, 10, 15, 20] and len(trace.loss) == 21 and not trace.diverged
    assert trace.sharpness == pytest.approx([4.0] * 5, rel=1e-5)
    assert trace.loss[-1] < 1e-2 * trace.loss[0] and trace.preconditioned == []

    y = torch.tensor([1.0, -2.0, 3.0], device=device, requires_grad=True)  # η = 0.6 > 2/λ_max = 0.5: diverges
    bad = track_sharpness(lambda: 0.5 * y @ A @ y, [y], optim.SGD([y], lr=0.6), n_steps=500, every=50,
                          n_iter=3, divergence_limit=1e4)
    assert bad.diverged and len(bad.loss) < 500 and bad.loss[-1] <= 1e4


def test_track_sharpness_preconditioned_matches_explicit_eigvals(device):
    """Adam's λ_max(P⁻¹H) from the trace equals eigvalsh of P^{-1/2} A P^{-1/2} built by hand."""
    from minilm.sharpness import track_sharpness

    A = torch.tensor([[3.0, 1.0], [1.0, 2.0]])
    A_dev = A.to(device)
    x = torch.tensor([1.0, -1.0], device=device, requires_grad=True)
    opt = optim.Adam([x], lr=0.05)
    trace = track_sharpness(lambda: 0.5 * x @ A_dev @ x, [x], opt, n_steps=4, every=4, preconditioned=True, n_iter=2)
    assert math.isnan(trace.preconditioned[0])               # step 0: Adam has no v yet
    P = adam_preconditioner(opt, [x])[0].cpu()               # after 4 steps; eigvalsh on the CPU
    s = P.rsqrt()
    expected = torch.linalg.eigvalsh(s[:, None] * A * s[None, :])[-1]
    assert trace.preconditioned[1] == pytest.approx(float(expected), rel=1e-4)


def test_gradient_descent_reaches_the_edge_of_stability_on_the_toy_mlp(device):
    """Cohen et al. (2021) in miniature: sharpness starts well below 2/η, then hovers at it."""
    from minilm.sharpness import track_sharpness
    from minilm.toy_problems import random_label_mlp

    lr, steps = 0.4, 600
    model, loss_fn = random_label_mlp(seed=0, device=device)  # data and weights drawn on the CPU, moved
    params = list(model.parameters())
    trace = track_sharpness(loss_fn, params, torch.optim.SGD(params, lr=lr), n_steps=steps, every=20)
    ratio = torch.tensor(trace.sharpness) / gd_sharpness_threshold(lr)
    tail = ratio[torch.tensor(trace.steps) >= 0.6 * steps]
    assert ratio[0] < 0.7                                    # progressive sharpening starts low
    assert 0.95 < float(tail.mean()) < 1.15                  # and settles at 2/η
    assert not trace.diverged and trace.loss[-1] < 0.2 * trace.loss[0]


def test_track_sharpness_rejects_bad_arguments():
    from minilm.sharpness import track_sharpness

    x = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="every"):
        track_sharpness(lambda: (x**2).sum(), [x], optim.SGD([x], lr=0.1), n_steps=3, every=0)
    with pytest.raises(ValueError, match="n_steps"):
        track_sharpness(lambda: (x**2).sum(), [x], optim.SGD([x], lr=0.1), n_steps=-1)
