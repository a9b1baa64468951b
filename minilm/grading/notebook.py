"""Notebook files: student versions from instructor sources, locked cells, and reading submissions.

Solution regions in the instructor notebook (``solutions/NN_topic.ipynb``):

- code lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (markers included) become
  ``raise NotImplementedError("q2: write bigram_probs")`` at the indentation of the ``BEGIN`` line,
  naming the exercise (the first ``check("qN")`` at or after the cell) and the function around the
  region, so a student who runs on finds which exercise is left, not a ``TypeError`` further down;
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
import stat
import warnings
from pathlib import Path
from typing import Any

from minilm.atomic import atomic_write_text

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
STUB = "raise NotImplementedError()"  # the form of ``stub_line`` with nothing to name
MARKDOWN_STUB = "YOUR ANSWER HERE"
LOCKED_TAG = "locked"
MAX_NOTEBOOK_BYTES = 128 * 2**20  # outputs included (they are dropped): a bound on the grader's memory
MAX_CODE_CHARS = 5 * 2**20

_ONE_LINE = re.compile(r"^(?P<indent>[ \t]*)(?P<target>[^=#\n]+?)\s*=(?!=)\s*(?P<expr>\S.*?)\s*#{1,3}\s*SOLUTION\s*$",
                       re.IGNORECASE)
_MARKER_LIKE = re.compile(r"#\s*SOLUTION\s*$", re.IGNORECASE)
# Anything that looks like a region marker without being exactly one (case, spacing, number of
# '#', bold, HTML comments): an error, never silently kept.
_REGION_LIKE = re.compile(r"(BEGIN|END)[\s_*-]*SOLUTION", re.IGNORECASE)
_CHECK_CALL = re.compile(r"\bcheck(_all)?\s*\(")
_CHECK_NAME = re.compile(r"""\bcheck\s*\(\s*["'](\w+)["']""")
_DEF_LINE = re.compile(r"^(?P<indent>[ \t]*)(?:async\s+)?def\s+(?P<name>\w+)\s*\(")
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


def stub_line(exercise: str | None = None, function: str | None = None) -> str:
    """The ``raise NotImplementedError(...)`` that replaces a code solution region.

    ``exercise`` is the question id (``"q2"``), ``function`` the function the region sits in:
    ``raise NotImplementedError('q2: write bigram_probs')``.
    """
    what = f"write {function}" if function else "write your answer here"
    message = f"{exercise}: {what}" if exercise else (what if function else "")
    return f"raise NotImplementedError({message!r})" if message else STUB


def strip_solutions(source: str, cell_type: str = "code", where: str = "cell",
                    exercise: str | None = None) -> tuple[str, bool]:
    """The student version of one cell's source, and whether it held a solution.

    ``exercise`` (a question id such as ``"q2"``) is named in the stub's ``NotImplementedError``.
    """
    out: list[str] = []
    inside = False
    changed = False
    defs: list[tuple[int, str]] = []  # (indent, name) of the functions open at this line
    for n, line in enumerate(source.split("\n"), start=1):
        stripped = line.strip()
        width = len(line) - len(line.lstrip())
        if stripped and not inside and not stripped.startswith("#"):  # comments do not close a function
            defs = [d for d in defs if d[0] < width]
            m_def = _DEF_LINE.match(line)
            if m_def:
                defs.append((width, m_def["name"]))
        if stripped == BEGIN:
            if inside:
                raise SolutionMarkerError(f"{where}, line {n}: {BEGIN} inside another solution region")
            inside, changed = True, True
            indent = line[: len(line) - len(line.lstrip())]
            around = [name for d_indent, name in defs if d_indent < width]
            stub = stub_line(exercise, around[-1] if around else None)
            out.append(indent + (stub if cell_type == "code" else MARKDOWN_STUB))
        elif stripped == END:
            if not inside:
                raise SolutionMarkerError(f"{where}, line {n}: {END} without a {BEGIN} before it")
            inside = False
        elif _REGION_LIKE.search(line):
            # "# BEGIN SOLUTION", "### begin solution", "**BEGIN SOLUTION**", "<!-- END SOLUTION -->"...:
            # a marker that is almost right would leave its solution in the student notebook.
            raise SolutionMarkerError(
                f"{where}, line {n}: malformed solution marker {stripped[:60]!r}; use '{BEGIN}' / "
                f"'{END}' exactly, on their own lines")
        elif inside:
            continue
        elif cell_type == "code" and _MARKER_LIKE.search(line):
            m = _ONE_LINE.match(line)
            if m is None:
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


def _strings(node: Any) -> list[str]:
    """Every string in a notebook node (keys included); base64 attachments decoded as well."""
    import base64
    import binascii

    found: list[str] = []
    stack = [node]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            found.append(x)
            if len(x) >= 8 and re.fullmatch(r"[A-Za-z0-9+/=\s]+", x):
                try:
                    found.append(base64.b64decode(x, validate=False).decode("utf-8", "ignore"))
                except (binascii.Error, ValueError):
                    pass
        elif isinstance(x, dict):
            stack += list(x.keys()) + list(x.values())
        elif isinstance(x, list):
            stack += x
    return found


def _solution_lines(solution: Any) -> tuple[list[str], str]:
    """(solution lines, the rest of the text) of an instructor notebook, read leniently.

    Independent of ``strip_solutions``: any line that looks like a region marker (any case, any
    number of ``#``, bold, HTML comments) opens or closes a region, in every kind of cell, and a
    one-line answer's ``name = value`` is a solution line.
    """
    secret: list[str] = []
    shown: list[str] = []
    for cell in solution.get("cells", []):
        inside = False
        for line in str(cell.get("source", "")).split("\n"):
            m = _REGION_LIKE.search(line)
            if m:
                inside = m.group(1).upper() == "BEGIN"
                continue
            one = _ONE_LINE.match(line) if _MARKER_LIKE.search(line) else None
            if inside:
                secret.append(line.strip())
            elif one is not None:
                secret.append(f"{one['target'].strip()} = {one['expr']}")
            else:
                shown.append(line)
    return [s for s in secret if len(s) >= 6 and re.search(r"\w", s)], "\n".join(shown)


def solution_leaks(solution: Any, student: Any) -> list[str]:
    """Solution lines of ``solution`` found in ``student`` (sources, raw cells, attachments,
    metadata, anywhere) more often than the instructor shows them outside solution regions."""
    secret, shown = _solution_lines(solution)
    text = "\n".join(_strings(student))
    return sorted({line for line in secret if text.count(line) > shown.count(line)})


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
    # Each cell's exercise: the first check("qN") at or after it (the self-check that follows it).
    exercises: list[str | None] = []
    upcoming: str | None = None
    for cell in reversed(nb.cells):
        m = _CHECK_NAME.search(cell.source) if cell.cell_type == "code" else None
        upcoming = m.group(1) if m else upcoming
        exercises.append(upcoming)
    exercises.reverse()
    for i, cell in enumerate(nb.cells):
        where = f"cell {i}"
        cid = cell.get("id") or f"cell-{i:03d}"
        if cid in used_ids:
            cid = f"{cid}-{i}"
        used_ids.add(cid)
        cell["id"] = cid
        had_solution = False
        if cell.cell_type in ("code", "markdown", "raw"):
            kind = "code" if cell.cell_type == "code" else "markdown"
            cell.source, had_solution = strip_solutions(cell.source, kind, where, exercises[i])
        if had_solution or cell.cell_type == "code":
            cell.pop("attachments", None)  # an image or file of the answer goes with it
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
    spec = nb.metadata.get("kernelspec") if isinstance(nb.metadata.get("kernelspec"), dict) else {}
    kernelspec = {k: str(spec.get(k, v)) for k, v in  # only these keys: metadata can hold anything
                  (("name", "python3"), ("display_name", "Python 3"), ("language", "python"))}
    meta = {"kernelspec": kernelspec, "language_info": {"name": "python"}}
    info: dict[str, Any] = {"locked": locked}
    if lab_id is not None:
        info["lab"] = lab_id
    meta["minilm"] = info
    nb.metadata = _nbformat().NotebookNode(meta)
    student = _nbformat().from_dict(nb)
    leaks = solution_leaks(solution, student)
    if leaks:
        raise SolutionMarkerError(f"solution text is still in the student notebook (outside the markers, in a "
                                  f"raw cell, an attachment or metadata): {leaks[0][:80]!r}"
                                  + (f" and {len(leaks) - 1} more line(s)" if len(leaks) > 1 else ""))
    return student


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
        # A symbolic link is never followed: it could point at any file the grader can read.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        if path.is_symlink():
            return None, "the submission is a symbolic link, not a notebook file: hand in the file itself"
        return None, f"the notebook cannot be read: {err.strerror}"
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None, "the submission is not a regular file"
            data = f.read(MAX_NOTEBOOK_BYTES + 1)
        if len(data) > MAX_NOTEBOOK_BYTES:
            return None, f"the notebook is over {MAX_NOTEBOOK_BYTES // 2**20} MB even with its outputs: clear them"
        text = data.decode("utf-8")
        del data
    except UnicodeDecodeError:
        return None, "the notebook is not UTF-8 text"
    except OSError as err:
        return None, f"the notebook cannot be read: {err.strerror}"
    try:
        with warnings.catch_warnings():  # nbformat warns about old or odd notebooks: we check below
            warnings.simplefilter("ignore")
            raw = json.loads(text)
            del text
            for cell in raw.get("cells", []) if isinstance(raw, dict) and isinstance(raw.get("cells"), list) else []:
                if isinstance(cell, dict):  # outputs never count: drop them before nbformat reads the rest
                    cell.pop("attachments", None)
                    if "outputs" in cell:
                        cell["outputs"] = []
            nb = _nbformat().reads(json.dumps(raw), as_version=4)
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
        # Outputs and attachments are never graded: dropped here, however large they were.
        cell.pop("attachments", None)
        if cell["cell_type"] == "code":
            cell["outputs"] = []
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


class _Renamer(ast.NodeTransformer):
    """Rename a function's parameters and local variables ``_v0``, ``_v1``... in order of appearance."""

    def __init__(self, names: list[str]) -> None:
        self.map = {n: f"_v{i}" for i, n in enumerate(dict.fromkeys(names))}

    def visit_Name(self, node: ast.Name) -> ast.Name:
        node.id = self.map.get(node.id, node.id)
        return node

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.arg = self.map.get(node.arg, node.arg)
        node.annotation = None
        return node


def normalized_source(fn: ast.FunctionDef) -> str:
    """A function's code with formatting, comments, docstring, annotations and local names
    normalized, so that reformatted or renamed copies of the same code compare equal."""
    fn = _without_docstring(fn)
    fn.returns = None
    local = [a.arg for a in ast.walk(fn.args) if isinstance(a, ast.arg)]
    local += [n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
    body = ast.Module(body=fn.body, type_ignores=[])
    renamer = _Renamer(local)
    fn.args = renamer.visit(fn.args)
    fn.body = renamer.visit(body).body
    return ast.unparse(fn)


def answer_sources(nb: Any, lab: Any) -> dict[str, str]:
    """For each function question answered in the notebook: its normalized code (``normalized_source``).

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
                out[q.name] = normalized_source(fn)
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
