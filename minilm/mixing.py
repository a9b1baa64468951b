"""Data mixing (talk section 8, lab 05): train on several domains in chosen proportions, and
predict each domain's loss from the proportions with a data mixing law.

A mixture r = (r_1, ..., r_K) lies on the simplex: r_j >= 0, sum_j r_j = 1; r_j is the share of
training rows drawn from domain j. ``MixtureSampler`` feeds ``minilm.train.train`` batches drawn
by r (seeded, with the proportions it realised). Ye et al. 2024, "Data Mixing Laws" (arXiv
2403.16952, sec. 3), found that the validation loss on domain i of a model trained on mixture r
follows

    L_i(r) = c_i + k_i * exp( sum_j t_ij r_j )                                   (the mixing law)

(c_i: the loss no mixture removes, k_i > 0: a scale, t_ij: how much training on domain j moves
domain i; t_ij < 0 helps). The target is one domain or a weighted sum sum_i w_i L_i(r), and the
best mixture minimises it on the simplex (``best_mixture``). Because sum_j r_j = 1, adding a
constant a to every t_ij and multiplying k_i by exp(-a) changes nothing: fits here report t in
the gauge sum_j t_ij = 0, where the parameters are unique.

Their nested pipeline (sec. 4) predicts large runs from small ones: fit a step law
L(S) = E + B * S^(-beta) to the loss curve of each short run, extrapolate it to the target number
of steps S, and fit the mixing law to those extrapolated losses (``StepLaw``, ``fit_step_law``;
their model-size law is the same move along N, which tiny labs skip).

Domains: ``markov_domains`` (synthetic languages with an exact entropy rate, whose next-token
rows are shared between domains for a chosen fraction of contexts and private to each otherwise)
and ``text_domains`` (Python's own documentation as prose vs standard-library source as code,
one character vocabulary). ``train_mixture`` trains a small GPT on one mixture and scores it on
every domain. ``fit_mixing_law`` and ``fit_step_law`` use scipy (imported inside them).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from minilm.data.corpora import pydoc_text, stdlib_code, train_val_split
from minilm.data.languages import MarkovLanguage
from minilm.data.tokenizers import CharTokenizer, encode_to_array
from minilm.scaling.hparams import make_gpt, train_gpt
from minilm.scaling.sweep import score_loss


# ------------------------------------------------------------------------------ proportions
def check_proportions(r: Sequence[float] | Mapping[str, float], names: Sequence[str] | None = None,
                      atol: float = 1e-6) -> np.ndarray:
    """``r`` as a float64 array on the simplex, or a ValueError that says what is wrong.

    r: one proportion per domain (a sequence in the domains' order, or {name: proportion}, where
    a missing name means 0). names: the domains' names (needed for a dict, and to check length).
    """
    if isinstance(r, Mapping):
        if names is None:
            raise ValueError("proportions given by name need the domains' names: pass names=[...]")
        unknown = [k for k in r if k not in names]
        if unknown:
            raise ValueError(f"unknown domain(s) {unknown} in the proportions: the domains are {list(names)}")
        r = [r.get(n, 0.0) for n in names]
    try:
        arr = np.array(r, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"proportions must be numbers, got {r!r}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"proportions must be a flat list with one number per domain, got shape {arr.shape}")
    if names is not None and arr.size != len(names):
        raise ValueError(f"{arr.size} proportions for {len(names)} domains ({list(names)}): give one per domain")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"proportions must be finite numbers, got {arr.tolist()}")
    if np.any(arr < 0):
        raise ValueError(f"proportions must be >= 0, got {arr.tolist()}: a domain cannot have a negative share")
    if abs(arr.sum() - 1.0) > atol:
        raise ValueError(f"proportions must sum to 1, got sum {arr.sum():.6g} for {arr.tolist()}: "
                         "divide by their sum if they are relative weights")
    return arr


def simplex_grid(n_domains: int, divisions: int) -> np.ndarray:
    """Every mixture whose proportions are multiples of 1/divisions: (n, n_domains), rows sum to 1."""
    if n_domains < 1 or divisions < 1:
        raise ValueError(f"need n_domains >= 1 and divisions >= 1, got {n_domains}, {divisions}")
    rows = [c for c in itertools.product(range(divisions + 1), repeat=n_domains - 1) if sum(c) <= divisions]
    grid = np.array([[*c, divisions - sum(c)] for c in rows], dtype=np.float64)
    return grid / divisions


# ------------------------------------------------------------------------------ domains and sampling
@dataclass
class Domain:
    """One source of training data: token arrays, and optionally a label per training token."""

    name: str
    train: np.ndarray
    val: np.ndarray
    labels: np.ndarray | None = None      # (len(train),) ints, e.g. 0 = clean, 1 = noise (lab 05's SLM)
    entropy_rate: float | None = None     # nats/token, exact for synthetic languages

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.train):
            raise ValueError(f"domain {self.name!r}: {len(self.labels)} labels for {len(self.train)} training tokens")


class MixtureSampler:
    """Training batches whose rows come from ``domains`` in ``proportions``: a batch source for
    ``minilm.train.train`` (pass it where the training tokens go).

    Each batch of B rows holds floor(r_j B) rows of domain j; the B - sum_j floor(r_j B) rows
    left over go to domains drawn by systematic sampling over the fractional parts r_j B -
    floor(r_j B), so domain j's expected share is exactly r_j and a batch is never more than one
    row off it. Each row is a random window of its domain's training tokens. Everything random
    comes from the generator ``train`` passes in (the run's seed), so a run repeats exactly.
    ``realised()`` gives the proportions of rows actually drawn so far.
    """

    def __init__(self, domains: Sequence[Domain], proportions: Sequence[float] | Mapping[str, float]):
        if not domains:
            raise ValueError("a mixture needs at least one domain")
        names = [d.name for d in domains]
        if len(set(names)) != len(names):
            raise ValueError(f"domain names must be unique, got {names}")
        self.domains = list(domains)
        self.names = names
        self.proportions = check_proportions(proportions, names)
        self.rows_drawn = np.zeros(len(domains), dtype=np.int64)
        self.last_domains: np.ndarray | None = None   # (B,) domain index of each row of the last batch
        self._last_labels: torch.Tensor | None = None

    @property
    def max_token(self) -> int:
        """The largest token id any domain can produce (``train`` checks it against the vocabulary)."""
        return max(int(np.max(d.train)) for d in self.domains)

    def rows_per_domain(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """How many of ``batch_size`` rows each domain gets in one batch (see the class docstring)."""
        exact = self.proportions * batch_size
        counts = np.floor(exact + 1e-9).astype(np.int64)
        frac = np.clip(exact - counts, 0.0, None)
        left = batch_size - int(counts.sum())
        if left > 0:  # systematic sampling: points u, u + 1, ... over the cumulative fractions
            points = rng.random() + np.arange(left)
            edges = np.cumsum(frac) * left / frac.sum()                  # ends at exactly `left`
            hit = np.minimum(np.searchsorted(edges, points, side="right"), len(counts) - 1)
            counts += np.bincount(hit, minlength=len(counts))
        return counts

    def sample_batch(self, batch_size: int, context_length: int,
                     rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), int64 (batch_size, context_length) each on the CPU: rows by the proportions."""
        counts = self.rows_per_domain(batch_size, rng)
        which = np.repeat(np.arange(len(self.domains)), counts)          # (B,) domain of each row
        windows, labels = [], []
        for j in which:
            d = self.domains[j]
            if len(d.train) < context_length + 1:
                raise ValueError(f"domain {d.name!r} has {len(d.train)} tokens, fewer than a window of "
                                 f"{context_length + 1}")
            s = int(rng.integers(0, len(d.train) - context_length))
            windows.append(np.asarray(d.train[s: s + context_length + 1], dtype=np.int64))
            labels.append(d.labels[s + 1: s + context_length + 1] if d.labels is not None
                          else np.full(context_length, j))
        xy = torch.from_numpy(np.stack(windows))                          # (B, T + 1)
        self.rows_drawn += counts
        self.last_domains = which
        self._last_labels = torch.from_numpy(np.stack(labels).astype(np.int64))  # (B, T), aligned with y
        return xy[:, :-1].contiguous(), xy[:, 1:].contiguous()

    def last_labels(self) -> torch.Tensor:
        """The label of every target token y of the last batch (B, T): the domain's ``labels``, or
        the domain's index where it has none."""
        if self._last_labels is None:
            raise ValueError("no batch drawn yet: call sample_batch (train does) first")
        return self._last_labels

    def realised(self) -> dict[str, float]:
        """The share of rows drawn from each domain so far (what the run actually trained on)."""
        total = int(self.rows_drawn.sum())
        if total == 0:
            return {n: float("nan") for n in self.names}
        return {n: float(c / total) for n, c in zip(self.names, self.rows_drawn)}


def markov_domains(n_domains: int = 3, vocab_size: int = 32, order: int = 2, overlap: float = 0.5,
                   concentrations: float | Sequence[float] = 0.1, n_train: int = 200_000, n_val: int = 8_192,
                   seed: int = 0, names: Sequence[str] | None = None) -> list[Domain]:
    """Synthetic domains over one vocabulary that share a chosen part of their structure.

    Each domain is an order-``order`` Markov chain. For a fraction ``overlap`` of the V^order
    contexts (the same contexts for every domain) the next-token row is *shared*: one Dirichlet
    draw used by all domains, so learning it on any domain helps the others. Every other row is
    *private*: drawn for each domain with its own concentration (small = predictable rows). Rows
    get a 1e-6 floor so every chain is irreducible; each entropy rate is exact.
    """
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"overlap must be in [0, 1], got {overlap}")
    conc = np.broadcast_to(np.asarray(concentrations, dtype=np.float64), (n_domains,))
    if np.any(conc <= 0):
        raise ValueError(f"concentrations must be > 0, got {conc.tolist()}")
    names = list(names) if names is not None else [chr(ord("A") + i) for i in range(n_domains)]
    if len(names) != n_domains:
        raise ValueError(f"{len(names)} names for {n_domains} domains")
    rng = np.random.default_rng(seed)
    n_ctx = vocab_size ** order
    shared = np.zeros(n_ctx, dtype=bool)
    shared[rng.permutation(n_ctx)[: round(overlap * n_ctx)]] = True
    shared_rows = rng.dirichlet(np.full(vocab_size, float(np.median(conc))), size=n_ctx)   # (S, V)
    domains = []
    for i, name in enumerate(names):
        private = rng.dirichlet(np.full(vocab_size, conc[i]), size=n_ctx)                  # (S, V)
        P = np.where(shared[:, None], shared_rows, private)
        lang = MarkovLanguage.from_transition((P + 1e-6) / (1 + vocab_size * 1e-6), order)
        domains.append(Domain(name, lang.sample(n_train, seed * 1000 + 2 * i + 1),
                              lang.sample(n_val + 1, seed * 1000 + 2 * i + 2), entropy_rate=lang.entropy_rate()))
    return domains


