"""The lab runner: ``minilm lab list``, ``minilm lab run NN [--fast|--full]``, and ``setup()``.

``lab run`` executes a lab notebook headless (the same notebook JupyterLab opens), with a progress
bar over its cells, and prints the graded summary that the notebook's last cell computes, in
self-study mode (every check run, the real verdict), then the score on a line of its own:
``score: 15/15 points (fast mode, 93 s)``. Fast
mode is the notebook's default (``FAST = True`` in its ``parameters`` cell); ``--full`` injects
``FAST = False`` right after that cell, as papermill does. ``setup()`` is the first call of every
lab notebook (``from minilm.labs import setup``).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minilm.grading.notebook import is_stale
from minilm.grading.questions import Lab

_LAB_FILE = re.compile(r"^(\d\d)_([a-z0-9_]+)\.ipynb$")
# The closing line of check_all() in self-study mode (minilm.grading.selfcheck.total_line).
_SCORE = re.compile(r"Self-study score: (?P<earned>[-+0-9.e]+)/(?P<total>[0-9.e+]+) points")


def labs_dir() -> Path:
    """The ``labs/`` folder of the source checkout (or ``$MINILM_LABS_DIR``)."""
    env = os.environ.get("MINILM_LABS_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "labs"
    if not path.is_dir():
        raise FileNotFoundError(
            f"labs folder not found at {path}: run from a source checkout of minilm (git clone, then "
            "pip install -e .), or set MINILM_LABS_DIR to the folder holding the NN_topic.ipynb files"
        )
    return path


@dataclass
class LabInfo:
    lab_id: str
    topic: str
    student: Path
    solution: Path
    chapter: Path

    @property
    def title(self) -> str:
        return self.topic.replace("_", " ")

    def status(self, find_lab: Callable[[str], Lab]) -> str:
        """A one-word status plus what is missing; ``find_lab`` is the registry's ``get_lab``."""
        missing = [name for name, p in (("student notebook", self.student), ("solution", self.solution),
                                        ("chapter", self.chapter)) if not p.is_file()]
        if missing:
            return "incomplete (missing " + ", ".join(missing) + ")"
        try:
            n_questions = len(find_lab(self.lab_id).questions)
            if is_stale(self.solution, self.student):
                return f"stale student notebook ({n_questions} questions): run `minilm release {self.solution}`"
            return f"ready ({n_questions} graded questions)"
        except (ImportError, KeyError, ValueError) as err:
            return f"no graded questions ({err})"


def list_labs() -> list[LabInfo]:
    """Every lab found in ``labs/`` or in the instructor sources ``solutions/`` beside it, in number order."""
    root = labs_dir()
    found: dict[str, LabInfo] = {}
    # solutions/ sits beside labs/, not in it: `jupyter lab labs/` must not show students the answers first
    for path in sorted(root.glob("*.ipynb")) + sorted((root.parent / "solutions").glob("*.ipynb")):
        m = _LAB_FILE.match(path.name)
        if m:
            lab_id, topic = m.groups()
            found[lab_id] = LabInfo(lab_id, topic, root / path.name, root.parent / "solutions" / path.name,
                                    root.parent / "course" / f"{lab_id}_{topic}.md")
    return [found[k] for k in sorted(found)]


def find_lab(lab_id: str) -> LabInfo:
    lab_id = lab_id.zfill(2)
    for lab in list_labs():
        if lab.lab_id == lab_id:
            return lab
    known = ", ".join(lab.lab_id for lab in list_labs()) or "none"
    raise ValueError(f"no lab {lab_id!r}: known labs are {known} (see `minilm lab list`)")


