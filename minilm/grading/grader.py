"""The trusted grading parent: grade notebooks in sandboxed children, or objects directly.

``grade_notebook`` runs one submission: an untrusted child (``runner.py``) executes the notebook
in a kernel, then the parent draws the hidden inputs from a seed chosen now, sends them, reads
back JSON, and scores. The parent never imports or unpickles anything of the student's.

``grade_objects`` probes functions and values given directly (a reference solution, a known-wrong
answer, a stub) in this process, without running any notebook: it is for *trusted* objects only,
and is what the release gates and the labs' tests use.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import minilm
from minilm.grading import notebook as nbtools
from minilm.grading import probe as probe_module
from minilm.grading import sandbox
from minilm.grading.checker import (
    PlannedCheck,
    QuestionResult,
    ReferenceCache,
    plan_checks,
    probe_request,
    score_question,
    zero_result,
)
from minilm.grading.probe import probe_question
from minilm.grading.questions import Lab, require_lab

MAX_EVENT_BYTES = 48 * 2**20  # one line from the runner (a probe reply holds up to ~40 MB of numbers)
MAX_TOTAL_BYTES = 256 * 2**20  # everything one runner may send
KILL_SLACK = 5.0  # seconds past --timeout for a runner to report and for the sandbox to be killed
# The status and message of a submission that the class's whole-run limit (``grade_many(deadline=)``,
# ``minilm grade --deadline``) left ungraded: not started, or stopped while it ran.
NOT_GRADED = "not-graded"
DEADLINE_MESSAGE = "not graded: class deadline exceeded"
# Read once, before any student code runs: the probe sent to kernels is this text, not the file as
# it may be on disk later.
PROBE_SOURCE = Path(probe_module.__file__).read_text(encoding="utf-8")


@dataclass
class Limits:
    """Time and memory limits of one submission's child.

    ``cell_timeout``: seconds one cell may run; ``timeout``: seconds for the whole notebook;
    ``probe_timeout``: seconds to probe one question; ``memory_mb``: address-space limit of the
    kernel (``None`` for none); ``file_mb``: largest file it may write; ``max_restarts``: kernel
    restarts after a crash or a cell that cannot be interrupted; ``user``: when the grader runs
    as root (Gradescope), the unprivileged user that runs the student's code (e.g. ``"nobody"``);
    ``sandbox``: ``"bwrap"`` (student code in a bubblewrap sandbox, refuse to grade without one),
    ``"auto"`` (a sandbox when one can be made) or ``"none"``. ``timeout`` bounds the whole
    submission: kernel start, every cell, replays and probes.

    Limits on the kernel and everything it starts (``None``: none), set far above what grading a
    lab needs (a lab's fast mode runs in minutes on one thread, a few processes, tens of files):
    ``cpu_s``: CPU seconds per process (``None``, the default: twice ``timeout``, which one
    process on one thread cannot reach within ``timeout``; 0: none); ``processes``: processes
    and threads in the submission's sandbox (256; enforced in a sandbox or under ``user``, not
    for root); ``open_files``: open files per process (4096).
    """

    cell_timeout: float = 300.0
    timeout: float = 900.0
    probe_timeout: float = 60.0
    memory_mb: int | None = 8192
    file_mb: int | None = 1024
    max_restarts: int = 3
    user: str | None = None
    sandbox: str = "bwrap"
    cpu_s: float | None = None
    processes: int | None = 256
    open_files: int | None = 4096

    def __post_init__(self) -> None:
        if self.sandbox not in ("bwrap", "auto", "none"):
            raise ValueError(f"sandbox must be 'bwrap', 'auto' or 'none', got {self.sandbox!r}")
        for name in ("cell_timeout", "timeout", "probe_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {getattr(self, name)!r}")
        if self.memory_mb is not None and self.memory_mb < 256:
            raise ValueError(f"memory_mb={self.memory_mb} is too small to start Python: use >= 256 or None")
        if self.file_mb is not None and self.file_mb < 1:
            raise ValueError(f"file_mb={self.file_mb} must be >= 1 (MB per file) or None")
        if self.cpu_s is not None and not (self.cpu_s == 0 or self.cpu_s >= 1):
            raise ValueError(f"cpu_s={self.cpu_s} must be >= 1 (CPU seconds per process), 0 (none) or None")
        if self.processes is not None and self.processes < 32:
            raise ValueError(f"processes={self.processes} is too few for a kernel's own threads: use >= 32 or None")
        if self.open_files is not None and self.open_files < 64:
            raise ValueError(f"open_files={self.open_files} is too few for a kernel: use >= 64 or None")
        if self.max_restarts < 0:
            raise ValueError("max_restarts must be >= 0")


@dataclass
class GradeResult:
    """The grade of one submission.

    ``status``: ``ok`` (ran and probed; questions may still have failed), ``invalid-notebook``,
    ``timeout`` (the child was killed at the hard time limit), ``crashed`` (the child failed),
    ``not-graded`` (the class's deadline came first: grade it again).
    ``cells`` lists cells that did not run cleanly (instructor view); ``tamper`` lists findings
    for the instructor to review.
    """

    student: str
    submission: str
    lab: str
    status: str
    questions: list[QuestionResult]
    message: str = ""
    seed: int | None = None
    cells: list[dict] = field(default_factory=list)
    tamper: list[str] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)  # question -> normalized code (duplicates)
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    protections: list[str] = field(default_factory=list)

    @property
    def score(self) -> float:
        return round(sum(q.score for q in self.questions), 6)

    @property
    def max_score(self) -> float:
        return float(sum(q.points for q in self.questions))

    def question(self, name: str) -> QuestionResult:
        for q in self.questions:
            if q.name == name:
                return q
        raise KeyError(name)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["score"] = self.score
        data["max_score"] = self.max_score
        return data


# ---------------------------------------------------------------------------------------------
# Grading objects directly (trusted objects only)
# ---------------------------------------------------------------------------------------------


def _roundtrip(reply: dict) -> Any:
    # The same strict JSON the child's reply goes through.
    return json.loads(json.dumps(reply, allow_nan=False), parse_constant=_reject_constant)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def grade_objects(
    lab: Lab,
    namespace: Mapping[str, Any],
    seed: int = 0,
    public_only: bool = False,
    questions: Iterable[str] | None = None,
    references: ReferenceCache | None = None,
) -> GradeResult:
    """Grade objects given directly: ``namespace`` maps target names to functions or values.

    Runs them *in this process*: only for trusted objects (reference solutions, known-wrong
    answers, stubs). Student notebooks go through ``grade_notebook``. Targets missing from
    ``namespace`` score zero as "missing"; a value question's ``params`` default to the
    question's declared values when absent.
    """
    lab = require_lab(lab)
    wanted = set(questions) if questions is not None else None
    references = references or ReferenceCache()
    results = []
    for q in lab.questions:
        if wanted is not None and q.name not in wanted:
            continue
        checks = plan_checks(q, seed, public_only)
        ns = dict(q.params)
        ns.update(namespace)
        reply = _roundtrip(probe_question(probe_request(q, checks), ns))
        results.append(score_question(q, checks, reply, references))
    return GradeResult(student="(objects)", submission="", lab=lab.id, status="ok", questions=results, seed=seed)


def reference_namespace(lab: Lab) -> dict[str, Any]:
    """The reference answer of every question, keyed by target name (for ``grade_objects``)."""
    ns: dict[str, Any] = {}
    for q in lab.questions:
        if q.kind == "function":
            ns[q.target] = q.reference
        elif q.reference is None:
            ns[q.target] = q.answer
        else:
            ns[q.target] = q.reference(**q.params)
    return ns


# ---------------------------------------------------------------------------------------------
# Grading notebooks in a sandboxed child
# ---------------------------------------------------------------------------------------------


def _package_root() -> str:
    """The directory holding the ``minilm`` package, so the child imports this very copy."""
    return str(Path(minilm.__file__).resolve().parent.parent)


def derive_seed(master: int, student: str) -> int:
    """Each student's hidden inputs differ (no answers to pass around), yet are reproducible."""
    digest = hashlib.sha256(f"{master}:{student}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class Runners:
    """The runner processes alive now, so that a sweep for orphans spares them (``grade -j N``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pids: set[int] = set()

    def sweep(self) -> int:
        """Kill this process's children that are not live runners: what students left behind.

        Only meaningful when this process is a subreaper (``sandbox.become_subreaper``).
        """
        with self.lock:
            return sandbox.kill_children(keep=set(self.pids))


class _Child:
    """One runner process (inside its sandbox when there is one) and the JSON-lines channel to it.

    Reads are bounded: one line at most ``MAX_EVENT_BYTES``, the whole conversation at most
    ``MAX_TOTAL_BYTES``; past either the child is treated as crashed, whatever it sends.
    """

    def __init__(self, argv: list[str], cwd: str, env: dict, user: dict | None = None,
                 runners: Runners | None = None, sandboxed: bool = False,
                 info_fd: tuple[int, int] | None = None) -> None:
        # The runner's stderr goes to an unnamed file that only this process holds: nothing in the
        # job folder (which student code can write, symlinks included) is ever read back.
        self.log = tempfile.TemporaryFile()
        self.runners = runners or Runners()
        self.sandboxed = sandboxed
        self.sandbox_pid: int | None = None
        self._info_r = info_fd[0] if info_fd else None
        with self.runners.lock:
            self.proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                start_new_session=True, pass_fds=(info_fd[1],) if info_fd else (), **(user or {}),
            )
            self.runners.pids.add(self.proc.pid)
        if info_fd:
            os.close(info_fd[1])
        self.events: queue.Queue = queue.Queue()
        self.kernel_pids: set[int] = set()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        stream = self.proc.stdout
        total = 0
        try:
            while True:
                line = stream.readline(MAX_EVENT_BYTES)
                total += len(line)
                if not line:
                    break
                if not line.endswith(b"\n") or total > MAX_TOTAL_BYTES:
                    self.events.put({"event": "overflow"})
                    break
                try:
                    event = json.loads(line, parse_constant=_reject_constant)
                except (ValueError, RecursionError):
                    continue  # not ours; the protocol ignores it
                if type(event) is dict:
                    if event.get("event") == "kernel" and type(event.get("pid")) is int:
                        self.kernel_pids.add(event["pid"])
                    self.events.put(event)
        except (OSError, ValueError, MemoryError):
            pass
        self.events.put({"event": "eof"})

    def send(self, obj: dict) -> bool:
        try:
            self.proc.stdin.write((json.dumps(obj, allow_nan=False) + "\n").encode())
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError):
            return False

    def next_event(self, deadline: float) -> dict:
        left = deadline - time.monotonic()
        if left <= 0:
            return {"event": "deadline"}
        try:
            return self.events.get(timeout=left)
        except queue.Empty:
            return {"event": "deadline"}

    def log_tail(self, n: int = 800) -> str:
        """The end of what the runner wrote to stderr (read from our own file descriptor)."""
        try:
            size = self.log.seek(0, os.SEEK_END)
            self.log.seek(max(0, size - n))
            return self.log.read(n).decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def _sandbox_init(self) -> int | None:
        """The host pid of the sandbox's first process (bwrap's ``--info-fd``), if it started."""
        if self._info_r is None:
            return self.sandbox_pid
        try:
            os.set_blocking(self._info_r, False)
            data = os.read(self._info_r, 4096)
            pid = json.loads(data.decode()).get("child-pid") if data else None
            if type(pid) is int:
                self.sandbox_pid = pid
        except (OSError, ValueError, AttributeError):
            pass
        finally:
            os.close(self._info_r)
            self._info_r = None
        return self.sandbox_pid

    def kill(self) -> None:
        """End the submission: every process it started is gone when this returns (sandboxed)."""
        init = self._sandbox_init() if self.sandboxed else None
        if init is not None and self.proc.poll() is None:
            # Killing the PID namespace's first process kills every process in it; bwrap (our
            # child, outside the namespace) exits only once that first process has exited, which
            # the kernel allows only after all the others have.
            st = sandbox._proc_stat(init)
            if st is not None and st[0] == self.proc.pid:  # still bwrap's child: not a reused pid
                try:
                    os.kill(init, signal.SIGKILL)
                except OSError:
                    pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except OSError:
                pass
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                continue
        with self.runners.lock:
            self.runners.pids.discard(self.proc.pid)
        if not self.sandboxed:
            # Unsandboxed, the runner's pids are ours: kill a kernel that outlived its runner. (In a
            # sandbox they are numbers of another PID namespace and mean nothing here.)
            for pid in self.kernel_pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def close(self) -> None:
        self.log.close()


_SAFE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
MAX_ID_CHARS = 64


def _safe_id(text: str) -> str:
    """A file-name-safe id for ``text``: ASCII letters, digits, ``-_.``; long ones cut and hashed."""
    out = "".join(ch if ch in _SAFE_CHARS else "_" for ch in text).strip(".") or "submission"
    if len(out) > MAX_ID_CHARS or out != text:
        # Anything changed or cut gets a hash of the original ("~" is never kept from a name), so
        # two different names never end up with the same id.
        digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        out = f"{out[:MAX_ID_CHARS - 9]}~{digest}"
    return out


def _student_name(path: Path) -> str:
    return _safe_id(path.stem)


def grade_notebook(
    path: str | os.PathLike,
    lab: Lab,
    seed: int | None = None,
    limits: Limits | None = None,
    public_only: bool = False,
    release: str | os.PathLike | None = None,
    student: str | None = None,
    references: ReferenceCache | None = None,
    on_event: Callable[[dict], None] | None = None,
    runners: Runners | None = None,
    hide: Iterable[str] = (),
    deadline: float | None = None,
) -> GradeResult:
    """Grade one notebook file in a sandboxed child process.

    ``lab``: the lab's declared questions, e.g. ``minilm.labs.get_lab("03")`` (``notebook.lab_id_of``
    reads the id a notebook names). ``seed``: the seed of the hidden inputs (default: drawn now,
    recorded in the result). ``public_only``: run the public checks only (what ``minilm check`` does).
    ``release``: the released student notebook, to report edited locked cells against it.
    ``hide``: folders the student's sandbox must not see (the grader's output, the submissions).
    A submission that is a symbolic link is not followed: it is reported as invalid. Without
    ``limits``, the notebook runs in a sandbox when one can be made and without one otherwise
    (``result.protections`` says which); ``grade_many`` refuses to grade without one.
    ``deadline``: a ``time.monotonic()`` time at which grading stops whatever the submission's own
    limits (the class's deadline): the result is then ``not-graded``, every question zero.
    """
    t0 = time.monotonic()
    path = Path(path)
    lab = require_lab(lab)
    limits = limits or Limits(sandbox="auto")  # one notebook: a sandbox where one can be made
    student = student or _student_name(path)
    seed = secrets.randbits(63) if seed is None else int(seed)
    nb, error = nbtools.read_submission(path)
    if nb is None:
        questions = [zero_result(q, "not-graded", error, []) for q in lab.questions]
        return GradeResult(student, str(path), lab.id, "invalid-notebook", questions,
                           message=error, seed=seed, duration_s=time.monotonic() - t0)
    for module in ("ipykernel", "nbclient"):
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"grading notebooks needs {module}: pip install 'minilm[lab]' (or {module})")
    result = _run_child(nb, path, lab, seed, limits, public_only, student, references or ReferenceCache(), on_event,
                        runners, hide, t0, deadline)
    try:  # static reading of hostile code: nesting deep enough to exhaust recursion is a finding, not a crash
        result.tamper.extend(nbtools.tamper_findings(nb, lab, release))
        result.answers = nbtools.answer_sources(nb, lab)
    except (RecursionError, MemoryError, ValueError, SyntaxError) as err:
        result.tamper.append(f"the notebook's code could not be read for review ({type(err).__name__})")
    missing = [q.name for q in result.questions if q.status == "missing"]
    if missing:
        result.tamper.append(f"questions not answered (target not defined): {', '.join(missing)}")
    result.duration_s = round(time.monotonic() - t0, 2)
    return result


_JOB_BASE: list[str] = []
_JOB_BASE_LOCK = threading.Lock()


def _job_base() -> str:
    """One private folder per grading process holding every submission's job folder (hidden in
    sandboxes), removed at exit; those of grading processes that were killed are removed by the next."""
    with _JOB_BASE_LOCK:
        if not _JOB_BASE or not os.path.isdir(_JOB_BASE[0]):
            remove_stale_job_folders()
            _JOB_BASE[:] = [tempfile.mkdtemp(prefix=f"minilm-grading-{os.getpid()}-")]
            os.chmod(_JOB_BASE[0], 0o711)  # a --run-as user reaches its own job folder, lists nothing
            atexit.register(shutil.rmtree, _JOB_BASE[0], True)
        return _JOB_BASE[0]


def remove_job_folders() -> None:
    """Remove this process's job folders (copies of submissions) now: for a grader being stopped."""
    with _JOB_BASE_LOCK:
        if _JOB_BASE:
            shutil.rmtree(_JOB_BASE[0], ignore_errors=True)


