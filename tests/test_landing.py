"""The labs' landing page, labs/README.md: every registered lab in order, links that open from
inside the served `labs/` folder (the chapters through the `labs/course` link), and the README's
install commands in the order a person types them, ending with the command that opens the page.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import shutil
import subprocess
import sys
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


def _browser_helpers():
    browser_dir = REPO / "tests" / "browser"
    if str(browser_dir) not in sys.path:
        sys.path.insert(0, str(browser_dir))  # conftest imports its sibling jlab.py
    spec = importlib.util.spec_from_file_location("browser_conftest_helpers_landing", browser_dir / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_command_opens_the_landing_page_and_serves_the_chapters(tmp_path):
    """`jupyter lab labs/README.md` (no browser): serves labs/, opens README.md, and the chapters load."""
    if importlib.util.find_spec("jupyterlab") is None:
        if os.environ.get("CI"):
            pytest.fail("jupyterlab is not installed -- CI is set, so this is a failure, not a skip", pytrace=False)
        pytest.skip("jupyterlab is not installed (pip install -e '.[lab]')")
    helpers = _browser_helpers()
    env = helpers._server_env(tmp_path)
    token = secrets.token_hex(16)
    beside = Path(sys.executable).with_name("jupyter")
    jupyter = [str(beside)] if beside.is_file() else [sys.executable, "-m", "jupyter"]
    command = jupyter + [
        "lab", "labs/README.md", "--no-browser", "--allow-root", "--ip=127.0.0.1", "--port=0",
        f"--IdentityProvider.token={token}",
        f"--LabApp.user_settings_dir={tmp_path / 'settings'}", f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
        "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    log = tmp_path / "server.log"
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    server = None
    try:
        url = helpers._wait_for_server(process, tmp_path / "runtime", log)
        server = helpers.JupyterServer(url, token, LABS)
        names = {item["name"]: item["type"] for item in server.api("GET", "api/contents/")["content"]}
        assert names.get("README.md") == "file" and names.get("00_language_models.ipynb") == "notebook", names
        assert names.get("course") == "directory", names
        for lab_id in available_labs():
            chapter = server.api("GET", f"api/contents/course/{get_lab(lab_id).stem}.md")
            assert chapter["type"] == "file" and chapter["content"].startswith("#")
        opens = list((tmp_path / "runtime").glob("jpserver-file-to-run-*-open.html"))
        assert opens and "tree/README.md" in opens[0].read_text(), "the server does not open README.md"
    finally:
        helpers._stop_server(process, server)
        shutil.rmtree(tmp_path / "runtime", ignore_errors=True)
    assert process.poll() is not None
