"""minilm.fp8 against independent references: PyTorch's float8 casts (all 256 codes, millions of
values), closed forms derived by hand from the format definitions, constructed tensors with known
amax, an explicit quantise-then-matmul written plainly here, and nn.Linear within FP8's bound."""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from minilm import fp8
from minilm.data import MarkovLanguage, get_batch
from minilm.models import GPT, GPTConfig

FORMATS = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
MAX = {"e4m3": 448.0, "e5m2": 57344.0}


def _same_floats(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-identical float32 arrays (so -0.0 != 0.0), NaN equal to NaN of the same sign."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    nan = np.isnan(a)
    return bool((nan == np.isnan(b)).all() and (np.signbit(a[nan]) == np.signbit(b[nan])).all()
                and (a[~nan].view(np.uint32) == b[~nan].view(np.uint32)).all())


@functools.lru_cache(maxsize=1)
def _values_to_check() -> np.ndarray:
    """float32 test values, each with both signs: every FP8 number of both formats, every midpoint
    between neighbours (the ties) and the float32 numbers just around each, 2^20 random bit
    patterns (every magnitude, inf and NaN included) and 2^20 values log-uniform over 2^-24..2^20."""
    rng = np.random.default_rng(0)
    parts = []
    for fmt in FORMATS:
        v = np.unique(fp8.decode(np.arange(256, dtype=np.uint8), fmt))
        v = v[np.isfinite(v)].astype(np.float64)
        mid = ((v[1:] + v[:-1]) / 2).astype(np.float32)  # exact in float32
        parts += [v.astype(np.float32), mid, np.nextafter(mid, np.float32(np.inf)),
                  np.nextafter(mid, np.float32(-np.inf))]
        top = np.float32({"e4m3": (448 + 480) / 2, "e5m2": (57344 + 65536) / 2}[fmt])  # max and the next step
        parts.append(np.array([top, np.nextafter(top, np.float32(0)), np.nextafter(top, np.float32(np.inf))],
                              dtype=np.float32))
    parts.append(rng.integers(0, 2**32, size=2**20, dtype=np.uint64).astype(np.uint32).view(np.float32))
    mags = np.exp2(rng.uniform(-24, 20, size=2**20))
    parts.append(mags.astype(np.float32))
    parts.append(np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan], dtype=np.float32))
    x = np.concatenate(parts)
    x = np.concatenate([x, -x])
    assert x.size > 4_000_000
    return x


# ------------------------------------------------------------------------------------ formats
def test_format_constants_follow_from_the_definitions():
    for f, dtype in ((fp8.E4M3, torch.float8_e4m3fn), (fp8.E5M2, torch.float8_e5m2)):
        info = torch.finfo(dtype)
        assert f.max == info.max and f.min_normal == info.smallest_normal
    assert fp8.E4M3.max == 2**8 * 1.75 == 448 and fp8.E5M2.max == 2**15 * 1.75 == 57344
    assert fp8.E4M3.min_subnormal == 2**-9 and fp8.E5M2.min_subnormal == 2**-16
    assert fp8.E4M3.overflow_threshold == 464 and fp8.E5M2.overflow_threshold == 61440


@pytest.mark.parametrize("fmt", FORMATS)
def test_decode_all_256_codes_bit_exact_against_torch(fmt):
    codes = np.arange(256, dtype=np.uint8)
    ours = fp8.decode(codes, fmt)
    theirs = torch.from_numpy(codes).view(FORMATS[fmt]).float().numpy()
    nan = np.isnan(ours)
    assert (nan == np.isnan(theirs)).all()
    assert (ours[~nan].view(np.uint32) == theirs[~nan].view(np.uint32)).all()  # -0.0 included
    nan_codes = {"e4m3": {0x7F, 0xFF}, "e5m2": {0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF}}[fmt]
    assert set(np.nonzero(nan)[0]) == nan_codes
    assert set(np.nonzero(np.isinf(ours))[0]) == ({0x7C, 0xFC} if fmt == "e5m2" else set())


