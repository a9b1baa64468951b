"""Language models of minilm, all behind the shared ``LanguageModel`` interface."""

from minilm.models.base import LanguageModel, sample_next
from minilm.models.gpt import GPT, GPTConfig, KVCache, RMSNorm, apply_rope, causal_mask, rope_angles
from minilm.models.lstm import LSTMLM, LSTMConfig
from minilm.models.ngram import NGramConfig, NGramLM, NGramModel
from minilm.models.registry import MODELS, SIZES, build_model, model_from_checkpoint, model_from_config
from minilm.models.rwkv import RWKV, RWKVConfig, wkv_parallel, wkv_recurrent
from minilm.models.ssm import SSMLM, SelectiveSSM, SSMConfig, selective_scan

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
    "SSMConfig",
    "SSMLM",
    "SelectiveSSM",
    "MODELS",
    "SIZES",
    "build_model",
    "model_from_checkpoint",
    "model_from_config",
    "RMSNorm",
    "apply_rope",
    "causal_mask",
    "rope_angles",
    "sample_next",
    "selective_scan",
    "wkv_parallel",
    "wkv_recurrent",
]
