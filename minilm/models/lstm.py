"""An LSTM language model (Hochreiter & Schmidhuber 1997; Zaremba et al. 2014), the pre-transformer baseline.

    x = Embed(idx)                                  # (B, T, C)
    h = LSTM(x)                                     # n_layers stacked LSTM layers, hidden size C
    logits = Head(h)                                # (B, T, V)

Each layer updates a hidden state h and a cell c per token (PyTorch's ``nn.LSTM``):
    i, f, g, o = sigma(W_i [x, h]), sigma(W_f [x, h]), tanh(W_g [x, h]), sigma(W_o [x, h])
    c_t = f * c_{t-1} + i * g,    h_t = o * tanh(c_t)
Like RWKV it carries a fixed-size state, so generation costs the same per token at any length;
unlike RWKV it cannot be trained in parallel over time, and (the talk's point) stacking more
layers stops helping after a few.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from minilm.models.base import LanguageModel


@dataclass
class LSTMConfig:
    """Shape and options of an LSTM language model. A wrong value raises ``ValueError``."""

    vocab_size: int
    n_layers: int = 2
    d_model: int = 128  # embedding size = hidden size of every layer
    context_length: int | None = None  # training window only (the model itself reads any length)
    dropout: float = 0.0  # between layers and before the head (Zaremba et al. 2014)
    tie_embeddings: bool = False
    init_range: float = 0.1  # weights uniform in [-init_range, init_range] (Zaremba et al.)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layers", "d_model"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LSTMConfig.{name} must be a positive integer, got {value!r}")
        ctx = self.context_length
        if ctx is not None and (not isinstance(ctx, int) or ctx < 1):
            raise ValueError(f"LSTMConfig.context_length must be a positive integer or None, got {ctx!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LSTMConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.init_range <= 0:
            raise ValueError(f"LSTMConfig.init_range must be positive, got {self.init_range}")


class LSTMLM(LanguageModel):
    """LSTM language model: ``LSTMLM(LSTMConfig(vocab_size=65))(idx) -> logits``."""

    model_type = "lstm"

    def __init__(self, config: LSTMConfig):
        super().__init__()
        if not isinstance(config, LSTMConfig):
            raise ValueError(f"LSTMLM needs an LSTMConfig, got {type(config).__name__}")
        self.config = config
        self.context_length = None  # recurrent: any length
        C = config.d_model
        self.emb = nn.Embedding(config.vocab_size, C)
        self.lstm = nn.LSTM(C, C, num_layers=config.n_layers, batch_first=True,
                            dropout=config.dropout if config.n_layers > 1 else 0.0)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(C, config.vocab_size, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                nn.init.uniform_(p, -config.init_range, config.init_range)
            # forget-gate bias 1 (Jozefowicz et al. 2015): remember by default early in training.
            # PyTorch orders the gates (i, f, g, o) and has two biases; 0.5 + 0.5 = 1.
            for name, p in self.lstm.named_parameters():
                if name.startswith("bias"):
                    p[C : 2 * C] = 0.5
        if config.tie_embeddings:
            self.head.weight = self.emb.weight

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [self.emb.weight]

    def forward(
        self,
        idx: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
        return_state: bool = False,
    ):
        """idx (B, T) -> logits (B, T, V); ``state`` = (h, c), each (n_layers, B, C), to continue from."""
        self.check_tokens(idx, min_length=1)
        x = self.drop(self.emb(idx))  # (B, T, C)
        h, new_state = self.lstm(x, state)  # (B, T, C), ((L, B, C), (L, B, C))
        logits = self.head(self.drop(h))  # (B, T, V)
        return (logits, new_state) if return_state else logits

    def _next_logits(self, idx, state):
        # state = ((h, c), number of tokens of idx already consumed): feed only the new tokens.
        hc, seen = state if state is not None else (None, 0)
        logits, hc = self(idx[:, seen:], state=hc, return_state=True)
        return logits[:, -1, :], (hc, idx.size(1))

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6N, N = non-embedding parameters plus the head (any ``seq_len``).

        Each LSTM layer holds 4 gates of (C + C) x C weights and biases; every weight costs a
        multiply-add per token forward, twice that backward (the 6N rule of Kaplan et al. 2020).
        The O(C) element-wise gate arithmetic is left out.
        """
        n = self.num_params(non_embedding=True)
        if self.config.tie_embeddings:  # the shared matrix still costs a matmul in the head
            n += self.config.vocab_size * self.config.d_model
        return 6.0 * n
