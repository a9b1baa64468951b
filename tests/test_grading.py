"""Unit tests of minilm.grading that need no kernel: encoding, comparison, declarations, scoring,
self-checks, release building and gates, reports, the CLI's argument handling, the sandbox; and
the lab registry of minilm.labs that the engine is handed labs from."""

from __future__ import annotations

import argparse
import ast
import copy
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from minilm import labs
from minilm.cli import main
from minilm.grading import (
    Case,
    Hidden,
    Lab,
    ReleaseError,
    cli,
    function_question,
    grade_notebook,
    grade_objects,
    is_stale,
    make_release,
    reference_namespace,
    release_lab,
    self_check,
    value_question,
)
from minilm.grading import notebook as nbtools
from minilm.grading.checker import (
    CheckResult,
    Malformed,
    QuestionResult,
    ReferenceCache,
    Tolerance,
    compare,
    plan_checks,
    validate,
)
from minilm.grading.grader import GradeResult
from minilm.grading.probe import EncodeError, decode, encode
from minilm.grading.release import check_release
from minilm.grading.report import class_csv, coarse_reason, duplicate_answers, gradescope_json, write_reports
from minilm.grading.sandbox import child_env
from minilm.labs import check, check_all, demo, get_lab

FIXTURES = Path(__file__).parent / "fixtures" / "demo_lab"
SOLUTION = FIXTURES / "solutions" / "99_demo.ipynb"
RELEASE = FIXTURES / "99_demo.ipynb"
LAB = get_lab("99")


# ---------------------------------------------------------------------------------------------
# Encoding: strict JSON, exact types
# ---------------------------------------------------------------------------------------------


def _same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


@pytest.mark.parametrize("value", [
    None, True, 3, -2**70, 1.5, float("nan"), float("-inf"), "text",
    [1, 2.0, ("a", None)], {"k": [1], 2: (3.0,)},
    np.arange(6, dtype=np.int32).reshape(2, 3), np.array([1.5, np.nan, -np.inf], dtype=np.float32),
    np.array([True, False]), np.zeros((0, 3)), np.float64(2.5), np.int64(7), np.array(4.0),
    torch.tensor([[1.0, 2.5]], dtype=torch.bfloat16), torch.arange(3), torch.tensor([1.0, float("nan")]),
])
def test_encoding_round_trips_through_strict_json(value):
    enc = encode(value)
    text = json.dumps(enc, allow_nan=False)  # strict JSON: no NaN tokens
    back = json.loads(text)
    validate(back)
    assert _same(decode(back), value)


class _Yes:
    def __eq__(self, other):
        return True


class _YesFloat(float):
    def __eq__(self, other):
        return True

    __hash__ = float.__hash__


class _YesArray(np.ndarray):
    def __eq__(self, other):
        return np.ones_like(self, dtype=bool)


@pytest.mark.parametrize("value", [
    _Yes(), _YesFloat(1.0), np.zeros(3).view(_YesArray), np.array([1 + 2j]), np.array(["a"], dtype=object),
    torch.nn.Parameter(torch.zeros(2)), 1 + 2j, {1, 2}, np.ma.masked_array([1.0]),
])
def test_encoding_refuses_objects_that_are_not_exactly_plain_data(value):
    with pytest.raises(EncodeError):
        encode(value)


def test_encoding_has_size_and_depth_limits():
    with pytest.raises(EncodeError, match="too large"):
        encode(np.zeros(100), max_elements=50)
    deep: list = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(EncodeError, match="deep"):
        encode(deep)


@pytest.mark.parametrize("bad", [
    {"$": "ndarray", "dtype": "float64", "shape": [2], "data": [1.0]},  # data does not match shape
    {"$": "ndarray", "dtype": "float64", "shape": [1], "data": ["1.0"]},  # a string number
    {"$": "ndarray", "dtype": "int64", "shape": [1], "data": [True]},  # a bool in an int array
    {"$": "ndarray", "dtype": "object", "shape": [1], "data": [1]},
    {"$": "ndarray", "dtype": "float64", "shape": [-1], "data": []},
    {"$": "pickle", "data": "gASV"},
    {"$": "float", "value": "1e999"},
    {"$": "list"},
    {"no": "tag"},
    float("nan"),
    [1, 2],
])
def test_validate_rejects_malformed_replies(bad):
    with pytest.raises(Malformed):
        validate(bad)


# ---------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------

TOL = Tolerance(rtol=1e-6, atol=1e-9)


def test_compare_is_strict_about_types_dtypes_and_shapes():
    assert "expected a float, got an int" in compare(encode(1.0), encode(1), TOL)
    assert "convert with float" in compare(encode(1.0), encode(np.float64(1.0)), TOL)
    assert "float32" in compare(encode(np.zeros(2)), encode(np.zeros(2, np.float32)), TOL)
    assert "expected shape (2,), got shape (2, 1)" in compare(encode(np.zeros(2)), encode(np.zeros((2, 1))), TOL)
    assert "torch" in compare(encode(np.zeros(2)), encode(torch.zeros(2, dtype=torch.float64)), TOL)
    assert compare(encode((1, 2)), encode([1, 2]), TOL) is not None  # a list is not a tuple
    assert compare(encode("b"), encode("b"), TOL) is None


