"""The program tests/test_distributed.py starts under ``torchrun --nproc_per_node 2`` (CPU, gloo).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/_ddp_worker.py OUT_DIR

Every rank runs the same ``minilm.train.train`` calls a single process would and writes what it
saw to OUT_DIR/<run>_rank<r>.json (histories, a digest of its final weights); the test compares
them with single-process runs of the same configuration (``setup`` below, shared with the test).
OUT_DIR/single_at_20.pt, if the test wrote it, is a single-process checkpoint to resume here.
Last, ``minilm train`` (the command line) runs in the same processes, as ``torchrun -m minilm`` would.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from minilm.cli import main as main_command
from minilm.data import MarkovLanguage
from minilm.models import GPT, GPTConfig
from minilm.train import train

LANG = MarkovLanguage(vocab_size=16, order=1, concentration=0.2, seed=0)
TRAIN = LANG.sample(30_000, seed=1)
VAL = LANG.sample(4_000, seed=2)
RUN = dict(batch_size=16, lr=3e-3, eval_every=10, eval_batches=4, progress=False, device="cpu", seed=0)


def model(seed: int = 0, dropout: float = 0.0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=16, context_length=16, n_layers=1, n_heads=2, d_model=32, dropout=dropout))


def keep_even_targets(x: torch.Tensor, y: torch.Tensor, token_loss: torch.Tensor) -> torch.Tensor:
    """token_weights: train on the tokens whose target id is even (a 0/1 mask, unequal per row)."""
    return (y % 2 == 0).float()


def stop_after(step: int):
    return lambda info: info["step"] == step


def weights(m: torch.nn.Module) -> list[float]:
    return [float(p.detach().double().sum()) for p in m.parameters()]


def main(out: Path) -> None:
    rank = int(os.environ["RANK"])
    results = {}

    m = model()  # 1-vs-2 processes: the same global batch (16 rows, 8 per rank)
    results["curve"] = {"history": train(m, TRAIN, VAL, steps=30, **RUN), "weights": weights(m)}

    m = model()
    results["weighted"] = {"history": train(m, TRAIN, VAL, steps=20, token_weights=keep_even_targets, **RUN),
                           "weights": weights(m)}

    # Exact resume with the same number of ranks, dropout on (a random stream per rank).
    results["dropout_full"] = train(model(dropout=0.1), TRAIN, VAL, steps=40, **RUN)
    train(model(dropout=0.1), TRAIN, VAL, steps=40, checkpoint_path=out / "ddp_dropout.pt", checkpoint_every=10,
          callbacks=[stop_after(19)], **RUN)
    results["dropout_resumed"] = train(model(seed=123, dropout=0.1), TRAIN, VAL, steps=40,
                                       checkpoint_path=out / "ddp_dropout.pt", resume=True, **RUN)

    # Resume across numbers of ranks: a 2-rank checkpoint at step 20 for the test to resume in one
    # process, and the test's single-process checkpoint resumed here on 2 ranks.
    results["full40"] = train(model(), TRAIN, VAL, steps=40, **RUN)
    train(model(), TRAIN, VAL, steps=40, checkpoint_path=out / "ddp_at_20.pt", checkpoint_every=10,
          callbacks=[stop_after(19)], **RUN)
    if (out / "single_at_20.pt").is_file():
        results["from_single"] = train(model(seed=123), TRAIN, VAL, steps=40, checkpoint_path=out / "single_at_20.pt",
                                       resume=True, **RUN)
    (out / f"results_rank{rank}.json").write_text(json.dumps(results))

    # The command line, in the same processes: ``torchrun ... -m minilm train`` runs this.
    status = main_command(["train", "--data", "markov", "--tokens", "20000", "--steps", "6", "--batch-size", "4",
                           "--context", "16", "--sample", "0", "--out", str(out / "cli.pt")])
    assert status == 0, status


if __name__ == "__main__":
    main(Path(sys.argv[1]))
