"""The literal settings of a lab's solution notebook, read without running it (shared by tests/test_labNN.py).

Each lab's tests check that the notebook trains with the settings its graded references recompute
with; reading them from the source keeps that check seconds long.
"""

from __future__ import annotations

import ast
import json

from minilm.labs.runner import find_lab


def notebook_settings(lab_id: str, marker: str = "MODEL = ") -> tuple[dict, str]:
    """(name -> literal value, source) of the first code cell of lab ``lab_id``'s solution notebook that
    contains ``marker``; ``X = a if FAST else b`` gives the fast branch ``a``."""
    nb = json.loads(find_lab(lab_id).solution.read_text())
    source = next("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"
                  and marker in "".join(c["source"]))
    settings = {}
    for node in ast.parse(source.replace("%matplotlib inline", "")).body:
        if isinstance(node, ast.Assign):
            value = node.value.body if isinstance(node.value, ast.IfExp) else node.value  # FAST's branch
            try:
                literal = ast.literal_eval(value)
            except ValueError:
                continue
            for target in node.targets:
                if isinstance(target, ast.Tuple):
                    settings.update({t.id: v for t, v in zip(target.elts, literal)})
                else:
                    settings[target.id] = literal
    return settings, source
