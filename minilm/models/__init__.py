"""Language models of minilm, all behind the shared ``LanguageModel`` interface."""

from minilm.models.base import LanguageModel, sample_next
from minilm.models.gpt import GPT, GPTConfig, KVCache, RMSNorm, apply_rope, causal_mask, rope_angles
from minilm.models.lstm import LSTMLM, LSTMConfig
from minilm.models.ngram import NGramConfig, NGramLM, NGramModel
from minilm.models.registry import MODELS, SIZES, build_model
from minilm.models.rwkv import RWKV, RWKVConfig, wkv_parallel, wkv_recurrent

__all__ = [
    "GPT",
    "GPTConfig",
    "KVCache",
    "LanguageModel",
    "LSTMConfig",
    "LSTMLM",
    "NGramConfig",
    "NGramLM",
    "NGramModel",
    "RWKV",
    "RWKVConfig",
    "MODELS",
    "SIZES",
    "build_model",
    "RMSNorm",
    "apply_rope",
    "causal_mask",
    "rope_angles",
    "sample_next",
    "wkv_parallel",
    "wkv_recurrent",
]
