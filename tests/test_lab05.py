"""Lab 05 beyond tests/test_labs.py: the experiment code it runs and its graded references.

- ``train_mixture``: every domain scored, proportions realised, and (constant learning rate) the
  first S steps of a longer run are the run of S steps, which the notebook relies on;
- ``slm_data`` / ``train_selective``: labels, the kept count per batch, the baseline needs no reference;
- ``text_documents`` / ``split_documents``;
- the graded references against brute force and independent implementations, the hidden probes
  against the bugs they target, and the notebook uses the settings the references recompute with.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from _notebook_settings import notebook_settings

from minilm.filtering import KINDS, MinHasher, shingles, split_documents, text_documents
from minilm.labs import lab05
from minilm.mixing import markov_domains, mixing_law, simplex_grid, train_mixture
from minilm.selection import n_kept, slm_data, train_reference, train_selective

TINY = {"n_layers": 1, "d_model": 16, "n_heads": 2}
RUN = {"lr": 3e-3, "batch_size": 8, "context_length": 16, "seed": 3, "device": "cpu"}


# ----------------------------------------------------------------------------- mixtures
@pytest.fixture(scope="module")
def domains():
    return markov_domains(3, vocab_size=12, order=1, n_train=20_000, n_val=512, seed=2)


def test_train_mixture_scores_every_domain_and_realises_the_mixture(domains):
    run = train_mixture(TINY, domains, (0.5, 0.25, 0.25), vocab_size=12, steps=40, curve_every=10, **RUN)
    assert run.losses.shape == (3,) and np.isfinite(run.losses).all()
    assert run.curve_steps == [10, 20, 30, 40] and run.curve.shape == (4, 3)
    assert run.curve[-1].tolist() == run.losses.tolist()        # the last curve point is the final model
    # 8 rows per batch at (0.5, 0.25, 0.25) are exactly 4, 2, 2 rows: no rounding left over
    assert run.realised == {"A": 0.5, "B": 0.25, "C": 0.25}


def test_the_first_steps_of_a_longer_constant_lr_run_are_the_shorter_run(domains):
    short = train_mixture(TINY, domains, (0.2, 0.3, 0.5), vocab_size=12, steps=30, **RUN)
    long = train_mixture(TINY, domains, (0.2, 0.3, 0.5), vocab_size=12, steps=60, curve_every=15, **RUN)
    assert long.curve[long.curve_steps.index(30)].tolist() == short.losses.tolist()


def test_train_mixture_rejects_bad_proportions(domains):
    with pytest.raises(ValueError, match="sum to 1"):
        train_mixture(TINY, domains, (0.5, 0.5, 0.5), vocab_size=12, steps=1, **RUN)
    with pytest.raises(ValueError, match="3 domains"):
        train_mixture(TINY, domains, (0.5, 0.5), vocab_size=12, steps=1, **RUN)


# ----------------------------------------------------------------------------- selective language modelling
@pytest.fixture(scope="module")
def polluted():
    return slm_data(seed=4, vocab_size=12, n_train=20_000, n_reference=4_000, n_val=512)


def test_slm_data_labels_and_proportions(polluted):
    noisy, other = polluted.sources
    assert abs(noisy.labels.mean() - 0.3) < 0.02                       # noise_rate of the target's tokens
    assert set(np.unique(noisy.labels)) == {0, 1} and (other.labels == 2).all()
    assert polluted.proportions == (0.7, 0.3)
    clean = noisy.labels == 0                                           # the stream is the target's text, noised
    assert len(polluted.target.train) == 4_000 and len(noisy.train) == 20_000
    assert polluted.target.entropy_rate is not None and clean.mean() > 0.65
    with pytest.raises(ValueError, match="off_target"):
        slm_data(off_target=1.0)


def test_train_selective_keeps_round_ratio_of_every_batch(polluted):
    ref = train_reference(TINY, polluted, steps=5, **RUN)
    run = train_selective(TINY, polluted, ratio=0.3, reference=ref, steps=6, snapshot_steps=(0, 5), record_every=1,
                          **RUN)
    n = RUN["batch_size"] * RUN["context_length"]
    assert [s["step"] for s in run.record.snapshots] == [0, 5]
    for snap in run.record.snapshots:
        assert int(snap["mask"].sum()) == n_kept(n, 0.3) == round(0.3 * n)
        assert snap["labels"].shape == snap["mask"].shape
        # the kept tokens are those of largest excess loss
        assert snap["excess"][snap["mask"]].min() >= snap["excess"][~snap["mask"]].max()
    assert run.record.steps == list(range(6)) and set(run.record.kept_by_label) <= {0, 1, 2}
    assert math.isfinite(run.loss) and run.ratio == 0.3


def test_train_selective_baseline_and_bad_arguments(polluted):
    base = train_selective(TINY, polluted, steps=3, curve_every=3, **RUN)
    assert base.record is None and base.curve[0] == [3] and base.curve[1][0] == pytest.approx(base.loss)
    with pytest.raises(ValueError, match="reference="):
        train_selective(TINY, polluted, ratio=0.5, steps=1, **RUN)
    with pytest.raises(ValueError, match="ratio"):
        train_selective(TINY, polluted, ratio=0.0, steps=1, **RUN)


# ----------------------------------------------------------------------------- documents
def test_text_documents_and_split():
    text = "\n\n".join(f"paragraph {i} " + "x" * (i % 7) * 20 for i in range(200))
    docs = text_documents(text, min_chars=100, max_chars=150)
    assert docs and all(100 <= len(d) <= 150 for d in docs)
    a, b = split_documents(docs, (5, 7), seed=1)
    assert len(a) == 5 and len(b) == 7 and not set(a) & set(b)
    assert split_documents(docs, (5, 7), seed=1) == [a, b]
    with pytest.raises(ValueError, match="disjoint"):
        split_documents(docs, (len(docs), 1))
    with pytest.raises(ValueError, match="min_chars"):
        text_documents(text, min_chars=200, max_chars=100)


# ----------------------------------------------------------------------------- the graded references
def test_mixing_law_reference_is_the_formula():
    rng = np.random.default_rng(0)
    for _ in range(20):
        r, c, k, t = lab05._law_case(rng)
        got = lab05.mixing_law_ref(r, c, k, t)
        expected = [[c[i] + k[i] * math.exp(sum(t[i, j] * r[n, j] for j in range(r.shape[1])))
                     for i in range(len(c))] for n in range(len(r))]
        assert got.shape == (len(r), len(c)) and np.allclose(got, expected, rtol=1e-12)
        if t.shape[0] != t.shape[1]:   # the untransposed slip cannot even run
            with pytest.raises(ValueError):
                lab05._law_untransposed(r, c, k, t)


def test_best_mixture_reference_against_a_fine_grid():
    rng = np.random.default_rng(1)
    cases = [case.args for case in lab05.LAB.questions[1].public]
    cases += [lab05._curved_law(rng, K) for K in (2, 3, 3)]
    for c, k, t, w in cases:
        r = lab05.best_mixture_ref(c, k, t, w)
        grid = simplex_grid(len(r), 300 if len(r) == 3 else 3000)
        brute = grid[int(np.argmin(mixing_law(grid, c, k, t) @ w))]
        assert np.isclose(r.sum(), 1.0) and (r >= 0).all()
        assert np.abs(r - brute).max() < 0.01
        for wrong in (lab05._best_vertex, lab05._uniform_mixture, lab05._worst_mixture):
            assert np.abs(wrong(c, k, t, w) - r).max() > 0.02, wrong.__name__


def _brute_mask(model_loss, ref_loss, ratio):
    """Rank every token by (excess desc, position asc) with Python's sort: an independent top-k."""
    excess = (model_loss - ref_loss).reshape(-1).tolist()
    keep = min(len(excess), max(1, round(ratio * len(excess))))
    ranked = sorted(range(len(excess)), key=lambda i: (-excess[i], i))[:keep]
    mask = torch.zeros(len(excess), dtype=torch.bool)
    mask[ranked] = True
    return mask.view(model_loss.shape)


