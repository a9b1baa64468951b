"""Every lab notebook stays usable outside JupyterLab: in VS Code's notebook editor and in Google Colab.

Neither editor can run here (no VS Code, no network to Colab), so this checks statically what is known to
break there, in every student notebook and instructor source under labs/:

- plots: the inline backend, declared in the notebook (`%matplotlib inline`, both editors' default); no
  ipympl (`%matplotlib widget`), no other interactive backend, no `matplotlib.use(...)`, no figure redrawn in
  place through its canvas (only an interactive backend repaints it; inline shows a new image instead);
- widgets: only core ipywidgets (VS Code and Colab render those; third-party widget libraries need extra
  front-end packages or Colab's custom widget manager), and every slider drives `interact(f, ...)` with an
  `f` of the notebook that draws a *new* figure and shows it (`plt.show()`), the pattern that redraws under
  the inline backend in every front end;
- no JavaScript (`%%javascript`, `IPython.display.Javascript`, `<script>` in HTML: VS Code does not run it),
  no IPython magic or shell escape but `%matplotlib inline` (a `!pip` or `%load_ext` line works in one front
  end and not another), and imports only of the standard library and what `pip install "minilm[lab]"` brings;
- metadata: nbformat 4 with the `python3` kernelspec (Colab refuses a notebook whose kernel it does not know,
  VS Code asks the user to pick one), and no saved widget state (stale views of widgets that no longer exist).

The browser tests (tests/browser) run the same notebooks in real JupyterLab; the library code they call is
checked here too for interactive backends and canvas redraws.
"""

from __future__ import annotations

import ast
import glob
import json
import re
import sys
from pathlib import Path

import pytest

from minilm.grading.notebook import _python_source

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(glob.glob(str(REPO / "labs" / "*.ipynb")) + glob.glob(str(REPO / "solutions" / "*.ipynb")))
ALLOWED_MAGICS = {"%matplotlib inline"}
INTERACTIVE_BACKENDS = re.compile(r"%matplotlib\s+(?!inline\b)\w+|matplotlib\.use\(|import\s+ipympl|from\s+ipympl")
# Imported by the notebooks through the packages `pip install "minilm[lab]"` installs (ipykernel brings IPython).
LAB_IMPORTS = {"minilm", "numpy", "torch", "scipy", "matplotlib", "tqdm", "regex", "ipywidgets", "IPython"}


def _cells(path: str) -> list[tuple[int, str]]:
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    return [(i, "".join(c["source"]) if isinstance(c["source"], list) else c["source"])
            for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]


def _name(path: str) -> str:
    return str(Path(path).relative_to(REPO)) if Path(path).is_relative_to(REPO) else path


