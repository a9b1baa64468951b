import nbformat
import pytest

from minilm.labs.runner import find_lab, inject_parameters, list_labs


def _nb(source):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), cell, nbformat.v4.new_code_cell("print(FAST)")]
    return nb


def test_inject_rewrites_the_parameters_cell_in_place():
    nb = _nb("FAST = True\nSTEPS = 100 if FAST else 2000\nSEED = 0")
    inject_parameters(nb, {"FAST": False, "NEW": 3})
    ns = {}
    exec(nb.cells[1].source, ns)
    assert ns["FAST"] is False and ns["STEPS"] == 2000 and ns["SEED"] == 0 and ns["NEW"] == 3


def test_inject_needs_a_parameters_cell():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("FAST = True")]
    with pytest.raises(ValueError, match="parameters"):
        inject_parameters(nb, {"FAST": False})


def test_lab_listing_and_lookup():
    labs = list_labs()
    assert [lab.lab_id for lab in labs] == sorted(lab.lab_id for lab in labs)
    if labs:
        assert find_lab(str(int(labs[0].lab_id))).lab_id == labs[0].lab_id
    with pytest.raises(ValueError, match="no lab"):
        find_lab("98")


def test_setup_follows_minilm_thread_policy_and_says_so_in_one_line(capsys, monkeypatch):
    import torch

    from minilm.labs import setup

    before = torch.get_num_threads()
    monkeypatch.setenv("MINILM_THREADS", "1")
    try:
        assert setup(seed=3, device="cpu") == torch.device("cpu")
        drawn = torch.rand(3)
        assert torch.get_num_threads() == 1  # from $MINILM_THREADS
        assert capsys.readouterr().out.splitlines() == ["minilm lab set-up: device cpu, 1 CPU thread(s), seed 3"]
        torch.manual_seed(3)
        assert torch.equal(drawn, torch.rand(3))  # seeded
        setup(seed=0, device="cpu", threads=2)  # the argument wins over the environment
        assert torch.get_num_threads() == 2
        assert capsys.readouterr().out.splitlines() == ["minilm lab set-up: device cpu, 2 CPU thread(s), seed 0"]
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            setup(threads=0)
    finally:
        torch.set_num_threads(before)


def test_lab_list_command_shows_every_lab_with_its_questions(capsys):
    from minilm.cli import main

    assert main(["lab", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line[:2] for line in lines] == [lab.lab_id for lab in list_labs()]
    assert all("ready (" in line and "graded questions)" in line for line in lines), lines


def test_lab_run_prints_a_score_a_reader_can_parse():
    from types import SimpleNamespace

    from minilm.grading.selfcheck import SelfCheck, total_line
    from minilm.labs.runner import graded_summary, score_line

    lab = SimpleNamespace(total_points=15.0)  # total_line reads only the total
    full = [SelfCheck("q1", 5, 5, 3, 3.0, 15.0, 15.0, True, ["q1: right"], "self")]
    part = [SelfCheck("q1", 2, 5, 3, 3.0, 8.5, 15.0, False, ["q1: 2/5"], "self")]
    assert score_line("Lab 98\n" + total_line(lab, full, "self")) == "score: 15/15 points"
    assert score_line(total_line(lab, part, "self")) == "score: 8.5/15 points"
    assert score_line(total_line(lab, part, "class")).startswith("score: not found")  # never "3 of 3 (out of 15)"
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("check_all()")
    cell.metadata["tags"] = ["graded-summary"]
    cell.outputs = [nbformat.v4.new_output("stream", text=total_line(lab, full, "self") + "\n")]
    nb.cells = [cell, nbformat.v4.new_code_cell("print('record')")]
    assert score_line(graded_summary(nb)) == "score: 15/15 points"
