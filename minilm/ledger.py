"""The compute ledger: how many training FLOPs, tokens and seconds a lab (or any code) spends.

    spent = ComputeLedger()                  # open: every minilm.train() from now on reports to it
    history = train(model, data.train, steps=500)
    spent.add(flops, tokens=n, seconds=s, label="my loop")  # a training loop outside train()
    print(spent.summary())    # spent 3.1e+12 training FLOPs (6ND + attention) on 2.1e+06 tokens in 12 runs, ...
    spent.as_dict()           # {"flops", "tokens", "runs", "train_seconds", "wall_time_s"}
    spent.close()             # or: with ComputeLedger() as spent: ...

The count is the trainer's estimate, ``training_flops``: 6 FLOPs per weight and token (a
multiply-add forward, two backward: Kaplan et al. 2020, Table 1; Hoffmann et al. 2022, App. F)
plus each model family's sequence term at the length actually trained on (GPT's attention, the
SSM's scan), from the model's own ``flops_per_token``. ``tests/test_ledger.py`` checks it against
``torch.utils.flop_counter.FlopCounterMode`` on training steps of every family. Validation
passes (forward only) and generation are not training and are not counted.
"""

from __future__ import annotations

import inspect
import math
import numbers
import threading
import time
import weakref

import torch.nn as nn

# The open ledgers. Like torch's FlopCounterMode (a mode on a global stack), a ledger is found by
# the code that spends compute rather than passed down to it: train() and the package's own loops
# call ``charge`` without knowing who listens. A module-level set rather than a ContextVar: a
# notebook runs each cell in a fresh context, and a ledger opened in one cell must hear the
# next. Weak references: a ledger the learner drops (re-running ``spent = ComputeLedger()``)
# stops counting instead of piling up. The lock makes charges from worker threads safe.
_OPEN: weakref.WeakSet[ComputeLedger] = weakref.WeakSet()
_LOCK = threading.Lock()


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


def _check_number(name: str, value, integral: bool = False) -> None:
    kind = numbers.Integral if integral else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or value < 0:
        want = "an integer >= 0" if integral else "a finite number >= 0"
        raise ValueError(f"{name} must be {want}, got {value!r}")


class ComputeLedger:
    """A running total of training FLOPs, tokens, runs and seconds; open from construction until ``close()``.

    Every ``minilm.train`` call while it is open adds what it spends, step by step (an
    interrupted run still counts the steps it took); several ledgers may be open at once and each
    receives every charge. Also a context manager (``with ComputeLedger() as spent:``), which
    closes it on exit. ``wall_time_s`` runs from opening to closing (or to now while open).
    """

    def __init__(self) -> None:
        self.flops = 0.0
        self.tokens = 0
        self.runs = 0
        self.train_seconds = 0.0
        self.by_label: dict[str, float] = {}  # FLOPs per label ("train", "bench minilm", ...)
        self._run_ids: set[object] = set()  # the runs already counted (train() charges every step)
        self._item_lock = threading.Lock()
        self._opened = time.perf_counter()
        self._closed: float | None = None
        with _LOCK:
            _OPEN.add(self)

    @property
    def is_open(self) -> bool:
        return self._closed is None

    def close(self) -> None:
        """Stop counting; the totals stay readable. Closing twice is harmless."""
        with _LOCK:
            _OPEN.discard(self)
        if self._closed is None:
            self._closed = time.perf_counter()

    def __enter__(self) -> ComputeLedger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, flops: float, tokens: int = 0, seconds: float = 0.0, label: str = "",
            run: object | None = None) -> None:
        """Add ``flops`` training FLOPs over ``tokens`` tokens and ``seconds`` of training.

        For a training loop outside ``minilm.train`` (``training_flops`` gives the FLOPs of a
        model for n tokens). ``run``: a token shared by the charges of one run (``train`` charges
        each step with its own ``object()``), counted once in ``runs``; None: a run of its own.
        ``label`` names the spend: ``by_label`` sums the FLOPs of each label.
        """
        _check_number("flops", flops)
        _check_number("tokens", tokens, integral=True)
        _check_number("seconds", seconds)
        if not isinstance(label, str):
            raise ValueError(f"label must be a string, got {label!r}")
        with self._item_lock:
            self.flops += float(flops)
            self.tokens += int(tokens)
            self.train_seconds += float(seconds)
            self.by_label[label] = self.by_label.get(label, 0.0) + float(flops)
            if run is None:
                self.runs += 1
            elif run not in self._run_ids:
                self._run_ids.add(run)
                self.runs += 1

    def wall_time_s(self) -> float:
        """Seconds from opening to closing (to now while open)."""
        end = self._closed if self._closed is not None else time.perf_counter()
        return end - self._opened

    def as_dict(self) -> dict[str, float]:
        """{"flops", "tokens", "runs", "train_seconds", "wall_time_s"}: what ``minilm.records`` stores."""
        return {"flops": float(self.flops), "tokens": int(self.tokens), "runs": int(self.runs),
                "train_seconds": float(self.train_seconds), "wall_time_s": float(self.wall_time_s())}

    def summary(self) -> str:
        """One line, e.g. "spent 3.1e+12 training FLOPs (6ND + attention) on 2.1e+06 tokens in 12 runs,
        41 s of training, 95 s wall"."""
        wall = f"{_seconds(self.wall_time_s())} wall"
        if self.runs == 0:
            return f"spent no training FLOPs: no training run reported to this ledger ({wall})"
        runs = "1 run" if self.runs == 1 else f"{self.runs} runs"
        return (f"spent {self.flops:.1e} training FLOPs (6ND + attention) on {self.tokens:.1e} tokens in "
                f"{runs}, {_seconds(self.train_seconds)} of training, {wall}")

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<ComputeLedger {state}: {self.summary()}>"


