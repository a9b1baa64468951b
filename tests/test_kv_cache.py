"""Tests of the KV caches (minilm.models.kv_cache, minilm.attention.cache): preallocated and ring
buffers against a plain reference that keeps everything, and their memory."""

from __future__ import annotations

import pytest
import torch

from minilm.attention import SinksWindowCache, WindowCache, kv_cache_bytes, sinks_window_mask
from minilm.models.gpt import GPT, GPTConfig, KVCache


def tiny_gpt(n_layers=2, ctx=48, vocab=23, seed=0, impl="sdpa", device="cpu"):
    torch.manual_seed(seed)  # built on the CPU: the same weights on every device
    model = GPT(GPTConfig(vocab_size=vocab, context_length=ctx, n_layers=n_layers, n_heads=2, d_model=16,
                          attn_impl=impl, init_std=0.3))  # large init: attention far from uniform
    return model.to(device).eval()


def tokens(shape, device, seed=0):
    """Random token ids drawn on the CPU (the same ids on every device), moved to ``device``."""
    return torch.randint(0, 23, shape, generator=torch.Generator().manual_seed(seed)).to(device)


class KeepAllReference:
    """The policies written plainly: every key and value kept (``torch.cat``), un-rotated; the policy
    applied by masking, and RoPE positions recomputed every step from what the policy keeps.

    window=None keeps everything. Follows the cache step protocol (begin, rope_positions,
    causal_mask, update, commit) so ``GPT.forward`` can drive it.
    """

    rotate_all = True

    def __init__(self, n_layers, window=None, sinks=0, positions="absolute"):
        self.k, self.v = [None] * n_layers, [None] * n_layers
        self.window, self.sinks, self.positions = window or 10**9, sinks, positions
        self.seen = 0
        self.device = torch.device("cpu")

    def __len__(self):
        return self.seen

    def begin(self, T, device=None):
        self.device = torch.device(device) if device is not None else self.device
        self.q_pos = torch.arange(self.seen, self.seen + T, device=self.device)
        self.k_pos = torch.arange(self.seen + T, device=self.device)
        j = torch.arange(self.seen, device=self.device)
        kept = (j < self.sinks) | (self.seen - j < self.window)  # what the next query may see
        new = torch.ones(T, dtype=torch.bool, device=self.device)
        self.visible = torch.cat([kept, new])  # kept before the step, or new

    def attn_mask(self, T):
        q = torch.arange(self.seen, self.seen + T, device=self.device)[:, None]
        k = torch.arange(self.seen + T, device=self.device)[None, :]
        return (k <= q) & ((q - k < self.window) | (k < self.sinks))

    def causal_mask(self):
        return (self.k_pos[None, :] <= self.q_pos[:, None]) & self.visible[None, :]

    def rope_positions(self):
        if self.positions == "absolute":
            return self.q_pos, self.k_pos
        rank = torch.cumsum(self.visible.long(), 0) - 1  # StreamingLLM: position among the kept keys
        return rank[self.q_pos], rank

    def update(self, layer, k, v, rotate):
        if self.k[layer] is not None:
            k, v = torch.cat([self.k[layer], k], dim=2), torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return rotate(k), v

    def commit(self):
        self.seen += self.q_pos.numel()


def run_chunks(model, idx, cache, sizes, policy_mask=False):
    """Feed idx (B, T) in chunks of the given sizes; logits (B, T, V)."""
    out, s = [], 0
    for n in sizes:
        chunk = idx[:, s : s + n]
        mask = cache.attn_mask(n) if policy_mask else None
        out.append(model(chunk, cache=cache, attn_mask=mask))
        s += n
    assert s == idx.size(1)
    return torch.cat(out, dim=1)


MIXED = [1, 1, 2, 1, 3, 5, 1, 9, 1, 1, 7, 2, 1, 4]  # 39 tokens, chunks longer than the windows below


# ------------------------------------------------------------------------------ the full cache
@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
def test_full_cache_equals_full_forward_token_by_token_and_in_chunks(impl, device):
    model = tiny_gpt(impl=impl, device=device)
    idx = tokens((2, 39), device)
    with torch.no_grad():
        full = model(idx)
        for sizes in ([1] * 39, MIXED, [39]):
            cache = KVCache(2)
            torch.testing.assert_close(run_chunks(model, idx, cache, sizes), full, atol=1e-5, rtol=1e-5)
            assert len(cache) == 39 and cache.pos.tolist() == list(range(39))
            assert cache.nbytes() == kv_cache_bytes(2, 16, 39, batch=2)