def test_decode_by_hand_from_the_fields():
    # value = (-1)^S 2^(E - bias) (1 + M / 2^m), subnormal 2^(1 - bias) (M / 2^m)
    e4m3 = {0x38: 1.0, 0x01: 2**-9, 0x07: 7 * 2**-9, 0x08: 2**-6, 0x7E: 448.0, 0xFE: -448.0, 0x3C: 1.5,
            0x29: 2**-2 * 1.125}
    e5m2 = {0x3C: 1.0, 0x01: 2**-16, 0x04: 2**-14, 0x7B: 57344.0, 0x3E: 1.5, 0xBD: -1.25}
    for fmt, table in (("e4m3", e4m3), ("e5m2", e5m2)):
        got = fp8.decode(np.array(list(table), dtype=np.uint8), fmt)
        assert got.tolist() == list(table.values()), fmt


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("saturate", [True, False])
def test_encode_inverts_decode_on_every_code(fmt, saturate):
    codes = np.arange(256, dtype=np.uint8)
    back = fp8.encode(fp8.decode(codes, fmt), fmt, saturate=saturate)
    values = fp8.decode(codes, fmt)
    ok = np.isfinite(values)
    assert (back[ok] == codes[ok]).all()
    inf = np.isinf(values)  # E5M2's +-inf: kept, or saturated to +-max
    assert (back[inf] == (codes[inf] if not saturate else (codes[inf] & 0x80) | 0x7B)).all()
    ok = ~np.isnan(values)
    assert (back[~ok] & 0x7F == 0x7F).all()  # NaN payloads become the canonical NaN, sign kept
    assert ((back[~ok] >> 7) == (codes[~ok] >> 7)).all()


def test_rounding_by_hand_ties_to_even_subnormals_and_range():
    cases = [  # (value, fmt, saturate, expected value)
        (1 + 1 / 16, "e4m3", True, 1.0),  # tie between 1.000 and 1.001: even mantissa 000
        (1 + 3 / 16, "e4m3", True, 1.25),  # tie between 1.001 and 1.010: even 010
        (2**-10, "e4m3", True, 0.0),  # half the smallest subnormal: tie to 0 (even)
        (3 * 2**-10, "e4m3", True, 2**-8),  # tie between 0.001 and 0.010 x 2^-6: even 010
        (0.3, "e4m3", True, 0.3125),
        (464.0, "e4m3", False, 448.0),  # tie at the top: max's mantissa 110 is even, stays in range
        (465.0, "e4m3", True, 448.0),
        (465.0, "e4m3", False, math.nan),  # E4M3 has no infinity
        (-math.inf, "e4m3", True, -448.0),
        (61440.0, "e5m2", False, math.inf),  # tie at the top: max's mantissa 11 is odd -> inf
        (61440.0, "e5m2", True, 57344.0),
        (61439.996, "e5m2", False, 57344.0),
        (-1e9, "e5m2", False, -math.inf),
        (2**-17, "e5m2", True, 0.0),
        (3 * 2**-17, "e5m2", True, 2**-15),
    ]
    for value, fmt, saturate, expected in cases:
        got = float(fp8.decode(fp8.encode(np.float32(value), fmt, saturate), fmt))
        assert (math.isnan(got) and math.isnan(expected)) or got == expected, (value, fmt, saturate, got)
    assert fp8.encode(-0.0, "e4m3") == 0x80 and fp8.encode(-0.0, "e5m2") == 0x80


@pytest.mark.parametrize("fmt", FORMATS)
def test_encode_bit_exact_against_torch_cast_on_millions_of_values(fmt):
    # PyTorch 2.13: .to(float8_e4m3fn) saturates (+-inf and finite overflow -> +-448, NaN -> NaN);
    # .to(float8_e5m2) overflows to +-inf. Each equals one of our two modes everywhere, and the
    # other mode everywhere but on the values out of range.
    values = _values_to_check()
    theirs = torch.from_numpy(values).to(FORMATS[fmt]).view(torch.uint8).numpy()
    same, other = fp8.encode(values, fmt, saturate=(fmt == "e4m3")), fp8.encode(values, fmt, saturate=(fmt != "e4m3"))
    mismatch = np.nonzero(same != theirs)[0]
    assert mismatch.size == 0, f"{mismatch.size} of {values.size} differ, e.g. {values[mismatch[:5]]}"
    out_of_range = fp8.overflows(torch.from_numpy(values), fmt).numpy()
    assert ((other != theirs) == out_of_range).all() and out_of_range.sum() > 100_000