def charge(flops: float, tokens: int = 0, seconds: float = 0.0, label: str = "", run: object | None = None) -> None:
    """Add a training spend to every open ledger (what ``train`` and the package's own loops call).

    Arguments as ``ComputeLedger.add``. With no ledger open this does nothing.
    """
    with _LOCK:
        ledgers = list(_OPEN)
    for ledger in ledgers:
        ledger.add(flops, tokens=tokens, seconds=seconds, label=label, run=run)


def _takes_seq_len(method) -> bool:
    try:
        return "seq_len" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def _weight_uses(model: nn.Module) -> int:
    """Weights that do a multiply-add per token, for a model without ``flops_per_token``: every
    trainable parameter outside the embedding tables, counted once per module that uses it (a
    head tied to the embedding is a matmul; the lookup is not)."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            continue
        count += sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
    return count


def _per_token(model: nn.Module, seq_len: int | None) -> float:
    """Training FLOPs per token of ``model`` on sequences of ``seq_len`` tokens (see ``training_flops``)."""
    if seq_len is not None and (isinstance(seq_len, bool) or not isinstance(seq_len, numbers.Integral)
                                or seq_len < 1):
        raise ValueError(f"seq_len must be None (the model's context length) or an integer >= 1, got {seq_len!r}")
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    method = getattr(model, "flops_per_token", None)
    if method is not None:
        try:
            return float(method(seq_len=seq_len) if _takes_seq_len(method) else method())
        except NotImplementedError:
            pass
    return 6.0 * _weight_uses(model)  # Kaplan et al. (2020), Table 1: 6N, no sequence term


def training_flops(model: nn.Module, tokens: int, seq_len: int | None = None) -> float:
    """Training FLOPs (forward + backward) that ``model`` spends on ``tokens`` tokens: what ``train`` adds.

    tokens x the model's ``flops_per_token(seq_len)``: 6N per token (a multiply-add per weight
    forward, two backward; Kaplan et al. 2020, Table 1, C ~ 6ND; Hoffmann et al. 2022, App. F)
    plus the family's sequence term at ``seq_len`` (None: the model's context length):

    - GPT: attention, 6 n_layers seq_len d_model per token (Kaplan's 2 n_layer n_ctx d_attn
      forward, x3 for training: the causal half of the (T, T) scores and their weighted sum);
    - SSM: the selective scan, 3 x 7 n_layers d_inner d_state per token (independent of seq_len);
    - RWKV, LSTM: 6N alone (their O(d_model) element-wise work per token is left out);
    - n-gram: 0 (counting is not gradient training).

    A model without ``flops_per_token`` (any ``nn.Module``) is charged 6 FLOPs per weight use
    and token outside its embedding tables, with no sequence term.
    """
    _check_number("tokens", tokens, integral=True)
    return _per_token(model, seq_len) * int(tokens)
