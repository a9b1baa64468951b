"""The README's commands, `jupyter lab labs/` and `jupyter lab labs/README.md`, really start JupyterLab serving
the labs (and the landing page with its chapters).

No browser: the server is started exactly as the README says (from the repository root, with
`labs/` as the folder to serve) plus the options a test needs -- no browser, a free port, a
token, `--allow-root` -- and its own Jupyter config, data and runtime folders in a temporary
folder (the environment of tests/browser/conftest.py, whose helpers are reused). The test waits
until the server has written its runtime JSON file and answers HTTP, then asks its REST API for the
folder listing and for the first lab's notebook, and shuts it down. The last test (marked browser) also
opens the page in headless Chromium and reads the file browser's listing: what a student sees first.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from minilm.labs import available_labs, get_lab

REPO = Path(__file__).resolve().parents[1]
LAB_NOTEBOOK = "00_language_models.ipynb"


def _browser_helpers():
    """tests/browser/conftest.py as a module (its fixtures are not registered by this import)."""
    browser_dir = REPO / "tests" / "browser"
    if str(browser_dir) not in sys.path:
        sys.path.insert(0, str(browser_dir))  # conftest imports its sibling jlab.py
    spec = importlib.util.spec_from_file_location("browser_conftest_helpers", browser_dir / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jupyter_command() -> list[str]:
    """`jupyter` of this interpreter (a venv's bin/), else `python -m jupyter`."""
    beside = Path(sys.executable).with_name("jupyter")
    return [str(beside)] if beside.is_file() and os.access(beside, os.X_OK) else [sys.executable, "-m", "jupyter"]


@contextlib.contextmanager
def _jupyter_lab(tmp_path: Path, target: str):
    """`jupyter lab TARGET` started from the repository root as the README says, plus what a test needs (no
    browser, a free port, a token, `--allow-root`, private folders); yields (server, url), then stops it."""
    helpers = _browser_helpers()
    env = helpers._server_env(tmp_path)  # private runtime/config/data/IPython folders
    token = secrets.token_hex(16)
    command = _jupyter_command() + [
        "lab", target, "--no-browser", "--allow-root", "--ip=127.0.0.1", "--port=0",
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
        server = helpers.JupyterServer(url, token, REPO / "labs")
        yield server, url
    finally:
        helpers._stop_server(process, server)
        shutil.rmtree(tmp_path / "runtime", ignore_errors=True)
    assert process.poll() is not None, "the server is still running after shutdown"


def _need_jupyterlab():
    if importlib.util.find_spec("jupyterlab") is None:
        reason = "jupyterlab is not installed (pip install -e '.[lab]')"
        if os.environ.get("CI"):
            pytest.fail(reason + " -- CI is set, so this is a failure, not a skip", pytrace=False)
        pytest.skip(reason)


def test_readme_command_serves_the_labs_folder(tmp_path):
    _need_jupyterlab()
    readme = (REPO / "README.md").read_text()
    assert "jupyter lab labs/" in readme, "the README's main command changed: update this test"
    assert (REPO / "labs" / LAB_NOTEBOOK).is_file(), f"run `minilm release` to create labs/{LAB_NOTEBOOK}"

    with _jupyter_lab(tmp_path, "labs/") as (server, url):
        listing = server.api("GET", "api/contents/")
        names = {item["name"]: item["type"] for item in listing["content"]}
        assert names.get(LAB_NOTEBOOK) == "notebook", f"labs/ is not the served folder: {sorted(names)}"
        assert "solutions" not in names, f"the instructor sources must not be in the served folder: {sorted(names)}"

        nb = server.api("GET", f"api/contents/{LAB_NOTEBOOK}")
        assert nb["type"] == "notebook" and nb["format"] == "json"
        sources = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                   for c in nb["content"]["cells"]]
        assert any("FAST = True" in s for s in sources)  # the student notebook itself, parameters cell and all

        # Without the token the server refuses: the command is not serving the folder to anyone.
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "api/contents/", timeout=10)
        assert refused.value.code == 403


def test_the_landing_page_command_opens_readme_and_serves_the_chapters(tmp_path):
    """`jupyter lab labs/README.md` (the README's command): serves labs/, opens README.md, and the chapters load
    through labs/course."""
    _need_jupyterlab()
    with _jupyter_lab(tmp_path, "labs/README.md") as (server, _):
        names = {item["name"]: item["type"] for item in server.api("GET", "api/contents/")["content"]}
        assert names.get("README.md") == "file" and names.get("00_language_models.ipynb") == "notebook", names
        assert names.get("course") == "directory", names
        for lab_id in available_labs():
            chapter = server.api("GET", f"api/contents/course/{get_lab(lab_id).stem}.md")
            assert chapter["type"] == "file" and chapter["content"].startswith("#")
        opens = list((tmp_path / "runtime").glob("jpserver-file-to-run-*-open.html"))
        assert opens and "tree/README.md" in opens[0].read_text(), "the server does not open README.md"


_LIST_FILE_BROWSER = """
import json, sys
from playwright.sync_api import sync_playwright
url, chromium, flags, shot = json.loads(sys.argv[1])
with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=flags)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        items = page.locator(".jp-DirListing-content .jp-DirListing-itemText")
        items.first.wait_for(timeout=60_000)
        page.wait_for_function("document.querySelectorAll('.jp-DirListing-itemText').length > 8")
        names = [n.strip() for n in items.all_inner_texts()]
        page.screenshot(path=shot)
    finally:
        browser.close()
print(json.dumps(names))
"""


@pytest.mark.browser
def test_the_first_thing_the_file_browser_lists_is_not_the_solutions(tmp_path):
    """What a student sees on the README's command: the file browser's listing of labs/, top to bottom, in
    Chromium. The lab notebooks must come before solutions/ (instructors' sources, answers included)."""
    _need_jupyterlab()
    helpers = _browser_helpers()
    helpers._require_browser_stack()
    import json

    # Chromium is driven from a process of its own: in a pytest worker that already ran the browser tests,
    # their session's Playwright owns a running event loop, and the sync API refuses to start inside it.
    with _jupyter_lab(tmp_path, "labs/README.md") as (server, url):
        args = json.dumps([f"{url}lab/tree/README.md?reset&token={server.token}", helpers.CHROMIUM,
                           list(helpers.CHROMIUM_FLAGS), str(tmp_path / "file-browser.png")])
        proc = subprocess.run([sys.executable, "-c", _LIST_FILE_BROWSER, args], capture_output=True, text=True,
                              timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]
        names = json.loads(proc.stdout.strip().splitlines()[-1])
    print("file browser, top to bottom:", names)
    assert LAB_NOTEBOOK in names and "README.md" in names, names
    assert "solutions" not in names[:names.index(LAB_NOTEBOOK)], f"solutions/ listed before the labs: {names}"