def test_pytorch_cast_semantics_out_of_range(device):
    # Where PyTorch's casts differ from saturation (E5M2) and from the format's own overflow (E4M3).
    e4m3_over = torch.tensor([465.0, 480.0, 1e6, math.inf, -math.inf], device=device)
    assert (e4m3_over.to(torch.float8_e4m3fn).float().abs() == 448).all()  # torch saturates E4M3...
    assert np.isnan(fp8.decode(fp8.encode(e4m3_over.cpu(), "e4m3", saturate=False), "e4m3")).all()  # ...the format: NaN
    e5m2_over = torch.tensor([61440.0, 1e6, math.inf], device=device)
    assert torch.isinf(e5m2_over.to(torch.float8_e5m2).float()).all()  # torch overflows E5M2 to inf...
    assert (fp8.decode(fp8.encode(e5m2_over.cpu(), "e5m2", saturate=True), "e5m2") == 57344).all()  # ...saturating: max
    nan = torch.tensor([math.nan], device=device)
    for dtype in FORMATS.values():
        assert torch.isnan(nan.to(dtype).float()).all()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("saturate", [True, False])
def test_fast_paths_bit_exact_against_the_reference(fmt, saturate, device):
    values = _values_to_check()
    reference = fp8.encode(values, fmt, saturate)
    x = torch.from_numpy(values).to(device)
    assert _same_floats(fp8.round_to_fp8(x, fmt, saturate).cpu().numpy(), fp8.decode(reference, fmt))
    if device.type != "mps":  # MPS has no float8 dtypes
        codes = fp8.cast_to_fp8(x, fmt, saturate).view(torch.uint8).cpu().numpy()
        nan = np.isnan(values)  # NaN: any NaN code of the right sign
        assert (codes[~nan] == reference[~nan]).all()
        assert np.isnan(fp8.decode(codes[nan], fmt)).all()


def test_unknown_format_and_bad_codes_are_clear_errors():
    with pytest.raises(ValueError, match="unknown FP8 format 'e3m4'.*'e4m3'.*'e5m2'"):
        fp8.get_format("e3m4")
    with pytest.raises(ValueError, match="unknown FP8 format"):
        fp8.round_to_fp8(torch.ones(2), "fp8")
    with pytest.raises(ValueError, match="bytes"):
        fp8.decode(np.array([300]), "e4m3")
    with pytest.raises(ValueError, match="unknown FP8 format"):
        fp8.FP8Recipe(bwd_format="e6m1")


# ------------------------------------------------------------------------------------ scaling
def test_current_scale_from_a_known_amax():
    x = torch.tensor([[0.5, -3.5], [1.0, 2.0]])  # amax 3.5
    assert fp8.current_scale(x).item() == 448 / 3.5 == 128
    assert fp8.current_scale(x, margin=2).item() == 32
    assert fp8.current_scale(x, "e5m2").item() == pytest.approx(57344 / 3.5, rel=1e-7)
    assert fp8.current_scale(torch.tensor([3.0]), power_of_two=True).item() == 128  # 149.3 -> 2^7
    assert fp8.current_scale(torch.tensor([0.25]), power_of_two=True).item() == 1024  # 1792 -> 2^10
    assert fp8.current_scale(torch.zeros(3)).item() == 1.0
    assert fp8.current_scale(torch.tensor([1.0, math.inf])).item() == 1.0
    x_hat = fp8.fake_quantize(x, "e4m3", fp8.current_scale(x))
    assert x_hat.abs().max().item() == 3.5  # amax lands exactly on 448


@pytest.mark.parametrize("algo, expected", [
    ("max", [1.0, 448 / 1, 448 / 4, 448 / 4, 448 / 8, 448 / 8, 448 / 8]),
    ("most_recent", [1.0, 448 / 1, 448 / 4, 448 / 2, 448 / 8, 448 / 0.5, 448 / 0.5]),  # amax 0 keeps the scale
])
def test_delayed_scaling_follows_transformer_engine(algo, expected):
    amaxes = [1.0, 4.0, 2.0, 8.0, 0.5, 0.0]
    scaler = fp8.DelayedScaler("e4m3", history_len=3, algo=algo)
    used = []
    for amax in amaxes:
        x = torch.tensor([amax, -amax / 2, 0.0])
        used.append(scaler.scale.item())
        x_hat = scaler(x)
        if amax * used[-1] > 464:  # the delayed scale is too big for this step: x saturates
            assert x_hat[0].item() == pytest.approx(448 / used[-1])
    used.append(scaler.scale.item())
    assert used == pytest.approx(expected, rel=1e-6)
    assert scaler.amax_history.tolist() == [0.0, 0.5, 8.0]  # newest first, 3 long
    margin = fp8.DelayedScaler("e4m3", history_len=3, algo=algo, margin=1)
    margin(torch.tensor([4.0]))
    assert margin.scale.item() == 448 / 4 / 2
    with pytest.raises(ValueError, match="'max' or 'most_recent'"):
        fp8.DelayedScaler(algo="mean")