def remove_stale_job_folders() -> int:
    """Remove job folders left by grading processes of this user that no longer run (killed)."""
    removed = 0
    base = tempfile.gettempdir()
    try:
        entries = os.listdir(base)
    except OSError:
        return 0
    for name in entries:
        parts = name.split("-")
        if not name.startswith("minilm-grading-") or len(parts) < 4 or not parts[2].isdigit():
            continue
        path = os.path.join(base, name)
        try:
            if os.lstat(path).st_uid != os.geteuid() or int(parts[2]) == os.getpid():
                continue
            os.kill(int(parts[2]), 0)
            continue  # its grader still runs
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        except OSError:
            continue
    return removed


def _cpu_limit(limits: Limits) -> float | None:
    """CPU seconds per process of student code: ``limits.cpu_s``, twice the timeout by default, 0 for none."""
    if limits.cpu_s is None:
        return 2 * limits.timeout
    return limits.cpu_s or None


def sandbox_plan(limits: Limits) -> tuple[str | None, list[str]]:
    """(bwrap to use or None, the protections in force) for ``limits``; ``ValueError`` if refused.

    ``limits.sandbox``: ``"bwrap"`` requires a working bubblewrap sandbox (class grading),
    ``"auto"`` uses one when it works (a student's own ``minilm check``), ``"none"`` never does.
    """
    user = _user_popen_args(limits.user)
    bwrap, why = sandbox.find_bwrap(user) if limits.sandbox != "none" else (None, "disabled")
    if bwrap is None and limits.sandbox == "bwrap":
        raise ValueError(f"no sandbox for student code: {why}. Fix that, or pass --allow-unsandboxed to grade "
                         "with student code running as the grader's user (only for a class you trust)")
    who = limits.user or "the grader's user"
    held = [sandbox.BWRAP_PROTECTIONS] if bwrap else [
        f"NO SANDBOX ({why}): student code ran as {who}, could read the files that user can read, use the "
        "network and signal that user's processes"]
    held.append(f"student code ran as user {limits.user}" if limits.user else
                "student code ran as the grader's user" + (" (separated by the sandbox)" if bwrap else ""))
    cpu = _cpu_limit(limits)
    nproc = limits.processes if (bwrap or limits.user) else None
    held.append(f"per submission: {limits.timeout:g} s in all (kernel start and probes included), "
                f"{limits.cell_timeout:g} s per cell, {limits.probe_timeout:g} s per question, memory "
                + (f"{limits.memory_mb} MB" if limits.memory_mb else "unlimited")
                + "; per process: " + (f"{cpu:g} CPU s" if cpu else "CPU time not limited") + ", files up to "
                + (f"{limits.file_mb} MB" if limits.file_mb else "any size")
                + (f", {limits.open_files} open files" if limits.open_files else "")
                + (f"; at most {nproc} processes and threads" if nproc else "; processes not limited")
                + (" (not binding: student code runs as root)" if nproc and not limits.user and os.geteuid() == 0
                   else ""))
    return bwrap, held


