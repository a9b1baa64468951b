"""Every lab under labs/: the definition of done that can be checked automatically.

Cheap checks (every run): the student notebook is fresh and stripped; the release gates pass --
the reference answers earn full marks, the released stubs earn zero, every known-wrong answer
earns less than full, and a submission with one wrong answer earns partial marks; the course
chapter exists. Expensive check (one execution per lab): the solution notebook, executed headless
in fast mode by the sandboxed grader, earns full marks.
"""

from __future__ import annotations

import json
import time

import pytest

from minilm.grading import grade_notebook, grade_objects, is_stale, reference_namespace
from minilm.grading.notebook import read_notebook
from minilm.grading.release import check_release
from minilm.labs import available_labs, get_lab
from minilm.labs.runner import list_labs

LABS = [lab for lab in list_labs() if lab.solution.is_file()]
IDS = [f"{lab.lab_id}_{lab.topic}" for lab in LABS]


@pytest.fixture(params=LABS, ids=IDS)
def lab(request):
    return request.param


def test_the_registry_lists_exactly_the_labs_that_exist():
    assert available_labs() == [lab.lab_id for lab in LABS]


def test_every_lab_has_its_graded_questions(lab):
    questions = get_lab(lab.lab_id).questions
    assert 4 <= len(questions) <= 8, "docs/grading.md: a lab declares 4 to 8 graded questions"


def test_student_notebook_is_fresh_and_has_no_outputs(lab):
    assert lab.student.is_file(), f"run `minilm release {lab.solution}`"
    assert not is_stale(lab.solution, lab.student), f"stale: run `minilm release {lab.solution}`"
    for path in (lab.student, lab.solution):
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and cell.get("execution_count") is None, path


def test_parameters_cell_sets_fast_mode(lab):
    nb = read_notebook(lab.solution)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "FAST = True" in params[0].source


def test_course_chapter_exists(lab):
    assert lab.chapter.is_file(), f"missing {lab.chapter}"
    assert len(lab.chapter.read_text()) > 2000


def test_release_gates_pass(lab):
    report = check_release(get_lab(lab.lab_id), read_notebook(lab.solution), read_notebook(lab.student))
    assert report.ok, report.problems


def test_reference_full_stub_zero_wrong_partial(lab):
    spec = get_lab(lab.lab_id)
    refs = reference_namespace(spec)
    full = grade_objects(spec, refs, seed=11)
    assert full.score == full.max_score > 0

    # The released student notebook, probed question by question: its stubs raise.
    from minilm.grading.release import _namespace_from

    stubs, _ = _namespace_from(read_notebook(lab.student))
    zero = grade_objects(spec, stubs, seed=11)
    assert zero.score == 0, [(q.name, q.score) for q in zero.questions]

    # A submission with every answer right but one known-wrong: partial marks.
    for q in spec.questions:
        wrong = grade_objects(spec, {**refs, q.target: q.wrong[0]}, seed=11)
        assert 0 < wrong.score < wrong.max_score, (q.name, wrong.score)


@pytest.mark.slow
def test_solution_notebook_executes_in_fast_mode_and_earns_full_marks(lab):
    t0 = time.perf_counter()
    result = grade_notebook(lab.solution, lab=get_lab(lab.lab_id), seed=2026)
    seconds = time.perf_counter() - t0
    print(f"lab {lab.lab_id}: executed and graded in {seconds:.0f} s, {result.score}/{result.max_score}")
    assert result.status == "ok", (result.message, result.cells)
    assert result.score == result.max_score, [(q.name, q.score, q.message) for q in result.questions]