def test_topk_mask_reference_against_brute_force_and_probes_catch_the_slips():
    rng = np.random.default_rng(2)
    caught = {f.__name__: 0 for f in (lab05._mask_by_model_loss, lab05._mask_lowest_excess, lab05._mask_per_row,
                                      lab05._mask_later_tie_wins, lab05._mask_truncated_count)}
    for i in range(60):
        args = lab05._batch_case(rng, ties=i % 2 == 0)
        assert torch.equal(lab05.excess_topk_mask_ref(*args), _brute_mask(*args))
        for name in caught:
            caught[name] += not torch.equal(getattr(lab05, name)(*args), lab05.excess_topk_mask_ref(*args))
    assert all(n > 0 for n in caught.values()), caught
    for _ in range(20):   # the round-up probe always separates truncation from rounding
        args = lab05._round_up_case(rng)
        assert not torch.equal(lab05._mask_truncated_count(*args), lab05.excess_topk_mask_ref(*args))


def test_signature_reference_is_minilms_minhash():
    hasher = MinHasher(n_hashes=64, k=5, seed=3)
    import zlib

    for text in ("the quick brown fox jumps", "a", "lorem ipsum dolor sit amet " * 5):
        ids = np.array([zlib.crc32(s.encode()) for s in shingles(text, 5)], dtype=np.uint64)
        sig = lab05.minhash_signature_ref(ids, hasher.a, hasher.b)
        assert sig.dtype == np.uint64 and np.array_equal(sig, hasher.signature(text))
    # brute force on one small case: every hash function, every shingle
    ids, a, b = lab05._signature_case(np.random.default_rng(4))
    p = 2**31 - 1
    expected = [min((int(ai) * int(x) + int(bi)) % p for x in ids) for ai, bi in zip(a, b)]
    assert lab05.minhash_signature_ref(ids, a, b).tolist() == expected