def _run_child(nb, path: Path, lab: Lab, seed: int, limits: Limits, public_only: bool, student: str,
               references: ReferenceCache, on_event, runners: Runners | None, hide: Iterable[str] = (),
               t0: float | None = None, deadline: float | None = None) -> GradeResult:
    t0 = time.monotonic() if t0 is None else t0
    # The whole submission, kernel start and probes included, ends by this time; a little slack
    # lets a runner that keeps to its own (slightly earlier) deadline report what it has. The
    # class's deadline, when it comes first, ends it too (not graded, rather than a timeout).
    own_end = t0 + limits.timeout + KILL_SLACK
    hard_end = own_end if deadline is None else min(own_end, deadline)

    def cut_by_class_deadline(kind: str) -> bool:
        return kind == "deadline" and deadline is not None and deadline < own_end and time.monotonic() >= deadline

    bwrap, protections = sandbox_plan(limits)
    job = tempfile.mkdtemp(prefix="job-", dir=_job_base())
    token = secrets.token_hex(16)
    child = None
    questions: dict[str, QuestionResult] = {}
    plans: dict[str, list[PlannedCheck]] = {}
    cells: list[dict] = []
    notes: list[str] = []
    status, message = "ok", ""
    try:
        work, home = os.path.join(job, "work"), os.path.join(job, "home")
        os.makedirs(work)
        os.makedirs(home)
        copy = os.path.join(work, student + ".ipynb")
        nbtools.write_for_execution(nb, copy)
        sandbox.write_kernelspec(home, sys.executable)
        env = sandbox.child_env(home, [_package_root()], token)
        n_q = len(lab.questions)
        config = {
            "notebook": copy, "workdir": work, "cell_timeout": limits.cell_timeout,
            "timeout": max(1.0, limits.timeout - (time.monotonic() - t0) - 1.0),
            "probe_timeout": limits.probe_timeout, "memory_mb": limits.memory_mb, "file_mb": limits.file_mb,
            "max_restarts": limits.max_restarts, "n_questions": n_q,
            "cpu_s": _cpu_limit(limits),
            # RLIMIT_NPROC counts every process of the user: per submission in a sandbox (its own user
            # namespace) or under --run-as; unsandboxed as the grader's user it would count the grader's.
            "processes": limits.processes if (bwrap or limits.user) else None,
            "open_files": limits.open_files,
        }
        user = _switch_user(limits.user, job)
        runner = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runner.py")
        argv = [sys.executable, runner]
        info = None
        if bwrap:
            info = os.pipe()
            hidden = [_job_base(), tempfile.gettempdir(), os.path.expanduser("~"), *hide]
            argv = sandbox.bwrap_argv(bwrap, [work, home], hidden, [*sandbox.python_paths(), _package_root()],
                                      work, info_fd=info[1]) + ["--", *argv]
        child = _Child(argv, work, env, user, runners, sandboxed=bool(bwrap), info_fd=info)
        child.send(config)
        executed = None
        while executed is None:
            event = child.next_event(hard_end)
            if on_event:
                on_event(event)
            kind = event.get("event")
            if kind in ("started", "kernel") and type(event.get("limits_missing")) is list \
                    and event["limits_missing"]:
                note = f"limits not enforced on this system: {str(event['limits_missing'])[:300]}"
                if note not in notes:
                    notes.append(note)
            elif kind == "executed":
                executed = event
            elif cut_by_class_deadline(kind):
                status, message = NOT_GRADED, DEADLINE_MESSAGE
                break
            elif kind in ("eof", "fatal", "deadline", "overflow"):
                status = "timeout" if kind == "deadline" else "crashed"
                message = _child_failure(kind, event, child)
                break
        if executed is not None:
            cells = _cell_events(executed.get("cells"), nb)
            # Hidden inputs are drawn only now, after the student's code has run.
            for q in lab.questions:
                plans[q.name] = plan_checks(q, seed, public_only)
            request = {"probe_source": PROBE_SOURCE,
                       "questions": [{"name": q.name, "request": probe_request(q, plans[q.name])}
                                     for q in lab.questions]}
            child.send(request)
            while True:
                event = child.next_event(hard_end)
                if on_event:
                    on_event(event)
                kind = event.get("event")
                if kind == "probe":
                    name = event.get("name")
                    q = next((x for x in lab.questions if x.name == name), None)
                    if q is None or name in questions:
                        continue
                    questions[name] = _score_probe(q, plans[name], event, references)
                elif kind == "done":
                    break
                elif cut_by_class_deadline(kind):
                    status, message = NOT_GRADED, DEADLINE_MESSAGE
                    questions.clear()  # an incomplete grade is no grade: the instructor grades it again
                    break
                elif kind in ("eof", "fatal", "deadline", "overflow"):
                    if kind == "deadline":
                        status = "timeout"
                    elif len(questions) < len(lab.questions):
                        status = "crashed"
                    message = _child_failure(kind, event, child)
                    break
    finally:
        if child is not None:
            child.kill()
            child.close()
        if not bwrap:
            sandbox.kill_job_processes(token)
        shutil.rmtree(job, ignore_errors=True)
    final = []
    for q in lab.questions:
        if q.name in questions:
            final.append(questions[q.name])
        else:
            why = "not-graded" if status == "ok" else status
            final.append(zero_result(q, why, message or "the grader did not get this question's result",
                                     plans.get(q.name) or plan_checks(q, seed, True)))
    return GradeResult(student, str(path), lab.id, status, final, message=message, seed=seed, cells=cells, notes=notes,
                       protections=protections)


