"""The check a notebook runs on itself, in one of two modes.

**Self-study** (the default): ``check("q1")`` gives the verdict the grader would, with the grader's
own code (``plan_checks``, ``probe_question``, ``score_question``): a function is run on the public
inputs *and* on hidden inputs drawn now from a fresh seed; a measured value is compared with the
lab's reference recomputed under the notebook's own parameters and seed (once per parameter set:
``check_all`` reuses it); a choice is right or wrong. Each question gets its points::

    q1: 5/5 checks passed (public 2/2, hidden 3/3): 3/3 points.

**Class** (the instructor's choice): only the public checks run, and a value is checked for being
well-formed; whether it is right is decided at grading::

    q1: 2/2 public checks passed; 3 hidden checks run at grading.

In both modes hidden inputs and expected answers are never shown (a failed hidden check says how
it failed in the grader's coarse words: "wrong shape", "NaN or infinite values", "wrong result").

Which mode (``resolve_mode``), first match wins:

1. inside a graded run (the grader's sandbox sets ``MINILM_GRADE_JOB``): class. The grader does the
   real grading there, and a check cell must not spend the student's time limit recomputing
   references;
2. the environment variable ``MINILM_MODE=class`` or ``MINILM_MODE=self`` (e.g. set for a whole class
   on a JupyterHub);
3. the notebook's ``MINILM_MODE = "class"`` line, which ``minilm release --class-mode`` writes into
   the parameters cell (and into the notebook's metadata, ``metadata.minilm.mode``, for
   ``minilm check``);
4. otherwise self-study.

Class mode is a courtesy, not a lock: the references ship inside the installed package.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from minilm.grading.checker import (
    CheckResult,
    GraderError,
    QuestionResult,
    ReferenceCache,
    plan_checks,
    probe_request,
    score_question,
)
from minilm.grading.probe import probe_question
from minilm.grading.questions import Lab, Question, require_lab

MODES = ("self", "class")
MODE_ENV = "MINILM_MODE"
MODE_VARIABLE = "MINILM_MODE"  # the notebook variable a class-mode release sets
GRADED_RUN_ENV = "MINILM_GRADE_JOB"  # set by the grader's sandbox (minilm.grading.sandbox.child_env)
CLASS_MODE_LINE = f'{MODE_VARIABLE} = "class"  # set by your instructor: check() runs the public checks only'
_MODE_LINE = re.compile(rf"^\s*{MODE_VARIABLE}\s*=\s*['\"](\w+)['\"]", re.MULTILINE)

# Measured values' references, recomputed once per (question, parameters) in this process.
_REFERENCES = ReferenceCache()


def _valid_mode(value: Any, where: str) -> str:
    text = str(value).strip().lower()
    if text not in MODES:
        raise ValueError(f"{where} is {value!r}: use 'self' (self-study, the real verdict) or 'class' "
                         "(public checks only, graded later)")
    return text


def resolve_mode(namespace: dict[str, Any] | None = None, nb: Any = None) -> str:
    """``"self"`` or ``"class"``: a graded run, then ``$MINILM_MODE``, then the notebook, then self-study.

    ``namespace`` is the notebook's globals (its ``MINILM_MODE`` variable), ``nb`` a notebook file's
    node (its metadata or its ``MINILM_MODE = "..."`` line), for commands that read the file.
    """
    if os.environ.get(GRADED_RUN_ENV):
        return "class"
    env = os.environ.get(MODE_ENV, "").strip()
    if env:
        return _valid_mode(env, f"the environment variable {MODE_ENV}")
    if namespace is not None and namespace.get(MODE_VARIABLE) is not None:
        return _valid_mode(namespace[MODE_VARIABLE], f"the notebook's {MODE_VARIABLE}")
    if nb is not None:
        found = notebook_mode(nb)
        if found is not None:
            return found
    return "self"


def notebook_mode(nb: Any) -> str | None:
    """The mode a notebook file declares (metadata ``minilm.mode``, or its ``MINILM_MODE`` line), if any."""
    meta = nb.get("metadata", {}).get("minilm", {})
    if isinstance(meta, dict) and meta.get("mode") in MODES:
        return meta["mode"]
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            m = _MODE_LINE.search(cell.get("source", ""))
            if m:
                return _valid_mode(m.group(1), f"the notebook's {MODE_VARIABLE}")
    return None


def mark_class_mode(nb: Any) -> Any:
    """Make a released notebook (an ``nbformat`` node, changed in place) run its checks in class mode.

    Adds ``CLASS_MODE_LINE`` to the cell tagged ``parameters`` (a new first code cell when there is
    none) and ``mode: "class"`` to ``metadata.minilm``. Returns ``nb``.
    """
    import nbformat

    if notebook_mode(nb) == "class":
        return nb
    tagged = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.get("metadata", {}).get("tags", [])]
    cell = tagged[0] if tagged else None
    if cell is None:
        cell = nbformat.v4.new_code_cell(CLASS_MODE_LINE)
        cell["id"] = "minilm-mode"
        nb.cells.insert(0, cell)
    else:
        cell.source = cell.source.rstrip("\n") + "\n" + CLASS_MODE_LINE
    nb.metadata.setdefault("minilm", {})["mode"] = "class"
    return nb


@dataclass
class SelfCheck:
    """What one check found. ``public_points`` are the points the public checks carry;
    ``earned_points`` what was earned by the checks that ran (all of them in self-study mode)."""

    question: str
    passed: int
    total: int
    hidden: int
    public_points: float
    earned_points: float
    points: float
    ok: bool
    lines: list[str] = field(default_factory=list)
    mode: str = "class"

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def self_check(lab: Lab, question: str | Question, namespace: dict[str, Any], mode: str | None = None,
               seed: int | None = None) -> SelfCheck:
    """Check ``question`` on the objects in ``namespace``; nothing is printed.

    ``mode``: ``"self"`` (every check, the verdict), ``"class"`` (public checks only) or ``None``
    (``resolve_mode(namespace)``). ``seed``: the hidden inputs' seed in self-study mode (default:
    drawn now, as the grader does).
    """
    lab = require_lab(lab)
    q = question if isinstance(question, Question) else lab.question(question)
    mode = _valid_mode(mode, "mode") if mode is not None else resolve_mode(namespace)
    if mode == "class":
        checks = plan_checks(q, seed=0, public_only=True)
        reply = probe_question(probe_request(q, checks), namespace)
        return summarize(q, score_question(q, checks, reply), mode)
    seed = secrets.randbits(63) if seed is None else int(seed)
    checks = plan_checks(q, seed=seed)
    # The reply goes through strict JSON, as the grader's does (the same values, the same checks).
    reply = json.loads(json.dumps(probe_question(probe_request(q, checks), namespace), allow_nan=False))
    start = time.perf_counter()
    result = summarize(q, score_question(q, checks, reply, _REFERENCES), mode)
    took = time.perf_counter() - start
    failed = next((c.expected for c in checks if isinstance(c.expected, GraderError)), None)
    if failed is not None:  # no instructor to tell in self-study: say what the reference refused
        result.lines.append(f"  - {failed}")
    if q.kind == "value" and q.reference is not None and took > 2.0:
        result.lines.append(f"  (the reference was recomputed under this notebook's parameters in {took:.0f} s; "
                            "later checks with the same parameters reuse it)")
    return result


def _hidden_reason(check: CheckResult) -> str:
    from minilm.grading.report import coarse_reason  # the grader's own words for a student

    return coarse_reason(check)


def summarize(q: Question, result: QuestionResult, mode: str = "class") -> SelfCheck:
    """The summary of ``result`` in ``mode`` (shared with ``minilm check``).

    In class mode ``result`` holds the public checks only; in self-study mode, all of them.
    """
    public_weight = sum(c.weight for c in q.public)
    total_weight = public_weight + sum(h.n * h.weight for h in q.hidden)
    public_points = q.points * public_weight / total_weight if q.kind == "function" else 0.0
    if mode == "self":
        return _summarize_self(q, result, public_points)
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


def _summarize_self(q: Question, result: QuestionResult, public_points: float) -> SelfCheck:
    """Self-study: the verdict and the points, every check counted; hidden inputs never shown."""
    score = f"{result.score:.4g}/{q.points:g} points"
    passed = sum(c.passed for c in result.checks)
    n_hidden = q.n_hidden
    if result.status == "missing":
        lines = [f"{q.name}: {q.target} is not defined: run the cell that defines it, then check again "
                 f"(0/{q.points:g} points)."]
        return SelfCheck(q.name, 0, len(result.checks), n_hidden, public_points, 0.0, q.points, False, lines, "self")
    if q.kind == "value":
        check = result.checks[0] if result.checks else None
        if result.status == "grader-error":  # e.g. a parameter out of the reference's range
            lines = [f"{q.name}: not checked: the reference could not be computed for this notebook's "
                     f"parameters ({score} until it can)."]
        elif result.status != "ok" or check is None:
            lines = [f"{q.name}: {result.message or result.status}: {score}."]
        elif check.passed:
            lines = [f"{q.name}: right: {score}."]
        elif q.choices is not None and check.message.endswith("wrong value"):
            lines = [f"{q.name}: that is not the right choice: {score}."]
        else:
            lines = [f"{q.name}: not right ({check.message}): {score}."]
    else:
        public = [c for c in result.checks if c.visibility == "public"]
        hidden = [c for c in result.checks if c.visibility == "hidden"]
        parts = ([f"public {sum(c.passed for c in public)}/{len(public)}"] if public else []) + \
                ([f"hidden {sum(c.passed for c in hidden)}/{len(hidden)}"] if hidden else [])
        lines = [f"{q.name}: {passed}/{len(result.checks)} checks passed ({', '.join(parts)}): {score}."]
        if result.status not in ("ok", "grader-error") and result.message:
            lines.append(f"  - {result.message}")
        else:
            lines += [f"  - {c.label}: {c.message}" for c in public if not c.passed]
            lines += [f"  - {c.label}: {_hidden_reason(c)}" for c in hidden if not c.passed]
    ok = result.full and result.status == "ok"
    if not ok and q.hint and result.status != "grader-error":
        lines.append(f"  Hint: {q.hint}")
    return SelfCheck(q.name, passed, len(result.checks), n_hidden, public_points, result.score, q.points, ok,
                     lines, "self")


def total_line(lab: Lab, results: list[SelfCheck], mode: str = "class") -> str:
    """The closing line of ``check_all``: the score (self-study) or what public checks carry (class)."""
    earned = sum(r.earned_points for r in results)
    total = lab.total_points
    if mode == "self":
        return (f"Self-study score: {earned:.4g}/{total:g} points (every check run here, hidden inputs drawn "
                "afresh; a class's grader draws its own).")
    carried = sum(r.public_points for r in results)
    return (
        f"Self-check total: {earned:.4g} of the {carried:.4g} points that public checks carry "
        f"(out of {total:g}). The other {total - carried:.4g} points depend on hidden checks and on "
        f"answers checked only at grading: this is not your grade."
    )


def check_report(lab: Lab, namespace: dict[str, Any], mode: str | None = None, seed: int | None = None) -> str:
    """Every question's check, with its points, and the total (what ``check_all`` prints)."""
    lab = require_lab(lab)
    mode = _valid_mode(mode, "mode") if mode is not None else resolve_mode(namespace)
    seed = secrets.randbits(63) if seed is None and mode == "self" else seed
    lines = [f"Lab {lab.id}: {lab.title}" + (" (self-study mode)" if mode == "self" else " (class mode)")]
    results = []
    for q in lab.questions:
        try:
            result = self_check(lab, q, namespace, mode, seed)
        except Exception as err:  # noqa: BLE001 - one broken answer must not hide the others
            lines.append(f"[{q.points:g} pts] {q.name}: could not be checked: {type(err).__name__}: {err}")
            continue
        results.append(result)
        lines.append(f"[{q.points:g} pts] " + result.text)
    lines.append(total_line(lab, results, mode))
    return "\n".join(lines)
