"""The probe: calls a student's objects on given inputs and turns what comes back into plain JSON.

This file runs in two places:

- inside the student's kernel during grading. The runner sends this file's *source text* to the
  kernel after the notebook has run, so a student who patched ``minilm.grading`` changes nothing
  here. Everything the probe reports is still untrusted: the grading parent validates it strictly
  and compares it with expected values that never leave the parent.
- in the trusted process, for ``encode``/``decode`` of inputs and expected values, and for the
  in-notebook self-check, so both sides share one encoding.

It must stay self-contained: standard library only at import time; numpy and torch are looked up
in ``sys.modules`` (an object cannot be a numpy array unless numpy was imported) or imported when an
input needs them.

The encoding is JSON with strict, exact types (no subclasses, no ``__eq__`` of the student's):

- ``None``, ``bool``, ``int``, ``str`` as themselves; a ``float`` as itself when finite, else
  ``{"$": "float", "value": "nan" | "inf" | "-inf"}``;
- ``{"$": "list" | "tuple", "items": [...]}``, ``{"$": "dict", "items": [[key, value], ...]}``;
- ``{"$": "ndarray" | "tensor", "dtype": "float32", "shape": [2, 3], "data": [...]}`` with the
  data flattened in row-major order (non-finite floats as the strings above);
- ``{"$": "numpy", "dtype": "float64", "value": ...}`` for a numpy scalar.

Anything else (a custom class, a subclass of float or of ndarray, a complex number) is an error
for that check.
"""

from __future__ import annotations

import json
import math
import sys

PROBE_MIME = "application/x-minilm-probe"
MAX_ELEMENTS = 2_000_000  # numbers in one encoded result: keeps a probe reply under ~40 MB
MAX_DEPTH = 32
MAX_STR = 100_000
MAX_ERROR = 400  # characters of an exception message kept

NUMPY_DTYPES = (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
)
TORCH_DTYPES = (
    "bool", "int8", "int16", "int32", "int64", "uint8", "float16", "bfloat16", "float32", "float64",
)
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
_SPECIAL = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class EncodeError(ValueError):
    """A value cannot be turned into the grading JSON (unsupported type, too big, too deep)."""


def _special(x: float) -> object:
    """A finite float stays a float; NaN and infinities become tagged strings (strict JSON)."""
    if math.isfinite(x):
        return x
    return "nan" if x != x else ("inf" if x > 0 else "-inf")


def _flat_floats(values: list) -> list:
    return [v if math.isfinite(v) else _special(v) for v in values]


class _Budget:
    def __init__(self, limit: int) -> None:
        self.left = limit

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise EncodeError(f"result too large (more than {MAX_ELEMENTS:,} numbers)")


def encode(obj: object, max_elements: int = MAX_ELEMENTS) -> object:
    """Turn ``obj`` into the strict grading JSON; raise ``EncodeError`` for anything else."""
    return _encode(obj, _Budget(max_elements), 0)


def _encode(obj: object, budget: _Budget, depth: int) -> object:
    if depth > MAX_DEPTH:
        raise EncodeError(f"result nested more than {MAX_DEPTH} levels deep")
    t = type(obj)
    budget.take(1)
    if obj is None or t is bool or t is int:
        return obj
    if t is float:
        return obj if math.isfinite(obj) else {"$": "float", "value": _special(obj)}
    if t is str:
        if len(obj) > MAX_STR:
            raise EncodeError(f"string longer than {MAX_STR:,} characters")
        return obj
    if t is list or t is tuple:
        budget.take(len(obj))
        return {"$": t.__name__, "items": [_encode(x, budget, depth + 1) for x in obj]}
    if t is dict:
        budget.take(len(obj))
        items = [[_encode(k, budget, depth + 1), _encode(v, budget, depth + 1)] for k, v in obj.items()]
        return {"$": "dict", "items": items}
    np = sys.modules.get("numpy")
    if np is not None:
        if t is np.ndarray:
            return _encode_array("ndarray", obj, budget)
        if t in _numpy_scalar_types(np):
            value = obj.item()
            if isinstance(value, float):
                value = _special(value)
            return {"$": "numpy", "dtype": str(obj.dtype), "value": value}
    torch = sys.modules.get("torch")
    if torch is not None and t is torch.Tensor:
        return _encode_tensor(obj, budget, torch)
    raise EncodeError(f"unsupported type {_type_name(obj)}")


def _numpy_scalar_types(np) -> set:
    return {np.dtype(d).type for d in NUMPY_DTYPES}


def _encode_array(tag: str, a, budget: _Budget) -> dict:
    dtype = str(a.dtype)
    if dtype not in NUMPY_DTYPES:
        raise EncodeError(f"unsupported array dtype {dtype}")
    budget.take(int(a.size))
    data = a.ravel().tolist()
    if dtype in FLOAT_DTYPES:
        data = _flat_floats(data)
    return {"$": tag, "dtype": dtype, "shape": [int(s) for s in a.shape], "data": data}


def _encode_tensor(t, budget: _Budget, torch) -> dict:
    dtype = str(t.dtype).replace("torch.", "")
    if dtype not in TORCH_DTYPES:
        raise EncodeError(f"unsupported tensor dtype {dtype}")
    budget.take(int(t.numel()))
    t = t.detach().to("cpu")
    if dtype in ("float16", "bfloat16"):
        t = t.to(torch.float32)  # exact: every half/bfloat16 value is a float32
    data = t.reshape(-1).tolist()
    if dtype in FLOAT_DTYPES:
        data = _flat_floats(data)
    return {"$": "tensor", "dtype": dtype, "shape": [int(s) for s in t.shape], "data": data}


