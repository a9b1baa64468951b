"""A hostile class: attack notebooks graded in bubblewrap sandboxes, beside an honest submission.

The grader runs the way instructors run it: as an ordinary, unprivileged user (``minilm-grader``,
created here when the tests run as root), and as root with ``--run-as minilm-grader``. Each attack
notebook carries known answers; it must score no more than those answers earn honestly, and an
honest notebook graded in the same run must still get full marks. Classes of attack (the numbers
of the issue that asked for them):

1. a process chain that re-forks and outlives grading, then rewrites the reports;
2. a notebook that edits the installed grader or plants modules it would import later;
3. a notebook that stops (SIGSTOP) or kills the grader's processes: the class is still graded, the
   attacker gets 0 and a flag, and ``--timeout`` bounds the submission, kernel start included;
4. hostile inputs to the parent: a 240-character file name with odd characters, clashing names,
   code nested deep enough to exhaust recursion, an output blob of tens of MB, a 60 MB reply;
5. symbolic links: a submission that is one, job files replaced by links to secrets;
6. text that tries to forge report entries (markdown, CSV formulas);
8. the hidden-input seed searched for in every argument list, environment and readable file.

Both classes (as the unprivileged user and as root with ``--run-as``) hold every attack. A class
of its own tries the resource limits (a busy loop past the CPU limit, a fork bomb, a huge file,
thousands of open files), and one grading run checks the whole-class deadline (``--deadline``).

Where bubblewrap, or root for ``--run-as``, is missing these tests skip with the reason, except
in CI (``CI`` set), where they must run.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import nbformat
import pytest

from minilm.grading import sandbox
from minilm.grading.grader import derive_seed
from minilm.labs.demo import heldout_nll_ref

ROOT = Path(__file__).resolve().parent.parent
USER = "minilm-grader"
IN_CI = bool(os.environ.get("CI"))
MASTER_SEED = 7_391_046_128_553_902_117  # searched for by the seed attack: long enough to be unique
MARKER = f"MINILM_SANDBOX_TEST_{uuid.uuid4().hex}"
SECRET = f"INSTRUCTOR-SECRET-{uuid.uuid4().hex}"
# Small limits keep the class quick; a stopped runner costs the whole --timeout.
TIMEOUT, CELL_TIMEOUT, PROBE_TIMEOUT = 45, 20, 10


def _skip(reason: str):
    if IN_CI:
        pytest.fail(f"CI must run the sandbox tests: {reason}")
    pytest.skip(reason)


GOOD_SOFTMAX = '''def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)'''
WRONG_SOFTMAX = '''def softmax(x):
    e = np.exp(x - x.max(axis=0, keepdims=True))  # wrong axis: right only on 1-D input
    return e / e.sum(axis=0, keepdims=True)'''
GOOD_BIGRAM = '''def bigram_probs(tokens, vocab_size, alpha=1.0):
    counts = np.zeros((vocab_size, vocab_size))
    np.add.at(counts, (tokens[:-1], tokens[1:]), 1.0)
    return (counts + alpha) / (counts.sum(axis=1, keepdims=True) + alpha * vocab_size)'''
HONEST = ["import numpy as np", GOOD_SOFTMAX, GOOD_BIGRAM, f"heldout_nll = {heldout_nll_ref(0)!r}", 'why_max = "b"']
WRONG = ["import numpy as np", WRONG_SOFTMAX, GOOD_BIGRAM, f"heldout_nll = {heldout_nll_ref(0)!r}", 'why_max = "a"']
WRONG_SCORE = 0.6 + 3 + 2 + 0  # q1: the 1-D public input only; q2, q3 right; q4 wrong

# 1. Double fork, new session, an empty environment (no marker of the grading job), then a chain
# in which every process forks and exits at once (a process lives about a millisecond), faster
# than a kill loop can list (/proc) and kill it: a subreaper's sweep alone does not end it, only
# the end of its PID namespace does. Every 0.05 s a link rewrites the reports. It runs for two
# minutes unless killed.
REFORK = '''import subprocess, sys
CHAIN = """
import json, os, sys, time
out = sys.argv[1]
end = time.time() + 120
last = 0.0
while time.time() < end:
    if os.fork():
        os._exit(0)
    if time.time() - last > 0.05:
        last = time.time()
        for name in ("grades.csv", "summary.json", os.path.join("feedback", "atk_refork.md")):
            try:
                os.makedirs(os.path.dirname(os.path.join(out, name)), exist_ok=True)
                with open(os.path.join(out, name), "w") as f:
                    f.write(json.dumps({"score": 100.0}))
            except OSError:
                pass
"""
subprocess.Popen([sys.executable, "-c", CHAIN, OUT, MARKER], start_new_session=True, env={},
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)'''

# 2. Rewrite the installed grader so that every score is full, and plant modules that Python or
# the grader would import later (its own later probes, later students, the next grading run).
EDIT_INSTALL = '''import os, minilm
pkg = os.path.dirname(minilm.__file__)
root = os.path.dirname(pkg)
PAYLOAD = """
def score_question(q, checks, reply, references, _s=score_question):
    r = _s(q, checks, reply, references)
    r.score = r.points
    return r