def test_full_cache_doubles_its_buffers(device):
    model = tiny_gpt(device=device)
    idx = tokens((1, 39), device)
    cache, seen, capacities = KVCache(2), 0, []
    with torch.no_grad():
        for n in MIXED:
            model(idx[:, seen : seen + n], cache=cache)
            seen += n
            capacities.append(cache.k[0].size(2))
    expected, cap, seen = [], 0, 0
    for n in MIXED:  # the doubling rule, step by step: grow to max(2 * capacity, what is needed)
        seen += n
        cap = cap if seen <= cap else max(seen, 2 * cap)
        expected.append(cap)
    assert capacities == expected and capacities[-1] == 64  # 1, 2, 4, 8, 16, 32, 64: crossed every boundary
    assert cache.allocated_bytes() == kv_cache_bytes(2, 16, 64) > cache.nbytes() == kv_cache_bytes(2, 16, 39)


def test_full_cache_with_max_length_allocates_once(device):
    model = tiny_gpt(device=device)
    idx = tokens((1, 30), device)
    cache = KVCache(2, max_length=30)
    with torch.no_grad():
        model(idx[:, :4], cache=cache)
        buffer = cache.k[1].data_ptr()
        ref = run_chunks(model, idx[:, 4:], cache, [1] * 26)
    assert cache.k[1].data_ptr() == buffer and cache.allocated_bytes() == kv_cache_bytes(2, 16, 30)
    torch.testing.assert_close(ref, model(idx)[:, 4:], atol=1e-5, rtol=1e-5)


def test_full_cache_rotates_only_the_new_keys(device):
    # RoPE of a key depends on its own position only: each step rotates T keys, not the whole cache.
    cache, rotated, g, keys = KVCache(1), [], torch.Generator().manual_seed(0), []

    def rotate(x):
        rotated.append(x.size(2))
        return x

    for T in (5, 1, 1, 3):
        cache.begin(T, device)
        keys.append(torch.randn(1, 2, T, 4, generator=g).to(device))
        k, _ = cache.update(0, keys[-1], torch.randn(1, 2, T, 4, generator=g).to(device), rotate)
        cache.commit()
        assert k.size(2) == len(cache) and k.device.type == cache.k[0].device.type == device.type
    assert rotated == [5, 1, 1, 3]
    assert torch.equal(k, torch.cat(keys, dim=2))  # every key kept, in order, through the doublings


def test_generate_preallocates_to_the_context_length(device):
    model = tiny_gpt(ctx=16, device=device)
    idx = tokens((1, 5), device)
    with torch.no_grad():
        logits, state = model._next_logits(idx, None)
        torch.testing.assert_close(logits, model(idx)[:, -1])
    assert state.k[0].size(2) == 16 and len(state) == 5


# -------------------------------------------------------------------------------- ring caches
def ring_cases(w=5, s=3):
    """(cache, the plain reference of its policy) pairs, two layers each."""
    return [
        (WindowCache(2, w), KeepAllReference(2, w)),
        (WindowCache(2, 1), KeepAllReference(2, 1)),
        (SinksWindowCache(2, w, s), KeepAllReference(2, w, s, "cache")),
        (SinksWindowCache(2, w, s, positions="absolute"), KeepAllReference(2, w, s, "absolute")),
        (SinksWindowCache(2, w, 0), KeepAllReference(2, w, 0, "cache")),
        (SinksWindowCache(2, 40, s), KeepAllReference(2, None)),  # the window never fills: keep-all
    ]


