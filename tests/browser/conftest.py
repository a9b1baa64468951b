"""Session fixtures for the browser tests: one JupyterLab server and one headless Chromium per session.

The server serves a temporary copy of the repository's `labs/` folder (as `labs/`) and of
`tests/fixtures/browser/` (as `fixtures/`), so autosaved outputs never touch the repository. It
listens on 127.0.0.1 on a port the OS picks, with a token and its own settings, workspaces, runtime,
config and data folders, and news and update checks turned off.

Without playwright or Chromium the tests skip, except when the environment variable CI is set: then
they fail, so that CI never skips them silently.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from jlab import REPO, JupyterServer

CHROMIUM = os.environ.get("MINILM_CHROMIUM", "/usr/bin/chromium")  # Debian's package; never `playwright install`
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_TIMEOUT_S = 90.0

# User settings: no news or update toasts covering the notebook.
_SETTINGS = {"@jupyterlab/apputils-extension/notification.jupyterlab-settings":
             {"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True}}


def _require_browser_stack() -> None:
    """Skip (locally) or fail (when CI is set) if something the browser tests need is missing."""
    missing = []
    for module, package in (("playwright.sync_api", "playwright"), ("jupyterlab", "jupyterlab"),
                            ("ipywidgets", "ipywidgets"), ("ipykernel", "ipykernel")):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"{package} is not installed (pip install {package})")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"no Chromium at {CHROMIUM} (apt-get install chromium fonts-dejavu-core, "
                       "or set MINILM_CHROMIUM)")
    if not missing:
        return
    reason = "browser tests need: " + "; ".join(missing)
    if os.environ.get("CI"):
        pytest.fail(reason + " -- CI is set, so this is a failure, not a skip", pytrace=False)
    pytest.skip(reason)


def _server_env(work: Path) -> dict[str, str]:
    """The server's environment, inherited by its kernels: private Jupyter folders, fast mode, inline plots."""
    env = dict(os.environ)
    for var, sub in (("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_CONFIG_DIR", "config"),
                     ("JUPYTER_DATA_DIR", "data"), ("IPYTHONDIR", "ipython")):
        (work / sub).mkdir()
        env[var] = str(work / sub)
    env["MINILM_FAST"] = "1"
    env["MINILM_RESULTS_DIR"] = str(work / "results")  # the labs' records (minilm.records): never the checkout
    # The test run sets MPLBACKEND=Agg, which kernels would inherit and then never show a figure.
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    # Kernels run in the temporary copy of labs/; make them import this checkout's minilm.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _wait_for_server(process: subprocess.Popen, runtime: Path, log: Path) -> str:
    """The server's URL, once it answers HTTP.

    The URL comes from the jpserver-*.json file the server writes in its (private) runtime
    folder. The file can appear a moment before the socket accepts connections (seen once in
    CI as "Connection refused"), so the server must also answer a request, with any status.
    """
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {process.returncode}:\n{log.read_text()[-3000:]}")
        for info_file in runtime.glob("jpserver-*.json"):
            try:
                url = json.loads(info_file.read_text())["url"]
            except (json.JSONDecodeError, KeyError):
                continue  # written but not flushed yet
            try:
                urllib.request.urlopen(url + "api/status", timeout=5).close()
                return url
            except urllib.error.HTTPError:
                return url  # it answered (403 without the token): it is serving
            except OSError:
                pass  # not accepting connections yet
        time.sleep(0.2)
    raise RuntimeError(f"JupyterLab did not start within {SERVER_START_TIMEOUT_S:.0f} s:\n{log.read_text()[-3000:]}")


def _stop_server(process: subprocess.Popen, server: JupyterServer | None) -> None:
    if server is not None and process.poll() is None:
        try:
            server.shutdown_kernels()
            server.api("POST", "api/shutdown")
            process.wait(timeout=15)
        except Exception:  # noqa: BLE001 - the process is terminated below whatever went wrong
            pass
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory) -> JupyterServer:
    """A JupyterLab server for the whole session, serving copies of labs/ and the browser fixtures."""
    _require_browser_stack()
    work = tmp_path_factory.mktemp("jupyterlab")
    root = work / "root"
    skip = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "results")
    if (REPO / "labs").is_dir():
        shutil.copytree(REPO / "labs", root / "labs", ignore=skip)
    if (REPO / "solutions").is_dir():  # the instructor sources, beside labs/ (not served to students)
        shutil.copytree(REPO / "solutions", root / "solutions", ignore=skip)
    shutil.copytree(REPO / "tests" / "fixtures" / "browser", root / "fixtures", ignore=skip)
    for name, values in _SETTINGS.items():
        (work / "settings" / name).parent.mkdir(parents=True, exist_ok=True)
        (work / "settings" / name).write_text(json.dumps(values))
    token = secrets.token_hex(16)
    env = _server_env(work)
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
               "--ip=127.0.0.1", "--port=0",  # port 0: the OS picks a free port; the server reports it
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
               f"--LabApp.user_settings_dir={work / 'settings'}", f"--LabApp.workspaces_dir={work / 'workspaces'}",
               "--LabApp.expose_app_in_browser=True",  # jlab reads error outputs from the notebook model
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False"]
    log = work / "server.log"
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, env=env, cwd=root, stdout=log_file, stderr=subprocess.STDOUT)
    server = None
    try:
        server = JupyterServer(_wait_for_server(process, work / "runtime", log), token, root)
        yield server
    finally:
        _stop_server(process, server)


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium (Debian's) for the session."""
    _require_browser_stack()
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()
    finally:
        playwright.stop()


@pytest.fixture
def lab_page(browser, lab_server):
    """A fresh browser context and page per test; afterwards the page closes and every kernel stops."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()
        lab_server.shutdown_kernels()
