"""``minilm release``: publish a student notebook only when its grading is sound.

The gates probe functions and values directly (``grade_objects``) and never re-run a lab's
experiments:

1. the declared references score full marks on several seeds (they are deterministic, encodable,
   and agree with themselves within the tolerance);
2. the solution notebook's own functions (and literal answers) score full marks, so the notebook
   and the declared references agree;
3. the student notebook's stubs score zero, and every question's target is a stub there (a
   target the student version defines by a computation would give the answer away);
4. every declared known-wrong answer scores less than full on every seed.

Executing the whole solution notebook end to end (``--execute``) is the expensive check CI runs
once per lab.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minilm.grading import notebook as nbtools
from minilm.grading.grader import grade_objects, reference_namespace
from minilm.grading.questions import Lab, require_lab
from minilm.grading.selfcheck import mark_class_mode

GATE_SEEDS = (0, 1, 2, 3, 4)


class ReleaseError(ValueError):
    """The lab is not fit to publish; ``problems`` says why, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("refusing to release:\n  - " + "\n  - ".join(problems))


@dataclass
class GateReport:
    """What the release gates found: ``problems`` block the release, ``notes`` do not."""

    lab: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _first_failure(result: Any, name: str) -> str:
    q = result.question(name)
    bad = next((c for c in q.checks if not c.passed), None)
    return (bad.label + ": " + bad.message) if bad else (q.message or q.status)


def _namespace_from(nb: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """Define the notebook's functions and literal values (no experiments) in a fresh namespace."""
    code, kinds = nbtools.definitions(nb)
    namespace: dict[str, Any] = {"__name__": "__release_gate__"}
    exec(compile(code, "<notebook definitions>", "exec"), namespace)  # instructor's own notebook
    return namespace, kinds


def check_release(lab: Lab, solution: Any, student: Any, seeds: tuple[int, ...] = GATE_SEEDS) -> GateReport:
    """Run the four gates on notebook nodes ``solution`` and ``student`` (see module docstring)."""
    # Known-wrong answers overflow and divide by zero on purpose: their warnings are noise here.
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return _check_release(lab, solution, student, seeds)


def _check_release(lab: Lab, solution: Any, student: Any, seeds: tuple[int, ...]) -> GateReport:
    report = GateReport(lab.id)
    refs = reference_namespace(lab)
    for seed in seeds:
        result = grade_objects(lab, refs, seed=seed)
        for q in result.questions:
            if not q.full:
                report.problems.append(f"{q.name}: the declared reference scores {q.score:g}/{q.points:g} "
                                       f"(seed {seed}): {_first_failure(result, q.name)}")
        if report.problems:
            break

    sol_ns, sol_kinds = _namespace_from(solution)
    checkable = []
    for q in lab.questions:
        kind = sol_kinds.get(q.target)
        if kind is None:
            report.problems.append(f"{q.name}: the solution notebook never defines {q.target}")
        elif kind == "computed":
            report.notes.append(f"{q.name}: {q.target} is computed by the notebook's experiments; "
                                "it is checked when the solution notebook is executed (--execute, CI)")
        else:
            checkable.append(q.name)
    if checkable:
        result = grade_objects(lab, sol_ns, seed=seeds[0], questions=checkable)
        for q in result.questions:
            if not q.full:
                report.problems.append(f"{q.name}: the solution notebook's {lab.question(q.name).target} scores "
                                       f"{q.score:g}/{q.points:g}: {_first_failure(result, q.name)}")

    stub_ns, stub_kinds = _namespace_from(student)
    for q in lab.questions:
        kind = stub_kinds.get(q.target)
        if kind is None:
            report.problems.append(f"{q.name}: the student notebook never defines {q.target}")
        elif kind == "computed":
            report.problems.append(f"{q.name}: the student notebook computes {q.target} itself, which gives the "
                                   "answer away: mark that line with '# SOLUTION'")
    for seed in seeds[:1]:
        result = grade_objects(lab, stub_ns, seed=seed)
        for q in result.questions:
            if q.score > 0:
                report.problems.append(f"{q.name}: the student notebook's stub scores {q.score:g}/{q.points:g}: "
                                       "put the solution inside ### BEGIN SOLUTION / ### END SOLUTION")

    for q in lab.questions:
        for k, wrong in enumerate(q.wrong):
            for seed in seeds:
                result = grade_objects(lab, {q.target: wrong}, seed=seed, questions=[q.name])
                if result.questions[0].full:
                    report.problems.append(f"{q.name}: known-wrong answer #{k + 1} scores full marks (seed {seed}): "
                                           "make the checks catch it (e.g. hidden inputs it gets wrong)")
                    break
    return report


def student_path(solution_path: str | os.PathLike) -> Path:
    """Where the student notebook of an instructor source goes by default.

    ``solutions/X.ipynb`` -> ``labs/X.ipynb`` when a ``labs/`` folder sits beside ``solutions/`` (the
    course's layout: the sources live outside the folder students open); otherwise the sources'
    parent folder (``demo/solutions/X.ipynb`` -> ``demo/X.ipynb``).
    """
    solution_path = Path(solution_path)
    home = solution_path.parent.parent
    return (home / "labs" if (home / "labs").is_dir() else home) / solution_path.name


def release_lab(
    solution_path: str | os.PathLike,
    out_path: str | os.PathLike | None = None,
    *,
    lab: Lab,
    check: bool = True,
    seeds: tuple[int, ...] = GATE_SEEDS,
    class_mode: bool = False,
) -> GateReport:
    """Build the student notebook from ``solution_path`` and write it, if the gates pass.

    ``lab`` is the lab's declared questions (``minilm.labs.get_lab(id)``). ``out_path`` defaults
    to ``student_path(solution_path)`` (``solutions/X.ipynb`` -> ``labs/X.ipynb``). Raises
    ``ReleaseError`` (nothing written) when a gate fails. ``class_mode``: the notebook's checks run
    the public checks only (``minilm.grading.selfcheck.mark_class_mode``); by default they give
    the self-study verdict.
    """
    lab_obj = require_lab(lab)
    solution_path = Path(solution_path)
    if not solution_path.exists():
        raise ValueError(f"{solution_path} does not exist")
    solution = nbtools.read_notebook(solution_path)
    named = nbtools.lab_id_of(solution, solution_path)
    if named is not None and named != lab_obj.id:
        raise ValueError(f"{solution_path.name} is lab {named}, not lab {lab_obj.id}: pass that lab's questions")
    text = nbtools.release_text(solution_path, lab_obj.id)
    if class_mode:
        import nbformat

        text = nbformat.writes(mark_class_mode(nbformat.reads(text, as_version=4))) + "\n"
    out_path = Path(out_path) if out_path is not None else student_path(solution_path)
    report = GateReport(lab_obj.id)
    if check:
        import nbformat

        report = check_release(lab_obj, solution, nbformat.reads(text, as_version=4), seeds)
        if report.problems:
            raise ReleaseError(report.problems)
    nbtools.write_atomic(out_path, text)
    return report
