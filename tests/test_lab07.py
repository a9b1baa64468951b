"""Lab 07 beyond tests/test_labs.py: its experiment recipe and its graded references.

- the recipe: seeded (the grader's retraining equals the notebook's), the oracle's next-token guess
  against a brute-force argmax of the language's own log-probabilities, the calibration set apart
  from the held-out tokens;
- the references: BI of one layer against minilm.redundancy on a real model's hidden states,
  the removal order against a brute-force sort, the ticket economics against a simulation with real
  IMP masks, the hidden probes against the slips they target;
- the optional real-checkpoint cell on a tiny random Llama saved with transformers;
- the notebook uses the settings the references recompute with.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _notebook_settings import notebook_settings

from minilm.labs import lab07
from minilm.labs.runner import find_lab
from minilm.models.gpt import GPT, GPTConfig
from minilm.redundancy import block_influence, hidden_states, magnitude_mask, prunable_layers, prune_step


# ----------------------------------------------------------------------------- the recipe
def test_oracle_predictions_are_the_argmax_of_the_true_probabilities():
    lang = lab07.language()
    tokens = lang.sample(4 * 16 + 1, seed=3)
    guess = lab07.oracle_predictions(lang, tokens)
    base = lang.vocab_size_base
    for i in range(1, len(tokens)):
        first = i % 16 == 0                      # a topic marker comes next: candidates are the markers
        candidates = range(base, lang.vocab_size) if first else range(base)
        doc = tokens[i - i % 16: i + 1].copy()
        logp = []
        for v in candidates:                     # log P(token i = v | its document so far), by the language itself
            doc[-1] = v
            logp.append(lang.log_prob(doc)[-1])
        assert guess[i - 1] == list(candidates)[int(np.argmax(logp))], i


def test_lab_data_is_seeded_and_its_calibration_is_not_the_held_out_text():
    a, b = lab07.lab_data(0), lab07.lab_data(0)
    assert a is b                                 # cached: one draw per seed
    assert a.calibration.shape == (lab07.CALIBRATION_WINDOWS, lab07.CONTEXT)
    val_windows = {tuple(a.val[i: i + lab07.CONTEXT]) for i in range(0, len(a.val) - lab07.CONTEXT, 16)}
    assert not any(tuple(w.tolist()) in val_windows for w in a.calibration)
    assert 0.2 < a.oracle_accuracy < 0.6 and 1.7 < a.entropy_rate < 2.0
    with pytest.raises(ValueError, match="SEED"):
        lab07.lab_data(-1)


def test_train_lab_model_is_seeded_and_keeps_snapshots():
    data = lab07.lab_data(0)
    m1, hist, snaps = lab07.train_lab_model("gpt", data, 0, 50, snapshot_every=25)
    m2, _, _ = lab07.train_lab_model("gpt", data, 0, 50)
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))   # the grader's run = yours
    assert sorted(snaps) == [0, 25, 50] and len(hist["train_loss"]) == 50
    assert all(torch.equal(snaps[50][k], v) for k, v in m1.state_dict().items())
    assert not torch.equal(snaps[0]["blocks.0.attn.wqkv.weight"], snaps[50]["blocks.0.attn.wqkv.weight"])
    with pytest.raises(ValueError, match="kind"):
        lab07.make_model("lstm", 10)
    with pytest.raises(ValueError, match="steps"):
        lab07.train_lab_model("gpt", data, 0, 10)


def test_bi_loss_increase_reference_validates_its_parameters():
    with pytest.raises(ValueError, match="SEED"):
        lab07.bi_loss_increase_ref(SEED=1.5)
    with pytest.raises(ValueError, match="GPT_STEPS"):
        lab07.bi_loss_increase_ref(SEED=0, GPT_STEPS=10)


# ----------------------------------------------------------------------------- the references
def test_block_influence_reference_matches_the_library_on_real_hidden_states():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, context_length=12, n_layers=3, n_heads=2, d_model=16)).eval()
    idx = torch.randint(0, 20, (4, 12), generator=torch.Generator().manual_seed(1))
    h = [x.numpy() for x in hidden_states(model, idx)]
    ours = [lab07.block_influence_ref(h[i], h[i + 1]) for i in range(3)]
    np.testing.assert_allclose(ours, block_influence(model, idx), atol=1e-6)
    x = np.random.default_rng(0).normal(size=(2, 3, 5))
    assert lab07.block_influence_ref(x, 7 * x) == pytest.approx(0.0, abs=1e-12)   # scaling does not turn
    assert lab07.block_influence_ref(x, -x) == pytest.approx(2.0)


def test_bi_probes_separate_the_slips():
    rng = np.random.default_rng(0)
    for _ in range(20):
        args = lab07._hidden_pair(rng)
        ref = lab07.block_influence_ref(*args)
        for wrong in (lab07._bi_without_one_minus, lab07._bi_global_cosine, lab07._bi_relative_change):
            assert not np.isclose(wrong(*args), ref, rtol=1e-4, atol=1e-5), wrong.__name__


def test_layers_to_remove_reference_against_a_sort():
    rng = np.random.default_rng(1)
    for _ in range(30):
        bi, k = lab07._bi_values(rng)
        by_hand = sorted(sorted(range(len(bi)), key=lambda i: bi[i])[:k])
        assert lab07.layers_to_remove_ref(bi, k) == by_hand
        assert lab07._remove_one_too_many(bi, k) != by_hand


def test_magnitude_mask_probes_catch_truncation():
    rng = np.random.default_rng(2)
    for _ in range(30):
        w, s = lab07._weights(rng)
        ref = lab07.magnitude_mask_ref(w, s)
        assert int((~ref).sum()) == round(s * w.numel()) != int(s * w.numel())
        assert not torch.equal(lab07._mask_truncates(w, s), ref)
        assert not torch.equal(lab07._mask_by_value(w, s), ref)


def test_ticket_economics_against_real_imp_masks():
    """The closed form against IMP itself: masks pruned round by round, their kept weights counted."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, context_length=8, n_layers=2, n_heads=4, d_model=64)).eval()
    layers = prunable_layers(model)
    n_pruned = sum(m.weight.numel() for m in layers.values())
    f = 6 * n_pruned / model.flops_per_token()
    masks = {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in layers.items()}
    costs = []
    for _ in range(6):                            # the cost of training with each round's mask, in dense runs
        kept = sum(int(m.sum()) for m in masks.values()) / n_pruned
        costs.append((1 - f) + f * kept)
        masks = {n: prune_step(layers[n].weight, masks[n], 0.2) for n in masks}
    search, saving, break_even = lab07.ticket_economics_ref(5, 0.2, f)
    assert search == pytest.approx(sum(costs[:5]), rel=1e-3)   # rounds 0-4 train before the ticket exists
    assert saving == pytest.approx(1 - costs[5], rel=1e-3)
    assert break_even == pytest.approx(search / saving)
    assert lab07.ticket_economics_ref(1, 0.5, 1.0) == (1.0, 0.5, 2.0)


