"""Build any model of the library by name, so the CLI and labs can swap them freely."""

from __future__ import annotations

import os

import torch

from minilm.checkpoint import load_checkpoint
from minilm.models.base import LanguageModel
from minilm.models.gpt import GPT, GPTConfig
from minilm.models.lstm import LSTMLM, LSTMConfig
from minilm.models.ngram import NGramConfig, NGramLM
from minilm.models.rwkv import RWKV, RWKVConfig
from minilm.models.ssm import SSMLM, SSMConfig

# Size presets shared by every model kind: (n_layers, d_model, n_heads).
SIZES = {
    "tiny": (2, 64, 4),
    "small": (4, 128, 4),
    "medium": (6, 256, 8),
}


def _build_gpt(vocab_size: int, context_length: int, n_layers: int, d_model: int, n_heads: int, **kw) -> GPT:
    return GPT(GPTConfig(vocab_size=vocab_size, context_length=context_length, n_layers=n_layers,
                         d_model=d_model, n_heads=n_heads, **kw))


def _build_rwkv(vocab_size: int, context_length: int, n_layers: int, d_model: int, n_heads: int, **kw) -> RWKV:
    # RWKV-4 has no attention heads: n_heads is ignored. context_length is only the training window.
    return RWKV(RWKVConfig(vocab_size=vocab_size, context_length=context_length, n_layers=n_layers,
                           d_model=d_model, **kw))


def _build_lstm(vocab_size: int, context_length: int, n_layers: int, d_model: int, n_heads: int, **kw) -> LSTMLM:
    # no heads either; the preset's depth and width become the LSTM's layers and hidden size
    return LSTMLM(LSTMConfig(vocab_size=vocab_size, context_length=context_length, n_layers=n_layers,
                             d_model=d_model, **kw))


def _build_ngram(vocab_size: int, context_length: int, n_layers: int, d_model: int, n_heads: int,
                 order: int | None = None, **kw) -> NGramLM:
    # An n-gram has no layers: the preset picks the order, 1 + n_layers // 2
    # (tiny -> bigram, small -> trigram, medium -> 4-gram); order= overrides it.
    order = 1 + n_layers // 2 if order is None else order
    return NGramLM(NGramConfig(vocab_size=vocab_size, order=order, context_length=context_length, **kw))


def _build_ssm(vocab_size: int, context_length: int, n_layers: int, d_model: int, n_heads: int, **kw) -> SSMLM:
    # Mamba-style selective SSM: no heads either. context_length is only the training window.
    return SSMLM(SSMConfig(vocab_size=vocab_size, context_length=context_length, n_layers=n_layers,
                           d_model=d_model, **kw))


# name -> builder(vocab_size, context_length, n_layers, d_model, n_heads, **extra) -> model
MODELS = {
    "gpt": _build_gpt,
    "rwkv": _build_rwkv,
    "lstm": _build_lstm,
    "ngram": _build_ngram,
    "ssm": _build_ssm,
}


def build_model(
    name: str,
    vocab_size: int,
    size: str = "small",
    context_length: int = 64,
    **overrides,
) -> LanguageModel:
    """``build_model("gpt", vocab_size=103, size="small")``; ``overrides`` replace preset fields."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(sorted(MODELS))}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}: choose one of {', '.join(SIZES)}")
    n_layers, d_model, n_heads = SIZES[size]
    args = {"n_layers": n_layers, "d_model": d_model, "n_heads": n_heads, **overrides}
    return MODELS[name](vocab_size, context_length, **args)


# model_type -> (model class, config dataclass), for rebuilding models from checkpoints.
KINDS: dict = {
    "gpt": (GPT, GPTConfig),
    "rwkv": (RWKV, RWKVConfig),
    "lstm": (LSTMLM, LSTMConfig),
    "ngram": (NGramLM, NGramConfig),
    "ssm": (SSMLM, SSMConfig),
}


def model_from_config(config: dict) -> LanguageModel:
    """Rebuild a model from ``model.config_dict()`` (as stored in checkpoints)."""
    config = dict(config)
    kind = config.pop("model", None)
    if kind not in KINDS:
        raise ValueError(f"cannot rebuild a model of kind {kind!r}: known kinds are {', '.join(sorted(KINDS))}")
    model_cls, config_cls = KINDS[kind]
    return model_cls(config_cls(**config))


def model_from_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LanguageModel:
    """Rebuild the model a checkpoint (``minilm.checkpoint``) was saved from and load its weights."""
    ckpt = load_checkpoint(path, map_location)
    model = model_from_config(ckpt["config"])
    model.load_state_dict(ckpt["model"])
    return model