def test_compare_tolerance_and_messages():
    e = encode(np.array([1.0, 2.0, 3.0]))
    assert compare(e, encode(np.array([1.0, 2.0, 3.0 + 2e-6])), TOL) is None  # within rtol
    msg = compare(e, encode(np.array([1.0, 2.5, 3.0])), TOL)
    assert "1 of 3 entries off" in msg and "max abs error 0.5" in msg
    hidden = compare(e, encode(np.array([1.0, 2.5, 3.0])), TOL, amounts=False)
    assert "0.5" not in hidden and "1 of 3" in hidden
    assert "off by" in compare(encode(2.0), encode(2.1), TOL)
    assert "0.1" not in compare(encode(2.0), encode(2.1), TOL, amounts=False)


def test_nan_never_matches_unless_asked():
    assert compare(encode(float("nan")), encode(float("nan")), TOL) is not None
    assert compare(encode(1.0), encode(float("nan")), TOL) is not None
    assert "NaN or infinite" in compare(encode(np.ones(2)), encode(np.full(2, np.nan)), TOL)
    both = Tolerance(1e-6, 1e-9, equal_nan=True)
    assert compare(encode(np.array([np.nan, 1.0])), encode(np.array([np.nan, 1.0])), both) is None
    assert compare(encode(np.array([0.0, 1.0])), encode(np.array([np.nan, 1.0])), both) is not None
    assert compare(encode(float("inf")), encode(float("inf")), TOL) is None
    assert compare(encode(float("inf")), encode(float("-inf")), TOL) is not None


def test_compare_agrees_with_numpy_isclose_on_random_values():
    rng = np.random.default_rng(0)
    e = rng.normal(size=2000)
    g = e + rng.normal(size=2000) * np.abs(e) * 1e-6 * rng.choice([0.5, 2.0], size=2000)
    for i in range(0, 2000, 97):
        ours = compare(encode(float(e[i])), encode(float(g[i])), TOL) is None
        assert ours == bool(np.isclose(g[i], e[i], rtol=1e-6, atol=1e-9))


# ---------------------------------------------------------------------------------------------
# Declarations and the lab registry
# ---------------------------------------------------------------------------------------------


def test_questions_refuse_incomplete_declarations():
    ref = demo.softmax_ref
    with pytest.raises(ValueError, match="known-wrong"):
        function_question("q1", 1, target="f", reference=ref, public=[(np.zeros(2),)], wrong=[])
    with pytest.raises(ValueError, match="public=.*hidden="):
        function_question("q1", 1, target="f", reference=ref, wrong=[ref])
    with pytest.raises(ValueError, match="exactly one of answer"):
        value_question("q1", 1, target="x", answer=1.0, reference=lambda: 1.0, wrong=[0.0])
    with pytest.raises(ValueError, match="variable name"):
        value_question("q1", 1, target="not a name", answer=1.0, wrong=[0.0])
    with pytest.raises(ValueError, match="positive"):
        value_question("q1", 0, target="x", answer=1.0, wrong=[0.0])
    with pytest.raises(ValueError, match="two digits"):
        Lab("1", "x", "X", [value_question("q1", 1, target="x", answer=1.0, wrong=[0.0])])
    q = value_question("q1", 1, target="x", answer=1.0, wrong=[0.0])
    with pytest.raises(ValueError, match="unique"):
        Lab("98", "x", "X", [q, q])
    with pytest.raises(ValueError, match="has no question 'q9'"):
        LAB.question("q9")


def test_get_lab(monkeypatch):
    assert get_lab("99") is get_lab(99) is LAB
    assert LAB.stem == "99_demo" and LAB.total_points == 10.0
    with pytest.raises(ValueError, match="no lab 42"):
        get_lab("42")
    with pytest.raises(ValueError, match="number like"):
        get_lab("lab3")
    monkeypatch.setitem(labs.LAB_MODULES, "98", "minilm.labs.lab98_not_written")
    with pytest.raises(ValueError, match="registered in minilm/labs/__init__.py but minilm/labs/lab98_not_written.py"):
        get_lab("98")


def test_the_demo_lab_is_found_by_id_but_is_not_a_lab_of_the_course():
    assert "99" not in labs.available_labs() and get_lab("99").id == "99"
    assert labs.available_labs() == sorted(labs.LAB_MODULES)
    for lab_id in labs.available_labs():  # every registered lab exists and declares itself
        assert get_lab(lab_id).id == lab_id