def text_domains(n_chars: int = 400_000, val_fraction: float = 0.1) -> tuple[list[Domain], CharTokenizer]:
    """Python's documentation ("prose") and standard-library source ("code") as two domains with
    one character vocabulary; each is cut to its first ``n_chars`` characters, the last
    ``val_fraction`` of which are its validation text. Returns (domains, tokenizer)."""
    texts = {"prose": pydoc_text()[:n_chars], "code": stdlib_code(n_chars)[:n_chars]}
    tok = CharTokenizer.fit("".join(texts.values()))
    domains = []
    for name, text in texts.items():
        train, val = train_val_split(text, val_fraction)
        domains.append(Domain(name, encode_to_array(tok, train), encode_to_array(tok, val)))
    return domains, tok


@dataclass
class MixtureRun:
    """One small model trained on one mixture (``train_mixture``)."""

    proportions: np.ndarray            # (K,) the mixture asked for
    losses: np.ndarray                 # (M,) held-out loss on each domain after training (nats/token)
    realised: dict[str, float]         # the share of rows actually drawn from each domain
    curve_steps: list[int] = field(default_factory=list)
    curve: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))   # (points, M) held-out losses
    seconds: float = 0.0


class _DomainCurve:
    """A ``train`` callback: every domain's held-out loss after every ``every`` steps."""

    def __init__(self, domains: Sequence[Domain], every: int, context_length: int):
        self.domains, self.every, self.T = domains, every, context_length
        self.steps: list[int] = []
        self.losses: list[np.ndarray] = []

    def __call__(self, info: dict) -> None:
        done = info["step"] + 1
        if done % self.every == 0:
            self.steps.append(done)
            self.losses.append(_domain_losses(info["model"], self.domains, self.T))