def inject_parameters(nb, params: dict) -> None:
    """Set ``params`` inside the cell tagged ``parameters`` (e.g. ``FAST = False`` for full mode).

    Each ``NAME = ...`` line of that cell is rewritten in place (a name it lacks is appended), so
    knobs computed in the same cell from ``FAST`` (``STEPS = 100 if FAST else 2000``) follow.
    """
    for cell in nb.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            lines = cell.source.splitlines()
            for name, value in params.items():
                pattern = re.compile(rf"^{re.escape(name)}\s*=")
                hits = [i for i, line in enumerate(lines) if pattern.match(line)]
                for i in hits:
                    lines[i] = f"{name} = {value!r}  # injected by minilm lab run"
                if not hits:
                    lines.append(f"{name} = {value!r}  # injected by minilm lab run")
            cell.source = "\n".join(lines)
            return
    raise ValueError("the notebook has no cell tagged 'parameters': tag the cell that sets FAST")


class NotebookStalled(RuntimeError):
    """The notebook client still waited for a cell well past its own timeout (it missed the reply)."""


# A cell's wait is cut this long after nbclient's own timeout should have ended it.
STALL_GRACE_S = 120


@contextlib.contextmanager
def _stall_guard(seconds: float | None, what: str):
    """Raise ``NotebookStalled`` in this (main) thread if the block runs longer than ``seconds``.

    nbclient's cell timeout ends a cell that runs too long, but not a client that lost the kernel's
    reply: such a wait was seen to last for ever with the kernel idle (and even after the kernel was
    killed). A timer signal interrupts it with an error that says so. Only in the main thread (where
    signal handlers run) and where SIGALRM exists; elsewhere the block runs unguarded.
    """
    usable = (seconds is not None and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def stalled(signum, frame):
        raise NotebookStalled(f"{what} did not finish within {seconds:.0f} s, past the notebook client's own "
                              "timeout: the client missed the kernel's reply. Run it again.")

    previous = signal.signal(signal.SIGALRM, stalled)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def execute_notebook(path: Path, params: dict | None = None, timeout: int | None = 1800, progress: bool = True,
                     cwd: Path | None = None, out_path: Path | None = None, env: dict[str, str] | None = None):
    """Run every cell of a notebook headless (nbclient); returns the executed notebook.

    ``timeout``: seconds per cell (None: no limit). ``env``: extra environment variables for the kernel
    (e.g. ``MINILM_MODE``). Raises ``NotebookStalled`` if the client is still waiting for a cell
    ``STALL_GRACE_S`` after its timeout.
    """
    import nbformat
    from tqdm.auto import tqdm

    from minilm.grading.kernel_client import NotebookClient  # nbclient's, its waits taken in slices

    nb = nbformat.read(path, as_version=4)
    if params:
        inject_parameters(nb, params)
    # The kernel (not this process) learns the mode from the environment as well as from FAST.
    env = {**os.environ, "MINILM_FAST": "0" if params and params.get("FAST") is False else "1", **(env or {})}
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd or path.parent)}})
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    bar = tqdm(total=len(code_cells), desc=f"run {path.name}", disable=not progress, unit="cell")
    guard_s = None if timeout is None else timeout + STALL_GRACE_S
    with client.setup_kernel(env=env):
        for i in code_cells:
            with _stall_guard(guard_s, f"{path.name}, cell {i}"):
                client.execute_cell(nb.cells[i], i)
            bar.update(1)
    bar.close()
    if out_path is not None:
        nbformat.write(nb, out_path)
    return nb


def cell_text(cell) -> str:
    """All text a code cell printed (stream and text/plain outputs)."""
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif "data" in out and "text/plain" in out["data"]:
            parts.append(out["data"]["text/plain"])
    return "".join(parts)


def run_lab(lab_id: str, fast: bool = True, student: bool = False, progress: bool = True,
            out_path: Path | None = None) -> tuple[object, float]:
    """Execute a lab (solution by default) and return (executed notebook, seconds).

    The checks run in self-study mode, whatever ``$MINILM_MODE`` says: the summary is the real score.
    """
    lab = find_lab(lab_id)
    path = lab.student if student else lab.solution
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `minilm lab list` to see what is there")
    t0 = time.perf_counter()
    # Full mode can train for many minutes in one cell on a CPU: no per-cell time limit there.
    nb = execute_notebook(path, params=None if fast else {"FAST": False}, progress=progress, out_path=out_path,
                          timeout=1800 if fast else None, env={"MINILM_MODE": "self"})
    return nb, time.perf_counter() - t0


