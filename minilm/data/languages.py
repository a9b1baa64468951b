"""Synthetic languages whose entropy rate is known exactly.

The entropy rate h (nats/token) is the irreducible loss E of a scaling law: no model, however
large or well trained, can reach a next-token cross-entropy below it on average. Real text never
tells us E; these languages do, so a learner can check a fitted E against the truth.

  ZipfUnigram            i.i.d. tokens with Zipf frequencies. Context is useless: the best model
                         is the unigram, h = H(p). Good for frequency (rare-token) effects.
  MarkovLanguage         random order-k Markov chain, rows drawn from a Dirichlet. h is computed
                         from its exact stationary distribution. Good for "context helps" and
                         n-gram vs neural comparisons.
  ZipfMarkovMixture      documents: draw a topic from a Zipf law, emit its marker token, then
                         tokens from that topic's own Markov chain. Many rare topics make learning
                         curves in N and D look like power laws (each topic is learned once it has
                         been seen often enough), as in real text.

BigramBackcopy (not in LANGUAGES: documents that start with a BOS token, not a stationary chain)
is a bigram chain in which a few *trigger* tokens are followed by a copy of the token before them
(Guo et al. 2024): attention is needed at the triggers only, so a head has "nothing to attend to"
almost everywhere, the set-up in which models grow attention sinks.

Every language has ``vocab_size``, ``sample(n_tokens, seed) -> np.ndarray`` and
``entropy_rate() -> float`` (nats/token), computed exactly -- never estimated from samples.
Data generation uses numpy float64 internally (exact numbers); tokens come out as int64.
"""

from __future__ import annotations

import numpy as np


def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats, with 0 log 0 = 0."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=axis)


def zipf_probs(n: int, exponent: float) -> np.ndarray:
    """p_i proportional to 1 / (i + 1)^exponent for i = 0..n-1 (rank 1 is the most frequent)."""
    if n < 1:
        raise ValueError(f"a Zipf law needs at least one outcome, got n={n}")
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    return w / w.sum()


def _check_sample_args(n_tokens: int) -> None:
    if not isinstance(n_tokens, (int, np.integer)) or n_tokens < 1:
        raise ValueError(f"n_tokens must be a positive integer, got {n_tokens!r}")


