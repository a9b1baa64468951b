"""The labs' landing page, labs/README.md: every registered lab in order, links that open from
inside the served `labs/` folder (the chapters through the `labs/course` link), and the README's
install commands in the order a person types them, ending with the command that opens the page.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from minilm.labs import available_labs, get_lab

REPO = Path(__file__).resolve().parents[1]
LABS = REPO / "labs"
LANDING = LABS / "README.md"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _links(text: str) -> list[str]:
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]  # local links only


def _rows() -> dict[str, list[str]]:
    rows = {}
    for line in LANDING.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and re.fullmatch(r"\d\d", cells[0]):
            rows[cells[0]] = cells
    return rows


def test_landing_page_lists_every_registered_lab_in_order_with_times():
    rows = _rows()
    assert list(rows) == available_labs(), "labs/README.md must list exactly the registered labs, in order"
    for lab_id, cells in rows.items():
        stem = get_lab(lab_id).stem
        notebook, chapter, fast, full = cells[1:5]
        assert f"]({stem}.ipynb)" in notebook and f"](course/{stem}.md)" in chapter, cells
        assert re.search(r"\d.*min", fast), f"lab {lab_id}: fast-mode time estimate missing: {fast!r}"
        assert full, f"lab {lab_id}: full-mode time estimate missing"


def test_chapters_reach_the_served_folder_through_a_relative_link():
    link = LABS / "course"
    assert link.is_symlink() and os.readlink(link) == "../course", "labs/course must be the link ../course"
    assert link.resolve() == (REPO / "course").resolve()


def test_every_link_resolves_and_all_but_the_github_one_stay_inside_labs():
    text = LANDING.read_text(encoding="utf-8")
    links = _links(text)
    assert len(links) >= 2 * len(available_labs())
    outside = [t for t in links if t.startswith("../")]
    assert outside == ["../course/README.md"] and "on GitHub" in text  # the note for GitHub readers only
    for target in links:
        path = (LABS / target.split("#")[0]).resolve()
        assert path.exists(), f"labs/README.md links to {target}, which does not exist"


def test_jupyter_serves_every_link_from_the_labs_folder():
    """Jupyter's file manager, rooted at labs/ as `jupyter lab labs/` roots it, opens every inside link."""
    pytest.importorskip("jupyter_server")
    from jupyter_server.services.contents.filemanager import FileContentsManager

    manager = FileContentsManager(root_dir=str(LABS))
    for target in _links(LANDING.read_text(encoding="utf-8")):
        if target.startswith("../"):
            continue
        model = manager.get(target.split("#")[0], content=True)
        assert model["content"], target


def test_readme_install_commands_come_in_the_order_they_are_typed():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Install\n.*?```bash\n(.*?)```", readme, re.S)
    assert block, "README.md needs an Install section with a bash block"
    lines = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.split("#")[0].strip()]
    order = ["python3 -m venv .venv", "source .venv/bin/activate", "pip install torch --index-url "
             "https://download.pytorch.org/whl/cpu", 'pip install -e ".[lab]"', "minilm doctor",
             "jupyter lab labs/README.md"]
    positions = [lines.index(cmd) for cmd in order]
    assert positions == sorted(positions), lines
    assert "macOS" in readme and "Windows" in readme and "Self-study score" in readme
    assert "lab" in _extras(), "pyproject.toml must keep the [lab] extra the README installs"


def _extras() -> set[str]:
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^(\w+)\s*=", section, re.M))