_CELL_STATUSES = ("error", "timeout", "crashed", "not-run")


def _cell_events(raw: Any, nb: Any) -> list[dict]:
    """The cells that did not run cleanly, as the (untrusted) runner reports them, sanitized.

    The runner counts code cells only; each event gets the cell's position in the notebook and
    its first line, which is how a student finds it.
    """
    code = [(i, c.get("source", "")) for i, c in enumerate(nb["cells"]) if c.get("cell_type") == "code"]
    out = []
    for c in raw if type(raw) is list else []:
        if type(c) is dict and type(c.get("index")) is int and c.get("status") in _CELL_STATUSES \
                and 0 <= c["index"] < len(code):
            index, source = code[c["index"]]
            first = next((line.strip() for line in source.split("\n") if line.strip()), "")[:60]
            out.append({"index": index, "first_line": first, "status": c["status"],
                        "error": str(c.get("error", ""))[:300]})
    return out[:200]


def _user_popen_args(name: str | None) -> dict | None:
    """Popen arguments that run a process as user ``name`` (``None``: as this process's user)."""
    if name is None:
        return None
    import pwd

    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"there is no user {name!r} to run student code as") from None
    if os.geteuid() != 0:
        raise ValueError("running student code as another user needs the grader to run as root")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _switch_user(name: str | None, job: str) -> dict | None:
    """Popen arguments that run the child as user ``name``, who is given the job directory."""
    user = _user_popen_args(name)
    if user is None:
        return None
    for root, dirs, files in os.walk(job):
        for entry in [root] + [os.path.join(root, x) for x in dirs + files]:
            os.chown(entry, user["user"], user["group"], follow_symlinks=False)
    return user


