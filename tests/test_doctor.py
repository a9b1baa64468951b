"""`minilm doctor`: what a learner needs to know about this machine, and the fix for each problem."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from minilm.cli import main
from minilm.device import default_threads, resolve_device
from minilm.labs import available_labs
from minilm.labs.doctor import Finding, diagnose, report

ROOT = Path(__file__).resolve().parents[1]


_ENV = ("MINILM_THREADS", "MINILM_MODE", "MINILM_LABS_DIR", "MINILM_GRADE_JOB")  # CI sets MINILM_THREADS


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def text() -> str:
    with pytest.MonkeyPatch.context() as mp:  # module scope: set up before the autouse fixture above
        for name in _ENV:
            mp.delenv(name, raising=False)
        return report(diagnose())


def test_reports_torch_build_device_and_threads(text):
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU"
    assert f"torch {torch.__version__} ({build}" in text
    assert f'device="auto" chooses: {resolve_device("auto")}' in text
    n, reason = default_threads()
    assert f"CPU threads: {n} ({reason}; MINILM_THREADS overrides)" in text


def test_reports_the_lab_tools_and_every_lab(text):
    for module in ("jupyterlab", "ipywidgets", "matplotlib", "ipykernel"):
        installed = importlib.util.find_spec(module) is not None
        assert (f"ok    {module} " in text) == installed and (f"FIX   {module} is not installed" in text) != installed
    assert f"labs in {ROOT / 'labs'}: {len(available_labs())} ({', '.join(available_labs())})" in text
    for lab_id in available_labs():
        assert f" lab {lab_id} " in text
    assert "chapters reachable from the labs folder" in text
    assert "check() mode: self-study" in text


def test_each_problem_comes_with_its_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("MINILM_THREADS", "lots")
    monkeypatch.setenv("MINILM_MODE", "exam")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ipywidgets" else real(name, *a))
    labs = tmp_path / "labs"
    labs.mkdir()
    (tmp_path / "solutions").mkdir()
    shutil.copy(ROOT / "solutions" / "00_language_models.ipynb", tmp_path / "solutions")
    monkeypatch.setenv("MINILM_LABS_DIR", str(labs))  # no student notebook, no landing page, no chapters
    findings = diagnose()
    problems = {f.what.split(":")[0].split(" is ")[0]: f.fix for f in findings if not f.ok}
    out = report(findings)
    assert "MINILM_THREADS='lots' is not a positive integer" in out and "export MINILM_THREADS=2" in out
    assert "MINILM_MODE is 'exam'" in out and "export MINILM_MODE=self" in out
    assert 'ipywidgets is not installed (the labs\' sliders)\n      -> pip install -e ".[lab]"' in out
    assert "lab 00 language models: incomplete (missing student notebook, chapter)" in out
    assert f"no landing page {labs / 'README.md'}" in out and "core.symlinks" in out
    assert all(problems.values()) and out.endswith(f"{sum(not f.ok for f in findings)} problem(s) to fix "
                                                   "(each with its fix above)")


def test_missing_labs_folder_says_where_to_run(monkeypatch, tmp_path):
    monkeypatch.setenv("MINILM_LABS_DIR", str(tmp_path / "nowhere"))
    bad = [f for f in diagnose() if not f.ok]
    assert bad[-1].what == "labs folder not found" and "source checkout" in bad[-1].fix


def test_report_format_and_ready_line():
    assert report([Finding("a"), Finding("b")]).endswith("ready: open the labs on their landing page with "
                                                         "`jupyter lab labs/README.md`")
    assert report([Finding("x", "do y")]) == "FIX   x\n      -> do y\n1 problem(s) to fix (each with its fix above)"


def test_cli_exit_status_says_whether_to_fix_something(capsys):
    rc = main(["doctor"])
    out = capsys.readouterr().out
    assert rc == (1 if "FIX " in out else 0)
    assert out.rstrip().splitlines()[-1].startswith("ready" if rc == 0 else f"{out.count('FIX ')} problem(s)")
