"""Mixing laws (minilm.mixing): proportions, the law's fit and its optimum, the batch sampler."""

import numpy as np
import pytest
import torch

from minilm.data import MarkovLanguage
from minilm.mixing import best_mixture, check_proportions, fit_mixing_law, gauge, mixing_law, simplex_grid
from minilm.models import GPT, GPTConfig
from minilm.train import TrainConfig, train


def test_check_proportions_accepts_simplex_and_names():
    assert np.allclose(check_proportions([0.2, 0.3, 0.5]), [0.2, 0.3, 0.5])
    assert np.allclose(check_proportions({"a": 0.4, "c": 0.6}, names=["a", "b", "c"]), [0.4, 0.0, 0.6])


@pytest.mark.parametrize("bad, match", [([0.5, 0.6], "sum to 1"), ([1.5, -0.5], ">= 0"),
                                        ([float("nan"), 1.0], "finite"), ([], "flat list")])
def test_check_proportions_rejects_bad(bad, match):
    with pytest.raises(ValueError, match=match):
        check_proportions(bad)


def test_check_proportions_unknown_name():
    with pytest.raises(ValueError, match="unknown domain"):
        check_proportions({"z": 1.0}, names=["a", "b"])


def test_simplex_grid_rows_sum_to_one():
    g = simplex_grid(3, 4)
    assert len(g) == 15 and np.allclose(g.sum(axis=1), 1.0) and (g >= 0).all()   # C(4+2, 2) = 15


def _known_law():
    c = np.array([1.0, 1.5])
    k = np.array([0.8, 0.5])
    t = np.array([[-1.5, 0.5, 1.0], [0.7, -1.2, 0.5]])
    return c, *gauge(k, t)


def test_fit_recovers_known_parameters():
    c, k, t = _known_law()
    r = simplex_grid(3, 4)
    y = mixing_law(r, c, k, t)
    fit = fit_mixing_law(r, y)
    assert np.allclose(fit.c, c, atol=1e-3)
    assert np.allclose(fit.k, k, rtol=1e-3)
    assert np.allclose(fit.t, t, atol=1e-3)
    assert np.allclose(fit.predict(r), y, atol=1e-6)


def test_gauge_leaves_law_unchanged_on_simplex():
    rng = np.random.default_rng(0)
    k, t = np.array([0.5]), rng.normal(size=(1, 3))
    r = simplex_grid(3, 5)
    k2, t2 = gauge(k, t)
    assert np.allclose(mixing_law(r, [1.0], k, t), mixing_law(r, [1.0], k2, t2))
    assert np.allclose(t2.sum(axis=1), 0.0)


def test_best_mixture_matches_brute_force_optimum():
    c, k, t = _known_law()
    fit = fit_mixing_law(simplex_grid(3, 4), mixing_law(simplex_grid(3, 4), c, k, t))
    w = np.array([0.5, 0.5])
    r, v = best_mixture(fit, w)
    fine = simplex_grid(3, 200)
    truth = mixing_law(fine, c, k, t) @ w
    assert np.isclose(r.sum(), 1.0) and (r >= 0).all()
    assert v <= truth.min() + 1e-9
    assert np.isclose(v, float(mixing_law(r, c, k, t) @ w), atol=1e-6)
    assert np.allclose(r, fine[np.argmin(truth)], atol=0.01)


def test_fit_needs_enough_mixtures():
    with pytest.raises(ValueError, match="at least 4 mixtures"):
        fit_mixing_law(simplex_grid(3, 1), np.ones(3))


# --- the two training hooks lab 05 uses (minilm.train): per-token weights and a batch source ---------
LANG = MarkovLanguage(vocab_size=16, order=1, concentration=0.2, seed=0)
TRAIN = LANG.sample(20_000, seed=1)
VAL = LANG.sample(2_000, seed=2)


def model(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=16, context_length=16, n_layers=1, n_heads=2, d_model=32, attn_impl="explicit"))


def run(m, **kw):
    args = dict(steps=5, batch_size=8, lr=3e-3, eval_every=5, progress=False, device="cpu", seed=0)
    args.update(kw)
    return train(m, TRAIN, VAL, **args)


