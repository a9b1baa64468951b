"""Lab 06 (FP8): the references against hand-computed values and the release gates on its questions.

The lab is not yet registered (its notebooks are to come), so tests/test_labs.py does not see it:
the gates it would run (reference full marks, stubs zero, every known-wrong answer partial) run here.
"""

from __future__ import annotations

import pytest

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


def test_hidden_cases_avoid_nan_codes_and_hit_ties():
    import numpy as np
    rng = np.random.default_rng(0)
    assert all(lab06._code_case(rng)[0] & 0x7F != 0x7F for _ in range(500))
    assert all(1 <= lab06._subnormal_code_case(rng)[0] & 0x7F <= 7 for _ in range(50))


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
