"""Lab 02, attention complexity and efficient architectures: the graded questions.

Notebooks: ``solutions/02_attention.ipynb`` (instructor source) and ``labs/02_attention.ipynb``
(student version); chapter: ``course/02_attention.md``. The references come from
``minilm.attention`` wherever the library has one:

    q1  sinks_mask            function  vs ``sinks_window_mask`` on hidden (T, window, sinks)
    q2  linear_attention_rnn  function  vs ``linear_attention_recurrent`` on hidden q, k, v
    q3  loglog_slope          function  vs ``fit_loglog_slope`` on hidden noisy power laws
    q4  kv_cache_memory       function  vs ``kv_cache_bytes`` on hidden model shapes
    q5  sinks_cache_bytes     value     the closed form, from the notebook's cache parameters
    q6  stable_policy         choice    StreamingLLM: sinks + window keeps perplexity stable
    q7  depth_claim           choice    what a tiny depth experiment can and cannot show

The lab's timings and training runs depend on the machine and are too slow to recompute, so they
are never graded directly: the student's *analysis* functions are (q3, q4), and the measured
value q5 is a memory size that is exact on every device.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from minilm.attention import (
    fit_loglog_slope,
    kv_cache_bytes,
    linear_attention_recurrent,
    sinks_window_mask,
    sliding_window_mask,
)
from minilm.grading.questions import Case, Hidden, Lab, choice_question, function_question, value_question

# --- q1: the attention-sinks mask ---------------------------------------------------------------


def sinks_mask_ref(T: int, window: int, sinks: int) -> torch.Tensor:
    """StreamingLLM's mask: allowed[i, j] = (j <= i) and (j < sinks or i - j < window)."""
    return sinks_window_mask(T, window, sinks)


