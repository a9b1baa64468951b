"""The grading engine: self-checks, a tamper-resistant class grader, releases, reports.

It knows no lab by name: every entry point takes a ``Lab`` (the declared questions), which the
course package ``minilm.labs`` looks up by id (``minilm.labs.get_lab("03")``).

- In a notebook: ``from minilm.labs import check, check_all`` then ``check("q1")`` (the notebook's
  ``LAB = "NN"`` names the lab; ``self_check`` below does the work).
- From Python: ``grade_notebook(path, lab)`` (sandboxed child process), ``grade_objects(lab, {...})``
  (trusted objects, no notebook), ``release_lab(solution, out, lab=lab)``, ``is_stale(solution, student)``.
- From the shell: ``minilm release``, ``minilm check``, ``minilm grade``, ``minilm gradescope``
  (``minilm.grading.cli``, registered by ``minilm.cli`` with the course's lab lookup).
- Declaring a lab's questions: see ``minilm.grading.questions``; the threat model is in
  docs/grading.md.
"""

from minilm.grading.grader import GradeResult, Limits, grade_many, grade_notebook, grade_objects, reference_namespace
from minilm.grading.notebook import is_stale, make_release
from minilm.grading.questions import Case, Hidden, Lab, Question, choice_question, function_question, value_question
from minilm.grading.release import ReleaseError, release_lab
from minilm.grading.selfcheck import check_report, self_check

__all__ = [
    "Case", "GradeResult", "Hidden", "Lab", "Limits", "Question", "ReleaseError", "check_report",
    "choice_question", "function_question", "grade_many", "grade_notebook", "grade_objects",
    "is_stale", "make_release", "reference_namespace", "release_lab", "self_check", "value_question",
]
