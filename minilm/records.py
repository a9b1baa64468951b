"""Lab records: the figures a lab measured, with where and how they were measured.

At the end of every lab the notebook writes one small JSON file, its *record*::

    from minilm.records import figure, write_record

    write_record(LAB, {
        "decay_drop": figure(0.052, "nats", "held-out loss drop in the 10% WSD decay"),
        "alpha": figure(0.34, "", "fitted exponent of N", uncertainty=0.03),
    }, mode="fast" if FAST else "full", seed=SEED, device=device, compute=spent)

The record holds each figure's name, value, unit, uncertainty (where the lab has one) and a
one-line description, plus the provenance a reader needs to trust or redo the number: lab, mode,
seed, device, CPU threads, minilm / torch / Python versions, platform, the lab's wall time, the
compute it spent (``minilm.ledger``) and the date. ``minilm report`` sets these figures beside the
papers' (``minilm.report``), and the chapters quote the reference runs' records.

Where records go: ``folder=``, else ``$MINILM_RESULTS_DIR``, else ``results/`` beside the notebook
(the current folder of a notebook kernel is the notebook's). Writes are atomic: a crash never
leaves half a record, and rewriting a lab's record replaces the old one whole.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import numbers
import os
import platform
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from minilm.atomic import atomic_write_text

SCHEMA = "minilm.record/1"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_LAB = re.compile(r"^\d\d$")
_MODES = ("fast", "full")
_PROVENANCE_KEYS = ("lab", "mode", "seed", "device", "threads", "minilm", "torch", "python", "platform",
                    "wall_time_s", "date")


class RecordError(ValueError):
    """A record file that is not a minilm record, or is malformed: the message names the file and the fix."""


@dataclass(frozen=True)
class Figure:
    """One measured figure: ``value`` in ``unit`` (``""`` for a pure number), ± ``uncertainty`` if known."""

    value: float
    unit: str = ""
    description: str = ""
    uncertainty: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise ValueError(f"a figure's value must be a finite number, got {self.value!r}")
        if self.uncertainty is not None and (
                isinstance(self.uncertainty, bool) or not isinstance(self.uncertainty, (int, float))
                or not math.isfinite(self.uncertainty) or self.uncertainty < 0):
            raise ValueError(f"a figure's uncertainty must be a finite number >= 0 or None, got {self.uncertainty!r}")
        if not isinstance(self.unit, str) or not isinstance(self.description, str):
            raise ValueError("a figure's unit and description are strings")


def figure(value: float, unit: str = "", description: str = "", uncertainty: float | None = None) -> Figure:
    """A measured figure for ``write_record`` (numpy and torch scalars are turned into Python floats)."""
    return Figure(_number(value), unit, description, None if uncertainty is None else _number(uncertainty))


def _number(x: Any) -> Any:
    """A Python int or float from a number (numpy scalar, 0-d tensor); anything else is left for Figure to refuse."""
    if isinstance(x, (bool, str)) or x is None:
        return x
    if hasattr(x, "item") and getattr(x, "ndim", 0) == 0:  # numpy scalars and 0-d tensors
        x = x.item()
    if isinstance(x, numbers.Integral):
        return int(x)
    return float(x) if isinstance(x, numbers.Real) else x


@dataclass
class Record:
    """A lab's record as read back: its figures by name, the provenance and the compute spent."""

    lab: str
    figures: dict[str, Figure]
    provenance: dict[str, Any]
    compute: dict[str, float] | None
    path: Path | None = None

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "lab": self.lab,
                "figures": {name: {k: v for k, v in asdict(f).items() if v is not None}
                            for name, f in self.figures.items()},
                "provenance": self.provenance, "compute": self.compute}


def results_dir(folder: str | os.PathLike | None = None) -> Path:
    """Where records are written and read: ``folder``, else ``$MINILM_RESULTS_DIR``, else ``./results``."""
    if folder is not None:
        return Path(folder)
    env = os.environ.get("MINILM_RESULTS_DIR")
    return Path(env) if env else Path.cwd() / "results"


def record_path(lab: str, folder: str | os.PathLike | None = None) -> Path:
    """The file lab ``lab``'s record goes to: ``<results dir>/labNN.json``."""
    return results_dir(folder) / f"lab{_lab_id(lab)}.json"


def _lab_id(lab: str | int) -> str:
    text = str(lab).strip()
    if not text.isdigit() or len(text) > 2:
        raise ValueError(f"a lab id is a number like '04', got {lab!r}")
    return text.zfill(2)


def _versions() -> dict[str, str]:
    import torch

    import minilm

    return {"minilm": minilm.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "platform": f"{platform.system()} {platform.machine()}"}


def _compute_dict(compute: Any) -> dict[str, float] | None:
    """A ``ComputeLedger`` (anything with ``as_dict()``) or a plain dict of numbers, as a dict."""
    if compute is None:
        return None
    data = compute.as_dict() if hasattr(compute, "as_dict") else dict(compute)
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"compute[{key!r}] must be a finite number, got {value!r}")
    return {k: float(v) for k, v in data.items()}