"""
edited = []
for rel in ("grading/checker.py", "grading/report.py", "grading/runner.py", "grading/probe.py", "labs/demo.py"):
    try:
        with open(os.path.join(pkg, rel), "a") as f:
            f.write(PAYLOAD)
        edited.append(rel)
    except OSError:
        pass
for planted in (os.path.join(root, "sitecustomize.py"), os.path.join(root, "tqdm.py"),
                os.path.join(pkg, "grading", "csv.py"), os.path.join(pkg, "planted_by_student.py")):
    try:
        with open(planted, "w") as f:
            f.write("import builtins; builtins.PLANTED = True\\n")
        edited.append(planted)
    except OSError:
        pass
if edited:
    why_max = "b"'''

# 3. Signal every process of the grading chain above the kernel (runner, grader) that it can see.
SIGNAL = '''import os, signal
SIG = signal.{sig}
pid = os.getppid()
while pid > 1:
    try:
        cmd = open(f"/proc/{{pid}}/cmdline", "rb").read()
        parent = int(open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()[1])
    except OSError:
        break
    if b"minilm" not in cmd and b"runner.py" not in cmd:
        break  # above the grader: leave the rest of the machine alone
    try:
        os.kill(pid, SIG)
    except OSError:
        pass
    pid = parent
for p in os.listdir("/proc"):
    if p.isdigit() and int(p) != os.getpid():
        try:
            if OUT.encode() in open(f"/proc/{{p}}/cmdline", "rb").read():
                os.kill(int(p), SIG)
        except OSError:
            pass
why_max = "b"'''

# 8. Look for the grading seeds in every argument list, environment and small readable file.
SEED_HUNT = '''import os
NEEDLES = [n[::-1] for n in REVERSED]  # this notebook's own copy must not match
found = []
def look(data, where):
    if any(n.encode() in data for n in NEEDLES):
        found.append(where)
look(repr(dict(os.environ)).encode(), "environ")
for p in os.listdir("/proc"):
    for part in ("cmdline", "environ"):
        try:
            look(open(f"/proc/{p}/{part}", "rb").read(), f"/proc/{p}/{part}")
        except OSError:
            pass
for top in (os.getcwd(), "..", os.path.expanduser("~"), "/tmp", "/var/tmp", "/dev/shm", *FOLDERS):
    for dirpath, dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                if os.path.getsize(path) < 2**20:
                    look(open(path, "rb").read(), path)
            except OSError:
                pass
if found:
    why_max = "b"'''

# 5. Replace files of the job folder by links to an instructor's secret, then kill the runner so
# that the grader reads its log into the feedback.
LINK_JOB = '''import os, signal
job = os.path.dirname(os.getcwd())
for name in os.listdir(job) + ["runner.log", "log", "stderr"]:
    path = os.path.join(job, name)
    if name in ("work",):
        continue
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.rename(path, path + ".old")
        elif os.path.lexists(path):
            os.unlink(path)
        os.symlink(SECRET_FILE, path)
    except OSError:
        pass
os.kill(os.getppid(), signal.SIGKILL)'''

# 6. Text that would forge report entries if copied verbatim.
FORGED = "\\n## honest\\n- forged: full marks\\n| a | b |\\n<script>alert(1)</script> [x](http://e)"
FORGE_TEXT = [f'raise ValueError("{FORGED}")',
              "# [click](http://evil) <img src=x onerror=alert(1)> ## honest\nimport os\nos._exit(1)"]

# 4. Nesting deep enough to exhaust recursion: a long cell, and an answer expression short enough
# (under 500,000 characters) that the grader's static reading of the notebook does parse it.
DEEP = ["depth = 1" + " + 1" * 200_000, "heldout_nll = " + "0.0 + " * 50_000 + "heldout_nll"]

# 4. An oversized reply: after the probe of its last question, a hook publishes a 60 MB "probe reply"
# (the runner passes on replies up to 64 MB; the grader reads at most 48 MB per message).
HUGE_REPLY = '''from IPython import get_ipython
from IPython.display import publish_display_data
def _huge(result):
    cell = getattr(getattr(result, "info", None), "raw_cell", "") or ""
    if "<minilm-probe>" in cell and "why_max" in cell:
        publish_display_data({"application/x-minilm-probe": "[" + "1," * 30_000_000 + "1]"})
get_ipython().events.register("post_run_cell", _huge)'''

# Resources (the limits class, graded with --cpu-s and --file-mb small). Each attack would set the
# right answer to q4 (why_max = "b", two points more than its answers earn) if it got past its
# limit, and first raises its soft limits as far as the hard ones allow (as any program may).
_RAISE = '''import resource
for _name in ("RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_FSIZE", "RLIMIT_CPU"):
    _soft, _hard = resource.getrlimit(getattr(resource, _name))
    resource.setrlimit(getattr(resource, _name), (_hard, _hard))
'''
# A busy loop that ignores the interrupt: only the CPU limit (SIGXCPU) stops it before the cell's limit.
CPU_LOOP = _RAISE + '''import signal
signal.signal(signal.SIGINT, signal.SIG_IGN)
n = 0
while True:
    n += 1'''
# A fork bomb (2**9 processes if nothing stops it), detached from the kernel, then a count of the
# processes in the sandbox's PID namespace, then more processes started from the kernel itself.
FORK_BOMB = _RAISE + '''import os, subprocess, sys, time
BOMB = """
import os, time
for _ in range(9):
    try:
        os.fork()
    except OSError:
        pass
