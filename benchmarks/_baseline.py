"""Shared by the benchmark scripts: load an older copy of a module, to time it beside today's."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def load_module(path: str, name: str) -> ModuleType:
    """Import the module in file ``path`` under ``name`` (e.g. an old minilm/models/ngram.py from git)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path}: give the path of a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
