"""The self-check a notebook runs: the public checks of a question on the notebook's own objects.

``self_check(lab, "q1", namespace)`` runs them, with the same probe and comparison code the grader
uses, and says honestly what it did and did not check::

    q1: 2/2 public checks passed; 3 hidden checks run at grading.

Hidden inputs and expected answers are never shown. Notebooks call it through ``check("q1")`` and
``check_all()`` of ``minilm.labs``, which finds the lab named by the notebook's ``LAB = "NN"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from minilm.grading.checker import QuestionResult, plan_checks, probe_request, score_question
from minilm.grading.probe import probe_question
from minilm.grading.questions import Lab, Question, require_lab


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


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def self_check(lab: Lab, question: str | Question, namespace: dict[str, Any]) -> SelfCheck:
    """Run ``question``'s public checks on the objects in ``namespace``; nothing is printed."""
    lab = require_lab(lab)
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


def check_report(lab: Lab, namespace: dict[str, Any]) -> str:
    """Every question's self-check, with its points, and the honest total (what ``check_all`` prints)."""
    lab = require_lab(lab)
    lines = [f"Lab {lab.id}: {lab.title}"]
    results = []
    for q in lab.questions:
        try:
            result = self_check(lab, q, namespace)
        except Exception as err:  # noqa: BLE001 - one broken answer must not hide the others
            lines.append(f"[{q.points:g} pts] {q.name}: could not be checked: {type(err).__name__}: {err}")
            continue
        results.append(result)
        lines.append(f"[{q.points:g} pts] " + result.text)
    lines.append(total_line(lab, results))
    return "\n".join(lines)
