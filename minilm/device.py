"""Where tensors live and how many CPU threads work on them.

``device="auto"`` tries CUDA, then Apple MPS, then CPU. ``configure_threads`` picks torch's CPU thread
count in one place for the library, the command line and the labs.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import torch


def resolve_device(device: str | torch.device = "auto", verbose: bool = False) -> torch.device:
    """Turn ``"auto"`` (or an explicit name) into a ``torch.device``.

    ``"auto"`` picks CUDA when available, then Apple's MPS, else CPU. With ``verbose=True`` the
    choice is printed, so a learner always knows where their model runs.
    """
    if isinstance(device, torch.device):
        chosen = device
    elif device == "auto":
        if torch.cuda.is_available():
            chosen = torch.device("cuda")
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            chosen = torch.device("mps")
        else:
            chosen = torch.device("cpu")
    else:
        try:
            chosen = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(
                f"unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:0' or 'mps'"
            ) from err
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available: use 'auto' or 'cpu'")
        if chosen.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r} asked for, but MPS is not available: use 'auto' or 'cpu'")
    if verbose:
        print(f"minilm: using device {chosen}")
    return chosen


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices) so a run can be repeated exactly on CPU."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------ threads
# On a busy 2-core machine PyTorch's default of 2 threads was measured 3-15x slower than 1 (the
# threads wait on each other and on whatever else runs), so minilm chooses its own default, once.
_threads_chosen: int | None = None  # set by configure_threads; the process's one thread policy


def _available_cpus() -> int:
    """Logical CPUs this process may use: its affinity mask, capped by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity masks
        n = os.cpu_count() or 1
    try:  # containers (CI runners) often limit CPU time rather than the visible CPUs
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def _physical_cores() -> int | None:
    """Physical cores (hyper-threads not counted), or None where the OS does not say."""
    try:
        if sys.platform == "darwin":
            return int(subprocess.run(["sysctl", "-n", "hw.physicalcpu"], capture_output=True, text=True,
                                      timeout=5).stdout)
        cores, phys = set(), "0"
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "physical id":
                    phys = value.strip()
                elif key.strip() == "core id":
                    cores.add((phys, value.strip()))
        return len(cores) or None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def default_threads() -> tuple[int, str]:
    """minilm's default torch thread count and the reason: 1 on <= 2 cores, else physical cores - 1."""
    available = _available_cpus()
    if available <= 2:
        return 1, f"{available} core(s) available"
    cores = min(available, _physical_cores() or available)
    return max(1, cores - 1), f"{cores} physical cores available, one left for the rest of the machine"


def configure_threads(threads: int | None = None, verbose: bool = True) -> int:
    """Set the number of CPU threads torch uses and return it.

    The argument wins; else ``$MINILM_THREADS``; else ``default_threads()``. The choice is printed
    once per process (like ``device="auto"``), so a learner knows what their timings ran on.
    """
    global _threads_chosen
    if threads is not None:
        name, value, reason = "threads", threads, "asked for"
    elif os.environ.get("MINILM_THREADS", "").strip():
        name, value, reason = "MINILM_THREADS", os.environ["MINILM_THREADS"].strip(), "from MINILM_THREADS"
    else:
        (value, reason), name = default_threads(), "threads"
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or isinstance(value, bool) or (isinstance(value, float) and value != n):
        raise ValueError(f"{name} must be a positive integer (torch CPU threads), got {value!r}: e.g. {name}=1")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    if verbose and _threads_chosen != n:
        print(f"minilm: using {n} CPU thread(s) ({reason}; set MINILM_THREADS or threads= to change)")
    _threads_chosen = n
    return n


def ensure_threads() -> int:
    """Apply minilm's thread policy the first time it is needed in a process; later calls keep it."""
    if _threads_chosen is None:
        return configure_threads()
    return torch.get_num_threads()