time.sleep(30)
"""
subprocess.Popen([sys.executable, "-c", BOMB], start_new_session=True, stdin=subprocess.DEVNULL,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(6)
if sum(p.isdigit() for p in os.listdir("/proc")) > 300:
    why_max = "b"
more = [subprocess.Popen(["sleep", "30"]) for _ in range(300)]
why_max = "b"'''
# A 256 MB file (the class's limit is 64 MB per file).
BIG_FILE = _RAISE + '''chunk = b"x" * 2**20
with open("big.bin", "wb") as f:
    for _ in range(256):
        f.write(chunk)
why_max = "b"'''
# 10,000 open files (the limit is 4096 per process).
OPEN_FILES = _RAISE + '''import os
files = [open(os.devnull) for _ in range(10_000)]
why_max = "b"'''
LIMITS_CPU_S, LIMITS_FILE_MB = 5, 64


def _nb(cells: list[str], outputs: dict[int, str] | None = None, metadata: dict | None = None):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    for i, text in (outputs or {}).items():
        nb.cells[i].outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    nb.metadata.update(metadata or {})
    return nb


def _consts(**values) -> str:
    return "\n".join(f"{k} = {v!r}" for k, v in values.items())


def _class(base: Path, out: Path) -> dict[str, tuple[str, float]]:
    """Write the class under ``base``; {case: (the student id the grader gives it, honest score)}."""
    cls = base / "class"
    cls.mkdir()
    secret_dir = base / "secret"
    secret_dir.mkdir()
    secret_file = secret_dir / "secret.txt"
    secret_file.write_text(SECRET + "\n")
    (secret_dir / "answers.ipynb").write_text(nbformat.writes(_nb([f"# {SECRET}", *HONEST])))
    consts = _consts(OUT=str(out), MARKER=MARKER, SECRET_FILE=str(secret_file))
    needles = [str(MASTER_SEED)]
    cases: dict[str, tuple[object, float]] = {
        "honest": (_nb(HONEST), 10.0),
        "atk_refork": (_nb([*WRONG, consts + "\n" + REFORK]), WRONG_SCORE),
        "atk_edit_install": (_nb([*WRONG, EDIT_INSTALL]), WRONG_SCORE),
        "atk_stop": (_nb([*WRONG, consts + "\n" + SIGNAL.format(sig="SIGSTOP")]), WRONG_SCORE),
        "atk_kill": (_nb([*WRONG, consts + "\n" + SIGNAL.format(sig="SIGKILL")]), WRONG_SCORE),
        "atk_link_job": (_nb([*WRONG, consts + "\n" + LINK_JOB]), WRONG_SCORE),
        "atk_forge_text": (_nb([*WRONG[:4], *FORGE_TEXT, WRONG[4]]), WRONG_SCORE),
        "atk_deep": (_nb([*WRONG, *DEEP]), WRONG_SCORE),
        "atk_blob": (_nb(HONEST, outputs={0: "x" * (40 * 2**20)}), 10.0),
        "atk_huge_reply": (_nb([*WRONG, HUGE_REPLY]), WRONG_SCORE),
    }
    paths: dict[str, tuple[Path, float]] = {}
    for name, (_, honest) in cases.items():
        paths[name] = (cls / f"{name}.ipynb", honest)
    # The seed hunt needs every student's derived seed; ids are known before writing.
    odd = "é😀 $(touch pwned); \"quoted\", =HYPERLINK(\"evil\")\nnext " + "x" * 180 + ".ipynb"
    paths["atk_long_odd_name"] = (cls / odd, 10.0)
    paths["alice"] = (cls / "alice" / "lab.ipynb", 10.0)
    paths["bob"] = (cls / "bob" / "lab.ipynb", WRONG_SCORE)
    paths["atk_symlink"] = (cls / "atk_symlink.ipynb", 0.0)
    paths["atk_seed"] = (cls / "atk_seed.ipynb", WRONG_SCORE)
    from minilm.grading.grader import _unique_names

    ids = _unique_names([p for p, _ in paths.values()])
    needles += [str(derive_seed(MASTER_SEED, i)) for i in ids]
    folders = [str(base), str(out), str(cls), str(secret_dir)]
    hunt = _consts(REVERSED=[n[::-1] for n in needles], FOLDERS=folders) + "\n" + SEED_HUNT
    cases["atk_seed"] = (_nb([*WRONG, hunt]), WRONG_SCORE)
    for name, (nb, _) in cases.items():
        nbformat.write(nb, paths[name][0])
    (cls / "alice").mkdir()
    (cls / "bob").mkdir()
    nbformat.write(_nb(HONEST), paths["alice"][0])
    nbformat.write(_nb(WRONG), paths["bob"][0])
    nbformat.write(_nb(HONEST), paths["atk_long_odd_name"][0])
    os.symlink(secret_dir / "answers.ipynb", paths["atk_symlink"][0])
    return {name: (i, h) for i, (name, (_, h)) in zip(ids, paths.items())}


def _limits_class(base: Path, out: Path) -> dict[str, tuple[str, float]]:
    """The resource attacks beside an honest notebook; {case: (student id, honest score)}."""
    cls = base / "class"
    cls.mkdir()
    (base / "secret").mkdir()
    cases = {"honest": (_nb(HONEST), 10.0),
             "atk_cpu": (_nb([*WRONG, CPU_LOOP]), WRONG_SCORE),
             "atk_fork_bomb": (_nb([*WRONG, FORK_BOMB]), WRONG_SCORE),
             "atk_big_file": (_nb([*WRONG, BIG_FILE]), WRONG_SCORE),
             "atk_open_files": (_nb([*WRONG, OPEN_FILES]), WRONG_SCORE)}
    for name, (nb, _) in cases.items():
        nbformat.write(nb, cls / f"{name}.ipynb")
    return {name: (name, honest) for name, (_, honest) in cases.items()}


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _survivors(look_s: float = 0.0) -> list[int]:
    """Processes of the attacks (their command lines carry MARKER). A chain that re-forks at once
    lives about a millisecond per process: a scan of /proc, listed first and read after, never sees
    it. So, for ``look_s`` seconds, the newest pids (from the kernel's last allocated pid) are read
    as soon as they appear too."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if MARKER.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            pass
    end = time.monotonic() + look_s
    while not found and time.monotonic() < end:
        try:
            last = int(Path("/proc/sys/kernel/ns_last_pid").read_text())
        except (OSError, ValueError):
            break
        for pid in range(last, max(last - 64, 1), -1):
            try:
                if MARKER.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
                    break
            except OSError:
                pass
    return found


def _kill_survivors() -> None:
    """Kill the attacks' processes, a fast re-forking chain included (killed as soon as seen)."""
    quiet_since = time.monotonic()
    deadline = quiet_since + 60
    while time.monotonic() - quiet_since < 1.0 and time.monotonic() < deadline:
        pids = _survivors(look_s=0.2)
        if pids:
            quiet_since = time.monotonic()
        for pid in pids:
            try:
                os.kill(pid, 9)
            except OSError:
                pass


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        pass
    if os.geteuid() != 0:
        _skip(f"no user {USER!r} and not root to create it")
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True)
    return pwd.getpwnam(USER)


def _as_user_prefix(pw: pwd.struct_passwd) -> list[str]:
    return ["runuser", "-u", pw.pw_name, "--"] if os.geteuid() == 0 else []


