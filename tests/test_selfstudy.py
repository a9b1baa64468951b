"""Self-study and class mode of check(), check_all() and `minilm check`, for every kind of question.

Self-study (the default) gives the grader's verdict: functions on the hidden inputs too, measured
values against the reference recomputed under the notebook's own parameters, choices right or
wrong, and the score out of the lab's total. Class mode (``minilm release --class-mode``,
``MINILM_MODE=class``) runs the public checks only. Neither shows a hidden input or an answer.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest

from minilm.cli import main
from minilm.grading import grade_objects, release_lab
from minilm.grading.selfcheck import (
    CLASS_MODE_LINE,
    check_report,
    mark_class_mode,
    notebook_mode,
    resolve_mode,
    self_check,
)
from minilm.labs import available_labs, check, check_all, demo, get_lab

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "demo_lab"
SOLUTION = FIXTURES / "solutions" / "99_demo.ipynb"
LAB = get_lab("99")
RIGHT = {"softmax": demo.softmax_ref, "bigram_probs": demo.bigram_probs_ref,
         "heldout_nll": demo.heldout_nll_ref(0), "why_max": "b"}


@pytest.fixture(autouse=True)
def _no_mode_from_outside(monkeypatch):
    monkeypatch.delenv("MINILM_MODE", raising=False)
    monkeypatch.delenv("MINILM_GRADE_JOB", raising=False)


def _numbers(text: str) -> set[str]:
    return set(re.findall(r"\d+\.\d{3,}", text))


# ----------------------------------------------------------------------------- which mode
def test_self_study_is_the_default_and_each_switch_is_honoured(monkeypatch):
    assert resolve_mode({}) == "self" and resolve_mode() == "self"
    assert resolve_mode({"MINILM_MODE": "class"}) == "class"  # what a class-mode release sets
    monkeypatch.setenv("MINILM_MODE", "self")
    assert resolve_mode({"MINILM_MODE": "class"}) == "self"  # the environment overrides the notebook
    monkeypatch.setenv("MINILM_MODE", "Class")
    assert resolve_mode({}) == "class"
    monkeypatch.setenv("MINILM_MODE", "exam")
    with pytest.raises(ValueError, match="MINILM_MODE is 'exam': use 'self'.*or 'class'"):
        resolve_mode({})
    monkeypatch.setenv("MINILM_MODE", "self")
    monkeypatch.setenv("MINILM_GRADE_JOB", "token")  # inside the grader's sandbox: the grader decides
    assert resolve_mode({"MINILM_MODE": "self"}) == "class"


def test_bad_mode_in_the_notebook_names_the_fix():
    with pytest.raises(ValueError, match="notebook's MINILM_MODE is 'yes'"):
        self_check(LAB, "q1", {"softmax": demo.softmax_ref, "MINILM_MODE": "yes"})


# ----------------------------------------------------------------------------- functions
def test_function_right_scores_full_with_hidden_checks_run():
    r = self_check(LAB, "q1", {"softmax": demo.softmax_ref})
    assert r.mode == "self" and r.ok and r.earned_points == pytest.approx(3.0)
    assert r.text == "q1: 5/5 checks passed (public 2/2, hidden 3/3): 3/3 points."


def test_function_wrong_only_on_hidden_inputs_is_caught_in_self_study_not_in_class_mode():
    # The naive softmax passes both public inputs and overflows on the hidden large logits.
    ns = {"softmax": demo._softmax_naive}
    with np.errstate(all="ignore"):
        klass = self_check(LAB, "q1", ns, mode="class")
        mine = self_check(LAB, "q1", ns, seed=7)
        graded = grade_objects(LAB, ns, seed=7, questions=["q1"]).questions[0]
    assert klass.ok and klass.text.startswith("q1: 2/2 public checks passed; 3 hidden checks run at grading.")
    assert not mine.ok and mine.earned_points == pytest.approx(graded.score) and graded.score < 3
    assert "hidden input 3 (large logits): NaN or infinite values" in mine.text
    assert "Hint: work along the last axis" in mine.text


def test_hidden_inputs_and_expected_values_are_never_shown():
    with np.errstate(all="ignore"):
        text = self_check(LAB, "q1", {"softmax": demo._softmax_wrong_axis}, seed=3).text
    assert "max abs error" in text.split("hidden input")[0]  # public: how far off, as in class mode
    hidden_lines = [line for line in text.splitlines() if "hidden input" in line]
    assert len(hidden_lines) == 3 and all(line.endswith("wrong result") for line in hidden_lines)
    # No number of a hidden input or of the reference's output on it appears anywhere.
    from minilm.grading.checker import hidden_rng

    x = demo._logits(hidden_rng(3, "q1", 0, 0))[0]
    shown = _numbers(text)
    assert not shown & {f"{v:.3f}" for v in np.concatenate([x.ravel(), demo.softmax_ref(x).ravel()])}


# ----------------------------------------------------------------------------- measured values
def test_measured_value_is_recomputed_under_the_notebooks_own_parameters():
    right0 = demo.heldout_nll_ref(0)
    right5 = demo.heldout_nll_ref(5)
    assert self_check(LAB, "q3", {"heldout_nll": right0}).text == "q3: right: 2/2 points."
    # The notebook ran with SEED = 5: its own value is right, seed 0's is not.
    assert self_check(LAB, "q3", {"heldout_nll": right5, "SEED": 5}).ok
    wrong = self_check(LAB, "q3", {"heldout_nll": right0, "SEED": 5})
    assert not wrong.ok and wrong.earned_points == 0
    assert wrong.text.startswith("q3: not right (your answer: not within the tolerance")
    assert f"{right5:.4f}"[:6] not in wrong.text and "Hint:" in wrong.text  # never the answer


def test_known_wrong_values_are_not_right():
    for w in LAB.question("q3").wrong:
        r = self_check(LAB, "q3", {"heldout_nll": float(w)})
        assert not r.ok and r.earned_points == 0 and "not right" in r.text


def test_a_parameter_the_reference_refuses_is_reported_not_scored():
    r = self_check(LAB, "q3", {"heldout_nll": 1.0, "SEED": -1})
    assert not r.ok and r.text.startswith("q3: not checked: the reference could not be computed")
    assert "the reference could not be computed for {'SEED': -1}" in r.text


def test_value_in_class_mode_is_checked_for_form_only():
    r = self_check(LAB, "q3", {"heldout_nll": 0.0}, mode="class")  # wrong, but well-formed
    assert r.ok and "checked at grading" in r.text


# ----------------------------------------------------------------------------- choices
def test_choice_right_wrong_and_malformed():
    assert self_check(LAB, "q4", {"why_max": "b"}).text == "q4: right: 2/2 points."
    wrong = self_check(LAB, "q4", {"why_max": "a"})
    assert not wrong.ok and wrong.text.startswith("q4: that is not the right choice: 0/2 points.")
    assert "'b'" not in wrong.text  # the right choice is not named
    bad = self_check(LAB, "q4", {"why_max": "d"})
    assert "'d' is not one of the choices 'a', 'b', 'c'" in bad.text and bad.earned_points == 0
    assert self_check(LAB, "q4", {"why_max": "a"}, mode="class").ok  # class mode cannot tell


def test_missing_answer_scores_zero_in_both_modes():
    for mode in ("self", "class"):
        r = self_check(LAB, "q2", {}, mode=mode)
        assert not r.ok and r.earned_points == 0 and "bigram_probs is not defined" in r.text


# ----------------------------------------------------------------------------- the total
def test_check_all_score_is_the_graders_score_out_of_the_labs_total():
    ns = dict(RIGHT, softmax=demo._softmax_naive, why_max="c")
    with np.errstate(all="ignore"):
        report = check_report(LAB, ns, seed=11)
        graded = grade_objects(LAB, ns, seed=11)
    m = re.search(r"Self-study score: ([\d.]+)/(\d+) points", report)
    assert m and float(m.group(1)) == pytest.approx(graded.score, abs=1e-3) and m.group(2) == "10"
    assert graded.score < 10 and report.startswith("Lab 99: Demo lab: a bigram language model (self-study mode)")
    full = check_report(LAB, RIGHT)
    assert "Self-study score: 10/10 points" in full
    klass = check_report(LAB, RIGHT, mode="class")
    assert "(class mode)" in klass and "this is not your grade" in klass


def test_check_and_check_all_in_a_notebook_in_both_modes(capsys):
    ns = {"check": check, "check_all": check_all, "LAB": "99", **RIGHT}
    exec("check('q4')\ncheck_all()", ns)
    out = capsys.readouterr().out
    assert out.startswith("q4: right: 2/2 points.") and "Self-study score: 10/10 points" in out
    ns["MINILM_MODE"] = "class"
    exec("check('q4')\ncheck_all()", ns)
    out = capsys.readouterr().out
    assert out.startswith("q4: why_max is set and well-formed") and "Self-check total" in out
    exec("check('q4', mode='self')", ns)  # an explicit mode wins
    assert capsys.readouterr().out.startswith("q4: right")


@pytest.mark.parametrize("lab_id", available_labs())
def test_every_labs_functions_and_choices_in_self_study(lab_id):
    """The references score full and each known-wrong answer less, question by question, as at grading."""
    lab = get_lab(lab_id)
    with np.errstate(all="ignore"):
        for q in lab.questions:
            if q.kind == "value" and q.reference is not None:
                continue  # measured values: recomputing them takes minutes (test_lab*.py cover their references)
            right = q.reference if q.kind == "function" else q.answer
            r = self_check(lab, q, {q.target: right}, seed=0)
            assert r.ok and r.earned_points == pytest.approx(q.points), (q.name, r.text)
            for w in q.wrong:
                bad = self_check(lab, q, {q.target: w}, seed=0)
                assert not bad.ok and bad.earned_points < q.points - 1e-9, (q.name, bad.text)


# ----------------------------------------------------------------------------- class-mode release
def test_committed_student_notebooks_default_to_self_study():
    for nb_path in sorted((ROOT / "labs").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(str(nb_path), as_version=4)
        assert notebook_mode(nb) is None and resolve_mode(nb=nb) == "self", nb_path.name


def test_release_class_mode_marks_the_notebook(tmp_path):
    out = tmp_path / "99_demo.ipynb"
    release_lab(SOLUTION, out, lab=LAB, class_mode=True)
    nb = nbformat.read(str(out), as_version=4)
    assert nb.metadata["minilm"]["mode"] == "class" and notebook_mode(nb) == "class"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    holder = params[0] if params else nb.cells[0]
    assert CLASS_MODE_LINE in holder.source
    ns: dict = {}
    exec(holder.source, ns)  # the kernel sees the mode as a variable
    assert resolve_mode(ns) == "class"
    plain = tmp_path / "plain.ipynb"
    release_lab(SOLUTION, plain, lab=LAB)
    assert notebook_mode(nbformat.read(str(plain), as_version=4)) is None
    assert mark_class_mode(nb) is nb  # idempotent: the line is there once
    assert sum(c.source.count(CLASS_MODE_LINE) for c in nb.cells) == 1


def test_mark_class_mode_without_a_parameters_cell():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    mark_class_mode(nb)
    assert nb.cells[0].source == CLASS_MODE_LINE and notebook_mode(nb) == "class"


def test_release_cli_class_mode(tmp_path, capsys):
    out = tmp_path / "99_demo.ipynb"
    assert main(["release", str(SOLUTION), "--out", str(out), "--class-mode"]) == 0
    assert "in class mode" in capsys.readouterr().out
    assert notebook_mode(nbformat.read(str(out), as_version=4)) == "class"
    with pytest.raises(SystemExit, match="re-release it with --class-mode"):
        main(["release", str(SOLUTION), "--out", str(out), "--verify", "--class-mode"])


# ----------------------------------------------------------------------------- minilm check
def test_minilm_check_gives_the_verdict_in_self_study_and_public_checks_in_class_mode(tmp_path, capsys):
    """Runs the demo solution headless twice (a kernel each time, about 15 s in all)."""
    nb = tmp_path / "99_demo.ipynb"
    nb.write_bytes(SOLUTION.read_bytes())
    assert main(["check", str(nb), "--cell-timeout", "60", "--timeout", "120"]) == 0
    out = capsys.readouterr().out
    assert "(self-study mode)" in out and "Self-study score: 10/10 points" in out
    assert "q1: 5/5 checks passed (public 2/2, hidden 3/3): 3/3 points." in out and "q3: right" in out
    marked = nbformat.read(str(nb), as_version=4)
    nbformat.write(mark_class_mode(marked), str(nb))
    assert main(["check", str(nb), "--cell-timeout", "60", "--timeout", "120"]) == 0
    out = capsys.readouterr().out
    assert "(class mode)" in out and "this is not your grade" in out and "hidden checks run at grading" in out
    assert math.isfinite(float(re.search(r"Self-check total: ([\d.]+)", out).group(1)))
