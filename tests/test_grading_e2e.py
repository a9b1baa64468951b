"""End to end: the demo lab graded by real child processes, against a class of attack notebooks.

One ``minilm grade -j 2`` run (a subprocess, like an instructor's) grades a folder holding the
reference solution, the released stubs, an honest wrong answer, and attack notebooks built from
them. Each attack must score no more than the honest score of the same answers without the attack.
The folder also holds the reference solution as it was handed out before the course moved to
``minilm.labs`` (old import lines), which must still earn full marks.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nbformat
import pytest

from minilm.labs.demo import heldout_nll_ref

FIXTURES = Path(__file__).parent / "fixtures" / "demo_lab"
SOLUTION = FIXTURES / "solutions" / "99_demo.ipynb"
RELEASE = FIXTURES / "99_demo.ipynb"
ROOT = Path(__file__).resolve().parent.parent
MARKER = f"MINILM_TEST_DAEMON_{uuid.uuid4().hex}"
# The memory limit, the subreapers and the /proc checks below are Linux features.
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="grading sandbox tests need Linux")

WRONG_SOFTMAX = '''def softmax(x):
    e = np.exp(x - x.max(axis=0, keepdims=True))  # wrong axis: right only on 1-D input
    return e / e.sum(axis=0, keepdims=True)'''
GOOD_BIGRAM = '''def bigram_probs(tokens, vocab_size, alpha=1.0):
    counts = np.zeros((vocab_size, vocab_size))
    np.add.at(counts, (tokens[:-1], tokens[1:]), 1.0)
    return (counts + alpha) / (counts.sum(axis=1, keepdims=True) + alpha * vocab_size)'''
GOOD_MEASURE = '''train, held = make_corpus(SEED)
probs = bigram_probs(train, VOCAB, alpha=1.0)
heldout_nll = float(-np.mean(np.log(probs[held[:-1], held[1:]])))'''
WRONG_ANSWERS = {"softmax": WRONG_SOFTMAX, "bigram": GOOD_BIGRAM, "measure": GOOD_MEASURE,
                 "answer-q4": 'why_max = "a"'}
# q1: 1 of 5 checks (the 1-D public input) of 3 points; q2 3; q3 2; q4 0.
WRONG_SCORE = 0.6 + 3 + 2 + 0


def _variant(replace: dict[str, str], after: dict[str, list[str]] | None = None, base: Path = RELEASE):
    nb = nbformat.read(base, as_version=4)
    cells = []
    for cell in nb.cells:
        if cell.id in replace:
            cell.source = replace[cell.id]
        cells.append(cell)
        for src in (after or {}).get(cell.id, []):
            cells.append(nbformat.v4.new_code_cell(src))
    nb.cells = cells
    return nb


PATCH_CHECK = '''import numpy as np
import minilm.grading.checker as c
import minilm.grading.grader as gr
import minilm.labs as labs
def check(*a, **k): print("q1: 5/5 public checks passed; you have full marks")
def check_all(*a, **k): print("Self-check total: 10 / 10")
labs.check, labs.check_all = check, check_all
c.compare = lambda *a, **k: None
c.score_question = lambda q, *a, **k: c.QuestionResult(q.name, "", q.points, q.points, "ok")
gr.grade_notebook = lambda *a, **k: None
np.isclose = lambda *a, **k: True
np.allclose = lambda *a, **k: True
print("TOTAL SCORE: 10/10")'''

EQ_AND_NAN = '''class Yes:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    __hash__ = object.__hash__
class YesStr(str):
    def __eq__(self, other): return True
    __hash__ = str.__hash__
def softmax(x): return Yes()
def bigram_probs(tokens, vocab_size, alpha=1.0): return np.full((vocab_size, vocab_size), np.nan)
heldout_nll = float("nan")
why_max = YesStr("z")'''

FAKE_RESULTS = """import json, os, subprocess, sys
OUT = {out!r}
fake = json.dumps({{"score": 100.0, "tests": [], "output": "all passed"}})
for path in ["results.json", "../results.json", os.path.join(OUT, "grades.csv"),
             os.path.join(OUT, "gradescope", "atk_fake_results.json"), os.path.join(OUT, "gradescope", "fake.json")]:
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        open(path, "w").write(fake)
    except OSError:
        pass