def test_token_weights_of_ones_equal_the_plain_loss():
    plain = run(model(), steps=5, eval_every=5)
    ones = run(model(), steps=5, eval_every=5, token_weights=lambda x, y, loss: torch.ones_like(loss))
    assert np.allclose(plain["train_loss"], ones["train_loss"], rtol=1e-5, atol=1e-6)


def test_token_weights_mask_trains_on_kept_tokens_only():
    seen = []

    def keep_first_half(x, y, loss):
        assert x.shape == y.shape == loss.shape and not loss.requires_grad
        w = torch.zeros_like(loss)
        w[:, : loss.shape[1] // 2] = 1.0
        seen.append(float((loss * w).sum() / w.sum()))
        return w

    out = run(model(), steps=3, eval_every=3, token_weights=keep_first_half)
    assert np.allclose(out["train_loss"], seen, rtol=1e-5)


def test_token_weights_must_be_callable():
    with pytest.raises(ValueError, match="token_weights"):
        TrainConfig(token_weights=3)


class _Source:
    """A batch source: windows of TRAIN, drawn with the generator train passes in."""

    max_token = int(TRAIN.max())

    def __init__(self):
        self.calls = 0

    def sample_batch(self, batch_size, context_length, rng):
        self.calls += 1
        s = rng.integers(0, len(TRAIN) - context_length - 1, size=batch_size)
        xy = torch.from_numpy(np.stack([TRAIN[i: i + context_length + 1] for i in s]).astype(np.int64))
        return xy[:, :-1], xy[:, 1:]


def test_batch_source_is_used_and_reproducible():
    src = _Source()
    a = train(model(), src, VAL, TrainConfig(steps=6, batch_size=8, lr=3e-3, eval_every=6, progress=False,
                                             device="cpu", seed=0))
    b = train(model(), _Source(), VAL, TrainConfig(steps=6, batch_size=8, lr=3e-3, eval_every=6, progress=False,
                                                   device="cpu", seed=0))
    assert src.calls == 6 and a["train_loss"] == b["train_loss"]


def test_batch_source_max_token_checked_against_vocab():
    src = _Source()
    src.max_token = 99
    with pytest.raises(ValueError, match="vocab_size"):
        train(model(), src, VAL, TrainConfig(steps=1, progress=False, device="cpu"))


def _domains():
    from minilm.mixing import Domain
    return [Domain(name, np.full(200, i, dtype=np.int64), np.full(50, i, dtype=np.int64)) for i, name in
            enumerate("abc")]


def test_mixture_sampler_rows_follow_the_proportions():
    from minilm.mixing import MixtureSampler
    s = MixtureSampler(_domains(), {"a": 0.5, "b": 0.3, "c": 0.2})
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = s.rows_per_domain(7, rng)
        assert counts.sum() == 7 and np.all(np.abs(counts - s.proportions * 7) < 1)   # never a row off
        x, y = s.sample_batch(10, 8, rng)
        assert x.shape == y.shape == (10, 8)
        assert torch.equal(x[:, 0], torch.from_numpy(s.last_domains))              # each row from its domain
    assert np.allclose(list(s.realised().values()), [0.5, 0.3, 0.2], atol=0.01)
    assert s.max_token == 2


def test_mixture_sampler_bad_proportions():
    from minilm.mixing import MixtureSampler
    with pytest.raises(ValueError, match="sum to 1"):
        MixtureSampler(_domains(), [0.5, 0.5, 0.5])


def test_markov_from_transition_matches_given_rows():
    P = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float64)
    lang = MarkovLanguage.from_transition(P)
    assert np.allclose(lang.stationary, [2 / 3, 1 / 3])                      # closed form pi P = pi
    toks = lang.sample(50_000, seed=0)
    assert abs(np.mean(toks) - 1 / 3) < 0.02
    with pytest.raises(ValueError, match="shape"):
        MarkovLanguage.from_transition(np.full((3, 2), 0.5))
    with pytest.raises(ValueError, match="> 0"):
        MarkovLanguage.from_transition(np.array([[1.0, 0.0], [0.5, 0.5]]))


