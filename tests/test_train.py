import copy
import dataclasses
import importlib
import math
import warnings

import numpy as np
import pytest
import torch

from minilm import schedules
from minilm.checkpoint import load_checkpoint
from minilm.data import MarkovLanguage
from minilm.data.languages import _entropy
from minilm.device import resolve_device
from minilm.models import GPT, GPTConfig, build_model, model_from_checkpoint
from minilm.train import TrainConfig, TrainingDivergedError, default_optimizer, evaluate, train

train_module = importlib.import_module("minilm.train")  # the module (``minilm.train`` is also the function)

LANG = MarkovLanguage(vocab_size=16, order=1, concentration=0.2, seed=0)
TRAIN = LANG.sample(60_000, seed=1)
VAL = LANG.sample(8_000, seed=2)


def model(seed=0, **kw):
    torch.manual_seed(seed)  # built on the CPU: the same initial weights whatever device trains it
    cfg = dict(vocab_size=16, context_length=16, n_layers=1, n_heads=2, d_model=32)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg))


def run(m, **kw):
    args = dict(steps=60, batch_size=16, lr=3e-3, eval_every=30, progress=False, device="cpu", seed=0)
    args.update(kw)
    return train(m, TRAIN, VAL, **args)


# Tests that take the ``device`` fixture train on $MINILM_TEST_DEVICE (train moves the model there;
# on CUDA with its default bf16 autocast). Where they compare two runs bit for bit, the model uses
# explicit attention: plain matmuls, deterministic on GPUs too (the fused SDPA backward kernels
# may sum in a different order from one call to the next).
def test_loss_falls_below_unigram_entropy_but_not_below_entropy_rate(device):
    m = model()
    h = run(m, steps=250, eval_every=250, device=device)
    unigram = _entropy(np.bincount(TRAIN, minlength=16) / len(TRAIN))
    val = evaluate(m, VAL)  # where the model lives: the device
    assert h["train_loss"][0] == pytest.approx(math.log(16), abs=0.15)
    assert val < unigram - 0.3, (val, unigram)  # it learned to use the context
    # Never meaningfully below the exact entropy rate (allowing 4 standard errors of the estimate).
    se = 1.0 / math.sqrt(len(VAL))
    assert val > LANG.entropy_rate() - 4 * se, (val, LANG.entropy_rate())


def test_same_seed_same_curve_different_seed_different_curve(device):
    a = run(model(attn_impl="explicit"), device=device)["train_loss"]
    b = run(model(attn_impl="explicit"), device=device)["train_loss"]
    c = run(model(attn_impl="explicit"), seed=1, device=device)["train_loss"]
    assert a == b
    assert a != c


def dropout_model(seed=0):
    # Dropout draws from the generator of the device the run is on, so an exact resume needs that
    # generator's state. Explicit attention (plain matmuls) keeps every kernel deterministic on GPUs
    # too, so the random streams are the only thing a resumed run could get wrong.
    return model(seed, dropout=0.1, attn_impl="explicit")


def interrupted(tmp_path, m, **kw):
    """Train 20 of 40 steps ("interrupted" by a callback) with checkpoints; return the file."""
    ckpt = tmp_path / "run.pt"
    run(m, steps=40, checkpoint_path=ckpt, checkpoint_every=10, callbacks=[lambda info: info["step"] == 19], **kw)
    return ckpt


def test_resume_continues_loss_curve_exactly(tmp_path, device):
    full = run(dropout_model(), steps=40, device=device)
    ckpt = interrupted(tmp_path, dropout_model(), device=device)
    saved = torch.load(ckpt, weights_only=True)  # RNG states are plain tensors: safe loading works
    generator = "torch" if device.type == "cpu" else device.type
    assert saved["step"] == 20 and generator in saved["rng"]
    resumed = run(dropout_model(seed=123), steps=40, device=device, checkpoint_path=ckpt, resume=True)
    assert resumed["train_loss"] == full["train_loss"]
    assert resumed["val_loss"] == full["val_loss"]
    # The comparison has teeth: with the device's generator elsewhere, dropout draws other masks.
    saved["rng"][generator] = torch.Generator(device).manual_seed(1).get_state()
    torch.save(saved, ckpt)
    other = run(dropout_model(seed=123), steps=40, device=device, checkpoint_path=ckpt, resume=True)
    assert other["train_loss"][:20] == full["train_loss"][:20]
    assert other["train_loss"][20:] != full["train_loss"][20:]