def test_grading_never_imports_the_course():
    """The engine knows no lab by name: no module under minilm/grading imports minilm.labs, anywhere."""
    root = Path(nbtools.__file__).parent
    modules = sorted(root.rglob("*.py"))
    assert len(modules) >= 10
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):  # also `from minilm import labs` and relative imports
                base = node.module or ""
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
                names += [alias.name for alias in node.names] if node.level else []
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                    "import_module", "__import__"):  # importlib.import_module("minilm.labs...")
                names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            else:
                continue
            bad = [n for n in names if n == "labs" or n == "minilm.labs" or n.startswith("minilm.labs.")]
            assert not bad, f"{path.relative_to(root.parent.parent)}:{node.lineno} imports {bad}"


def test_the_engine_takes_a_lab_not_an_id(tmp_path):
    for call in (lambda: grade_objects("99", {}), lambda: self_check("99", "q1", {}),
                 lambda: grade_notebook(RELEASE, "99"), lambda: release_lab(SOLUTION, tmp_path / "x.ipynb", lab="99")):
        with pytest.raises(ValueError, match=r"expected a Lab .*minilm\.labs\.get_lab\('99'\)"):
            call()
    assert not (tmp_path / "x.ipynb").exists()


# ---------------------------------------------------------------------------------------------
# Scoring objects directly: reference full, stubs zero, wrong answers partial
# ---------------------------------------------------------------------------------------------


def _stub(*args, **kwargs):
    raise NotImplementedError()


@pytest.mark.parametrize("seed", [0, 1, 2, 12345])
def test_reference_scores_full_marks(seed):
    result = grade_objects(LAB, reference_namespace(LAB), seed=seed)
    assert result.score == result.max_score == 10.0


def test_stubs_score_zero():
    stubs = {"softmax": _stub, "bigram_probs": _stub, "heldout_nll": None, "why_max": None}
    result = grade_objects(LAB, stubs)
    assert result.score == 0.0
    assert {q.status for q in result.questions} == {"ok"}
    assert grade_objects(LAB, {}).score == 0.0  # nothing defined: every question "missing"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_every_known_wrong_answer_scores_less_than_full_and_some_partial():
    partial = False
    for q in LAB.questions:
        for wrong in q.wrong:
            for seed in range(3):
                r = grade_objects(LAB, {q.target: wrong}, seed=seed, questions=[q.name]).questions[0]
                assert r.score < r.points, (q.name, wrong)
                partial |= 0 < r.score
    assert partial  # e.g. the wrong-axis softmax passes the 1-D public input
    r = grade_objects(LAB, {"softmax": demo._softmax_wrong_axis}, questions=["q1"]).questions[0]
    assert r.score == pytest.approx(3 * 1 / 5)


def test_hidden_inputs_come_from_the_grading_seed():
    q = LAB.question("q1")
    a, b, c = plan_checks(q, 1), plan_checks(q, 1), plan_checks(q, 2)
    hidden = [ch for ch in a if ch.visibility == "hidden"]
    assert len(hidden) == q.n_hidden == 3
    assert [ch.call for ch in a] == [ch.call for ch in b]
    assert [ch.call for ch in a if ch.visibility == "hidden"] != [ch.call for ch in c if ch.visibility == "hidden"]
    assert [ch.call for ch in a if ch.visibility == "public"] == [ch.call for ch in c if ch.visibility == "public"]
    assert plan_checks(q, 1, public_only=True) == [ch for ch in a if ch.visibility == "public"]


def test_measured_value_is_recomputed_by_the_grader_under_the_notebooks_seed():
    value_1 = demo.heldout_nll_ref(1)
    assert grade_objects(LAB, {"heldout_nll": value_1, "SEED": 1}, questions=["q3"]).score == 2.0
    assert grade_objects(LAB, {"heldout_nll": value_1, "SEED": 0}, questions=["q3"]).score == 0.0
    assert grade_objects(LAB, {"heldout_nll": demo.heldout_nll_ref(0)}, questions=["q3"]).score == 2.0  # default
    r = grade_objects(LAB, {"heldout_nll": value_1, "SEED": -1}, questions=["q3"]).questions[0]
    assert r.score == 0 and r.status == "grader-error" and "could not be graded" in r.checks[0].message
    r = grade_objects(LAB, {"heldout_nll": value_1, "SEED": [1]}, questions=["q3"]).questions[0]
    assert r.score == 0 and "plain number" in r.checks[0].message


def test_reference_cache_computes_each_parameter_set_once():
    calls = []

    def ref(SEED):  # noqa: N803
        calls.append(SEED)
        return float(SEED)

    lab = Lab("98", "cache", "Cache", [value_question("q1", 1, target="x", reference=ref, params={"SEED": 0},
                                                      wrong=[-1.0])])
    cache = ReferenceCache()
    for seed in (1, 1, 2, 1):
        grade_objects(lab, {"x": float(seed), "SEED": seed}, references=cache)
    assert calls == [1, 2]