def graded_summary(nb) -> str:
    """What the lab's graded-summary cell (else its last code cell) printed."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    graded = [c for c in code if "graded-summary" in c.metadata.get("tags", [])]
    return cell_text(graded[-1]) if graded else (cell_text(code[-1]) if code else "")


def score_line(summary: str) -> str:
    """``score: 15/15 points`` from a self-study summary (its last score line), or why there is none."""
    found = list(_SCORE.finditer(summary))
    if not found:
        return "score: not found (the notebook's last cell printed no self-study score: does it end with check_all()?)"
    m = found[-1]
    return f"score: {float(m['earned']):g}/{float(m['total']):g} points"


def _cmd_list(args) -> int:
    labs = list_labs()
    if not labs:
        print(f"no labs in {labs_dir()}")
        return 0
    for lab in labs:
        print(f"{lab.lab_id}  {lab.title:<28} {lab.status(args.find_lab)}")
    return 0


def _cmd_run(args) -> int:
    from nbclient.exceptions import CellExecutionError

    try:
        nb, seconds = run_lab(args.lab, fast=not args.full, student=args.student,
                              out_path=Path(args.out) if args.out else None)
    except CellExecutionError as err:
        print(f"minilm: the lab stopped with an error:\n{str(err)[-3000:]}")
        return 1
    summary = graded_summary(nb)
    print(summary.rstrip())
    print(f"{score_line(summary)} ({'full' if args.full else 'fast'} mode, {seconds:.0f} s)")
    return 0


def add_commands(subparsers: Any, find_lab: Callable[[str], Lab]) -> None:
    """Register ``minilm lab list`` and ``minilm lab run`` on ``ArgumentParser.add_subparsers()``'s result.

    ``find_lab`` is the registry's ``minilm.labs.get_lab`` (``lab list`` counts each lab's
    questions), handed in by ``minilm.cli`` since ``minilm.labs`` imports this module.
    """
    p = subparsers.add_parser("lab", help="list the labs or run one headless")
    lab_sub = p.add_subparsers(dest="lab_command", metavar="ACTION", required=True)
    q = lab_sub.add_parser("list", help="every lab and its status")
    q.set_defaults(func=_cmd_list, find_lab=find_lab)
    q = lab_sub.add_parser("run", help="execute a lab notebook headless and print its graded summary")
    q.add_argument("lab", help="lab number, e.g. 00")
    mode = q.add_mutually_exclusive_group()
    mode.add_argument("--fast", action="store_true", help="fast mode (the default)")
    mode.add_argument("--full", action="store_true", help="full mode: bigger experiments (minutes; a GPU helps)")
    q.add_argument("--student", action="store_true", help="run the student notebook instead of the solution")
    q.add_argument("--out", default=None, help="also save the executed notebook here")
    q.set_defaults(func=_cmd_run)


# ------------------------------------------------------------------------- inside a notebook
def setup(seed: int = 0, device: str = "auto", threads: int | None = None):
    """The first call of every lab: seeds, device, CPU threads, printed on one line; returns the device.

    ``threads`` follows minilm's thread policy (``minilm.device.configure_threads``): the argument,
    else ``$MINILM_THREADS``, else 1 on a machine with two cores or fewer.
    """
    from minilm.device import configure_threads, resolve_device, seed_everything

    n_threads = configure_threads(threads, verbose=False)  # said in the one line below instead
    seed_everything(seed)
    dev = resolve_device(device)
    print(f"minilm lab set-up: device {dev}, {n_threads} CPU thread(s), seed {seed}")
    return dev
