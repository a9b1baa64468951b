"""Keeping student code in its box: a bubblewrap sandbox, environment, resource limits, no process left behind.

Used by the grading parent and by the runner child. The main defence is a bubblewrap (``bwrap``)
sandbox around each submission's runner and kernel (``find_bwrap``, ``bwrap_argv``): its own PID
namespace, no network, a read-only filesystem except the job folder, a private /tmp, the grader's
output and the other submissions hidden. Linux gets every defence below too; other systems get
what they offer (documented in docs/grading.md):

- the child environment is an allow-list (no tokens or secrets of the grader's environment leak),
  with a private HOME, TMPDIR and Jupyter/IPython directories per submission;
- ``RLIMIT_AS`` (memory), ``RLIMIT_FSIZE`` (file size) and ``RLIMIT_CORE`` in the child, and on
  each kernel (``limit_process``: everything student code starts inherits them) ``RLIMIT_CPU``
  (CPU seconds per process), ``RLIMIT_NPROC`` (processes and threads; counted per sandbox, since
  each has its own user namespace) and ``RLIMIT_NOFILE`` (open files);
- ``PR_SET_DUMPABLE=0`` so a student's process of the same user cannot read the grader's memory
  or file descriptors through /proc or ptrace;
- ``PR_SET_CHILD_SUBREAPER`` so processes a student detaches (double fork, ``setsid``) are
  re-parented to the runner or the grader, which kills them all before any report is written.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36

# Variables a kernel legitimately needs from the grader's environment; everything else is dropped.
_KEEP_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "VIRTUAL_ENV", "CONDA_PREFIX", "LD_LIBRARY_PATH",
             "OMP_NUM_THREADS", "MKL_NUM_THREADS", "SYSTEMROOT")


def _prctl(option: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def make_undumpable() -> bool:
    """Forbid same-user processes to ptrace this one or read its /proc memory and fds (Linux)."""
    return _prctl(PR_SET_DUMPABLE, 0)


def become_subreaper() -> bool:
    """Adopt orphaned descendants instead of letting them escape to init (Linux)."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def apply_limits(memory_mb: int | None, file_mb: int | None) -> list[str]:
    """Limit this process and its future children (memory, file size, no core files); returns what
    could not be enforced. The kernel's own limits: ``limit_process``.
    """
    try:
        import resource
    except ImportError:  # Windows
        return ["resource limits (no 'resource' module on this system)"]
    missing = []
    limits = (("RLIMIT_AS", memory_mb, 2**20), ("RLIMIT_FSIZE", file_mb, 2**20), ("RLIMIT_CORE", 0, 1))
    for name, amount, unit in limits:
        if amount is None:
            continue
        limit = getattr(resource, name, None)
        if limit is None:
            missing.append(name)
            continue
        value = int(amount) * unit
        try:
            _, hard = resource.getrlimit(limit)
            if hard != resource.RLIM_INFINITY and hard < value:
                value = hard
            resource.setrlimit(limit, (value, value))  # soft = hard: the student cannot raise it
        except (ValueError, OSError):
            missing.append(name)
    return missing


def limit_process(pid: int, cpu_s: float | None = None, processes: int | None = None,
                  open_files: int | None = None) -> list[str]:
    """Limit the running process ``pid`` (a kernel, before any student code runs in it) and what it
    starts later; returns what could not be enforced.

    ``cpu_s``: CPU seconds per process (``RLIMIT_CPU``: ``SIGXCPU`` at the limit, ``SIGKILL`` 5 s of
    CPU later for a process that handles it). ``processes``: processes and threads of this user that
    may exist when it forks (``RLIMIT_NPROC``; the kernel counts them per user namespace, so in a
    bubblewrap sandbox per submission). ``open_files``: file descriptors per process
    (``RLIMIT_NOFILE``). Set on the kernel only, not the runner, so that a kernel's children
    filling the process table cannot stop the runner from reporting. Soft and hard limits are set
    together (the hard one 5 s higher for CPU): student code cannot raise them.
    """
    try:
        import resource
    except ImportError:  # Windows
        return ["resource limits (no 'resource' module on this system)"]
    missing = []
    wanted = (("RLIMIT_CPU", cpu_s, 5), ("RLIMIT_NPROC", processes, 0), ("RLIMIT_NOFILE", open_files, 0))
    for name, amount, slack in wanted:
        if amount is None:
            continue
        limit = getattr(resource, name, None)
        if limit is None or not hasattr(resource, "prlimit"):
            missing.append(name)
            continue
        soft = max(1, int(amount))
        try:
            _, hard = resource.prlimit(pid, limit)
            new_hard = soft + slack if hard == resource.RLIM_INFINITY else min(hard, soft + slack)
            resource.prlimit(pid, limit, (min(soft, new_hard), new_hard))
        except (ValueError, OSError):
            missing.append(name)
    if processes is not None and "RLIMIT_NPROC" not in missing and os.getuid() == 0:
        # The kernel exempts root from RLIMIT_NPROC (also as root mapped into a user namespace).
        missing.append("RLIMIT_NPROC (student code runs as root, which the process limit does not bind: "
                       "grade as an ordinary user, or as root with --run-as USER)")
    return missing


