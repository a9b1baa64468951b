"""The notebook client's waits in slices: a reply whose wake-up was lost is read within a slice."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from queue import Empty

import nbformat
import pytest

from minilm.grading.kernel_client import NotebookClient, poll_in_slices


class _LossyChannel:
    """A channel that sleeps through a message's arrival: a wait started before the message
    arrives sees it only when that wait times out (the lost wake-up), as a real poll then does."""

    def __init__(self, arrives_after_s: float | None):
        self.arrives_at = None if arrives_after_s is None else time.monotonic() + arrives_after_s
        self.waits: list[float | None] = []

    async def get_msg(self, timeout: float | None = None) -> dict:
        self.waits.append(timeout)
        arrived = self.arrives_at is not None and time.monotonic() >= self.arrives_at
        if arrived:
            return {"msg": "reply"}
        if timeout is None:
            await asyncio.sleep(3600)  # never woken: only a timeout would end this wait
        await asyncio.sleep(timeout)
        if self.arrives_at is not None and time.monotonic() >= self.arrives_at:
            return {"msg": "reply"}  # the check at the end of the wait finds it
        raise Empty


def _run(coro):
    """``asyncio.run`` in a thread of its own: a session-wide browser fixture may keep an event loop running in
    this one (the tests share a pytest-xdist worker)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def test_a_reply_that_arrives_during_a_long_wait_is_read_within_a_slice():
    channel = _LossyChannel(arrives_after_s=0.15)
    poll_in_slices(channel, slice_s=0.05)
    t0 = time.monotonic()
    assert _run(channel.get_msg(timeout=1800)) == {"msg": "reply"}
    assert time.monotonic() - t0 < 1.0  # not 1800 s
    assert all(w is not None and w <= 0.05 for w in channel.waits)


def test_waiting_for_ever_is_sliced_too():
    channel = _LossyChannel(arrives_after_s=0.1)
    poll_in_slices(channel, slice_s=0.05)
    assert _run(asyncio.wait_for(channel.get_msg(timeout=None), 5)) == {"msg": "reply"}


def test_no_reply_still_times_out_at_the_callers_timeout():
    channel = _LossyChannel(arrives_after_s=None)
    poll_in_slices(channel, slice_s=0.05)
    t0 = time.monotonic()
    with pytest.raises(Empty):
        _run(channel.get_msg(timeout=0.3))
    assert 0.29 <= time.monotonic() - t0 < 1.0
    assert len(channel.waits) >= 5


def test_the_notebook_client_runs_cells_with_sliced_waits(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])
    client = NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    with client.setup_kernel():
        assert client.kc.shell_channel.get_msg.__name__ == "get_msg_in_slices"
        assert client.kc.iopub_channel.get_msg.__name__ == "get_msg_in_slices"
        client.execute_cell(nb.cells[0], 0)
    assert nb.cells[0].outputs[0]["text"] == "42\n"


def test_a_stalled_wait_is_cut_with_an_error_that_says_so(tmp_path, monkeypatch):
    """The hang seen once: the kernel idle, the client's event loop waiting for ever. The guard ends it."""
    from minilm.labs import runner

    def wait_for_ever(self, cell, index, **kwargs):
        time.sleep(3600)  # as the client did: waiting, for a reply it had missed

    monkeypatch.setattr(NotebookClient, "execute_cell", wait_for_ever)
    monkeypatch.setattr(runner, "STALL_GRACE_S", 1)
    path = tmp_path / "one.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")]), path)
    t0 = time.monotonic()
    with pytest.raises(runner.NotebookStalled, match=r"one.ipynb, cell 0 did not finish within 2 s"):
        runner.execute_notebook(path, timeout=1, progress=False)
    assert time.monotonic() - t0 < 30
    import signal

    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # the timer is off again


def test_a_notebook_that_finishes_is_not_cut(tmp_path):
    from minilm.labs import runner

    path = tmp_path / "two.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import time; time.sleep(0.5); 6 * 7")]),
                   path)
    nb = runner.execute_notebook(path, timeout=60, progress=False)
    assert nb.cells[0].outputs[0]["data"]["text/plain"] == "42"