def _domain_losses(model: torch.nn.Module, domains: Sequence[Domain], context_length: int) -> np.ndarray:
    """Mean next-token loss on every window of each domain's validation tokens: (M,)."""
    dev = next(model.parameters()).device
    return np.array([score_loss(model, d.val, context_length, 0, dev) for d in domains])


def train_mixture(config: Mapping, domains: Sequence[Domain], proportions, *, vocab_size: int, steps: int,
                  lr: float, batch_size: int = 16, context_length: int = 32, seed: int = 0,
                  device: str | torch.device = "cpu", curve_every: int | None = None) -> MixtureRun:
    """Train a fresh GPT (``minilm.scaling.hparams.make_gpt(vocab_size, config)``) for ``steps``
    steps on batches drawn from ``domains`` in ``proportions`` (``MixtureSampler``), at a constant
    learning rate, and score it on every domain's validation tokens.

    The initial weights and the batch stream depend on ``seed`` only, so runs at different mixtures
    differ by their data alone. With a constant learning rate the first S steps of a longer run
    are the run of S steps: ``curve_every`` records every domain's loss along the way (``curve``).
    """
    sampler = MixtureSampler(domains, proportions)
    model = make_gpt(vocab_size, config, context_length, seed)
    curve = _DomainCurve(domains, curve_every, context_length) if curve_every else None
    t0 = time.perf_counter()
    train_gpt(config, sampler, domains[0].val, vocab_size=vocab_size, steps=steps, lr=lr, batch_size=batch_size,
              context_length=context_length, seed=seed, device=device, model=model,
              callbacks=[curve] if curve is not None else ())
    losses = _domain_losses(model, domains, context_length)
    return MixtureRun(sampler.proportions, losses, sampler.realised(), list(curve.steps) if curve else [],
                      np.array(curve.losses) if curve else np.zeros((0, len(domains))), time.perf_counter() - t0)


