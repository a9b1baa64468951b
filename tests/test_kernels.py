"""minilm.kernels (the fast path) computes the same math as the reference layers of minilm.models.gpt.

Tolerances. float32 carries ~7 significant digits (eps = 1.2e-7). The kernels and the references
evaluate the same formulas in a different order (a fused LayerNorm backward, a complex multiply),
so on O(1) values they differ by a few hundred ulps at most: ``atol = rtol = 1e-5`` for a single
layer, 1e-4 for gradients through a whole model (sums over many terms and layers). A wrong term
(a missing factor r, a sign, a swapped pair) changes results by O(0.1), four orders above these.
Hand-written backward passes are also checked against finite differences in float64 (gradcheck),
and their second derivatives (gradgradcheck), which Hessian-vector products need.

Devices. The tests that take the ``device`` fixture run the kernels on $MINILM_TEST_DEVICE (on a
GPU the backward passes call CUDA kernels: ``native_layer_norm_backward``, complex multiplies);
inputs are drawn on the CPU from seeded generators and moved, and non-contiguous layouts are
made on the device itself (moving a strided view would make it contiguous). The float64
gradchecks skip on MPS, which has no float64. On CUDA the session runs with TF32 off
(``tests/conftest.py``), so the float32 tolerances above hold there too.
"""

import ast
import inspect

import pytest
import torch

import minilm.kernels as K
from minilm.models import GPT, GPTConfig
from minilm.models.gpt import apply_rope, rms_norm, rope_angles
from minilm.models.registry import model_from_config

TOL = dict(atol=1e-5, rtol=1e-5)


def _leaf(t):
    """A leaf copy of t that keeps t's strides (``clone()`` would make a view with gaps contiguous)."""
    leaf = torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device=t.device)
    return leaf.copy_(t).requires_grad_()


def _grads(fn, *inputs, dy):
    """Output of fn and the gradients of sum(fn(*inputs) * dy) with respect to every input."""
    leaves = [_leaf(t.detach()) for t in inputs]
    out = fn(*leaves)
    (out * dy).sum().backward()
    return out.detach(), [t.grad for t in leaves]


def _strided(shape, generator, device):
    """A non-contiguous tensor of ``shape`` on ``device``: every other column of a wider tensor, transposed."""
    wide = torch.randn(*shape[:-2], shape[-1], 2 * shape[-2], generator=generator).to(device)
    return wide[..., ::2].transpose(-1, -2)


def _skip_float64_on_mps(device):
    if device.type == "mps":
        pytest.skip("MPS has no float64: the finite-difference checks need it")


def test_cuda_tests_run_float32_matmuls_without_tf32(device):
    # The tolerances of the device tests are derived for float32; TF32 (10-bit mantissa) would
    # be ~1e-3 off. tests/conftest.py switches it off for the session on CUDA.
    if device.type != "cuda":
        pytest.skip("TF32 is a CUDA setting")
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    g = torch.Generator().manual_seed(9)
    a, b = torch.randn(64, 256, generator=g), torch.randn(256, 64, generator=g)
    ref = (a.double() @ b.double()).float()
    # Entries are sums of 256 products of size ~1 (|entry| ~ 16): float32 is ~1e-6 off; TF32
    # (inputs rounded to 11 significant bits, ~1e-3 per product) ~1e-2 off, 40x the tolerance.
    torch.testing.assert_close((a.to(device) @ b.to(device)).cpu(), ref, atol=1e-4, rtol=1e-5)


# ------------------------------------------------------------------------------------ RMSNorm
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_rms_norm_kernel_matches_reference_in_outputs_and_gradients(layout, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 64, generator=g).to(device) if layout == "contiguous" else _strided((3, 5, 64), g, device)
    assert x.is_contiguous() == (layout == "contiguous") == _leaf(x).is_contiguous()
    w = torch.randn(64, generator=g).to(device)
    dy = torch.randn(3, 5, 64, generator=g).to(device)
    ref, ref_grads = _grads(lambda a, b: rms_norm(a, b, 1e-5), x, w, dy=dy)
    got, got_grads = _grads(lambda a, b: K.rms_norm(a, b, 1e-5), x, w, dy=dy)
    torch.testing.assert_close(got, ref, **TOL)
    for name, a, b in zip(("x", "weight"), got_grads, ref_grads):
        torch.testing.assert_close(a, b, **TOL, msg=f"gradient of {name}")


