"""The untrusted child of one submission: run the notebook in a kernel, then probe it.

Started by the grader as ``python .../minilm/grading/runner.py`` (a script, so that starting it
does not import all of minilm) in a fresh directory holding only
a copy of the notebook. It speaks JSON lines: the first stdin line is its configuration; it
reports ``{"event": "executed", ...}`` once the notebook has run, then reads the probe requests
(inputs the parent drew *after* execution, from a seed chosen at grading time) and reports one
``{"event": "probe", ...}`` per question, then ``{"event": "done"}``.

Nothing it says is trusted: the parent validates every reply and alone computes scores. The
runner's job is to keep going when the student's code does not: a cell that runs too long is
interrupted (or its kernel killed), a kernel that dies is restarted and the cells that worked are
replayed, so a timeout or crash costs only the question it touches.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback

# jsonschema (imported by nbformat) builds an optional IRI grammar at import, seconds on some
# installs; notebooks never need it, and this process is ours alone.
sys.modules.setdefault("rfc3987_syntax", None)

if __package__:
    from minilm.grading import probe as probe_module
    from minilm.grading import sandbox
    from minilm.grading.kernel_client import NotebookClient
else:  # run as a script by the grader (python .../runner.py): skip importing minilm (and torch)
    import probe as probe_module  # type: ignore[no-redef]  # only for PROBE_MIME: its code comes from the parent
    import sandbox  # type: ignore[no-redef]
    from kernel_client import NotebookClient  # type: ignore[no-redef]

    del sys.path[0]  # this folder: its module names (notebook, report...) must not shadow packages

import nbformat  # noqa: E402
from nbclient.exceptions import DeadKernelError  # noqa: E402

MAX_REPLY_CHARS = 64 * 2**20  # a probe reply larger than this is refused
GRACE = 3.0  # seconds a cell has to stop after the interrupt before its kernel is killed
# The probe runs from source in a private namespace; builtins are named through the module so that
# a student's own variable called ``exec`` or ``compile`` cannot get in the way.
_PROBE_CELL = (
    "import builtins as __minilm_builtins\n"
    "(lambda __b, __ns: (__b.exec(__b.compile({src!r}, '<minilm-probe>', 'exec'), __ns), "
    "__ns['kernel_main']({req!r}, __b.globals())))(__minilm_builtins, {{'__name__': 'minilm_probe'}})\n"
    "del __minilm_builtins\n"
    "None\n"
)


class _QuietClient(NotebookClient):
    """An nbclient that keeps no student output, only error names and the probe's reply.

    Discarding output as it arrives is what makes printing megabytes harmless.
    """

    def output(self, outs, msg, display_id, cell_index):  # noqa: D401 - nbclient hook
        msg_type = msg["msg_type"]
        content = msg["content"]
        # At most one error and one probe reply are kept (the last of each), whatever arrives.
        if msg_type == "error":
            outs[:] = [o for o in outs if o.get("output_type") != "error"]
            outs.append({"output_type": "error", "ename": str(content.get("ename", ""))[:200],
                         "evalue": str(content.get("evalue", ""))[:500]})
        elif msg_type == "display_data":
            data = content.get("data") or {}
            text = data.get(probe_module.PROBE_MIME)
            if isinstance(text, str) and len(text) <= MAX_REPLY_CHARS:
                outs[:] = [o for o in outs if o.get("output_type") != "probe"]
                outs.append({"output_type": "probe", "text": text})
        return None

    def clear_output(self, outs, msg, cell_index):
        return None

    def handle_comm_msg(self, outs, msg, cell_index):  # widgets: not needed to grade
        return None

    # Display updates (update_display_data) need no hook of their own: nbclient applies them only to
    # outputs that ``output`` recorded under a display id, and the ``output`` above records none.


class Runner:
    """Executes one notebook with time limits, restarts and replays, then answers probes."""

    def __init__(self, config: dict, emit) -> None:
        self.cfg = config
        self.emit = emit
        nb = nbformat.read(config["notebook"], as_version=4)
        self.code = [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
        self.good: list[int] = []  # positions in self.code that ran without killing the kernel
        self.status: dict[int, dict] = {}
        self.restarts = 0
        self.client: _QuietClient | None = None
        self.kernel_scope = contextlib.ExitStack()  # holds nbclient's setup_kernel() while a kernel runs
        self.start = time.monotonic()
        n_q = int(config.get("n_questions", 10))
        # ``timeout`` bounds everything this runner does (the parent kills it just after). The
        # notebook's cells may use it all but a reserve for probing: each question's time limit,
        # at most a quarter of the whole.
        self.final_deadline = self.start + config["timeout"]
        reserve = min(n_q * config["probe_timeout"], config["timeout"] / 4)
        self.exec_deadline = self.final_deadline - reserve

    # -- kernel lifecycle ------------------------------------------------------------------------

    def _start_kernel(self) -> None:
        """Start a kernel; one that fails to start (a busy machine, a slow disk) is tried once more."""
        try:
            self._start_kernel_once()
        except Exception:  # noqa: BLE001 - nbclient raises RuntimeError, TimeoutError, zmq errors...
            self._stop_kernel()
            self.emit({"event": "kernel-retry", "error": traceback.format_exc()[-300:]})
            self._start_kernel_once()

    def _start_kernel_once(self) -> None:
        cells = [nbformat.v4.new_code_cell(src) for _, src in self.code] + [nbformat.v4.new_code_cell("")]
        nb = nbformat.v4.new_notebook(cells=cells)
        client = _QuietClient(
            nb, kernel_name="python3", resources={"metadata": {"path": self.cfg["workdir"]}},
            allow_errors=True, shutdown_kernel="immediate",
            startup_timeout=int(max(5, min(120, self.final_deadline - time.monotonic()))),
            iopub_timeout=10, timeout=None,  # time limits: the watchdog in _run
        )
        # nbclient's public context manager starts the kernel and its client; closing the scope shuts
        # both down and cleans up (connection files, channels), as leaving a ``with`` block would.
        self.kernel_scope.enter_context(client.setup_kernel(
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.client = client
        pid = getattr(client.km.provisioner, "pid", None)
        # Before any student code runs in it: the kernel's CPU, process and open-file limits, which
        # everything it starts inherits.
        missing = ["kernel limits (no kernel pid)"] if pid is None else sandbox.limit_process(
            pid, self.cfg.get("cpu_s"), self.cfg.get("processes"), self.cfg.get("open_files"))
        self.emit({"event": "kernel", "pid": pid, "limits_missing": missing})

    def _stop_kernel(self) -> None:
        if self.client is not None:
            try:
                self.kernel_scope.close()
            except Exception:  # noqa: BLE001 - a dead or wedged kernel: the kill below handles it
                pass
            self.client = None
        sandbox.kill_children()

    def _signal_kernel(self, sig: int) -> None:
        prov = self.client.km.provisioner if self.client and self.client.km else None
        pid, pgid = getattr(prov, "pid", None), getattr(prov, "pgid", None)
        try:
            if pgid:
                os.killpg(pgid, sig)
            elif pid:
                os.kill(pid, sig)
        except OSError:
            pass

    def _run(self, position: int, source: str, timeout: float) -> tuple[str, str, list, bool]:
        """Run one cell: (status, error text, outputs, kernel still usable).

        A watchdog interrupts the kernel (SIGINT) at ``timeout`` and kills it ``GRACE`` seconds
        later if the code ignores the interrupt; nbclient then sees a normal error reply or a dead
        kernel, so no message is lost in between.
        """
        assert self.client is not None
        cell = nbformat.v4.new_code_cell(source)
        done = threading.Event()
        state = {"interrupted": False, "killed": False}

        def watchdog() -> None:
            if done.wait(timeout):
                return
            state["interrupted"] = True
            self._signal_kernel(signal.SIGINT)
            if done.wait(GRACE):
                return
            state["killed"] = True
            self._signal_kernel(signal.SIGKILL)

        threading.Thread(target=watchdog, daemon=True).start()
        try:
            self.client.execute_cell(cell, position, store_history=True)
        except DeadKernelError:
            if state["killed"]:
                return "timeout", f"ran longer than {timeout:.0f} s and ignored the interrupt", [], False
            return "crashed", self._death(), [], False
        except Exception as err:  # noqa: BLE001 - lost connection and the like: treat as a crash
            return "crashed", f"{type(err).__name__}: {err}"[:300], [], False
        finally:
            done.set()
        if state["interrupted"]:
            return "timeout", f"ran longer than {timeout:.0f} s (interrupted)", [], True
        errors = [o for o in cell.outputs if o.get("output_type") == "error"]
        if errors:
            return "error", f"{errors[-1]['ename']}: {errors[-1]['evalue']}".rstrip(": "), cell.outputs, True
        return "ok", "", cell.outputs, True

    def _death(self) -> str:
        """Why the kernel died, from its exit status where the provisioner kept it."""
        proc = getattr(self.client.km.provisioner, "process", None) if self.client and self.client.km else None
        try:
            code = proc.wait(timeout=5) if proc is not None else None
        except (subprocess.TimeoutExpired, OSError):
            code = None
        if code == -signal.SIGXCPU:
            return f"the kernel was stopped at the CPU time limit ({self.cfg.get('cpu_s')} s per process)"
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            why = ("the CPU time limit's hard stop, or a signal" if name == "SIGKILL" and self.cfg.get("cpu_s")
                   else "a crash or a signal")
            return f"the kernel died ({name}: {why})"
        return "the kernel died (os._exit, a crash, or the memory limit)"

    def _restart(self) -> bool:
        """Kill the kernel, start a fresh one and replay the cells that worked. False if out of restarts."""
        self._stop_kernel()
        while self.restarts < self.cfg["max_restarts"]:
            self.restarts += 1
            self._start_kernel()
            for pos in list(self.good):
                left = self.final_deadline - time.monotonic()
                if left <= 1:
                    return False
                status, err, _, _ = self._run(pos, self.code[pos][1], min(self.cfg["cell_timeout"], left))
                if status in ("timeout", "crashed"):  # behaves differently the second time: drop it
                    self.good.remove(pos)
                    self.status[self.code[pos][0]] = {"status": status, "error": f"on replay: {err}"}
                    self._stop_kernel()
                    break
            else:
                return True
        return False

    # -- phases ----------------------------------------------------------------------------------

    def execute(self) -> dict:
        self._start_kernel()
        alive = True
        for pos, (index, source) in enumerate(self.code):
            left = self.exec_deadline - time.monotonic()
            if left <= 1 or not alive:
                self.status[index] = {"status": "not-run", "error": "the notebook time limit was reached"
                                      if alive else "the kernel could not be restarted"}
                continue
            timeout = min(self.cfg["cell_timeout"], left)
            status, err, _, usable = self._run(pos, source, timeout)
            self.status[index] = {"status": status, "error": err}
            if status in ("ok", "error"):
                self.good.append(pos)
            elif not usable:
                alive = self._restart()
        return {"event": "executed", "restarts": self.restarts, "alive": alive,
                "cells": [{"index": i, **s} for i, s in sorted(self.status.items())]}

    def probe(self, name: str, request: dict, source: str) -> dict:
        if self.client is None:
            return {"event": "probe", "name": name, "status": "crashed", "error": "no kernel"}
        left = self.final_deadline - time.monotonic()
        if left <= 1:
            return {"event": "probe", "name": name, "status": "timeout", "error": "the grading time limit was reached"}
        code = _PROBE_CELL.format(src=source, req=json.dumps(request))
        timeout = min(self.cfg["probe_timeout"], left)
        status, err, outputs, usable = self._run(len(self.code), code, timeout)
        replies = [o["text"] for o in outputs if o.get("output_type") == "probe"]
        if not usable and not self._restart():
            self._stop_kernel()
        if status in ("timeout", "crashed"):
            return {"event": "probe", "name": name, "status": status, "error": err}
        if not replies:
            return {"event": "probe", "name": name, "status": "error", "error": err or "the probe gave no reply"}
        return {"event": "probe", "name": name, "status": "ok", "reply": replies[-1]}

    def close(self) -> None:
        self._stop_kernel()


def main() -> int:
    # The protocol goes to the original stdout; anything else printed here goes to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sandbox.become_subreaper()
    sandbox.make_undumpable()

    def emit(event: dict) -> None:
        proto.write(json.dumps(event) + "\n")
        proto.flush()

    runner = None
    try:
        config = json.loads(sys.stdin.readline())
        # Memory and file size here (the kernel inherits them); CPU, processes and open files on the
        # kernel alone (``_start_kernel_once``), so that a kernel's fork bomb cannot starve this runner.
        missing = sandbox.apply_limits(config.get("memory_mb"), config.get("file_mb"))
        emit({"event": "started", "limits_missing": missing})
        runner = Runner(config, emit)
        emit(runner.execute())
        line = sys.stdin.readline()
        if line:
            request = json.loads(line)
            for item in request["questions"]:
                emit(runner.probe(item["name"], item["request"], request["probe_source"]))
        emit({"event": "done"})
        return 0
    except Exception:  # noqa: BLE001 - report, then exit: the parent zeroes what it did not get
        emit({"event": "fatal", "error": traceback.format_exc()[-2000:]})
        return 1
    finally:
        if runner is not None:
            runner.close()
        sandbox.kill_children()


if __name__ == "__main__":
    sys.exit(main())
