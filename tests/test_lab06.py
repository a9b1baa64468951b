"""Lab 06 (FP8) beyond tests/test_labs.py: its references against hand-computed values and the library.

- the probed references (E4M3 decoding, E5M2 rounding, tile scales, delayed scales, training
  memory) against values worked out by hand from the definitions;
- the hidden inputs reach what they are meant to probe (no NaN codes, subnormal codes, amax
  streams longer than the history with a jump);
- the measured reference (q5) counts what the notebook counts, rejects bad parameters, and the
  notebook trains with the settings the grader recomputes with;
- the release gates at two grading seeds (tests/test_labs.py runs one).
"""

from __future__ import annotations

import numpy as np
import pytest
from _notebook_settings import notebook_settings

from minilm.grading import grade_objects, reference_namespace
from minilm.labs import lab06


def test_references_by_hand():
    assert lab06.e4m3_decode_ref(0x38) == 1.0
    assert lab06.e4m3_decode_ref(0x7E) == 448.0
    assert lab06.e4m3_decode_ref(0x01) == 2.0**-9
    assert lab06.e4m3_decode_ref(0xC4) == -2.0 * 1.5
    # E5M2 near 1 has spacing 0.25: 1.125 is a tie -> even (1.0); 1.375 a tie -> 1.5; 60000 saturates
    assert lab06.round_to_e5m2_ref([1.1, 1.125, 1.375, 60000.0, 2.0**-17]) == [1.0, 1.0, 1.5, 57344.0, 0.0]
    assert lab06.tile_scales_ref([[1.0, -2.0, 0.5, 4.0], [0.0, 0.0, 8.0, 1.0]], [1, 2]) == [
        [224.0, 112.0], [1.0, 56.0]]


def test_delayed_scales_by_hand():
    # history 2, "max": step 0 has no history (1); then 448 / max of the last two amaxes.
    assert lab06.delayed_scales_ref([1.0, 2.0, 2.0, 8.0, 1.0, 1.0, 1.0], 2, "max") == [
        1.0, 448.0, 224.0, 224.0, 56.0, 56.0, 448.0]
    # "most_recent" follows the last amax; a 0 leaves the scale as it was.
    assert lab06.delayed_scales_ref([4.0, 4.0, 0.5, 0.0, 0.5], 3, "most_recent") == [1.0, 112.0, 112.0, 896.0, 896.0]


def test_training_memory_by_hand():
    # Per parameter: FP32 0 + 4 + 4 + 8 = 16; BF16 2 + 2 + 4 + 8 = 16; FP8 1 + 2 + 4 + 8 + 4/128.
    assert lab06.training_gb_ref(1e9, 0.0, "fp32") == 16.0
    assert lab06.training_gb_ref(1e9, 0.0, "bf16") == 16.0
    assert lab06.training_gb_ref(7e9, 2e10, "fp8") == pytest.approx(7 * (15 + 1 / 32) + 20 * (1 + 1 / 32), rel=1e-12)
    assert lab06.training_gb_ref(0.5e9, 1e9, "bf16") == pytest.approx(8.0 + 2.0, rel=1e-12)


def test_hidden_cases_reach_what_they_probe():
    rng = np.random.default_rng(0)
    assert all(lab06._code_case(rng)[0] & 0x7F != 0x7F for _ in range(500))
    assert all(1 <= lab06._subnormal_code_case(rng)[0] & 0x7F <= 7 for _ in range(50))
    for _ in range(200):
        amaxes, history_len, algo = lab06._amax_case(rng)
        assert len(amaxes) >= history_len + 3 and algo in ("max", "most_recent")
        assert max(amaxes) > 10 * float(np.median(amaxes))  # the jump is there
    sizes = [lab06._size_case(rng) for _ in range(100)]
    assert {s[2] for s in sizes} == {"fp32", "bf16", "fp8"} and all(s[0] > 0 and s[1] > 0 for s in sizes)


def test_measured_reference_rejects_bad_parameters():
    for bad in ({"SEED": -1}, {"SEED": 1.5}, {"STEPS": 10}, {"STEPS": True}):
        with pytest.raises(ValueError, match="SEED|STEPS"):
            lab06.fp8_run("none", **bad)


def test_fp8_run_counts_the_unscaled_gradients():
    # A short run: the unscaled recipe flushes a large share of dy to zero, per-tensor scaling almost none,
    # FP32 has no FP8 layer to count; the loss went down in all three.
    runs = {r: lab06.fp8_run(r, SEED=1, STEPS=50) for r in ("fp32", "none", "current")}
    assert runs["fp32"][1] == {}
    none, current = runs["none"][1]["dy"], runs["current"][1]["dy"]
    assert none["values"] == current["values"] > 0
    assert none["underflow_fraction"] > 0.2 and current["underflow_fraction"] < 0.01
    assert all(run.loss < np.log(128) for run, _ in runs.values())




def test_notebook_uses_the_settings_the_references_recompute_with():
    s, _ = notebook_settings("06")
    assert s["MODEL"] == lab06.MODEL
    assert (s["LR"], s["BATCH"], s["CONTEXT"]) == (lab06.LR, lab06.BATCH, lab06.CONTEXT)
    q5 = next(q for q in lab06.LAB.questions if q.name == "q5")
    assert s["STEPS"] == lab06.FAST_STEPS == q5.params["STEPS"]


@pytest.mark.parametrize("seed", [0, 11])
def test_release_gates(seed):
    spec = lab06.LAB
    refs = reference_namespace(spec)
    full = grade_objects(spec, refs, seed=seed)
    assert full.score == full.max_score, [(q.name, q.score, q.max_score) for q in full.questions]
    zero = grade_objects(spec, {q.target: (lambda *a, **k: None) for q in spec.questions}, seed=seed)
    assert zero.score == 0
    for q in spec.questions:
        for wrong in q.wrong:
            got = grade_objects(spec, {**refs, q.target: wrong}, seed=seed, questions=[q.name])
            assert got.score < got.max_score, (q.name, wrong)
