"""The labs whose graded questions the grader knows, found by their two-digit id.

Each lab's questions live in ``labNN.py`` beside this file, as a module-level ``LAB`` (see
``minilm.grading.questions`` and the demo lab ``demo.py``). The table below is explicit on
purpose: adding a lab is writing its module; its entry is already here.
"""

from __future__ import annotations

import importlib

from minilm.grading.questions import Lab

LAB_MODULES = {
    "00": "minilm.grading.labs.lab00",
    "01": "minilm.grading.labs.lab01",
    "02": "minilm.grading.labs.lab02",
    "03": "minilm.grading.labs.lab03",
    "04": "minilm.grading.labs.lab04",
    "05": "minilm.grading.labs.lab05",
    "06": "minilm.grading.labs.lab06",
    "07": "minilm.grading.labs.lab07",
    "99": "minilm.grading.labs.demo",  # the small demo lab the grader's own tests use
}


def normalize_lab_id(lab_id: str | int) -> str:
    """``3``, ``"3"`` and ``"03"`` all name lab ``"03"``."""
    text = str(lab_id).strip()
    if not text.isdigit() or len(text) > 2:
        raise ValueError(f"a lab id is a number like '03', got {lab_id!r}")
    return text.zfill(2)


def get_lab(lab_id: str | int) -> Lab:
    """The declared questions of lab ``lab_id`` (``"00"`` ... ``"07"``, ``"99"`` for the demo)."""
    key = normalize_lab_id(lab_id)
    if key not in LAB_MODULES:
        raise ValueError(f"there is no lab {key}; the labs are {', '.join(LAB_MODULES)}")
    name = LAB_MODULES[key]
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        raise ValueError(
            f"lab {key} has no graded questions yet: create {name.replace('.', '/')}.py defining LAB"
        ) from None
    lab = getattr(module, "LAB", None)
    if not isinstance(lab, Lab):
        raise ValueError(f"{name} must define LAB = Lab(...), the lab's questions")
    if lab.id != key:
        raise ValueError(f"{name} declares lab id {lab.id!r} but is registered as lab {key}")
    return lab


def available_labs() -> list[str]:
    """Ids of the labs whose question module exists."""
    found = []
    for key in LAB_MODULES:
        try:
            get_lab(key)
        except ValueError:
            continue
        found.append(key)
    return found
