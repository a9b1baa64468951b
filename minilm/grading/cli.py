"""Command-line hooks of grading: ``minilm release``, ``check``, ``grade`` and ``gradescope``.

``add_commands(subparsers, find_lab)`` registers them on the main ``minilm`` parser (``minilm.cli``);
each handler takes the parsed arguments and returns an exit code. The engine knows no lab by name:
``find_lab`` (the course's ``minilm.labs.get_lab``) turns the id a command is given, or that a
notebook names, into the lab's declared questions, and reaches each handler as ``args.find_lab``.
"""

from __future__ import annotations

import argparse
import shutil
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from minilm.grading import notebook as nbtools
from minilm.grading import sandbox
from minilm.grading.questions import Lab


def _fail(message: str) -> SystemExit:
    return SystemExit(f"minilm: {message}")


def _add_limits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cell-timeout", type=float, default=300.0, help="seconds one cell may run (default 300)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds for the whole notebook (default 900)")
    p.add_argument("--probe-timeout", type=float, default=60.0, help="seconds to probe one question (default 60)")
    p.add_argument("--memory-mb", type=int, default=8192,
                   help="memory (address space) limit of the kernel in MB, 0 for none (default 8192)")
    p.add_argument("--lab", help="lab id, e.g. 03 (default: read from the notebook)")


def _limits(args: argparse.Namespace):
    from minilm.grading.grader import Limits

    try:
        return Limits(cell_timeout=args.cell_timeout, timeout=args.timeout, probe_timeout=args.probe_timeout,
                      memory_mb=args.memory_mb or None, user=getattr(args, "run_as", None))
    except ValueError as err:
        raise _fail(str(err)) from None


def _find_lab(args: argparse.Namespace, lab_id: str) -> Lab:
    """The lab ``lab_id`` names, looked up with the resolver ``add_commands`` was given."""
    try:
        return args.find_lab(lab_id)
    except ValueError as err:
        raise _fail(str(err)) from None


def _lab_of(args: argparse.Namespace, nb: Any, path: Path) -> Lab:
    """``--lab`` if given, else the lab the notebook names (metadata, ``LAB = "NN"``, file name)."""
    lab_id = args.lab or nbtools.lab_id_of(nb, path)
    if lab_id is None:
        raise _fail(f"cannot tell which lab {path.name} is: pass --lab NN")
    return _find_lab(args, lab_id)


# ---------------------------------------------------------------------------------------------
# minilm release
# ---------------------------------------------------------------------------------------------


def cmd_release(args: argparse.Namespace) -> int:
    """Build student notebooks from instructor sources, refusing unsound labs."""
    from minilm.grading.grader import grade_notebook
    from minilm.grading.release import ReleaseError, release_lab

    sources = [Path(s) for s in args.solutions] or sorted(Path("labs/solutions").glob("[0-9][0-9]_*.ipynb"))
    if not sources:
        raise _fail("no solution notebooks given and none in labs/solutions/")
    if args.out and len(sources) > 1:
        raise _fail("--out names one file: give one solution notebook with it")
    status = 0
    for src in sources:
        if not src.exists():
            raise _fail(f"{src} does not exist")
        out = Path(args.out) if args.out else src.parent.parent / src.name
        if args.verify:
            reason = nbtools.stale_reason(src, out)
            print(f"{out}: {'up to date' if reason is None else 'STALE: ' + reason}")
            status |= reason is not None
            continue
        lab = _lab_of(args, nbtools.read_notebook(src), src)
        try:
            report = release_lab(src, out, lab=lab, check=not args.no_check)
        except ReleaseError as err:
            print(f"{src}: {err}", file=sys.stderr)
            status = 1
            continue
        except (ValueError, nbtools.SolutionMarkerError) as err:
            raise _fail(f"{src}: {err}") from None
        for note in report.notes:
            print(f"  note: {note}")
        if args.execute:
            result = grade_notebook(src, lab=lab, limits=_limits(args))
            if result.score < result.max_score - 1e-9:
                lost = [f"{q.name} {q.score:g}/{q.points:g} ({q.status})" for q in result.questions if not q.full]
                print(f"{src}: executed solution scores {result.score:g}/{result.max_score:g}: {', '.join(lost)}",
                      file=sys.stderr)
                status = 1
                continue
            print(f"  executed solution: {result.score:g}/{result.max_score:g} in {result.duration_s:.0f} s")
        print(f"released {out}" + ("" if args.no_check else " (gates passed)"))
    return status


