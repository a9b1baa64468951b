"""Lab 09 (build it yourself) beyond tests/test_labs.py: its graded references against second forms.

- attention: PyTorch's fused kernel (the reference) against minilm's explicit attention;
- the block: minilm's Block (the reference) against the GPT model it sits in and a written-out form;
- the training step: the reference loop against ``minilm.train`` on the same batches;
- BPE: the library's heap-based trainer (the reference) against a plain recount-everything loop;
- the hidden inputs exercise what the known-wrong answers get wrong; the notebook trains with the
  settings q5's reference recomputes with.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _notebook_settings import notebook_settings

from minilm.grading.questions import Case
from minilm.labs import lab09
from minilm.models.gpt import GPT, GPTConfig, causal_mask, explicit_attention
from minilm.train import default_optimizer, train


def _case(c) -> Case:
    return c if isinstance(c, Case) else Case(args=c)


# ----------------------------------------------------------------------------- q1 attention
@pytest.mark.parametrize("masked", [False, True])
def test_attention_reference_is_minilms_explicit_attention(masked):
    rng = np.random.default_rng(0)
    for _ in range(10):
        case = lab09._qkv_case(rng, masked=masked)
        q, k, v = case.args[:3]
        allowed = case.args[3] if masked else causal_mask(q.size(-2))
        expected, _ = explicit_attention(q, k, v, allowed)
        torch.testing.assert_close(lab09.attention_ref(*case.args), expected, rtol=1e-5, atol=1e-6)


def test_hidden_masks_are_not_all_causal_and_never_leave_a_row_empty():
    rng = np.random.default_rng(1)
    masks = [lab09._qkv_case(rng, masked=True).args[3] for _ in range(30)]
    assert all(bool(m.any(dim=-1).all()) for m in masks)
    assert any(bool(m.triu(1).any()) for m in masks)                 # some see the future: not hard-coded causal
    assert any(not torch.equal(m, causal_mask(m.size(0))) and not m.triu(1).any() for m in masks)  # windows


# ----------------------------------------------------------------------------- q2 the block
def test_block_reference_is_the_block_inside_a_gpt():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, context_length=9, n_layers=1, n_heads=2, d_model=8, d_ff=12,
                          kernels="fast"))
    block = model.blocks[0]
    weights = {"attn_norm": block.attn_norm.weight, "wqkv": block.attn.wqkv.weight, "wo": block.attn.wo.weight,
               "ffn_norm": block.ffn_norm.weight, "w1": block.ffn.w1.weight, "w3": block.ffn.w3.weight,
               "w2": block.ffn.w2.weight}
    weights = {k: w.detach() + 0.3 * torch.randn_like(w) for k, w in weights.items()}  # not the init's symmetry
    with torch.no_grad():
        for name, w in weights.items():
            dict(block.named_parameters())[{"attn_norm": "attn_norm.weight", "wqkv": "attn.wqkv.weight",
                                            "wo": "attn.wo.weight", "ffn_norm": "ffn_norm.weight",
                                            "w1": "ffn.w1.weight", "w3": "ffn.w3.weight",
                                            "w2": "ffn.w2.weight"}[name]].copy_(w)
        idx = torch.randint(0, 11, (3, 9))
        x = model.tok_emb(idx)
        expected = model.head(model.norm(lab09.gpt_block_ref(x, weights, 2)))
        torch.testing.assert_close(model(idx), expected, rtol=1e-5, atol=1e-5)


def test_block_reference_matches_the_written_out_block():
    rng = np.random.default_rng(2)
    for _ in range(10):
        x, weights, n_heads = lab09._block_case(rng).args
        torch.testing.assert_close(lab09._block(x, weights, n_heads), lab09.gpt_block_ref(x, weights, n_heads),
                                   rtol=1e-4, atol=1e-5)


def test_each_block_mistake_is_visible_on_the_hidden_blocks():
    rng = np.random.default_rng(3)
    cases = [lab09._block_case(rng).args for _ in range(8)]
    q = lab09.LAB.question("q2")
    for wrong in q.wrong:
        worst = max(float((wrong(*a) - lab09.gpt_block_ref(*a)).abs().max()) for a in cases)
        assert worst > 1e-2, wrong.__name__


# ----------------------------------------------------------------------------- q3 the training step
class _Batches:
    """A ``train`` batch source that hands out given batches in order."""

    def __init__(self, xs, ys, max_token):
        self.xs, self.ys, self.max_token, self.i = xs, ys, max_token, 0

    def sample_batch(self, batch_size, context_length, rng):
        x, y = self.xs[self.i], self.ys[self.i]
        self.i += 1
        return x, y


def test_the_training_step_reference_is_minilm_train():
    rng = np.random.default_rng(4)
    for _ in range(3):
        config, seed, xs, ys, lr, max_norm = lab09._steps_case(rng).args
        ref = lab09.run_steps_ref(config, seed, xs, ys, lr, max_norm)
        model = lab09._tiny_gpt(config, seed, xs.shape[-1])
        history = train(model, _Batches(xs, ys, config["vocab_size"] - 1), steps=len(xs), batch_size=xs.shape[1],
                        context_length=xs.shape[-1], lr=lr, grad_clip=max_norm, device="cpu", progress=False,
                        autocast=False)
        torch.testing.assert_close(torch.tensor(history["train_loss"]), ref["losses"], rtol=1e-6, atol=1e-6)
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        torch.testing.assert_close(weights, ref["weights"], rtol=1e-4, atol=2e-6)


def test_hidden_thresholds_clip_and_fused_adamw_agrees():
    """Clipping is active on the hidden cases, and the notebook's fused AdamW (default_optimizer) is
    within the question's tolerance of the reference's per-tensor AdamW."""
    rng = np.random.default_rng(5)
    q = lab09.LAB.question("q3")
    for _ in range(4):
        config, seed, xs, ys, lr, max_norm = args = lab09._steps_case(rng).args
        model = lab09._tiny_gpt(config, seed, xs.shape[-1])
        logits = model(xs[0])
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), ys[0].reshape(-1)).backward()
        assert torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf) > 2 * max_norm
        model = lab09._tiny_gpt(config, seed, xs.shape[-1])
        opt = default_optimizer(model, lr)
        losses = [lab09._step_ref(model, opt, x, y, max_norm) for x, y in zip(xs, ys)]
        ref = lab09.run_steps_ref(*args)
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        torch.testing.assert_close(weights, ref["weights"], rtol=q.rtol, atol=q.atol)
        torch.testing.assert_close(torch.tensor(losses), ref["losses"], rtol=q.rtol, atol=q.atol)


# ----------------------------------------------------------------------------- q4 BPE
def test_bpe_reference_is_the_plain_loop():
    rng = np.random.default_rng(6)
    for _ in range(15):
        text, n = lab09._bpe_text(rng).args
        plain = lab09._bpe_loop(text, n, pick=lab09._pick_lexicographic, merge=lab09._merge_left)
        assert lab09.bpe_merges_ref(text, n) == plain


def test_bpe_reference_by_hand():
    # "aaaa aaa aa a": pre-tokens "aaaa", " aaa", " aa", " a". (a, a) occurs 3 + 2 + 1 = 6 times and
    # is merged first (id 256), left to right: "aaaa" -> [aa, aa], " aaa" -> [" ", aa, a],
    # " aa" -> [" ", aa]. Then (" ", aa) occurs twice, every other pair once.
    assert lab09.bpe_merges_ref("aaaa aaa aa a", 2) == [(97, 97), (32, 256)]
    assert lab09._merge_left([1, 1, 1], (1, 1), 9) == [9, 1]
    assert lab09._merge_right([1, 1, 1], (1, 1), 9) == [1, 9]
    assert lab09._merge_overlapping([1, 1, 1], (1, 1), 9) == [9, 9]
    assert lab09.bpe_merges_ref("ab", 5) == [(97, 98)]                  # stops when no pair is left


def test_bpe_hidden_texts_hold_ties_the_wrong_rules_break_differently():
    rng = np.random.default_rng(7)
    differ = {w.__name__: 0 for w in lab09.LAB.question("q4").wrong}
    for _ in range(10):
        text, n = lab09._bpe_text(rng).args
        for w in lab09.LAB.question("q4").wrong:
            differ[w.__name__] += w(text, n) != lab09.bpe_merges_ref(text, n)
    assert all(count >= 5 for count in differ.values()), differ


# ----------------------------------------------------------------------------- q5 and the notebook
def test_final_loss_reference_validates_its_parameters():
    with pytest.raises(ValueError, match="SEED"):
        lab09.library_final_loss_ref(-1, 300)
    with pytest.raises(ValueError, match="STEPS"):
        lab09.library_final_loss_ref(0, 10)


def test_notebook_uses_the_settings_the_references_recompute_with():
    s, _ = notebook_settings("09")
    assert s["MODEL"] == lab09.MODEL
    assert (s["LR"], s["BATCH"], s["CONTEXT"], s["GRAD_CLIP"]) == (lab09.LR, lab09.BATCH, lab09.CONTEXT,
                                                                    lab09.GRAD_CLIP)
    assert s["STEPS"] == lab09.LAB.question("q5").params["STEPS"]