def test_partial_credit_follows_check_weights():
    def ref(x):
        return x * 2

    q = function_question("q1", 4, target="f", reference=ref, public=[Case((1.0,), weight=3.0)],
                          hidden=[Hidden(lambda rng: (float(rng.normal()) + 10,), n=1)], wrong=[lambda x: x])
    lab = Lab("98", "w", "W", [q])
    only_public = grade_objects(lab, {"f": lambda x: 2.0 if x == 1.0 else 0.0}).questions[0]
    assert only_public.score == pytest.approx(3.0)


# ---------------------------------------------------------------------------------------------
# The in-notebook self-check
# ---------------------------------------------------------------------------------------------


def test_self_check_is_honest_about_what_it_checked():  # class mode; self-study: tests/test_selfstudy.py
    result = self_check(LAB, "q1", {"softmax": demo.softmax_ref}, mode="class")
    assert result.text == "q1: 2/2 public checks passed; 3 hidden checks run at grading."
    assert result.ok and result.public_points == pytest.approx(3 * 2 / 5)


def test_self_check_failure_shows_hint_and_what_was_wrong_but_no_hidden_detail():
    result = self_check(LAB, "q1", {"softmax": demo._softmax_wrong_axis}, mode="class")
    text = result.text
    assert text.startswith("q1: 1/2 public checks passed; 3 hidden checks run at grading.")
    assert "a batch of two rows" in text and "max abs error" in text
    assert "Hint: work along the last axis" in text
    assert "hidden input" not in text and "large logits" not in text
    expected = demo.softmax_ref(np.array([[0.0, 1.0], [5.0, 5.0]]))
    assert f"{expected[0, 0]:.3g}" not in text  # never the reference answer


def test_self_check_of_values_checks_format_only():
    assert "not one of the choices 'a', 'b', 'c'" in self_check(LAB, "q4", {"why_max": "d"}, mode="class").text
    ok = self_check(LAB, "q4", {"why_max": "a"}, mode="class")  # wrong, but well-formed: class mode cannot tell
    assert ok.ok and "checked at grading" in ok.text and "2 points" in ok.text
    assert "convert with float" in self_check(LAB, "q3", {"heldout_nll": np.float64(1.0)}, mode="class").text
    assert "not defined" in self_check(LAB, "q3", {}, mode="class").text


def test_check_reads_the_callers_globals_and_lab(capsys):
    ns = {"check": check, "check_all": check_all, "LAB": "99", "softmax": demo.softmax_ref, "why_max": "b",
          "MINILM_MODE": "class"}  # what `minilm release --class-mode` sets; self-study: tests/test_selfstudy.py
    exec("check('q1')\ncheck_all()", ns)
    out = capsys.readouterr().out
    assert out.startswith("q1: 2/2 public checks passed")
    assert "[3 pts] q1: 2/2" in out and "[3 pts] q2: bigram_probs is not defined" in out
    assert "this is not your grade" in out
    assert "Self-check total: 1.2 of the 1.95 points that public checks carry (out of 10)" in out
    with pytest.raises(ValueError, match='Set LAB = "00"'):
        exec("check('q1')", {"check": check})


# ---------------------------------------------------------------------------------------------
# Solution regions, release, staleness, locked cells
# ---------------------------------------------------------------------------------------------


def test_strip_solutions_keeps_indentation_and_handles_one_line_answers():
    src = textwrap.dedent("""\
        def f(x):
            y = 1
            ### BEGIN SOLUTION
            return x + y
            ### END SOLUTION
        best: int = 3  # SOLUTION
        other = f(2)   ### SOLUTION""")
    out, changed = nbtools.strip_solutions(src)
    assert changed
    assert out == textwrap.dedent("""\
        def f(x):
            y = 1
            raise NotImplementedError('write f')
        best: int = None  # YOUR ANSWER
        other = None  # YOUR ANSWER""")
    md, changed = nbtools.strip_solutions("Why?\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION", "markdown")
    assert changed and md == "Why?\nYOUR ANSWER HERE"
    assert nbtools.strip_solutions("x = 1") == ("x = 1", False)


@pytest.mark.parametrize("src, match", [
    ("### BEGIN SOLUTION\nx = 1", "never closed"),
    ("### END SOLUTION", "without"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "inside another"),
    ("# BEGIN SOLUTION\nx = 1\n# END SOLUTION", "malformed"),
    ("print(x)  # SOLUTION", "malformed"),
    ("x += 1  # SOLUTION", "plain assignment"),
])
def test_malformed_solution_markers_are_errors(src, match):
    with pytest.raises(nbtools.SolutionMarkerError, match=match):
        nbtools.strip_solutions(src, where="cell 3")