def _sample_rows(cdf: np.ndarray, states: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling of one token per stream: row cdf[states[j]] with uniform u[j]."""
    rows = cdf[states]  # (S, V)
    tok = (rows < u[:, None]).sum(axis=1)
    return np.minimum(tok, cdf.shape[1] - 1)


class ZipfUnigram:
    """i.i.d. tokens with P(token = i) proportional to 1/(i+1)^exponent. h = H(p) exactly."""

    def __init__(self, vocab_size: int = 256, exponent: float = 1.1):
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
        self.vocab_size = int(vocab_size)
        self.exponent = float(exponent)
        self.probs = zipf_probs(self.vocab_size, self.exponent)

    def sample(self, n_tokens: int, seed: int = 0) -> np.ndarray:
        _check_sample_args(n_tokens)
        rng = np.random.default_rng(seed)
        return rng.choice(self.vocab_size, size=n_tokens, p=self.probs).astype(np.int64)

    def entropy_rate(self) -> float:
        return float(_entropy(self.probs))

    def log_prob(self, tokens: np.ndarray) -> np.ndarray:
        """log P(x_t | past) for every token (the past does not matter here)."""
        return np.log(self.probs[np.asarray(tokens)])


class MarkovLanguage:
    """A random order-k Markov chain over ``vocab_size`` tokens.

    For every context s = (x_{t-k}, ..., x_{t-1}) the next-token distribution P(. | s) is drawn
    from Dirichlet(concentration * 1). Small concentration gives peaked, predictable rows.

    Exact entropy rate (Cover & Thomas, Thm 4.2.4):  h = sum_s pi(s) H(P(. | s)),
    where pi is the stationary distribution of the chain over the V^k contexts, found by solving
    pi = pi T as an eigenvector problem (the chain is irreducible: every row is strictly positive).
    """

    def __init__(self, vocab_size: int = 32, order: int = 1, concentration: float = 0.2, seed: int = 0):
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        if vocab_size**order > 200_000:
            raise ValueError(
                f"vocab_size**order = {vocab_size**order} contexts is too many to solve exactly: "
                "lower the vocab_size or the order"
            )
        if concentration <= 0:
            raise ValueError(f"concentration must be > 0, got {concentration}")
        self.vocab_size, self.order, self.concentration = int(vocab_size), int(order), float(concentration)
        rng = np.random.default_rng(seed)
        n_ctx = vocab_size**order
        P = rng.dirichlet(np.full(vocab_size, concentration), size=n_ctx)  # (S, V)
        # Tiny floor: keeps every transition possible (irreducible chain) without changing much.
        P = (P + 1e-6) / (1 + vocab_size * 1e-6)
        self.transition = P
        self._cdf = np.cumsum(P, axis=1)
        self.stationary = self._stationary()

    @classmethod
    def from_transition(cls, transition: np.ndarray, order: int = 1) -> MarkovLanguage:
        """The order-``order`` chain whose next-token rows are ``transition`` (V**order, V).

        Row s is P(. | context s), the context read as a base-V number of its k tokens, oldest
        first. Every entry must be > 0 (an irreducible chain, so the stationary distribution and
        the entropy rate are exact); ``concentration`` is then NaN (no Dirichlet was drawn).
        """
        P = np.array(transition, dtype=np.float64)
        if P.ndim != 2 or P.shape[1] < 2 or not isinstance(order, (int, np.integer)) or order < 1 \
                or P.shape[0] != P.shape[1] ** order:
            raise ValueError(f"transition must have shape (V**order, V) with V >= 2 and order >= 1, "
                             f"got {P.shape} with order={order!r}")
        if not np.all(P > 0) or not np.allclose(P.sum(axis=1), 1.0, atol=1e-9):
            raise ValueError("every row of transition must be a distribution with all entries > 0 "
                             "(add a small floor and renormalise)")
        lang = cls.__new__(cls)
        lang.vocab_size, lang.order, lang.concentration = P.shape[1], int(order), float("nan")
        lang.transition = P / P.sum(axis=1, keepdims=True)
        lang._cdf = np.cumsum(lang.transition, axis=1)
        lang.stationary = lang._stationary()
        return lang

    def _next_context(self, ctx: np.ndarray, tok: np.ndarray) -> np.ndarray:
        """Context index after emitting tok: drop the oldest token, append the new one."""
        return (ctx * self.vocab_size) % (self.vocab_size**self.order) + tok

    def _stationary(self) -> np.ndarray:
        V, S = self.vocab_size, self.vocab_size**self.order
        # Power iteration on the sparse context chain: pi'(next(s, v)) += pi(s) P(v|s).
        pi = np.full(S, 1.0 / S)
        ctx = np.repeat(np.arange(S), V)
        nxt = self._next_context(ctx, np.tile(np.arange(V), S))
        flow = self.transition.reshape(-1)
        for _ in range(100_000):
            new = np.bincount(nxt, weights=np.repeat(pi, V) * flow, minlength=S)
            if np.abs(new - pi).sum() < 1e-14:
                return new / new.sum()
            pi = new
        raise RuntimeError("stationary distribution did not converge; raise the concentration")

    def entropy_rate(self) -> float:
        return float(self.stationary @ _entropy(self.transition, axis=1))

    def sample(self, n_tokens: int, seed: int = 0, n_streams: int | None = None) -> np.ndarray:
        """Draw tokens from the stationary chain.

        For speed the sample is ``n_streams`` independent stationary chains laid end to end
        (numpy steps all streams at once); each segment is an exact sample of the chain, so the
        entropy rate is unchanged; only the n_streams - 1 seams are not chain transitions.
        """
        _check_sample_args(n_tokens)
        rng = np.random.default_rng(seed)
        if n_streams is None:
            n_streams = int(max(1, min(64, n_tokens // 8192)))
        length = -(-n_tokens // n_streams)
        ctx = rng.choice(len(self.stationary), size=n_streams, p=self.stationary)
        out = np.empty((n_streams, length), dtype=np.int64)
        u = rng.random((length, n_streams))
        for t in range(length):
            tok = _sample_rows(self._cdf, ctx, u[t])
            out[:, t] = tok
            ctx = self._next_context(ctx, tok)
        return out.reshape(-1)[:n_tokens]

    def log_prob(self, tokens: np.ndarray) -> np.ndarray:
        """log P(x_t | previous k tokens) for t >= k (the first k tokens have no full context)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        ctx = np.zeros(len(tokens) - self.order, dtype=np.int64)
        for j in range(self.order):
            ctx = ctx * self.vocab_size + tokens[j : len(tokens) - self.order + j]
        return np.log(self.transition[ctx, tokens[self.order :]])


class ZipfMarkovMixture:
    """Documents from a Zipf-distributed set of Markov "topics".

    Each document: draw topic z ~ Zipf(n_topics, topic_exponent), emit the marker token
    ``vocab_size_base + z``, then ``doc_length`` tokens from topic z's first-order chain (started
    from its stationary distribution). Topics share the base vocabulary but not the transitions.

    Documents are i.i.d. and of fixed length L + 1, so the exact entropy rate is
        h = H(doc) / (L + 1),   H(doc) = H(z) + sum_z p_z [ H(pi_z) + (L - 1) h_z ],
    with pi_z and h_z the stationary distribution and entropy rate of topic z's chain.
    A model needs the marker in its context to do this well: keep doc_length < context length.
    """

    def __init__(
        self,
        n_topics: int = 64,
        vocab_size_base: int = 32,
        doc_length: int = 32,
        topic_exponent: float = 1.2,
        concentration: float = 0.1,
        seed: int = 0,
    ):
        if n_topics < 1 or doc_length < 1:
            raise ValueError(f"n_topics and doc_length must be >= 1, got {n_topics}, {doc_length}")
        self.n_topics, self.doc_length = int(n_topics), int(doc_length)
        self.vocab_size_base = int(vocab_size_base)
        self.vocab_size = self.vocab_size_base + self.n_topics
        self.topic_probs = zipf_probs(self.n_topics, topic_exponent)
        self.topics = [
            MarkovLanguage(vocab_size_base, 1, concentration, seed=seed * 100_003 + z + 1) for z in range(n_topics)
        ]

    def entropy_rate(self) -> float:
        L = self.doc_length
        per_topic = np.array([_entropy(m.stationary) + (L - 1) * m.entropy_rate() for m in self.topics])
        h_doc = _entropy(self.topic_probs) + self.topic_probs @ per_topic
        return float(h_doc / (L + 1))

    def sample(self, n_tokens: int, seed: int = 0) -> np.ndarray:
        _check_sample_args(n_tokens)
        rng = np.random.default_rng(seed)
        L = self.doc_length
        n_docs = -(-n_tokens // (L + 1))
        z = rng.choice(self.n_topics, size=n_docs, p=self.topic_probs)
        docs = np.empty((n_docs, L + 1), dtype=np.int64)
        docs[:, 0] = self.vocab_size_base + z
        cdfs = np.stack([m._cdf for m in self.topics])  # (Z, V, V)
        stat_cdf = np.cumsum(np.stack([m.stationary for m in self.topics]), axis=1)  # (Z, V)
        u = rng.random((L, n_docs))
        tok = np.minimum((stat_cdf[z] < u[0][:, None]).sum(axis=1), self.vocab_size_base - 1)
        docs[:, 1] = tok
        for t in range(1, L):  # all documents step together
            rows = cdfs[z, tok]  # (n_docs, V)
            tok = np.minimum((rows < u[t][:, None]).sum(axis=1), self.vocab_size_base - 1)
            docs[:, t + 1] = tok
        return docs.reshape(-1)[:n_tokens]

    def log_prob(self, tokens: np.ndarray) -> np.ndarray:
        """Exact log P(x_t | past) for a sample that starts at a document boundary."""
        tokens = np.asarray(tokens, dtype=np.int64)
        L = self.doc_length
        out = np.empty(len(tokens))
        for start in range(0, len(tokens), L + 1):
            doc = tokens[start : start + L + 1]
            z = int(doc[0]) - self.vocab_size_base
            m = self.topics[z]
            out[start] = np.log(self.topic_probs[z])
            if len(doc) > 1:
                out[start + 1] = np.log(m.stationary[doc[1]])
                out[start + 2 : start + len(doc)] = np.log(m.transition[doc[1:-1], doc[2:]])
        return out


class BigramBackcopy:
    """The Bigram-Backcopy task (Guo et al. 2024, "Active-dormant attention heads", sec. 2): documents
    in which attention is needed at a few positions only.

    Every document starts with a beginning-of-sequence token ``bos`` (= ``vocab_size``, so a model
    needs ``vocab_size + 1`` embeddings), then a uniformly drawn token, then: after a *trigger*
    (tokens 0 .. ``triggers`` - 1) comes a copy of the token before the trigger, x_{t+1} = x_{t-1};
    after any other token b, a draw from the random bigram row P(. | b) ~ Dirichlet(concentration)
    (the rows of ``MarkovLanguage(vocab_size, 1, concentration, seed)``). A copy needs attention to
    the previous token; every other prediction needs only the current token, so a head is active at
    the triggers and has nothing useful to attend to elsewhere: the condition under which heads
    learn to park their attention on the first token, an attention sink (Xiao et al. 2023).

    Documents are drawn fresh for every batch (``sample_batch``, a batch source for
    ``minilm.train``); ``document`` draws one long one to stream.
    """

    def __init__(self, vocab_size: int = 32, triggers: int = 3, concentration: float = 0.2, seed: int = 0):
        if not isinstance(triggers, int) or not 1 <= triggers < vocab_size:
            raise ValueError(f"triggers must be an integer in [1, vocab_size), got {triggers!r}")
        self.transition = MarkovLanguage(vocab_size, order=1, concentration=concentration, seed=seed).transition
        self._cdf = np.cumsum(self.transition, axis=1)
        self.vocab_size, self.triggers, self.bos = int(vocab_size), int(triggers), int(vocab_size)

    @property
    def max_token(self) -> int:
        """The largest id a document holds: ``bos`` (``train`` checks it against the model's vocabulary)."""
        return self.bos

    def documents(self, n: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` documents of ``length`` tokens, int64 (n, length); column 0 is ``bos``."""
        if n < 1 or length < 2:
            raise ValueError(f"need n >= 1 documents of length >= 2, got n={n}, length={length}")
        out = np.empty((n, length), dtype=np.int64)
        out[:, 0] = self.bos
        out[:, 1] = rng.integers(0, self.vocab_size, size=n)
        u = rng.random((length, n))
        for t in range(1, length - 1):
            cur = out[:, t]
            nxt = _sample_rows(self._cdf, cur, u[t])
            if t >= 2:  # position 1 has no token before it to copy
                nxt = np.where(cur < self.triggers, out[:, t - 1], nxt)
            out[:, t + 1] = nxt
        return out

    def document(self, length: int, seed: int = 0) -> np.ndarray:
        """One document of ``length`` tokens (``bos`` first), int64 (length,): a stream to read."""
        return self.documents(1, length, np.random.default_rng(seed))[0]

    def sample_batch(self, batch_size: int, context_length: int, rng: np.random.Generator):
        """(x, y), int64 torch tensors (batch_size, context_length): fresh documents and their next tokens."""
        import torch  # the languages themselves are numpy-only

        docs = torch.from_numpy(self.documents(batch_size, context_length + 1, rng))
        return docs[:, :-1].contiguous(), docs[:, 1:].contiguous()

    def copy_positions(self, doc: np.ndarray) -> np.ndarray:
        """Boolean mask over the targets doc[1:]: True where the next token is a copy (after a trigger, t >= 2)."""
        doc = np.asarray(doc)
        t = np.arange(len(doc) - 1)
        return (t >= 2) & (doc[:-1] < self.triggers) & (doc[:-1] != self.bos)


LANGUAGES = {"zipf": ZipfUnigram, "markov": MarkovLanguage, "mixture": ZipfMarkovMixture}
