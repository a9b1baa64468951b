"""Data-parallel training under torchrun: the plumbing ``minilm.train`` needs, kept out of its loop.

    torchrun --standalone --nproc_per_node 2 -m minilm train --steps 200 --batch-size 32

torchrun starts N copies of a program and tells each its place through environment variables
(RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT). ``start`` joins them
into one process group (``gloo`` on CPU, ``nccl`` on CUDA) and returns this process's ``Ranks``.
Under plain ``python`` there is one rank: every method of ``Ranks`` then hands its input back
untouched, so the single-process loop of ``train`` runs exactly as it always did.

How the work is split (data parallelism, the DistributedDataParallel way):
- the batch: ``batch_size`` is the *global* batch. Every rank draws the same global batch from the
  run's seeded sampler and keeps its own rows (``batch_size / N`` of them). The N ranks together
  train on exactly the batch one process would, and the sampler's state is the same on every rank,
  so a checkpoint resumes with the same batches on any number of ranks. (A sampler seeded per rank
  would be as random, but its batches would depend on N: no match with one process, no exact
  resume on another N. Drawing B windows' token ids where B / N are kept costs little next to
  the model's forward and backward passes.)
- the gradient: DDP all-reduces (averages) the ranks' gradients during ``backward``, so every
  rank's optimizer takes the step one process would take on the whole batch: the learning rate
  stays what was asked for, and the N copies of the model stay identical.
- randomness inside the model (dropout): each rank its own torch seed (``rank_seed``), saved per
  rank in checkpoints.
- the loss and validation: averaged over the ranks (equal shares, so the mean of their means is
  the mean over the global batch); every rank sees the same number, so they stop (or fail) together.
- output: rank 0 alone prints, shows the progress bar and writes checkpoints.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from minilm.device import configure_threads, default_threads, resolve_device


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"${name}={value!r} is not an integer: torchrun sets it; unset it to run one process"
                         ) from None


def rank_seed(seed: int, rank: int) -> int:
    """Torch's seed on ``rank``: the run's seed on rank 0 (a world of one is the plain run), an
    independent stream derived from (seed, rank) on the others (numpy's SeedSequence)."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0])


_threads_announced: int | None = None  # the per-process share rank 0 last printed


def configure_rank_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads for this process and return the count.

    ``threads`` if given, else minilm's policy (``$MINILM_THREADS``, else ``default_threads``) --
    except under torchrun with several processes on this machine and no $MINILM_THREADS: then the
    default is divided among them (at least 1 each), so N processes do not oversubscribe the cores.
    Only rank 0 prints the choice.
    """
    global _threads_announced
    local, main = _env_int("LOCAL_WORLD_SIZE", 1), launched_rank() == 0
    if threads is not None or local <= 1 or os.environ.get("MINILM_THREADS", "").strip():
        return configure_threads(threads, verbose=main)
    total, reason = default_threads()
    n = configure_threads(max(1, total // local), verbose=False)
    if main and _threads_announced != n:
        print(f"minilm: using {n} CPU thread(s) in each of the {local} processes on this machine (minilm's default "
              f"{total}: {reason}; set MINILM_THREADS or threads= to change)")
    _threads_announced = n
    return n


@dataclass(frozen=True)
class Ranks:
    """This process's place among the N processes of a data-parallel run (N = 1 without torchrun).

    rank: 0..N-1 over every machine; local_rank: 0..local_world_size-1 on this machine (its GPU).
    device: where this rank trains (``cuda:<local_rank>`` on a GPU machine).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints, shows the progress bar and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        if not self.distributed:
            return str(self.device)
        return f"{self.world_size} ranks ({torch.distributed.get_backend()}, {self.device.type})"

    # ----------------------------------------------------------------------------- the batch
    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.world_size:
            n = self.world_size
            raise ValueError(f"batch_size={batch_size} is the global batch and must split evenly over {n} ranks: "
                             f"use a multiple of {n} (e.g. {batch_size - batch_size % n or n})")

    def share(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch (B, ...) -> (B / N, ...); the whole batch for one rank."""
        if not self.distributed:
            return batch
        rows = batch.size(0) // self.world_size
        return batch[self.rank * rows: (self.rank + 1) * rows]

    # ---------------------------------------------------------------------------- the model
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel around ``model`` under torchrun (it averages the ranks' gradients
        in ``backward``), the model itself otherwise. Parameters stay ``model``'s own: save those."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        # minilm's buffers (masks, rotary tables) are built identically on every rank; syncing them
        # would add a collective to every forward pass (the option's name changed in PyTorch 2.13).
        no_sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(
            DistributedDataParallel).parameters else "broadcast_buffers"
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                       **{no_sync: False})

    # ------------------------------------------------------------------------------ numbers
    def mean(self, value: torch.Tensor | float) -> torch.Tensor | float:
        """The mean of ``value`` over the ranks, detached (for one rank: ``value`` itself, untouched)."""
        if not self.distributed:
            return value
        as_float = not isinstance(value, torch.Tensor)
        t = torch.tensor(value, dtype=torch.float32) if as_float else value.detach().clone()
        t = t.to(self.device)
        torch.distributed.all_reduce(t)  # SUM: gloo has no AVG
        t /= self.world_size
        return float(t) if as_float else t

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any (a callback asking to stop stops them all)."""
        if not self.distributed:
            return bool(flag)
        t = torch.tensor([int(bool(flag))], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    # ------------------------------------------------------------------------ random streams
    def _torch_states(self) -> dict:
        state = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def gather_rng(self) -> dict:
        """{"ranks": [torch's generator state(s) of every rank]} for a checkpoint, or {} for one rank.
        A collective: every rank calls it, rank 0 writes the result."""
        if not self.distributed:
            return {}
        states = [None] * self.world_size
        torch.distributed.all_gather_object(states, self._torch_states())
        return {"ranks": states}

    def restore_rng(self, rng_state: dict, seed: int, step: int) -> bool:
        """Put back this rank's torch generator(s) from a checkpoint's ``rng``; True if exact.

        The batch sampler (numpy) is shared by all ranks and restored by ``restore_rng_state``; only
        dropout's streams are per rank. A checkpoint of another number of ranks has no stream for
        this one: it gets a fresh one from (seed, rank, step) and rank 0 warns.
        """
        if not self.distributed:
            return True
        saved = rng_state.get("ranks")
        if saved is not None and len(saved) == self.world_size:
            mine = saved[self.rank]
            torch.set_rng_state(mine["torch"].detach().to(device="cpu", dtype=torch.uint8))
            if "cuda" in mine and self.device.type == "cuda":
                torch.cuda.set_rng_state(mine["cuda"].detach().to(device="cpu", dtype=torch.uint8), self.device)
            return True
        n_saved = len(saved) if saved is not None else 1
        torch.manual_seed(int(np.random.SeedSequence([seed, self.rank, step]).generate_state(1, np.uint64)[0]))
        if self.is_main:
            warnings.warn(
                f"the checkpoint was written by {n_saved} rank(s) and resumes on {self.world_size}: the model, "
                "optimizer and batches continue exactly, but dropout's random streams (one per rank) start afresh; "
                f"resume on {n_saved} rank(s) for a bit-exact continuation of a model with dropout",
                stacklevel=3,
            )
        return False


def _backend(device: torch.device) -> str:
    if device.type == "cuda":
        return "nccl"
    if device.type == "cpu":
        return "gloo"
    raise ValueError(f"data-parallel training runs on CPUs (gloo) or CUDA GPUs (nccl), not on {device.type}: "
                     "pass device='cpu' or run one process")


def start(device: str | torch.device = "auto", threads: int | None = None) -> Ranks:
    """This process's ``Ranks``; under torchrun (WORLD_SIZE > 1) it first joins the process group.

    The group is created once per process and left up for the rest of it (a script may train
    again or use it), then destroyed at exit. On a GPU machine rank r trains on ``cuda:<local_rank>``.
    Torch's CPU threads are set here for a distributed run (``configure_rank_threads``).
    """
    world = _env_int("WORLD_SIZE", 1)
    dev = resolve_device(device)
    if world <= 1:
        return Ranks(device=dev)
    if not torch.distributed.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed: run one process (python, not torchrun)")
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", 1)
    backend = _backend(dev)
    if dev.type == "cuda":
        if dev.index is None:
            if local_rank >= torch.cuda.device_count():
                raise ValueError(f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                                 "start at most that many processes per node (--nproc_per_node)")
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    configure_rank_threads(threads)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend)  # env:// rendezvous: torchrun's MASTER_ADDR/PORT
        atexit.register(_stop)
    if torch.distributed.get_world_size() != world:
        raise RuntimeError(f"the process group has {torch.distributed.get_world_size()} ranks but WORLD_SIZE={world}")
    return Ranks(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world, device=dev)


def _stop() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun), before any process group exists."""
    return _env_int("RANK", 0)


@contextlib.contextmanager
def main_rank_prints() -> Iterator[None]:
    """Inside it, only rank 0's ``print`` reaches the terminal (errors, on stderr, still do)."""
    if launched_rank() == 0:
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield
