"""Command-line hooks of grading: ``minilm release``, ``check``, ``grade`` and ``gradescope``.

``add_commands(subparsers, find_lab)`` registers them on the main ``minilm`` parser (``minilm.cli``);
each handler takes the parsed arguments and returns an exit code. The engine knows no lab by name:
``find_lab`` (the course's ``minilm.labs.get_lab``) turns the id a command is given, or that a
notebook names, into the lab's declared questions, and reaches each handler as ``args.find_lab``.
"""

from __future__ import annotations

import argparse
import os
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
    p.add_argument("--cpu-s", type=float, default=None,
                   help="CPU seconds per process of student code, 0 for none (default: twice --timeout)")
    p.add_argument("--file-mb", type=int, default=1024,
                   help="largest file student code may write, in MB, 0 for none (default 1024)")
    p.add_argument("--lab", help="lab id, e.g. 03 (default: read from the notebook)")


def _limits(args: argparse.Namespace, sandbox: str = "auto"):
    from minilm.grading.grader import Limits

    try:
        cpu = {} if args.cpu_s is None else {"cpu_s": args.cpu_s}
        return Limits(cell_timeout=args.cell_timeout, timeout=args.timeout, probe_timeout=args.probe_timeout,
                      memory_mb=args.memory_mb or None, user=getattr(args, "run_as", None) or None,
                      sandbox=sandbox, file_mb=args.file_mb or None, **cpu)
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
    from minilm.grading.release import ReleaseError, release_lab, student_path

    sources = [Path(s) for s in args.solutions] or sorted(Path("solutions").glob("[0-9][0-9]_*.ipynb"))
    if not sources:
        raise _fail("no solution notebooks given and none in solutions/")
    if args.out and len(sources) > 1:
        raise _fail("--out names one file: give one solution notebook with it")
    status = 0
    for src in sources:
        if not src.exists():
            raise _fail(f"{src} does not exist")
        out = Path(args.out) if args.out else student_path(src)
        if args.verify:
            if args.class_mode:
                raise _fail("--verify compares with the course's (self-study) release; a class-mode release is "
                            "your class's own copy: re-release it with --class-mode instead of verifying it")
            reason = nbtools.stale_reason(src, out)
            print(f"{out}: {'up to date' if reason is None else 'STALE: ' + reason}")
            status |= reason is not None
            continue
        lab = _lab_of(args, nbtools.read_notebook(src), src)
        try:
            report = release_lab(src, out, lab=lab, check=not args.no_check, class_mode=args.class_mode)
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
        print(f"released {out}" + ("" if args.no_check else " (gates passed)")
              + (" in class mode: check() runs the public checks only" if args.class_mode else ""))
    return status


