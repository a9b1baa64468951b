"""Notebook files: student versions from instructor sources, locked cells, and reading submissions.

Solution regions in the instructor notebook (``labs/solutions/NN_topic.ipynb``):

- code lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (markers included) become
  ``raise NotImplementedError()`` at the indentation of the ``BEGIN`` line;
- a one-line answer ``x = <expr>  # SOLUTION`` becomes ``x = None  # YOUR ANSWER``;
- in a markdown cell, a ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` region becomes
  ``YOUR ANSWER HERE``.

Outputs and execution counts are dropped. *Locked* cells are those tagged ``locked`` plus every
code cell that calls ``check(...)`` or ``check_all(...)`` and holds no solution; the student
version marks them read-only in JupyterLab (``editable``/``deletable`` false) and records a hash
of each in ``metadata.minilm.locked``, so the grader can report a locked cell that was changed.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

from minilm.atomic import atomic_write_text

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
STUB = "raise NotImplementedError()"
MARKDOWN_STUB = "YOUR ANSWER HERE"
LOCKED_TAG = "locked"
MAX_NOTEBOOK_BYTES = 20 * 2**20
MAX_CODE_CHARS = 5 * 2**20

_ONE_LINE = re.compile(r"^(?P<indent>[ \t]*)(?P<target>[^=#\n]+?)\s*=(?!=)\s*(?P<expr>\S.*?)\s*#{1,3}\s*SOLUTION\s*$")
_MARKER_LIKE = re.compile(r"#\s*(BEGIN|END)\s+SOLUTION|#\s*SOLUTION\s*$")
_CHECK_CALL = re.compile(r"\bcheck(_all)?\s*\(")
_LAB_LINE = re.compile(r"""^\s*LAB\s*=\s*["'](\d\d)["']""", re.MULTILINE)


def _nbformat():
    # Imported when needed: on some installs nbformat's import takes seconds (jsonschema's
    # optional format checkers), which the in-notebook self-check should not pay.
    import nbformat

    return nbformat


class SolutionMarkerError(ValueError):
    """A solution region is malformed (unclosed, nested, or a one-line marker without assignment)."""


# ---------------------------------------------------------------------------------------------
# Solution regions
# ---------------------------------------------------------------------------------------------


def strip_solutions(source: str, cell_type: str = "code", where: str = "cell") -> tuple[str, bool]:
    """The student version of one cell's source, and whether it held a solution."""
    out: list[str] = []
    inside = False
    changed = False
    for n, line in enumerate(source.split("\n"), start=1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise SolutionMarkerError(f"{where}, line {n}: {BEGIN} inside another solution region")
            inside, changed = True, True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(indent + (STUB if cell_type == "code" else MARKDOWN_STUB))
        elif stripped == END:
            if not inside:
                raise SolutionMarkerError(f"{where}, line {n}: {END} without a {BEGIN} before it")
            inside = False
        elif inside:
            continue
        elif cell_type == "code" and _MARKER_LIKE.search(line):
            m = _ONE_LINE.match(line)
            if m is None or "BEGIN" in line or "END" in line:
                raise SolutionMarkerError(
                    f"{where}, line {n}: malformed solution marker {stripped[:60]!r}; use '{BEGIN}' / "
                    f"'{END}' on their own lines, or 'name = value  # SOLUTION'"
                )
            target = m["target"].strip()
            try:
                ast.parse(f"{target} = None")
            except SyntaxError:
                raise SolutionMarkerError(
                    f"{where}, line {n}: '# SOLUTION' needs a plain assignment 'name = value'"
                ) from None
            out.append(f"{m['indent']}{target} = None  # YOUR ANSWER")
            changed = True
        else:
            out.append(line)
    if inside:
        raise SolutionMarkerError(f"{where}: {BEGIN} is never closed by {END}")
    return "\n".join(out), changed


def cell_hash(source: str) -> str:
    """Hash of a cell's source, insensitive to line endings and trailing whitespace."""
    lines = [line.rstrip() for line in source.replace("\r\n", "\n").split("\n")]
    return hashlib.sha256("\n".join(lines).strip("\n").encode()).hexdigest()


def _tags(cell: Any) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def is_locked(cell: Any, had_solution: bool = False) -> bool:
    """Tagged ``locked``, or a code cell calling ``check(...)``/``check_all(...)`` with no solution."""
    if LOCKED_TAG in _tags(cell):
        return True
    return cell.cell_type == "code" and not had_solution and bool(_CHECK_CALL.search(cell.source))


def make_release(solution: Any, lab_id: str | None = None) -> Any:
    """The student notebook built from an instructor notebook (``nbformat`` node in, node out)."""
    nb = copy.deepcopy(solution)
    nb.nbformat, nb.nbformat_minor = 4, max(5, int(nb.get("nbformat_minor", 5)))
    locked: dict[str, str] = {}
    used_ids: set[str] = set()
    for i, cell in enumerate(nb.cells):
        where = f"cell {i}"
        cid = cell.get("id") or f"cell-{i:03d}"
        if cid in used_ids:
            cid = f"{cid}-{i}"
        used_ids.add(cid)
        cell["id"] = cid
        had_solution = False
        if cell.cell_type in ("code", "markdown"):
            cell.source, had_solution = strip_solutions(cell.source, cell.cell_type, where)
        meta = {}
        tags = _tags(cell)
        if tags:
            meta["tags"] = tags
        if is_locked(cell, had_solution):
            meta["editable"] = False
            meta["deletable"] = False
            if LOCKED_TAG not in tags:
                meta["tags"] = tags + [LOCKED_TAG]
            locked[cid] = cell_hash(cell.source)
        cell.metadata = _nbformat().NotebookNode(meta)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    kernelspec = nb.metadata.get("kernelspec") or {"name": "python3", "display_name": "Python 3", "language": "python"}
    meta = {"kernelspec": kernelspec, "language_info": {"name": "python"}}
    info: dict[str, Any] = {"locked": locked}
    if lab_id is not None:
        info["lab"] = lab_id
    meta["minilm"] = info
    nb.metadata = _nbformat().NotebookNode(meta)
    return _nbformat().from_dict(nb)


def release_text(solution_path: str | os.PathLike, lab_id: str | None = None) -> str:
    """The student notebook's file content for ``solution_path`` (deterministic)."""
    nb = read_notebook(solution_path)
    lab_id = lab_id or lab_id_of(nb, Path(solution_path))
    return _nbformat().writes(make_release(nb, lab_id)) + "\n"


def is_stale(solution_path: str | os.PathLike, student_path: str | os.PathLike) -> bool:
    """True when the committed student notebook is not what ``minilm release`` makes from the source."""
    return stale_reason(solution_path, student_path) is not None


def stale_reason(solution_path: str | os.PathLike, student_path: str | os.PathLike) -> str | None:
    """Why the student notebook is stale (first difference), or ``None`` when it is up to date."""
    student_path = Path(student_path)
    if not student_path.exists():
        return f"{student_path} does not exist"
    fresh = json.loads(release_text(solution_path))
    try:
        committed = json.loads(student_path.read_text(encoding="utf-8"))
    except ValueError:
        return f"{student_path} is not valid JSON"
    if fresh == committed:
        return None
    fc, cc = fresh.get("cells", []), committed.get("cells", [])
    if len(fc) != len(cc):
        return f"{len(cc)} cells committed, {len(fc)} in a fresh release"
    for i, (a, b) in enumerate(zip(fc, cc)):
        if a != b:
            return f"cell {i} differs from a fresh release"
    return "notebook metadata differs from a fresh release"


# ---------------------------------------------------------------------------------------------
# Reading notebooks
# ---------------------------------------------------------------------------------------------


def read_notebook(path: str | os.PathLike) -> Any:
    """Read a trusted notebook (an instructor's) as nbformat v4."""
    return _nbformat().read(str(path), as_version=4)


def read_submission(path: str | os.PathLike) -> tuple[Any, str]:
    """Read an untrusted notebook: (node, "") or (None, why it cannot be graded)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_NOTEBOOK_BYTES:
            return None, f"the notebook is {size / 2**20:.0f} MB, over the {MAX_NOTEBOOK_BYTES // 2**20} MB limit"
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return None, "the notebook is not UTF-8 text"
    except OSError as err:
        return None, f"the notebook cannot be read: {err.strerror}"
    try:
        with warnings.catch_warnings():  # nbformat warns about old or odd notebooks: we check below
            warnings.simplefilter("ignore")
            nb = _nbformat().reads(text, as_version=4)
    except Exception as err:  # noqa: BLE001 - nbformat raises many kinds on malformed input
        return None, f"not a valid .ipynb notebook ({type(err).__name__}: {str(err)[:200]})"
    cells = nb.get("cells") if isinstance(nb, dict) else None
    if not isinstance(cells, list):
        return None, "not a valid .ipynb notebook (no list of cells)"
    total = 0
    for i, cell in enumerate(cells):
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            return None, f"not a valid .ipynb notebook (cell {i} is malformed)"
        if not isinstance(cell.get("source", ""), str):
            return None, f"not a valid .ipynb notebook (cell {i} has no text source)"
        cell.setdefault("source", "")
        cell.setdefault("metadata", _nbformat().NotebookNode())
        total += len(cell["source"])
    if total > MAX_CODE_CHARS:
        return None, "the notebook's cells hold more than 5 MB of text"
    if not isinstance(nb.get("metadata"), dict):
        nb["metadata"] = _nbformat().NotebookNode()
    return nb, ""


# Notebooks handed out before the course moved to its own package import the self-check from
# minilm.grading and lab helpers from minilm.grading.labs.labNN. The copy the grader runs imports
# them from where they live now (minilm.labs), so a submission made from an old notebook grades
# as it did; what is checked for tampering and duplicates is the submission as handed in.
_MOVED_IMPORTS = (
    (re.compile(r"^([ \t]*)from minilm\.grading import check, check_all(?=[ \t]*(?:#|$))", re.MULTILINE),
     r"\1from minilm.labs import check, check_all"),
    (re.compile(r"^([ \t]*)from minilm\.grading\.labs\.(\w+) import ", re.MULTILINE), r"\1from minilm.labs.\2 import "),
)


def current_imports(source: str) -> str:
    """``source`` with imports from the course's old module paths pointing at the new ones."""
    for pattern, replacement in _MOVED_IMPORTS:
        source = pattern.sub(replacement, source)
    return source


def write_for_execution(nb: Any, path: str) -> None:
    """The copy the child runs: code cells only (imports of moved modules updated), no outputs."""
    nbformat = _nbformat()
    cells = [nbformat.v4.new_code_cell(current_imports(c["source"])) for c in nb["cells"]
             if c.get("cell_type") == "code"]
    clean = nbformat.v4.new_notebook(cells=cells)
    clean.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(clean, path)


def lab_id_of(nb: Any, path: Path | None = None) -> str | None:
    """The lab a notebook belongs to: its metadata, a ``LAB = "NN"`` line, or an ``NN_`` file name."""
    if nb is not None:
        meta = nb.get("metadata", {}).get("minilm", {})
        lab = meta.get("lab") if isinstance(meta, dict) else None
        if isinstance(lab, str) and re.fullmatch(r"\d\d", lab):
            return lab
        for cell in nb.get("cells", []):
            if cell.get("cell_type") == "code":
                m = _LAB_LINE.search(cell.get("source", ""))
                if m:
                    return m.group(1)
    if path is not None:
        m = re.match(r"(\d\d)_", Path(path).name)
        if m:
            return m.group(1)
    return None


# Reports and released notebooks are written atomically (readers never see half a file).
write_atomic = atomic_write_text


# ---------------------------------------------------------------------------------------------
# Static reading of code (never executed here, except instructor notebooks by the release gates)
# ---------------------------------------------------------------------------------------------


def _python_source(source: str) -> str:
    """Cell source with IPython syntax (magics, shell escapes) blanked, so ``ast`` can parse it."""
    if source.lstrip().startswith("%%"):
        return ""
    lines = []
    for line in source.split("\n"):
        s = line.lstrip()
        lines.append("" if s.startswith(("%", "!")) else line)
    return "\n".join(lines)


def _parse(source: str) -> ast.Module | None:
    if len(source) > 500_000:
        return None
    try:
        return ast.parse(_python_source(source))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def top_level_statements(nb: Any) -> list[ast.stmt]:
    """Every top-level statement of the notebook's code cells, in order (unparsable cells skipped)."""
    out: list[ast.stmt] = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            tree = _parse(cell.get("source", ""))
            if tree is not None:
                out.extend(tree.body)
    return out


def _assigned_names(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [stmt.name]
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
    return [t.id for t in targets if isinstance(t, ast.Name)]


def _is_literal(node: ast.expr | None) -> bool:
    if node is None:
        return False
    try:
        ast.literal_eval(node)
        return True
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        return False


def definitions(nb: Any) -> tuple[str, dict[str, str]]:
    """Source that defines the notebook's functions without running its experiments.

    Returns (code, kinds): code holds the top-level imports, function and class definitions and
    literal assignments, in notebook order; ``kinds[name]`` says how the last top-level statement
    binding ``name`` does it: ``"def"``, ``"literal"`` or ``"computed"`` (left out of the code).
    """
    kept: list[ast.stmt] = []
    kinds: dict[str, str] = {}
    for stmt in top_level_statements(nb):
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            kept.append(stmt)
            continue
        names = _assigned_names(stmt)
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            kept.append(stmt)
            kinds[stmt.name] = "def"
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)) and names and _is_literal(stmt.value):
            kept.append(stmt)
            kinds.update({n: "literal" for n in names})
        else:
            kinds.update({n: "computed" for n in names})
    return ast.unparse(ast.Module(body=kept, type_ignores=[])), kinds


def _without_docstring(fn: ast.FunctionDef) -> ast.FunctionDef:
    fn = copy.deepcopy(fn)
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        fn.body = body[1:] or [ast.Pass()]
    return fn


def _is_stub(fn: ast.FunctionDef) -> bool:
    body = _without_docstring(fn).body
    return len(body) == 1 and isinstance(body[0], ast.Raise) and "NotImplementedError" in ast.unparse(body[0])


def answer_sources(nb: Any, lab: Any) -> dict[str, str]:
    """For each function question answered in the notebook: its code, comments and docstring removed.

    Identical code across students is reported for review (the tamper report); stubs are skipped.
    """
    last: dict[str, ast.FunctionDef] = {}
    for stmt in top_level_statements(nb):
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            last[stmt.name] = stmt
    out = {}
    for q in lab.questions:
        fn = last.get(q.target) if q.kind == "function" else None
        if fn is not None and not _is_stub(fn):
            try:
                out[q.name] = ast.unparse(_without_docstring(fn))
            except (RecursionError, ValueError):
                continue
    return out


def locked_hashes(nb: Any) -> dict[str, str]:
    """``{cell id: hash}`` of the cells a released notebook locks (from its cells, not its metadata)."""
    out = {}
    for cell in nb.get("cells", []):
        meta = cell.get("metadata", {})
        if LOCKED_TAG in meta.get("tags", []) or meta.get("editable") is False:
            out[str(cell.get("id", ""))] = cell_hash(cell.get("source", ""))
    return out


def tamper_findings(nb: Any, lab: Any, release: str | os.PathLike | None = None) -> list[str]:
    """Locked cells changed or deleted since the release, and a lab id that does not match."""
    findings = []
    if release is not None:
        expected = locked_hashes(read_notebook(release))
        source = ""
    else:
        meta = nb.get("metadata", {}).get("minilm", {})
        stored = meta.get("locked") if isinstance(meta, dict) else None
        expected = {str(k): str(v) for k, v in stored.items()} if isinstance(stored, dict) else {}
        source = " (against hashes stored in the submission itself; pass --release for a trusted comparison)"
        if not expected:
            return ["no record of locked cells in the notebook: pass --release to compare with the released notebook"]
    present = {cell_hash(c.get("source", "")) for c in nb.get("cells", [])}
    by_id = {str(c.get("id", "")): c for c in nb.get("cells", [])}
    for cid, h in expected.items():
        if h in present:
            continue
        if cid in by_id:
            first = by_id[cid].get("source", "").strip().split("\n")[0][:60]
            findings.append(f"locked cell {cid} was edited (now starts {first!r}){source}")
        else:
            findings.append(f"locked cell {cid} was deleted{source}")
    meta_lab = lab_id_of({"metadata": nb.get("metadata", {}), "cells": []})
    if meta_lab is not None and meta_lab != lab.id:
        findings.append(f"the notebook's metadata says lab {meta_lab}, graded as lab {lab.id}")
    return findings