def check_user_can_run(name: str) -> None:
    """Fail early, with a clear message, when user ``name`` cannot run this Python and minilm."""
    job = tempfile.mkdtemp(prefix="minilm-user-check-")
    try:
        user = _switch_user(name, job)
        env = sandbox.child_env(job, [_package_root()], "check")
        fix = "(install Python and the packages where that user can read them)"
        try:
            proc = subprocess.run([sys.executable, "-c", "import minilm.grading, nbclient, ipykernel"], cwd=job,
                                  env=env, capture_output=True, timeout=120, **user)
        except OSError as err:
            raise ValueError(f"user {name!r} cannot run {sys.executable}: {err.strerror} {fix}") from None
        if proc.returncode != 0:
            tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["(no message)"]
            raise ValueError(f"user {name!r} cannot run {sys.executable} with minilm and ipykernel: {tail[0]} {fix}")
    finally:
        shutil.rmtree(job, ignore_errors=True)


def _child_failure(kind: str, event: dict, child: _Child) -> str:
    if kind == "deadline":
        return "the submission ran past the grading time limit"
    if kind == "overflow":
        return "the submission produced an oversized reply"
    if kind == "fatal":
        return "the grader's runner failed: " + str(event.get("error", ""))[-500:]
    tail = child.log_tail()
    return "the grading process ended early" + (f": {tail.strip()}" if tail.strip() else "")


