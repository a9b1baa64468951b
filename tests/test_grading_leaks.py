"""Release leaks: a student notebook must hold no solution text, wherever the instructor put it.

Marker variants (one ``#``, another case or spacing, bold, HTML comments) are errors rather than
text left behind; raw cells are stripped like markdown; attachments of solution cells and any
metadata but tags are dropped; and every released notebook is searched for every solution line
(read from the instructor notebook independently of the stripping).
"""

from __future__ import annotations

import base64
from pathlib import Path

import nbformat
import pytest

from minilm.grading import notebook as nbtools

ROOT = Path(__file__).resolve().parent.parent
ANSWER = "return e / e.sum(axis=-1, keepdims=True)"


def _solution(*cells):
    return nbformat.v4.new_notebook(cells=list(cells))


def _code(src: str, **kw):
    return nbformat.v4.new_code_cell(src, **kw)


def _md(src: str, **kw):
    return nbformat.v4.new_markdown_cell(src, **kw)


def _released_text(nb) -> str:
    return nbformat.writes(nbtools.make_release(nb, "99"))


@pytest.mark.parametrize("cell", [
    _code(f"def f(e):\n    # BEGIN SOLUTION\n    {ANSWER}\n    # END SOLUTION"),
    _code(f"def f(e):\n    ### begin solution\n    {ANSWER}\n    ### end solution"),
    _code(f"def f(e):\n    ###BEGIN SOLUTION\n    {ANSWER}\n    ###END SOLUTION"),
    _code(f"def f(e):\n    ### Begin  Solution\n    {ANSWER}\n    ### End  Solution"),
    _md(f"**BEGIN SOLUTION**\n{ANSWER}\n**END SOLUTION**"),
    _md(f"<!-- BEGIN SOLUTION -->\n{ANSWER}\n<!-- END SOLUTION -->"),
    _md(f"## BEGIN SOLUTION\n{ANSWER}\n## END SOLUTION"),
    nbformat.v4.new_raw_cell(f"# BEGIN SOLUTION\n{ANSWER}\n# END SOLUTION"),
], ids=["one-hash", "lower-case", "no-space", "spacing", "bold", "html-comment", "two-hash", "raw-one-hash"])
def test_marker_variants_are_errors_never_left_behind(cell):
    with pytest.raises(nbtools.SolutionMarkerError, match="malformed solution marker"):
        nbtools.make_release(_solution(cell), "99")


def test_raw_cells_are_stripped_like_markdown():
    nb = _solution(nbformat.v4.new_raw_cell(f"Notes\n### BEGIN SOLUTION\n{ANSWER}\n### END SOLUTION"))
    text = _released_text(nb)
    assert ANSWER not in text and nbtools.MARKDOWN_STUB in text


def test_attachments_of_solution_cells_and_extra_metadata_are_dropped():
    secret = base64.b64encode(ANSWER.encode()).decode()
    md = _md(f"Why?\n### BEGIN SOLUTION\n{ANSWER}\n![](attachment:a.txt)\n### END SOLUTION")
    md["attachments"] = {"a.txt": {"text/plain": secret}}
    code = _code(f"def f(e):\n    ### BEGIN SOLUTION\n    {ANSWER}\n    ### END SOLUTION",
                 metadata={"solution_note": ANSWER, "tags": ["graded"]})
    nb = _solution(md, code)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python", "x": ANSWER}
    nb.metadata["instructor"] = {"answer": ANSWER}
    text = _released_text(nb)
    assert ANSWER not in text and secret not in text
    released = nbtools.make_release(nb, "99")
    assert released.cells[1].metadata["tags"] == ["graded"]


@pytest.mark.parametrize("where", ["tag", "attachment elsewhere", "attachment base64"])
def test_solution_text_left_anywhere_else_refuses_the_release(where):
    line = "total = e.sum(axis=0) / 2" if where == "tag" else ANSWER  # a tag holds no comma
    code = _code(f"def f(e):\n    ### BEGIN SOLUTION\n    {line}\n    ### END SOLUTION")
    intro = _md("Read this: ![](attachment:a.txt)")
    if where == "tag":
        code.metadata["tags"] = [line]
    elif where == "attachment elsewhere":
        intro["attachments"] = {"a.txt": {"text/plain": ANSWER}}
    else:
        intro["attachments"] = {"a.txt": {"text/plain": base64.b64encode(ANSWER.encode()).decode()}}
    with pytest.raises(nbtools.SolutionMarkerError, match="solution text is still in the student notebook"):
        nbtools.make_release(_solution(intro, code), "99")


def test_lines_the_instructor_shows_outside_a_solution_are_not_leaks():
    shared = "from numpy import exp as np_exp"
    nb = _solution(_code(shared), _code(f"def f(e):\n    ### BEGIN SOLUTION\n    {shared}\n    {ANSWER}\n"
                                        "    ### END SOLUTION"))
    text = _released_text(nb)
    assert shared in text and ANSWER not in text


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
                         + [ROOT / "tests" / "fixtures" / "demo_lab" / "solutions" / "99_demo.ipynb"],
                         ids=lambda p: p.name)
def test_every_released_lab_holds_none_of_its_solution_lines(path):
    solution = nbtools.read_notebook(path)
    student = nbtools.make_release(solution, nbtools.lab_id_of(solution, path))
    secret, _ = nbtools._solution_lines(solution)
    assert secret, "the lenient reader found no solution lines"
    assert nbtools.solution_leaks(solution, student) == []
