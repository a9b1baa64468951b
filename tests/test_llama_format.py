"""Llama-format checkpoints (minilm.models.llama_format) and grouped-query attention in the GPT.

- GQA: unset ``n_kv_heads`` is multi-head attention with the same weights; a GQA model equals an
  independent reference (the MHA model whose key/value heads are the GQA heads repeated), on both
  attention paths and RoPE pairings; the KV caches store n_kv_heads heads and decode exactly; μP
  still zeroes the query rows.
- The loader: a tiny random ``transformers.LlamaForCausalLM`` saved with ``save_pretrained``
  (single file and sharded; GQA and MHA; tied and untied) gives the same logits in minilm, with
  either RoPE convention; a wrong RoPE mapping does not (the test can fail); malformed or
  unsupported checkpoints raise errors naming what is wrong. Nothing is downloaded.

Tolerance of the logits comparison: both sides compute in float32 the same formulas in a different
order (fused vs unfused RMSNorm and RoPE, SDPA vs eager attention). With the large random weights
used here the logits have mean |logit| about 1.4; they agree to 2e-5 at worst (median relative
difference 7e-7). We assert rtol = 1e-4, atol = 1e-4, while a wrong RoPE pairing moves them by
more than 0.5 (``test_a_wrong_rope_mapping_would_be_caught``).
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from minilm.attention.cache import WindowCache
from minilm.attention.masks import sliding_window_mask
from minilm.models.gpt import GPT, GPTConfig, KVCache
from minilm.models.llama_format import llama_config, llama_to_minilm, load_llama


# ------------------------------------------------------------------------------ grouped-query attention
def _gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    base = {"vocab_size": 40, "n_layers": 2, "n_heads": 4, "d_model": 32, "context_length": 24}
    return GPT(GPTConfig(**{**base, **kw})).eval()


def _sharpen(model: GPT, std: float = 0.3, seed: int = 1) -> GPT:
    """Large random weights (and gains), so that attention is peaked and every mapping matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            p.copy_(1 + noise if p.dim() == 1 else noise)
    return model