# --- the fit's uncertainty, targets, the step law and steps-to-reach ---------------------------------
def test_fit_uncertainty_is_calibrated_on_noisy_points():
    """Over many noise draws, the spread of the prediction at a held-out mixture matches the fit's
    own standard error (delta method), and the leave-one-out error matches the noise level."""
    c, k, t = _known_law()
    r = np.vstack([simplex_grid(3, 4), [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]])   # 17 mixtures
    query = np.array([0.3, 0.3, 0.4])
    clean = mixing_law(r, c, k, t)
    rng = np.random.default_rng(0)
    sigma = 0.01
    preds, stds, loos = [], [], []
    for _ in range(150):
        fit = fit_mixing_law(r, clean + rng.normal(0, sigma, clean.shape))
        preds.append(fit.predict(query))
        stds.append(fit.predict_std(query))
        loos.append(fit.loo)
    spread = np.std(preds, axis=0)
    assert np.all(np.abs(np.median(stds, axis=0) / spread - 1) < 0.35), (np.median(stds, axis=0), spread)
    assert np.all(np.abs(np.mean(loos, axis=0) / sigma - 1) < 0.5)
    assert np.allclose(np.mean(preds, axis=0), mixing_law(query, c, k, t), atol=3 * spread.max() / np.sqrt(150) + 1e-3)


def test_target_weights_by_name_mapping_or_array():
    c, k, t = _known_law()
    r = simplex_grid(3, 4)
    fit = fit_mixing_law(r, mixing_law(r, c, k, t), names=["x", "y"])
    q = np.array([0.2, 0.5, 0.3])
    both = fit.predict(q)
    assert fit.target(q, "y") == pytest.approx(both[1])
    assert fit.target(q, {"x": 0.25, "y": 0.75}) == pytest.approx(0.25 * both[0] + 0.75 * both[1])
    assert fit.target(q, [2.0, 0.0]) == pytest.approx(2 * both[0])            # weights need not sum to 1
    assert fit.target(r, "x").shape == (len(r),)
    assert fit.target_std(q, "x") == pytest.approx(fit.predict_std(q)[0])   # one domain, weight 1
    with pytest.raises(ValueError, match="unknown validation domain"):
        fit.target(q, "z")
    with pytest.raises(ValueError, match="2 finite numbers"):
        fit.target(q, [1.0, 0.0, 0.0])


def test_step_law_fit_recovers_known_parameters_and_inverts():
    from minilm.mixing import StepLaw, fit_step_law

    truth = StepLaw(E=1.8, B=3.0, beta=0.6)
    steps = np.arange(10, 310, 20)
    law = fit_step_law(steps, truth(steps))
    assert (law.E, law.B, law.beta) == pytest.approx((1.8, 3.0, 0.6), rel=1e-4)
    assert law.steps_to(float(truth(500))) == pytest.approx(500, rel=1e-4)
    assert law.steps_to(1.7) == float("inf")                                  # below E: never
    with pytest.raises(ValueError, match="at least 4"):
        fit_step_law([1, 2, 3], [3.0, 2.5, 2.2])


def test_steps_to_reach_interpolates_between_recorded_points():
    from minilm.mixing import steps_to_reach

    steps, losses = [10, 20, 30, 40], [3.0, 2.6, 2.4, 2.3]
    assert steps_to_reach(steps, losses, 2.5) == pytest.approx(25.0)
    assert steps_to_reach(steps, losses, 3.5) == 10.0                         # already there at the first point
    assert steps_to_reach(steps, losses, 2.0) is None


def test_text_domains_share_one_vocabulary():
    from minilm.mixing import text_domains

    domains, tok = text_domains(n_chars=20_000, val_fraction=0.1)
    assert [d.name for d in domains] == ["prose", "code"]
    for d in domains:
        assert len(d.train) == 18_000 and len(d.val) == 2_000 and d.train.max() < tok.vocab_size