def _mask_case(rng: np.random.Generator) -> tuple:
    T = int(rng.integers(12, 41))
    return (T, int(rng.integers(1, T // 2)), int(rng.integers(2, 7)))  # sinks outside the window


def _mask_edge_case(rng: np.random.Generator) -> tuple:
    T = int(rng.integers(5, 20))
    return (T, int(rng.integers(T, T + 4)), int(rng.integers(0, 3)))  # window >= T: full causal


def _mask_window_only(T, window, sinks):
    return sliding_window_mask(T, window)  # forgets the sinks


def _mask_noncausal_sinks(T, window, sinks):
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    return (j < sinks) | ((j <= i) & (i - j < window))  # early queries see sinks in their future


def _mask_off_by_one(T, window, sinks):
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    return (j <= i) & ((j < sinks) | (i - j <= window))  # window + 1 keys


def _mask_transposed(T, window, sinks):
    return sinks_mask_ref(T, window, sinks).T  # wrong axis: rows are keys, columns queries


# --- q2: linear attention as an RNN -------------------------------------------------------------


def linear_attention_rnn_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Katharopoulos et al. (2020) eqs. 18-20, the library's recurrent form (tested equal to the parallel one)."""
    return linear_attention_recurrent(q, k, v, eps)


def _qkv(rng: np.random.Generator) -> tuple:
    B, H, T = int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(3, 13))
    d, dv = int(rng.integers(2, 9)), int(rng.integers(2, 9))

    def draw(*shape):
        return torch.from_numpy(rng.normal(size=shape).astype(np.float32))

    return (draw(B, H, T, d), draw(B, H, T, d), draw(B, H, T, dv))


def _la_no_denominator(q, k, v, eps=1e-6):
    fq, fk = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    S = torch.einsum("bhtd,bhte->bhtde", fk, v).cumsum(dim=2)
    return torch.einsum("bhtd,bhtde->bhte", fq, S)  # forgets to normalise by phi(q).z


def _la_noncausal(q, k, v, eps=1e-6):
    fq, fk = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    S = torch.einsum("bhtd,bhte->bhde", fk, v)  # the state after *all* tokens, for every position
    z = fk.sum(dim=2)
    return torch.einsum("bhtd,bhde->bhte", fq, S) / (torch.einsum("bhtd,bhd->bht", fq, z)[..., None] + eps)


def _la_output_before_update(q, k, v, eps=1e-6):
    fq, fk = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    B, H, T, d = q.shape
    S, z = q.new_zeros(B, H, d, v.shape[-1]), q.new_zeros(B, H, d)
    out = torch.empty(B, H, T, v.shape[-1], dtype=q.dtype)
    for t in range(T):  # off by one position: token t does not attend to itself
        num = torch.einsum("bhd,bhde->bhe", fq[:, :, t], S)
        out[:, :, t] = num / (torch.einsum("bhd,bhd->bh", fq[:, :, t], z)[..., None] + eps)
        S = S + torch.einsum("bhd,bhe->bhde", fk[:, :, t], v[:, :, t])
        z = z + fk[:, :, t]
    return out


def _la_softmax(q, k, v, eps=1e-6):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # not linear attention


# --- q3: log-log slope --------------------------------------------------------------------------


def loglog_slope_ref(ns, times) -> float:
    """Least-squares slope of log(times) on log(ns) (any log base gives the same slope)."""
    return fit_loglog_slope(ns, times)[0]


def _timings(rng: np.random.Generator) -> tuple:
    k = int(rng.integers(5, 9))
    n0 = int(rng.choice([32, 64, 100, 128]))
    ns = [n0 * 2**i for i in range(k)]
    s, c = rng.uniform(0.8, 2.2), 10.0 ** rng.uniform(-6, -3)
    times = [float(c * n**s * math.exp(rng.normal(0.0, 0.15))) for n in ns]  # timing noise: ~15%
    return (ns, times)


def _slope_endpoints(ns, times):
    return float((math.log(times[-1]) - math.log(times[0])) / (math.log(ns[-1]) - math.log(ns[0])))


def _slope_linear_space(ns, times):
    return float(np.polyfit(np.asarray(ns, float), np.asarray(times, float), 1)[0])


def _slope_semilog(ns, times):
    return float(np.polyfit(np.asarray(ns, float), np.log(np.asarray(times, float)), 1)[0])


def _slope_axes_swapped(ns, times):
    return float(np.polyfit(np.log(np.asarray(times, float)), np.log(np.asarray(ns, float)), 1)[0])  # n on t


# --- q4: KV-cache memory ------------------------------------------------------------------------


def kv_cache_memory_ref(n_layers: int, d_model: int, length: int, batch: int = 1, bytes_per_element: int = 4) -> int:
    """2 (keys and values) * n_layers * batch * length * d_model * bytes_per_element."""
    return kv_cache_bytes(n_layers, d_model, length, batch, bytes_per_element)


def _model_shape(rng: np.random.Generator) -> Case:
    args = (int(rng.integers(1, 81)), 64 * int(rng.integers(1, 129)), int(rng.integers(1, 200_001)))
    return Case(args=args, kwargs={"batch": int(rng.integers(2, 17)), "bytes_per_element": int(rng.choice([1, 2, 4]))})


def _kv_keys_only(n_layers, d_model, length, batch=1, bytes_per_element=4):
    return n_layers * batch * length * d_model * bytes_per_element  # forgets the values


def _kv_ignores_batch(n_layers, d_model, length, batch=1, bytes_per_element=4):
    return 2 * n_layers * length * d_model * bytes_per_element


def _kv_ignores_dtype(n_layers, d_model, length, batch=1, bytes_per_element=4):
    return 2 * n_layers * batch * length * d_model * 4  # float32 whatever the cache's dtype


# --- q5: the sinks cache's memory after the stream ----------------------------------------------

Q5_DEFAULTS = {"GPT_LAYERS": 2, "GPT_D": 64, "WINDOW": 32, "SINKS": 4, "MEMORY_STREAM": 256}


def sinks_cache_bytes_ref(GPT_LAYERS: int, GPT_D: int, WINDOW: int, SINKS: int, MEMORY_STREAM: int) -> int:  # noqa: N803
    """Bytes a ``SinksWindowCache(window=WINDOW, sinks=SINKS)`` holds after MEMORY_STREAM tokens, one at a time.

    Between steps it keeps the SINKS first tokens and the WINDOW - 1 most recent ones (the next
    token makes WINDOW): min(MEMORY_STREAM, SINKS + WINDOW - 1) tokens, float32 keys and values.
    """
    values = {"GPT_LAYERS": GPT_LAYERS, "GPT_D": GPT_D, "WINDOW": WINDOW, "MEMORY_STREAM": MEMORY_STREAM}
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1_000_000:
            raise ValueError(f"{name} must be an integer in [1, 1e6], got {value!r}")
    if not isinstance(SINKS, int) or isinstance(SINKS, bool) or not 0 <= SINKS <= 1_000_000:
        raise ValueError(f"SINKS must be an integer in [0, 1e6], got {SINKS!r}")
    return kv_cache_bytes(GPT_LAYERS, GPT_D, min(MEMORY_STREAM, SINKS + WINDOW - 1))


_D = Q5_DEFAULTS

LAB = Lab(
    "02",
    "attention",
    "Attention complexity and efficient architectures",
    [
        function_question(
            "q1", 3, target="sinks_mask", reference=sinks_mask_ref,
            title="The attention-sinks + sliding-window mask (StreamingLLM)",
            public=[Case(args=(12, 4, 2), label="T=12, window 4, 2 sinks"),
                    Case(args=(6, 2, 0), label="no sinks: a plain window")],
            hidden=[Hidden(_mask_case, n=3, label="random sizes"), Hidden(_mask_edge_case, n=1, label="window >= T")],
            rtol=0.0, atol=0.0,
            hint="a (T, T) boolean tensor, rows the queries: a query may see a key only if it is not in "
                 "its future, and then only if it is a sink or among the `window` most recent positions "
                 "(count them on the public case: does the window include the query itself?)",
            wrong=[_mask_window_only, _mask_noncausal_sinks, _mask_off_by_one, _mask_transposed],
        ),
        function_question(
            "q2", 3, target="linear_attention_rnn", reference=linear_attention_rnn_ref,
            title="Linear attention as an RNN: the recurrent form equals the parallel one",
            public=[_qkv(np.random.default_rng(2020))],
            hidden=[Hidden(_qkv, n=3, label="random q, k, v")],
            # float32 sums of at most 12 terms in a different order: relative error ~1e-6
            rtol=1e-4, atol=1e-5,
            hint="write the causal linear-attention output of token t as a ratio of two sums over "
                 "tokens <= t (Katharopoulos et al. 2020, eq. 18-20); each sum can be carried as a "
                 "running state. Does token t attend to itself? Return (B, H, T, dv) float32",
            wrong=[_la_no_denominator, _la_noncausal, _la_softmax, _la_output_before_update],
        ),
        function_question(
            "q3", 2, target="loglog_slope", reference=loglog_slope_ref,
            title="The exponent of a power law: least-squares slope on log-log axes",
            public=[Case(args=([100, 200, 400, 800], [1.0, 4.0, 16.0, 64.0]), label="exactly quadratic")],
            hidden=[Hidden(_timings, n=3, label="noisy timings")],
            rtol=1e-6, atol=1e-9,
            hint="t = c n^k is a straight line on log-log axes: use every point, in the right roles "
                 "(which variable is explained by which?), and return the exponent as a Python float",
            wrong=[_slope_endpoints, _slope_linear_space, _slope_semilog, _slope_axes_swapped],
        ),
        function_question(
            "q4", 2, target="kv_cache_memory", reference=kv_cache_memory_ref,
            title="The memory of a KV cache",
            public=[Case(args=(2, 64, 1024), label="the lab's GPT at 1024 tokens"),
                    Case(args=(32, 4096, 4096), kwargs={"bytes_per_element": 2}, label="Llama-2-7B, fp16, 4k")],
            hidden=[Hidden(_model_shape, n=3, label="random model shapes and batches")],
            rtol=0.0, atol=0.0,
            hint="list everything the cache stores for one token in one layer, then count how many such "
                 "entries there are and how many bytes each number takes; return an int",
            wrong=[_kv_keys_only, _kv_ignores_batch, _kv_ignores_dtype],
        ),
        value_question(
            "q5", 1, target="sinks_cache_bytes", reference=sinks_cache_bytes_ref, params=Q5_DEFAULTS,
            title="The bytes the sinks + window cache holds after your stream",
            # Exact: the byte count of float32 tensors of known shapes, the same on every device.
            rtol=0.0, atol=0.0,
            hint="measured, not predicted: the sinks policy's memory once the whole stream has gone "
                 "through, as an int of bytes",
            wrong=[
                kv_cache_bytes(_D["GPT_LAYERS"], _D["GPT_D"], _D["MEMORY_STREAM"]),  # the keep-all cache
                kv_cache_bytes(_D["GPT_LAYERS"], _D["GPT_D"], _D["SINKS"] + _D["WINDOW"]),  # guessed, not measured
                kv_cache_bytes(_D["GPT_LAYERS"], _D["GPT_D"], _D["WINDOW"] - 1),  # the plain window cache
            ],
        ),
        choice_question(
            "q6", 2, target="stable_policy",
            title="Which cache policy keeps streaming perplexity stable with a constant-size cache?",
            choices={
                "a": "Dense attention: keep every token.",
                "b": "Window attention: keep only the most recent tokens, evicting the first ones.",
                "c": "Four initial tokens (attention sinks) plus a window of recent tokens.",
                "d": "None: a bounded cache always loses to re-computation by a large factor.",
            },
            answer="c",
            hint="Xiao et al. 2023, Table 1 and Fig. 3: what happens when the first tokens are evicted?",
        ),
        choice_question(
            "q7", 1, target="depth_claim",
            title="What can the tiny depth experiment show?",
            choices={
                "a": "It proves that LSTMs cannot benefit from depth at any scale.",
                "b": "How loss moves with depth at one tiny budget and learning rate; not the talk's scaling claim.",
                "c": "The ranking of the three families here would hold at billions of parameters.",
                "d": "With equal tokens, the differences are caused by depth alone, not by the learning rate or steps.",
            },
            answer="b",
            hint="one token budget, one learning rate per family, one seed (plus one repeat), widths of 64",
        ),
    ],
)
