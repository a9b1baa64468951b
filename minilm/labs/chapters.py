"""Chapter figures from records: the numbers a chapter quotes from a lab run, kept equal to the run.

A chapter (``course/NN_topic.md``) quotes a figure that a lab recorded (``minilm.records``)
inside an invisible marker::

    the decay drops the loss by <!--fig 04.decay_drop .3f-->0.052<!--/fig--> nats

``04.decay_drop`` names lab 04's figure ``decay_drop`` in the committed reference record
``course/records/lab04.json`` (the lab's fast-mode run); ``.3f`` is the Python format spec the
number is written with (``.1%``, ``.2e``, ``.0f`` ...). Markdown hides the comments, so a reader
sees ``0.052``. A spec may start with one transform of the value, for numbers a chapter derives
from a recorded figure: ``unc:.4f`` (the figure's uncertainty), ``abs:`` (its magnitude),
``bits:`` (nats / ln 2), ``exp:`` (e^x, a perplexity from a loss in nats) and ``inv:`` (1/x). Keep a marker out
of LaTeX (``$h =$ <!--fig ...-->...<!--/fig-->``): a comment inside math is not hidden.

``sync`` rewrites every marker's text from the records (``minilm course sync``);
``check`` lists the markers whose text disagrees with their record or that name a figure no
record has (``minilm course sync --check``, and ``tests/test_chapter_figures.py`` in CI).

Write the reference records with ``MINILM_RESULTS_DIR=course/records minilm lab run NN``.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minilm.atomic import atomic_write_text
from minilm.records import Record, read_record

_OPEN = "<!--fig"
_CLOSE = "<!--/fig-->"
# <!--fig NN.name SPEC-->text<!--/fig-->; the text may not span lines or hold another comment.
_MARKER = re.compile(r"<!--fig (?P<lab>\d\d)\.(?P<name>[a-z][a-z0-9_]*) (?P<spec>[^\s<>]+?)-->"
                     r"(?P<text>[^\n<]*)<!--/fig-->")
# Transforms a spec may start with ("bits:.2f"): numbers a chapter derives from a recorded figure.
_TRANSFORMS = {"abs": abs, "bits": lambda x: x / math.log(2), "exp": math.exp, "inv": lambda x: 1 / x}
_SYNTAX = "<!--fig NN.figure_name SPEC-->number<!--/fig-->, e.g. <!--fig 04.decay_drop .3f-->0.052<!--/fig-->"


class ChapterError(ValueError):
    """A malformed figure marker in a chapter; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class Marker:
    """One ``<!--fig NN.name SPEC-->text<!--/fig-->`` in a chapter: where it is and what it says."""

    path: Path
    line: int           # 1-based line of the marker's start
    lab: str            # "04"
    name: str           # "decay_drop"
    spec: str           # ".3f", or with a transform "bits:.2f", "unc:.4f"
    text: str           # what the chapter says now
    start: int          # character span of the text inside the file
    end: int

    @property
    def figure_id(self) -> str:
        return f"{self.lab}.{self.name}"

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Problem:
    """A marker that disagrees with its record (``expected`` set) or names no recorded figure."""

    marker: Marker
    message: str
    expected: str | None = None

    def __str__(self) -> str:
        return f"{self.marker.where}: {self.message}"


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def find_markers(text: str, path: str | Path = "<chapter>") -> list[Marker]:
    """Every figure marker in ``text`` (a chapter's Markdown), in order.

    Raises ``ChapterError`` naming ``path`` and the line for a marker that is malformed: an
    opening without its ``<!--/fig-->`` on the same line, a closing without an opening, a lab or
    figure name that is not ``NN.snake_case``, or a format spec Python does not accept.
    """
    path = Path(path)
    markers: list[Marker] = []
    pos = 0
    while True:
        start = text.find(_OPEN, pos)
        stray = text.find(_CLOSE, pos)
        if stray != -1 and (start == -1 or stray < start):
            raise ChapterError(f"{path}:{_line_of(text, stray)}: {_CLOSE} without its opening marker; "
                               f"a chapter figure is written {_SYNTAX}")
        if start == -1:
            return markers
        m = _MARKER.match(text, start)
        if m is None:
            line_end = text.find("\n", start)
            snippet = text[start: line_end if line_end != -1 else len(text)][:80]
            raise ChapterError(f"{path}:{_line_of(text, start)}: malformed figure marker {snippet!r}: write "
                               f"{_SYNTAX} (lab and figure name, one space, a format spec, the number, and "
                               "the closing marker on the same line)")
        spec = m["spec"]
        transform, _, fmt = spec.rpartition(":")
        if transform and transform not in (*_TRANSFORMS, "unc"):
            raise ChapterError(f"{path}:{_line_of(text, start)}: figure {m['lab']}.{m['name']} has an unknown "
                               f"transform {transform!r} in {spec!r}; the transforms are "
                               f"{', '.join(sorted((*_TRANSFORMS, 'unc')))} (e.g. bits:.2f)")
        try:
            format(1.5, fmt)
        except ValueError as err:
            raise ChapterError(f"{path}:{_line_of(text, start)}: figure {m['lab']}.{m['name']} has format spec "
                               f"{fmt!r}, which Python rejects ({err}); use one like .3f, .1%, .2e or .0f") from None
        markers.append(Marker(path, _line_of(text, start), m["lab"], m["name"], spec, m["text"],
                              m.start("text"), m.end("text")))
        pos = m.end()


