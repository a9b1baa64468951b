"""Grading the labs: self-checks in the notebook, a tamper-resistant class grader, releases.

- In a notebook: ``from minilm.grading import check, check_all`` then ``check("q1")``.
- From Python: ``grade_notebook(path)`` (sandboxed child process), ``grade_objects(lab, {...})``
  (trusted objects, no notebook), ``release_lab(solution, out)``, ``is_stale(solution, student)``.
- From the shell: ``minilm release``, ``minilm check``, ``minilm grade``, ``minilm gradescope``.
- Declaring a lab's questions: see ``minilm.grading.questions``; the threat model is in
  docs/grading.md.
"""

from minilm.grading.grader import GradeResult, Limits, grade_many, grade_notebook, grade_objects, reference_namespace
from minilm.grading.labs import get_lab
from minilm.grading.notebook import is_stale, make_release
from minilm.grading.questions import Case, Hidden, Lab, Question, choice_question, function_question, value_question
from minilm.grading.release import ReleaseError, release_lab
from minilm.grading.selfcheck import check, check_all, self_check

__all__ = [
    "Case", "GradeResult", "Hidden", "Lab", "Limits", "Question", "ReleaseError", "check", "check_all",
    "choice_question", "function_question", "get_lab", "grade_many", "grade_notebook", "grade_objects",
    "is_stale", "make_release", "reference_namespace", "release_lab", "self_check", "value_question",
]