@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
def test_ring_caches_equal_the_reference_token_by_token(impl, device):
    model = tiny_gpt(impl=impl, device=device)
    idx = tokens((2, 39), device)
    with torch.no_grad():
        for cache, ref in ring_cases():
            got = run_chunks(model, idx, cache, [1] * 39)
            torch.testing.assert_close(got, run_chunks(model, idx, ref, [1] * 39), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("policy_mask", [True, False])
def test_ring_caches_equal_the_reference_in_chunks(policy_mask, device):
    # Mixed chunk sizes, some longer than the window: the ring is resized for the chunk and back.
    model = tiny_gpt(device=device)
    idx = tokens((1, 39), device)
    with torch.no_grad():
        for cache, ref in ring_cases(w=4, s=2):
            got = run_chunks(model, idx, cache, MIXED, policy_mask)
            want = run_chunks(model, idx, ref, MIXED, policy_mask)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            assert cache.pos.tolist() == [j for j in range(39) if j < cache.sinks or 39 - j < cache.window]


def test_ring_cache_in_chunks_with_policy_mask_equals_masked_forward(device):
    # An independent check of the chunked path: absolute positions + policy mask = one masked forward.
    model = tiny_gpt(device=device)
    idx = tokens((1, 39), device)
    with torch.no_grad():
        got = run_chunks(model, idx, SinksWindowCache(2, 4, 2, positions="absolute"), MIXED, policy_mask=True)
        want = model(idx, attn_mask=sinks_window_mask(39, 4, 2, device=device))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_sinks_cache_memory_is_constant(device):
    model = tiny_gpt(ctx=16, device=device)
    w, s = 8, 4
    cache = SinksWindowCache(2, w, s)
    idx = tokens((1, 5 * w), device)
    sizes, allocated = [], []
    with torch.no_grad():
        for t in range(idx.size(1)):
            model(idx[:, t : t + 1], cache=cache)
            if t == 0:
                buffers = [b.data_ptr() for b in cache.k + cache.v]
            sizes.append(cache.nbytes())
            allocated.append(cache.allocated_bytes())
    full = kv_cache_bytes(2, 16, s + w - 1)
    assert sizes == [kv_cache_bytes(2, 16, min(t + 1, s + w - 1)) for t in range(5 * w)]
    assert sizes[s + w - 2 :] == [full] * (5 * w - (s + w - 2))  # flat once the window is full
    assert allocated == [kv_cache_bytes(2, 16, s + w)] * (5 * w)  # sinks + ring, allocated once
    assert [b.data_ptr() for b in cache.k + cache.v] == buffers  # written in place, never reallocated


# ------------------------------------------------------------------------------------- errors
def test_cache_errors_and_exports():
    import minilm.models

    assert minilm.models.KVCache is KVCache
    with pytest.raises(ValueError, match="max_length"):
        KVCache(2, max_length=0)
    cache = KVCache(1)
    with pytest.raises(ValueError, match="begin"):
        cache.update(0, torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4), lambda x: x)
    cache.begin(1)
    cache.update(0, torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4), lambda x: x)
    cache.commit()
    cache.begin(1)
    with pytest.raises(ValueError, match="one cache per batch"):
        cache.update(0, torch.randn(3, 2, 1, 4), torch.randn(3, 2, 1, 4), lambda x: x)
    with pytest.raises(ValueError, match="sinks"):
        SinksWindowCache(2, 8, sinks=-1)


def test_measure_streaming_reports_memory_per_block(device):
    from minilm.attention import kv_cache_bytes, measure_streaming
    from minilm.models import build_model

    torch.manual_seed(0)
    model = build_model("gpt", 32, size="tiny", context_length=16).to(device)
    tokens = torch.randint(0, 32, (200,))
    full = measure_streaming(model, tokens, "full", block=50, progress=False)
    sinks = measure_streaming(model, tokens, "sinks", window=8, sinks=2, block=50, progress=False)
    assert full.tokens == sinks.tokens == [50, 100, 150, 200]
    L, d = model.config.n_layers, model.config.d_model
    assert full.cache_bytes == [kv_cache_bytes(L, d, n) for n in full.tokens]  # keeps every token
    assert sinks.cache_bytes == [kv_cache_bytes(L, d, 2 + 8 - 1)] * 4  # sinks + window - 1, constant
    assert len(set(sinks.allocated_bytes)) == 1  # a ring buffer: allocated once
    assert all(ms > 0 for ms in full.ms_per_token + sinks.ms_per_token)
    with pytest.raises(ValueError, match="at least one block"):
        measure_streaming(model, tokens[:10], "full", block=50, progress=False)