# ------------------------------------------------------------------------------ the mixing law
def mixing_law(r, c, k, t) -> np.ndarray:
    """L_i(r) = c_i + k_i * exp(sum_j t_ij r_j) for every mixture r and validation domain i.

    r: (n, K) mixtures, or one mixture (K,); c, k: (M,); t: (M, K).
    Returns (n, M) losses, or (M,) for one mixture.
    """
    r, c, k, t = (np.asarray(a, dtype=np.float64) for a in (r, c, k, t))
    one = r.ndim == 1
    out = c[None, :] + k[None, :] * np.exp(np.atleast_2d(r) @ t.T)      # (n, M)
    return out[0] if one else out


def gauge(k, t) -> tuple[np.ndarray, np.ndarray]:
    """(k, t) rewritten with sum_j t_ij = 0, the same law on the simplex (see the module docstring)."""
    k, t = np.asarray(k, dtype=np.float64), np.asarray(t, dtype=np.float64)
    shift = t.mean(axis=-1)                                               # (M,)
    return k * np.exp(shift), t - shift[..., None]


def _law_one(theta: np.ndarray, r: np.ndarray) -> np.ndarray:
    """One domain's law at mixtures r (n, K), parameters theta = (c, log k, t_1..t_{K-1}), t_K = -sum."""
    t = np.append(theta[2:], -theta[2:].sum())
    return theta[0] + np.exp(theta[1] + r @ t)


