"""``minilm doctor``: is this machine ready for the labs, and what to fix when it is not.

Each finding is one line (what was found) and, for a problem, the fix; nothing is changed.
``diagnose()`` returns the findings, ``report()`` the text the command prints::

    ok    torch 2.13.0+cpu (CPU build)
    ok    device="auto" chooses: cpu
    FIX   ipywidgets is not installed: the labs' sliders will not show
          -> pip install -e ".[lab]"
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

LAB_EXTRAS = 'pip install -e ".[lab]"  (from the minilm folder, in the same virtual environment)'
CPU_TORCH = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
CUDA_TORCH = ("pip install torch --index-url https://download.pytorch.org/whl/cu128  (the index for your CUDA "
              "version: https://pytorch.org/get-started/locally/)")


@dataclass
class Finding:
    """One thing ``minilm doctor`` looked at: ``what`` was found; ``fix`` is set when it is a problem."""

    what: str
    fix: str | None = None

    @property
    def ok(self) -> bool:
        return self.fix is None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _python() -> Finding:
    v = sys.version_info
    text = f"python {platform.python_version()} ({sys.executable})"
    if v < (3, 10):
        return Finding(text, "minilm needs Python 3.10 or newer: create the virtual environment with a newer python")
    if sys.prefix == sys.base_prefix and not os.environ.get("CONDA_PREFIX"):
        # Not a problem in Colab or a container; on a laptop README's venv keeps minilm's packages apart.
        return Finding(text + ", not in a virtual environment (README: Install creates one)")
    return Finding(text)


def _torch() -> list[Finding]:
    try:
        import torch
    except ImportError:
        return [Finding("torch is not installed", f"{CPU_TORCH}   (or the CUDA build: {CUDA_TORCH})")]
    cuda_build = torch.version.cuda
    mps = getattr(torch.backends, "mps", None)
    build = f"CUDA {cuda_build} build" if cuda_build else (
        "CPU/MPS build" if mps is not None and mps.is_built() else "CPU build")
    out = [Finding(f"torch {torch.__version__} ({build})")]
    gpu_here = shutil.which("nvidia-smi") is not None
    if cuda_build and not torch.cuda.is_available():
        fix = ("the NVIDIA driver is not working (run nvidia-smi)" if gpu_here else
               f"no NVIDIA GPU here: the CPU build is a much smaller download: {CPU_TORCH}")
        out.append(Finding("CUDA build, but no GPU is usable", fix))
    elif not cuda_build and gpu_here and sys.platform.startswith(("linux", "win")):
        out.append(Finding("an NVIDIA GPU is present (nvidia-smi), but torch is a CPU build",
                           f"to train on it: {CUDA_TORCH}"))
    elif torch.cuda.is_available():
        out.append(Finding(f"GPU: {torch.cuda.get_device_name(0)}"))
    return out


def _device_and_threads() -> list[Finding]:
    try:
        import torch  # noqa: F401 - reported by _torch when missing
    except ImportError:
        return []
    from minilm.device import default_threads, resolve_device

    out = [Finding(f'device="auto" chooses: {resolve_device("auto")} (CUDA, then MPS, then CPU)')]
    n, reason = default_threads()
    env = os.environ.get("MINILM_THREADS", "").strip()
    if env:
        if env.isdigit() and int(env) >= 1:
            out.append(Finding(f"CPU threads: {env} (from MINILM_THREADS; the default would be {n}: {reason})"))
        else:
            out.append(Finding(f"MINILM_THREADS={env!r} is not a positive integer",
                               "set it to a number of threads (e.g. export MINILM_THREADS=2) or unset it"))
    else:
        out.append(Finding(f"CPU threads: {n} ({reason}; MINILM_THREADS overrides)"))
    return out


def _lab_tools() -> list[Finding]:
    out = []
    for module, dist, role in (("jupyterlab", "jupyterlab", "opens the labs"),
                               ("ipywidgets", "ipywidgets", "the labs' sliders"),
                               ("ipykernel", "ipykernel", "runs the notebooks' code"),
                               ("matplotlib", "matplotlib", "the labs' plots"),
                               ("nbclient", "nbclient", "minilm lab run and minilm check")):
        if importlib.util.find_spec(module) is None:
            out.append(Finding(f"{module} is not installed ({role})", LAB_EXTRAS))
        else:
            out.append(Finding(f"{module} {_version(dist) or '(version unknown)'} ({role})"))
    if importlib.util.find_spec("ipywidgets") is not None and importlib.util.find_spec("jupyterlab_widgets") is None:
        out.append(Finding("jupyterlab_widgets is missing: sliders show as text in JupyterLab",
                           "pip install 'ipywidgets>=8' (it brings jupyterlab_widgets)"))
    return out


def _mode() -> Finding:
    from minilm.grading.selfcheck import MODE_ENV, resolve_mode

    try:
        mode = resolve_mode()
    except ValueError as err:
        return Finding(str(err), f"export {MODE_ENV}=self (or class), or unset it")
    if os.environ.get(MODE_ENV):
        return Finding(f"check() mode: {mode} (from {MODE_ENV})")
    return Finding("check() mode: self-study (the verdict and score), unless a notebook was released in class mode")


def _labs() -> list[Finding]:
    from minilm.labs import get_lab
    from minilm.labs.runner import labs_dir, list_labs

    try:
        root = labs_dir()
    except FileNotFoundError as err:
        return [Finding("labs folder not found", str(err))]
    labs = list_labs()
    if not labs:
        return [Finding(f"no labs in {root}", "run from a source checkout of minilm (git clone ...)")]
    out = [Finding(f"labs in {root}: {len(labs)} ({', '.join(lab.lab_id for lab in labs)})")]
    for lab in labs:
        status = lab.status(get_lab)
        line = f"lab {lab.lab_id} {lab.title}: {status}"  # the status names a missing notebook or chapter
        fix = None
        if not status.startswith("ready"):
            fix = ("`minilm release` rebuilds a stale student notebook (instructors); a learner with a fresh "
                   "clone should not see this: git pull, or report it") if "stale" in status else (
                "restore the missing files from git (git checkout -- labs course)")
        out.append(Finding(line, fix))
    out += _landing(root)
    return out


def _landing(root: Path) -> list[Finding]:
    """The landing page ``labs/README.md`` and the chapters it links (``labs/course`` -> ``../course``)."""
    out = []
    readme = root / "README.md"
    if not readme.is_file():
        out.append(Finding(f"no landing page {readme}", "restore it from git (git checkout -- labs/README.md)"))
    link = root / "course"
    if link.is_dir() and any(link.glob("[0-9][0-9]_*.md")):
        out.append(Finding(f"chapters reachable from the labs folder ({link})"))
    else:
        out.append(Finding(
            f"{link} does not lead to the chapters: the landing page's chapter links will not open",
            "git checked the symbolic link out as a plain file (Windows without symlink support): run "
            "`git config core.symlinks true` and `git checkout -- labs/course` (Windows: enable Developer "
            "Mode first), or read the chapters in course/ directly"))
    return out


def diagnose() -> list[Finding]:
    """Everything ``minilm doctor`` checks, in the order it prints them."""
    from minilm import __version__

    return [Finding(f"minilm {__version__} ({Path(__file__).resolve().parents[1]})"), _python(), *_torch(),
            *_device_and_threads(), *_lab_tools(), _mode(), *_labs()]


def report(findings: list[Finding]) -> str:
    """The printed form: ``ok``/``FIX`` and the finding, the fix under it, and a last line."""
    lines = []
    for f in findings:
        lines.append(f"{'ok ' if f.ok else 'FIX'}   {f.what}")
        if f.fix:
            lines.append(f"      -> {f.fix}")
    problems = sum(not f.ok for f in findings)
    lines.append("ready: open the labs on their landing page with `jupyter lab labs/README.md`" if not problems else
                 f"{problems} problem(s) to fix (each with its fix above)")
    return "\n".join(lines)
