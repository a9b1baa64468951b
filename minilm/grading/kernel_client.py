"""A notebook client whose waits for the kernel cannot sleep through a message.

nbclient waits for a cell's reply with one long poll of the kernel's ZeroMQ sockets: the cell's
whole timeout on the shell channel (30 minutes in ``minilm lab run``), forever on IOPub. ZeroMQ
tells the event loop that a socket is readable through an edge-triggered file descriptor, and a
wake-up lost in that race leaves a reply that has arrived unread until the poll times out. Waiting
in slices of at most ``SLICE_S`` seconds bounds what a lost wake-up costs: each slice ends with a
real check of the socket, which finds the reply. (A client was seen waiting for ever after a widget
cell, its kernel idle; jupyter/nbclient#312 reports the same symptom. A lost wake-up is the likeliest
cause, not a proven one: ``minilm.labs.runner`` also cuts such a wait with an error.)

Used by ``minilm lab run`` and by the grader's child (which imports this file as a sibling script,
without minilm), so it imports nothing from minilm.
"""

from __future__ import annotations

import time
from queue import Empty
from typing import Any

from nbclient import NotebookClient as _NbClient
from nbclient.util import run_sync

SLICE_S = 1.0  # the longest a reply that has arrived can wait unread


def poll_in_slices(channel: Any, slice_s: float = SLICE_S) -> None:
    """Make ``channel.get_msg(timeout=T)`` wait in slices of at most ``slice_s`` seconds.

    Same contract as before: a message as soon as one is found, ``queue.Empty`` once ``T`` seconds
    have passed without one (``T=None``: wait for ever).
    """
    get_msg = channel.get_msg

    async def get_msg_in_slices(timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = slice_s if deadline is None else max(0.0, min(slice_s, deadline - time.monotonic()))
            try:
                return await get_msg(timeout=left)
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    channel.get_msg = get_msg_in_slices


class NotebookClient(_NbClient):
    """nbclient's ``NotebookClient`` with its shell and IOPub waits taken in slices."""

    async def async_start_new_kernel_client(self) -> Any:
        kc = await super().async_start_new_kernel_client()
        poll_in_slices(kc.shell_channel)
        poll_in_slices(kc.iopub_channel)
        return kc

    # nbclient binds the blocking form to its own coroutine: bind it to the one above.
    start_new_kernel_client = run_sync(async_start_new_kernel_client)