def _tokens(n: int = 20, batch: int = 3, vocab: int = 40, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


def test_n_kv_heads_defaults_to_n_heads_and_is_validated():
    assert GPTConfig(vocab_size=10, n_heads=4, d_model=32).n_kv_heads == 4
    assert GPTConfig(vocab_size=10, n_heads=4, d_model=32, n_kv_heads=1).n_kv_heads == 1
    for bad in (3, 0, 8, 2.0):
        with pytest.raises(ValueError, match="n_kv_heads"):
            GPTConfig(vocab_size=10, n_heads=4, d_model=32, n_kv_heads=bad)


def test_unset_n_kv_heads_is_multi_head_attention_with_the_same_weights():
    a, b = _gpt(), _gpt(n_kv_heads=4)
    assert a.blocks[0].attn.wqkv.weight.shape == (96, 32)
    idx = _tokens()
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert torch.equal(a(idx), b(idx))


@pytest.mark.parametrize("attn_impl", ["sdpa", "explicit"])
@pytest.mark.parametrize("pairing", ["interleaved", "half"])
@pytest.mark.parametrize("n_kv", [1, 2])
def test_gqa_equals_mha_with_repeated_key_value_heads(attn_impl, pairing, n_kv):
    # Independent reference: multi-head attention in which query head h is given key/value head
    # h // (H / n_kv) of the GQA model, by copying rows of the weights (no GQA code involved).
    gqa = _sharpen(_gpt(n_kv_heads=n_kv, attn_impl=attn_impl, rope_pairing=pairing))
    mha = _gpt(attn_impl=attn_impl, rope_pairing=pairing)
    C, hd, rep = 32, 8, 4 // n_kv
    state = gqa.state_dict()
    for i in range(2):
        w = state[f"blocks.{i}.attn.wqkv.weight"]                       # (C + 2 n_kv hd, C)
        q, k, v = w[:C], w[C: C + n_kv * hd], w[C + n_kv * hd:]
        rows = lambda m: m.view(n_kv, hd, C).repeat_interleave(rep, dim=0).reshape(C, C)  # noqa: E731
        state[f"blocks.{i}.attn.wqkv.weight"] = torch.cat([q, rows(k), rows(v)])
    mha.load_state_dict(state)
    idx = _tokens()
    torch.testing.assert_close(gqa(idx), mha(idx), rtol=1e-5, atol=1e-5)
    assert gqa.blocks[0].attn.wqkv.weight.shape == (C + 2 * n_kv * hd, C)


def test_gqa_kv_cache_stores_fewer_heads_and_decodes_exactly():
    model = _sharpen(_gpt(n_kv_heads=2))
    idx = _tokens(n=16)
    full = model(idx)
    cache = KVCache(2)
    steps = [model(idx[:, :5], cache=cache)] + [model(idx[:, t: t + 1], cache=cache) for t in range(5, 16)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.k[0].shape[:2] == (3, 2)                                # (B, n_kv_heads, slots, hd)
    mha_cache = KVCache(2)
    _gpt()(idx, cache=mha_cache)
    assert cache.nbytes() * 2 == mha_cache.nbytes()                      # half the heads, half the memory
    # An evicting cache too: one token at a time equals the sliding-window mask.
    window = WindowCache(2, window=6)
    steps = [model(idx[:, t: t + 1], cache=window) for t in range(16)]
    ref = model(idx, attn_mask=sliding_window_mask(16, 6))
    torch.testing.assert_close(torch.cat(steps, dim=1), ref, rtol=1e-5, atol=1e-5)
    out = model.generate(idx[:, :4], 10, temperature=0)
    assert out.shape == (3, 14)


def test_gqa_under_mup_zeroes_the_query_rows_only():
    from minilm.mup import param_groups

    model = _gpt(n_kv_heads=2, parametrization="mup", base_width=16)
    w = model.blocks[0].attn.wqkv.weight
    assert w.shape == (64, 32) and (w[:32] == 0).all() and (w[32:] != 0).all()
    groups = param_groups(model, 1e-2, 0.1)
    hidden = next(g for g in groups if g["kind"] == "hidden")
    assert any(p is w for p in hidden["params"]) and hidden["lr"] == pytest.approx(1e-2 / 2)
    model(_tokens()).sum().backward()                                    # trains


# ------------------------------------------------------------------------------ the loader
@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers", reason="the reference Llama is transformers' (pip install "
                                       "transformers); the loader itself does not use it")
    pytest.importorskip("safetensors", reason="the loader reads safetensors files (pip install safetensors)")
    return transformers


def _hf_llama(hf, folder, *, tied=False, n_kv=2, shard=None, seed=0, **extra):
    cfg = hf.LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=56, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=n_kv, max_position_embeddings=64,
                         rms_norm_eps=1e-6, rope_theta=500.0, tie_word_embeddings=tied, **extra)
    torch.manual_seed(seed)
    model = hf.LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # large random weights and gains: peaked attention, every mapping matters
        for _name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.3
            p.copy_(1 + noise if p.dim() == 1 else noise)
    model.eval()
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(folder, **kwargs)
    return model


def _hf_logits(model, idx):
    with torch.no_grad():
        return model(input_ids=idx).logits


@pytest.mark.parametrize("tied, n_kv, shard", [(False, 2, None), (True, 4, None), (False, 1, "20KB")],
                         ids=["gqa-untied-single-file", "mha-tied-single-file", "mqa-untied-sharded"])
@pytest.mark.parametrize("pairing", ["half", "interleaved"])
def test_loaded_llama_matches_transformers_logits(hf, tmp_path, tied, n_kv, shard, pairing):
    ref = _hf_llama(hf, tmp_path, tied=tied, n_kv=n_kv, shard=shard)
    if shard:
        assert (tmp_path / "model.safetensors.index.json").is_file() and len(list(tmp_path.glob("*.safetensors"))) > 2
    model = load_llama(tmp_path, rope_pairing=pairing)
    c = model.config
    assert (c.n_layers, c.n_heads, c.n_kv_heads, c.d_model, c.d_ff) == (3, 4, n_kv, 32, 56)
    assert (c.rope_base, c.norm_eps, c.tie_embeddings, c.rope_pairing) == (500.0, 1e-6, tied, pairing)
    assert (model.head.weight is model.tok_emb.weight) == tied
    idx = _tokens(n=30, vocab=61)
    expected = _hf_logits(ref, idx)
    got = model(idx)
    assert expected.abs().mean() > 1.0                                   # not a near-constant output
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # incremental decoding with the GQA cache gives the same logits as transformers' full pass
    cache = KVCache(3)
    steps = [model(idx[:, :10], cache=cache)] + [model(idx[:, t: t + 1], cache=cache) for t in range(10, 30)]
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, rtol=1e-4, atol=1e-4)


