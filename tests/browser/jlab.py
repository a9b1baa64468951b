"""Drive a notebook in the real JupyterLab, in headless Chromium, the way a student uses it.

One check per notebook (`check_notebook`): open it, wait until the kernel is idle in the status bar,
Run All from the menu, wait for "plot or error" and then for the run to finish (failing as soon as a
forbidden error output appears), then move the first slider with the arrow keys and with a mouse drag
and check that the figure beside it really changed. Screenshots go to `artifacts/screenshots/`.

Error outputs and execution counts are read from JupyterLab's own notebook model (the server runs
with `--LabApp.expose_app_in_browser=True`): in the page an error traceback and a warning printed to
stderr look the same.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:  # playwright is optional: the test skips (or fails in CI) without it
    from playwright.sync_api import Locator, Page

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "artifacts" / "screenshots"

# Student notebooks stop at their first exercise stub; any other error type is a bug in the lab.
STUDENT_ALLOWED_ERRORS = ("NotImplementedError",)
LAB_TIMEOUT_S = 360.0  # whole-notebook limit for a real lab in fast mode
OPEN_TIMEOUT_S = 60.0  # page load
# Kernel start and connection: on a 2-core machine executing another lab beside it (CI runs two test
# processes) the status bar was seen at "Connecting" for over 60 s before the kernel answered.
KERNEL_START_TIMEOUT_S = 150.0
START_TIMEOUT_S = 15.0  # Run All must visibly start something
SLIDER_TIMEOUT_S = 10.0  # widgets render within seconds once the run is over
FIGURE_TIMEOUT_S = 15.0  # the kernel redraws a "See it" figure well within this
POLL_S = 0.25

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class LabCheckFailed(AssertionError):
    """A notebook failed a check. `kind` names which one (tests assert on it); the message says why;
    `focus`, when known, is what the failure screenshot should show."""

    def __init__(self, kind: str, message: str, focus: Locator | None = None):
        super().__init__(message)
        self.kind = kind
        self.focus = focus


@dataclass
class JupyterServer:
    """A running JupyterLab server: where it listens, its token and the folder it serves."""

    url: str  # ends with "/"
    token: str
    root: Path

    def api(self, method: str, path: str) -> object:
        """Call the server's REST API (`path` like "api/sessions"); returns the decoded JSON or None."""
        request = urllib.request.Request(self.url + path, method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def lab_url(self, notebook: str) -> str:
        """URL that opens `notebook` (relative to the server root) in a fresh workspace (`?reset`)."""
        return f"{self.url}lab/tree/{quote(notebook)}?reset&token={self.token}"

    def shutdown_kernels(self) -> None:
        """Shut down every kernel, so that notebooks tested earlier do not keep memory or CPU."""
        for kernel in self.api("GET", "api/kernels") or []:
            self.api("DELETE", f"api/kernels/{kernel['id']}")


@dataclass
class PageLog:
    """Uncaught page errors (these fail the check) and console errors (context for failure messages)."""

    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    @classmethod
    def watch(cls, page: Page) -> PageLog:
        log = cls()
        page.on("pageerror", lambda error: log.page_errors.append(str(error)))
        page.on("console", lambda msg: log.console_errors.append(msg.text) if msg.type == "error" else None)
        return log


@dataclass
class OutputError:
    """An error output of one code cell, traceback without ANSI colours."""

    cell: int  # index of the cell in the notebook, counting from 0
    ename: str
    evalue: str
    traceback: str

    def describe(self) -> str:
        return f"cell {self.cell} raised {self.ename}: {self.evalue}\n{self.traceback}"


@dataclass
class Report:
    """What one check saw: timings in seconds, slider values, errors allowed, screenshots written."""

    notebook: str
    mode: str  # "student" or "solution"
    seconds: dict[str, float] = field(default_factory=dict)
    slider_values: list[str] = field(default_factory=list)  # initial, after keys, after drag
    allowed_errors: list[str] = field(default_factory=list)
    screenshots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def notebook_mode(notebook: str) -> str:
    """"solution" for instructor sources (under a `solutions/` folder), else "student"."""
    return "solution" if "solutions" in Path(notebook).parts else "student"


# JupyterLab's notebook model for the document at `path`: panel id, visibility, and per code cell
# its execution count, whether it is queued or running, whether it is empty (never sent to the
# kernel) and its error outputs.
_STATE_JS = """(path) => {
  const app = window.jupyterapp;
  if (!app || !app.shell) return null;
  for (const w of app.shell.widgets('main')) {
    if (!w.context || w.context.path !== path || !w.content || !w.content.model) continue;
    const cells = w.content.model.cells, code = [];
    for (let i = 0; i < cells.length; i++) {
      const c = cells.get(i);
      if (c.type !== 'code') continue;
      const errors = [];
      for (let j = 0; j < c.outputs.length; j++) {
        const o = c.outputs.get(j).toJSON();
        if (o.output_type === 'error') errors.push({ename: o.ename, evalue: o.evalue, traceback: o.traceback});
      }
      code.push({index: i, count: c.executionCount, running: c.executionState === 'running',
                 empty: !c.sharedModel.getSource().trim(), errors});
    }
    return {id: w.id, current: app.shell.currentWidget === w, visible: w.isVisible, code};
  }
  return {missing: true};
}"""


def notebook_state(page: Page, notebook: str) -> dict | None:
    """The notebook's state from JupyterLab's model (see `_STATE_JS`); None before the app is up."""
    return page.evaluate(_STATE_JS, notebook)


def output_errors(state: dict) -> list[OutputError]:
    """Every error output in the notebook, in cell order."""
    return [OutputError(cell["index"], e["ename"], e["evalue"], _ANSI.sub("", "\n".join(e["traceback"])))
            for cell in state["code"] for e in cell["errors"]]


def _fail_on_errors(page: Page, notebook: str, log: PageLog, allowed: tuple[str, ...]) -> dict:
    """Read the notebook state; raise at once on a forbidden error output or an uncaught page error."""
    state = notebook_state(page, notebook)
    if log.page_errors:
        raise LabCheckFailed("page-error", "uncaught error in the page:\n" + "\n".join(log.page_errors))
    bad = [e for e in output_errors(state) if e.ename not in allowed]
    if bad:
        cell_outputs = page.locator(f'[id="{state["id"]}"] .jp-Cell').nth(bad[0].cell).locator(".jp-Cell-outputArea")
        raise LabCheckFailed("error", "\n\n".join(e.describe() for e in bad), focus=cell_outputs)
    return state


def _poll(condition: Callable[[], object], timeout_s: float, on_timeout: Callable[[], LabCheckFailed]) -> object:
    """Call `condition` until it returns something truthy (returned); raise `on_timeout()` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise on_timeout()
        time.sleep(POLL_S)


def _accept_dialog(page: Page, report: Report) -> None:
    """Accept a dialog the student would accept too (the kernel picker when a notebook names none)."""
    dialog = page.locator(".jp-Dialog")
    if dialog.count() and dialog.first.is_visible():
        report.notes.append("accepted dialog: " + " ".join(dialog.first.inner_text().split())[:200])
        dialog.first.locator(".jp-mod-accept").first.click()


def open_notebook(page: Page, server: JupyterServer, notebook: str, report: Report) -> Locator:
    """Open `notebook` with `?reset` and return its panel, checked visible, current and titled."""
    page.goto(server.lab_url(notebook))

    def opened() -> dict | None:
        _accept_dialog(page, report)
        state = notebook_state(page, notebook)
        return state if state and not state.get("missing") and state["visible"] and state["current"] else None

    state = _poll(opened, OPEN_TIMEOUT_S, lambda: LabCheckFailed(
        "open", f"{notebook} did not open as the visible, current notebook within {OPEN_TIMEOUT_S:.0f} s"))
    tab = page.locator("#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current .lm-TabBar-tabLabel").first
    _poll(lambda: tab.count() and tab.inner_text() == Path(notebook).name, 10, lambda: LabCheckFailed(
        "open", f"current tab is {tab.inner_text()!r}, not {Path(notebook).name!r}"))
    return page.locator(f'[id="{state["id"]}"]')


def kernel_status(page: Page) -> str:
    """The kernel item of the status bar, e.g. "Python 3 (ipykernel) | Idle" ("" when absent)."""
    item = page.locator("#jp-main-statusbar .jp-StatusBar-TextItem[title^='Change kernel']")
    return item.first.inner_text().strip() if item.count() else ""


def wait_for_kernel_idle(page: Page, report: Report, timeout_s: float = KERNEL_START_TIMEOUT_S) -> None:
    """Wait until the status bar says the kernel is idle. The toolbar can say idle earlier, while the
    status bar still says "Initializing", and Run All then runs nothing."""

    def idle() -> bool:
        _accept_dialog(page, report)
        status = kernel_status(page)
        return status.endswith("| Idle") and not status.startswith("No Kernel")

    _poll(idle, timeout_s, lambda: LabCheckFailed(
        "kernel", f"kernel not idle after {timeout_s:.0f} s; status bar says {kernel_status(page)!r}"))


def run_all(page: Page) -> None:
    """Run > Run All Cells, from the menu bar."""
    page.locator("#jp-menu-panel .lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).first.click()
    page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()


def _busy(state: dict) -> bool:
    return any(cell["running"] for cell in state["code"])


def _kernel_died(page: Page) -> LabCheckFailed | None:
    status = kernel_status(page)
    if status.endswith(("| Dead", "| Unknown", "| Restarting", "| Disconnected")):
        return LabCheckFailed("kernel", f"the kernel stopped during the run; status bar says {status!r}")
    return None


def wait_for_run_to_start(page: Page, notebook: str, log: PageLog, allowed: tuple[str, ...],
                          counts_before: list) -> None:
    """Run All must queue or run something within seconds (it silently runs nothing when the kernel
    is not ready)."""

    def started() -> bool:
        state = _fail_on_errors(page, notebook, log, allowed)
        return _busy(state) or [c["count"] for c in state["code"]] != counts_before

    _poll(started, START_TIMEOUT_S, lambda: LabCheckFailed(
        "run", f"Run All ran nothing within {START_TIMEOUT_S:.0f} s; status bar says {kernel_status(page)!r}"))


_FIGURE = "img[src^='data:image'], .jp-RenderedSVG svg"  # a rendered figure: inline PNG/JPEG or SVG
_NEW_FIGURE = "img[src^='data:image']:not([data-minilm-seen]), .jp-RenderedSVG svg:not([data-minilm-seen])"


def _figures(root: Locator) -> int:
    return root.locator(_FIGURE).count()


def wait_for_plot_or_error(page: Page, panel: Locator, notebook: str, log: PageLog, allowed: tuple[str, ...],
                           timeout_s: float) -> str:
    """Wait for the first figure, a forbidden error (raised as LabCheckFailed) or the end of the run;
    returns "plot" or "done". Never waits for the plot alone: a notebook that fails before plotting
    fails in seconds."""

    def plot_or_done() -> str | None:
        state = _fail_on_errors(page, notebook, log, allowed)
        if died := _kernel_died(page):
            raise died
        if _figures(panel):
            return "plot"
        return "done" if not _busy(state) else None

    return _poll(plot_or_done, timeout_s, lambda: LabCheckFailed(
        "timeout", f"{notebook}: no figure and no error after {timeout_s:.0f} s"))


def wait_for_run_complete(page: Page, notebook: str, log: PageLog, allowed: tuple[str, ...],
                          timeout_s: float) -> dict:
    """Wait until no cell is queued or running and the status bar says Idle, twice in a row; fail at
    once on a forbidden error output, an uncaught page error or a dead kernel. Returns the final state."""
    idle_polls = 0

    def complete() -> dict | None:
        nonlocal idle_polls
        state = _fail_on_errors(page, notebook, log, allowed)
        if died := _kernel_died(page):
            raise died
        idle_polls = idle_polls + 1 if not _busy(state) and kernel_status(page).endswith("| Idle") else 0
        return state if idle_polls >= 2 else None

    def timed_out() -> LabCheckFailed:
        state = notebook_state(page, notebook)
        running = [c["index"] for c in state["code"] if c["running"]]
        return LabCheckFailed("timeout", f"{notebook} still running after {timeout_s:.0f} s "
                                         f"(cells queued or running: {running})")

    return _poll(complete, timeout_s, timed_out)


@dataclass
class Slider:
    """The first slider of a notebook: its noUiSlider handle and the cell output area that holds the
    slider and the figure it drives."""

    handle: Locator
    track: Locator
    output_area: Locator

    def value(self) -> str:
        return self.handle.get_attribute("aria-valuenow") or ""


def find_first_slider(panel: Locator, log: PageLog, timeout_s: float = SLIDER_TIMEOUT_S) -> Slider:
    """The first slider in the visible notebook panel; fails fast when a widget shows its error box."""
    handles = panel.locator(".widget-slider .noUi-handle")
    broken = panel.locator(".jupyter-widgets-error-widget")

    def rendered() -> bool:
        if broken.count():
            raise LabCheckFailed("no-slider", "a widget failed to render (JupyterLab shows its error box)"
                                 + _console_context(log), focus=broken.first)
        return handles.count() > 0

    _poll(rendered, timeout_s, lambda: LabCheckFailed(
        "no-slider", f"no slider rendered within {timeout_s:.0f} s of the end of the run (every lab needs an "
                     "ipywidgets slider driving a figure in its See it section, before any exercise)"
                     + _console_context(log)))
    handle = handles.first
    area = handle.locator("xpath=ancestor::div[contains(concat(' ', normalize-space(@class), ' '),"
                          " ' jp-Cell-outputArea ')][1]")
    track = handle.locator("xpath=ancestor::div[contains(concat(' ', normalize-space(@class), ' '),"
                           " ' noUi-target ')][1]")
    return Slider(handle, track, area)


def figure_bytes(area: Locator) -> bytes:
    """The image bytes of every figure in `area`: decoded PNG/JPEG data, or the markup of an SVG."""
    sources = area.evaluate(f"""(a) => [...a.querySelectorAll("{_FIGURE}")]
                                       .map(e => e.tagName.toLowerCase() === 'img' ? e.src : e.outerHTML)""")
    return b"".join(base64.b64decode(s.split(",", 1)[1]) if s.startswith("data:") else s.encode() for s in sources)


def _mark_figures(area: Locator) -> None:
    """Tag the figures on screen now; an untagged one later means the kernel redrew the output."""
    area.evaluate(f"""(a) => a.querySelectorAll("{_FIGURE}").forEach(e => e.dataset.minilmSeen = '1')""")


def _redrawn(area: Locator) -> bool:
    return area.locator(_NEW_FIGURE).count() > 0


def _figure_screenshot(area: Locator) -> bytes:
    """A screenshot of the first figure alone (not the slider, whose readout always changes)."""
    figure = area.locator(_FIGURE).first
    figure.evaluate("(e) => e.tagName.toLowerCase() !== 'img' || e.decode()")  # wait until the image is painted
    return figure.screenshot()


def wait_for_figure_change(page: Page, slider: Slider, before: bytes, how: str,
                           timeout_s: float = FIGURE_TIMEOUT_S) -> bytes:
    """After the slider moved (figures marked before): wait for the kernel to redraw the figure and
    settle (continuous updates while dragging, kernel idle, same bytes twice), then check the bytes
    differ from `before`. A figure that is redrawn identical fails at once, not after a timeout."""
    _poll(lambda: _redrawn(slider.output_area), timeout_s, lambda: LabCheckFailed(
        "figure-unchanged", f"moved the slider {how} (now {slider.value()}) but the figure was not redrawn "
                            f"within {timeout_s:.0f} s", focus=slider.output_area))
    previous = b""

    def settled() -> bytes | None:
        nonlocal previous
        now, previous = previous, figure_bytes(slider.output_area)
        return now if now and now == previous and kernel_status(page).endswith("| Idle") else None

    now = _poll(settled, timeout_s, lambda: LabCheckFailed(
        "figure-unchanged", f"the figure kept changing or the kernel stayed busy for {timeout_s:.0f} s "
                            f"after moving the slider {how}", focus=slider.output_area))
    if now == before:
        raise LabCheckFailed("figure-unchanged", f"moved the slider {how} (now {slider.value()}): the figure was "
                                                 "redrawn with the same image bytes", focus=slider.output_area)
    return now


def move_slider_with_keys(page: Page, slider: Slider) -> None:
    """Focus the handle and press an arrow key twice, towards the end it is farther from."""
    low, high = (float(slider.handle.get_attribute(a) or 0) for a in ("aria-valuemin", "aria-valuemax"))
    key = "ArrowRight" if float(slider.value() or low) < (low + high) / 2 else "ArrowLeft"
    slider.handle.focus()
    page.keyboard.press(key)
    page.keyboard.press(key)


def drag_slider(page: Page, slider: Slider) -> None:
    """Drag the handle with the mouse a third of the track's length, towards the farther end."""
    slider.handle.scroll_into_view_if_needed()
    box, track = slider.handle.bounding_box(), slider.track.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    if slider.handle.get_attribute("aria-orientation") == "vertical":
        step = track["height"] / 3
        target = (x, y - step if y > track["y"] + track["height"] / 2 else y + step)
    else:
        step = track["width"] / 3
        target = (x + step if x < track["x"] + track["width"] / 2 else x - step, y)
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(*target, steps=10)
    page.mouse.up()


def _slider_moved(slider: Slider, before: str, how: str) -> str:
    """The slider's new value; fails when moving it did not change it."""
    return str(_poll(lambda: slider.value() != before and slider.value(), 5, lambda: LabCheckFailed(
        "slider-stuck", f"the slider stayed at {before} after moving it {how}", focus=slider.output_area)))


def check_slider_changes_figure(page: Page, slider: Slider, report: Report, shots: Path, slug: str) -> None:
    """Move the slider with keys, then with a drag; after each the figure's bytes and its screenshot
    must differ from before. Saves the figure before and after."""
    slider.output_area.scroll_into_view_if_needed()
    before = figure_bytes(slider.output_area)
    if not before:
        raise LabCheckFailed("no-figure", "the first slider's cell shows no figure (image or SVG)",
                             focus=slider.output_area)
    shot_before = _figure_screenshot(slider.output_area)
    report.slider_values.append(slider.value())
    for how, move in (("with the arrow keys", move_slider_with_keys), ("with a mouse drag", drag_slider)):
        value_before = slider.value()
        _mark_figures(slider.output_area)
        move(page, slider)
        report.slider_values.append(_slider_moved(slider, value_before, how))
        before = wait_for_figure_change(page, slider, before, how)
    shot_after = _figure_screenshot(slider.output_area)
    report.screenshots += [_save(shots, f"{slug}--figure-before.png", shot_before),
                           _save(shots, f"{slug}--figure-after.png", shot_after)]
    if shot_after == shot_before:
        raise LabCheckFailed("figure-unchanged", "the figure's image bytes changed but its screenshot did not")


def _save(folder: Path, name: str, png: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(png)
    return folder / name


def _scroll_to_centre(element: Locator) -> None:
    element.evaluate("(e) => e.scrollIntoView({block: 'center'})", timeout=5000)


def _console_context(log: PageLog) -> str:
    if not log.console_errors:
        return ""
    return "\nbrowser console errors (last 5):\n" + "\n".join(m.splitlines()[0][:300] for m in log.console_errors[-5:])


def slug(notebook: str) -> str:
    """A file name for a notebook's screenshots: "solutions/01_x.ipynb" -> "labs-solutions-01_x"."""
    return Path(notebook).with_suffix("").as_posix().replace("/", "-")


def check_notebook(page: Page, server: JupyterServer, notebook: str, *, mode: str | None = None,
                   timeout_s: float = LAB_TIMEOUT_S, shots: Path = SCREENSHOTS) -> Report:
    """Open `notebook` (path relative to the server root) in JupyterLab, Run All, and check it as a
    student sees it; raise LabCheckFailed (with the traceback, and a screenshot saved) on any failure.

    Student notebooks ("student" mode) may only raise NotImplementedError, where Run All stops;
    solution notebooks may raise nothing and every code cell must have run. In both, the first slider
    must render and moving it (keys, then a drag) must change the figure beside it.
    """
    mode = mode or notebook_mode(notebook)
    allowed = STUDENT_ALLOWED_ERRORS if mode == "student" else ()
    report, log, name = Report(notebook, mode), PageLog.watch(page), slug(notebook)
    if mode != notebook_mode(notebook):
        name += f"--as-{mode}"  # keep the screenshots of the notebook's own check
    t0 = time.monotonic()

    def lap(phase: str) -> None:
        report.seconds[phase] = round(time.monotonic() - t0, 1)

    try:
        panel = open_notebook(page, server, notebook, report)
        lap("opened")
        wait_for_kernel_idle(page, report)
        lap("kernel_idle")
        counts = [c["count"] for c in notebook_state(page, notebook)["code"]]
        run_all(page)
        wait_for_run_to_start(page, notebook, log, allowed, counts)
        if wait_for_plot_or_error(page, panel, notebook, log, allowed, timeout_s) == "plot":
            lap("first_plot")
        state = wait_for_run_complete(page, notebook, log, allowed, timeout_s - (time.monotonic() - t0))
        lap("run_complete")
        report.allowed_errors = [e.ename for e in output_errors(state)]
        not_run = [c["index"] for c in state["code"] if c["count"] is None and not c["empty"]]
        if mode == "solution" and not_run:
            raise LabCheckFailed("incomplete", f"cells {not_run} never ran (Run All stopped early)")
        slider = find_first_slider(panel, log)
        check_slider_changes_figure(page, slider, report, shots, name)
        lap("slider_checked")
        if log.page_errors:
            raise LabCheckFailed("page-error", "uncaught error in the page:\n" + "\n".join(log.page_errors))
        _scroll_to_centre(slider.output_area)
        report.screenshots.insert(0, _save(shots, f"{name}.png", page.screenshot()))
    except Exception as error:
        if isinstance(error, LabCheckFailed) and error.focus is not None:
            try:  # show the failing cell or widget; the screenshot is taken whatever happens here
                _scroll_to_centre(error.focus)
            except Exception:  # noqa: BLE001
                pass
        shot = _save(shots, f"{name}--failed.png", page.screenshot())
        if isinstance(error, LabCheckFailed):
            where = f"{notebook} ({mode} notebook) failed after {time.monotonic() - t0:.1f} s"
            raise LabCheckFailed(error.kind, f"{where}: {error}\nscreenshot: {shot}") from None
        raise
    lap("total")
    return report