daemon = '''
import os, time, json, sys
OUT = {out!r}
fake = json.dumps({{"score": 100.0, "tests": []}})
end = time.time() + 900  # outlives any grading run unless it is killed
while time.time() < end:
    for path in [os.path.join(OUT, "grades.csv"), os.path.join(OUT, "gradescope", "atk_fake_results.json"),
                 os.path.join(OUT, "summary.json"), os.path.join(OUT, "gradescope", "fake.json")]:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "w").write(fake)
        except OSError:
            pass
    time.sleep(0.1)
'''
subprocess.Popen([sys.executable, "-c", daemon, {marker!r}], start_new_session=True,
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)"""

READ_FILES = '''import glob, json, os
seen = sorted(glob.glob("*") + glob.glob("../*"))
for path in glob.glob("*.ipynb") + glob.glob("*/*.ipynb"):
    try:
        nb = json.load(open(path))
    except Exception:
        continue
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            try:
                exec("".join(cell["source"]).replace("check", "print"), globals())
            except Exception:
                pass
try:
    answers = json.load(open("answers.json"))
    heldout_nll, why_max = answers["heldout_nll"], answers["why_max"]
except OSError:
    pass
leaks = {k: v for k, v in os.environ.items() if "SEED" in k or "SECRET" in k or "TOKEN" in k}
print(seen, leaks)'''

FORGE = '''import json
from IPython import get_ipython
from IPython.display import publish_display_data
def _forge(*args, **kwargs):
    fake = {"defined": True, "type": "function", "params": {},
            "results": [{"ok": True, "value": 1.0}] * 5}
    publish_display_data({"application/x-minilm-probe": json.dumps(fake)})
get_ipython().events.register("post_run_cell", _forge)'''

HANG_BIGRAM = GOOD_BIGRAM.replace("    counts = np.zeros", (
    "    if alpha != 1.0:  # only the hidden inputs use other alphas\n"
    "        while True:\n"
    "            pass\n"
    "    counts = np.zeros"))

# The imports cell of the demo notebook as handed out before the course had its own package.
OLD_IMPORTS = """import numpy as np