def test_economics_probes_separate_the_slips():
    rng = np.random.default_rng(3)
    for wrong in (lab07._economics_linear, lab07._economics_all_prunable, lab07._economics_counts_ticket):
        assert any(not np.allclose(wrong(*args), lab07.ticket_economics_ref(*args), rtol=1e-9)
                   for args in (lab07._economics(rng) for _ in range(5))), wrong.__name__


def test_magnitude_mask_reference_is_the_library_mask():
    w = torch.tensor([[0.5, -2.0], [0.1, -0.05]])
    assert lab07.magnitude_mask_ref(w, 0.5).tolist() == [[True, True], [False, False]]
    assert torch.equal(lab07.magnitude_mask_ref(w, 0.25), magnitude_mask(w, 0.25))


# ----------------------------------------------------------------------------- a real checkpoint
def test_checkpoint_block_influence_on_a_tiny_llama(tmp_path):
    hf = pytest.importorskip("transformers", reason="the tiny checkpoint is saved with transformers")
    tokenizers = pytest.importorskip("tokenizers")
    pytest.importorskip("safetensors")
    from minilm.models.llama_format import load_llama

    cfg = hf.LlamaConfig(vocab_size=30, hidden_size=32, intermediate_size=56, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    hf.LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    words = [f"w{i}" for i in range(29)]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}},
                                                           unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    ids = np.random.default_rng(0).integers(1, 30, size=4 * 16)
    text = " ".join(words[i - 1] for i in ids)
    bi, n_params, _ = lab07.checkpoint_block_influence(tmp_path, n_windows=4, window=16, text=text)
    model = load_llama(tmp_path)
    expected = block_influence(model, torch.as_tensor(ids).view(4, 16))
    np.testing.assert_allclose(bi, expected, atol=1e-6)
    assert len(bi) == 3 and n_params == model.num_params()
    with pytest.raises(ValueError, match="fewer than"):
        lab07.checkpoint_block_influence(tmp_path, n_windows=4, window=16, text="w1 w2")
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        lab07.checkpoint_block_influence(tmp_path / "absent")


# ----------------------------------------------------------------------------- the notebook


def test_notebook_uses_the_settings_the_references_recompute_with():
    s, source = notebook_settings("07", "GPT_STEPS = ")
    assert s["GPT_STEPS"] == lab07.FAST_GPT_STEPS == lab07.LAB.question("q4").params["GPT_STEPS"]
    assert s["KS"] == (1, 2, 3, 4) and (s["ROUNDS"], s["RATE"]) == (5, 0.2)
    # the notebook trains with the recipe the grader retrains with
    nb = json.loads(find_lab("07").solution.read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "data = lab_data(SEED)" in code and 'train_lab_model("gpt", data, SEED, GPT_STEPS, device' in code
