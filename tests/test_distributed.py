"""Data-parallel training under torchrun: 2 CPU processes (gloo), launched by the tests themselves.

One launch of tests/_ddp_worker.py runs every distributed case (starting processes costs seconds on
a busy 2-core machine); the tests compare what each rank wrote with single-process runs here.

The tolerance, TOL = 1e-5 nats on every loss: two processes compute the same global batch as one
process does; only the order of floating-point sums differs (each rank's mean over 8 rows, then
the all-reduce average, against one mean over 16). float32's relative precision is 6e-8 (about
2.4e-7 nats at a loss of 2.7), and over these <= 40 steps the curves were measured to stay within
5e-7 of each other; 1e-5 leaves 20x room for other CPUs' kernels. Anything that changes the
training -- a different batch (another seed moves the losses by ~0.04), a wrong learning rate, an
average missing from the gradient -- moves them by 1e-2 or more.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _ddp_worker import RUN, TRAIN, VAL, keep_even_targets, model, stop_after, weights

from minilm import distributed
from minilm.checkpoint import load_checkpoint
from minilm.train import train

TOL = 1e-5
WORKER = Path(__file__).with_name("_ddp_worker.py")
REPO = Path(__file__).resolve().parents[1]


def torchrun(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 ARGS`` with this Python, output captured."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MINILM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"torchrun failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def launch(tmp_path_factory) -> tuple[Path, list[dict], str]:
    """Run the worker on 2 ranks once: (its folder, [rank 0's results, rank 1's], what it printed)."""
    out = tmp_path_factory.mktemp("ddp")
    # A single-process checkpoint at step 20 of 40, for the worker to resume on 2 ranks.
    train(model(), TRAIN, VAL, steps=40, checkpoint_path=out / "single_at_20.pt", checkpoint_every=10,
          callbacks=[stop_after(19)], **RUN)
    done = torchrun(str(WORKER), str(out), cwd=out)
    return out, [json.loads((out / f"results_rank{r}.json").read_text()) for r in (0, 1)], done.stdout


@pytest.fixture
def ranks_out(launch) -> tuple[Path, list[dict]]:
    return launch[:2]


def gap(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


def test_two_processes_follow_one_with_the_same_global_batch(ranks_out):
    _, (r0, r1) = ranks_out
    m = model()
    one = train(m, TRAIN, VAL, steps=30, **RUN)
    two = r0["curve"]["history"]
    assert two["step"] == one["step"] and two["tokens"] == one["tokens"]  # the global batch: 16 rows per step
    assert gap(two["train_loss"], one["train_loss"]) < TOL
    assert two["val_step"] == one["val_step"] and gap(two["val_loss"], one["val_loss"]) < TOL
    assert gap(r0["curve"]["weights"], weights(m)) < 1e-4  # sums of ~1000 weights each
    # DDP keeps the copies identical, bit for bit, and every rank reports the same global numbers.
    assert r0["curve"]["weights"] == r1["curve"]["weights"]
    assert r0["curve"]["history"]["train_loss"] == r1["curve"]["history"]["train_loss"]
    # The tolerance has teeth: another draw of batches moves the curve by far more.
    other = train(model(), TRAIN, VAL, steps=30, **{**RUN, "seed": 1})
    assert np.mean(np.abs(np.subtract(other["train_loss"], one["train_loss"])[-10:])) > 1000 * TOL


def test_token_weights_use_the_global_batchs_weighted_mean(ranks_out):
    # The kept tokens fall unevenly between the ranks; the loss is still sum(w l) / sum(w) over both.
    _, (r0, _) = ranks_out
    m = model()
    one = train(m, TRAIN, VAL, steps=20, token_weights=keep_even_targets, **RUN)
    assert gap(r0["weighted"]["history"]["train_loss"], one["train_loss"]) < TOL
    assert gap(r0["weighted"]["weights"], weights(m)) < 1e-4


def test_resumed_distributed_run_continues_exactly(ranks_out):
    # With dropout on: each rank's own random stream is saved in the checkpoint and put back.
    out, results = ranks_out
    for r in results:
        assert r["dropout_resumed"]["train_loss"] == r["dropout_full"]["train_loss"]
        assert r["dropout_resumed"]["val_loss"] == r["dropout_full"]["val_loss"]
    saved = torch.load(out / "ddp_dropout.pt", weights_only=True)
    assert saved["step"] == 40 and len(saved["rng"]["ranks"]) == 2
    assert not torch.equal(saved["rng"]["ranks"][0]["torch"], saved["rng"]["ranks"][1]["torch"])  # rank-aware
    assert not list(out.glob("*.tmp"))  # rank 0 wrote atomically, nothing left behind


def test_resume_with_another_number_of_processes(ranks_out):
    out, (r0, _) = ranks_out
    one = train(model(), TRAIN, VAL, steps=40, **RUN)
    assert gap(r0["full40"]["train_loss"], one["train_loss"]) < TOL
    # 2 ranks -> 1 process: the checkpoint rank 0 wrote at step 20, continued here.
    assert load_checkpoint(out / "ddp_at_20.pt")["step"] == 20
    resumed = train(model(seed=123), TRAIN, VAL, steps=40, checkpoint_path=out / "ddp_at_20.pt", resume=True, **RUN)
    assert resumed["train_loss"][:20] == r0["full40"]["train_loss"][:20]  # the history came with it
    assert gap(resumed["train_loss"], r0["full40"]["train_loss"]) < TOL
    # 1 process -> 2 ranks: this file's single-process checkpoint, continued by the worker.
    assert gap(r0["from_single"]["train_loss"], one["train_loss"]) < TOL
    assert gap(r0["from_single"]["val_loss"], one["val_loss"]) < TOL


def test_minilm_train_command_under_torchrun(launch):
    out, _, stdout = launch
    # Rank 0 alone prints: each line of the command's report once.
    for line in ("model gpt (tiny)", "validation loss", "checkpoint saved to"):
        assert stdout.count(line) == 1, stdout
    assert stdout.count("in each of the 2 processes") == 1, stdout
    saved = load_checkpoint(out / "cli.pt")
    assert saved["step"] == 6 and saved["history"]["tokens"][-1] == 6 * 4 * 16  # the global batch of 4


def test_one_process_is_the_plain_run(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    ranks = distributed.start("cpu")
    assert (ranks.rank, ranks.world_size, ranks.is_main, ranks.distributed) == (0, 1, True, False)
    m, x = torch.nn.Linear(2, 2), torch.arange(8)
    assert ranks.wrap(m) is m and ranks.share(x) is x and ranks.mean(2.5) == 2.5 and ranks.gather_rng() == {}
    assert distributed.rank_seed(7, 0) == 7 and distributed.rank_seed(7, 1) != distributed.rank_seed(7, 2)


def test_rank_shares_and_bad_batch_sizes():
    x = torch.arange(12).view(6, 2)
    parts = [distributed.Ranks(rank=r, world_size=3).share(x) for r in range(3)]
    assert torch.equal(torch.cat(parts), x) and all(len(p) == 2 for p in parts)
    with pytest.raises(ValueError, match="global batch and must split evenly over 3 ranks: use a multiple of 3"):
        distributed.Ranks(rank=0, world_size=3).check_batch_size(7)


def test_threads_are_shared_among_the_processes_of_one_machine(monkeypatch, capsys):
    monkeypatch.setattr(distributed, "default_threads", lambda: (15, "16 physical cores available"))
    monkeypatch.setattr(distributed, "_threads_announced", None)
    set_to = []
    monkeypatch.setattr(distributed, "configure_threads", lambda n=None, verbose=True: set_to.append(n) or (n or 15))
    monkeypatch.delenv("MINILM_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    assert distributed.configure_rank_threads() == 3 and set_to == [3]
    assert "3 CPU thread(s) in each of the 4 processes" in capsys.readouterr().out
    assert distributed.configure_rank_threads(5) == 5  # asked for: kept
    monkeypatch.setenv("MINILM_THREADS", "2")
    distributed.configure_rank_threads()
    assert set_to[-1] is None  # $MINILM_THREADS is read by configure_threads itself