def _check_environment(mode: str) -> pwd.struct_passwd | None:
    if not sys.platform.startswith("linux"):
        pytest.skip("bubblewrap sandboxes need Linux")
    if mode == "run-as" and os.geteuid() != 0:
        _skip("--run-as needs the grader to run as root")
    pw = _ensure_user() if (mode == "run-as" or os.geteuid() == 0) else None
    user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []} if pw else None
    bwrap, why = sandbox.find_bwrap(user)
    if bwrap is None:
        _skip(why)
    if pw is not None:
        try:
            probe = subprocess.run([sys.executable, "-c", "import minilm.grading.grader, nbclient, ipykernel"],
                                   cwd="/", capture_output=True, env={"PATH": os.environ.get("PATH", ""),
                                                                      "PYTHONPATH": str(ROOT)}, **user)
            failed = probe.stderr.decode()[-300:] if probe.returncode != 0 else ""
        except OSError as err:  # the interpreter itself is out of the user's reach (e.g. under /root)
            failed = str(err)
        if failed:
            _skip(f"user {USER} cannot run {sys.executable} with minilm (an interpreter under /root?): {failed}")
    return pw


# The grader, run the way `minilm grade` runs it, reporting its own memory: its resident size once
# it has imported what grading needs (the baseline), and its peak when done (what a submission
# sending oversized replies must not inflate). Both are VmHWM, the high-water mark of this program's
# own memory, not ru_maxrss: Linux carries the resident size of the process that started the grader
# into ru_maxrss (fork copies its page tables, exec keeps the mark), so a grader started by a pytest
# worker that had grown to 1 GB reported 1 GB (CI, under --run-as, where no runuser stands between).
_GRADER = ("import sys\n"
           "def hwm():\n"
           "    return next(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM:'))\n"
           "import minilm.grading.report, minilm.grading.grader, nbformat, numpy, torch\n"
           "base = hwm()\n"
           "from minilm.cli import main\n"
           "code = main(sys.argv[1:])\n"
           "print(f'GRADER_BASE_RSS_KB={base} GRADER_PEAK_RSS_KB={hwm()}', file=sys.stderr)\n"
           "sys.exit(code)")


@contextlib.contextmanager
def _graded_class(mode: str, build, extra: list[str]):
    """Grade the class ``build(base, out)`` writes (-j 2, lab 99) as ``mode`` ("user": the grader
    runs as an unprivileged user; "run-as": as root with --run-as), then look for survivors."""
    pw = _check_environment(mode)
    base = Path(tempfile.mkdtemp(prefix="minilm-sandbox-test-"))
    try:
        os.chmod(base, 0o755)
        out = base / "out"
        cases = build(base, out)
        # The grader's install: a copy of minilm owned by the grader's user, as an instructor's own
        # install is, so that only the sandbox stands between student code and the grader's code.
        pkg = base / "install"
        shutil.copytree(ROOT / "minilm", pkg / "minilm", ignore=shutil.ignore_patterns("__pycache__"))
        grader_user = pw if mode == "user" else None
        if grader_user is not None and os.geteuid() == 0:
            for p in [base, *base.rglob("*")]:
                os.chown(p, grader_user.pw_uid, grader_user.pw_gid, follow_symlinks=False)
        elif mode == "run-as":  # the grader is root: an instructor's secret only root may read
            for p in (base / "secret").rglob("*"):
                p.chmod(0o600)
        before = _tree_digest(pkg)
        argv = [sys.executable, "-c", _GRADER, "grade", str(base / "class"), "--out", str(out), "-j", "2",
                "--lab", "99", "--seed", str(MASTER_SEED), "--no-progress", "--memory-mb", "3000", *extra]
        if mode == "run-as":
            argv += ["--run-as", USER]
        if grader_user is not None:
            argv = _as_user_prefix(grader_user) + argv
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "OMP_NUM_THREADS", "MINILM_THREADS", "CI")}
        env.update(PYTHONPATH=str(pkg), PYTHONDONTWRITEBYTECODE="1", HOME=str(base))
        t0 = time.monotonic()
        proc = subprocess.run(argv, cwd=base, env=env, capture_output=True, text=True, timeout=20 * TIMEOUT)
        elapsed = time.monotonic() - t0
        snapshot = _tree_digest(out) if out.exists() else {}
        time.sleep(1.5)  # a surviving chain rewrites the reports every 0.05 s
        after = _tree_digest(out) if out.exists() else {}
        survivors = _survivors(look_s=2.0)
        _kill_survivors()
        results = {p.stem: json.loads(p.read_text()) for p in (out / "instructor").glob("*.json")}
        rss = re.findall(r"GRADER_BASE_RSS_KB=(\d+) GRADER_PEAK_RSS_KB=(\d+)", proc.stderr)
        data = {"mode": mode, "proc": proc, "cases": cases, "results": results, "out": out, "elapsed": elapsed,
                "reports_changed": snapshot != after, "survivors": survivors, "install_before": before,
                "install_after": _tree_digest(pkg), "base_rss_mb": int(rss[-1][0]) / 1024 if rss else None,
                "peak_rss_mb": int(rss[-1][1]) / 1024 if rss else None}
        print(f"\n[{mode}] class of {len(cases)} graded in {elapsed:.0f} s, grader RSS "
              f"{data['base_rss_mb']} MB after its imports, peak {data['peak_rss_mb']} MB")
        for name, (sid, honest) in sorted(cases.items()):
            r = results.get(sid, {})
            print(f"[{mode}] {name[:40]:<40} score {r.get('score')} (honest {honest}) status {r.get('status')}")
        yield data
    finally:  # whatever failed: no attack process, no copy of the class left behind
        _kill_survivors()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module", params=["user", "run-as"])
def graded(request):
    """Every attack class, graded as an unprivileged user and as root with --run-as."""
    limits = ["--timeout", str(TIMEOUT), "--cell-timeout", str(CELL_TIMEOUT), "--probe-timeout", str(PROBE_TIMEOUT)]
    with _graded_class(request.param, _class, limits) as data:
        yield data


def _result(graded, name: str) -> dict:
    assert graded["proc"].returncode == 0, graded["proc"].stderr[-3000:]
    sid = graded["cases"][name][0]
    assert sid in graded["results"], f"{name} ({sid}) not graded; got {sorted(graded['results'])}"
    return graded["results"][sid]


def test_the_class_is_graded_and_the_honest_submission_gets_full_marks(graded):
    r = _result(graded, "honest")
    assert r["status"] == "ok" and r["score"] == r["max_score"] == 10.0
    assert set(graded["results"]) == {sid for sid, _ in graded["cases"].values()}
    summary = json.loads((graded["out"] / "summary.json").read_text())
    assert summary["protections"][0].startswith("bubblewrap sandbox: own PID namespace")


@pytest.mark.parametrize("name", ["atk_refork", "atk_edit_install", "atk_stop", "atk_kill", "atk_seed",
                                  "atk_link_job", "atk_forge_text", "atk_deep", "atk_blob", "atk_long_odd_name",
                                  "atk_symlink", "atk_huge_reply"])
def test_attack_scores_no_more_than_its_answers_earn(graded, name):
    honest = graded["cases"][name][1]
    got = _result(graded, name)["score"]
    print(f"[{graded['mode']}] {name}: {got} (honest {honest})")
    assert got <= honest + 1e-9


def test_1_no_process_outlives_grading_and_reports_stay_as_written(graded):
    _result(graded, "atk_refork")
    assert graded["survivors"] == []
    assert not graded["reports_changed"]
    assert _result(graded, "atk_refork")["score"] == pytest.approx(WRONG_SCORE)


def test_2_the_installed_grader_cannot_be_edited_or_added_to(graded):
    assert _result(graded, "atk_edit_install")["score"] == pytest.approx(WRONG_SCORE)
    assert graded["install_after"] == graded["install_before"]
    assert _result(graded, "honest")["score"] == 10.0  # graded after the attack, by the same grader


def test_3_signals_to_the_grader_zero_the_attacker_flag_it_and_bound_the_time(graded):
    tamper = json.loads((graded["out"] / "tamper.json").read_text())["students"]
    for name in ("atk_stop", "atk_kill"):
        r = _result(graded, name)
        assert r["score"] == 0 and r["status"] in ("timeout", "crashed"), (name, r["status"], r["message"])
        assert name in tamper
        assert r["duration_s"] <= TIMEOUT + 15, (name, r["duration_s"])  # kernel start and probes included
    # The whole class: two at a time, each submission bounded by --timeout.
    n = len(graded["cases"])
    assert graded["elapsed"] <= (n / 2 + 1) * (TIMEOUT + 15)


def test_8_the_seed_is_nowhere_a_student_process_can_read(graded):
    assert _result(graded, "atk_seed")["score"] == pytest.approx(WRONG_SCORE)


def _all_reports(out: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())


def test_5_symlinks_are_not_followed_into_feedback(graded):
    r = _result(graded, "atk_symlink")
    assert r["status"] == "invalid-notebook" and "symbolic link" in r["message"]
    assert _result(graded, "atk_link_job")["score"] == 0  # it killed its runner
    assert SECRET not in _all_reports(graded["out"])


def test_6_student_text_cannot_forge_report_entries(graded):
    out = graded["out"]
    students = set(graded["results"])
    md = (out / "tamper.md").read_text()
    for line in md.splitlines():
        assert line in ("# Items to review", "", "## Identical answers across students") or line.startswith("- ") \
            or (line.startswith("## ") and line[3:].replace("\\", "") in students), line
    assert not re.search(r"(?<!\\)<", md)  # no HTML: every "<" from a student is escaped
    feedback = (out / "feedback" / "atk_forge_text.md").read_text()
    assert "forged" in feedback  # the message is shown ...
    assert not any(line.startswith(("## honest", "- forged", "| a")) for line in feedback.splitlines())  # ... inert
    assert not re.search(r"(?<!\\)<", feedback)
    rows = list(csv.reader((out / "grades.csv").open(newline="")))
    assert len(rows) == 1 + len(graded["cases"])
    assert not [cell for row in rows for cell in row if cell[:1] in ("=", "+", "-", "@")]
    data = json.loads((out / "tamper.json").read_text())
    by_student = {row[0]: row for row in rows[1:]}
    for student, items in data["students"].items():  # the CSV's review count is tamper.md's
        assert int(by_student[student][rows[0].index("review_items")]) == len(items)
    gs = json.loads((out / "gradescope" / "atk_forge_text.json").read_text())
    assert gs["output_format"] == "text" and all(t["output_format"] == "text" for t in gs["tests"])


def test_4_hostile_names_and_inputs_never_fail_the_class(graded):
    assert _result(graded, "atk_deep")["score"] == pytest.approx(WRONG_SCORE)
    assert _result(graded, "atk_blob")["score"] == 10.0  # outputs stripped, graded
    long_id = graded["cases"]["atk_long_odd_name"][0]
    assert _result(graded, "atk_long_odd_name")["score"] == 10.0 and len(long_id) <= 64
    assert (graded["out"] / "feedback" / f"{long_id}.md").exists()
    # alice/lab.ipynb and bob/lab.ipynb keep their folders as ids, with their own reports.
    assert _result(graded, "alice")["score"] == 10.0
    assert _result(graded, "bob")["score"] == pytest.approx(WRONG_SCORE)
    assert graded["cases"]["alice"][0] == "alice" and graded["cases"]["bob"][0] == "bob"
    assert {"alice.md", "bob.md"} <= {p.name for p in (graded["out"] / "feedback").iterdir()}