def editor_problems(path: str) -> list[str]:
    """What in notebook ``path`` is known not to work in VS Code or Colab, one line each (empty: none)."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    where = _name(path)
    problems = []
    if nb.get("nbformat") != 4 or nb.get("metadata", {}).get("kernelspec", {}).get("name") != "python3":
        problems.append(f"{where}: needs nbformat 4 and the kernelspec 'python3' (Colab knows no other)")
    if "widgets" in nb.get("metadata", {}):
        problems.append(f"{where}: saved widget state in the metadata (strip it)")
    cells = _cells(path)
    functions: dict[str, ast.FunctionDef] = {}
    trees = []
    for i, source in cells:
        for line in source.splitlines():
            s = line.strip()
            if s.startswith(("%", "!")) and s not in ALLOWED_MAGICS:
                problems.append(f"{where} cell {i}: magic or shell escape {s!r} (not portable across editors)")
        if INTERACTIVE_BACKENDS.search(source):
            problems.append(f"{where} cell {i}: an interactive matplotlib backend (use the inline one)")
        if re.search(r"Javascript|<script", source, re.I):
            problems.append(f"{where} cell {i}: JavaScript output (VS Code does not run it)")
        tree = ast.parse(_python_source(source))
        trees.append((i, tree))
        functions.update({n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)})
    if not any(s.strip().startswith("%matplotlib inline") for _, source in cells for s in source.splitlines()) \
            and any("matplotlib" in source for _, source in cells):
        problems.append(f"{where}: plots without `%matplotlib inline`")
    for i, tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for module in modules:
                    top = module.split(".")[0]
                    if node.__class__ is ast.ImportFrom and node.level:
                        continue
                    if top not in LAB_IMPORTS and top not in sys.stdlib_module_names:
                        problems.append(f"{where} cell {i}: imports {module!r}, which minilm[lab] does not install")
            if isinstance(node, ast.Attribute) and node.attr in ("canvas", "ion", "draw_idle", "FigureWidget"):
                problems.append(f"{where} cell {i}:{node.lineno}: .{node.attr} (a figure redrawn in place needs "
                                "an interactive backend)")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("interact", "interactive",
                                                                                 "interact_manual"):
                problems += _callback_problems(node, functions, f"{where} cell {i}")
    return problems


def _callback_problems(call: ast.Call, functions: dict[str, ast.FunctionDef], where: str) -> list[str]:
    """An `interact(f, ...)` must name a function of the notebook that makes a new figure and shows it."""
    if not call.args or not isinstance(call.args[0], ast.Name) or call.args[0].id not in functions:
        return [f"{where}: interact(...) must be given a function defined in the notebook"]
    body = ast.unparse(functions[call.args[0].id])
    if not re.search(r"plt\.(subplots|figure|subplot)\(", body) or "plt.show()" not in body:
        return [f"{where}: {call.args[0].id} must draw a new figure and call plt.show() (inline backend)"]
    return []


def test_there_are_notebooks_to_check():
    names = [Path(p).name for p in NOTEBOOKS]
    assert len(NOTEBOOKS) >= 16 and "04_schedules.ipynb" in names, names
    assert any("/solutions/" in p for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_notebook_works_in_vscode_and_colab(path):
    problems = editor_problems(path)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if "/solutions/" in p], ids=_name)
def test_the_first_widget_redraws_a_figure(path):
    """The "See it" slider of every lab: an interact(...) call whose function plots (checked above)."""
    calls = [n for _, source in _cells(path) for n in ast.walk(ast.parse(_python_source(source)))
             if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "interact"]
    assert calls, f"{_name(path)}: no interact(...) slider"


def test_the_check_rejects_what_breaks_in_other_editors(tmp_path):
    good = {"cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source":
                       "%matplotlib inline\nimport matplotlib.pyplot as plt\nfrom ipywidgets import IntSlider, interact"
                       "\n\ndef show(n=1):\n    fig, ax = plt.subplots()\n    ax.plot(range(n))\n    plt.show()\n\n"
                       "interact(show, n=IntSlider(value=1, min=1, max=5))"}],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}

    def problems(source: str | None = None, **metadata) -> list[str]:
        nb = json.loads(json.dumps(good))
        if source is not None:
            nb["cells"][0]["source"] = source
        nb["metadata"].update(metadata)
        path = tmp_path / "nb.ipynb"
        path.write_text(json.dumps(nb))
        return editor_problems(str(path))

    base = good["cells"][0]["source"]
    assert problems() == []
    bad = {
        "ipympl": base.replace("%matplotlib inline", "%matplotlib widget"),
        "backend": base.replace("%matplotlib inline", "%matplotlib inline\nimport matplotlib\nmatplotlib.use('TkAgg')"),
        "javascript": base + "\nfrom IPython.display import Javascript",
        "shell": "!pip install minilm\n" + base,
        "third-party widget": base + "\nimport bqplot",
        "canvas redraw": base + "\nfig, ax = plt.subplots()\nfig.canvas.draw_idle()",
        "callback without show": base.replace("    plt.show()\n", ""),
        "lambda callback": base.replace("interact(show,", "interact(lambda n: None,"),
        "no inline": base.replace("%matplotlib inline\n", ""),
    }
    for what, source in bad.items():
        assert problems(source), f"{what} was not rejected"
    assert problems(kernelspec={"name": "julia-1.9"}), "an unknown kernelspec was not rejected"
    assert problems(widgets={"application/vnd.jupyter.widget-state+json": {}}), "saved widget state passed"


def test_library_code_draws_for_the_inline_backend():
    """The plotting helpers the labs call: no interactive backend forced, no in-place canvas redraws."""
    found = []
    for path in sorted((REPO / "minilm").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for pattern in (r"matplotlib\.use\(\s*['\"](?!agg['\"])", r"\bipympl\b", r"\.canvas\.draw", r"plt\.ion\(",
                        r"Javascript\(", r"<script"):
            found += [f"{path.relative_to(REPO)}: {m.group(0)}" for m in re.finditer(pattern, text, re.I)]
    assert not found, found


def test_the_allowed_imports_are_what_minilm_lab_installs():
    """LAB_IMPORTS above: each one a dependency or [lab] extra of pyproject.toml (ipykernel brings IPython)."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    declared = set(re.findall(r'^\s*"([A-Za-z0-9_-]+)\s*[<>=]', text, re.M))
    assert "ipykernel" in declared and "ipywidgets" in declared, declared
    assert LAB_IMPORTS - {"minilm", "IPython"} <= declared, LAB_IMPORTS - declared


def test_both_readmes_say_what_was_checked_for_other_editors():
    for path in (REPO / "README.md", REPO / "labs" / "README.md"):
        text = path.read_text(encoding="utf-8")
        section = re.search(r"^#+ Editors.*?(?=^#+ |\Z)", text, re.M | re.S)
        assert section, f"{path.relative_to(REPO)} needs an Editors section"
        body = section.group(0)
        assert "VS Code" in body and "Colab" in body and "inline" in body and "ipywidgets" in body
        assert "Neither editor" in body, "say that neither editor was run here"