def test_dedup_reference_keeps_one_document_per_duplicated_cluster():
    removed = lab05.dedup_removed_ref(0)
    train_docs, _, _, corpus = lab05.lab_corpus(0)
    assert len(corpus.texts) == len(train_docs) + sum(n * m for n, m in (
        (lab05.POLLUTION["n_duplicated"], lab05.POLLUTION["copies"]),
        (lab05.POLLUTION["n_near"], lab05.POLLUTION["near_copies"]))) + lab05.POLLUTION["n_junk"]
    injected = lab05.POLLUTION["n_duplicated"] * lab05.POLLUTION["copies"]
    assert injected <= removed < len(corpus.texts) - lab05.POLLUTION["n_junk"]
    assert removed not in lab05.LAB.questions[4].wrong
    assert set(np.unique(corpus.kind)) == set(range(len(KINDS)))




def test_notebook_uses_the_settings_the_references_recompute_with():
    s, _ = notebook_settings("05")
    assert s["MODEL"] == lab05.MODEL
    assert (s["LR"], s["BATCH"], s["CONTEXT"]) == (lab05.LR, lab05.BATCH, lab05.CONTEXT)
    assert s["DOC_SPLIT"] == lab05.DOC_SPLIT and s["POLLUTION"] == lab05.POLLUTION
    assert s["DEDUP_THRESHOLD"] == lab05.DEDUP_THRESHOLD
    assert (s["REF_STEPS"], s["SLM_STEPS"], s["RATIO"]) == (lab05.REF_STEPS, lab05.SLM_STEPS, lab05.RATIO)


def test_hidden_law_cases_are_well_posed():
    rng = np.random.default_rng(5)
    for r, c, k, t in itertools.islice((lab05._law_case(rng) for _ in range(30)), 30):
        assert np.allclose(r.sum(axis=1), 1.0) and t.shape == (len(c), r.shape[1]) and k.shape == c.shape
