"""Trusted side of grading: plan the checks, validate what the probe returns, compare, score.

Nothing here runs student code or trusts a student object: the probe's reply arrives as JSON in
the encoding of ``probe.py``, is validated element by element (exact types, shapes, dtypes), and
is compared with expected values computed here from the reference solution. Messages say what
was wrong (type, shape, how far off) and never show a hidden input or an expected value.
"""

from __future__ import annotations

import json
import math
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from minilm.grading.probe import FLOAT_DTYPES, NUMPY_DTYPES, TORCH_DTYPES, decode, encode
from minilm.grading.questions import NO_ANSWER, Case, Question

_INT_DTYPES = tuple(d for d in NUMPY_DTYPES + TORCH_DTYPES if d.startswith(("int", "uint")))
_SPECIAL = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class Malformed(ValueError):
    """The probe's reply does not follow the grading JSON (a forged or broken reply)."""


# ---------------------------------------------------------------------------------------------
# Validation of untrusted encoded values
# ---------------------------------------------------------------------------------------------


def validate(enc: Any, depth: int = 0) -> None:
    """Raise ``Malformed`` unless ``enc`` is a well-formed value of the grading JSON."""
    if depth > 40:
        raise Malformed("value nested too deep")
    if enc is None or type(enc) in (bool, int, str):
        return
    if type(enc) is float:
        if not math.isfinite(enc):
            raise Malformed("bare non-finite float")
        return
    if type(enc) is not dict or type(enc.get("$")) is not str:
        raise Malformed(f"unexpected JSON value of type {type(enc).__name__}")
    tag = enc["$"]
    if tag == "float":
        if enc.get("value") not in _SPECIAL:
            raise Malformed("bad special float")
    elif tag in ("list", "tuple"):
        items = enc.get("items")
        if type(items) is not list:
            raise Malformed(f"{tag} without items")
        for x in items:
            validate(x, depth + 1)
    elif tag == "dict":
        items = enc.get("items")
        if type(items) is not list:
            raise Malformed("dict without items")
        for pair in items:
            if type(pair) is not list or len(pair) != 2:
                raise Malformed("dict item is not a [key, value] pair")
            validate(pair[0], depth + 1)
            validate(pair[1], depth + 1)
    elif tag in ("ndarray", "tensor"):
        _validate_array(enc, NUMPY_DTYPES if tag == "ndarray" else TORCH_DTYPES)
    elif tag == "numpy":
        dtype = enc.get("dtype")
        if dtype not in NUMPY_DTYPES:
            raise Malformed("bad numpy scalar dtype")
        _validate_element(enc.get("value"), dtype)
    else:
        raise Malformed(f"unknown tag {tag!r}")


def _validate_array(enc: dict, dtypes: tuple) -> None:
    dtype, shape, data = enc.get("dtype"), enc.get("shape"), enc.get("data")
    if dtype not in dtypes:
        raise Malformed(f"bad dtype {dtype!r}")
    if type(shape) is not list or any(type(s) is not int or s < 0 for s in shape) or len(shape) > 32:
        raise Malformed("bad shape")
    if type(data) is not list or len(data) != math.prod(shape):
        raise Malformed("array data does not match its shape")
    for x in data:
        _validate_element(x, dtype)


def _validate_element(x: Any, dtype: str) -> None:
    t = type(x)
    if dtype in FLOAT_DTYPES:
        ok = (t is float and math.isfinite(x)) or (t is str and x in _SPECIAL)
    elif dtype == "bool":
        ok = t is bool
    else:
        ok = t is int
    if not ok:
        raise Malformed(f"element {str(x)[:20]!r} is not a {dtype}")


def _tag(enc: Any) -> str:
    if enc is None:
        return "none"
    if type(enc) is dict:
        return enc["$"]
    return {bool: "bool", int: "int", float: "float", str: "str"}[type(enc)]


