"""The interface every language model of minilm shares (GPT, RWKV, LSTM, n-gram).

A model maps token ids ``idx`` of shape (B, T) to next-token logits of shape (B, T, V). Everything
else -- the loss, sampling, parameter and FLOP counts -- is defined once here so the trainer, the
command line and the labs can swap models freely.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


class LanguageModel(nn.Module):
    """Base class: subclasses set ``self.config`` (a dataclass) and implement ``forward``.

    Subclasses must provide:
      - ``forward(idx) -> logits``  with idx (B, T) int64 and logits (B, T, vocab_size)
      - ``flops_per_token(seq_len=None) -> float``  training FLOPs per token (forward + backward)
    and may override ``generate`` (e.g. RWKV samples with its recurrent form).
    """

    config: Any
    #: how many tokens of context the model can see; ``None`` means unbounded (recurrent models).
    context_length: int | None = None

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    # ---------------------------------------------------------------------------------- input
    def check_tokens(self, idx: torch.Tensor, min_length: int = 0) -> None:
        """Raise a clear ValueError unless idx is (batch, time) token ids inside the vocabulary."""
        name = type(self).__name__
        if idx.dim() != 2:
            raise ValueError(f"{name} expects token ids of shape (batch, time), got shape {tuple(idx.shape)}")
        if idx.size(1) < min_length:
            raise ValueError(f"{name} needs at least {min_length} token(s), got {idx.size(1)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size):
            bad = int(idx.max()) if int(idx.max()) >= self.config.vocab_size else int(idx.min())
            raise ValueError(
                f"token id {bad} out of range for vocab_size={self.config.vocab_size}: "
                "the data's tokenizer and the model's vocab_size must match"
            )

    # ----------------------------------------------------------------------------------- loss
    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy in nats: -1/(B*T) * sum log p(targets | prefix)."""
        logits = self(idx)  # (B, T, V)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))

    # ------------------------------------------------------------------------------- sampling
    def _next_logits(self, idx: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Logits (B, V) for the token after ``idx``; ``state`` lets subclasses cache work.

        The default re-runs the model on the last ``context_length`` tokens every step (simple,
        O(T) work per token); GPT uses a KV cache and RWKV its recurrent state instead.
        """
        ctx = idx if self.context_length is None else idx[:, -self.context_length :]
        return self(ctx)[:, -1, :], state

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` tokens after the prompt ``idx`` (B, T); returns (B, T + new).

        ``temperature`` divides the logits (0 means greedy: always the most likely token);
        ``top_k`` keeps only the k most likely tokens before sampling.
        """
        if idx.dim() != 2:
            raise ValueError(f"generate expects token ids of shape (batch, time), got {tuple(idx.shape)}")
        if idx.size(1) == 0:
            raise ValueError("generate needs a prompt of at least one token")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
        was_training = self.training
        self.eval()
        state = None
        out = idx
        for _ in range(max_new_tokens):
            logits, state = self._next_logits(out, state)  # (B, V)
            out = torch.cat([out, sample_next(logits, temperature, top_k, generator)], dim=1)
        self.train(was_training)
        return out

    # ------------------------------------------------------------------------------- counting
    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters; ``non_embedding=True`` leaves out the token embedding table.

        Scaling-law papers (Kaplan et al. 2020) count N without embeddings. With tied input and
        output weights the shared matrix is counted once.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(p.numel() for p in self.embedding_parameters())
        return n

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The token-embedding parameters (subclasses override); counted out by ``num_params``."""
        return []

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward) on sequences of ``seq_len`` tokens (None:
        the model's context length); ``minilm.ledger.training_flops`` multiplies it by the tokens."""
        raise NotImplementedError(f"{type(self).__name__} does not define flops_per_token()")

    def config_dict(self) -> dict:
        """The config as a plain dict (JSON-able), with the model's kind, for checkpoints."""
        return {"model": self.model_type, **asdict(self.config)}

    model_type: str = "base"

    def initial_loss_check(self) -> float:
        """ln(vocab_size): what the loss of an untrained model should be close to."""
        return math.log(self.vocab_size)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token per row from logits (B, V) -> (B, 1) with temperature and top-k."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if generator is not None and generator.device != probs.device:
        # Draw where the generator lives (a CPU generator with a model on a GPU), then move the draw.
        return torch.multinomial(probs.to(generator.device), 1, generator=generator).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator)