def _law_one_grad(theta: np.ndarray, r: np.ndarray) -> np.ndarray:
    """d law / d theta at each mixture: (n, K + 1)."""
    e = np.exp(theta[1] + r @ np.append(theta[2:], -theta[2:].sum()))   # (n,) = k exp(t . r)
    return np.column_stack([np.ones(len(r)), e, e[:, None] * (r[:, :-1] - r[:, -1:])])


def _fit_one(r: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares (c, log k, t_1..t_{K-1}) of one domain, and its covariance (NaN without spare points).

    Starting point: for c below min(y), log(y - c) = log k + t . r is linear in (log k, t) (Ye et
    al.'s observation); the best c of a log-spaced grid starts scipy's least_squares.
    """
    from scipy.optimize import least_squares  # imported here: `import minilm` stays light

    n, K = r.shape
    design = np.column_stack([np.ones(n), r[:, :-1] - r[:, -1:]])        # (n, K): log k, t_1..t_{K-1}
    spread = max(float(np.ptp(y)), 1e-3)
    best = None
    for gap in spread * np.logspace(-3, 1.5, 40):
        c = float(y.min()) - gap
        coef = np.linalg.lstsq(design, np.log(y - c), rcond=None)[0]
        theta = np.concatenate([[c], coef])
        sse = float(np.sum((_law_one(theta, r) - y) ** 2))
        if best is None or sse < best[0]:
            best = (sse, theta)
    res = least_squares(lambda th: _law_one(th, r) - y, best[1], jac=lambda th: _law_one_grad(th, r),
                        method="lm" if n >= K + 1 else "trf", xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=5000)
    theta = res.x if res.cost <= best[0] / 2 else best[1]
    dof = n - (K + 1)
    J = _law_one_grad(theta, r)
    if dof > 0:
        s2 = float(np.sum((_law_one(theta, r) - y) ** 2)) / dof
        cov = s2 * np.linalg.pinv(J.T @ J)
    else:
        cov = np.full((K + 1, K + 1), np.nan)
    return theta, cov


@dataclass
class MixingLawFit:
    """The mixing law fitted to each validation domain (``fit_mixing_law``), t in the sum-zero gauge."""

    c: np.ndarray                 # (M,)
    k: np.ndarray                 # (M,)
    t: np.ndarray                 # (M, K)
    names: list[str]              # the M validation domains
    rms: np.ndarray               # (M,) root-mean-square residual of each domain's fit
    loo: np.ndarray               # (M,) leave-one-out prediction error (RMS); NaN with too few points
    theta: np.ndarray = field(repr=False)   # (M, K + 1): (c, log k, t_1..t_{K-1}) per domain
    cov: np.ndarray = field(repr=False)     # (M, K + 1, K + 1): their covariance (NaN without spare points)

    def predict(self, r) -> np.ndarray:
        """Predicted losses (n, M) at mixtures r (n, K), or (M,) for one mixture."""
        return mixing_law(r, self.c, self.k, self.t)

    def predict_std(self, r) -> np.ndarray:
        """One standard error of ``predict(r)`` from the fit's covariance (the delta method)."""
        r2 = np.atleast_2d(np.asarray(r, dtype=np.float64))
        out = np.stack([np.sqrt(np.einsum("np,pq,nq->n", g, cov, g))
                        for g, cov in ((_law_one_grad(th, r2), cv) for th, cv in zip(self.theta, self.cov))], axis=1)
        return out[0] if np.asarray(r).ndim == 1 else out

    def target(self, r, weights) -> np.ndarray:
        """The target sum_i w_i L_i(r) at mixtures r: (n,), or a float for one mixture."""
        out = self.predict(r) @ self._weights(weights)
        return float(out) if np.ndim(out) == 0 else out

    def target_std(self, r, weights) -> np.ndarray:
        """A standard error of ``target`` (domains' fits treated as independent)."""
        w = self._weights(weights)
        out = np.sqrt((self.predict_std(r) ** 2) @ (w ** 2))
        return float(out) if np.ndim(out) == 0 else out

    def _weights(self, weights) -> np.ndarray:
        if isinstance(weights, str):
            if weights not in self.names:
                raise ValueError(f"unknown validation domain {weights!r}: the domains are {self.names}")
            weights = {weights: 1.0}
        if isinstance(weights, Mapping):
            return check_proportions(weights, self.names) if abs(sum(weights.values()) - 1) < 1e-6 else \
                np.array([float(weights.get(n, 0.0)) for n in self.names])
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(self.names),) or not np.all(np.isfinite(w)):
            raise ValueError(f"target weights must be {len(self.names)} finite numbers (one per validation "
                             f"domain {self.names}), got {weights!r}")
        return w


def fit_mixing_law(r, losses, names: Sequence[str] | None = None) -> MixingLawFit:
    """Fit L_i(r) = c_i + k_i exp(sum_j t_ij r_j) to measured losses, one validation domain at a time.

    r: (n, K) training mixtures (each on the simplex); losses: (n, M) (or (n,) for one domain)
    validation losses measured after training at each mixture. Needs n >= K + 1 mixtures (K + 1
    parameters per domain); the uncertainty (``cov``, ``predict_std``) needs more, and the
    leave-one-out error (``loo``) needs n >= K + 2.
    """
    r = np.array([check_proportions(row) for row in np.atleast_2d(np.asarray(r, dtype=np.float64))])
    y = np.asarray(losses, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    n, K = r.shape
    if y.shape[0] != n or y.ndim != 2:
        raise ValueError(f"losses must be (n, M) with n = {n} mixtures, got shape {np.shape(losses)}")
    if K < 2 or n < K + 1:
        raise ValueError(f"fitting {K} domains needs at least {K + 1} mixtures (one more than the domains), got {n}")
    if not np.all(np.isfinite(y)):
        raise ValueError("losses must be finite: drop diverged runs before fitting")
    names = list(names) if names is not None else [f"L{i}" for i in range(y.shape[1])]
    fits = [_fit_one(r, y[:, i]) for i in range(y.shape[1])]
    theta = np.stack([th for th, _ in fits])
    t = np.column_stack([theta[:, 2:], -theta[:, 2:].sum(axis=1)])
    rms = np.sqrt(np.mean([(_law_one(th, r) - y[:, i]) ** 2 for i, th in enumerate(theta)], axis=1))
    loo = np.full(y.shape[1], np.nan)
    if n >= K + 2:
        for i in range(y.shape[1]):
            errs = [_law_one(_fit_one(np.delete(r, m, 0), np.delete(y[:, i], m))[0], r[m: m + 1])[0] - y[m, i]
                    for m in range(n)]
            loo[i] = float(np.sqrt(np.mean(np.square(errs))))
    return MixingLawFit(theta[:, 0], np.exp(theta[:, 1]), t, names, rms, loo, theta, np.stack([cv for _, cv in fits]))


def best_mixture(fit: MixingLawFit, weights, divisions: int | None = None) -> tuple[np.ndarray, float]:
    """The mixture minimising the predicted target sum_i w_i L_i(r) on the simplex, and that minimum.

    Every mixture of a lattice with step 1/divisions is scored (default: as fine as keeps the
    lattice under ~20k points), and the best few are polished with SLSQP under r >= 0, sum r = 1.
    """
    from scipy.optimize import minimize  # imported here: `import minilm` stays light

    K = fit.t.shape[1]
    if divisions is None:
        divisions = next(d for d in (60, 40, 20, 10, 6, 4, 2, 1) if _lattice_size(K, d) <= 20_000)
    grid = simplex_grid(K, divisions)
    w = fit._weights(weights)
    scores = fit.predict(grid) @ w
    best_r, best_v = grid[int(np.argmin(scores))], float(scores.min())
    for start in grid[np.argsort(scores)[:5]]:
        res = minimize(lambda x: float(fit.predict(x) @ w), start, method="SLSQP", bounds=[(0.0, 1.0)] * K,
                       constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1.0}],
                       options={"ftol": 1e-14, "maxiter": 500})
        x = np.clip(res.x, 0.0, None)
        x = x / x.sum()
        v = float(fit.predict(x) @ w)
        if v < best_v:
            best_r, best_v = x, v
    return best_r, best_v