def test_rms_norm_reference_is_the_formula(device):
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(4, 32, generator=g).to(device), torch.randn(32, generator=g).to(device)
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5) * w
    torch.testing.assert_close(rms_norm(x, w, 1e-5), expected, **TOL)
    torch.testing.assert_close(K.rms_norm(x, w, 1e-5), expected, **TOL)


def test_rms_norm_backward_gradcheck_and_gradgradcheck_float64(device):
    # The hand-derived backward (LayerNorm's fused backward with mean 0, plus the r * mean(a) term)
    # against finite differences; and its create_graph branch against second differences.
    _skip_float64_on_mps(device)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 6, dtype=torch.float64, generator=g).to(device).requires_grad_()
    w = torch.randn(6, dtype=torch.float64, generator=g).to(device).requires_grad_()
    fn = lambda a, b: K.rms_norm(a, b, 1e-5)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w))
    assert torch.autograd.gradgradcheck(fn, (x, w))


def test_rms_norm_keeps_low_precision_dtype_and_computes_in_float32(device):
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(4, 32, generator=g).bfloat16().to(device), torch.randn(32, generator=g).to(device)
    for fn in (rms_norm, K.rms_norm):
        y = fn(x, w, 1e-5)
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), rms_norm(x.float(), w, 1e-5), atol=2e-2, rtol=1e-2)  # bf16 rounding


# --------------------------------------------------------------------------------------- RoPE
@pytest.mark.parametrize("pairing", ["interleaved", "half"])
@pytest.mark.parametrize("layout", ["contiguous", "qkv_slice", "transposed"])
def test_rope_kernel_matches_reference_in_outputs_and_gradients(pairing, layout, device):
    g = torch.Generator().manual_seed(4)
    B, T, H, hd = 2, 6, 3, 8
    if layout == "contiguous":
        x = torch.randn(B, T, H, hd, generator=g).to(device)
    elif layout == "qkv_slice":  # k of a fused qkv projection, as in the GPT: a strided view
        x = torch.randn(B, T, 3, H, hd, generator=g).to(device)[:, :, 1]
    else:  # (B, H, T, hd) view of (B, T, H, hd)
        x = torch.randn(B, T, H, hd, generator=g).to(device).transpose(1, 2)
    assert x.is_contiguous() == (layout == "contiguous") == _leaf(x).is_contiguous()
    cos, sin = rope_angles(torch.arange(T, device=device), hd)
    cos, sin = (cos[:, None], sin[:, None]) if layout != "transposed" else (cos, sin)
    dy = torch.randn(x.shape, generator=g).to(device)
    ref, (ref_dx,) = _grads(lambda a: apply_rope(a, cos, sin, pairing), x, dy=dy)
    got, (got_dx,) = _grads(lambda a: K.apply_rope(a, cos, sin, pairing), x, dy=dy)
    torch.testing.assert_close(got, ref, **TOL)
    torch.testing.assert_close(got_dx, ref_dx, **TOL)


@pytest.mark.parametrize("pairing", ["interleaved", "half"])
def test_rope_real_kernel_gradcheck_and_gradgradcheck_float64(pairing, device):
    # _RotatePairs (used for "half", and for "interleaved" on MPS) has a hand-written backward.
    _skip_float64_on_mps(device)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64, generator=g).to(device).requires_grad_()
    cos, sin = (t.double()[:, None] for t in rope_angles(torch.arange(5, device=device), 8))
    fn = lambda a: K._RotatePairs.apply(a, cos, sin, pairing)  # noqa: E731
    torch.testing.assert_close(fn(x), apply_rope(x, cos, sin, pairing), atol=1e-12, rtol=1e-12)
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_rope_complex_kernel_gradcheck_float64(device):
    _skip_float64_on_mps(device)  # (and MPS takes the real kernel for "interleaved" anyway)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64, generator=g).to(device).requires_grad_()
    cos, sin = (t.double()[:, None] for t in rope_angles(torch.arange(5, device=device), 8))
    torch.testing.assert_close(K.apply_rope(x, cos, sin), apply_rope(x, cos, sin), atol=1e-12, rtol=1e-12)
    assert torch.autograd.gradcheck(lambda a: K.apply_rope(a, cos, sin), (x,))