def test_tile_scales_on_constructed_tensors():
    x = torch.zeros(2, 256)
    x[0, 5], x[0, 200], x[1, 0], x[1, 255] = 1.0, -2.0, 4.0, 8.0  # amax of each 1x128 tile
    assert fp8.tile_scales(x, tile=(1, 128)).tolist() == [[448.0, 224.0], [112.0, 56.0]]
    w = torch.zeros(256, 384)
    w[3, 3], w[200, 130], w[255, 383] = 7.0, -0.5, 3.5  # 128x128 blocks, the others all zero
    expected = [[64.0, 1.0, 1.0], [1.0, 896.0, 128.0]]
    assert fp8.tile_scales(w, tile=(128, 128)).tolist() == expected
    assert fp8.tile_scales(x, tile=(1, 128), power_of_two=True).tolist() == [[256.0, 128.0], [64.0, 32.0]]
    with pytest.raises(ValueError, match=r"tile \(1, 128\) does not divide shape \(3, 200\).*pad=True"):
        fp8.tile_scales(torch.ones(3, 200), tile=(1, 128))
    padded = torch.ones(3, 200)
    padded[2, 199] = 16.0  # in the second, partial tile of row 2
    assert fp8.tile_scales(padded, tile=(1, 128), pad=True).tolist() == [[448.0] * 2, [448.0] * 2, [448.0, 28.0]]
    with pytest.raises(ValueError, match="2-D"):
        fp8.tile_scales(torch.ones(2, 3, 128))


@pytest.mark.parametrize("tile, pad", [((1, 128), True), ((128, 128), True), ((128, 1), True), ((1, 100), False)])
def test_fake_quantize_tiles_equals_per_element_scales(tile, pad):
    x = torch.randn(300, 200) * torch.logspace(-3, 3, 200)
    expected = fp8.fake_quantize(x, "e4m3", fp8.expand_tiles(fp8.tile_scales(x, "e4m3", tile, pad=pad), x.shape, tile))
    assert torch.equal(fp8.fake_quantize_tiles(x, "e4m3", tile, pad=pad), expected)


def test_tiles_keep_an_outlier_from_flushing_the_rest_to_zero():
    x = torch.full((4, 256), 1e-3)
    x[0, 0] = 1e4  # per tensor: s = 448 / 1e4, and 1e-3 * s is far below E4M3's smallest subnormal
    per_tensor = fp8.quantization_error(x, "e4m3", scaling="current")
    tiles = fp8.quantization_error(x, "e4m3", scaling="tile", tile=(1, 128))
    assert per_tensor["underflow"] == pytest.approx(1023 / 1024)
    assert tiles["underflow"] == pytest.approx(127 / 1024)  # only the outlier's own tile


def test_quantization_error_on_constructed_tensors():
    exact = torch.from_numpy(fp8.decode(np.arange(0, 126, dtype=np.uint8), "e4m3"))
    assert fp8.quantization_error(exact, "e4m3", scaling="none") == {
        "relative_error": 0.0, "sqnr_db": math.inf, "underflow": 0.0, "saturation": 0.0}
    one = fp8.quantization_error(torch.tensor([1 + 1 / 16]), "e4m3", scaling="none")  # -> 1.0
    assert one["relative_error"] == pytest.approx((1 / 16) / (17 / 16))
    assert one["sqnr_db"] == pytest.approx(20 * math.log10(17))
    small = fp8.quantization_error(torch.tensor([1e-4, -1e-4, 1e-4, 1.0]), "e4m3", scaling="none")
    assert small["underflow"] == 0.75 and small["saturation"] == 0.0
    big = fp8.quantization_error(torch.tensor([500.0, -1000.0, 450.0, 1.0]), "e4m3", scaling="none")
    assert big["saturation"] == 0.5 and big["underflow"] == 0.0  # 450 rounds to 448: in range
    assert fp8.quantization_error(torch.tensor([800.0, 1.0]), "e4m3", scaling=0.5)["saturation"] == 0.0
    assert fp8.quantization_error(torch.tensor([800.0, 1.0]), "e4m3", scaling="current")["saturation"] == 0.0
    with pytest.raises(ValueError, match="unknown scaling 'per_tensor'"):
        fp8.quantization_error(torch.ones(3), scaling="per_tensor")


