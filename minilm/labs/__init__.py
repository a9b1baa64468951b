"""The course: one module per lab (its graded questions and their references) and the lab runner.

Lab NN is three files a reader can go between in one hop: the notebook ``labs/NN_topic.ipynb``
(instructor source ``solutions/NN_topic.ipynb``), the chapter ``course/NN_topic.md`` and the
module ``minilm/labs/labNN.py``, whose ``LAB`` declares the graded questions (see
``minilm.grading.questions``). The grading engine, ``minilm.grading``, knows no lab by name:
whoever needs lab "03" by its id looks it up here with ``get_lab`` and hands the ``Lab`` over.

In a notebook::

    from minilm.labs import check, check_all, setup

    device = setup(SEED, DEVICE)  # seeds, device and CPU threads, printed on one line
    check("q1")                   # q1's verdict on this notebook's objects (self-study mode)
    check_all()                   # every question, and the score out of the lab's total

``check`` and ``check_all`` find the lab from the notebook's ``LAB = "NN"`` line.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from minilm.grading.questions import Lab
from minilm.grading.selfcheck import check_report, self_check
from minilm.labs.runner import setup

# The labs that exist, by id: a new lab adds its line here and its module beside this file.
LAB_MODULES = {
    "00": "minilm.labs.lab00",
    "01": "minilm.labs.lab01",
    "02": "minilm.labs.lab02",
    "03": "minilm.labs.lab03",
    "04": "minilm.labs.lab04",
    "05": "minilm.labs.lab05",
    "06": "minilm.labs.lab06",
    "07": "minilm.labs.lab07",
    "08": "minilm.labs.lab08",
    "09": "minilm.labs.lab09",  # build it yourself: do it right after lab 00 (ids are two digits)
}
# Lab 99, the small demo lab the grader's own tests use: found by id, but not part of the course
# (its notebooks are test fixtures, so `minilm lab list` does not show it).
DEMO_MODULES = {"99": "minilm.labs.demo"}

__all__ = ["DEMO_MODULES", "LAB_MODULES", "available_labs", "check", "check_all", "get_lab", "normalize_lab_id",
           "setup"]


def normalize_lab_id(lab_id: str | int) -> str:
    """``3``, ``"3"`` and ``"03"`` all name lab ``"03"``."""
    text = str(lab_id).strip()
    if not text.isdigit() or len(text) > 2:
        raise ValueError(f"a lab id is a number like '03', got {lab_id!r}")
    return text.zfill(2)


def get_lab(lab_id: str | int) -> Lab:
    """The declared questions of lab ``lab_id`` (``"00"``, ``3``; ``"99"`` is the demo lab)."""
    key = normalize_lab_id(lab_id)
    name = LAB_MODULES.get(key) or DEMO_MODULES.get(key)
    if name is None:
        raise ValueError(f"there is no lab {key}; the labs are {', '.join(available_labs())}")
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        raise ValueError(f"lab {key} is registered in minilm/labs/__init__.py but "
                         f"{name.replace('.', '/')}.py does not exist: write it (defining LAB)") from None
    lab = getattr(module, "LAB", None)
    if not isinstance(lab, Lab):
        raise ValueError(f"{name} must define LAB = Lab(...), the lab's questions")
    if lab.id != key:
        raise ValueError(f"{name} declares lab id {lab.id!r} but is registered as lab {key}")
    return lab


def available_labs() -> list[str]:
    """The ids of the course's labs, in order (the demo lab is not one of them)."""
    return sorted(LAB_MODULES)


# ------------------------------------------------------------------------- inside a notebook
def _lab_for(lab: str | Lab | None, namespace: dict[str, Any]) -> Lab:
    """``lab`` if given, else the lab the notebook names with ``LAB = "NN"``."""
    if isinstance(lab, Lab):
        return lab
    if lab is None:
        lab = namespace.get("LAB")
        if lab is None:
            raise ValueError('which lab is this? Set LAB = "00" (the lab number) in the notebook, '
                             'or call check("q1", lab="00")')
    return get_lab(lab)


def _notebook_globals() -> dict[str, Any]:
    """The global variables of the code that called ``check``/``check_all``: the notebook's."""
    frame = inspect.currentframe()  # this function; f_back is check(), and its f_back the notebook cell
    try:
        caller = frame.f_back.f_back if frame is not None and frame.f_back is not None else None
        if caller is None:
            raise RuntimeError("check() reads the notebook's variables from its caller's frame, which this Python "
                               "does not expose: call minilm.grading.self_check(lab, 'q1', globals()) instead")
        return caller.f_globals
    finally:
        del frame  # a frame kept alive holds every local of the notebook cell (inspect's advice)


def check(question: str, lab: str | None = None, mode: str | None = None) -> None:
    """Check ``question`` on this notebook's objects and print the verdict.

    Self-study mode (the default) runs every check, hidden inputs and measured values included, and
    prints the points earned; class mode (``minilm release --class-mode``, or ``MINILM_MODE=class``)
    runs the public checks only. ``mode="self"``/``"class"`` overrides (see ``minilm.grading.selfcheck``).
    """
    namespace = _notebook_globals()
    print(self_check(_lab_for(lab, namespace), question, namespace, mode=mode).text)


def check_all(lab: str | None = None, mode: str | None = None) -> None:
    """Check every question and print the total: the score (self-study) or what public checks carry (class)."""
    namespace = _notebook_globals()
    print(check_report(_lab_for(lab, namespace), namespace, mode=mode))
