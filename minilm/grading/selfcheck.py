"""The in-notebook self-check: ``check("q1")`` and ``check_all()``.

They run the *public* checks on the student's objects, with the same probe and comparison code
the grader uses, and say honestly what they did and did not check::

    q1: 2/2 public checks passed; 3 hidden checks run at grading.

Hidden inputs and expected answers are never shown. The lab is read from a ``LAB = "NN"``
variable in the notebook, or given as ``check("q1", lab="00")``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from minilm.grading.checker import QuestionResult, plan_checks, probe_request, score_question
from minilm.grading.labs import get_lab
from minilm.grading.probe import probe_question
from minilm.grading.questions import Lab, Question


@dataclass
class SelfCheck:
    """What one self-check found. ``public_points`` are the points the public checks carry."""

    question: str
    passed: int
    total: int
    hidden: int
    public_points: float
    earned_points: float
    points: float
    ok: bool
    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _lab_from(lab: str | Lab | None, namespace: dict) -> Lab:
    if isinstance(lab, Lab):
        return lab
    if lab is None:
        lab = namespace.get("LAB")
        if lab is None:
            raise ValueError('which lab is this? Set LAB = "00" (the lab number) in the notebook, '
                             'or call check("q1", lab="00")')
    return get_lab(lab)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def self_check(lab: str | Lab | None, question: str | Question, namespace: dict[str, Any]) -> SelfCheck:
    """Run ``question``'s public checks on the objects in ``namespace``; nothing is printed."""
    lab = _lab_from(lab, namespace)
    q = question if isinstance(question, Question) else lab.question(question)
    checks = plan_checks(q, seed=0, public_only=True)
    reply = probe_question(probe_request(q, checks), namespace)
    return summarize(q, score_question(q, checks, reply))


def summarize(q: Question, result: QuestionResult) -> SelfCheck:
    """The honest self-check summary of a public-only ``result`` (shared with ``minilm check``)."""
    public_weight = sum(c.weight for c in q.public)
    total_weight = public_weight + sum(h.n * h.weight for h in q.hidden)
    public_points = q.points * public_weight / total_weight if q.kind == "function" else 0.0
    if result.status == "missing":
        line = f"{q.name}: {q.target} is not defined: run the cell that defines it, then check again."
        return SelfCheck(q.name, 0, len(result.checks), q.n_hidden, public_points, 0.0, q.points, False, [line])
    if q.kind == "value":
        later = f"whether it is right ({q.points:g} points) is checked at grading"
        fmt = result.checks[0] if result.checks else None
        if result.status != "ok" or fmt is None:
            lines = [f"{q.name}: {result.message or result.status}; {later}."]
        elif fmt.passed:
            what = f"one of {', '.join(map(repr, q.choices))}" if q.choices is not None else "the expected type"
            lines = [f"{q.name}: {q.target} is set and well-formed ({what}); {later}."]
        else:
            lines = [f"{q.name}: {fmt.message}; {later}."]
        ok = fmt is not None and fmt.passed and result.status == "ok"
        if not ok and q.hint:
            lines.append(f"  Hint: {q.hint}")
        return SelfCheck(q.name, 0, 0, 1, 0.0, 0.0, q.points, ok, lines)
    earned = q.points * sum(c.weight for c in result.checks if c.passed) / total_weight
    passed = sum(c.passed for c in result.checks)
    n_hidden = q.n_hidden
    later = f"; {_plural(n_hidden, 'hidden check')} run{'s' if n_hidden == 1 else ''} at grading" if n_hidden else ""
    lines = [f"{q.name}: {passed}/{len(result.checks)} public checks passed{later}."]
    if result.status != "ok" and result.message:
        lines.append(f"  - {result.message}")
    else:
        lines += [f"  - {c.label}: {c.message}" for c in result.checks if not c.passed]
    if passed < len(result.checks) and q.hint:
        lines.append(f"  Hint: {q.hint}")
    return SelfCheck(q.name, passed, len(result.checks), n_hidden, public_points, earned, q.points,
                     passed == len(result.checks) and result.status == "ok", lines)


def total_line(lab: Lab, results: list[SelfCheck]) -> str:
    """The honest closing line of ``check_all``: public-check points only, labelled as such."""
    earned = sum(r.earned_points for r in results)
    carried = sum(r.public_points for r in results)
    total = lab.total_points
    return (
        f"Self-check total: {earned:.4g} of the {carried:.4g} points that public checks carry "
        f"(out of {total:g}). The other {total - carried:.4g} points depend on hidden checks and on "
        f"answers checked only at grading: this is not your grade."
    )


def check(question: str, lab: str | None = None) -> None:
    """Run the public checks of ``question`` on this notebook's objects and print what happened."""
    namespace = sys._getframe(1).f_globals
    print(self_check(lab, question, namespace).text)


def check_all(lab: str | None = None) -> None:
    """Self-check every question and print a total of what the public checks can tell."""
    namespace = sys._getframe(1).f_globals
    lab_obj = _lab_from(lab, namespace)
    print(f"Lab {lab_obj.id}: {lab_obj.title}")
    results = []
    for q in lab_obj.questions:
        try:
            result = self_check(lab_obj, q, namespace)
        except Exception as err:  # noqa: BLE001 - one broken answer must not hide the others
            print(f"[{q.points:g} pts] {q.name}: could not be checked: {type(err).__name__}: {err}")
            continue
        results.append(result)
        print(f"[{q.points:g} pts] " + result.text)
    print(total_line(lab_obj, results))