class _ReportsGPU(torch.Tensor):
    """Bytes on the CPU, but it says it lives on a GPU: an RNG state as ``load_checkpoint(...,
    map_location="cuda")`` hands it back there. Moving it to the CPU gives a plain tensor."""

    @property
    def device(self):
        return torch.device("cuda", 0)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = super().__torch_function__(func, types, args, kwargs)
        to_cpu = func is torch.Tensor.cpu or (func is torch.Tensor.to and any(
            str(a).startswith("cpu") for a in [*args[1:], *kwargs.values()]))
        return out.as_subclass(torch.Tensor) if to_cpu and isinstance(out, torch.Tensor) else out


def test_resume_hands_torch_cpu_byte_tensors_whatever_the_checkpoint_was_loaded_onto(tmp_path, monkeypatch):
    # The bug this guards: the whole checkpoint was loaded with map_location=<the model's device>,
    # and torch.set_rng_state was handed a CUDA tensor. Simulated here with a loader that returns
    # the RNG states as tensors that report a GPU.
    full = run(dropout_model(), steps=40)
    ckpt = interrupted(tmp_path, dropout_model())

    def load_onto_gpu(path, map_location="cpu"):
        loaded = load_checkpoint(path, map_location)
        loaded["rng"] = {k: v.as_subclass(_ReportsGPU) if isinstance(v, torch.Tensor) else v
                         for k, v in loaded["rng"].items()}
        return loaded

    handed, set_rng_state = [], torch.set_rng_state
    def spy(state):
        handed.append((state.device.type, state.dtype))
        set_rng_state(state)
    monkeypatch.setattr(train_module, "load_checkpoint", load_onto_gpu)
    monkeypatch.setattr(torch, "set_rng_state", spy)
    resumed = run(dropout_model(seed=123), steps=40, checkpoint_path=ckpt, resume=True)
    assert handed == [("cpu", torch.uint8)]
    assert resumed["train_loss"] == full["train_loss"]


def test_resume_on_another_kind_of_device_warns_but_continues_model_and_optimizer(tmp_path):
    full = run(model(), steps=40)
    ckpt = interrupted(tmp_path, model())
    saved = torch.load(ckpt, weights_only=True)
    saved["rng"]["cuda"] = torch.zeros(16, dtype=torch.uint8)  # as if the run had been on a GPU
    torch.save(saved, ckpt)
    with pytest.warns(UserWarning, match="saved by a run on cuda and resumes on cpu.*cannot continue exactly"):
        resumed = run(model(seed=123), steps=40, checkpoint_path=ckpt, resume=True)
    # Without dropout the curve depends only on the weights, the optimizer's state and the batches.
    assert resumed["train_loss"] == full["train_loss"]


def test_checkpoints_with_only_numpy_and_torch_streams_still_resume_exactly(tmp_path):
    # What checkpoints held before the device generators were saved; a CPU run still writes exactly that.
    full = run(dropout_model(), steps=40)
    ckpt = interrupted(tmp_path, dropout_model())
    saved = torch.load(ckpt, weights_only=True)
    assert set(saved["rng"]) == {"numpy", "torch"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed = run(dropout_model(seed=123), steps=40, checkpoint_path=ckpt, resume=True)
    assert resumed["train_loss"] == full["train_loss"]


def test_checkpoint_is_weights_only_and_rebuilds_model(tmp_path, device):
    m = model()
    run(m, steps=5, checkpoint_path=tmp_path / "c.pt", device=device)
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    assert raw["format"] == "minilm-checkpoint-v1"
    again = model_from_checkpoint(tmp_path / "c.pt")  # onto the CPU, whatever device wrote it
    assert all(p.device.type == "cpu" for p in again.parameters())
    x = torch.randint(0, 16, (2, 16)).to(device)
    with torch.no_grad():
        assert torch.equal(again.to(device)(x), m(x))  # the same weights, the same kernels: bit for bit
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left nothing behind


def test_divergence_raises_and_keeps_last_good_checkpoint(tmp_path, device):
    ckpt = tmp_path / "c.pt"
    m = model()
    good = run(m, steps=10, checkpoint_path=ckpt, device=device)
    def poison(info):  # simulate a blow-up after the checkpoint was written
        if info["step"] == 12:
            with torch.no_grad():
                info["model"].head.weight.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match="lower learning rate"):
        run(m, steps=30, checkpoint_path=ckpt, resume=True, callbacks=[poison], device=device)
    saved = load_checkpoint(ckpt)
    assert saved["step"] == 10 and saved["history"]["train_loss"] == good["train_loss"]
    assert all(torch.isfinite(t).all() for t in saved["model"].values())