def test_a_wrong_rope_mapping_would_be_caught(hf, tmp_path):
    # Hugging Face's rows loaded *without* un-permuting into an interleaved GPT: the logits must differ.
    ref = _hf_llama(hf, tmp_path)
    from safetensors.torch import load_file

    cfg = llama_config(tmp_path)                                         # rope_pairing="half"
    state = llama_to_minilm(load_file(str(tmp_path / "model.safetensors")), cfg)
    cfg.rope_pairing = "interleaved"
    wrong = GPT(cfg).eval()
    wrong.load_state_dict(state)
    idx = _tokens(n=30, vocab=61)
    assert (wrong(idx) - _hf_logits(ref, idx)).abs().max() > 0.5


def _write_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is _DELETE:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


_DELETE = object()


@pytest.fixture
def saved(hf, tmp_path):
    _hf_llama(hf, tmp_path)
    return tmp_path


@pytest.mark.parametrize("changes, message", [
    ({"model_type": "mistral"}, "model_type='mistral'"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "rope_type='llama3'"),
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"head_dim": 16}, "head_dim=16"),
    ({"num_key_value_heads": 3}, "n_kv_heads"),
    ({"hidden_size": _DELETE}, "hidden_size"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
])
def test_unsupported_or_malformed_configs_name_the_field(saved, changes, message):
    _write_config(saved, **changes)
    with pytest.raises(ValueError, match=message):
        load_llama(saved)


def test_transformers_4_style_config_fields_load(saved):
    # transformers 4 wrote rope_theta and rope_scaling at the top level, without rope_parameters.
    _write_config(saved, rope_parameters=_DELETE, rope_theta=500.0, rope_scaling=None)
    assert load_llama(saved).config.rope_base == 500.0
    _write_config(saved, rope_theta=_DELETE)
    assert llama_config(saved).rope_base == 10000.0                      # LlamaConfig's default


def test_missing_files_and_tensors_name_what_is_wrong(saved, tmp_path_factory):
    from safetensors.torch import load_file, save_file

    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        load_llama(saved / "nope")
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_llama(empty)
    (empty / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_llama(empty)
    tensors = load_file(str(saved / "model.safetensors"))
    weights = saved / "model.safetensors"
    save_file({k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"}, str(weights))
    with pytest.raises(ValueError, match=r"no tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        load_llama(saved)
    save_file({**tensors, "model.layers.0.self_attn.k_proj.weight": torch.zeros(32, 32)}, str(weights))
    with pytest.raises(ValueError, match=r"k_proj\.weight' has shape \(32, 32\), config\.json implies \(16, 32\)"):
        load_llama(saved)
    save_file({**tensors, "model.layers.3.mlp.up_proj.weight": torch.zeros(56, 32)}, str(weights))
    with pytest.raises(ValueError, match=r"does not: model\.layers\.3\.mlp\.up_proj\.weight"):
        load_llama(saved)
    weights.unlink()
    (saved / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="safetensors"):
        load_llama(saved)


def test_a_missing_shard_is_named(hf, tmp_path):
    _hf_llama(hf, tmp_path, shard="20KB")
    (tmp_path / "model-00002-of-00007.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00007.safetensors"):
        load_llama(tmp_path)


def test_tied_config_with_a_different_head_is_refused(saved):
    _write_config(saved, tie_word_embeddings=True)
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        load_llama(saved)


def test_without_safetensors_the_error_says_what_to_install(saved, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match="pip install safetensors"):
        load_llama(saved)


def test_checkpoint_tokenizer(hf, tmp_path):
    tokenizers = pytest.importorskip("tokenizers", reason="tokenizer.json is read with the tokenizers package")
    from minilm.models.llama_format import load_llama_tokenizer

    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded = load_llama_tokenizer(tmp_path)
    assert loaded.encode("hello world again") == [1, 2, 0] and loaded.vocab_size == 3
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_llama_tokenizer(tmp_path / "elsewhere")