# ---------------------------------------------------------------------------------------------
# minilm check
# ---------------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    """Run a notebook headless and report its public checks, like check_all() in the notebook."""
    from minilm.grading.grader import grade_notebook
    from minilm.grading.selfcheck import summarize, total_line

    path = Path(args.notebook)
    if not path.exists():
        raise _fail(f"{path} does not exist")
    limits = _limits(args)
    if args.lab:
        lab = _find_lab(args, args.lab)
    else:
        nb, error = nbtools.read_submission(path)
        if nb is None:
            raise _fail(f"{path}: {error}")
        lab = _lab_of(args, nb, path)
    try:
        result = grade_notebook(path, lab=lab, public_only=True, limits=limits)
    except ValueError as err:
        raise _fail(str(err)) from None
    if result.status == "invalid-notebook":
        raise _fail(f"{path}: {result.message}")
    summaries = []
    for q, qr in zip(lab.questions, result.questions):
        s = summarize(q, qr)
        summaries.append(s)
        print(f"[{q.points:g} pts] {s.text}")
    for c in result.cells:
        print(f"  cell {c['index']} ({c['first_line']!r}): {c['status']}: {c['error'][:150]}")
    print(total_line(lab, summaries))
    return 0 if all(s.ok for s in summaries) else 1


# ---------------------------------------------------------------------------------------------
# minilm grade
# ---------------------------------------------------------------------------------------------


def _submissions(items: list[str]) -> list[Path]:
    found: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found += sorted(x for x in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in x.parts)
        elif p.exists():
            found.append(p)
        else:
            raise _fail(f"{p} does not exist")
    if not found:
        raise _fail("no .ipynb submissions found")
    return found


def cmd_grade(args: argparse.Namespace) -> int:
    """Grade many submissions in sandboxed children and write the reports."""
    from minilm.grading.grader import check_user_can_run, grade_many
    from minilm.grading.report import gradescope_json, write_reports

    paths = _submissions(args.submissions)
    lab = _find_lab(args, args.lab) if args.lab else None
    if args.gradescope_results and len(paths) != 1:
        raise _fail("--gradescope-results writes one student's results: give exactly one submission")
    if args.release and not Path(args.release).exists():
        raise _fail(f"--release {args.release} does not exist")
    if args.jobs < 1:
        raise _fail("-j must be at least 1")
    if args.run_as:
        try:
            check_user_can_run(args.run_as)
        except ValueError as err:
            raise _fail(str(err)) from None
    limits = _limits(args)
    if lab is None:
        found = {nbtools.lab_id_of(nbtools.read_submission(p)[0], p) for p in paths} - {None}
        if len(found) != 1:
            raise _fail("cannot tell which lab these submissions are" if not found else
                        f"the submissions name different labs ({', '.join(sorted(found))}): pass --lab NN")
        lab = _find_lab(args, found.pop())
        print(f"grading as lab {lab.id} (read from the notebooks; pass --lab to say it explicitly)")
    # This process is the grader: adopt anything a student detaches, and keep our memory private.
    sandbox.become_subreaper()
    sandbox.make_undumpable()
    results, master = grade_many(paths, lab=lab, jobs=args.jobs, seed=args.seed, limits=limits,
                                 release=args.release, progress=not args.no_progress, sweep_orphans=True)
    sandbox.kill_children()  # nothing a student started survives to touch the reports
    out = write_reports(results, args.out, lab.id, [q.name for q in lab.questions], master, args.hidden_visibility)
    if args.gradescope_results:
        import json

        nbtools.write_atomic(args.gradescope_results,
                             json.dumps(gradescope_json(results[0], args.hidden_visibility), indent=1) + "\n")
    width = max(len(r.student) for r in results)
    for r in results:
        flag = f"  [{len(r.tamper)} to review]" if r.tamper else ""
        print(f"{r.student:<{width}}  {r.score:6.4g} / {r.max_score:g}  {r.status}{flag}")
    print(f"reports in {out}/ (grades.csv, feedback/, gradescope/, tamper.md); master seed {master}")
    return 0


# ---------------------------------------------------------------------------------------------
# minilm gradescope
# ---------------------------------------------------------------------------------------------

_RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope entry point for minilm lab {lab}, generated by `minilm gradescope --lab {lab}`.
set -uo pipefail
cd /autograder/source
mkdir -p /autograder/results
SUB=$(find /autograder/submission -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' | sort | head -n 1)
if [ -z "$SUB" ]; then
  echo '{{"score": 0, "output": "No .ipynb notebook was found in your submission."}}' > /autograder/results/results.json
  exit 0
fi
python3 -m minilm grade "$SUB" --lab {lab} --out /autograder/results/minilm \\
  --gradescope-results /autograder/results/results.json --no-progress{release}{run_as} \\
  --cell-timeout {cell_timeout:g} --timeout {timeout:g} --probe-timeout {probe_timeout:g} --memory-mb {memory_mb}
"""

_SETUP = """#!/usr/bin/env bash
# Gradescope setup for minilm lab {lab}: CPU-only PyTorch, minilm's dependencies and the grader's.
set -euo pipefail
apt-get update && apt-get install -y python3 python3-pip
pip3 install --index-url https://download.pytorch.org/whl/cpu "torch=={torch}"
pip3 install {pinned}
"""
# What `import minilm` and the labs need (pyproject.toml's dependencies, torch aside) and what the
# grader runs notebooks with, pinned to the versions installed where the folder is written.
_PINNED = ("numpy", "scipy", "regex", "tqdm", "matplotlib", "nbclient", "nbformat", "ipykernel", "ipywidgets")


def cmd_gradescope(args: argparse.Namespace) -> int:
    """Write a Gradescope autograder folder (run_autograder, setup.sh, the minilm package)."""
    import importlib.metadata as md

    import minilm

    if not args.lab:
        raise _fail("--lab is required")
    lab = _find_lab(args, args.lab)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise _fail(f"{out} exists and is not empty: choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    release = Path(args.release) if args.release else Path("labs") / f"{lab.stem}.ipynb"
    release_arg = ""
    if release.exists():
        shutil.copyfile(release, out / "release.ipynb")
        release_arg = " \\\n  --release /autograder/source/release.ipynb"
    elif args.release:
        raise _fail(f"--release {release} does not exist")
    shutil.copytree(Path(minilm.__file__).parent, out / "minilm", ignore=shutil.ignore_patterns("__pycache__"))

    def version(name: str) -> str:
        try:
            return md.version(name).split("+")[0]
        except md.PackageNotFoundError:
            raise _fail(f"{name} is not installed here; install it to pin its version") from None

    run_as = f" --run-as {args.run_as}" if args.run_as else ""
    (out / "run_autograder").write_text(_RUN_AUTOGRADER.format(
        lab=lab.id, release=release_arg, run_as=run_as, cell_timeout=args.cell_timeout, timeout=args.timeout,
        probe_timeout=args.probe_timeout, memory_mb=args.memory_mb))
    pinned = " ".join(f'"{name}=={version(name)}"' for name in _PINNED)
    (out / "setup.sh").write_text(_SETUP.format(lab=lab.id, torch=version("torch"), pinned=pinned))
    for name in ("run_autograder", "setup.sh"):
        mode = (out / name).stat().st_mode
        (out / name).chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    print(f"wrote {out}/: run_autograder, setup.sh, minilm/" + (", release.ipynb" if release_arg else ""))
    print(f"upload it as a zip: (cd {out} && zip -r ../autograder_{lab.id}.zip .)")
    if not release_arg:
        print(f"note: no released notebook found at {release}; edited locked cells are then checked against "
              "hashes stored in each submission (pass --release for a trusted comparison)")
    return 0


# ---------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------


def add_commands(subparsers: Any, find_lab: Callable[[str], Lab]) -> None:
    """Register ``release``, ``check``, ``grade`` and ``gradescope`` on ``subparsers``.

    ``subparsers`` is what ``ArgumentParser.add_subparsers()`` returns; ``find_lab`` turns a lab id
    into its ``Lab`` (``minilm.labs.get_lab``) and raises ``ValueError`` for an unknown id.
    """
    p = subparsers.add_parser("release", help="build student notebooks from labs/solutions/ (with gates)",
                              description=cmd_release.__doc__)
    p.add_argument("solutions", nargs="*", help="instructor notebooks (default: labs/solutions/NN_*.ipynb)")
    p.add_argument("--out", help="student notebook to write (default: labs/<same name>)")
    p.add_argument("--no-check", action="store_true", help="skip the gates (reference full, stubs zero, wrong < full)")
    p.add_argument("--verify", action="store_true", help="write nothing; fail if a committed student notebook is stale")
    p.add_argument("--execute", action="store_true", help="also execute the solution notebook: it must score full")
    _add_limits(p)
    p.set_defaults(func=cmd_release, find_lab=find_lab)

    p = subparsers.add_parser("check", help="run a notebook's public checks from the terminal",
                              description=cmd_check.__doc__)
    p.add_argument("notebook", help="the .ipynb to check")
    _add_limits(p)
    p.set_defaults(func=cmd_check, find_lab=find_lab)

    p = subparsers.add_parser("grade", help="grade submissions (sandboxed, parallel) and write reports",
                              description=cmd_grade.__doc__)
    p.add_argument("submissions", nargs="+", help="notebooks, or folders searched for *.ipynb")
    p.add_argument("--out", required=True, help="folder for grades.csv, feedback/, gradescope/, tamper.md")
    p.add_argument("-j", "--jobs", type=int, default=1, help="submissions graded at once (default 1)")
    p.add_argument("--seed", type=int, help="master seed of the hidden inputs (default: drawn now, recorded)")
    p.add_argument("--release", help="the released student notebook, to spot edited locked cells")
    p.add_argument("--gradescope-results", help="also write the one submission's results.json here")
    p.add_argument("--hidden-visibility", default="after_published",
                   choices=["visible", "hidden", "after_due_date", "after_published"],
                   help="Gradescope visibility of the graded (hidden) checks (default after_published)")
    p.add_argument("--run-as", help="when run as root: the user that runs student code (e.g. nobody)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_limits(p)
    p.set_defaults(func=cmd_grade, find_lab=find_lab)

    p = subparsers.add_parser("gradescope", help="write a Gradescope autograder folder for a lab",
                              description=cmd_gradescope.__doc__)
    p.add_argument("--out", required=True, help="new folder to write")
    p.add_argument("--release", help="the released student notebook (default labs/NN_topic.ipynb)")
    p.add_argument("--run-as", default="nobody", help="user that runs student code on Gradescope (default nobody; "
                   "'' to run it as root)")
    _add_limits(p)
    p.set_defaults(func=cmd_gradescope, find_lab=find_lab)

