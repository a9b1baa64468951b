"""Attention complexity and its alternatives (course/02_attention.md; lab 02).

    masks      which keys each query sees: full, window, sinks, Sparse Transformer, block-sparse
    kernels    softmax attention: masked (explicit / SDPA) and a banded sliding-window kernel
    linear     linear attention (elu + 1 features) in parallel and recurrent forms
    cache      KV caches that evict: window, attention sinks + window (StreamingLLM)
    streaming  per-position loss on long streams under each policy; attention mass on token 0
    cost       FLOP and memory formulas, timing/memory measurement, log-log slopes, crossover n,
               per-token generation cost (KV cache vs recurrent state)
"""

from minilm.attention.cache import SinksWindowCache, WindowCache, kv_cache_bytes, make_cache
from minilm.attention.cost import (
    LAYER_KINDS,
    DecodingResult,
    ScalingResult,
    StreamingCost,
    attention_flops,
    attention_memory,
    crossover_n,
    fit_loglog_slope,
    layer_builder,
    measure_decoding,
    measure_scaling,
    measure_streaming,
    pattern_pairs,
    ssm_flops,
)
from minilm.attention.kernels import SoftmaxAttention, masked_attention, window_attention
from minilm.attention.linear import (
    LinearAttention,
    elu_feature_map,
    linear_attention,
    linear_attention_recurrent,
    linear_attention_step,
)
from minilm.attention.masks import (
    MASKS,
    attended_pairs,
    block_sparse_mask,
    check_mask,
    fixed_mask,
    full_causal_mask,
    make_mask,
    mask_picture,
    sinks_window_mask,
    sliding_window_mask,
    strided_mask,
)
from minilm.attention.streaming import (
    POLICIES,
    attention_mass_on_first_token,
    recompute_window_nll,
    streaming_perplexity,
    uniform_first_token_mass,
)

__all__ = [
    "LAYER_KINDS",
    "MASKS",
    "POLICIES",
    "DecodingResult",
    "LinearAttention",
    "ScalingResult",
    "StreamingCost",
    "SinksWindowCache",
    "SoftmaxAttention",
    "WindowCache",
    "attended_pairs",
    "attention_flops",
    "attention_mass_on_first_token",
    "attention_memory",
    "block_sparse_mask",
    "check_mask",
    "crossover_n",
    "elu_feature_map",
    "fit_loglog_slope",
    "fixed_mask",
    "full_causal_mask",
    "kv_cache_bytes",
    "layer_builder",
    "linear_attention",
    "linear_attention_recurrent",
    "linear_attention_step",
    "make_cache",
    "make_mask",
    "mask_picture",
    "masked_attention",
    "measure_decoding",
    "measure_scaling",
    "measure_streaming",
    "pattern_pairs",
    "recompute_window_nll",
    "sinks_window_mask",
    "sliding_window_mask",
    "ssm_flops",
    "streaming_perplexity",
    "strided_mask",
    "uniform_first_token_mass",
    "window_attention",
]