# ---------------------------------------------------------------------------------------------
# minilm check
# ---------------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    """Run a notebook headless and check it, like check_all() in the notebook: in self-study mode
    every check (hidden inputs drawn now, measured values against the reference recomputed under the
    notebook's parameters) and the score; in class mode the public checks only."""
    from minilm.grading.grader import grade_notebook
    from minilm.grading.selfcheck import resolve_mode, summarize, total_line

    path = Path(args.notebook)
    if not path.exists():
        raise _fail(f"{path} does not exist")
    limits = _limits(args)
    lab = _find_lab(args, args.lab) if args.lab else None
    nb, error = nbtools.read_submission(path)
    if nb is None:
        raise _fail(f"{path}: {error}")
    lab = lab or _lab_of(args, nb, path)
    try:
        mode = args.mode or resolve_mode(nb=nb)
    except ValueError as err:
        raise _fail(str(err)) from None
    try:
        result = grade_notebook(path, lab=lab, public_only=mode == "class", limits=limits)
    except ValueError as err:
        raise _fail(str(err)) from None
    if result.status == "invalid-notebook":
        raise _fail(f"{path}: {result.message}")
    print(f"Lab {lab.id}: {lab.title} ({'self-study' if mode == 'self' else 'class'} mode)")
    summaries = []
    for q, qr in zip(lab.questions, result.questions):
        s = summarize(q, qr, mode)
        summaries.append(s)
        print(f"[{q.points:g} pts] {s.text}")
    for c in result.cells:
        print(f"  cell {c['index']} ({c['first_line']!r}): {c['status']}: {c['error'][:150]}")
    print(total_line(lab, summaries, mode))
    return 0 if all(s.ok for s in summaries) else 1


# ---------------------------------------------------------------------------------------------
# minilm grade
# ---------------------------------------------------------------------------------------------


def _submissions(items: list[str]) -> list[Path]:
    """The notebooks to grade: files named, and ``*.ipynb`` under folders named.

    Folders are walked without following symbolic links; a link to a notebook is listed (and
    graded as invalid: its target is never read), so that it shows in the class's results.
    """
    found: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir() and not p.is_symlink():
            for root, dirs, files in os.walk(p, followlinks=False):
                dirs[:] = sorted(d for d in dirs if d != ".ipynb_checkpoints")
                found += [Path(root) / f for f in sorted(files) if f.endswith(".ipynb")]
        elif p.exists() or p.is_symlink():
            found.append(p)
        else:
            raise _fail(f"{p} does not exist")
    if not found:
        raise _fail("no .ipynb submissions found")
    unique = list(dict.fromkeys(os.path.abspath(f) for f in found))  # the same file named twice counts once
    return [Path(f) for f in unique]


def _clean_up_when_stopped() -> None:
    """On SIGTERM, SIGHUP or Ctrl-C: kill every student process and remove the job folders (the
    copies of submissions) before exiting. A grader killed outright (SIGKILL) leaves its job folders
    to the next ``minilm grade``, which removes them."""
    import signal

    from minilm.grading.grader import remove_job_folders

    def stop(signum, frame):  # noqa: ARG001 - signal handler signature
        sandbox.kill_children()
        remove_job_folders()
        print(f"minilm: grading stopped by signal {signum}; no report written", file=sys.stderr)
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        try:
            signal.signal(sig, stop)
        except (ValueError, OSError, AttributeError):  # not the main thread, or no such signal here
            pass


EXIT_NOT_GRADED = 3  # `minilm grade`: reports written, but the class deadline left submissions ungraded


def cmd_grade(args: argparse.Namespace) -> int:
    """Grade many submissions in sandboxed children and write the reports.

    Exits with 0 when every submission was graded (whatever the scores), and with 3 when the class
    deadline (``--deadline``) left some not graded (reports written all the same)."""
    from minilm.grading.grader import NOT_GRADED, check_user_can_run, grade_many
    from minilm.grading.report import gradescope_json, review_items, write_reports

    paths = _submissions(args.submissions)
    lab = _find_lab(args, args.lab) if args.lab else None
    if args.gradescope_results and len(paths) != 1:
        raise _fail("--gradescope-results writes one student's results: give exactly one submission")
    if args.release and not Path(args.release).exists():
        raise _fail(f"--release {args.release} does not exist")
    if args.jobs < 1:
        raise _fail("-j must be at least 1")
    if args.deadline is not None and not args.deadline > 0:
        raise _fail(f"--deadline must be a positive number of seconds, got {args.deadline:g}")
    if args.run_as:
        try:
            check_user_can_run(args.run_as)
        except ValueError as err:
            raise _fail(str(err)) from None
    # A class is graded in bubblewrap sandboxes, or not at all unless the instructor accepts less.
    limits = _limits(args, "auto" if args.allow_unsandboxed else "bwrap")
    from minilm.grading.grader import sandbox_plan

    try:
        bwrap, protections = sandbox_plan(limits)
    except ValueError as err:
        raise _fail(str(err)) from None
    if bwrap is None:
        print(f"warning: {protections[0]}", file=sys.stderr)
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
    _clean_up_when_stopped()
    hide = [args.out] + [str(Path(x).absolute()) for x in args.submissions if Path(x).is_dir()]
    if args.gradescope_results:
        hide.append(str(Path(args.gradescope_results).absolute().parent))
    results, master = grade_many(paths, lab=lab, jobs=args.jobs, seed=args.seed, limits=limits,
                                 release=args.release, progress=not args.no_progress, sweep_orphans=True,
                                 hide=[os.path.abspath(h) for h in hide], deadline=args.deadline)
    sandbox.kill_children()  # nothing a student started survives to touch the reports
    out = write_reports(results, args.out, lab.id, [q.name for q in lab.questions], master, args.hidden_visibility,
                        protections=protections, class_deadline_s=args.deadline)
    if args.gradescope_results:
        import json

        nbtools.write_atomic(args.gradescope_results,
                             json.dumps(gradescope_json(results[0], args.hidden_visibility), indent=1) + "\n")
    width = max(len(r.student) for r in results)
    for r in results:
        n_review = len(review_items(r))
        flag = f"  [{n_review} to review]" if n_review else ""
        print(f"{r.student:<{width}}  {r.score:6.4g} / {r.max_score:g}  {r.status}{flag}")
    print(f"reports in {out}/ (grades.csv, feedback/, gradescope/, tamper.md); master seed {master}")
    late = [r.student for r in results if r.status == NOT_GRADED]
    if late:
        print(f"minilm: the class deadline ({args.deadline:g} s) stopped grading: {len(late)} of {len(results)} "
              f"submissions not graded (status {NOT_GRADED}); grade them again with a later --deadline",
              file=sys.stderr)
        return EXIT_NOT_GRADED
    return 0


# ---------------------------------------------------------------------------------------------
# minilm gradescope
# ---------------------------------------------------------------------------------------------

_RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope entry point for minilm lab {lab}, generated by `minilm gradescope --lab {lab}`.
# AUTOGRADER_ROOT and MINILM_PYTHON exist for testing this script outside Gradescope.
set -uo pipefail
ROOT="${{AUTOGRADER_ROOT:-/autograder}}"
PY="${{MINILM_PYTHON:-/opt/minilm-venv/bin/python}}"
cd "$ROOT/source"
mkdir -p "$ROOT/results"
SUB=$(find "$ROOT/submission" -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' | sort | head -n 1)
if [ -z "$SUB" ]; then
  echo '{{"score": 0, "output": "No .ipynb notebook was found in your submission."}}' > "$ROOT/results/results.json"
  exit 0
fi
# Each Gradescope submission runs in a container of its own; student code also runs in a
# bubblewrap sandbox when the container allows one (--allow-unsandboxed: grade anyway when not).
"$PY" -m minilm grade "$SUB" --lab {lab} --out "$ROOT/results/minilm" \\
  --gradescope-results "$ROOT/results/results.json" --no-progress --allow-unsandboxed{release}{run_as} \\
  --cell-timeout {cell_timeout:g} --timeout {timeout:g} --probe-timeout {probe_timeout:g} --memory-mb {memory_mb} \\
  --file-mb {file_mb}{cpu}
"""

_SETUP = """#!/usr/bin/env bash
# Gradescope setup for minilm lab {lab}: CPU-only PyTorch, minilm's dependencies and the grader's,
# in a virtual environment (newer Ubuntu images refuse system-wide pip installs). Versions are those
# of the machine that wrote this folder, or the newest release up to them that supports the image's
# Python (3.10 on Gradescope's Ubuntu 22.04 base image) where that machine's needs a newer Python.
# MINILM_VENV (default /opt/minilm-venv, where run_autograder looks) exists for testing this script.
set -euo pipefail
VENV="${{MINILM_VENV:-/opt/minilm-venv}}"
export DEBIAN_FRONTEND=noninteractive
apt-get update && apt-get install -y python3 python3-venv python3-pip bubblewrap
python3 -m venv "$VENV"
"$VENV/bin/pip" install --upgrade pip
"$VENV/bin/pip" install --index-url https://download.pytorch.org/whl/cpu {torch}
"$VENV/bin/pip" install {pinned}
# Fail here, at setup, rather than on every submission: the grader and what it imports load.
cd "$(dirname "$0")"
"$VENV/bin/python" -c "import minilm.grading.grader, minilm.labs, nbclient, ipykernel, scipy, torch"
"""
# What `import minilm` and the labs need (pyproject.toml's dependencies, torch aside) and what the
# grader runs notebooks with.
_PINNED = ("numpy", "scipy", "regex", "tqdm", "matplotlib", "nbclient", "nbformat", "ipykernel", "ipywidgets")
GRADESCOPE_PYTHON = "3.10"  # Gradescope's Ubuntu 22.04 base image


def _requirement(name: str, python: str = GRADESCOPE_PYTHON) -> str:
    """A pip requirement for ``name``: the installed version, or at most it when it needs a newer Python.

    The lower bound then is minilm's own (pyproject.toml), so pip picks the newest release in
    between that supports ``python``.
    """
    import importlib.metadata as md

    try:
        version = md.version(name).split("+")[0]
        needs = md.metadata(name).get("Requires-Python") or ""
    except md.PackageNotFoundError:
        raise _fail(f"{name} is not installed here; install it to pin its version") from None
    if _admits(needs, python):
        return f'"{name}=={version}"'
    floor = next((r.split(name, 1)[1].split(";")[0].strip().split(",")
                  for r in (md.requires("minilm") or []) if r.startswith(name + ">=") or r.startswith(name + "<")), [])
    lower = [f for f in floor if f.startswith(">=")]
    return f'"{name}{lower[0] + "," if lower else ""}<={version}"'


def _admits(requires_python: str, python: str) -> bool:
    """Whether a ``Requires-Python`` specifier admits ``python`` (e.g. "3.10")."""
    if not requires_python.strip():
        return True
    try:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
    except ImportError:  # packaging comes with most installs; else read the usual ">=3.N" alone
        import re

        floors = re.findall(r">=\s*3\.(\d+)", requires_python)
        return all(int(python.split(".")[1]) >= int(f) for f in floors)
    try:
        return SpecifierSet(requires_python).contains(python + ".0", prereleases=True)
    except InvalidSpecifier:
        return False


def cmd_gradescope(args: argparse.Namespace) -> int:
    """Write a Gradescope autograder folder (run_autograder, setup.sh, the minilm package)."""
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
        release_arg = ' \\\n  --release "$ROOT/source/release.ipynb"'
    elif args.release:
        raise _fail(f"--release {release} does not exist")
    shutil.copytree(Path(minilm.__file__).parent, out / "minilm", ignore=shutil.ignore_patterns("__pycache__"))

    run_as = f" --run-as {args.run_as}" if args.run_as else ""
    (out / "run_autograder").write_text(_RUN_AUTOGRADER.format(
        lab=lab.id, release=release_arg, run_as=run_as, cell_timeout=args.cell_timeout, timeout=args.timeout,
        probe_timeout=args.probe_timeout, memory_mb=args.memory_mb, file_mb=args.file_mb,
        cpu="" if args.cpu_s is None else f" --cpu-s {args.cpu_s:g}"))
    pinned = " ".join(_requirement(name) for name in _PINNED)
    (out / "setup.sh").write_text(_SETUP.format(lab=lab.id, torch=_requirement("torch"), pinned=pinned))
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
    p = subparsers.add_parser("release", help="build student notebooks from solutions/ (with gates)",
                              description=cmd_release.__doc__)
    p.add_argument("solutions", nargs="*", help="instructor notebooks (default: solutions/NN_*.ipynb)")
    p.add_argument("--out", help="student notebook to write (default: labs/<same name>)")
    p.add_argument("--no-check", action="store_true", help="skip the gates (reference full, stubs zero, wrong < full)")
    p.add_argument("--verify", action="store_true", help="write nothing; fail if a committed student notebook is stale")
    p.add_argument("--execute", action="store_true", help="also execute the solution notebook: it must score full")
    p.add_argument("--class-mode", action="store_true",
                   help="mark the student notebooks for a class: check() and check_all() run the public checks only "
                        "and leave the verdict to grading (default: self-study, the full verdict)")
    _add_limits(p)
    p.set_defaults(func=cmd_release, find_lab=find_lab)

    p = subparsers.add_parser("check", help="run a notebook headless and check its answers from the terminal",
                              description=cmd_check.__doc__)
    p.add_argument("notebook", help="the .ipynb to check")
    p.add_argument("--mode", choices=["self", "class"],
                   help="self: every check and the score; class: public checks only (default: $MINILM_MODE, "
                        "else the notebook's own mode, else self)")
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
    p.add_argument("--allow-unsandboxed", action="store_true",
                   help="grade even where no bubblewrap sandbox can be made (student code then runs as the "
                        "grader's user, or --run-as USER); without it grading refuses to start there")
    p.add_argument("--deadline", type=float, default=None,
                   help="seconds the whole class may take: submissions not graded by then are reported as "
                        "'not graded: class deadline exceeded' and the exit status is 3 (default: none)")
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

