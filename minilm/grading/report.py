"""Writing grades: Gradescope ``results.json``, the class CSV, feedback, the tamper report.

Every file is written atomically (a temporary file, then a rename), and only after every
student process is gone, so a submission cannot leave a half-written or forged report behind.

Layout of ``minilm grade ... --out DIR``::

    DIR/grades.csv                one row per student: a column per question, total, status
    DIR/summary.json              the run: lab, master seed (to reproduce hidden inputs), totals
    DIR/tamper.md, tamper.json    for the instructor: edited locked cells, missing answers,
                                  identical code across students, crashes and timeouts
    DIR/feedback/<student>.md     safe to send: scores, public-check messages, hints;
                                  hidden checks only as passed/failed with a coarse reason
    DIR/gradescope/<student>.json Gradescope's results.json format
    DIR/instructor/<student>.json everything, hidden-check messages included
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from minilm.grading.checker import CheckResult, QuestionResult
from minilm.grading.grader import GradeResult
from minilm.grading.notebook import write_atomic

MAX_FEEDBACK_CHARS = 20_000
# Text a submission controls (its error messages, cell lines, file names) is copied into reports
# only through these: one line, no control or direction-changing characters, markdown inert.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>|!~&#])")


def plain(text: Any, limit: int = 300) -> str:
    """``text`` on one line, without control characters, at most ``limit`` characters."""
    return _CONTROL.sub(" ", str(text))[:limit]


def md(text: Any, limit: int = 300) -> str:
    """Untrusted ``text`` made safe inside a markdown line: it cannot start a heading, a list item,
    a link, an image, HTML, a table cell or emphasis, nor break the line."""
    return _MD_SPECIAL.sub(r"\\\1", plain(text, limit))


def csv_cell(text: Any) -> str:
    """A CSV field that a spreadsheet will not run as a formula (OWASP's CSV injection advice)."""
    text = plain(text, 1000)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def coarse_reason(check: CheckResult) -> str:
    """What went wrong in a hidden check, without numbers that could hint at the answer."""
    m = check.message
    if check.passed:
        return "passed"
    if m.startswith("raised "):
        return "raised " + m[len("raised "):].split(":")[0]
    if "NaN or infinite" in m or "got nan" in m or "got inf" in m or "got -inf" in m:
        return "NaN or infinite values"
    if "expected shape" in m:
        return "wrong shape"
    if "not one of the choices" in m:
        return "not one of the choices"
    if ": expected " in m or m.startswith("expected "):
        return "wrong type"
    if "timed out" in m or "ran longer" in m:
        return "timed out"
    if "could not be graded" in m:
        return "not graded (grader problem)"
    if "not defined" in m:
        return "not defined"
    if "in place" in m:  # a pure question's check: the result was right, the inputs were changed
        return "changed its inputs in place"
    return "wrong result"


def _cell_name(cell: dict) -> str:
    return f"cell {md(cell.get('index'), 10)} ({md(repr(str(cell.get('first_line', ''))), 80)})"


def _question_lines(q: QuestionResult, student_view: bool) -> list[str]:
    lines = [f"### {q.name}: {q.score:.4g} / {q.points:g}" + (f" — {q.title}" if q.title else "")]
    if q.status not in ("ok",):
        lines.append(f"- {md(q.message or q.status)}")
    if q.status == "ok":
        public = [c for c in q.checks if c.visibility == "public"]
        hidden = [c for c in q.checks if c.visibility == "hidden"]
        if public:
            lines.append(f"- public checks: {sum(c.passed for c in public)}/{len(public)} passed")
            lines += [f"  - {c.label}: {md(c.message)}" for c in public if not c.passed]
        if hidden:
            lines.append(f"- graded checks: {sum(c.passed for c in hidden)}/{len(hidden)} passed")
            for c in hidden:
                if not c.passed:
                    lines.append(f"  - {c.label}: {md(coarse_reason(c) if student_view else c.message)}")
    if not q.full and q.hint:
        lines.append(f"- hint: {q.hint}")
    return lines


def feedback_text(result: GradeResult) -> str:
    """Feedback for the student: no hidden input, expected value or distance to it."""
    lines = [f"# Lab {result.lab}: {result.score:.4g} / {result.max_score:g}", ""]
    if result.status != "ok":
        lines += [f"Grading status: {result.status}. {md(result.message, 500)}", ""]
    for q in result.questions:
        lines += _question_lines(q, student_view=True) + [""]
    if result.cells:
        lines.append("Cells that did not run cleanly:")
        lines += [f"- {_cell_name(c)}: {md(c.get('status'), 20)} ({md(c.get('error', ''), 120)})"
                  for c in result.cells[:20]]
    text = "\n".join(lines).rstrip() + "\n"
    return text if len(text) <= MAX_FEEDBACK_CHARS else text[:MAX_FEEDBACK_CHARS] + "\n[feedback truncated]\n"


def gradescope_json(result: GradeResult, hidden_visibility: str = "after_published") -> dict:
    """Gradescope's ``results.json``: one test per question's public checks, one for its graded checks."""
    tests: list[dict[str, Any]] = []
    for q in result.questions:
        total_w = sum(c.weight for c in q.checks) or 1.0
        groups = (("public", "public checks", "visible"), ("hidden", "graded checks", hidden_visibility))
        for vis, label, visibility in groups:
            group = [c for c in q.checks if c.visibility == vis]
            if not group:
                continue
            max_score = q.points * sum(c.weight for c in group) / total_w
            score = q.points * sum(c.weight for c in group if c.passed) / total_w
            out = [f"{sum(c.passed for c in group)}/{len(group)} passed"]
            for c in group:
                if not c.passed:
                    out.append(f"{c.label}: {plain(c.message) if vis == 'public' else coarse_reason(c)}")
            if q.status != "ok":
                out.insert(0, plain(q.message or q.status))
            if score < max_score - 1e-9 and q.hint:
                out.append(f"Hint: {q.hint}")
            tests.append({
                "name": f"{q.name} ({label})" + (f": {q.title}" if q.title else ""),
                "score": round(score, 4), "max_score": round(max_score, 4),
                "status": "passed" if score >= max_score - 1e-9 else "failed",
                "output": "\n".join(out)[:5000], "output_format": "text", "visibility": visibility,
            })
        if not q.checks:  # e.g. an invalid notebook: nothing was planned
            tests.append({"name": q.name, "score": 0.0, "max_score": q.points, "status": "failed",
                          "output": plain(q.message or q.status, 5000), "output_format": "text",
                          "visibility": "visible"})
    if hidden_visibility == "visible":
        summary = f"Lab {result.lab}: {result.score:.4g} / {result.max_score:g}."
    else:  # the total would reveal the graded checks before they are published
        public = [t for t in tests if t["visibility"] == "visible"]
        summary = (f"Lab {result.lab}: public checks {sum(t['score'] for t in public):.4g} / "
                   f"{sum(t['max_score'] for t in public):.4g}; the graded checks appear when grades are published.")
    if result.status != "ok":
        summary += f" Grading status: {result.status}. {plain(result.message, 500)}"
    return {
        "score": round(result.score, 4), "output": summary, "output_format": "text", "visibility": "visible",
        "stdout_visibility": "hidden", "execution_time": int(result.duration_s), "tests": tests,
    }


def class_csv(results: list[GradeResult], question_names: list[str]) -> str:
    """One row per student: a column per question, total, max, status, tamper findings count."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["student", *question_names, "total", "max", "status", "review_items", "submission"])
    for r in results:
        scores = {q.name: q.score for q in r.questions}
        w.writerow([csv_cell(r.student), *[f"{scores.get(n, 0.0):.4g}" for n in question_names], f"{r.score:.4g}",
                    f"{r.max_score:g}", csv_cell(r.status), len(review_items(r)),
                    csv_cell(os.path.basename(r.submission))])
    return buf.getvalue()


def duplicate_answers(results: Iterable[GradeResult]) -> list[str]:
    """Questions where several students submitted the very same code (comments aside)."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in results:
        for name, code in r.answers.items():
            groups[(name, code)].append(r.student)
    return [f"{name}: identical code from {', '.join(sorted(students))}"
            for (name, _), students in sorted(groups.items()) if len(students) > 1]


def review_items(r: GradeResult) -> list[str]:
    """One student's entries in ``tamper.md`` (markdown-safe), also counted in ``grades.csv``."""
    items = [md(t, 400) for t in r.tamper]
    items += [f"{_cell_name(c)}: {md(c.get('status'), 20)} ({md(c.get('error', ''), 150)})"
              for c in r.cells if c.get("status") in ("timeout", "crashed", "not-run")]
    items += [f"{md(q.name, 40)}: {md(q.status, 20)} ({md(q.message, 150)})" for q in r.questions
              if q.status in ("timeout", "crashed", "error", "grader-error")]
    if r.status != "ok":
        items.insert(0, f"grading status {md(r.status, 20)}: {md(r.message, 300)}")
    return items


def tamper_report(results: list[GradeResult]) -> tuple[str, dict]:
    """The instructor's review list (markdown, JSON)."""
    dupes = duplicate_answers(results)
    data: dict[str, Any] = {"duplicates": dupes, "students": {}}
    lines = ["# Items to review", ""]
    if dupes:
        lines += ["## Identical answers across students", *[f"- {md(d, 2000)}" for d in dupes], ""]
    for r in results:
        items = review_items(r)
        if items:
            data["students"][r.student] = items
            lines += [f"## {md(r.student, 100)}", *[f"- {i}" for i in items], ""]
    if len(lines) == 2:
        lines.append("Nothing to review.")
    return "\n".join(lines) + "\n", data


def _swap_in(staged: Path, target: Path) -> None:
    """Replace folder ``target`` by ``staged`` (whatever ``target`` was: folder, file or link)."""
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        old = Path(tempfile.mkdtemp(prefix=".old-", dir=target.parent))
        os.replace(target, old / target.name)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(staged, target)


def write_reports(results: list[GradeResult], out_dir: str | os.PathLike, lab_id: str, question_names: list[str],
                  master_seed: int, hidden_visibility: str = "after_published",
                  protections: list[str] | None = None, class_deadline_s: float | None = None) -> Path:
    """Write every report of a grading run under ``out_dir`` (see module docstring).

    ``protections``: what isolated student code during the run (``grader.sandbox_plan``), recorded
    in ``summary.json``, with the class deadline (``class_deadline_s``) and the students it left
    not graded.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Per-student folders are built aside, then swapped in whole: anything planted in them while
    # student code ran (a fake results file) disappears with the old folder.
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        for r in results:
            write_atomic(staging / "feedback" / f"{r.student}.md", feedback_text(r))
            write_atomic(staging / "gradescope" / f"{r.student}.json",
                         json.dumps(gradescope_json(r, hidden_visibility), indent=1) + "\n")
            write_atomic(staging / "instructor" / f"{r.student}.json",
                         json.dumps(r.to_dict(), indent=1, default=str) + "\n")
        for sub in ("feedback", "gradescope", "instructor"):
            (staging / sub).mkdir(exist_ok=True)
            _swap_in(staging / sub, out / sub)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    md, data = tamper_report(results)
    write_atomic(out / "tamper.md", md)
    write_atomic(out / "tamper.json", json.dumps(data, indent=1) + "\n")
    write_atomic(out / "grades.csv", class_csv(results, question_names))
    summary = {
        "lab": lab_id, "master_seed": master_seed, "graded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "protections": protections if protections is not None else
        sorted({p for r in results for p in r.protections}),
        "students": {r.student: {"score": r.score, "max_score": r.max_score, "status": r.status} for r in results},
        "class_deadline_s": class_deadline_s,
        "not_graded": [r.student for r in results if r.status == "not-graded"],
    }
    write_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return out