def _score_probe(q, checks: list[PlannedCheck], event: dict, references: ReferenceCache) -> QuestionResult:
    status = event.get("status")
    if status == "ok" and type(event.get("reply")) is str:
        try:
            reply = json.loads(event["reply"], parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            return zero_result(q, "error", "the probe's reply was not valid JSON", checks)
        if type(reply) is dict and "probe_error" in reply:
            return zero_result(q, "error", f"probing failed: {str(reply['probe_error'])[:300]}", checks)
        return score_question(q, checks, reply, references)
    if status == "timeout":
        return zero_result(q, "timeout", f"probing {q.target} timed out ({str(event.get('error', ''))[:100]})", checks)
    if status == "crashed":
        return zero_result(q, "crashed", f"the kernel died while probing {q.target}", checks)
    return zero_result(q, "error", f"probing {q.target} failed: {str(event.get('error', ''))[:300]}", checks)


# ---------------------------------------------------------------------------------------------
# A class: many notebooks in parallel
# ---------------------------------------------------------------------------------------------


def grade_many(
    paths: Iterable[str | os.PathLike],
    lab: Lab,
    jobs: int = 1,
    seed: int | None = None,
    limits: Limits | None = None,
    release: str | os.PathLike | None = None,
    progress: bool = True,
    sweep_orphans: bool = False,
    hide: Iterable[str] = (),
    deadline: float | None = None,
) -> tuple[list[GradeResult], int]:
    """Grade many notebooks, ``jobs`` at a time. Returns (results in input order, master seed).

    Each student's hidden inputs come from ``derive_seed(master_seed, student)``: reproducible
    with the same master seed, different from one student to the next. ``sweep_orphans``: after
    each submission, kill the processes it left behind (for a subreaper process: ``minilm grade``).
    ``hide``: folders no student process may see (the report folder, the submissions).
    ``deadline``: seconds the whole class may take from this call: submissions not finished by then
    are stopped, and those not started are not started; both come back with status ``not-graded``
    and the message ``DEADLINE_MESSAGE`` (never dropped). Raises ``ValueError`` before grading
    anything when ``limits`` asks for a sandbox that cannot be made.
    """
    if deadline is not None and not deadline > 0:
        raise ValueError(f"deadline must be a positive number of seconds, got {deadline!r}")
    end = None if deadline is None else time.monotonic() + deadline
    paths = [Path(p) for p in paths]
    hide = [str(h) for h in hide] + sorted({str(p.absolute().parent) for p in paths})
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    master = secrets.randbits(63) if seed is None else int(seed)
    names = _unique_names(paths)
    references = ReferenceCache()
    lab = require_lab(lab)
    sandbox_plan(limits or Limits())  # refuse now, not once per student
    preload(lab, references)

    runners = Runners()

    def one(i: int) -> GradeResult:
        if end is not None and time.monotonic() >= end:
            return _failed(names[i], paths[i], lab, NOT_GRADED, DEADLINE_MESSAGE)
        try:
            return grade_notebook(paths[i], lab, derive_seed(master, names[i]), limits, release=release,
                                  student=names[i], references=references, runners=runners, hide=hide,
                                  deadline=end)
        except ValueError as err:  # a per-submission failure
            return _failed(names[i], paths[i], lab, "invalid-notebook", str(err))
        except Exception as err:  # noqa: BLE001 - a grader bug must not stop the class
            return _failed(names[i], paths[i], lab, "crashed", f"internal grader error: {type(err).__name__}: {err}")
        finally:
            if sweep_orphans:
                runners.sweep()

    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(one, i) for i in range(len(paths))]
        results = []
        for fut in tqdm(futures, desc="grading", unit="nb", disable=not progress):
            results.append(fut.result())
    return results, master