def _lattice_size(K: int, divisions: int) -> int:
    """How many mixtures ``simplex_grid(K, divisions)`` holds: C(divisions + K - 1, K - 1)."""
    from math import comb

    return comb(divisions + K - 1, K - 1)


# ------------------------------------------------------------------------------ the step law (nested pipeline)
@dataclass
class StepLaw:
    """L(S) = E + B * S^(-beta): the loss after S steps of one run (Ye et al. sec. 4)."""

    E: float
    B: float
    beta: float

    def __call__(self, steps) -> np.ndarray | float:
        out = self.E + self.B * np.asarray(steps, dtype=np.float64) ** (-self.beta)
        return float(out) if np.ndim(out) == 0 else out

    def steps_to(self, loss: float) -> float:
        """The step S where the law reaches ``loss`` (inf if it never does: loss <= E)."""
        return float((self.B / (loss - self.E)) ** (1.0 / self.beta)) if loss > self.E else float("inf")


def fit_step_law(steps, losses) -> StepLaw:
    """Least-squares fit of L(S) = E + B S^-beta to a loss curve (the same start-then-polish as
    ``fit_mixing_law``: for E below min(L), log(L - E) is linear in log S)."""
    from scipy.optimize import least_squares  # imported here: `import minilm` stays light

    S, y = np.asarray(steps, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    if S.ndim != 1 or S.shape != y.shape or len(S) < 4 or np.any(S <= 0) or not np.all(np.isfinite(y)):
        raise ValueError("a step law needs at least 4 (step > 0, finite loss) points as two equal-length lists")
    design = np.column_stack([np.ones(len(S)), -np.log(S)])
    best = None
    for gap in max(float(np.ptp(y)), 1e-3) * np.logspace(-3, 1.5, 40):
        E = float(y.min()) - gap
        (logB, beta) = np.linalg.lstsq(design, np.log(y - E), rcond=None)[0]
        law = StepLaw(E, float(np.exp(logB)), max(float(beta), 1e-6))
        sse = float(np.sum((law(S) - y) ** 2))
        if best is None or sse < best[0]:
            best = (sse, law)
    start = best[1]
    res = least_squares(lambda p: p[0] + np.exp(p[1] - np.exp(p[2]) * np.log(S)) - y,
                        [start.E, np.log(start.B), np.log(start.beta)], method="lm", xtol=1e-12, ftol=1e-12,
                        max_nfev=5000)
    law = StepLaw(float(res.x[0]), float(np.exp(res.x[1])), float(np.exp(res.x[2])))
    return law if np.sum((law(S) - y) ** 2) <= best[0] else start


def steps_to_reach(steps, losses, level: float) -> float | None:
    """The first step at which a measured loss curve reaches ``level`` (linear interpolation
    between the recorded points), or None if it never does."""
    S, y = np.asarray(steps, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    below = np.flatnonzero(y <= level)
    if len(below) == 0:
        return None
    i = int(below[0])
    if i == 0:
        return float(S[0])
    return float(S[i - 1] + (S[i] - S[i - 1]) * (y[i - 1] - level) / (y[i - 1] - y[i]))
