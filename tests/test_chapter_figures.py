"""Chapter figures come from runs: every marked number in a chapter equals its lab's reference record.

A chapter quotes a recorded figure as ``<!--fig NN.name SPEC-->text<!--/fig-->`` (minilm.labs.chapters);
``minilm course sync`` rewrites the text from ``course/records/labNN.json``. The first tests fail as
soon as a chapter's text disagrees with its record or names a figure no record has; the rest test
the marker tool itself on small chapters written to a temporary folder.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from minilm.cli import main
from minilm.labs.chapters import ChapterError, chapters, check, find_markers, load_records, sync
from minilm.records import figure, write_record

COURSE = Path(__file__).resolve().parents[1] / "course"
RECORDS = COURSE / "records"
CHAPTERS = chapters(COURSE)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_every_marked_figure_agrees_with_its_reference_record(chapter):
    problems = check(COURSE, RECORDS, files=[chapter])
    assert not problems, "run `minilm course sync` (or fix the marker):\n" + "\n".join(map(str, problems))


def test_the_reference_records_are_valid():
    # load_records raises RecordError, naming the file, for any malformed record
    records = load_records(RECORDS)
    for lab, rec in records.items():
        assert rec.provenance["mode"] == "fast", f"lab{lab}.json: the reference records are fast-mode runs"


def test_chapters_of_recorded_labs_quote_their_records():
    """A lab with a reference record has a chapter that quotes at least one recorded figure."""
    records = load_records(RECORDS)
    for lab in records:
        chapter = [p for p in CHAPTERS if p.name.startswith(f"{lab}_")]
        if not chapter:
            continue
        labs_quoted = {m.lab for m in find_markers(chapter[0].read_text(encoding="utf-8"), chapter[0])}
        assert lab in labs_quoted, f"{chapter[0].name} quotes no figure of course/records/lab{lab}.json"


# ------------------------------------------------------------------------- the marker tool
def _course(tmp_path: Path, text: str, value: float = 0.0523) -> tuple[Path, Path]:
    course, records = tmp_path / "course", tmp_path / "course" / "records"
    course.mkdir()
    write_record("04", {"decay_drop": figure(value, "nats"), "steps": figure(400)}, mode="fast", seed=0,
                 folder=records, verbose=False)
    (course / "04_schedules.md").write_text(text, encoding="utf-8")
    return course, records


def test_find_markers_reads_lab_name_spec_text_and_line():
    text = "line one\nthe drop is <!--fig 04.decay_drop .3f-->0.052<!--/fig--> nats, " \
           "in <!--fig 04.steps .0f-->400<!--/fig--> steps\n"
    a, b = find_markers(text, "ch.md")
    assert (a.lab, a.name, a.spec, a.text, a.line) == ("04", "decay_drop", ".3f", "0.052", 2)
    assert (b.name, b.spec, b.text) == ("steps", ".0f", "400")
    assert text[a.start:a.end] == "0.052"
    assert find_markers("no markers here, <!-- an ordinary comment -->") == []


@pytest.mark.parametrize("bad, what", [
    ("x <!--fig 04.decay_drop .3f-->0.052\nmore<!--/fig-->", "malformed"),     # closing on another line
    ("x <!--fig 04.decay_drop .3f-->0.052", "malformed"),                      # no closing at all
    ("x <!--fig 4.decay_drop .3f-->0.052<!--/fig-->", "malformed"),            # lab id not two digits
    ("x <!--fig 04.DecayDrop .3f-->0.052<!--/fig-->", "malformed"),            # name not snake_case
    ("x <!--fig 04.decay_drop-->0.052<!--/fig-->", "malformed"),               # no format spec
    ("x <!--fig 04.decay_drop .3q-->0.052<!--/fig-->", "format spec"),         # spec Python rejects
    ("x <!--fig 04.decay_drop log:.3f-->0.052<!--/fig-->", "unknown transform"),  # no such transform
    ("x 0.052<!--/fig--> y", "without its opening"),                           # stray closing
])
def test_a_malformed_marker_is_a_clear_error_naming_file_and_line(bad, what):
    with pytest.raises(ChapterError) as err:
        find_markers("# title\n\n" + bad, "course/04_schedules.md")
    message = str(err.value)
    assert message.startswith("course/04_schedules.md:3: ") and what in message
    assert "<!--fig 04.decay_drop .3f-->0.052<!--/fig-->" in message or "Python rejects" in message \
        or "the transforms are abs, bits, exp, inv, unc" in message


def test_transforms_derive_a_number_from_a_recorded_figure(tmp_path):
    course, records = tmp_path / "course", tmp_path / "records"
    course.mkdir()
    write_record("00", {"loss": figure(1.734, "nats/char", uncertainty=0.0064), "gap": figure(-0.25)}, mode="fast",
                 seed=0, folder=records, verbose=False)
    (course / "00_x.md").write_text("<!--fig 00.loss bits:.2f-->?<!--/fig--> <!--fig 00.loss exp:.2f-->?<!--/fig--> "
                                    "<!--fig 00.loss unc:.4f-->?<!--/fig--> <!--fig 00.gap abs:.2f-->?<!--/fig--> "
                                    "<!--fig 00.gap unc:.2f-->?<!--/fig--> <!--fig 00.gap inv:.1f-->?<!--/fig-->\n")
    changed, unresolved = sync(course, records)
    assert [p.expected for p in changed] == [f"{1.734 / math.log(2):.2f}", f"{math.exp(1.734):.2f}", "0.0064", "0.25",
                                                "-4.0"]
    assert len(unresolved) == 1 and "has no uncertainty" in str(unresolved[0])


def test_check_lists_disagreements_and_unknown_figures(tmp_path):
    course, records = _course(tmp_path, "a <!--fig 04.decay_drop .3f-->0.052<!--/fig--> b\n"
                                        "c <!--fig 04.decay_drop .1%-->9.9%<!--/fig--> d\n"
                                        "e <!--fig 04.nothing .2f-->1.00<!--/fig--> and "
                                        "<!--fig 05.x .2f-->1<!--/fig-->\n")
    problems = check(course, records)
    assert [(p.marker.line, p.expected) for p in problems] == [(2, "5.2%"), (3, None), (3, None)]
    assert "reads '9.9%' but its record gives '5.2%'" in str(problems[0])
    assert "has no figure 'nothing'" in str(problems[1]) and "decay_drop" in str(problems[1])
    assert "no reference record of lab 05" in str(problems[2])


def test_sync_rewrites_only_the_marked_text_and_then_check_passes(tmp_path):
    text = "The decay drops the loss by <!--fig 04.decay_drop .3f-->0.061<!--/fig--> nats (0.061 elsewhere), " \
           "<!--fig 04.decay_drop .2e-->6.10e-02<!--/fig--> in <!--fig 04.steps .0f-->400<!--/fig--> steps.\n"
    course, records = _course(tmp_path, text)
    changed, unresolved = sync(course, records)
    assert [(p.marker.text, p.expected) for p in changed] == [("0.061", "0.052"), ("6.10e-02", "5.23e-02")]
    assert unresolved == []
    assert (course / "04_schedules.md").read_text() == text.replace(">0.061<", ">0.052<").replace(
        "6.10e-02", "5.23e-02")
    assert check(course, records) == []
    assert sync(course, records) == ([], [])  # idempotent: nothing left to change


def test_a_new_run_changes_the_chapter_through_sync(tmp_path):
    course, records = _course(tmp_path, "drop <!--fig 04.decay_drop .3f-->0.052<!--/fig-->\n")
    assert check(course, records) == []
    write_record("04", {"decay_drop": figure(0.0611, "nats"), "steps": figure(400)}, mode="fast", seed=0,
                 folder=records, verbose=False)
    assert [p.expected for p in check(course, records)] == ["0.061"]
    sync(course, records)
    assert "<!--fig 04.decay_drop .3f-->0.061<!--/fig-->" in (course / "04_schedules.md").read_text()


def test_cli_course_sync_check_and_exit_codes(tmp_path, capsys):
    course, records = _course(tmp_path, "drop <!--fig 04.decay_drop .3f-->0.999<!--/fig-->\n")
    assert main(["course", "sync", "--check", "--course", str(course)]) == 1
    out = capsys.readouterr().out
    assert "04_schedules.md:1: figure 04.decay_drop reads '0.999' but its record gives '0.052'" in out
    assert main(["course", "sync", "--course", str(course)]) == 0
    assert "04.decay_drop 0.999 -> 0.052" in capsys.readouterr().out
    assert main(["course", "sync", "--check", "--course", str(course)]) == 0
    assert "all agree" in capsys.readouterr().out

    (course / "04_schedules.md").write_text("drop <!--fig 04.decay_drop .3f-->0.052\n")
    assert main(["course", "sync", "--check", "--course", str(course)]) == 2
    assert "04_schedules.md:1: malformed figure marker" in capsys.readouterr().err
    assert main(["course", "sync", "--check", "--course", str(tmp_path / "missing")]) == 2
