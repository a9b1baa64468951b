"""Every lab under labs/: the definition of done that can be checked automatically.

Cheap checks (every run): the student notebook is fresh and stripped; the release gates pass --
the reference answers earn full marks, the released stubs earn zero, every known-wrong answer
earns less than full, and a submission with one wrong answer earns partial marks; the course
chapter exists; the notebook writes its record (minilm.records) and the lab has a committed
reference record in course/records/. Expensive check (one execution per lab): the solution
notebook, executed headless in fast mode as `minilm lab run` does, earns full marks in self-study
mode (the grader's own checks, hidden inputs included) and writes a valid record with the same
figures as the reference record, into a temporary results folder (never into the checkout).
"""

from __future__ import annotations

import functools
import json
import re
import time
import warnings
from pathlib import Path

import pytest

from minilm.grading import grade_objects, is_stale, reference_namespace
from minilm.grading.notebook import read_notebook
from minilm.grading.release import check_release
from minilm.labs import available_labs, get_lab
from minilm.labs.runner import NotebookStalled, execute_notebook, graded_summary, list_labs, score_line
from minilm.records import read_record

LABS = [lab for lab in list_labs() if lab.solution.is_file()]
IDS = [f"{lab.lab_id}_{lab.topic}" for lab in LABS]
REFERENCE_RECORDS = Path(__file__).resolve().parents[1] / "course" / "records"
# Per cell: the longest fast-mode cell (lab 08's grid) takes about 2 minutes on a busy 2-core machine.
CELL_TIMEOUT_S = 600


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


def test_release_gates_pass_and_reference_full_stub_zero_wrong_partial(lab):
    # One test, not two: under pytest-xdist two would run in either worker, and lab 08's references train
    # its grid (about 2 minutes) once per process.
    spec = get_lab(lab.lab_id)
    report = check_release(spec, read_notebook(lab.solution), read_notebook(lab.student))
    assert report.ok, report.problems

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


def test_notebook_records_what_it_measured(lab):
    """The solution and the student notebook open a compute ledger and write the lab's record in a
    cell that is not an exercise (the student notebook runs it unchanged)."""
    for path in (lab.solution, lab.student):
        code = [c.source for c in read_notebook(path).cells if c.cell_type == "code"]
        assert any("spent = ComputeLedger()" in src for src in code), f"{path}: open the ledger in the setup cell"
        record = [src for src in code if "write_record(" in src]
        assert len(record) == 1, f"{path}: one Record cell calls minilm.records.write_record"
        assert "compute=spent" in record[0] and "print(spent.summary())" in record[0]
        assert "SOLUTION" not in record[0] and "NotImplementedError" not in record[0], "the Record cell is no exercise"


def test_lab_has_a_committed_reference_record(lab):
    path = REFERENCE_RECORDS / f"lab{lab.lab_id}.json"
    assert path.is_file(), (f"no reference record for lab {lab.lab_id}: run "
                            f"MINILM_RESULTS_DIR=course/records minilm lab run {lab.lab_id}")
    record = read_record(path)
    assert record.lab == lab.lab_id and record.provenance["mode"] == "fast"
    assert record.compute is not None, "the record was written without compute=spent"


@pytest.mark.slow
def test_solution_notebook_executes_in_fast_mode_earns_full_marks_and_writes_its_record(lab, tmp_path):
    results = tmp_path / "results"
    t0 = time.perf_counter()
    # As `minilm lab run` executes it (self-study mode: check_all() runs every check, hidden ones too),
    # in a scratch folder, with the record sent to a temporary results folder.
    run = functools.partial(execute_notebook, lab.solution, progress=False, cwd=tmp_path, timeout=CELL_TIMEOUT_S,
                            env={"MINILM_MODE": "self", "MINILM_RESULTS_DIR": str(results)})
    try:
        nb = run()
    except NotebookStalled as stall:  # the client lost a reply (not the lab's doing): once more, said aloud
        warnings.warn(f"lab {lab.lab_id}: {stall}; executed again", stacklevel=1)
        nb = run()
    seconds = time.perf_counter() - t0
    line = score_line(graded_summary(nb))
    print(f"lab {lab.lab_id}: executed and self-checked in {seconds:.0f} s, {line}")
    m = re.fullmatch(r"score: ([-+0-9.e]+)/([0-9.e+]+) points", line)
    assert m and float(m[1]) == float(m[2]) > 0, graded_summary(nb)[-3000:]

    record = read_record(results / f"lab{lab.lab_id}.json")
    assert record.lab == lab.lab_id and record.provenance["mode"] == "fast"
    assert record.compute is not None and record.compute["wall_time_s"] > 0
    reference = REFERENCE_RECORDS / f"lab{lab.lab_id}.json"
    if reference.is_file():  # test_lab_has_a_committed_reference_record fails when it is missing
        assert sorted(record.figures) == sorted(read_record(reference).figures), \
            "the notebook records other figures than course/records/: rewrite the reference record"
