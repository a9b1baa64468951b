"""Llama-architecture checkpoints in the Hugging Face layout, loaded into minilm's GPT.

A folder you already have (nothing is downloaded) with ``config.json`` and ``model.safetensors``, or
shards ``model-0000k-of-0000n.safetensors`` listed in ``model.safetensors.index.json``, becomes a
``GPT`` whose logits equal the original's up to float32 rounding (``tests/test_llama_format.py``
checks this against ``transformers`` on a tiny random model)::

    model = load_llama("checkpoints/SmolLM-135M")    # a GPT, in eval mode, float32 on the CPU
    tok = load_llama_tokenizer("checkpoints/SmolLM-135M")

Llama *is* minilm's GPT at a larger size (pre-norm RMSNorm blocks, RoPE, SwiGLU, no biases), so
loading is a renaming of tensors:

| Hugging Face name                                   | minilm name                          |
|-----------------------------------------------------|--------------------------------------|
| model.embed_tokens.weight (V, C)                    | tok_emb.weight                       |
| model.layers.i.input_layernorm.weight (C,)          | blocks.i.attn_norm.weight            |
| model.layers.i.self_attn.{q,k,v}_proj.weight        | blocks.i.attn.wqkv.weight, q;k;v rows|
| model.layers.i.self_attn.o_proj.weight (C, C)       | blocks.i.attn.wo.weight              |
| model.layers.i.post_attention_layernorm.weight      | blocks.i.ffn_norm.weight             |
| model.layers.i.mlp.gate_proj / up_proj / down_proj  | blocks.i.ffn.w1 / w3 / w2 (SiLU on w1)|
| model.norm.weight                                   | norm.weight                          |
| lm_head.weight (V, C), absent when tied             | head.weight                          |

and config.json's fields map to ``GPTConfig``: hidden_size -> d_model, intermediate_size -> d_ff,
num_hidden_layers -> n_layers, num_attention_heads -> n_heads, num_key_value_heads -> n_kv_heads
(grouped-query attention), rms_norm_eps -> norm_eps, rope_theta -> rope_base,
tie_word_embeddings -> tie_embeddings, max_position_embeddings -> context_length.

RoPE. Meta's Llama code rotates interleaved pairs (x[2i], x[2i+1]); Hugging Face's conversion
script permuted the rows of q_proj and k_proj so that its ``rotate_half`` can rotate the pairs
(x[i], x[i + d/2]) instead. ``rope_pairing="half"`` (the default) loads the Hugging Face weights as
they are into a GPT with ``rope_pairing="half"``. ``rope_pairing="interleaved"`` undoes the
permutation instead, within each head of size d: Hugging Face row i and row i + d/2 become rows 2i
and 2i + 1, i.e. ``w.view(heads, 2, d/2, C).transpose(1, 2).reshape(heads * d, C)`` (the inverse
of ``permute`` in transformers' ``convert_llama_weights_to_hf.py``). Both give the same logits.

Not supported, each with an error naming the field: other model types (``model_type`` must be
"llama"), RoPE scaling (``rope_scaling``, or ``rope_parameters.rope_type`` other than "default":
Llama 3.1/3.2 use "llama3"), attention or MLP biases, activations other than SiLU, a ``head_dim``
other than hidden_size / num_attention_heads, quantized checkpoints, and ``pytorch_model.bin``
files (convert them to safetensors).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from minilm.models.gpt import GPT, GPTConfig

__all__ = ["llama_config", "load_llama", "load_llama_tokenizer", "llama_to_minilm"]

_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not folder.is_dir():
        raise FileNotFoundError(f"no checkpoint folder at {folder}: point at a folder holding config.json and "
                                "*.safetensors (nothing is downloaded)")
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: a Hugging Face checkpoint folder holds config.json "
                                "and *.safetensors")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(config).__name__}")
    return config


def _rope_theta(config: dict[str, Any]) -> float:
    """rope_theta, from the top level (transformers 4) or ``rope_parameters`` (transformers 5);
    any RoPE scaling is refused."""
    params = config.get("rope_parameters") or {}
    if config.get("rope_scaling") is not None:
        raise ValueError(f"config.json: rope_scaling={config['rope_scaling']!r} is not supported (minilm's GPT "
                         "implements plain RoPE only); use a checkpoint whose rope_scaling is null")
    if params.get("rope_type", "default") != "default":
        raise ValueError(f"config.json: rope_parameters.rope_type={params['rope_type']!r} is not supported (only "
                         "'default', plain RoPE; Llama 3.1/3.2 checkpoints use 'llama3' scaling)")
    return float(params.get("rope_theta", config.get("rope_theta", 10000.0)))


def llama_config(folder: str | os.PathLike, rope_pairing: str = "half") -> GPTConfig:
    """The ``GPTConfig`` of the Llama checkpoint in ``folder`` (its config.json), after checking that
    minilm's GPT can compute exactly that model; a clear ``ValueError`` names any field it cannot."""
    config = _read_config(Path(folder))
    if config.get("model_type") != "llama":
        raise ValueError(f"config.json: model_type={config.get('model_type')!r} is not supported: only 'llama' "
                         "(LlamaForCausalLM) checkpoints load into minilm's GPT")
    missing = [name for name in _REQUIRED if not isinstance(config.get(name), int)]
    if missing:
        raise ValueError(f"config.json lacks the integer field(s) {', '.join(missing)}: is it a Llama config?")
    for name in ("attention_bias", "mlp_bias"):
        if config.get(name, False):
            raise ValueError(f"config.json: {name}=true is not supported (minilm's GPT has no biases)")
    if config.get("hidden_act", "silu") not in ("silu", "swish"):
        raise ValueError(f"config.json: hidden_act={config['hidden_act']!r} is not supported (SwiGLU uses 'silu')")
    if config.get("quantization_config") is not None:
        raise ValueError("config.json: quantization_config is set: quantized checkpoints are not supported")
    d_model, n_heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or (d_model // n_heads if n_heads else 0)
    if n_heads < 1 or d_model % n_heads or head_dim != d_model // n_heads:
        raise ValueError(f"config.json: head_dim={head_dim} with hidden_size={d_model} and num_attention_heads="
                         f"{n_heads} is not supported: minilm's GPT needs head_dim = hidden_size / num_attention_heads")
    try:
        return GPTConfig(
            vocab_size=config["vocab_size"], context_length=int(config.get("max_position_embeddings", 2048)),
            n_layers=config["num_hidden_layers"], n_heads=n_heads,
            n_kv_heads=int(config.get("num_key_value_heads") or n_heads), d_model=d_model,
            d_ff=config["intermediate_size"], tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            rope_base=_rope_theta(config), rope_pairing=rope_pairing,
            norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        )
    except ValueError as err:
        raise ValueError(f"config.json describes a model minilm's GPT cannot build: {err}") from None


def _shard_files(folder: Path) -> list[Path]:
    """The safetensors files of the checkpoint: the shards of the index, or the single file(s)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{index} is malformed (it needs a 'weight_map' object): {err!r}") from None
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"{index.name} lists shard(s) missing from {folder}: {', '.join(absent)}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    if any(folder.glob("*.bin")):
        raise ValueError(f"{folder} holds pytorch_model*.bin files only: minilm reads safetensors; convert them "
                         "once (e.g. save_pretrained(..., safe_serialization=True) where transformers is installed)")
    raise FileNotFoundError(f"no *.safetensors weights in {folder}")


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file  # optional: only this loader needs it
    except ImportError:
        raise ImportError("loading a Llama checkpoint needs the safetensors package: pip install safetensors") from None
    tensors: dict[str, torch.Tensor] = {}
    for path in _shard_files(folder):
        tensors.update(load_file(str(path), device="cpu"))
    return tensors


def _interleave_rows(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Hugging Face q/k rows (pairs i, i + d/2 per head) -> Meta's interleaved rows (pairs 2i, 2i+1)."""
    out_features, C = w.shape
    hd = out_features // heads
    return w.view(heads, 2, hd // 2, C).transpose(1, 2).reshape(out_features, C)


def llama_to_minilm(tensors: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """Rename (and stack q, k, v of) Hugging Face Llama tensors into a state dict of ``GPT(cfg)``.

    Raises a ``ValueError`` naming every missing, unexpected or wrongly shaped tensor.
    """
    tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}  # old files: a buffer
    out, used = {}, set()

    def take(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in tensors:
            raise ValueError(f"the checkpoint has no tensor {name!r} (expected shape {shape})")
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise ValueError(f"tensor {name!r} has shape {tuple(t.shape)}, config.json implies {shape}")
        used.add(name)
        return t

    C, F, V, hd = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.head_dim
    kv = cfg.n_kv_heads * hd
    out["tok_emb.weight"] = take("model.embed_tokens.weight", (V, C))
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        q, k = take(p + "self_attn.q_proj.weight", (C, C)), take(p + "self_attn.k_proj.weight", (kv, C))
        if cfg.rope_pairing == "interleaved":
            q, k = _interleave_rows(q, cfg.n_heads), _interleave_rows(k, cfg.n_kv_heads)
        v = take(p + "self_attn.v_proj.weight", (kv, C))
        out[f"blocks.{i}.attn.wqkv.weight"] = torch.cat([q, k, v], dim=0)  # (C + 2 kv, C): q; k; v rows
        out[f"blocks.{i}.attn.wo.weight"] = take(p + "self_attn.o_proj.weight", (C, C))
        out[f"blocks.{i}.attn_norm.weight"] = take(p + "input_layernorm.weight", (C,))
        out[f"blocks.{i}.ffn_norm.weight"] = take(p + "post_attention_layernorm.weight", (C,))
        out[f"blocks.{i}.ffn.w1.weight"] = take(p + "mlp.gate_proj.weight", (F, C))
        out[f"blocks.{i}.ffn.w3.weight"] = take(p + "mlp.up_proj.weight", (F, C))
        out[f"blocks.{i}.ffn.w2.weight"] = take(p + "mlp.down_proj.weight", (C, F))
    out["norm.weight"] = take("model.norm.weight", (C,))
    if not cfg.tie_embeddings:
        out["head.weight"] = take("lm_head.weight", (V, C))
    elif "lm_head.weight" in tensors:  # tied, but saved anyway: it must be the embedding
        if not torch.equal(take("lm_head.weight", (V, C)), out["tok_emb.weight"]):
            raise ValueError("config.json says tie_word_embeddings=true but lm_head.weight differs from "
                             "model.embed_tokens.weight: fix tie_word_embeddings in config.json")
    unexpected = sorted(set(tensors) - used)
    if unexpected:
        raise ValueError(f"the checkpoint has {len(unexpected)} tensor(s) a Llama of this config.json does not: "
                         f"{', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
    return out


def load_llama(folder: str | os.PathLike, rope_pairing: str = "half", dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> GPT:
    """A minilm ``GPT`` (eval mode) holding the Llama checkpoint in ``folder``.

    rope_pairing: "half" loads Hugging Face's q/k weights as they are; "interleaved" un-permutes
    them to Meta's layout (see the module docstring); the logits are the same. dtype: the weights'
    dtype in minilm (float32 by default, whatever the file holds). Memory: about 4 bytes per
    parameter in float32 (0.54 GB for a 135M-parameter model, 4.4 GB for 1.1B).
    """
    folder = Path(folder)
    cfg = llama_config(folder, rope_pairing)
    state = llama_to_minilm(_read_tensors(folder), cfg)
    with torch.device("meta"):  # no random init of weights about to be overwritten
        model = GPT(cfg)
    if cfg.tie_embeddings:  # one matrix under two names in the state dict
        state["head.weight"] = state["tok_emb.weight"]
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    if cfg.tie_embeddings:  # assign=True replaced the shared Parameter: tie again
        model.head.weight = model.tok_emb.weight
    return model.to(device).eval()


class _Tokenizer:
    """A checkpoint's tokenizer (``tokenizer.json``) with the encode/decode of minilm's tokenizers."""

    def __init__(self, tokenizer: Any):
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])


def load_llama_tokenizer(folder: str | os.PathLike) -> _Tokenizer:
    """The tokenizer in ``folder/tokenizer.json`` (needs the ``tokenizers`` package), to turn text into
    the checkpoint's token ids (e.g. calibration text for ``minilm.redundancy.block_influence``)."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no tokenizer.json (a sentencepiece tokenizer.model alone is not "
                                "read by minilm)")
    try:
        from tokenizers import Tokenizer  # optional, like safetensors
    except ImportError:
        raise ImportError("reading tokenizer.json needs the tokenizers package: pip install tokenizers") from None
    return _Tokenizer(Tokenizer.from_file(str(path)))