def write_record(lab: str | int, figures: Mapping[str, Figure | float], *, mode: str, seed: int,
                 device: Any = "cpu", compute: Any = None, wall_time_s: float | None = None,
                 folder: str | os.PathLike | None = None, verbose: bool = True) -> Path:
    """Write lab ``lab``'s measured ``figures`` with their provenance, atomically; returns the path.

    figures: name -> ``figure(...)`` (a bare number is a figure without unit). Names are
        snake_case; each value a finite number.
    compute: the lab's ``minilm.ledger.ComputeLedger`` (or its ``as_dict()``): FLOPs and training
        time spent. Its wall time is the lab's, unless ``wall_time_s`` is given.
    """
    lab = _lab_id(lab)
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if not figures:
        raise ValueError("a record needs at least one figure")
    clean: dict[str, Figure] = {}
    for name, value in figures.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"figure name {name!r} must be snake_case (letters, digits, _), e.g. 'decay_drop'")
        clean[name] = value if isinstance(value, Figure) else figure(value)
    import torch

    compute_d = _compute_dict(compute)
    if wall_time_s is None and compute_d is not None:
        wall_time_s = compute_d.get("wall_time_s")
    provenance = {"lab": lab, "mode": mode, "seed": int(seed), "device": str(device),
                  "threads": torch.get_num_threads(), **_versions(),
                  "wall_time_s": None if wall_time_s is None else round(float(wall_time_s), 2),
                  "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    record = Record(lab, clean, provenance, compute_d)
    path = record_path(lab, folder)
    atomic_write_text(path, json.dumps(record.to_json(), indent=1, sort_keys=False) + "\n")
    if verbose:
        print(f"recorded {len(clean)} figures of lab {lab} in {path}")
    return path


def _fail(path: Path, problem: str) -> RecordError:
    return RecordError(f"{path}: {problem}. A record is written by a lab's last cells (minilm.records.write_record); "
                       f"re-run that lab to write it again, or move this file out of the results folder.")


def parse_record(data: Any, path: Path | str = "<record>") -> Record:
    """Validate ``data`` (a record's parsed JSON) against the schema; ``RecordError`` says what is wrong."""
    path = Path(path)
    if not isinstance(data, dict):
        raise _fail(path, f"expected a JSON object, found {type(data).__name__}")
    if data.get("schema") != SCHEMA:
        raise _fail(path, f"not a minilm record (schema {data.get('schema')!r}, expected {SCHEMA!r})")
    lab = data.get("lab")
    if not isinstance(lab, str) or not _LAB.match(lab):
        raise _fail(path, f"'lab' must be a two-digit lab id like '04', found {lab!r}")
    raw = data.get("figures")
    if not isinstance(raw, dict) or not raw:
        raise _fail(path, "'figures' must be a non-empty object of name -> {value, unit, ...}")
    figures = {}
    for name, entry in raw.items():
        if not _NAME.match(name) or not isinstance(entry, dict):
            raise _fail(path, f"figure {name!r} must be a snake_case name mapping to an object")
        unknown = set(entry) - {"value", "unit", "description", "uncertainty"}
        if unknown or "value" not in entry:
            raise _fail(path, f"figure {name!r} needs 'value' and may have only unit, description, uncertainty "
                              f"(unexpected: {sorted(unknown)})")
        try:
            figures[name] = Figure(entry["value"], entry.get("unit", ""), entry.get("description", ""),
                                   entry.get("uncertainty"))
        except ValueError as err:
            raise _fail(path, f"figure {name!r}: {err}") from None
    provenance = data.get("provenance")
    if not isinstance(provenance, dict):
        raise _fail(path, "'provenance' must be an object")
    missing = [k for k in _PROVENANCE_KEYS if k not in provenance]
    if missing:
        raise _fail(path, f"provenance lacks {missing}")
    if provenance["lab"] != lab or provenance["mode"] not in _MODES:
        raise _fail(path, f"provenance names lab {provenance['lab']!r} in mode {provenance['mode']!r}")
    compute = data.get("compute")
    if compute is not None:
        try:
            compute = _compute_dict(compute)
        except (TypeError, ValueError) as err:
            raise _fail(path, f"'compute': {err}") from None
    return Record(lab, figures, provenance, compute, path)


def read_record(path: str | os.PathLike) -> Record:
    """Read and validate one record file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordError(f"{path}: no such record; run the lab (its last cells write it) or pass the right folder") \
            from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _fail(path, f"not valid JSON ({err})") from None
    return parse_record(data, path)


def read_records(folder: str | os.PathLike | None = None, labs: list[str] | None = None
                 ) -> tuple[list[Record], list[RecordError]]:
    """Every valid record in the results folder (optionally only ``labs``), and the errors of the rest.

    A malformed or foreign ``*.json`` does not hide the others: it comes back as an error to show.
    """
    root = results_dir(folder)
    wanted = None if labs is None else {_lab_id(lab) for lab in labs}
    records, errors = [], []
    for path in sorted(root.glob("*.json")) if root.is_dir() else []:
        try:
            rec = read_record(path)
        except RecordError as err:
            errors.append(err)
            continue
        if wanted is None or rec.lab in wanted:
            records.append(rec)
    return records, errors


__all__ = ["SCHEMA", "Figure", "Record", "RecordError", "figure", "parse_record", "read_record", "read_records",
           "record_path", "results_dir", "write_record"]
