"""The version ranges pyproject.toml admits are the ones CI tests.

.ci/run runs the README's test command on today's releases, then the unit tests once more in a second venv
on the oldest releases pyproject.toml admits, pinned in .ci/oldest.txt. These tests keep the two files in
step (a floor raised or lowered in one place only would leave an untested version admitted) and keep the
README's install notes quoting the same floors.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # the tests run on 3.11+; the package itself stays 3.10 (test_python310)

REPO = Path(__file__).resolve().parents[1]
FLOOR = re.compile(r"^([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)")


def _floors() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    floors = {}
    for requirement in project["dependencies"]:
        match = FLOOR.match(requirement)
        assert match, f"every runtime dependency needs a floor (name>=version): {requirement!r}"
        floors[match.group(1).lower()] = match.group(2)
    return floors


def _pins() -> dict[str, str]:
    text = (REPO / ".ci" / "oldest.txt").read_text(encoding="utf-8")
    return {name.lower(): version for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", text, re.M)}


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0]))


def test_ci_pins_every_runtime_dependency_at_its_floor():
    floors, pins = _floors(), _pins()
    assert set(pins) == set(floors), f".ci/oldest.txt pins {sorted(pins)}, pyproject.toml has {sorted(floors)}"
    for name, floor in floors.items():
        # A floor may be written short (numpy>=1.24 admits 1.24.0): the pin is the oldest release it admits.
        pin = _release(pins[name])
        assert pin[: len(_release(floor))] == _release(floor), f"{name}: floor {floor}, CI tests {pins[name]}"
        assert all(p == 0 for p in pin[len(_release(floor)):]), (name, floor, pins[name])


def test_ci_runs_the_readme_command_first_then_the_unit_tests_on_the_oldest_versions():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    main = 'pip install -e ".[dev]" && python -m pytest -q -n 2'
    assert ci.count(main) == 1, ".ci/run's main run is the README's install and test command"
    assert 'pip install -e ".[dev]"' in readme and "`python -m pytest -q -n 2`" in readme
    oldest = ci.index('PIP_CONSTRAINT="$PWD/.ci/oldest.txt"')
    assert ci.index(main) < oldest, "the main run comes first"
    tail = ci[oldest:]
    assert '-m "not slow and not browser"' in tail and "venv" in tail and "importlib.metadata" in tail


def test_readme_quotes_the_floors():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    floors = _floors()
    torch = ".".join(floors["torch"].split(".")[:2])
    assert f"torch {torch}" in readme or f"torch from {torch}" in readme, f"README must quote torch's floor {torch}"
    assert "Python 3.10 or newer" in readme