def test_stub_names_the_exercise_and_the_function_it_leaves_to_write():
    src = "def bigram_probs(t):\n    \"\"\"Doc.\"\"\"\n    ### BEGIN SOLUTION\n    return t\n    ### END SOLUTION"
    out, _ = nbtools.strip_solutions(src, exercise="q2")
    assert out.splitlines()[-1] == "    raise NotImplementedError('q2: write bigram_probs')"
    ns = {}
    exec(out, ns)
    with pytest.raises(NotImplementedError, match="^q2: write bigram_probs$"):
        ns["bigram_probs"]([1])
    top, _ = nbtools.strip_solutions("x = 1\n### BEGIN SOLUTION\ny = 2\n### END SOLUTION", exercise="q5")
    assert top == "x = 1\nraise NotImplementedError('q5: write your answer here')"
    # the exercise is the first check("qN") at or after the cell
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src), nbformat.v4.new_markdown_cell("check('q9') in prose"),
                nbformat.v4.new_code_cell('check("q3")'),
                nbformat.v4.new_code_cell("def g():\n    ### BEGIN SOLUTION\n    pass\n"
                                          "    ### END SOLUTION\ncheck('q4')")]
    rel = make_release(nb, "99")
    assert "NotImplementedError('q3: write bigram_probs')" in rel.cells[0].source
    assert "NotImplementedError('q4: write g')" in rel.cells[3].source


def test_release_strips_solutions_outputs_and_locks_check_cells():
    sol = nbformat.read(SOLUTION, as_version=4)
    sol.cells[4].outputs = [nbformat.v4.new_output("stream", text="secret output")]
    sol.cells[4].execution_count = 7
    rel = make_release(sol, "99")
    text = nbformat.writes(rel)
    assert "np.add.at" not in text and "secret output" not in text and '"b"  # SOLUTION' not in text
    assert "BEGIN SOLUTION" not in text and "1.13 vs 1.79" not in text
    code = [c for c in rel.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    locked = rel.metadata["minilm"]["locked"]
    check_cells = [c for c in rel.cells if "check(" in c.source]
    assert check_cells and all(c.id in locked and c.metadata["editable"] is False for c in check_cells)
    assert "graded" in locked  # tagged "locked" in the source
    assert "softmax" not in locked  # a solution cell is the student's to edit
    assert rel.metadata["minilm"]["lab"] == "99"
    assert nbformat.writes(make_release(sol, "99")) == text  # deterministic


def test_committed_demo_release_is_not_stale(tmp_path):
    assert not is_stale(SOLUTION, RELEASE)
    edited = nbformat.read(SOLUTION, as_version=4)
    edited.cells[0].source += "\nOne more sentence."
    src = tmp_path / "solutions" / "99_demo.ipynb"
    src.parent.mkdir()
    nbformat.write(edited, src)
    assert is_stale(src, RELEASE)
    assert nbtools.stale_reason(src, RELEASE) == "cell 0 differs from a fresh release"
    assert is_stale(src, tmp_path / "missing.ipynb")


def test_tamper_findings_spot_edited_and_deleted_locked_cells():
    rel = nbformat.read(RELEASE, as_version=4)
    assert nbtools.tamper_findings(rel, LAB, RELEASE) == []
    assert nbtools.tamper_findings(rel, LAB) == []  # against its own metadata
    edited = copy.deepcopy(rel)
    next(c for c in edited.cells if c.id == "check-q1").source = "print('q1: 2/2 public checks passed')"
    edited.cells = [c for c in edited.cells if c.id != "check-all"]
    findings = nbtools.tamper_findings(edited, LAB, RELEASE)
    assert any("check-q1 was edited" in f for f in findings)
    assert any("check-all was deleted" in f for f in findings)
    moved = copy.deepcopy(rel)
    moved.cells = moved.cells[::-1]  # reordering is not editing
    assert nbtools.tamper_findings(moved, LAB, RELEASE) == []
    assert any("lab 99" in f for f in nbtools.tamper_findings(rel, Lab("98", "x", "X", list(LAB.questions)), RELEASE))


def test_notebooks_handed_out_before_the_move_run_with_imports_from_minilm_labs(tmp_path):
    old = ("import numpy as np\nfrom minilm.grading import check, check_all\n"
           "from minilm.grading.labs.lab00 import markov_corpus\n")
    new = nbtools.current_imports(old)
    assert new == ("import numpy as np\nfrom minilm.labs import check, check_all\n"
                   "from minilm.labs.lab00 import markov_corpus\n")
    ns: dict = {}
    exec(new, ns)  # the new homes exist and hold the same names
    assert ns["check"] is check and ns["check_all"] is check_all and callable(ns["markov_corpus"])
    others = "from minilm.grading import grade_objects\ntext = 'from minilm.grading.labs.lab00 import x'\n"
    assert nbtools.current_imports(others) == others
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(old), nbformat.v4.new_code_cell(old)])
    nbtools.write_for_execution(nb, str(tmp_path / "run.ipynb"))  # what the grader's child executes
    assert [c.source for c in nbformat.read(tmp_path / "run.ipynb", as_version=4).cells] == [new]
    assert nb.cells[1].source == old  # the submission itself (tamper checks, duplicates) is left as handed in