def decode(enc: object) -> object:
    """Rebuild Python objects from the grading JSON (used for inputs, which the parent encoded)."""
    if enc is None or isinstance(enc, (bool, int, float, str)):
        return enc
    if not isinstance(enc, dict) or "$" not in enc:
        raise EncodeError(f"not an encoded value: {str(enc)[:80]}")
    tag = enc["$"]
    if tag == "float":
        return _SPECIAL[enc["value"]]
    if tag == "list":
        return [decode(x) for x in enc["items"]]
    if tag == "tuple":
        return tuple(decode(x) for x in enc["items"])
    if tag == "dict":
        return {decode(k): decode(v) for k, v in enc["items"]}
    data = enc.get("data")
    if tag == "numpy":
        import numpy as np

        value = enc["value"]
        return np.dtype(enc["dtype"]).type(_SPECIAL.get(value, value) if isinstance(value, str) else value)
    if isinstance(data, list) and enc["dtype"] in FLOAT_DTYPES:
        data = [_SPECIAL[x] if isinstance(x, str) else x for x in data]
    if tag == "ndarray":
        import numpy as np

        return np.array(data, dtype=enc["dtype"]).reshape(enc["shape"])
    if tag == "tensor":
        import torch

        dtype = getattr(torch, enc["dtype"])
        via = torch.float64 if enc["dtype"] in FLOAT_DTYPES else dtype
        return torch.tensor(data, dtype=via).reshape(enc["shape"]).to(dtype)
    raise EncodeError(f"unknown tag {tag!r}")


def _type_name(obj: object) -> str:
    t = type(obj)
    module = getattr(t, "__module__", "") or ""
    name = getattr(t, "__qualname__", "?")
    return name if module in ("builtins", "__main__", "") else f"{module}.{name}"


def _error_text(err: BaseException) -> str:
    try:
        detail = str(err)
        text = f"{type(err).__name__}: {detail}" if detail else type(err).__name__
    except BaseException:  # a student's exception whose __str__ fails
        text = type(err).__name__
    return text if len(text) <= MAX_ERROR else text[:MAX_ERROR] + "..."


def probe_question(request: dict, namespace: dict) -> dict:
    """Evaluate one question's target in ``namespace`` and encode what it gives.

    ``request``: ``{"target": name, "kind": "function" | "value", "calls": [{"args": [...],
    "kwargs": {...}}, ...], "params": [names]}`` with inputs in the grading JSON, and ``"pure":
    true`` for a question whose function must leave its inputs unchanged. Returns ``{"defined":
    bool, "type": str, "results": [...], "params": {...}}`` where each result is ``{"ok": true,
    "value": ...}`` (with ``"inputs_after": {"args": [...], "kwargs": {...}}`` when pure) or
    ``{"ok": false, "error": "..."}``.
    """
    reply: dict = {"defined": False, "type": "", "results": [], "params": {}}
    for name in request.get("params", []):
        if name in namespace:
            try:
                reply["params"][name] = {"ok": True, "value": encode(namespace[name], 1000)}
            except KeyboardInterrupt:
                raise
            except BaseException as err:
                reply["params"][name] = {"ok": False, "error": _error_text(err)}
        else:
            reply["params"][name] = {"ok": False, "missing": True, "error": f"{name} is not defined"}
    target = request["target"]
    if target not in namespace:
        return reply
    obj = namespace[target]
    reply["defined"] = True
    reply["type"] = _type_name(obj)
    if request["kind"] == "value":
        try:
            reply["results"].append({"ok": True, "value": encode(obj)})
        except KeyboardInterrupt:
            raise
        except BaseException as err:
            reply["results"].append({"ok": False, "error": _error_text(err)})
        return reply
    if not callable(obj):
        reply["results"] = [
            {"ok": False, "error": f"{target} is not a function (it is a {reply['type']})"}
            for _ in request["calls"]
        ]
        return reply
    for call in request["calls"]:
        try:
            args = [decode(a) for a in call["args"]]
            kwargs = {k: decode(v) for k, v in call["kwargs"].items()}
            out = obj(*args, **kwargs)
            result = {"ok": True, "value": encode(out)}
            if request.get("pure"):  # the inputs as the call left them: the grader compares
                result["inputs_after"] = {"args": [encode(a) for a in args],
                                          "kwargs": {k: encode(v) for k, v in kwargs.items()}}
            reply["results"].append(result)
        except KeyboardInterrupt:
            raise  # the runner interrupted a call that ran too long: give up on this question
        except BaseException as err:  # SystemExit too: a student's sys.exit() fails one check
            reply["results"].append({"ok": False, "error": _error_text(err)})
    return reply


def kernel_main(request_json: str, namespace: dict) -> None:
    """Entry point inside the kernel: probe, then publish the reply as one display message."""
    from IPython.display import publish_display_data

    try:
        reply = probe_question(json.loads(request_json), namespace)
        text = json.dumps(reply, allow_nan=False)
    except KeyboardInterrupt:
        raise
    except BaseException as err:
        text = json.dumps({"probe_error": _error_text(err)})
    publish_display_data({PROBE_MIME: text})
