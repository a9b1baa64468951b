"""The Gradescope autograder folder: its setup installs what grading imports, on Python 3.10, in a
virtual environment; its ``run_autograder`` grades a sample submission end to end."""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minilm.cli import main
from minilm.grading.cli import GRADESCOPE_PYTHON, _admits

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "tests" / "fixtures" / "demo_lab"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("gs") / "autograder"
    main(["gradescope", "--lab", "99", "--out", str(out), "--release", str(DEMO / "99_demo.ipynb"), "--run-as", ""])
    return out


def _requirements(setup: str) -> dict[str, str]:
    return {_norm(m[1]): m[0] for m in re.findall(r'"(([A-Za-z0-9_.-]+)[<>=!][^"]*)"', setup)}


def test_setup_installs_into_a_venv_with_pins_python_3_10_can_install(folder):
    setup = (folder / "setup.sh").read_text()
    assert 'VENV="${MINILM_VENV:-/opt/minilm-venv}"' in setup and 'python3 -m venv "$VENV"' in setup
    assert '"$VENV/bin/pip" install' in setup
    assert "pip3 install" not in setup  # no system-wide installs
    reqs = _requirements(setup)
    assert {"torch", "numpy", "scipy", "regex", "tqdm", "matplotlib", "nbclient", "nbformat", "ipykernel"} <= set(reqs)
    for name, req in reqs.items():
        if "==" in req:  # an exact pin: that release must support Gradescope's Python
            needs = md.metadata(name).get("Requires-Python") or ""
            assert _admits(needs, GRADESCOPE_PYTHON), f"{req} needs Python {needs}"
        else:  # a range up to the installed version: pip picks the newest release that fits 3.10
            assert re.search(r"<=[0-9]", req), req
    assert _admits(">=3.11", "3.10") is False and _admits(">=3.10", "3.10") and _admits("", "3.10")


def _module_level_imports() -> set[str]:
    """Top-level modules minilm's code imports when its modules load (the autograder copies all of
    them). Imports inside functions are the lazy or optional ones (scipy, safetensors, submitit):
    the required among those are in pyproject.toml's dependencies, checked separately."""
    names: set[str] = set()
    for path in (ROOT / "minilm").rglob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"minilm", "__future__"}


def _declared() -> set[str]:
    """minilm's declared dependencies and the grader's (the ``lab`` extra, JupyterLab's UI aside)."""
    out = set()
    for r in md.requires("minilm") or []:
        name = _norm(re.match(r"[A-Za-z0-9_.-]+", r)[0])
        if ";" not in r or 'extra == "lab"' in r:
            out.add(name)
    return out - {"jupyterlab"}


def test_setup_installs_every_distribution_minilm_imports(folder):
    # Pinned in setup.sh, or required (transitively) by something pinned.
    dists = md.packages_distributions()
    modules = _module_level_imports()
    needed = {_norm(d) for m in modules for d in dists.get(m, [])} | _declared()
    closure: set[str] = set()
    todo = list(_requirements((folder / "setup.sh").read_text()))
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for r in requires:
            if "extra ==" in r:
                continue
            todo.append(_norm(re.match(r"[A-Za-z0-9_.-]+", r)[0]))
    missing = sorted(needed - closure)
    assert missing == [], f"needed by minilm or its grader but not installed by setup.sh: {missing}"
    assert {"numpy", "torch"} <= modules and {"scipy", "nbclient", "ipykernel"} <= _declared()