def test_bad_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="vocab_size"):
        train(model(vocab_size=8), TRAIN, steps=1, progress=False)
    with pytest.raises(ValueError, match="context_length"):
        train(model(), TRAIN, steps=1, context_length=64, progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint("/nonexistent/x.pt")


def test_corrupt_checkpoint_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable minilm checkpoint"):
        load_checkpoint(bad)


def test_schedules():
    cos = schedules.cosine(100, warmup_steps=10, final_fraction=0.1)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0)
    assert cos(10) == pytest.approx(1.0) and cos(100) == pytest.approx(0.1)
    assert cos(55) == pytest.approx(0.55)
    w = schedules.wsd(100, warmup_steps=5, decay_fraction=0.2)
    assert w(50) == 1.0 and w(79) == 1.0 and w(90) == pytest.approx(0.5) and w(100) == 0.0
    h = run(model(), steps=20, schedule=schedules.cosine(20, warmup_steps=5))
    assert h["lr"][0] == pytest.approx(3e-3 / 5) and h["lr"][4] == pytest.approx(3e-3)


def test_device_auto_and_errors():
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_no_float64_in_model_or_training(device):
    m = model()
    run(m, steps=3, device=device)
    assert all(p.dtype == torch.float32 and p.device.type == device.type for p in m.parameters())


@pytest.mark.parametrize("kind", ["gpt", "rwkv", "lstm", "ngram", "ssm"])
def test_every_model_kind_round_trips_through_a_checkpoint(kind, tmp_path, device):
    from minilm.checkpoint import save_checkpoint
    from minilm.models import build_model

    torch.manual_seed(0)
    m = build_model(kind, vocab_size=16, size="tiny", context_length=16)
    if hasattr(m, "fit"):
        m.fit(TRAIN[:5000])
    m.to(device)  # saved from the device (the n-gram model has no tensors to move)
    save_checkpoint(tmp_path / "m.pt", m)
    again = model_from_checkpoint(tmp_path / "m.pt").to(device)
    x = torch.randint(0, 16, (2, 16)).to(device)
    m.eval()
    again.eval()
    with torch.no_grad():
        assert torch.equal(again(x), m(x))


def test_sophia_gets_its_hessian_refresh_inside_train(device):
    """train() calls Sophia.update_hessian before backward when it is due: same result as a hand loop."""
    import torch.nn.functional as F

    from minilm.data import get_batch
    from minilm.optim import Sophia

    steps, k = 7, 3
    a = model(seed=1, attn_impl="explicit").to(device)  # the optimizer is built on the device's tensors
    opt_a = Sophia(a.parameters(), lr=1e-3, hessian_interval=k)
    run(a, steps=steps, optimizer=opt_a, grad_clip=None, eval_every=100, device=device, autocast=False)

    b = model(seed=1, attn_impl="explicit").to(device)
    opt_b = Sophia(b.parameters(), lr=1e-3, hessian_interval=k)
    torch.manual_seed(0)  # as train() does: the labels Sophia-G resamples come from the device's generator
    rng = np.random.default_rng(0)
    refreshes = 0
    for _ in range(steps):
        x, y = get_batch(TRAIN, 16, 16, device, rng)
        logits = b(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        opt_b.zero_grad()
        if opt_b.hessian_due():  # steps 1, k+1, 2k+1 (the paper's t mod k = 1)
            opt_b.update_hessian(logits=logits)
            refreshes += 1
        loss.backward()
        opt_b.step()
    assert refreshes == 3
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)
    assert all(float(opt_a.state[p]["hessian"].abs().sum()) > 0 for p in a.parameters())