# -------------------------------------------------------------------------------- the layer
def _q(t: torch.Tensor, fmt: str, scale: torch.Tensor | float) -> torch.Tensor:
    """The plain definition: scale, clamp, PyTorch's cast, cast back, unscale."""
    return (t * scale).clamp(-MAX[fmt], MAX[fmt]).to(FORMATS[fmt]).float() * (1 / torch.as_tensor(scale))


def _q_current(t, fmt):
    return _q(t, fmt, MAX[fmt] / t.abs().max())


def _q_tiles(t, fmt, tr, tc):
    out = torch.empty_like(t)
    for i in range(0, t.shape[0], tr):
        for j in range(0, t.shape[1], tc):
            block = t[i : i + tr, j : j + tc]
            out[i : i + tr, j : j + tc] = _q(block, fmt, MAX[fmt] / block.abs().max())
    return out


@pytest.mark.parametrize("recipe", ["none", "current", "deepseek", fp8.FP8Recipe(bwd_format="e4m3")])
def test_fp8_linear_forward_backward_equal_explicit_reference(recipe, device):
    torch.manual_seed(0)
    r = fp8.get_recipe(recipe)
    linear = nn.Linear(256, 128).to(device)
    x = (torch.randn(2, 128, 256, device=device) * 3).requires_grad_()
    dy = torch.randn(2, 128, 128, device=device) * 1e-3
    layer = fp8.FP8Linear.from_linear(linear, recipe)
    layer(x).backward(dy)

    W, b, x2, dy2 = linear.weight.detach(), linear.bias.detach(), x.detach().reshape(256, 256), dy.reshape(256, 128)
    fwd, bwd = r.fwd_format, r.bwd_format
    if r.scaling == "none":
        xq, wq, dyq = _q(x2, fwd, 1.0), _q(W, fwd, 1.0), _q(dy2, bwd, 1.0)
        dyq_t, xq_t = dyq, xq
    elif r.scaling == "current":
        xq, wq, dyq = _q_current(x2, fwd), _q_current(W, fwd), _q_current(dy2, bwd)
        dyq_t, xq_t = dyq, xq
    else:  # DeepSeek-V3: 1x128 along the contraction, 128x128 weight blocks, 128x1 for Wgrad
        xq, wq, dyq = _q_tiles(x2, fwd, 1, 128), _q_tiles(W, fwd, 128, 128), _q_tiles(dy2, bwd, 1, 128)
        dyq_t, xq_t = _q_tiles(dy2, bwd, 128, 1), _q_tiles(xq, fwd, 128, 1)
    y_ref = (xq @ wq.t() + b).reshape(2, 128, 128)
    torch.testing.assert_close(layer(x), y_ref, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, (dyq @ wq).reshape(2, 128, 256), rtol=0, atol=0)
    torch.testing.assert_close(linear.weight.grad, dyq_t.t() @ xq_t, rtol=0, atol=0)
    torch.testing.assert_close(linear.bias.grad, dy2.sum(0), rtol=0, atol=0)


def test_fp8_linear_without_scaling_is_nn_linear_within_fp8_rounding():
    # Every operand in E4M3's normal range: each is off by at most u = 2^-4 of itself (E5M2: 2^-3),
    # so a product of sums is off by at most (u_a + u_b + u_a u_b) * (|a| @ |b|).
    torch.manual_seed(0)
    linear = nn.Linear(64, 32, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.empty(32, 64).uniform_(0.5, 2) * torch.randn(32, 64).sign())
    x = (torch.empty(8, 64).uniform_(0.5, 2) * torch.randn(8, 64).sign()).requires_grad_()
    dy = torch.empty(8, 32).uniform_(0.5, 2) * torch.randn(8, 32).sign()
    y = fp8.FP8Linear.from_linear(copy.deepcopy(linear), "none")(x)
    y.backward(dy)
    W = linear.weight.detach()
    u4, u5 = 2.0**-4, 2.0**-3
    err = (y - x @ W.t()).abs()
    assert (err <= (2 * u4 + u4 * u4) * (x.abs() @ W.abs().t()) + 1e-5).all() and err.max() > 0
    err_dx = (x.grad - dy @ W).abs()
    assert (err_dx <= (u4 + u5 + u4 * u5) * (dy.abs() @ W.abs()) + 1e-5).all() and err_dx.max() > 0


