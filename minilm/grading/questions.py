"""Declaring a lab's graded questions.

Each lab declares its questions in ``minilm/labs/labNN.py`` as a module-level ``LAB`` (the demo
lab ``minilm/labs/demo.py`` is a complete, tested example); the engine is handed that ``Lab`` and
never looks a lab up by its id::

    import numpy as np
    from minilm.grading.questions import Case, Hidden, Lab, choice_question, function_question, value_question

    def softmax_ref(x):                              # the reference solution, run by the grader
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    LAB = Lab("99", "demo", "Demo lab", [
        function_question(
            "q1", points=3, target="softmax", reference=softmax_ref,
            title="Implement a numerically stable softmax",
            public=[(np.array([1.0, 2.0, 3.0]),)],  # argument tuples, visible to check("q1")
            hidden=[Hidden(lambda rng: (rng.normal(size=(4, 6)) * 300,), n=3)],  # drawn at grading
            rtol=1e-6, atol=1e-12, hint="subtract the row maximum before exponentiating",
            wrong=[lambda x: np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True)],
        ),
        value_question("q2", 2, target="nll", reference=nll_ref, params={"SEED": 0},
                       atol=1e-6, hint="average over tokens, natural log", wrong=[0.0]),
        choice_question("q3", 1, target="why_max", choices={"a": "...", "b": "..."}, answer="b"),
    ])

Kinds of question:

- ``function_question``: the notebook defines a function ``target``; it is called on the public
  inputs and on hidden inputs drawn from a seed chosen at grading time, and each result is
  compared with ``reference`` on the same inputs. Points are split over the checks by weight
  (partial credit).
- ``value_question``: the notebook sets a variable ``target``; its value is compared with a
  constant ``answer`` or with ``reference(**params)``. A *measured* value (a loss the notebook
  trained for) must not be compared with anything the notebook itself computes, since the student
  controls the notebook: ``reference`` recomputes it in the trusted grader, from the notebook's
  parameters named in ``params`` (read from the notebook as plain numbers/strings; the values given
  are the defaults used by ``minilm release``), with a tolerance derived from the measurement's
  noise across machines. Keep the reference cheap (fast mode), validate the parameters it receives
  (raise ``ValueError`` on anything out of range), and the grader caches it per parameter set.
- ``choice_question``: multiple choice, a value question whose answer is one of ``choices``.

Every question declares at least one known-wrong answer (``wrong=[...]``: functions for function
questions, values for value questions); ``minilm release`` refuses a lab where one scores full.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

KINDS = ("function", "value")


class _NoAnswer:
    def __repr__(self) -> str:
        return "NO_ANSWER"


NO_ANSWER = _NoAnswer()


@dataclass(frozen=True)
class Case:
    """One set of inputs for a function question: ``target(*args, **kwargs)``.

    A plain tuple in ``public=[...]`` means ``Case(args=that_tuple)``. ``label`` names the case in
    messages (e.g. "large logits"); ``weight`` is its share of the question's points.
    """

    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""
    weight: float = 1.0


@dataclass(frozen=True)
class Hidden:
    """``n`` hidden checks whose inputs ``inputs(rng)`` draws from a grading-time seed.

    ``inputs`` takes a ``numpy.random.Generator`` and returns a tuple of arguments or a ``Case``.
    Make it cover the cases a wrong answer gets wrong (large values, odd shapes): ``minilm
    release`` checks that every known-wrong answer fails on several seeds.
    """

    inputs: Callable[[Any], tuple | Case]
    n: int = 3
    label: str = ""
    weight: float = 1.0


@dataclass(frozen=True)
class Question:
    """One graded question; build it with ``function_question``, ``value_question`` or ``choice_question``."""

    name: str
    points: float
    kind: str
    target: str
    title: str = ""
    reference: Callable | None = None
    answer: Any = NO_ANSWER
    public: tuple[Case, ...] = ()
    hidden: tuple[Hidden, ...] = ()
    choices: Mapping[str, str] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    rtol: float = 1e-6
    atol: float = 1e-9
    equal_nan: bool = False
    hint: str = ""
    wrong: tuple = ()
    pure: bool = False  # function questions: also fail a call that changes its inputs in place

    def __post_init__(self) -> None:
        where = f"question {self.name!r}"
        if not re.fullmatch(r"[A-Za-z][\w.-]{0,31}", str(self.name)):
            raise ValueError(f"{where}: name must be short, e.g. 'q1'")
        if not _is_identifier(self.target):
            raise ValueError(f"{where}: target {self.target!r} must be a Python variable name")
        if self.kind not in KINDS:
            raise ValueError(f"{where}: kind must be one of {KINDS}, not {self.kind!r}")
        if not (isinstance(self.points, (int, float)) and self.points > 0):
            raise ValueError(f"{where}: points must be a positive number, got {self.points!r}")
        if self.rtol < 0 or self.atol < 0:
            raise ValueError(f"{where}: rtol and atol must be >= 0")
        if not self.wrong:
            raise ValueError(f"{where}: declare at least one known-wrong answer (wrong=[...])")
        if self.kind == "function":
            if not callable(self.reference):
                raise ValueError(f"{where}: a function question needs reference=<the solution function>")
            if self.answer is not NO_ANSWER or self.choices is not None or self.params:
                raise ValueError(f"{where}: answer/choices/params are for value questions")
            if not self.public and not self.hidden:
                raise ValueError(f"{where}: give public=[...] and/or hidden=[...] inputs")
            if not isinstance(self.pure, bool):
                raise ValueError(f"{where}: pure must be True or False, got {self.pure!r}")
            if any(not callable(w) for w in self.wrong):
                raise ValueError(f"{where}: known-wrong answers of a function question must be functions")
            for c in self.public:
                if c.weight <= 0:
                    raise ValueError(f"{where}: a public case has weight {c.weight}; weights must be > 0")
            for h in self.hidden:
                if not callable(h.inputs) or h.n < 1 or h.weight <= 0:
                    raise ValueError(f"{where}: Hidden needs a callable inputs(rng), n >= 1 and weight > 0")
        else:
            has_answer = self.answer is not NO_ANSWER
            if has_answer == (self.reference is not None):
                raise ValueError(f"{where}: a value question needs exactly one of answer=... or reference=...")
            if self.public or self.hidden:
                raise ValueError(f"{where}: public/hidden inputs are for function questions")
            if self.pure:
                raise ValueError(f"{where}: pure=True is for function questions (a value has no inputs)")
            if self.params and self.reference is None:
                raise ValueError(f"{where}: params are passed to reference=..., which is missing")
            for p in self.params:
                if not _is_identifier(p):
                    raise ValueError(f"{where}: param {p!r} must be a notebook variable name")
            if self.choices is not None and self.answer not in self.choices:
                raise ValueError(f"{where}: answer {self.answer!r} is not one of the choices {list(self.choices)}")

    @property
    def n_hidden(self) -> int:
        """How many graded checks the student cannot run: hidden inputs, or the value's correctness."""
        if self.kind == "value":
            return 1
        return sum(h.n for h in self.hidden)