from minilm.grading import check, check_all
from minilm.grading.labs.demo import VOCAB, make_corpus"""

FLOOD_SOFTMAX = WRONG_SOFTMAX.replace("def softmax(x):\n", 'def softmax(x):\n    print("y" * 1_000_000)\n')


def _minimal(cells: list[str]):
    """A numpy-only notebook (no minilm import, so cells run in well under a second)."""
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])


MIN_WRONG = ["import numpy as np", WRONG_SOFTMAX, GOOD_BIGRAM, f"heldout_nll = {heldout_nll_ref(0)!r}", 'why_max = "a"']


def _realistic(folder: Path, out: Path) -> dict[str, tuple[object, float]]:
    """The released notebook and variants; {student: (notebook or raw text, honest score)}."""
    return {
        "reference": (nbformat.read(SOLUTION, as_version=4), 10.0),
        "old_imports": (_variant({"imports": OLD_IMPORTS}, base=SOLUTION), 10.0),
        "stubs": (nbformat.read(RELEASE, as_version=4), 0.0),
        "wrong": (_variant(WRONG_ANSWERS), WRONG_SCORE),
        "atk_patch_check": (_variant(WRONG_ANSWERS, {"imports": [PATCH_CHECK], "check-all": [PATCH_CHECK]}),
                            WRONG_SCORE),
        "atk_eq_nan": (_variant({"answer-q4": EQ_AND_NAN}), 0.0),
        "atk_fake_results": (_variant(WRONG_ANSWERS, {"check-all": [FAKE_RESULTS.format(out=str(out), marker=MARKER)]}),
                             WRONG_SCORE),
        "atk_read_files": (_variant({}, {"check-all": [READ_FILES]}), 0.0),
        "atk_flood_memory": (_variant({**WRONG_ANSWERS, "softmax": FLOOD_SOFTMAX}, {
            "imports": ['for _ in range(20):\n    print("x" * 1_000_000)'],
            # if the memory limit did not hold, this would earn q4's points
            "answer-q4": ["try:\n    big = np.empty(2**30)  # 8 GB\n    why_max = 'b'\nexcept MemoryError:\n    pass"],
        }), WRONG_SCORE),
        "atk_forge_probe": (_variant(WRONG_ANSWERS, {"check-all": [FORGE]}), WRONG_SCORE),
        "atk_malformed": ('{"cells": [ this is not json', 0.0),
        "atk_not_a_notebook": ('{"cells": 5, "metadata": {}}', 0.0),
    }


def _hangs() -> dict[str, tuple[object, float]]:
    """Crashes and hangs, in minimal notebooks so that short time limits are safe on a busy machine."""
    crash = [MIN_WRONG[0], MIN_WRONG[1], "import os\nos._exit(0)", MIN_WRONG[2],
             "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass",
             MIN_WRONG[3], "while True:\n    pass", MIN_WRONG[4]]
    probe_hang = [MIN_WRONG[0], MIN_WRONG[1], HANG_BIGRAM, *MIN_WRONG[3:]]
    return {"atk_crash_and_hang": (_minimal(crash), WRONG_SCORE),
            "atk_probe_hang": (_minimal(probe_hang), WRONG_SCORE - 3)}


def _write(folder: Path, cases: dict) -> None:
    for name, (nb, _) in cases.items():
        path = folder / f"{name}.ipynb"
        if isinstance(nb, str):
            path.write_text(nb)
        else:
            nbformat.write(nb, path)
    # Files beside the notebooks that a student might hope to read at grading time.
    (folder / "answers.json").write_text(json.dumps({"heldout_nll": heldout_nll_ref(0), "why_max": "b"}))


def _start_cli(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "minilm", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _run_cli(*args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    proc = _start_cli(*args)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _grade(folder: Path, out: Path, *limits: str) -> subprocess.Popen:
    return _start_cli("grade", str(folder), "--out", str(out), "-j", "2", "--lab", "99", "--seed", "1234",
                      "--release", str(RELEASE), "--memory-mb", "3000", "--no-progress", *limits)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    realistic, hangs = tmp_path_factory.mktemp("class"), tmp_path_factory.mktemp("hangs")
    out = tmp_path_factory.mktemp("out") / "report"
    out_hangs = tmp_path_factory.mktemp("out") / "report"
    cases = _realistic(realistic, out)
    _write(realistic, cases)
    _write(hangs, _hangs())
    t0 = time.monotonic()
    # Two runs side by side (the second mostly waits out its time limits). Generous limits for the
    # first: a cell importing torch on a busy 2-core machine can take several seconds.
    runs = [_grade(realistic, out, "--cell-timeout", "120", "--timeout", "300", "--probe-timeout", "60"),
            _grade(hangs, out_hangs, "--cell-timeout", "6", "--timeout", "120", "--probe-timeout", "4")]
    for run in runs:
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-3000:]
    snapshot = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    elapsed = time.monotonic() - t0
    results = {p.stem: json.loads(p.read_text())
               for d in (out, out_hangs) for p in (d / "instructor").glob("*.json")}
    yield {"cases": {**cases, **_hangs()}, "results": results, "out": out, "elapsed": elapsed,
           "snapshot": snapshot}
    _kill_daemons()  # only matters if a test failed: never leave the attack running


def _kill_daemons() -> list[int]:
    """Kill (and list) processes started by the fake-results attack that are still alive."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if MARKER.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
                os.kill(int(pid), 9)
        except OSError:
            pass
    return found


def _score(graded, name: str) -> float:
    return graded["results"][name]["score"]


def test_reference_gets_full_marks(graded):
    r = graded["results"]["reference"]
    assert r["status"] == "ok" and r["score"] == r["max_score"] == 10.0


def test_a_notebook_handed_out_before_the_course_moved_still_grades(graded):
    # Its imports name minilm.grading.check and minilm.grading.labs.demo, which no longer exist: the
    # grader runs them from minilm.labs, so every cell runs and every answer is found.
    r = graded["results"]["old_imports"]
    assert r["status"] == "ok" and r["score"] == r["max_score"] == 10.0
    assert r["cells"] == []


def test_stubs_score_zero_without_crashing_the_grader(graded):
    r = graded["results"]["stubs"]
    assert r["status"] == "ok"
    assert r["score"] == 0.0
    statuses = {q["name"]: q["status"] for q in r["questions"]}
    assert statuses["q1"] == statuses["q2"] == "ok"  # probed: the stubs raised NotImplementedError


def test_wrong_answer_gets_partial_credit(graded):
    r = graded["results"]["wrong"]
    assert r["score"] == pytest.approx(WRONG_SCORE)
    q1 = next(q for q in r["questions"] if q["name"] == "q1")
    assert 0 < q1["score"] < q1["points"]


@pytest.mark.parametrize("name", [
    "atk_patch_check", "atk_eq_nan", "atk_fake_results", "atk_read_files", "atk_crash_and_hang",
    "atk_probe_hang", "atk_flood_memory", "atk_forge_probe", "atk_malformed", "atk_not_a_notebook",
])
def test_attack_scores_no_more_than_honest(graded, name):
    honest = graded["cases"][name][1]
    got = _score(graded, name)
    print(f"{name}: {got} (honest {honest})")
    assert got <= honest + 1e-9