def test_delayed_layer_records_amax_in_training_only():
    torch.manual_seed(0)
    layer = fp8.FP8Linear(16, 8, recipe="delayed")
    x = torch.randn(4, 16, requires_grad=True)
    dy = torch.randn(4, 8)
    layer(x).backward(dy)
    s = layer.scalers
    assert s["x"].amax_history[0].item() == x.abs().max().item()
    assert s["w"].amax_history[0].item() == layer.weight.abs().max().item()
    assert s["dy"].amax_history[0].item() == dy.abs().max().item()
    assert s["x"].scale.item() == pytest.approx(448 / x.abs().max().item()) and s["dy"].scale.item() == \
        pytest.approx(57344 / dy.abs().max().item())
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(4, 16) * 100)
    assert s["x"].amax_history[0].item() == x.abs().max().item() and s["x"].amax_history[1].item() == 0.0
    assert "scalers" not in "".join(layer.state_dict())  # checkpoints keep nn.Linear's keys


def test_quantization_counts_equal_a_direct_count():
    # Unscaled: x with values that flush to zero (< 2^-10) and past E4M3's range; dy with values
    # below E5M2's smallest subnormal. The counts must be those of the operands, counted here plainly.
    torch.manual_seed(0)
    layer = fp8.FP8Linear(64, 32, bias=False, recipe="none")
    model = nn.Sequential(layer)
    fp8.track_quantization(model)
    x = torch.randn(16, 64) * torch.exp2(torch.randint(-14, 10, (16, 64)).float())
    dy = torch.randn(16, 32) * torch.exp2(torch.randint(-22, -8, (16, 32)).float())
    x.requires_grad_()
    model(x).backward(dy)
    xd = x.detach()

    def flushed(t, fmt):
        return int(((t != 0) & (fp8.round_to_fp8(t, fmt) == 0)).sum())

    c = fp8.quantization_counts(model)
    assert c["x"]["values"] == 16 * 64 and c["w"]["values"] == 32 * 64 and c["dy"]["values"] == 16 * 32
    assert c["x"]["underflow"] == flushed(xd, "e4m3") > 0
    assert c["dy"]["underflow"] == flushed(dy, "e5m2") > 0
    assert c["w"]["underflow"] == flushed(layer.weight.detach(), "e4m3")
    assert c["x"]["saturated"] == int((xd.abs() > 464).sum()) > 0  # 448 + half of E4M3's top spacing (32)
    assert c["dy"]["underflow_fraction"] == c["dy"]["underflow"] / (16 * 32)
    # A second step adds up; evaluation is not counted.
    model(x).backward(dy)
    assert fp8.quantization_counts(model)["dy"]["underflow"] == 2 * flushed(dy, "e5m2")
    model.eval()
    model(x)
    assert fp8.quantization_counts(model)["x"]["values"] == 2 * 16 * 64
    assert list(fp8.quantization_counts(model, by_layer=True)) == ["0"]
    # Current scaling lifts the same gradients into range: (almost) nothing flushes.
    current = nn.Sequential(fp8.FP8Linear.from_linear(nn.Linear(64, 32, bias=False), "current"))
    fp8.track_quantization(current)
    current(x).backward(dy)
    assert fp8.quantization_counts(current)["dy"]["underflow"] < flushed(dy, "e5m2") / 10


def test_delayed_scaling_counts_saturation_at_a_jump():
    layer = fp8.FP8Linear(8, 4, bias=False, recipe=fp8.FP8Recipe(scaling="delayed", amax_history_len=4))
    model = fp8.track_quantization(nn.Sequential(layer))
    x = torch.ones(2, 8)
    model(x).sum().backward()  # step 1: scale 1; the history learns amax 1 -> scale 448
    model(x * 8).sum().backward()  # step 2: 8 * 448 is past the range: all 16 inputs saturate
    assert fp8.quantization_counts(model)["x"]["saturated"] == 16