def _is_identifier(name: object) -> bool:
    return isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)


def _as_case(item: tuple | Case, where: str) -> Case:
    if isinstance(item, Case):
        return item
    if isinstance(item, tuple):
        return Case(args=item)
    raise ValueError(f"{where}: public inputs must be tuples of arguments or Case(...), got {type(item).__name__}")


def function_question(
    name: str,
    points: float,
    *,
    target: str,
    reference: Callable,
    wrong: Sequence[Callable],
    public: Iterable[tuple | Case] = (),
    hidden: Iterable[Hidden] = (),
    title: str = "",
    rtol: float = 1e-6,
    atol: float = 1e-9,
    equal_nan: bool = False,
    hint: str = "",
    pure: bool = False,
) -> Question:
    """A question probing the notebook's function ``target`` against ``reference`` on inputs.

    ``pure=True``: a call that changes its inputs in place (``m.mul_(beta1)`` on an argument)
    fails that check even when what it returns is right; the probe sends back the inputs as they
    are after the call and the grader compares them with what it sent.
    """
    public = tuple(_as_case(c, f"question {name!r}") for c in public)
    return Question(
        name=name, points=points, kind="function", target=target, title=title, reference=reference,
        public=public, hidden=tuple(hidden), rtol=rtol, atol=atol, equal_nan=equal_nan, hint=hint,
        wrong=tuple(wrong), pure=pure,
    )