def test_4_an_oversized_reply_is_cut_off_and_the_grader_stays_small(graded):
    r = _result(graded, "atk_huge_reply")
    # The questions probed before the 60 MB reply keep their scores; the rest of the run is stopped.
    assert r["status"] == "crashed" and "oversized reply" in r["message"], (r["status"], r["message"])
    assert r["score"] == pytest.approx(WRONG_SCORE)
    assert [q["status"] for q in r["questions"]][:3] == ["ok"] * 3 and r["questions"][3]["status"] == "crashed"
    # The grader read at most one bounded message of it (48 MB), never the whole reply: its peak memory
    # stays within 200 MB of its resident size after its imports (~246 MB). Measured (VmHWM, -j 2): 117 MB
    # above it, as the grader's user and as root with --run-as alike (the 40 MB blob beside it included);
    # 314 MB above it with the bounded read removed (MAX_EVENT_BYTES and MAX_TOTAL_BYTES set to 2 and 4 GB).
    # Taken over the grader's own baseline, the bound holds whatever numpy or torch imports cost.
    assert graded["peak_rss_mb"] is not None and graded["base_rss_mb"] is not None
    assert graded["peak_rss_mb"] - graded["base_rss_mb"] < 200, (graded["base_rss_mb"], graded["peak_rss_mb"])
    assert _result(graded, "honest")["score"] == 10.0


# ---------------------------------------------------------------------------------------------
# Resource limits: CPU time, processes, file size, open files (a class of their own, small limits)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["user", "run-as"])
def limited(request):
    # The cells may run for minutes: only the resource limits stop these attacks early.
    args = ["--timeout", "240", "--cell-timeout", "120", "--probe-timeout", str(PROBE_TIMEOUT),
            "--cpu-s", str(LIMITS_CPU_S), "--file-mb", str(LIMITS_FILE_MB)]
    with _graded_class(request.param, _limits_class, args) as data:
        yield data


def _cell_errors(r: dict) -> list[str]:
    return [f"{c['status']}: {c['error']}" for c in r["cells"]]


def test_limits_hold_and_each_attack_scores_what_its_answers_earn(limited):
    assert _result(limited, "honest")["score"] == 10.0 and _result(limited, "honest")["status"] == "ok"
    for name in ("atk_cpu", "atk_fork_bomb", "atk_big_file", "atk_open_files"):
        r = _result(limited, name)
        print(f"[{limited['mode']}] {name}: {r['score']} (honest {WRONG_SCORE}) {_cell_errors(r)}")
        # Contained: the submission was graded (status ok), and scored what its answers earn.
        assert r["status"] == "ok" and r["score"] == pytest.approx(WRONG_SCORE), (name, r["status"], r["message"])
    summary = json.loads((limited["out"] / "summary.json").read_text())
    held = summary["protections"][-1]
    assert f"{LIMITS_CPU_S} CPU s" in held and f"files up to {LIMITS_FILE_MB} MB" in held
    assert "4096 open files" in held and "at most 256 processes" in held
    assert limited["survivors"] == []


def test_a_busy_loop_is_stopped_at_the_cpu_limit_and_reported(limited):
    r = _result(limited, "atk_cpu")
    assert any(c["status"] == "crashed" and "CPU time limit" in c["error"] for c in r["cells"]), _cell_errors(r)
    assert r["duration_s"] < 120  # well before the cell's own 120 s limit
    tamper = json.loads((limited["out"] / "tamper.json").read_text())["students"]
    assert any("CPU time limit" in item for item in tamper["atk_cpu"])


def test_a_fork_bomb_is_held_to_the_process_limit_and_reported(limited):
    r = _result(limited, "atk_fork_bomb")
    assert any("BlockingIOError" in c["error"] or "Resource temporarily unavailable" in c["error"]
               for c in r["cells"]), _cell_errors(r)
    assert not [n for n in r["notes"] if "RLIMIT_NPROC" in n]  # enforced: the grader runs no student code as root


def test_a_huge_file_is_cut_at_the_file_size_limit_and_reported(limited):
    r = _result(limited, "atk_big_file")
    assert any("File too large" in c["error"] for c in r["cells"]), _cell_errors(r)


def test_open_files_are_held_to_the_limit_and_reported(limited):
    r = _result(limited, "atk_open_files")
    assert any("Too many open files" in c["error"] for c in r["cells"]), _cell_errors(r)


# ---------------------------------------------------------------------------------------------
# The parent itself (no class run needed)
# ---------------------------------------------------------------------------------------------


def test_ids_are_unique_stable_and_safe():
    from minilm.grading.grader import _unique_names

    paths = [Path("c/lab.ipynb"), Path("c/lab-1.ipynb"), Path("a/lab.ipynb"), Path("b/lab.ipynb"),
             Path("c/" + "y" * 240 + ".ipynb"), Path("c/odd name\n=1.ipynb"), Path("c/odd_name_=1.ipynb"),
             Path("x/Alice/q.ipynb"), Path("y/alice/q.ipynb")]
    ids = _unique_names(paths)
    assert len({i.lower() for i in ids}) == len(ids)
    assert ids[2:4] == ["a", "b"] and ids[1] == "lab-1"
    assert all(len(i) <= 64 and set(i) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~")
               for i in ids)
    assert _unique_names(list(reversed(paths))) == list(reversed(ids))  # stable: the path alone decides