def test_attacks_that_leave_answers_intact_keep_the_honest_score(graded):
    # A crash or hang costs only the cell or question it touches: the rest is graded as usual.
    for name in ("atk_patch_check", "atk_fake_results", "atk_crash_and_hang", "atk_flood_memory"):
        assert _score(graded, name) == pytest.approx(WRONG_SCORE), name
    r = graded["results"]["atk_probe_hang"]
    by_name = {q["name"]: q for q in r["questions"]}
    assert by_name["q2"]["status"] == "timeout" and by_name["q2"]["score"] == 0
    assert by_name["q1"]["score"] == pytest.approx(0.6) and by_name["q3"]["score"] == 2.0


def test_crashes_and_hangs_are_recorded(graded):
    cells = graded["results"]["atk_crash_and_hang"]["cells"]
    assert {c["status"] for c in cells} >= {"crashed", "timeout"}


def test_memory_limit_holds(graded):
    r = graded["results"]["atk_flood_memory"]
    q4 = next(q for q in r["questions"] if q["name"] == "q4")
    assert q4["score"] == 0  # the 8 GB allocation failed under --memory-mb 3000


def test_malformed_notebooks_are_reported_not_fatal(graded):
    for name in ("atk_malformed", "atk_not_a_notebook"):
        r = graded["results"][name]
        assert r["status"] == "invalid-notebook" and r["score"] == 0
        assert "valid" in r["message"]


def test_reports_are_complete_and_survive_detached_processes(graded):
    out = graded["out"]
    time.sleep(1.5)  # a surviving daemon would rewrite the reports every 0.1 s
    after = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == graded["snapshot"]
    assert "gradescope/fake.json" not in after  # planted during grading, gone with the replaced folder
    survivors = _kill_daemons()
    assert survivors == []
    rows = list(csv.DictReader((out / "grades.csv").open()))
    assert len(rows) == len(graded["cases"]) - len(_hangs())
    by_student = {r["student"]: r for r in rows}
    assert float(by_student["reference"]["total"]) == 10.0
    assert set(rows[0]) >= {"student", "q1", "q2", "q3", "q4", "total", "max", "status"}
    gs = json.loads((out / "gradescope" / "atk_fake_results.json").read_text())
    assert gs["score"] == pytest.approx(WRONG_SCORE)
    assert sum(t["max_score"] for t in gs["tests"]) == pytest.approx(10.0)
    assert {t["visibility"] for t in gs["tests"]} == {"visible", "after_published"}


def test_feedback_reveals_no_hidden_detail_and_stays_small(graded):
    out = graded["out"]
    for path in (out / "feedback").glob("*.md"):
        text = path.read_text()
        assert len(text) < 20_000
        assert "max abs error" not in text.split("graded checks")[-1]
    text = (out / "feedback" / "wrong.md").read_text()
    assert "hidden input" in text and "wrong result" in text
    flooded = (out / "feedback" / "atk_flood_memory.md").read_text()
    assert "xxxxxxxxxx" not in flooded and "yyyyyyyyyy" not in flooded


def test_tamper_report(graded):
    md = (graded["out"] / "tamper.md").read_text()
    data = json.loads((graded["out"] / "tamper.json").read_text())
    # atk_patch_check redefines check() in a new cell: locked cells are intact, nothing to flag there.
    assert "atk_not_a_notebook" in data["students"]
    assert any("q3" in item for item in data["students"]["stubs"])  # unanswered question
    # reference and atk_read_files (which runs the reference's cells when it can) share no code,
    # but every wrong-answer variant shares the same softmax: reported as identical answers.
    assert any(d.startswith("q1: identical code from") and "wrong" in d for d in data["duplicates"])
    assert "Identical answers" in md


def test_check_command_reports_public_checks_honestly():
    nb = _variant(WRONG_ANSWERS)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"minilm-check-{uuid.uuid4().hex}.ipynb"
    nbformat.write(nb, tmp)
    try:
        proc = _run_cli("check", str(tmp), "--lab", "99", "--cell-timeout", "30", "--timeout", "60", "--mode", "class")
    finally:
        tmp.unlink()
    assert proc.returncode == 1, proc.stderr[-2000:]  # a public check fails
    out = proc.stdout
    assert "q1: 1/2 public checks passed; 3 hidden checks run at grading." in out
    assert "q2: 1/1 public checks passed; 3 hidden checks run at grading." in out
    assert "Hint:" in out
    assert "q4: why_max is set and well-formed" in out
    assert "this is not your grade" in out