@pytest.mark.parametrize("content, match", [
    (b'{"cells": [', "not a valid .ipynb"),
    (b'{"cells": 5}', "not a valid .ipynb"),
    (b'{"cells": [{"cell_type": "code", "source": 7, "metadata": {}, "outputs": []}], "metadata": {}, '
     b'"nbformat": 4, "nbformat_minor": 5}', "not a valid"),
    (b"\xff\xfe\x00", "not UTF-8"),
])
def test_unreadable_submissions_are_described(tmp_path, content, match):
    path = tmp_path / "sub.ipynb"
    path.write_bytes(content)
    nb, why = nbtools.read_submission(path)
    assert nb is None and match in why


def test_identical_answers_ignore_comments_and_docstrings():
    def nb(src):
        return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src)])

    a = nbtools.answer_sources(nb("def softmax(x):\n    '''mine'''\n    return x  # hi"), LAB)
    b = nbtools.answer_sources(nb("def softmax( x ):\n    return x"), LAB)
    assert a == b == {"q1": "def softmax(_v0):\n    return _v0"}
    # Renamed variables and reformatting change nothing either; a different computation does.
    c = nbtools.answer_sources(nb("def softmax(logits: 'Array') -> float:\n    out = logits\n    return out"), LAB)
    d = nbtools.answer_sources(nb("def softmax(z):\n    tmp=z\n    return (tmp)"), LAB)
    e = nbtools.answer_sources(nb("def softmax(z):\n    tmp = z\n    return tmp + 1"), LAB)
    assert c == d != e
    assert nbtools.answer_sources(nb("def softmax(x):\n    raise NotImplementedError()"), LAB) == {}
    assert nbtools.answer_sources(nb("%matplotlib inline\ndef softmax(x):\n    return 2 * x"), LAB)
    results = [GradeResult(s, "", "99", "ok", [], answers=ans) for s, ans in (("ann", a), ("bob", b), ("cy", {}))]
    assert duplicate_answers(results) == ["q1: identical code from ann, bob"]


# ---------------------------------------------------------------------------------------------
# Release gates
# ---------------------------------------------------------------------------------------------


def test_release_writes_the_committed_notebook(tmp_path):
    out = tmp_path / "99_demo.ipynb"
    report = release_lab(SOLUTION, out, lab=LAB)
    assert report.ok and out.read_text() == RELEASE.read_text()
    assert any("q3" in n for n in report.notes)  # measured value: checked by executing the solution


def _solution_with(cell_id: str, source: str):
    nb = nbformat.read(SOLUTION, as_version=4)
    next(c for c in nb.cells if c.id == cell_id).source = source
    return nb


def test_release_refuses_a_solution_left_in_the_student_version():
    sol = _solution_with("softmax", "def softmax(x):\n    e = np.exp(x - x.max(-1, keepdims=True))\n"
                                    "    return e / e.sum(-1, keepdims=True)")
    report = check_release(LAB, sol, make_release(sol, "99"), seeds=(0,))
    assert any("q1: the student notebook's stub scores 3/3" in p for p in report.problems)


def test_release_refuses_a_computed_answer_in_the_student_version():
    sol = _solution_with("measure", "train, held = make_corpus(SEED)\nprobs = bigram_probs(train, VOCAB)\n"
                                    "heldout_nll = float(-np.mean(np.log(probs[held[:-1], held[1:]])))")
    report = check_release(LAB, sol, make_release(sol, "99"), seeds=(0,))
    assert any("computes heldout_nll itself" in p for p in report.problems)


def test_release_refuses_a_solution_that_disagrees_with_the_reference():
    sol = _solution_with("softmax", "def softmax(x):\n    ### BEGIN SOLUTION\n    return np.exp(x) / np.exp(x).sum()\n"
                                    "    ### END SOLUTION")
    report = check_release(LAB, sol, make_release(sol, "99"), seeds=(0,))
    assert any("solution notebook's softmax scores" in p for p in report.problems)


def test_release_refuses_known_wrong_answers_that_score_full(tmp_path):
    weak = function_question("q1", 3, target="softmax", reference=demo.softmax_ref,
                             public=[(np.array([1.0, 2.0]),)], wrong=[demo._softmax_wrong_axis])  # 1-D only
    lab = Lab("99", "demo", "Weak", [weak, *LAB.questions[1:]])
    with pytest.raises(ReleaseError, match="known-wrong answer #1 scores full marks"):
        release_lab(SOLUTION, tmp_path / "out.ipynb", lab=lab)
    assert not (tmp_path / "out.ipynb").exists()


def test_release_refuses_a_reference_that_does_not_match_itself():
    flaky = function_question("q1", 3, target="softmax", reference=lambda x: np.random.default_rng().random(x.shape),
                              public=[(np.zeros(2),)], wrong=[demo._softmax_wrong_axis])
    lab = Lab("99", "demo", "Flaky", [flaky, *LAB.questions[1:]])
    sol = nbformat.read(SOLUTION, as_version=4)
    report = check_release(lab, sol, make_release(sol, "99"), seeds=(0,))
    assert any("declared reference scores" in p for p in report.problems)


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------