def test_ending_the_sandbox_ends_every_process_in_it(tmp_path):
    """The PID namespace alone (no subreaper sweep, no process limit): a process that double-forked
    into a new session dies with the sandbox's first process. (In a class run the subreaper sweeps
    and the process limit would also end the re-forking chain of attack 1: this checks the namespace.)"""
    from minilm.grading.grader import _Child

    bwrap, why = sandbox.find_bwrap()
    if bwrap is None:
        _skip(why)
    marker = f"minilm-pidns-{uuid.uuid4().hex}"
    info = os.pipe()
    argv = sandbox.bwrap_argv(bwrap, [str(tmp_path)], [], [], str(tmp_path), info_fd=info[1])
    # The marker is split by quotes in the command line, so that only the detached process carries it
    # (as the name, $0, of a shell that stays alive: two commands, so it does not exec sleep). /bin/sh, not
    # this interpreter: a virtual environment under /tmp (CI's clone) is not inside the sandbox's private /tmp.
    split = f'{marker[:12]}""{marker[12:]}'
    detach = f"(/bin/sh -c 'sleep 120; :' {split} </dev/null >/dev/null 2>&1 &)"
    child = _Child([*argv, "--", "/bin/sh", "-c", f"setsid sh -c {shlex.quote(detach)}; exec sleep 120"],
                   str(tmp_path), {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, sandboxed=True, info_fd=info)
    try:
        end = time.monotonic() + 60
        while not _processes_with(marker) and time.monotonic() < end:
            time.sleep(0.1)
        assert _processes_with(marker), "the detached process never started"
    finally:
        child.kill()
        child.close()
    end = time.monotonic() + 10
    while _processes_with(marker) and time.monotonic() < end:
        time.sleep(0.1)
    left = _processes_with(marker)
    for pid in left:  # clean up before failing
        os.kill(pid, 9)
    assert left == [], "a detached process outlived its sandbox"


def _processes_with(text: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            pass
    return found


def test_a_kernels_limits_are_what_proc_shows_for_it():
    if not sys.platform.startswith("linux"):
        pytest.skip("/proc/PID/limits is Linux's")
    proc = subprocess.Popen(["sleep", "60"])
    try:
        missing = sandbox.limit_process(proc.pid, cpu_s=7, processes=100, open_files=200)
        text = Path(f"/proc/{proc.pid}/limits").read_text()
    finally:
        proc.kill()
        proc.wait()
    rows = {line[:26].strip(): line[26:].split()[:2] for line in text.splitlines()[1:]}
    assert rows["Max cpu time"] == ["7", "12"]  # SIGXCPU at 7 s, SIGKILL at 12 s
    assert rows["Max processes"] == ["100", "100"] and rows["Max open files"] == ["200", "200"]
    # Root is exempt from the process limit: said so, not silently assumed.
    assert [m for m in missing if "RLIMIT_NPROC" in m] == (["RLIMIT_NPROC (student code runs as root, which the "
                                                            "process limit does not bind: grade as an ordinary user, "
                                                            "or as root with --run-as USER)"]
                                                           if os.getuid() == 0 else [])


def test_limits_reject_values_no_kernel_could_run_under():
    from minilm.grading.grader import Limits, _cpu_limit

    assert _cpu_limit(Limits(timeout=100)) == 200 and _cpu_limit(Limits(cpu_s=0)) is None
    for bad in ({"cpu_s": 0.5}, {"processes": 8}, {"open_files": 10}, {"file_mb": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Limits(**bad)


def test_the_parent_reads_a_bounded_amount_from_its_child():
    from minilm.grading.grader import MAX_EVENT_BYTES, _Child

    script = "import sys; sys.stdout.write('x' * (200 * 2**20)); sys.stdout.flush()"
    child = _Child([sys.executable, "-c", script], "/", dict(os.environ))
    try:
        events = [child.next_event(time.monotonic() + 60) for _ in range(2)]
    finally:
        child.kill()
        child.close()
    assert events[0] == {"event": "overflow"}
    assert MAX_EVENT_BYTES <= 64 * 2**20


def test_the_grader_imports_nothing_once_student_code_runs(tmp_path):
    bwrap, why = sandbox.find_bwrap()
    if bwrap is None:
        _skip(why)
    for name in ("a", "b"):
        nbformat.write(_nb(HONEST), tmp_path / f"{name}.ipynb")
    script = textwrap.dedent(f"""
        import json, sys
        import minilm.cli
        import minilm.grading.grader as g
        seen = {{}}
        original = g._Child.__init__
        def spy(self, *a, **k):
            seen.setdefault("modules", set(sys.modules))
            original(self, *a, **k)
        g._Child.__init__ = spy
        code = minilm.cli.main(["grade", {str(tmp_path)!r}, "--out", {str(tmp_path / "out")!r}, "--lab", "99",
                                "--no-progress", "--timeout", "120"])
        print(json.dumps(sorted(set(sys.modules) - seen["modules"])))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    late = json.loads(proc.stdout.strip().splitlines()[-1])
    assert late == [], f"imported after the first student process started: {late}"


def test_grading_a_class_refuses_to_start_without_a_sandbox(tmp_path, monkeypatch):
    from minilm.cli import main

    nbformat.write(_nb(HONEST), tmp_path / "a.ipynb")
    monkeypatch.setattr(sandbox, "_BWRAP_WORKS", {})
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on the PATH ...
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # ... nor in /usr/bin
    with pytest.raises(SystemExit, match="no sandbox for student code: bwrap is not installed.*--allow-unsandboxed"):
        main(["grade", str(tmp_path), "--out", str(tmp_path / "out"), "--lab", "99", "--no-progress"])
    assert not (tmp_path / "out").exists()


def _wait_for_job(tmp: Path, timeout: float = 120) -> Path:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = list(tmp.glob("minilm-grading-*/job-*/work/*.ipynb"))
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError("no job folder appeared")


def _wait_for_loop(tmp: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Until the graded notebook has written its ``looping`` file (its kernel is in the endless loop)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if list(tmp.glob("minilm-grading-*/job-*/work/looping")):
            return
        if proc.poll() is not None:
            raise AssertionError(f"the grader ended (status {proc.returncode}) before the kernel reached its loop: "
                                 f"{proc.stderr.read()[-2000:] if proc.stderr else ''}")
        time.sleep(0.2)
    raise AssertionError("the graded notebook never reached its loop")


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if text.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(int(pid))
        except OSError:
            pass
    return found


def test_a_grader_stopped_or_killed_mid_run_leaves_no_copies_behind(tmp_path):
    bwrap, why = sandbox.find_bwrap()
    if bwrap is None:
        _skip(why)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    # The notebook says when it has reached its endless loop (a file beside it), so the signals below
    # arrive while the kernel runs, however slow the machine is.
    nbformat.write(_nb(["import pathlib, time", "pathlib.Path('looping').write_text('1')",
                        "while True:\n    time.sleep(0.1)"]), tmp_path / "hang.ipynb")
    env = dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "minilm", "grade", str(tmp_path / "hang.ipynb"), "--out", str(tmp_path / "out"),
            "--lab", "99", "--no-progress", "--timeout", "300"]
    # Stopped (SIGTERM): it kills the submission's processes and removes its job folders itself.
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_loop(tmp, proc)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + 15 and "stopped by signal" in err
    assert list(tmp.glob("minilm-grading-*")) == []
    time.sleep(0.5)
    assert _processes_mentioning(str(tmp)) == []
    assert not (tmp_path / "out").exists()
    # Killed outright (SIGKILL): bubblewrap ends the sandbox with its parent; the job folder stays
    # until the next grader removes it.
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_loop(tmp, proc)
    proc.kill()
    proc.wait(timeout=60)
    deadline = time.monotonic() + 20
    while _processes_mentioning(str(tmp)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(str(tmp)) == []
    assert len(list(tmp.glob("minilm-grading-*"))) == 1
    script = "import minilm.grading.grader as g; print(g.remove_stale_job_folders())"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "1", out.stderr[-2000:]
    assert list(tmp.glob("minilm-grading-*")) == []


def test_a_kernel_that_fails_to_start_is_tried_once_more(tmp_path, monkeypatch):
    from minilm.grading import runner

    nbformat.write(_nb(["x = 1"]), tmp_path / "n.ipynb")
    config = {"notebook": str(tmp_path / "n.ipynb"), "workdir": str(tmp_path), "timeout": 60, "probe_timeout": 5,
              "cell_timeout": 5, "max_restarts": 1, "n_questions": 1}
    events: list[dict] = []
    calls: list[int] = []

    def flaky(self, fail_times):
        calls.append(1)
        if len(calls) <= fail_times:
            raise RuntimeError("Kernel died before replying to kernel_info")

    monkeypatch.setattr(runner.Runner, "_stop_kernel", lambda self: None)
    monkeypatch.setattr(runner.Runner, "_start_kernel_once", lambda self: flaky(self, 1))
    runner.Runner(config, events.append)._start_kernel()
    assert len(calls) == 2 and [e["event"] for e in events] == ["kernel-retry"]
    calls.clear()
    monkeypatch.setattr(runner.Runner, "_start_kernel_once", lambda self: flaky(self, 2))
    with pytest.raises(RuntimeError):  # twice: the submission is then marked crashed by the parent
        runner.Runner(config, events.append)._start_kernel()
    assert len(calls) == 2


def test_an_install_under_a_private_folder_is_bound_back_read_only(tmp_path):
    """A clone or interpreter under /tmp (CI's checkouts often are) stays visible in the sandbox, read-only,
    although the sandbox's /tmp is a fresh tmpfs; the hidden folders inside it stay hidden."""
    clone, out = tmp_path / "clone", tmp_path / "clone" / "out"
    out.mkdir(parents=True)
    (out / "grades.csv").write_text("secret")
    argv = sandbox.bwrap_argv("bwrap", [], [str(out)], [str(clone), "/usr"], chdir="/")
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "--ro-bind"]
    assert os.path.realpath(clone) in binds and "/usr" not in binds  # /usr is visible through / already
    tmpfs = [i for i, a in enumerate(argv) if a == "--tmpfs" and argv[i + 1] == os.path.realpath(out)]
    assert tmpfs and max(tmpfs) > argv.index(os.path.realpath(clone))  # hidden again after the bind
    bwrap, why = sandbox.find_bwrap()
    if bwrap is None:
        _skip(why)
    tool = tmp_path / "clone" / "tool.sh"
    tool.write_text("#!/bin/sh\necho inside\n")
    tool.chmod(0o755)
    argv = sandbox.bwrap_argv(bwrap, [], [str(out)], [str(tool.parent)], chdir="/")
    done = subprocess.run([*argv, "--", str(tool)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "inside", done.stderr
    peek = subprocess.run([*argv, "--", "ls", "-A", str(out)], capture_output=True, text=True, timeout=60)
    assert peek.returncode == 0 and peek.stdout.strip() == "", peek.stdout  # the hidden folder is empty inside


CLASS_DEADLINE = 30  # seconds: the honest notebook (about 5 s alone) is graded well before it


def test_a_class_deadline_stops_grading_and_reports_the_rest_as_not_graded(tmp_path):
    """`minilm grade --deadline`: submissions running at the deadline are stopped, those not started
    are not started; both are reported (not dropped), the reports are written, the exit status is 3."""
    bwrap, why = sandbox.find_bwrap()
    if bwrap is None:
        _skip(why)
    cls = tmp_path / "class"
    cls.mkdir()
    hang = ["import time", "while True:\n    time.sleep(0.1)"]  # until --timeout (300 s): the deadline comes first
    for name, cells in (("a_honest", HONEST), ("b_hang", hang), ("c_hang", hang), ("d_late", HONEST)):
        nbformat.write(_nb(cells), cls / f"{name}.ipynb")
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "minilm", "grade", str(cls), "--out", str(out), "-j", "2", "--lab", "99",
            "--no-progress", "--timeout", "300", "--cell-timeout", "300", "--deadline", str(CLASS_DEADLINE)]
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=CLASS_DEADLINE + 240,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    elapsed = time.monotonic() - t0
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "class deadline" in proc.stderr and "3 of 4 submissions not graded" in proc.stderr
    # The deadline held: the hanging submissions (300 s each) were stopped at it, plus start-up and reports.
    assert elapsed < CLASS_DEADLINE + 45, elapsed
    results = {p.stem: json.loads(p.read_text()) for p in (out / "instructor").glob("*.json")}
    assert set(results) == {"a_honest", "b_hang", "c_hang", "d_late"}
    assert results["a_honest"]["status"] == "ok" and results["a_honest"]["score"] == 10.0
    for name in ("b_hang", "c_hang", "d_late"):  # stopped while running (b, c), never started (d)
        r = results[name]
        assert (r["status"], r["message"], r["score"]) == ("not-graded", "not graded: class deadline exceeded", 0)
    rows = {row["student"]: row for row in csv.DictReader((out / "grades.csv").open(newline=""))}
    assert [rows[n]["status"] for n in sorted(rows)] == ["ok", "not-graded", "not-graded", "not-graded"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["class_deadline_s"] == CLASS_DEADLINE and summary["not_graded"] == ["b_hang", "c_hang", "d_late"]
    assert "not graded: class deadline exceeded" in (out / "tamper.md").read_text()
    # Written atomically: no staging folder or temporary file is left beside the reports.
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