def load_records(records_dir: str | Path) -> dict[str, Record]:
    """The reference records in ``records_dir`` (``labNN.json``), by lab id; a malformed one raises."""
    records = {}
    for path in sorted(Path(records_dir).glob("lab[0-9][0-9].json")):
        rec = read_record(path)
        records[rec.lab] = rec
    return records


def render(marker: Marker, records: dict[str, Record]) -> str:
    """The text ``marker`` should hold: its figure's value (transformed, if the spec says so) formatted.

    Raises ``KeyError`` with the reason when no record has that figure (or, for ``unc:``, no uncertainty).
    """
    rec = records.get(marker.lab)
    if rec is None:
        raise KeyError(f"figure {marker.figure_id}: there is no reference record of lab {marker.lab} "
                       f"(course/records/lab{marker.lab}.json); write it with "
                       f"MINILM_RESULTS_DIR=course/records minilm lab run {marker.lab}")
    fig = rec.figures.get(marker.name)
    if fig is None:
        raise KeyError(f"figure {marker.figure_id}: lab {marker.lab}'s record has no figure {marker.name!r} "
                       f"(it has {', '.join(sorted(rec.figures))})")
    transform, _, fmt = marker.spec.rpartition(":")
    if transform == "unc":
        if fig.uncertainty is None:
            raise KeyError(f"figure {marker.figure_id} has no uncertainty in lab {marker.lab}'s record")
        return format(fig.uncertainty, fmt)
    value = _TRANSFORMS[transform](fig.value) if transform else fig.value
    return format(value, fmt)


def chapters(course_dir: str | Path) -> list[Path]:
    """The chapters of the course folder: its ``NN_topic.md`` files."""
    return sorted(p for p in Path(course_dir).glob("[0-9][0-9]_*.md") if p.is_file())


def _problems(markers: list[Marker], records: dict[str, Record]) -> list[Problem]:
    found = []
    for marker in markers:
        try:
            expected = render(marker, records)
        except KeyError as err:
            found.append(Problem(marker, str(err.args[0])))
            continue
        if marker.text != expected:
            found.append(Problem(marker, f"figure {marker.figure_id} reads {marker.text!r} but its record gives "
                                         f"{expected!r}: run `minilm course sync`", expected))
    return found