def describe(enc: Any) -> str:
    """A short type description of an encoded value: "a numpy float64 array of shape (2, 3)"."""
    tag = _tag(enc)
    if tag in ("ndarray", "tensor"):
        kind = "numpy" if tag == "ndarray" else "torch"
        noun = "array" if tag == "ndarray" else "tensor"
        return f"a {kind} {enc['dtype']} {noun} of shape {tuple(enc['shape'])}"
    if tag == "numpy":
        return f"a numpy.{enc['dtype']} scalar"
    if tag in ("list", "tuple"):
        return f"a {tag} of {len(enc['items'])} items"
    if tag == "dict":
        return f"a dict of {len(enc['items'])} items"
    return {"none": "None", "bool": "a bool", "int": "an int", "float": "a float", "str": "a str"}[tag]


# ---------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """``|got - expected| <= atol + rtol * |expected|`` entry by entry; NaN never matches unless
    ``equal_nan`` and the expected entry is NaN too."""

    rtol: float = 1e-6
    atol: float = 1e-9
    equal_nan: bool = False

    def text(self) -> str:
        return f"atol {self.atol:g} + rtol {self.rtol:g}·|expected|"


def _float(x: Any) -> float:
    if type(x) is dict:
        return _SPECIAL[x["value"]]
    return _SPECIAL[x] if type(x) is str else float(x)


def _close(e: float, g: float, tol: Tolerance) -> bool:
    if math.isnan(e) or math.isnan(g):
        return tol.equal_nan and math.isnan(e) and math.isnan(g)
    if math.isinf(e) or math.isinf(g):
        return e == g
    return abs(g - e) <= tol.atol + tol.rtol * abs(e)


def compare(expected: Any, got: Any, tol: Tolerance, where: str = "result", amounts: bool = True) -> str | None:
    """``None`` when ``got`` matches ``expected`` (both encoded), else what is wrong, in words.

    Types must match exactly: a float is not an int, a float32 array is not a float64 one.
    ``amounts=False`` leaves out how far off a value is: for a value question that distance
    would give the hidden answer away in two submissions.
    """
    te, tg = _tag(expected), _tag(got)
    if te != tg or (te in ("ndarray", "tensor", "numpy") and expected["dtype"] != got["dtype"]):
        return f"{where}: {_type_problem(expected, got)}"
    if te in ("ndarray", "tensor"):
        if expected["shape"] != got["shape"]:
            return f"{where}: expected shape {tuple(expected['shape'])}, got shape {tuple(got['shape'])}"
        return _compare_data(expected["data"], got["data"], expected["dtype"], tol, where, amounts)
    if te == "numpy":
        return _compare_data([expected["value"]], [got["value"]], expected["dtype"], tol, where, amounts)
    if te == "float":
        e, g = _float(expected), _float(got)
        if _close(e, g, tol):
            return None
        if math.isnan(g) or math.isinf(g):
            return f"{where}: got {g}, a finite value was expected"
        if not amounts:
            return f"{where}: not within the tolerance ({tol.text()})"
        return f"{where}: off by {abs(g - e):.3g} (allowed: {tol.text()})"
    if te in ("list", "tuple"):
        ei, gi = expected["items"], got["items"]
        if len(ei) != len(gi):
            return f"{where}: expected {describe(expected)}, got {describe(got)}"
        for i, (e, g) in enumerate(zip(ei, gi)):
            msg = compare(e, g, tol, f"{where}[{i}]", amounts)
            if msg:
                return msg
        return None
    if te == "dict":
        ekeys = {json.dumps(k): v for k, v in expected["items"]}
        gkeys = {json.dumps(k): v for k, v in got["items"]}
        if ekeys.keys() != gkeys.keys():
            missing = sorted(set(ekeys) - set(gkeys))
            extra = sorted(set(gkeys) - set(ekeys))
            return f"{where}: dict keys differ (missing {missing[:5]}, unexpected {extra[:5]})"
        for k, e in ekeys.items():
            msg = compare(e, gkeys[k], tol, f"{where}[{k}]", amounts)
            if msg:
                return msg
        return None
    if expected == got:  # none, bool, int, str: exact
        return None
    if te == "int" and amounts:
        return f"{where}: wrong value (off by {abs(got - expected)})"
    return f"{where}: wrong value"


def _type_problem(expected: Any, got: Any) -> str:
    """"expected X, got Y", with the conversion that usually fixes it."""
    te, tg = _tag(expected), _tag(got)
    hint = ""
    if te == "float" and tg in ("numpy", "int"):
        hint = " (convert with float(...))"
    elif te == "int" and tg == "numpy":
        hint = " (convert with int(...))"
    elif te in ("ndarray", "tensor") and te == tg:
        hint = f" (convert with .astype({expected['dtype']!r}))" if te == "ndarray" else " (convert with .to(...))"
    return f"expected {describe(expected)}, got {describe(got)}{hint}"


def _compare_data(exp: list, got: list, dtype: str, tol: Tolerance, where: str, amounts: bool) -> str | None:
    n = len(exp)
    if n == 0:
        return None
    if dtype not in FLOAT_DTYPES:
        wrong = sum(1 for e, g in zip(exp, got) if e != g)
        return None if wrong == 0 else f"{where}: {wrong} of {n} entries are wrong"
    e = np.array([_float(x) for x in exp], dtype=np.float64)
    g = np.array([_float(x) for x in got], dtype=np.float64)
    ok = np.isclose(g, e, rtol=tol.rtol, atol=tol.atol, equal_nan=tol.equal_nan)
    bad = int((~ok).sum())
    if bad == 0:
        return None
    nonfinite = int((~np.isfinite(g) & np.isfinite(e)).sum())
    finite = np.isfinite(g) & np.isfinite(e)
    parts = [f"{where}: {bad} of {n} entries off"]
    if amounts and finite.any() and (~ok & finite).any():
        parts.append(f"max abs error {np.abs(g - e)[finite].max():.3g} (allowed: {tol.text()})")
    if nonfinite:
        parts.append(f"{nonfinite} entries are NaN or infinite where finite values were expected")
    return ", ".join(parts)


def signature(enc: Any) -> Any:
    """The shape of a value without its numbers: type, dtype, shape, container lengths."""
    tag = _tag(enc)
    if tag in ("ndarray", "tensor"):
        return (tag, enc["dtype"], tuple(enc["shape"]))
    if tag == "numpy":
        return (tag, enc["dtype"])
    if tag in ("list", "tuple"):
        return (tag, tuple(signature(x) for x in enc["items"]))
    if tag == "dict":
        return (tag, tuple(sorted((json.dumps(k), signature(v)) for k, v in enc["items"])))
    return (tag,)


# ---------------------------------------------------------------------------------------------
# Planning: which inputs to send, what to expect
# ---------------------------------------------------------------------------------------------


@dataclass
class PlannedCheck:
    """One check of a question, with its encoded inputs and (trusted) expected value.

    ``expected`` is the encoded expected value, ``None`` for a value question whose reference
    depends on notebook parameters (computed when the parameters are known), or a
    ``GraderError`` when the reference itself failed (a bug in the lab, not the student's).
    """

    question: str
    index: int
    visibility: str  # "public", "hidden", or "format" (a value's well-formedness, self-check only)
    weight: float
    label: str
    call: dict | None = None
    expected: Any = None


class GraderError(Exception):
    """The lab's own reference failed: the check cannot be graded (reported to the instructor)."""


def hidden_rng(seed: int, question: str, group: int, index: int) -> np.random.Generator:
    """The generator for one hidden check: a function of the grading seed and the check only."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(question.encode()), group, index]))


def _encode_call(case: Case) -> dict:
    return {"args": [encode(a) for a in case.args], "kwargs": {k: encode(v) for k, v in case.kwargs.items()}}


def _expected_for_call(reference: Callable, call: dict) -> Any:
    # The reference sees decoded copies of exactly what the student receives.
    try:
        args = [decode(a) for a in call["args"]]
        kwargs = {k: decode(v) for k, v in call["kwargs"].items()}
        return encode(reference(*args, **kwargs))
    except Exception as err:  # noqa: BLE001 - any failure of the lab's reference is a grader error
        return GraderError(f"the reference failed: {type(err).__name__}: {err}")


def plan_checks(question: Question, seed: int, public_only: bool = False) -> list[PlannedCheck]:
    """The checks of ``question``: public inputs, then hidden ones drawn from ``seed``."""
    checks: list[PlannedCheck] = []
    if question.kind == "value":
        expected = encode(question.answer) if question.answer is not NO_ANSWER else None
        if public_only:  # the self-check: is the value set and well-formed? (worth nothing)
            return [PlannedCheck(question.name, 0, "format", 0.0, "your answer", None, expected)]
        return [PlannedCheck(question.name, 0, "hidden", 1.0, "your answer", None, expected)]
    for i, case in enumerate(question.public):
        call = _encode_call(case)
        label = f"public input {i + 1}" + (f" ({case.label})" if case.label else "")
        checks.append(
            PlannedCheck(question.name, len(checks), "public", case.weight, label, call,
                         _expected_for_call(question.reference, call))
        )
    if public_only:
        return checks
    k = 0
    for g, hidden in enumerate(question.hidden):
        for j in range(hidden.n):
            k += 1
            item = hidden.inputs(hidden_rng(seed, question.name, g, j))
            case = item if isinstance(item, Case) else Case(args=tuple(item))
            call = _encode_call(case)
            label = f"hidden input {k}" + (f" ({hidden.label})" if hidden.label else "")
            checks.append(
                PlannedCheck(question.name, len(checks), "hidden", hidden.weight * case.weight, label,
                             call, _expected_for_call(question.reference, call))
            )
    return checks


def probe_request(question: Question, checks: list[PlannedCheck]) -> dict:
    """What the probe needs to evaluate ``question``: target, kind, inputs, parameter names."""
    request = {
        "target": question.target,
        "kind": question.kind,
        "calls": [c.call for c in checks if c.call is not None],
        "params": list(question.params),
    }
    if question.pure:  # only then: other questions' requests stay as they were
        request["pure"] = True
    return request


class ReferenceCache:
    """Expected values of measured-value questions, computed once per (question, parameters).

    Thread-safe: ``grade -j N`` computes them from several threads.
    """

    def __init__(self) -> None:
        self._values: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def expected(self, question: Question, params: dict[str, Any]) -> Any:
        key = (id(question), json.dumps(encode(params), sort_keys=True))
        with self._lock:
            if key in self._values:
                return self._values[key]
        try:
            value: Any = encode(question.reference(**params))
        except Exception as err:  # noqa: BLE001 - includes the reference refusing bad parameters
            value = GraderError(f"the reference could not be computed for {params}: {type(err).__name__}: {err}")
        with self._lock:
            self._values[key] = value
        return value


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


@dataclass
class CheckResult:
    """The outcome of one check. ``message`` is safe to show the student."""

    index: int
    visibility: str
    weight: float
    label: str
    passed: bool
    message: str = ""


@dataclass
class QuestionResult:
    """A question's score and the checks behind it.

    ``status``: ``ok`` (probed; checks may have failed), ``missing`` (target not defined),
    ``timeout`` / ``crashed`` (while the notebook or the probe ran), ``error`` (unusable probe
    reply), ``grader-error`` (the lab's reference failed; not the student's fault), ``not-graded``
    (the notebook could not be run at all).
    """

    name: str
    title: str
    points: float
    score: float
    status: str
    checks: list[CheckResult] = field(default_factory=list)
    message: str = ""
    hint: str = ""

    @property
    def full(self) -> bool:
        return self.score >= self.points - 1e-9


def zero_result(question: Question, status: str, message: str, checks: list[PlannedCheck]) -> QuestionResult:
    """A question that earns nothing, with every planned check marked failed for ``message``."""
    return QuestionResult(
        question.name, question.title, float(question.points), 0.0, status,
        [CheckResult(c.index, c.visibility, c.weight, c.label, False, message) for c in checks],
        message, question.hint,
    )


def _format_problem(question: Question, enc: Any, expected: Any) -> str | None:
    """For a value: is it well-formed (right type/shape, a valid choice)? ``None`` if so."""
    if question.choices is not None:
        if type(enc) is not str or enc not in question.choices:
            return f"{_short(enc)} is not one of the choices {', '.join(map(repr, question.choices))}"
        return None
    if expected is None or isinstance(expected, GraderError):
        return "your answer is None" if enc is None else None
    if signature(enc) != signature(expected):
        return _type_problem(expected, enc)
    return None


def _short(enc: Any) -> str:
    if type(enc) is str:
        return repr(enc[:40])
    return describe(enc)


def score_question(
    question: Question, checks: list[PlannedCheck], reply: Any, references: ReferenceCache | None = None
) -> QuestionResult:
    """Score one question from the probe's (untrusted) ``reply``."""
    if type(reply) is not dict or type(reply.get("defined")) is not bool or type(reply.get("results")) is not list:
        return zero_result(question, "error", "the probe's reply was unusable", checks)
    if not reply["defined"]:
        return zero_result(question, "missing", f"{question.target} is not defined in the notebook", checks)
    results = reply["results"]
    if len(results) != len(checks):
        return zero_result(question, "error", "the probe's reply has the wrong number of results", checks)
    if question.kind == "value" and question.reference is not None and checks:
        # For the self-check's format check too: only the type and shape of it are used there.
        params = _read_params(question, reply.get("params"))
        if isinstance(params, str):
            return zero_result(question, "ok", params, checks)
        checks[0].expected = (references or ReferenceCache()).expected(question, params)
    tol = Tolerance(question.rtol, question.atol, question.equal_nan)
    out: list[CheckResult] = []
    status = "ok"
    for check, res in zip(checks, results):
        message = _judge(question, check, res, tol)
        if isinstance(check.expected, GraderError):
            status = "grader-error"
        passed = message is None
        out.append(CheckResult(check.index, check.visibility, check.weight, check.label, passed, message or ""))
    total = sum(c.weight for c in out)
    earned = sum(c.weight for c in out if c.passed)
    score = round(question.points * earned / total, 6) if total > 0 else 0.0
    return QuestionResult(question.name, question.title, float(question.points), score, status, out, "", question.hint)


def _read_params(question: Question, raw: Any) -> dict[str, Any] | str:
    """The notebook parameters a measured value depends on, as plain scalars, or why not.

    A parameter the notebook does not define takes the question's declared default.
    """
    params: dict[str, Any] = {}
    for name in question.params:
        entry = raw.get(name) if type(raw) is dict else None
        if type(entry) is dict and entry.get("missing") is True:
            params[name] = question.params[name]  # not set in the notebook: the released default
            continue
        if type(entry) is not dict or entry.get("ok") is not True:
            return f"parameter {name} could not be read from the notebook"
        value = entry.get("value")
        try:
            validate(value)
        except Malformed:
            return f"parameter {name} was malformed"
        if _tag(value) not in ("none", "bool", "int", "float", "str"):
            return f"parameter {name} must be a plain number or string, it is {describe(value)}"
        params[name] = decode(value)
    return params


def _judge(question: Question, check: PlannedCheck, res: Any, tol: Tolerance) -> str | None:
    if isinstance(check.expected, GraderError):
        return "this check could not be graded (the reference failed); your instructor has been told"
    if type(res) is not dict or type(res.get("ok")) is not bool:
        return "the probe's result was unusable"
    if not res["ok"]:
        err = res.get("error")
        return f"raised {err[:300]}" if type(err) is str else "failed"
    value = res.get("value")
    try:
        validate(value)
    except Malformed as err:
        return f"the result was malformed ({err})"
    if question.kind == "value":
        problem = _format_problem(question, value, check.expected)
        if problem or check.visibility == "format":
            return problem
    if question.kind == "value":
        return compare(check.expected, value, tol, "your answer", amounts=False)
    problem = compare(check.expected, value, tol, "result")
    if problem is None and question.pure:
        problem = _changed_inputs(check.call, res.get("inputs_after"))
    return problem


def _changed_inputs(sent: dict | None, after: Any) -> str | None:
    """Why the call changed its inputs in place, or ``None`` when they are exactly as sent."""
    if sent is None or type(after) is not dict or type(after.get("args")) is not list \
            or type(after.get("kwargs")) is not dict:
        return "the probe did not report the inputs after the call"
    if len(after["args"]) != len(sent["args"]):
        return "the probe's report of the inputs after the call was unusable"
    for i, (before, now) in enumerate(zip(sent["args"], after["args"])):
        if now != before:  # exact: the probe re-encodes an untouched input to the same JSON
            return (f"the result is right, but the call changed its input argument {i + 1} in place: "
                    "build the result in new arrays and leave the arguments as they were")
    for k, before in sent["kwargs"].items():
        if after["kwargs"].get(k) != before:
            return (f"the result is right, but the call changed its argument {k!r} in place: "
                    "build the result in new arrays and leave the arguments as they were")
    return None
