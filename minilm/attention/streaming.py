"""Streaming a text far longer than the training context (StreamingLLM, Xiao et al. 2023, Fig. 3).

``streaming_perplexity`` reads a long token stream one token at a time and returns the loss of
each next-token prediction under a memory policy:

    "full"       keep every token (dense attention; distances grow past the training context)
    "window"     keep the most recent ``window`` tokens (evicts the first tokens)
    "sinks"      keep ``sinks`` first tokens + the recent window, positions inside the cache
    "recompute"  "sliding window with re-computation": for every position, run the model from
                 scratch on the last ``window`` tokens (exact, O(window^2) per token: the
                 paper's expensive but strong baseline)

The "window" and "sinks" caches are fixed-size ring buffers (``minilm.attention.cache``): each
token costs the same time and the cache the same memory, however long the stream.

``attention_mass_on_first_token`` measures the attention-sink effect itself: how much of each
layer's attention lands on token 0 (Xiao et al., Fig. 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from minilm.attention.cache import make_cache

__all__ = [
    "POLICIES",
    "attention_mass_on_first_token",
    "recompute_window_nll",
    "streaming_perplexity",
    "uniform_first_token_mass",
]

POLICIES = ("full", "window", "sinks", "sinks_absolute", "recompute")


def _as_stream(tokens) -> torch.Tensor:
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    if tokens.dim() != 1 or tokens.numel() < 2:
        raise ValueError(f"tokens must be a 1-D sequence of at least 2 token ids, got shape {tuple(tokens.shape)}")
    return tokens


@torch.no_grad()
def recompute_window_nll(model, tokens, window: int, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """NLL (n-1,) of each next token when position t sees exactly tokens[max(0, t-window+1) : t+1],
    recomputed from scratch (no cache): StreamingLLM's "sliding window w/ re-computation"."""
    tokens = _as_stream(tokens)
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    ctx = getattr(model, "context_length", None)
    if ctx is not None and window > ctx:
        raise ValueError(f"window={window} exceeds the model's context_length={ctx}: use window <= {ctx}")
    device = next(model.parameters()).device
    n = tokens.numel()
    w = min(window, n - 1)
    # Positions t < w see the whole prefix: one causal forward gives all of them exactly.
    head = model(tokens[None, :w].to(device))[0]  # (w, V)
    nll = [F.cross_entropy(head.float(), tokens[1 : w + 1].to(device), reduction="none")]
    # Positions t >= w: one fresh window per position, batched; keep each window's last logits.
    starts = torch.arange(1, n - w)  # window of position t starts at t - w + 1
    chunks = starts.split(batch_size) if starts.numel() else ()
    for chunk in tqdm(chunks, desc="recompute", disable=not progress):
        windows = torch.stack([tokens[s : s + w] for s in chunk.tolist()]).to(device)  # (b, w)
        last = model(windows)[:, -1]  # (b, V)
        nll.append(F.cross_entropy(last.float(), tokens[chunk + w].to(device), reduction="none"))
    return torch.cat(nll).cpu()


@torch.no_grad()
def streaming_perplexity(
    model,
    tokens,
    policy: str,
    window: int | None = None,
    sinks: int = 4,
    progress: bool = True,
    batch_size: int = 64,
) -> torch.Tensor:
    """Per-position negative log-likelihood (n-1,) in nats of streaming ``tokens`` (1-D) through ``model``.

    nll[t] = -log p(tokens[t+1] | what ``policy`` keeps of tokens[: t+1]). Policies: "full",
    "window", "sinks" (StreamingLLM), "sinks_absolute" (sinks, original positions) and
    "recompute"; all but "full" need ``window`` (keys seen per token, itself included).
    exp(mean(nll[a:b])) is the perplexity over positions a..b. The model must accept a KV cache
    (``model(idx, cache=...)``, as the GPT does); "recompute" works with any model.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}: choose one of {', '.join(POLICIES)}")
    tokens = _as_stream(tokens)
    was_training = model.training
    model.eval()
    try:
        if policy == "recompute":
            if window is None:
                raise ValueError("policy 'recompute' needs a window size: window=64")
            return recompute_window_nll(model, tokens, window, batch_size, progress)
        cache = make_cache(policy, model.config.n_layers, window, sinks)
        device = next(model.parameters()).device
        stream = tokens.to(device)
        nll = torch.empty(tokens.numel() - 1)
        for t in tqdm(range(tokens.numel() - 1), desc=f"stream ({policy})", disable=not progress):
            logits = model(stream[None, t : t + 1], cache=cache)[0, -1]  # (V,)
            nll[t] = -torch.log_softmax(logits.float(), dim=-1)[stream[t + 1]].item()
        return nll
    finally:
        model.train(was_training)


@torch.no_grad()
def attention_mass_on_first_token(
    model, idx: torch.Tensor, from_query: int = 1, per_head: bool = False
) -> torch.Tensor:
    """Average attention weight each layer puts on token 0 (the attention sink, Xiao et al. Fig. 2).

    idx (B, T). Averages the weight on key 0 over the batch and over queries i >= ``from_query``
    (query 0 can only attend to itself). Returns (n_layers,), or (n_layers, n_heads) with
    ``per_head``. Compare with ``uniform_first_token_mass(T)``: what uniform attention would give.
    """
    if idx.dim() != 2 or not 0 <= from_query < idx.size(1):
        raise ValueError(f"idx must be (B, T) with T > from_query={from_query}, got shape {tuple(idx.shape)}")
    was_training = model.training
    model.eval()
    try:
        _, weights = model(idx, need_weights=True)
    except TypeError as err:
        name = type(model).__name__
        raise ValueError(f"{name} cannot return attention weights (need_weights=True): use a GPT") from err
    finally:
        model.train(was_training)
    mass = torch.stack([w[:, :, from_query:, 0].float().mean(dim=(0, 2)) for w in weights])  # (L, H)
    return mass if per_head else mass.mean(dim=1)


def uniform_first_token_mass(T: int, from_query: int = 1) -> float:
    """The first token's average weight if every query i spread its attention evenly over its
    i + 1 keys: mean over i >= from_query of 1 / (i + 1). The no-sink baseline."""
    if not 0 <= from_query < T:
        raise ValueError(f"need 0 <= from_query < T, got from_query={from_query}, T={T}")
    return sum(1.0 / (i + 1) for i in range(from_query, T)) / (T - from_query)