def check(course_dir: str | Path, records_dir: str | Path | None = None,
          files: list[Path] | None = None) -> list[Problem]:
    """Every marker in the chapters that disagrees with its record or names a figure no record has.

    ``records_dir`` defaults to ``<course_dir>/records``; ``files`` to every chapter of ``course_dir``.
    """
    records = load_records(Path(course_dir) / "records" if records_dir is None else records_dir)
    problems = []
    for path in chapters(course_dir) if files is None else files:
        problems += _problems(find_markers(Path(path).read_text(encoding="utf-8"), path), records)
    return problems


def sync(course_dir: str | Path, records_dir: str | Path | None = None,
         files: list[Path] | None = None) -> tuple[list[Problem], list[Problem]]:
    """Rewrite every marker's text from the records; returns (changed, unresolved).

    ``changed``: the markers rewritten (each ``Problem.expected`` is the new text). ``unresolved``:
    markers naming a figure no record has, left as they are. Files are rewritten atomically, and
    only when something in them changed.
    """
    records = load_records(Path(course_dir) / "records" if records_dir is None else records_dir)
    changed, unresolved = [], []
    for path in chapters(course_dir) if files is None else files:
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        problems = _problems(find_markers(text, path), records)
        edits = [p for p in problems if p.expected is not None]
        unresolved += [p for p in problems if p.expected is None]
        if not edits:
            continue
        for p in sorted(edits, key=lambda p: p.marker.start, reverse=True):  # back to front: spans stay valid
            text = text[:p.marker.start] + p.expected + text[p.marker.end:]
        atomic_write_text(path, text)
        changed += edits
    return changed, unresolved


# ------------------------------------------------------------------------- command line
def _default_course_dir() -> Path:
    from minilm.labs.runner import labs_dir

    return labs_dir().parent / "course"


def _cmd_sync(args: argparse.Namespace) -> int:
    course = Path(args.course) if args.course else _default_course_dir()
    if not course.is_dir():
        raise FileNotFoundError(f"no course folder at {course}: pass --course DIR (the folder of NN_topic.md)")
    records = Path(args.records) if args.records else course / "records"
    # A malformed marker or record raises ChapterError / RecordError (ValueErrors): minilm.cli prints
    # the message on one line and exits with status 2.
    if args.check:
        problems = check(course, records)
        for p in problems:
            print(p)
        n = sum(len(find_markers(p.read_text(encoding="utf-8"), p)) for p in chapters(course))
        print(f"{n} chapter figures checked against {records}: "
              + (f"{len(problems)} disagree or are unknown" if problems else "all agree"))
        return 1 if problems else 0
    changed, unresolved = sync(course, records)
    for p in changed:
        print(f"{p.marker.where}: {p.marker.figure_id} {p.marker.text} -> {p.expected}")
    for p in unresolved:
        print(p)
    print(f"{len(changed)} chapter figures rewritten from {records}"
          + (f"; {len(unresolved)} name no recorded figure" if unresolved else ""))
    return 1 if unresolved else 0


def add_commands(subparsers: Any) -> None:
    """Register ``minilm course sync [--check]`` on ``ArgumentParser.add_subparsers()``'s result."""
    p = subparsers.add_parser("course", help="the course's chapters: keep their figures equal to the lab records")
    course_sub = p.add_subparsers(dest="course_command", metavar="ACTION", required=True)
    q = course_sub.add_parser(
        "sync", help="rewrite the chapters' recorded figures from course/records/",
        description="Rewrite the text of every <!--fig NN.name SPEC-->...<!--/fig--> marker in the chapters "
                    "from the reference records (course/records/labNN.json). --check changes nothing and exits "
                    "with status 1 when a chapter disagrees with its record or names a figure no record has.")
    q.add_argument("--check", action="store_true", help="only list disagreements (status 1 if any)")
    q.add_argument("--course", default=None, help="the course folder (default: course/ of this checkout)")
    q.add_argument("--records", default=None, help="the records folder (default: COURSE/records)")
    q.set_defaults(func=_cmd_sync)


__all__ = ["ChapterError", "Marker", "Problem", "add_commands", "chapters", "check", "find_markers",
           "load_records", "render", "sync"]