def _result(student: str = "ann") -> GradeResult:
    q1 = QuestionResult("q1", "Softmax", 3.0, 1.2, "ok", [
        CheckResult(0, "public", 1.0, "public input 1", True),
        CheckResult(1, "public", 1.0, "public input 2", True),
        CheckResult(2, "hidden", 1.0, "hidden input 1 (large logits)", False,
                    "result: 15 of 15 entries off, max abs error 0.31 (allowed: ...)"),
        CheckResult(3, "hidden", 1.0, "hidden input 2", False, "raised ValueError: shapes (3,4) and (5,)"),
        CheckResult(4, "hidden", 1.0, "hidden input 3", False, "result: expected shape (3, 4), got shape (4,)"),
    ], hint="use axis=-1")
    q4 = QuestionResult("q4", "", 2.0, 2.0, "ok", [CheckResult(0, "hidden", 1.0, "your answer", True)])
    return GradeResult(student, f"/x/{student}.ipynb", "99", "ok", [q1, q4], seed=5, duration_s=3.2)


def test_gradescope_results_format():
    data = gradescope_json(_result())
    assert data["score"] == 3.2 and data["stdout_visibility"] == "hidden"
    assert sum(t["max_score"] for t in data["tests"]) == pytest.approx(5.0)
    assert sum(t["score"] for t in data["tests"]) == pytest.approx(3.2)
    assert {t["visibility"] for t in data["tests"]} == {"visible", "after_published"}
    hidden = next(t for t in data["tests"] if t["name"].startswith("q1 (graded"))
    assert "0.31" not in hidden["output"] and "(3,4)" not in hidden["output"]
    assert "wrong result" in hidden["output"] and "raised ValueError" in hidden["output"]
    assert "Hint: use axis=-1" in hidden["output"]
    for t in data["tests"]:
        assert set(t) >= {"name", "score", "max_score", "output", "visibility"}


def test_coarse_reasons_hide_numbers():
    reasons = [coarse_reason(c) for c in _result().questions[0].checks]
    assert reasons == ["passed", "passed", "wrong result", "raised ValueError", "wrong shape"]


def test_class_csv_and_reports_are_written_atomically(tmp_path):
    results = [_result("ann"), _result("bob")]
    text = class_csv(results, ["q1", "q4"])
    assert text.splitlines()[0] == "student,q1,q4,total,max,status,review_items,submission"
    assert text.splitlines()[1].startswith("ann,1.2,2,3.2,5,ok,0,")
    stray = tmp_path / "gradescope" / "planted.json"
    stray.parent.mkdir()
    stray.write_text('{"score": 100}')
    write_reports(results, tmp_path, "99", ["q1", "q4"], master_seed=7)
    assert not stray.exists()
    names = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert names == ["feedback/ann.md", "feedback/bob.md", "grades.csv", "gradescope/ann.json", "gradescope/bob.json",
                     "instructor/ann.json", "instructor/bob.json", "summary.json", "tamper.json", "tamper.md"]
    assert json.loads((tmp_path / "summary.json").read_text())["master_seed"] == 7
    feedback = (tmp_path / "feedback" / "ann.md").read_text()
    assert "0.31" not in feedback and "public checks: 2/2 passed" in feedback
    assert "0.31" in (tmp_path / "instructor" / "ann.json").read_text()  # the instructor sees everything


# ---------------------------------------------------------------------------------------------
# CLI and sandbox
# ---------------------------------------------------------------------------------------------


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="minilm")
    cli.add_commands(parser.add_subparsers(dest="command", required=True), find_lab=get_lab)
    return parser.parse_args(argv)


def test_cli_registers_commands_with_handlers():
    for argv in (["release"], ["check", "x.ipynb"], ["grade", "a.ipynb", "--out", "o"], ["gradescope", "--lab", "99",
                                                                                          "--out", "o"]):
        args = _parse(*argv)
        assert callable(args.func) and args.find_lab is get_lab