def test_tracking_needs_fp8_layers():
    with pytest.raises(ValueError, match="to_fp8"):
        fp8.track_quantization(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(ValueError, match="track_quantization"):
        fp8.quantization_counts(nn.Sequential(fp8.FP8Linear(4, 4)))


def test_recipes_are_checked_and_named():
    assert set(fp8.RECIPES) == {"none", "current", "delayed", "deepseek"}
    assert fp8.RECIPES["delayed"].amax_history_len == 1024 and fp8.RECIPES["delayed"].amax_compute_algo == "max"
    assert fp8.RECIPES["deepseek"].bwd_format == "e4m3" and fp8.RECIPES["deepseek"].tile == 128
    with pytest.raises(ValueError, match="scaling must be one of"):
        fp8.FP8Recipe(scaling="tiles")
    with pytest.raises(ValueError, match="unknown FP8 recipe 'fast'"):
        fp8.get_recipe("fast")
    with pytest.raises(ValueError, match="accum_bits"):
        fp8.FP8Recipe(accum_bits=30)
    tiled = fp8.FP8Linear(64, 32, recipe=fp8.FP8Recipe(scaling="tile"))  # 64 is not a multiple of 128
    with pytest.raises(ValueError, match="does not divide.*pad=True"):
        tiled(torch.randn(4, 64))


def _gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=16, context_length=32, n_layers=2, n_heads=2, d_model=32, **kw))


def test_to_fp8_swaps_every_linear_but_the_head():
    model = _gpt()
    params = {name: id(p) for name, p in model.named_parameters()}
    keys = list(model.state_dict())
    assert fp8.to_fp8(model, recipe="delayed") is model
    fp8_names = {name for name, m in model.named_modules() if isinstance(m, fp8.FP8Linear)}
    linears = ("attn.wqkv", "attn.wo", "ffn.w1", "ffn.w2", "ffn.w3")
    assert fp8_names == {f"blocks.{i}.{n}" for i in range(2) for n in linears}
    assert type(model.head) is nn.Linear and type(model.tok_emb) is nn.Embedding
    assert {name: id(p) for name, p in model.named_parameters()} == params  # the same FP32 master weights
    assert list(model.state_dict()) == keys
    with pytest.raises(ValueError, match="no nn.Linear to swap.*already converted"):
        fp8.to_fp8(model)
    partial = fp8.to_fp8(_gpt(), skip=("head", "attn"))
    assert {n for n, m in partial.named_modules() if isinstance(m, fp8.FP8Linear)} == \
        {f"blocks.{i}.ffn.w{j}" for i in range(2) for j in (1, 2, 3)}
    with pytest.raises(ValueError, match="unknown FP8 recipe"):
        fp8.to_fp8(_gpt(), recipe="e4m3")
    assert isinstance(fp8.to_fp8(nn.Linear(4, 4)), fp8.FP8Linear)