def child_env(home: str, python_path: list[str], job_token: str) -> dict[str, str]:
    """The environment of the runner and kernel of one submission: allow-listed, private dirs."""
    env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
    env.setdefault("OMP_NUM_THREADS", "1")  # several submissions run side by side
    env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])
    tmp = os.path.join(home, "tmp")
    os.makedirs(tmp, exist_ok=True)
    env.update(
        {
            "HOME": home,
            "TMPDIR": tmp,
            "IPYTHONDIR": os.path.join(home, ".ipython"),
            "JUPYTER_CONFIG_DIR": os.path.join(home, ".jupyter"),
            "JUPYTER_DATA_DIR": os.path.join(home, ".local", "share", "jupyter"),
            "JUPYTER_RUNTIME_DIR": os.path.join(home, "runtime"),
            "JUPYTER_PATH": os.path.join(home, "jupyter"),
            "JUPYTER_PLATFORM_DIRS": "1",
            "MPLCONFIGDIR": os.path.join(home, ".matplotlib"),
            "MPLBACKEND": "Agg",
            "PYTHONPATH": os.pathsep.join(python_path),
            "PYTHONNOUSERSITE": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",
            "MINILM_FAST": "1",  # labs run their fast mode when graded
            "CUDA_VISIBLE_DEVICES": "",  # graded on CPU, like the reference values
            "MINILM_GRADE_JOB": job_token,  # lets the grader find this job's processes at cleanup
        }
    )
    return env


def write_kernelspec(home: str, python: str) -> None:
    """A private ``python3`` kernelspec that runs this very interpreter (no ``ipykernel install``)."""
    import json

    path = os.path.join(home, "jupyter", "kernels", "python3")
    os.makedirs(path, exist_ok=True)
    spec = {
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (minilm grader)",
        "language": "python",
    }
    with open(os.path.join(path, "kernel.json"), "w") as f:
        json.dump(spec, f)


def _proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of ``pid`` from /proc, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()  # the command name may contain spaces and parens
    return int(fields[1]), fields[0]