def value_question(
    name: str,
    points: float,
    *,
    target: str,
    wrong: Sequence[Any],
    answer: Any = NO_ANSWER,
    reference: Callable | None = None,
    params: Mapping[str, Any] | None = None,
    title: str = "",
    rtol: float = 1e-6,
    atol: float = 1e-9,
    hint: str = "",
) -> Question:
    """A question comparing the notebook's variable ``target`` with ``answer`` or ``reference(**params)``."""
    return Question(
        name=name, points=points, kind="value", target=target, title=title, reference=reference,
        answer=answer, params=dict(params or {}), rtol=rtol, atol=atol, hint=hint, wrong=tuple(wrong),
    )


def choice_question(
    name: str,
    points: float,
    *,
    target: str,
    choices: Mapping[str, str],
    answer: str,
    wrong: Sequence[str] | None = None,
    title: str = "",
    hint: str = "",
) -> Question:
    """Multiple choice: the notebook sets ``target`` to one key of ``choices``; ``answer`` is right.

    Every other choice is a known-wrong answer unless ``wrong`` says otherwise.
    """
    if not choices or not all(isinstance(k, str) for k in choices):
        raise ValueError(f"question {name!r}: choices must map answer strings to their text")
    wrong = tuple(wrong) if wrong is not None else tuple(k for k in choices if k != answer)
    return Question(
        name=name, points=points, kind="value", target=target, title=title, answer=answer,
        choices=dict(choices), hint=hint, wrong=wrong, rtol=0.0, atol=0.0,
    )


@dataclass(frozen=True)
class Lab:
    """A lab's graded questions: ``Lab("00", "language_models", "Language models", [questions])``.

    ``id`` is the two-digit lab number; the notebooks are ``solutions/<id>_<topic>.ipynb``
    (instructor source) and ``labs/<id>_<topic>.ipynb`` (student version).
    """

    id: str
    topic: str
    title: str
    questions: tuple[Question, ...]

    def __post_init__(self) -> None:
        if not re.fullmatch(r"\d\d", str(self.id)):
            raise ValueError(f"lab id must be two digits like '03', got {self.id!r}")
        if not re.fullmatch(r"[a-z0-9_]+", str(self.topic)):
            raise ValueError(f"lab {self.id}: topic must be lower_snake_case, got {self.topic!r}")
        object.__setattr__(self, "questions", tuple(self.questions))
        if not self.questions:
            raise ValueError(f"lab {self.id}: declare at least one question")
        names = [q.name for q in self.questions]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"lab {self.id}: question names must be unique, repeated: {dupes}")

    @property
    def stem(self) -> str:
        """The notebook file name without extension, e.g. ``"99_demo"``."""
        return f"{self.id}_{self.topic}"

    @property
    def total_points(self) -> float:
        return float(sum(q.points for q in self.questions))

    def question(self, name: str) -> Question:
        """The question called ``name``; a ``ValueError`` lists the valid names otherwise."""
        for q in self.questions:
            if q.name == name:
                return q
        names = [q.name for q in self.questions]
        raise ValueError(f"lab {self.id} has no question {name!r}; its questions are {names}")


def require_lab(lab: object) -> Lab:
    """``lab`` itself when it is a ``Lab``; a ``ValueError`` saying how to get one otherwise.

    The engine knows no lab by name (the course package ``minilm.labs`` does), so it takes the
    declared ``Lab``, never an id like ``"03"``.
    """
    if isinstance(lab, Lab):
        return lab
    hint = f"minilm.labs.get_lab({lab!r})" if isinstance(lab, (str, int)) else "minilm.labs.get_lab('03')"
    raise ValueError(f"expected a Lab (the declared questions), got {lab!r}: look a lab up by its id with {hint}")
