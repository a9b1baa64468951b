"""Running many independent jobs -- the runs of a sweep -- here, on local worker processes (one per
GPU) or on a SLURM cluster through submitit, with one interface.

    for outcome in LocalExecutor().run(train_one, jobs):      # in this process (one device)
    for outcome in LocalExecutor(workers=4).run(...)          # 4 processes; one GPU each if there are 4
    for outcome in SubmititExecutor("jobs/", cluster="slurm", gpus_per_node=1, slurm_partition="gpu").run(...)

``run(fn, jobs)`` calls ``fn(job)`` for every job and yields an ``Outcome`` for each as it
finishes (not in order): its index in ``jobs`` and its result, or the error that ended it. A
failed job never stops the others; what to do with failures is the caller's choice. ``fn`` and
the jobs must be picklable (module-level functions, plain data) for anything but one local worker.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass
class Outcome:
    """How one job ended: ``result`` if ``error`` is None, else the error's last line (and ``log``,
    where the job's output went, when it ran elsewhere)."""

    index: int
    result: Any = None
    error: str | None = None
    log: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Executor(Protocol):
    def run(self, fn: Callable[[Any], Any], jobs: Sequence[Any]) -> Iterator[Outcome]: ...


def _error_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".strip()


def visible_gpus() -> list[str]:
    """The CUDA GPUs this process may use, as ids for CUDA_VISIBLE_DEVICES (none without CUDA)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


# ------------------------------------------------------------------------------------- local
def _start_worker(gpus, threads: int | None) -> None:
    """In a fresh worker: claim one GPU (before CUDA starts, so it sees only that one) and a share of the CPU."""
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())
    if threads is not None:
        os.environ["MINILM_THREADS"] = str(threads)


class LocalExecutor:
    """Jobs on this machine: in this process with one worker, else in ``workers`` processes
    (started with "spawn": a script that uses them needs the ``if __name__ == "__main__":`` guard).

    workers: None (default) -- one per visible GPU when there are several, else 1 (this process,
        no start-up cost: what the labs use). With GPUs, worker i gets GPU i through
        CUDA_VISIBLE_DEVICES (``gpus`` chooses them; default ``visible_gpus()``); on CPUs the
        workers share minilm's default thread count (each gets at least 1, $MINILM_THREADS wins).
    """

    def __init__(self, workers: int | None = None, gpus: Sequence[int | str] | None = None):
        self.gpus = [str(g) for g in (visible_gpus() if gpus is None else gpus)]
        self.workers = workers if workers is not None else max(1, len(self.gpus))
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        if self.workers > 1 and self.gpus and self.workers > len(self.gpus):
            raise ValueError(f"{self.workers} workers but {len(self.gpus)} GPU(s) ({', '.join(self.gpus)}): "
                             "one worker per GPU at most; pass gpus=[] to run on CPUs")

    def run(self, fn: Callable[[Any], Any], jobs: Sequence[Any]) -> Iterator[Outcome]:
        if self.workers == 1 or len(jobs) <= 1:
            yield from self._in_process(fn, jobs)
            return
        yield from self._in_workers(fn, jobs)

    @staticmethod
    def _in_process(fn, jobs) -> Iterator[Outcome]:
        for i, job in enumerate(jobs):
            try:
                result = fn(job)
            except Exception as err:  # noqa: BLE001 - reported per job; KeyboardInterrupt still stops the loop
                yield Outcome(i, error=_error_line(err), log="".join(traceback.format_exception(err)[-3:]).strip())
            else:
                yield Outcome(i, result=result)

    def _in_workers(self, fn, jobs) -> Iterator[Outcome]:
        ctx = multiprocessing.get_context("spawn")  # fork would copy a started CUDA (and torch's threads)
        n = min(self.workers, len(jobs))
        queue = None
        if self.gpus:
            queue = ctx.Queue()  # each worker takes one id from it as it starts
            for g in self.gpus[:n]:
                queue.put(g)
        threads = None
        if not self.gpus and not os.environ.get("MINILM_THREADS", "").strip():
            from minilm.device import default_threads  # (imports torch: only where workers start)

            threads = max(1, default_threads()[0] // n)
        pool = concurrent.futures.ProcessPoolExecutor(n, mp_context=ctx, initializer=_start_worker,
                                                      initargs=(queue, threads))
        try:
            futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
            for future in concurrent.futures.as_completed(futures):
                err = future.exception()
                if err is None:
                    yield Outcome(futures[future], result=future.result())
                else:  # the worker's traceback comes back as the error's cause
                    yield Outcome(futures[future], error=_error_line(err), log=str(err.__cause__ or "").strip() or None)
        finally:  # stopped early (an interrupt, a consumer that breaks): drop the jobs not yet started
            pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------ submitit
def _job_error(err: BaseException) -> str:
    """The line that says what went wrong in a submitit job's error: the exception at the end of
    the traceback it quotes between dashed lines, else (a job killed, timed out) its first line."""
    text = str(err).strip()
    parts = text.split("-" * 22)
    lines = [ln.strip() for ln in (parts[1] if len(parts) >= 3 else text).strip().splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    return lines[-1] if len(parts) >= 3 else f"{type(err).__name__}: {lines[0]}"


class SubmititExecutor:
    """Each job a task of one submitit job array: SLURM (``cluster="slurm"``), this machine
    (``"local"``: a process per job, all at once, for testing), or whatever ``submitit.AutoExecutor``
    detects (None). (submitit's ``"debug"`` runs in this process but stops in pdb on an error.)
    Needs ``pip install 'minilm[cluster]'``.

    folder: where submitit keeps each job's pickles and logs (on SLURM, a path the compute nodes
        see). parameters: ``AutoExecutor.update_parameters`` options, e.g. ``gpus_per_node=1,
        cpus_per_task=8, timeout_min=60, slurm_partition="gpu", slurm_array_parallelism=16``;
        ``timeout_min`` defaults to 60 (submitit's local default of 2 minutes kills real runs).
    poll_s: seconds between looks at the jobs' states.
    """

    def __init__(self, folder: str | os.PathLike, cluster: str | None = None, poll_s: float = 2.0, **parameters):
        try:
            import submitit
        except ImportError:
            raise ImportError("SubmititExecutor needs submitit: pip install 'minilm[cluster]' "
                              "(or pip install submitit)") from None
        self.folder = Path(folder).resolve()
        self.poll_s = float(poll_s)
        self.executor = submitit.AutoExecutor(folder=self.folder, cluster=cluster)
        self.executor.update_parameters(**{"timeout_min": 60, **parameters})

    def run(self, fn: Callable[[Any], Any], jobs: Sequence[Any]) -> Iterator[Outcome]:
        if not jobs:
            return
        submitted = self.executor.map_array(fn, list(jobs))  # one job array: a single sbatch for all runs
        pending = dict(enumerate(submitted))
        while pending:
            for i, job in list(pending.items()):
                if not job.done():
                    continue
                del pending[i]
                log = str(job.paths.stderr)
                err = job.exception()
                if err is None:
                    yield Outcome(i, result=job.result(), log=log)
                else:
                    yield Outcome(i, error=_job_error(err), log=log)
            if pending:
                time.sleep(self.poll_s)
