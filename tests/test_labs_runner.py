import nbformat
import pytest

from minilm.labs import find_lab, inject_parameters, list_labs


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
