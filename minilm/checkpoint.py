"""Checkpoints: tensors plus a JSON config, written atomically, loadable with weights_only=True.

A checkpoint file is a plain dict that ``torch.load(path, weights_only=True)`` accepts:
  {"format": "minilm-checkpoint-v1", "config": <JSON string>, "model": state_dict,
   "optimizer": state_dict or None, "step": int, "rng": {...}, "history": <JSON string>}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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


def model_from_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Rebuild the model a checkpoint was saved from and load its weights."""
    from minilm.models.registry import model_from_config

    ckpt = load_checkpoint(path, map_location)
    model = model_from_config(ckpt["config"])
    model.load_state_dict(ckpt["model"])
    return model
