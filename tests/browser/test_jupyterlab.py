"""Every lab notebook, run in the real JupyterLab in headless Chromium as a student runs it.

For each `labs/NN_topic.ipynb` (student) and `solutions/NN_topic.ipynb` (instructor source)
present at collection time: Run All in fast mode, no error outputs (students: NotImplementedError
only), no uncaught page errors, and the first slider's figure changes when the slider moves by keys
and by a mouse drag. The fixture notebooks prove that the check passes a good notebook and fails,
in seconds and with the reason, a notebook that raises, whose widget never renders, or whose
slider does not change its figure. See docs/browser-tests.md.
"""

import pytest
from jlab import REPO, LabCheckFailed, check_notebook

pytestmark = pytest.mark.browser

LABS = REPO / "labs"
LAB_NOTEBOOKS = [p.relative_to(REPO).as_posix()
                 for p in sorted(LABS.glob("*.ipynb")) + sorted((REPO / "solutions").glob("*.ipynb"))]
FIXTURE_TIMEOUT_S = 120.0  # fixtures finish in seconds; a regression must not hang for the lab limit


@pytest.mark.parametrize("notebook", LAB_NOTEBOOKS)
def test_lab_in_jupyterlab(lab_page, lab_server, notebook, record_property):
    report = check_notebook(lab_page, lab_server, notebook)  # served as labs/... too
    record_property("seconds", report.seconds)
    print(f"{notebook}: {report.seconds}, slider {' -> '.join(report.slider_values)}")


def _check_fixture(lab_page, lab_server, name, **kwargs):
    return check_notebook(lab_page, lab_server, f"fixtures/{name}", timeout_s=FIXTURE_TIMEOUT_S, **kwargs)


def test_good_student_notebook_passes(lab_page, lab_server):
    report = _check_fixture(lab_page, lab_server, "01_good.ipynb")
    assert report.mode == "student"
    assert report.allowed_errors == ["NotImplementedError"]  # Run All stopped at the exercise stub
    initial, after_keys, after_drag = (float(v) for v in report.slider_values)
    assert initial == 3 and after_keys == 5 and after_drag not in (3, 5)  # two ArrowRight steps, then a drag
    assert all(path.stat().st_size > 1000 for path in report.screenshots)
    assert {p.name for p in report.screenshots} == {"fixtures-01_good.png", "fixtures-01_good--figure-before.png",
                                                    "fixtures-01_good--figure-after.png"}


def test_good_solution_notebook_passes(lab_page, lab_server):
    report = _check_fixture(lab_page, lab_server, "solutions/01_good.ipynb")
    assert report.mode == "solution"
    assert report.allowed_errors == []


def test_student_stub_fails_in_a_solution_notebook(lab_page, lab_server):
    with pytest.raises(LabCheckFailed) as failure:
        _check_fixture(lab_page, lab_server, "01_good.ipynb", mode="solution")
    assert failure.value.kind == "error"
    assert "NotImplementedError" in str(failure.value) and "double(21)" in str(failure.value)


def test_notebook_that_raises_fails_with_its_traceback(lab_page, lab_server):
    with pytest.raises(LabCheckFailed) as failure:
        _check_fixture(lab_page, lab_server, "02_raises.ipynb")
    message = str(failure.value)
    assert failure.value.kind == "error"  # caught while waiting for "plot or error", not by a timeout
    assert "ValueError: seq_len must be positive, got 0: fixture 02 raises on purpose" in message
    assert "_tokens_per_step(8, 0)" in message  # the traceback itself, without ANSI colours
    assert "\x1b[" not in message
    assert "02_raises--failed.png" in message


def test_widget_that_never_renders_fails(lab_page, lab_server):
    with pytest.raises(LabCheckFailed) as failure:
        _check_fixture(lab_page, lab_server, "03_no_widget.ipynb")
    assert failure.value.kind == "no-slider"
    assert "minilm-missing-widgets" in str(failure.value)  # the browser console's reason, quoted


def test_slider_that_does_not_change_the_figure_fails(lab_page, lab_server):
    with pytest.raises(LabCheckFailed) as failure:
        _check_fixture(lab_page, lab_server, "04_static_figure.ipynb")
    assert failure.value.kind == "figure-unchanged"
    assert "with the arrow keys" in str(failure.value)