def _train(model: nn.Module, steps: int = 30) -> list[float]:
    tokens = MarkovLanguage(vocab_size=16, order=1, seed=0).sample(20_000, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rng, losses = np.random.default_rng(0), []
    for _ in range(steps):
        x, y = get_batch(tokens, 16, 32, rng=rng)
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("recipe", ["none", "current", "delayed", "deepseek"])
def test_gpt_trains_in_fp8_and_tracks_fp32(recipe):
    fp32 = _train(_gpt())
    losses = _train(fp8.to_fp8(_gpt(), recipe=recipe))
    assert np.mean(losses[-5:]) < 0.8 * losses[0]  # ln 16 = 2.77 -> about 1.84 in 30 steps
    assert abs(np.mean(losses[-5:]) - np.mean(fp32[-5:])) < 0.1


# ----------------------------------------------------------------------- accumulation precision
def test_round_significand_agrees_with_e4m3_in_its_normal_range():
    x = torch.exp2(torch.empty(100_000).uniform_(-6, 8.8)) * torch.randn(100_000).sign()  # |x| in [2^-6, 445]
    assert torch.equal(fp8.round_significand(x, 4), fp8.round_to_fp8(x, "e4m3"))  # 1 + 3 mantissa bits
    assert torch.equal(fp8.round_significand(x, 24), x)


def test_promotion_every_nc_rescues_a_swamped_accumulator():
    # Adding 1 three hundred times with 8 significant bits: at 256 the spacing is 2 and 256 + 1 ties
    # back to 256 (even), forever. Promoting every 128 elements keeps each partial sum exact.
    a, b = torch.ones(1, 300), torch.ones(300, 1)
    assert fp8.limited_precision_matmul(a, b, accum_bits=8, promote_every=300).item() == 256
    assert fp8.limited_precision_matmul(a, b, accum_bits=8, promote_every=128).item() == 300
    assert fp8.limited_precision_matmul(a, b, accum_bits=24, promote_every=300).item() == 300
    # DeepSeek-V3 sec. 3.3.2: with ~14-bit accumulation, K = 4096 is visibly off unless promoted.
    torch.manual_seed(0)
    a, b = torch.rand(4, 4096), torch.rand(4096, 4)
    exact = (a.double() @ b.double()).float()
    err = {nc: ((fp8.limited_precision_matmul(a, b, 14, nc) - exact).norm() / exact.norm()).item()
           for nc in (4096, 128)}
    assert err[4096] > 10 * err[128]


def test_layer_with_full_precision_accumulator_equals_fp32_accumulation():
    torch.manual_seed(0)
    linear = nn.Linear(48, 16)
    x = torch.randn(8, 48)
    y = fp8.FP8Linear.from_linear(linear, fp8.FP8Recipe(accum_bits=24, promote_every=16))(x)
    torch.testing.assert_close(y, fp8.FP8Linear.from_linear(linear, "current")(x), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------- real FP8 matmul
@pytest.mark.parametrize("dev", ["cpu", "cuda"])
def test_scaled_mm_matches_the_emulation(dev):
    reason = fp8.fp8_matmul_support(dev)
    if reason is not None:
        pytest.skip(reason)
    torch.manual_seed(0)
    x, w = torch.randn(64, 128, device=dev), torch.randn(96, 128, device=dev) * 0.02
    y = fp8.scaled_mm_fp8(x, w)
    emulated = _q_current(x, "e4m3") @ _q_current(w, "e4m3").t()
    assert ((y - emulated).norm() / emulated.norm()).item() < fp8.SCALED_MM_RTOL
    with pytest.raises(ValueError, match="multiples of 16"):
        fp8.scaled_mm_fp8(torch.randn(4, 20, device=dev), torch.randn(16, 20, device=dev))


def test_representable_values_are_the_decoded_grid():
    from minilm.fp8 import representable_values
    e4 = representable_values("e4m3")
    e5 = representable_values("e5m2")
    assert len(e4) == 126 and len(e5) == 123  # 127 positive codes minus NaN (E4M3) / inf + 3 NaN (E5M2)
    assert e4[0] == fp8.E4M3.min_subnormal and e4[-1] == fp8.E4M3.max
    assert e5[0] == fp8.E5M2.min_subnormal and e5[-1] == fp8.E5M2.max
    # independent reference: torch's own cast of every positive code
    ref = torch.arange(1, 128, dtype=torch.uint8).view(torch.float8_e4m3fn).float().numpy()
    assert np.array_equal(e4, np.unique(ref[np.isfinite(ref)]))
    bf = representable_values("bf16")
    assert bf[-1] == torch.finfo(torch.bfloat16).max and bf[0] == 2.0**-133
    fp = representable_values("fp16")
    assert fp[-1] == 65504 and fp[0] == 2.0**-24 and len(fp) == 0x7C00 - 1
    with pytest.raises(ValueError, match="unknown FP8 format"):
        representable_values("fp4")


def test_memory_table_counts_bytes_per_parameter():
    from minilm.fp8 import bytes_per_parameter, memory_table
    assert bytes_per_parameter("bf16")["total"] == 16  # ZeRO's 2 + 2 + 12
    assert bytes_per_parameter("fp32")["total"] == 16 and bytes_per_parameter("fp8")["total"] == 15
    t = memory_table(1e9, n_activations=1e9, tile=128)
    assert t["fp8"]["bytes_per_param"] == pytest.approx(15 + 4 / 128)
    assert t["fp8"]["activations_GB"] == pytest.approx(1 + 4 / 128)
    assert t["bf16"]["activations_GB"] == 2 and t["fp32"]["params_GB"] == 16
    with pytest.raises(ValueError, match="unknown recipe"):
        bytes_per_parameter("int4")
    with pytest.raises(ValueError):
        memory_table(0)
