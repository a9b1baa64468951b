"""Checkpoints: tensors plus a JSON config, written atomically, loadable with weights_only=True.

A checkpoint file is a plain dict that ``torch.load(path, weights_only=True)`` accepts:
  {"format": "minilm-checkpoint-v1", "config": <JSON string>, "model": state_dict,
   "optimizer": state_dict or None, "step": int, "rng": {...}, "history": <JSON string>}

"rng" holds every random stream a training run draws from, so a resumed run continues exactly:
  {"numpy": <JSON string> (the batch sampler), "torch": CPU ByteTensor (torch's CPU generator),
   "cuda" or "mps": ByteTensor (that device's generator: dropout), only when the run used one}
Checkpoints written before "cuda"/"mps" were saved (only "numpy" and "torch") still load.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minilm.atomic import atomic_open

FORMAT = "minilm-checkpoint-v1"


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``.

    The rename is atomic, so a crash mid-write never leaves a half-written checkpoint behind:
    the previous file stays intact.
    """
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def save_checkpoint(path, model, optimizer=None, step: int = 0, rng: dict | None = None,
                    history: dict | None = None) -> None:
    """Save model (+ optimizer, step, RNG state, history) atomically to ``path``."""
    atomic_save(
        {
            "format": FORMAT,
            "config": json.dumps(model.config_dict()),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "step": int(step),
            "rng": rng or {},
            "history": json.dumps(history or {}),
        },
        path,
    )


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint safely (weights_only=True); config and history come back as dicts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: check the path, or train first with checkpoint_path=")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable minilm checkpoint ({err.__class__.__name__}: {err})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a minilm checkpoint (expected format {FORMAT!r})")
    ckpt["config"] = json.loads(ckpt["config"])
    ckpt["history"] = json.loads(ckpt["history"])
    return ckpt


# ------------------------------------------------------------------------------ random streams
def capture_rng_state(rng: np.random.Generator, device: str | torch.device = "cpu") -> dict:
    """Every random stream of a run on ``device``: numpy's ``rng``, torch's CPU generator and,
    on a GPU, that device's generator (dropout draws from it there). JSON strings and tensors only,
    so the checkpoint stays loadable with ``weights_only=True``."""
    dev = torch.device(device)
    state = {"numpy": json.dumps(rng.bit_generator.state), "torch": torch.get_rng_state()}
    if dev.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(dev)
    elif dev.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def _cpu_bytes(t: torch.Tensor) -> torch.Tensor:
    # load_checkpoint(map_location=<GPU>) moves every tensor there, RNG states too; the
    # set_rng_state functions of torch want a CPU ByteTensor.
    return t.detach().to(device="cpu", dtype=torch.uint8)


def restore_rng_state(rng: np.random.Generator, state: dict, device: str | torch.device = "cpu") -> bool:
    """Put back what ``capture_rng_state`` saved, for a run that continues on ``device``.

    Returns True when every stream continues exactly. A checkpoint from another kind of device
    (CPU <-> CUDA <-> MPS) still restores numpy's and torch's CPU stream -- the same batches --
    but not the device's, so it warns and returns False.
    """
    dev = torch.device(device)
    rng.bit_generator.state = json.loads(state["numpy"])
    torch.set_rng_state(_cpu_bytes(state["torch"]))
    saved = "cuda" if "cuda" in state else "mps" if "mps" in state else "cpu"
    if saved != dev.type:
        warnings.warn(
            f"the checkpoint was saved by a run on {saved} and resumes on {dev.type}: the model, optimizer "
            f"and batches continue, but the random stream (dropout) cannot continue exactly, as each kind of "
            f"device has its own generator; resume on {saved} for a bit-exact continuation",
            stacklevel=3,
        )
        return False
    if dev.type == "cuda":
        torch.cuda.set_rng_state(_cpu_bytes(state["cuda"]), dev)
    elif dev.type == "mps":
        torch.mps.set_rng_state(_cpu_bytes(state["mps"]))
    return True