def test_cli_bad_input_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit, match="minilm: .*does not exist"):
        main(["grade", str(tmp_path / "nope.ipynb"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="minilm: no .ipynb submissions found"):
        main(["grade", str(tmp_path), "--out", str(tmp_path / "o")])
    (tmp_path / "a.ipynb").write_text("{}")
    (tmp_path / "b.ipynb").write_text("{}")
    with pytest.raises(SystemExit, match="exactly one submission"):
        main(["grade", str(tmp_path), "--out", str(tmp_path / "o"), "--gradescope-results", "r.json"])
    with pytest.raises(SystemExit, match="there is no lab 42"):
        main(["check", str(tmp_path / "a.ipynb"), "--lab", "42"])
    with pytest.raises(SystemExit, match="timeout must be a positive"):
        main(["check", str(tmp_path / "a.ipynb"), "--timeout", "0"])


def test_cli_release_verify(tmp_path, capsys):
    assert main(["release", str(SOLUTION), "--out", str(RELEASE), "--verify"]) == 0
    assert "up to date" in capsys.readouterr().out
    stale = tmp_path / "99_demo.ipynb"
    stale.write_text(RELEASE.read_text().replace("Exercise 1", "Exercise one"))
    assert main(["release", str(SOLUTION), "--out", str(stale), "--verify"]) == 1


def test_gradescope_autograder_folder(tmp_path):
    out = tmp_path / "autograder"
    assert main(["gradescope", "--lab", "99", "--out", str(out), "--release", str(RELEASE)]) == 0
    run = (out / "run_autograder").read_text()
    assert "--lab 99" in run and '"$ROOT/results/results.json"' in run and "--run-as nobody" in run
    assert 'ROOT="${AUTOGRADER_ROOT:-/autograder}"' in run and '--release "$ROOT/source/release.ipynb"' in run
    assert os.access(out / "run_autograder", os.X_OK) and os.access(out / "setup.sh", os.X_OK)
    for script in ("run_autograder", "setup.sh"):
        assert subprocess.run(["bash", "-n", str(out / script)]).returncode == 0
    setup = (out / "setup.sh").read_text()
    assert f"torch=={torch.__version__.split('+')[0]}" in setup and "download.pytorch.org/whl/cpu" in setup
    assert (out / "minilm" / "grading" / "runner.py").exists() and (out / "release.ipynb").exists()
    assert not list(out.rglob("__pycache__"))
    with pytest.raises(SystemExit, match="not empty"):
        main(["gradescope", "--lab", "99", "--out", str(out)])


def test_child_environment_is_an_allow_list(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADESCOPE_API_TOKEN", "secret")
    monkeypatch.setenv("PATH", "/usr/bin")
    env = child_env(str(tmp_path), ["/pkg"], "tok")
    assert "GRADESCOPE_API_TOKEN" not in env and env["PATH"] == "/usr/bin"
    assert env["HOME"] == str(tmp_path) and env["MINILM_FAST"] == "1" and env["PYTHONPATH"] == "/pkg"
    assert env["TMPDIR"].startswith(str(tmp_path))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and subreapers are Linux features")
def test_memory_limit_and_orphan_cleanup_in_a_child():
    script = textwrap.dedent(f"""
        import os, subprocess, sys, time
        sys.path.insert(0, {str(Path(nbtools.__file__).parent)!r})
        import sandbox
        assert sandbox.apply_limits(1024, None) == []
        try:
            bytearray(2 * 2**30)
            print("allocated")
        except MemoryError:
            print("memory limit held")
        assert sandbox.become_subreaper()
        # a grandchild that detaches (new session) and whose parent exits: an orphan
        subprocess.Popen([sys.executable, "-c", "import os, subprocess, sys; subprocess.Popen([sys.executable, "
                          "'-c', 'import time; time.sleep(60)'], start_new_session=True); os._exit(0)"]).wait()
        time.sleep(0.5)
        orphans = sandbox.children_of(os.getpid())
        print("orphans adopted", len(orphans))
        print("killed", sandbox.kill_children())
        print("left", len(sandbox.children_of(os.getpid())))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "memory limit held" in out.stdout
    assert "orphans adopted 1" in out.stdout and "killed 1" in out.stdout and "left 0" in out.stdout


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="--run-as needs the grader to be root")
def test_run_as_is_checked_before_any_grading(tmp_path):
    (tmp_path / "a.ipynb").write_text("{}")
    with pytest.raises(SystemExit, match="there is no user 'no_such_user_minilm'"):
        main(["grade", str(tmp_path / "a.ipynb"), "--out", str(tmp_path / "o"), "--lab", "99",
                  "--run-as", "no_such_user_minilm"])
    try:
        from minilm.grading.grader import check_user_can_run

        check_user_can_run("nobody")
    except ValueError as err:  # e.g. Python installed under /root: the message says what to fix
        assert "install Python and the packages where that user can read them" in str(err)
    except KeyError:
        pytest.skip("no user 'nobody' here")
    assert not (tmp_path / "o").exists()


def test_student_path_beside_or_above_the_solutions(tmp_path):
    """The course keeps its sources in solutions/ beside labs/ (so `jupyter lab labs/` does not list them);
    a folder without labs/ (the demo lab) gets its student notebook one level up."""
    from minilm.grading.release import student_path

    (tmp_path / "course" / "labs").mkdir(parents=True)
    assert student_path(tmp_path / "course" / "solutions" / "04_x.ipynb") == tmp_path / "course" / "labs" / "04_x.ipynb"
    assert student_path(tmp_path / "demo" / "solutions" / "99_x.ipynb") == tmp_path / "demo" / "99_x.ipynb"
    repo = Path(__file__).resolve().parents[1]
    assert student_path(repo / "solutions" / "00_language_models.ipynb") == repo / "labs" / "00_language_models.ipynb"