def test_rope_kernel_rejects_unknown_pairing():
    cos, sin = rope_angles(torch.arange(3), 4)
    with pytest.raises(ValueError, match="pairing"):
        K.apply_rope(torch.zeros(3, 4), cos, sin, "neox")


# ------------------------------------------------------------------------------- whole model
def _pair(device="cpu", **kw):
    """Two tiny GPTs with the same weights, one on the fast kernels and one on the references."""
    cfg = dict(vocab_size=40, context_length=12, n_layers=2, n_heads=2, d_model=16, init_std=0.2, **kw)
    torch.manual_seed(0)
    fast = GPT(GPTConfig(kernels="fast", **cfg))
    ref = GPT(GPTConfig(kernels="reference", **cfg))
    ref.load_state_dict(fast.state_dict())
    return fast.to(device), ref.to(device)


@pytest.mark.parametrize("kw", [{}, {"rope_pairing": "half"}, {"attn_impl": "explicit"}, {"tie_embeddings": True}])
def test_fast_and_reference_gpt_agree_in_logits_and_every_gradient(kw, device):
    fast, ref = _pair(device, **kw)
    idx = torch.randint(0, 40, (3, 13), generator=torch.Generator().manual_seed(7)).to(device)
    for m in (fast, ref):
        m.loss(idx[:, :-1], idx[:, 1:]).backward()
    torch.testing.assert_close(fast(idx[:, :-1]), ref(idx[:, :-1]), atol=1e-5, rtol=1e-5)
    ref_params = dict(ref.named_parameters())
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, atol=1e-4, rtol=1e-4, msg=f"gradient of {name}")


def test_fast_and_reference_gpt_agree_in_hessian_vector_products(device):
    # Second derivatives (Sophia-H, sharpness) go through each kernel's create_graph branch.
    # Explicit attention: PyTorch's fused SDPA kernels have no double backward (CPU flash, CUDA flash).
    fast, ref = _pair(device, attn_impl="explicit")
    idx = torch.randint(0, 40, (2, 13), generator=torch.Generator().manual_seed(8)).to(device)
    vec = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i)).to(device)
           for i, p in enumerate(fast.parameters())]
    hvps = []
    for m in (fast, ref):
        params = list(m.parameters())
        grads = torch.autograd.grad(m.loss(idx[:, :-1], idx[:, 1:]), params, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vec))
        hvps.append(torch.autograd.grad(dot, params))
    for a, b in zip(*hvps):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_kernels_field_is_validated_and_old_configs_still_load():
    with pytest.raises(ValueError, match="kernels"):
        GPTConfig(vocab_size=10, kernels="turbo")
    fast, _ = _pair()
    old = fast.config_dict()
    old.pop("kernels")  # a checkpoint written before the field existed
    rebuilt = model_from_config(old)
    assert rebuilt.config.kernels == "fast"
    rebuilt.load_state_dict(fast.state_dict())
    idx = torch.randint(0, 40, (1, 12))
    torch.testing.assert_close(rebuilt(idx), fast(idx))


def test_the_kernel_choice_is_made_in_the_layers_at_construction():
    fast, ref = _pair()
    assert fast.norm.kernel is K.rms_norm and ref.norm.kernel is rms_norm
    assert fast.blocks[0].attn.rope is K.apply_rope and ref.blocks[0].attn.rope is apply_rope


def test_kernels_module_does_not_import_the_models():
    # Floor 1: kernels.py is math without a model; the models import it, never the reverse.
    tree = ast.parse(inspect.getsource(K))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(name.startswith("minilm") for name in imported), imported