def _all_pids() -> list[int]:
    try:
        return [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []


def children_of(pid: int) -> list[int]:
    """Live (non-zombie) direct children of ``pid`` (Linux /proc; empty elsewhere)."""
    out = []
    for p in _all_pids():
        st = _proc_stat(p)
        if st is not None and st[0] == pid and st[1] != "Z":
            out.append(p)
    return out


def _reap(pids: set[int]) -> None:
    # Only the processes we killed: the exit status of a runner belongs to its Popen object.
    for pid in list(pids):
        try:
            if os.waitpid(pid, os.WNOHANG)[0] != 0:
                pids.discard(pid)
        except ChildProcessError:
            pids.discard(pid)


def kill_children(keep: set[int] | None = None, rounds: int = 50) -> int:
    """SIGKILL every child of this process (adopted orphans included) except ``keep``; reap them.

    Repeats until none is left, since killing a process re-parents its own children to us when
    we are a subreaper. Returns how many processes were killed.
    """
    keep = keep or set()
    killed = 0
    dying: set[int] = set()
    for _ in range(rounds):
        victims = [p for p in children_of(os.getpid()) if p not in keep]
        if not victims:
            break
        for p in victims:
            try:
                os.kill(p, signal.SIGKILL)
                killed += 1
                dying.add(p)
            except OSError:
                pass
        time.sleep(0.05)
        _reap(dying)
    for _ in range(20):
        if not dying:
            break
        time.sleep(0.05)
        _reap(dying)
    return killed


def kill_job_processes(job_token: str, exclude: set[int] | None = None) -> int:
    """SIGKILL processes of this user whose environment carries ``job_token`` (best effort).

    Catches what a student detached from the kernel when no subreaper is available.
    """
    needle = f"MINILM_GRADE_JOB={job_token}".encode()
    exclude = (exclude or set()) | {os.getpid()}
    killed = 0
    for p in _all_pids():
        if p in exclude:
            continue
        try:
            with open(f"/proc/{p}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            try:
                os.kill(p, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


# ---------------------------------------------------------------------------------------------
# bubblewrap: the sandbox every student process runs in
# ---------------------------------------------------------------------------------------------

BWRAP_INSTALL = ("install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap); "
                 "it needs Linux with user namespaces")
# Namespaces: PID (the first process's death ends every descendant), network (none but loopback),
# IPC, UTS, cgroup, user where available. The filesystem is read-only; /tmp, /dev/shm and /run are
# private and empty; --new-session stops a student from pushing keystrokes into the grader's terminal.
_PRIVATE = ("/tmp", "/dev/shm", "/run")  # an empty tmpfs in every sandbox
_BWRAP_BASE = ("--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/", "/", "--proc", "/proc",
               "--dev", "/dev", *(arg for folder in _PRIVATE for arg in ("--tmpfs", folder)))
_BWRAP_WORKS: dict[tuple, tuple[str | None, str]] = {}
BWRAP_PROTECTIONS = ("bubblewrap sandbox: own PID namespace (no student process outlives its submission), "
                     "no network, read-only filesystem except the job folder, private /tmp, the grader's output "
                     "and other submissions hidden")


def find_bwrap(user: dict | None = None) -> tuple[str | None, str]:
    """(path of a working ``bwrap``, "") or (None, why no sandbox can be made here).

    "Working" is tested by starting a sandbox as the user that will run student code
    (``user``: ``subprocess.Popen`` arguments, e.g. from ``--run-as``); the answer is cached.
    """
    key = tuple(sorted((k, repr(v)) for k, v in (user or {}).items()))
    if key in _BWRAP_WORKS:
        return _BWRAP_WORKS[key]
    import shutil
    import subprocess

    if not sys.platform.startswith("linux"):
        found: tuple[str | None, str] = (None, f"bubblewrap needs Linux (this is {sys.platform})")
    elif (path := shutil.which("bwrap") or next((p for p in ("/usr/bin/bwrap", "/bin/bwrap")
                                                  if os.access(p, os.X_OK)), None)) is None:
        found = (None, f"bwrap is not installed: {BWRAP_INSTALL}")
    else:
        try:
            proc = subprocess.run([path, *_BWRAP_BASE, "--", "/bin/sh", "-c", "exit 0"], capture_output=True,
                                  timeout=30, cwd="/", **(user or {}))
            found = (path, "") if proc.returncode == 0 else (
                None, f"bwrap cannot make a sandbox here: {proc.stderr.decode('utf-8', 'replace').strip()[:300]} "
                      "(user namespaces disabled? e.g. sysctl kernel.unprivileged_userns_clone=1, or "
                      "kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu 24.04)")
        except (OSError, subprocess.SubprocessError) as err:
            found = (None, f"bwrap cannot be run: {err}")
    _BWRAP_WORKS[key] = found
    return found


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def bwrap_argv(bwrap: str, writable: list[str], hidden: list[str], needed: list[str], chdir: str,
               info_fd: int | None = None) -> list[str]:
    """The ``bwrap`` command line (before ``--`` and the command) for one submission.

    ``writable``: folders the student may write (its job folder). ``hidden``: folders replaced by
    an empty tmpfs (the grader's output, the submissions, the grader's home and temporary files).
    ``needed``: paths that must stay visible, read-only, even under a hidden folder (the
    interpreter, site-packages, minilm). Later mounts win, so: hide, re-expose what is needed,
    hide again what lies inside it, then the writable job folder.
    """
    real = lambda p: os.path.realpath(p)  # noqa: E731 - bwrap resolves symlinks of destinations itself
    hide = sorted({real(h) for h in hidden if h and os.path.isdir(h) and real(h) != "/"})
    keep = sorted({real(n) for n in needed if n and os.path.exists(n)})
    # what lies under a hidden folder or a private one (an interpreter or a clone under /tmp) is bound back
    keep = [k for k in keep if any(_under(k, h) for h in (*hide, *_PRIVATE))]
    argv = [bwrap, *_BWRAP_BASE]
    for h in hide:
        argv += ["--tmpfs", h]
    for k in keep:
        argv += ["--ro-bind", k, k]
    for h in hide:
        if any(_under(h, k) and h != k for k in keep):
            argv += ["--tmpfs", h]
    for w in writable:
        argv += ["--bind", real(w), real(w)]
    argv += ["--chdir", real(chdir)]
    if info_fd is not None:
        argv += ["--info-fd", str(info_fd)]
    return argv


def python_paths() -> list[str]:
    """Every folder this interpreter reads code from: what a sandbox must keep visible."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    # Not the folder the grader was started from (``python -m`` puts it first on sys.path): that is
    # the instructor's, and the child does not import from it.
    here = os.path.realpath(os.getcwd())
    paths.update(p for p in sys.path if p and os.path.isabs(p) and os.path.realpath(p) != here)
    return sorted(paths)

