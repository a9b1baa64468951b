"""What a student meets in the released notebooks: stubs that say which exercise is left, exercise
headings named by the graded question ids, and sliders that start where the text says they do."""

from __future__ import annotations

import ast
import math
import re

import nbformat
import pytest

from minilm.grading.notebook import _is_stub
from minilm.labs import get_lab
from minilm.labs.runner import list_labs

LABS = [lab for lab in list_labs() if lab.student.is_file()]
IDS = [f"{lab.lab_id}_{lab.topic}" for lab in LABS]
FIRST_LABS = [lab for lab in LABS if lab.lab_id in ("00", "01", "02", "03")]
_STUB_MESSAGE = re.compile(r"^(q\d+): write (\w+)$")


def _code_cells(nb):
    for cell in nb.cells:
        if cell.cell_type == "code":
            # IPython magics and shell lines are not Python
            yield "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))


def _stubs(nb) -> dict[str, str]:
    """{function name: its NotImplementedError message} for every stub in a notebook."""
    found = {}
    for src in _code_cells(nb):
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.FunctionDef) and _is_stub(node):
                body = [s for s in node.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
                exc = body[0].exc
                args = exc.args if isinstance(exc, ast.Call) else []
                found[node.name] = ast.literal_eval(args[0]) if args else ""
    return found


@pytest.mark.parametrize("lab", LABS, ids=IDS)
def test_every_stub_names_its_exercise_and_function(lab):
    nb = nbformat.read(lab.student, as_version=4)
    stubs = _stubs(nb)
    assert stubs, f"{lab.student.name} has no function stubs"
    targets = {q.target: q.name for q in get_lab(lab.lab_id).questions}
    for name, message in stubs.items():
        m = _STUB_MESSAGE.match(message)
        assert m and m.group(2) == name, f"{name}: NotImplementedError({message!r}) does not say 'qN: write {name}'"
        if name in targets:
            assert m.group(1) == targets[name], f"{name} is graded by {targets[name]}, its stub says {m.group(1)}"


@pytest.mark.parametrize("lab", LABS, ids=IDS)
def test_a_student_running_on_meets_a_stub_before_an_unset_answer(lab):
    """The first cell that uses an unfinished exercise calls a stub (a NotImplementedError naming
    it), not a ``None`` answer (a ``TypeError`` that names nothing)."""
    nb = nbformat.read(lab.student, as_version=4)
    stubs, nones = set(), set()
    for src in _code_cells(nb):
        if not re.search(r"\bcheck\(", src):
            tree = ast.parse(src)
            defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
            if used & nones:
                pytest.fail(f"a cell uses the unset answer(s) {sorted(used & nones)} before any stub")
            if (used & stubs) - defined:
                return
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.FunctionDef) and _is_stub(node):
                stubs.add(node.name)
        nones |= set(re.findall(r"^\s*(\w+) = None  # YOUR ANSWER", src, re.MULTILINE))
    pytest.fail("no cell calls a stub: a student who runs every cell is never told what is left")


@pytest.mark.parametrize("lab", FIRST_LABS, ids=[f"{lab.lab_id}_{lab.topic}" for lab in FIRST_LABS])
def test_exercise_headings_are_the_graded_question_ids(lab):
    nb = nbformat.read(lab.student, as_version=4)
    questions = [q.name for q in get_lab(lab.lab_id).questions]
    named: list[str] = []
    current: list[str] = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#") and re.search(r"\b(Exercise|Question)", line):
                    m = re.match(r"^#+ Exercises? (q\d+(?: and q\d+)*)\b", line)
                    assert m, f"heading {line!r} does not name its question id ('### Exercise q2: ...')"
                    current = re.findall(r"q\d+", m.group(1))
                    named += current
        else:
            checked = re.findall(r"""\bcheck\(\s*["'](q\d+)["']""", cell.source)
            assert all(q in current for q in checked), f"check{checked} under the heading for {current}"
    assert sorted(named) == sorted(questions), f"exercise headings {named} vs graded questions {questions}"


def _sliders(nb):
    for src in _code_cells(nb):
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "").endswith("Slider"):
                kw = {k.arg: ast.literal_eval(k.value) for k in node.keywords
                      if k.arg in ("value", "min", "max", "step", "base")}
                yield node.func.id, kw


@pytest.mark.parametrize("lab", FIRST_LABS, ids=[f"{lab.lab_id}_{lab.topic}" for lab in FIRST_LABS])
def test_every_slider_starts_on_its_value(lab):
    """A slider's front end snaps its value to ``min + k * step`` (of the exponent, for a log slider):
    lab 01's A = 406.4 and B = 410.7 used to both show 398."""
    nb = nbformat.read(lab.student, as_version=4)
    sliders = list(_sliders(nb))
    assert sliders
    for kind, kw in sliders:
        step = kw.get("step", 1 if kind == "IntSlider" else 0.1)
        lo = kw.get("min", 0)
        if kind == "FloatLogSlider":
            exponent = math.log(kw["value"], kw.get("base", 10))
            shown = kw.get("base", 10) ** (lo + round((exponent - lo) / step) * step)
        else:
            shown = lo + round((kw["value"] - lo) / step) * step
        assert shown == pytest.approx(kw["value"], rel=5e-4, abs=1e-9), f"{kind}({kw}) shows {shown:g}"
        assert lo <= (exponent if kind == "FloatLogSlider" else kw["value"]) <= kw["max"]
