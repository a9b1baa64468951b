"""Tests of the KV caches (minilm.models.kv_cache, minilm.attention.cache): preallocated and ring
buffers against a plain reference that keeps everything, and their memory."""

from __future__ import annotations

import pytest
import torch

from minilm.attention import SinksWindowCache, WindowCache, kv_cache_bytes, sinks_window_mask
from minilm.models.gpt import GPT, GPTConfig, KVCache


def tiny_gpt(n_layers=2, ctx=48, vocab=23, seed=0, impl="sdpa"):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, context_length=ctx, n_layers=n_layers, n_heads=2, d_model=16,
                          attn_impl=impl, init_std=0.3))  # large init: attention far from uniform
    return model.eval()


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

    def __len__(self):
        return self.seen

    def begin(self, T, device=None):
        self.q_pos = torch.arange(self.seen, self.seen + T)
        self.k_pos = torch.arange(self.seen + T)
        j = torch.arange(self.seen)
        kept = (j < self.sinks) | (self.seen - j < self.window)  # what the next query may see
        self.visible = torch.cat([kept, torch.ones(T, dtype=torch.bool)])  # kept before the step, or new

    def attn_mask(self, T):
        q, k = torch.arange(self.seen, self.seen + T)[:, None], torch.arange(self.seen + T)[None, :]
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
def test_full_cache_equals_full_forward_token_by_token_and_in_chunks(impl):
    model = tiny_gpt(impl=impl)
    idx = torch.randint(0, 23, (2, 39))
    with torch.no_grad():
        full = model(idx)
        for sizes in ([1] * 39, MIXED, [39]):
            cache = KVCache(2)
            torch.testing.assert_close(run_chunks(model, idx, cache, sizes), full, atol=1e-5, rtol=1e-5)
            assert len(cache) == 39 and cache.pos.tolist() == list(range(39))
            assert cache.nbytes() == kv_cache_bytes(2, 16, 39, batch=2)


def test_full_cache_doubles_its_buffers():
    model = tiny_gpt()
    idx = torch.randint(0, 23, (1, 39))
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


def test_full_cache_with_max_length_allocates_once():
    model = tiny_gpt()
    idx = torch.randint(0, 23, (1, 30))
    cache = KVCache(2, max_length=30)
    with torch.no_grad():
        model(idx[:, :4], cache=cache)
        buffer = cache.k[1].data_ptr()
        ref = run_chunks(model, idx[:, 4:], cache, [1] * 26)
    assert cache.k[1].data_ptr() == buffer and cache.allocated_bytes() == kv_cache_bytes(2, 16, 30)
    torch.testing.assert_close(ref, model(idx)[:, 4:], atol=1e-5, rtol=1e-5)


def test_full_cache_rotates_only_the_new_keys():
    # RoPE of a key depends on its own position only: each step rotates T keys, not the whole cache.
    cache, rotated = KVCache(1), []

    def rotate(x):
        rotated.append(x.size(2))
        return x

    for T in (5, 1, 1, 3):
        cache.begin(T)
        k, _ = cache.update(0, torch.randn(1, 2, T, 4), torch.randn(1, 2, T, 4), rotate)
        cache.commit()
        assert k.size(2) == len(cache)
    assert rotated == [5, 1, 1, 3]


def test_generate_preallocates_to_the_context_length():
    model = tiny_gpt(ctx=16)
    idx = torch.randint(0, 23, (1, 5))
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
def test_ring_caches_equal_the_reference_token_by_token(impl):
    model = tiny_gpt(impl=impl)
    idx = torch.randint(0, 23, (2, 39))
    with torch.no_grad():
        for cache, ref in ring_cases():
            got = run_chunks(model, idx, cache, [1] * 39)
            torch.testing.assert_close(got, run_chunks(model, idx, ref, [1] * 39), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("policy_mask", [True, False])
def test_ring_caches_equal_the_reference_in_chunks(policy_mask):
    # Mixed chunk sizes, some longer than the window: the ring is resized for the chunk and back.
    model = tiny_gpt()
    idx = torch.randint(0, 23, (1, 39))
    with torch.no_grad():
        for cache, ref in ring_cases(w=4, s=2):
            got = run_chunks(model, idx, cache, MIXED, policy_mask)
            want = run_chunks(model, idx, ref, MIXED, policy_mask)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            assert cache.pos.tolist() == [j for j in range(39) if j < cache.sinks or 39 - j < cache.window]


def test_ring_cache_in_chunks_with_policy_mask_equals_masked_forward():
    # An independent check of the chunked path: absolute positions + policy mask = one masked forward.
    model = tiny_gpt()
    idx = torch.randint(0, 23, (1, 39))
    with torch.no_grad():
        got = run_chunks(model, idx, SinksWindowCache(2, 4, 2, positions="absolute"), MIXED, policy_mask=True)
        torch.testing.assert_close(got, model(idx, attn_mask=sinks_window_mask(39, 4, 2)), atol=1e-5, rtol=1e-5)


def test_sinks_cache_memory_is_constant():
    model = tiny_gpt(ctx=16)
    w, s = 8, 4
    cache = SinksWindowCache(2, w, s)
    idx = torch.randint(0, 23, (1, 5 * w))
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