def _failed(student: str, path: Path, lab: Lab, status: str, message: str) -> GradeResult:
    questions = [zero_result(q, "not-graded", message, []) for q in lab.questions]
    return GradeResult(student, str(path), lab.id, status, questions, message=message)


def preload(lab: Lab, references: ReferenceCache | None = None) -> None:
    """Import, before any student process starts, everything the grader will need later.

    Plans every question's checks (the references run, importing what they use) and computes
    each measured value's reference with its declared parameters. With the report writers
    (``minilm.grading.report``, which imports this module) imported by the caller first, as
    ``minilm grade`` does, this process imports nothing new once the first student process starts
    (``tests/test_grading_sandbox.py`` lists what it imports and finds nothing).
    """
    import csv  # noqa: F401 - the reports
    import pwd  # noqa: F401 - --run-as

    import tqdm.auto  # noqa: F401 - the progress bar

    references = references or ReferenceCache()
    for q in lab.questions:
        plan_checks(q, 0, False)
        if q.kind == "value" and q.reference is not None:
            references.expected(q, dict(q.params))
    sandbox.find_bwrap()


def _unique_names(paths: list[Path]) -> list[str]:
    """A unique, stable id per submission, from its path alone (not from its place in the list).

    The file name's stem; when several submissions share it (``alice/lab.ipynb``,
    ``bob/lab.ipynb``), the folder's name; when ids still collide (compared ignoring case, as some
    file systems do), a hash of the whole path is added.
    """
    stems = [_student_name(p) for p in paths]
    count = Counter(s.lower() for s in stems)
    ids = [_safe_id(p.parent.name) if count[s.lower()] > 1 and p.parent.name else s for p, s in zip(paths, stems)]
    count = Counter(i.lower() for i in ids)
    out = []
    for p, i in zip(paths, ids):
        if count[i.lower()] > 1:
            digest = hashlib.sha256(str(p.absolute()).encode("utf-8", "surrogateescape")).hexdigest()[:8]
            i = f"{i[:MAX_ID_CHARS - 9]}~{digest}"
        out.append(i)
    return out