def test_run_autograder_grades_a_sample_submission_end_to_end(folder, tmp_path):
    root = tmp_path / "autograder"
    shutil.copytree(folder, root / "source")
    (root / "submission" / "sub").mkdir(parents=True)
    shutil.copy(DEMO / "solutions" / "99_demo.ipynb", root / "submission" / "sub" / "lab.ipynb")
    env = dict(os.environ, AUTOGRADER_ROOT=str(root), MINILM_PYTHON=sys.executable, PYTHONPATH=str(root / "source"))
    proc = subprocess.run(["bash", str(root / "source" / "run_autograder")], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((root / "results" / "results.json").read_text())
    assert results["score"] == 10.0
    assert sum(t["max_score"] for t in results["tests"]) == pytest.approx(10.0)
    # Before grades are published, the visible summary does not give the graded checks' total away.
    assert "10 / 10" not in results["output"] and "public checks" in results["output"]
    assert {t["visibility"] for t in results["tests"]} == {"visible", "after_published"}


# Stand-ins for apt-get, python3 and the virtual environment's pip: each logs its arguments. The
# venv's python runs this interpreter, so setup.sh's closing import check really runs.
_FAKE_APT = """#!/bin/sh
echo "apt-get $*" >> "$FAKE_LOG"
"""
_FAKE_PYTHON3 = """#!/bin/sh
echo "python3 $*" >> "$FAKE_LOG"
if [ "$1 $2" != "-m venv" ]; then echo "fake python3: only -m venv" >&2; exit 1; fi
case "$3" in "$FAKE_ROOT"/*) ;; *) echo "fake python3: refusing to write $3 outside the test folder" >&2; exit 1;; esac
mkdir -p "$3/bin"
cp "$FAKE_ROOT/templates/pip" "$FAKE_ROOT/templates/python" "$3/bin/"
"""
_FAKE_PIP = """#!/bin/sh
echo "pip $*" >> "$FAKE_LOG"
if [ -n "$FAKE_PIP_FAILS" ] && echo "$*" | grep -q "$FAKE_PIP_FAILS"; then exit 1; fi
"""
_FAKE_VENV_PYTHON = """#!/bin/sh
echo "python $*" >> "$FAKE_LOG"
exec "$REAL_PYTHON" "$@"
"""


def _run_setup(folder: Path, tmp: Path, **extra: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    fake = tmp / "bin"
    fake.mkdir(exist_ok=True)
    (tmp / "templates").mkdir(exist_ok=True)
    for path, text in ((fake / "apt-get", _FAKE_APT), (fake / "python3", _FAKE_PYTHON3),
                       (tmp / "templates" / "pip", _FAKE_PIP), (tmp / "templates" / "python", _FAKE_VENV_PYTHON)):
        path.write_text(text)
        path.chmod(0o755)
    log = tmp / "calls.log"
    log.unlink(missing_ok=True)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "FAKE_LOG": str(log), "FAKE_ROOT": str(tmp), "REAL_PYTHON": sys.executable,
           "MINILM_VENV": str(tmp / "venv"), "HOME": str(tmp), **extra}
    proc = subprocess.run(["bash", str(folder / "setup.sh")], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp)
    return proc, log.read_text().splitlines() if log.exists() else []


def test_setup_sh_runs_and_installs_what_grading_needs(folder, tmp_path):
    from packaging.requirements import Requirement

    proc, calls = _run_setup(folder, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    venv = tmp_path / "venv"
    assert calls[:3] == ["apt-get update", "apt-get install -y python3 python3-venv python3-pip bubblewrap",
                         f"python3 -m venv {venv}"]
    pips = [c.split(" ", 1)[1] for c in calls if c.startswith("pip ")]
    assert pips[0] == "install --upgrade pip"
    torch_req = "torch==" + md.version("torch").split("+")[0]
    assert pips[1] == f"install --index-url https://download.pytorch.org/whl/cpu {torch_req}"
    assert pips[2].startswith("install ") and len(pips) == 3
    # Every requirement pip is given parses, admits the version installed here, and covers the grader's needs.
    reqs = [Requirement(r) for r in pips[2].split()[1:]]
    for r in reqs:
        assert r.specifier.contains(md.version(r.name).split("+")[0], prereleases=True), str(r)
    assert {"numpy", "scipy", "regex", "tqdm", "matplotlib", "nbclient", "nbformat", "ipykernel"} <= {
        _norm(r.name) for r in reqs}
    # Last, the import check ran in the venv (this interpreter) and passed.
    assert calls[-1].startswith("python -c import minilm.grading.grader") and "scipy" in calls[-1]


def test_setup_sh_stops_at_the_first_failed_install(folder, tmp_path):
    proc, calls = _run_setup(folder, tmp_path, FAKE_PIP_FAILS="download.pytorch.org")
    assert proc.returncode != 0
    assert calls[-1].startswith("pip install --index-url https://download.pytorch.org/whl/cpu torch==")
    assert not [c for c in calls if c.startswith("python -c")]  # nothing after the failure ran
