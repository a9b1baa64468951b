"""Scaling-law data points (N, D, loss): checking them and reading them from a CSV file.

An instructor can fit published numbers or their own sweep with the same tools: a CSV with a
header row and columns ``N`` (parameters), ``D`` (tokens) or ``C`` (training FLOPs, D = C / 6N),
and ``loss`` (nats per token). Other columns are kept as text in ``ScalingRuns.extra``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .law import FLOPS_PER_PARAM_PER_TOKEN


@dataclass
class ScalingRuns:
    """Finished training runs: N[i] parameters trained on D[i] tokens reached loss[i]."""

    N: np.ndarray
    D: np.ndarray
    loss: np.ndarray
    extra: dict[str, list[str]] = field(default_factory=dict)

    @property
    def C(self) -> np.ndarray:
        """Training compute of each run, C = 6 N D FLOPs."""
        return FLOPS_PER_PARAM_PER_TOKEN * self.N * self.D

    def __len__(self) -> int:
        return len(self.N)


def check_points(N, D, loss, min_points: int = 1, what: str = "fit") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return N, D, loss as 1-D float64 arrays, or raise ValueError naming what is wrong.

    Checks: same length, at least ``min_points`` points (a fit needs at least as many points as
    it has parameters), every value finite and > 0 (the laws work with logarithms).
    """
    arrays = []
    for name, values in (("N", N), ("D", D), ("loss", loss)):
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(f"{what}: {name} must be a 1-D sequence of numbers, got shape {arr.shape}")
        arrays.append(arr)
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"{what}: N, D and loss must have the same length, got {[len(a) for a in arrays]}")
    if n < min_points:
        raise ValueError(
            f"{what}: got {n} points but needs at least {min_points} (no fewer points than fitted "
            "parameters); add more runs"
        )
    for name, arr in zip(("N", "D", "loss"), arrays):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise ValueError(
                f"{what}: {name} has NaN or infinite values at positions {bad[:10].tolist()}; drop those runs"
            )
        bad = np.flatnonzero(arr <= 0)
        if bad.size:
            raise ValueError(
                f"{what}: {name} must be > 0 (the law uses log {name}), but positions {bad[:10].tolist()} "
                f"hold {arr[bad[:3]].tolist()}"
            )
    return arrays[0], arrays[1], arrays[2]


def load_runs(csv_path: str | Path) -> ScalingRuns:
    """Read runs from a CSV with columns ``N``, ``D`` or ``C``, and ``loss`` (header names are
    case-insensitive; extra columns are kept as text). If both D and C are given, D is used and
    C must agree with 6 N D to 1%.

    Raises:
        FileNotFoundError: no such file.
        ValueError: missing columns, unreadable numbers, NaN, or values <= 0 (the message gives
            the row number as a spreadsheet shows it, header = row 1).
    """
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"load_runs: no file at {path}")
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ValueError(f"load_runs: {path} is empty; expected a header row with N, D (or C), loss") from None
        rows = [row for row in reader if any(cell.strip() for cell in row)]
    lower = {h.lower(): i for i, h in enumerate(header)}
    missing = [c for c in ("n", "loss") if c not in lower]
    if "d" not in lower and "c" not in lower:
        missing.append("D (tokens) or C (FLOPs)")
    if missing:
        raise ValueError(f"load_runs: {path} lacks column(s) {missing}; found columns {header}")
    if not rows:
        raise ValueError(f"load_runs: {path} has a header but no data rows")

    def column(name: str) -> np.ndarray:
        i = lower[name]
        out = np.empty(len(rows))
        for r, row in enumerate(rows):
            cell = row[i].strip() if i < len(row) else ""
            try:
                out[r] = float(cell)
            except ValueError:
                raise ValueError(f"load_runs: row {r + 2}, column {header[i]!r}: {cell!r} is not a number") from None
            if not np.isfinite(out[r]) or out[r] <= 0:
                raise ValueError(
                    f"load_runs: row {r + 2}, column {header[i]!r}: {cell!r} must be a finite number > 0"
                )
        return out

    N, loss = column("n"), column("loss")
    if "d" in lower:
        D = column("d")
        if "c" in lower:
            C = column("c")
            off = np.flatnonzero(np.abs(C / (FLOPS_PER_PARAM_PER_TOKEN * N * D) - 1) > 0.01)
            if off.size:
                raise ValueError(
                    f"load_runs: rows {(off[:10] + 2).tolist()} have C != 6*N*D (beyond 1%); "
                    "drop the C column or fix the values"
                )
    else:
        D = column("c") / (FLOPS_PER_PARAM_PER_TOKEN * N)
    used = {lower[k] for k in ("n", "d", "c", "loss") if k in lower}
    extra = {h: [row[i] if i < len(row) else "" for row in rows] for i, h in enumerate(header) if i not in used}
    return ScalingRuns(N=N, D=D, loss=loss, extra=extra)


def save_runs(runs: ScalingRuns, csv_path: str | Path) -> None:
    """Write runs as a CSV (columns N, D, C, loss, then the extra columns) that load_runs reads back."""
    path = Path(csv_path)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["N", "D", "C", "loss", *runs.extra])
        for i in range(len(runs)):
            writer.writerow([repr(float(runs.N[i])), repr(float(runs.D[i])), repr(float(runs.C[i])),
                             repr(float(runs.loss[i])), *(v[i] for v in runs.extra.values())])