def test_default_optimizer_matches_per_tensor_adamw_and_skips_decay_on_vectors(device):
    # default_optimizer may use PyTorch's fused kernel; its steps must equal the plain per-tensor
    # AdamW loop with decay 0.1 on matrices and none on the norms' gains.
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, context_length=8, n_layers=1, n_heads=2, d_model=16,
                          attn_impl="explicit")).to(device)  # deterministic gradients on GPUs too
    ref = copy.deepcopy(model)
    opt = default_optimizer(model, lr=1e-2)
    matrices = [p for p in ref.parameters() if p.dim() >= 2]
    vectors = [p for p in ref.parameters() if p.dim() < 2]
    ref_opt = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.1}, {"params": vectors, "weight_decay": 0.0}],
                                lr=1e-2, betas=(0.9, 0.95), foreach=False)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    idx = torch.randint(0, 11, (4, 9)).to(device)
    for _ in range(5):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            m.loss(idx[:, :-1], idx[:, 1:]).backward()
            o.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_evaluate_runs_where_the_model_lives(monkeypatch, device):
    m = model().to(device)
    ngram = build_model("ngram", vocab_size=16, size="tiny", context_length=16).fit(TRAIN[:5000])
    expected = evaluate(m, VAL, device=device), evaluate(ngram, VAL, context_length=16, device="cpu")

    def no_resolving(device="auto", verbose=False):
        raise AssertionError(f"evaluate asked resolve_device({device!r}) instead of using the model's device")
    monkeypatch.setattr(train_module, "resolve_device", no_resolving)
    # GPT: its parameters' device; the n-gram model has no parameters or buffers: CPU.
    assert (evaluate(m, VAL), evaluate(ngram, VAL, context_length=16)) == expected
    assert train_module._model_device(m).type == device.type
    assert train_module._model_device(model().to("meta")) == torch.device("meta")


def test_train_config_and_keywords_agree():
    kw = dict(steps=12, batch_size=16, lr=3e-3, eval_every=5, progress=False, device="cpu", seed=0)
    by_keywords = train(model(), TRAIN, VAL, **kw)
    by_config = train(model(), TRAIN, VAL, TrainConfig(**kw))
    other = TrainConfig(**{**kw, "lr": 1.0, "seed": 5})
    overridden = train(model(), TRAIN, VAL, other, lr=3e-3, seed=0)
    for h in (by_config, overridden):
        assert h["train_loss"] == by_keywords["train_loss"] and h["val_loss"] == by_keywords["val_loss"]
    assert (other.lr, other.seed) == (1.0, 5)  # keywords override a copy, never the config passed in
    assert set(by_keywords) == {"step", "train_loss", "lr", "tokens", "flops", "time", "val_step", "val_loss",
                                "device"}
    assert [f.name for f in dataclasses.fields(TrainConfig)] == [
        "steps", "batch_size", "context_length", "lr", "weight_decay", "grad_clip", "optimizer", "schedule",
        "eval_every", "eval_batches", "device", "seed", "callbacks", "checkpoint_path", "checkpoint_every",
        "resume", "progress", "autocast", "compile", "threads", "token_weights"]


def test_unknown_option_is_named_with_the_valid_ones():
    with pytest.raises(TypeError, match=r"unknown keyword argument 'stpes' \(did you mean 'steps'\?\).*batch_size"):
        train(model(), TRAIN, stpes=10, progress=False, device="cpu")
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        train(model(), TRAIN, None, {"steps": 10})


@pytest.mark.parametrize("bad", [
    dict(steps=-1), dict(steps=2.5), dict(batch_size=0), dict(context_length=0), dict(lr=-1e-3),
    dict(lr=float("nan")), dict(weight_decay=-0.1), dict(grad_clip=0.0), dict(optimizer="adam"),
    dict(schedule=0.5), dict(eval_every=0), dict(eval_batches=0), dict(seed=-1), dict(callbacks=[1]),
    dict(checkpoint_every=0), dict(resume=True), dict(autocast="bf16"), dict(threads=0),
])
def test_bad_options_get_clear_errors(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"TrainConfig.{name} must be"):
        TrainConfig(**bad)
    with pytest.raises(ValueError, match=f"TrainConfig.{name} must be"):
        train(model(), TRAIN, progress=False, device="cpu", **bad)


def test_threads_option_sets_torch_threads_else_keeps_minilms_default(monkeypatch):
    calls = []
    monkeypatch.setattr(train_module, "configure_threads", lambda threads=None, verbose=True: calls.append(threads))
    monkeypatch.setattr(train_module, "ensure_threads", lambda: calls.append("default"))
    run(model(), steps=1, threads=3)
    run(model(), steps=1)
    assert calls == [3, "default"]
