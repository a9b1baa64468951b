"""``minilm report``: the papers' data file, the verdict rules, the text/JSON output and the command line."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from minilm.cli import main
from minilm.records import figure, read_record, write_record
from minilm.report import (
    PAPERS_FILE,
    REFERENCE_DIR,
    RULES,
    Citation,
    PaperFigure,
    PapersError,
    compare,
    compute_report,
    judge,
    load,
    load_papers,
    report_json,
    report_text,
    run,
    show,
)

ROOT = Path(__file__).resolve().parents[1]
PAPERS = load_papers()
CITE = Citation("Doe, Roe", 2024, "A paper", "2401.00001", "Table 1")
REFERENCE_RECORDS = sorted(REFERENCE_DIR.glob("lab*.json")) if REFERENCE_DIR.is_dir() else []


def paper(kind: str, value: float | None = 1.0, **kw) -> PaperFigure:
    """A paper figure for lab 99's figure ``x`` under a rule of ``kind`` (extra rule keys in ``rule=``)."""
    rule = {"kind": kind, **kw.pop("rule", {})}
    return PaperFigure("p", "99", "x", CITE, rule, "a reason", value=value, **kw)


def write(folder: Path, lab: str, figures: dict, flops: float | None = None) -> Path:
    compute = None if flops is None else {"flops": flops, "tokens": 1e5, "runs": 1.0, "train_seconds": 1.0,
                                          "wall_time_s": 2.0}
    return write_record(lab, figures, mode="fast", seed=0, folder=folder, compute=compute, verbose=False)


# ---------------------------------------------------------------------------------------------
# the papers' data file


def test_every_paper_figure_has_a_complete_citation_and_a_rule():
    assert len(PAPERS.figures) >= 20 and len(PAPERS.budgets) >= 1
    for p in PAPERS.figures + PAPERS.budgets:
        c = p.citation
        assert c.authors and c.title and c.where, p.id
        assert 1990 < c.year < 2030, p.id
        assert re.fullmatch(r"\d{4}\.\d{4,5}", c.arxiv), (p.id, c.arxiv)
        assert p.checked, f"{p.id}: say how the figure was checked against the paper"
    for p in PAPERS.figures:
        assert p.rule["kind"] in RULES and p.why, p.id
        assert re.fullmatch(r"\d\d", p.lab) and re.fullmatch(r"[a-z][a-z0-9_]*", p.figure), p.id
        if p.rule["kind"] != "not_comparable":
            assert p.value is not None or p.claim, f"{p.id}: a judged figure needs a value or the paper's claim"
    assert len({p.id for p in PAPERS.figures}) == len(PAPERS.figures)


def test_the_issue_s_named_comparisons_are_in_the_data_file():
    faced = {(p.lab, p.figure, p.citation.arxiv) for p in PAPERS.figures}
    assert ("01", "alpha", "2203.15556") in faced and ("01", "alpha", "2404.10102") in faced  # Chinchilla, Epoch
    assert ("01", "beta", "2203.15556") in faced and ("01", "beta", "2404.10102") in faced
    assert ("04", "decay_drop", "2404.06395") in faced  # MiniCPM
    assert ("06", "fp8_gap_pct_deepseek", "2412.19437") in faced  # DeepSeek-V3
    assert ("07", "bi_loss_increase", "2403.03853") in faced  # ShortGPT
    chinchilla = next(b for b in PAPERS.budgets if b.id == "chinchilla_70b")
    assert chinchilla.flops == 5.76e23


@pytest.mark.parametrize("entry", PAPERS.figures, ids=lambda p: p.id)
def test_each_paper_figure_faces_a_figure_its_lab_records(entry):
    path = REFERENCE_DIR / f"lab{entry.lab}.json"
    if not path.is_file():
        pytest.skip(f"no reference record for lab {entry.lab} yet ({path} is written by the lab's fast run)")
    names = read_record(path).figures
    if entry.optional and entry.figure not in names:
        pytest.skip(f"{entry.figure} is optional: lab {entry.lab} records it only when its run measures it")
    assert entry.figure in names, f"papers.json faces {entry.figure!r}, which lab {entry.lab} does not record"


def test_load_papers_names_the_broken_entry(tmp_path):
    data = json.loads(PAPERS_FILE.read_text())
    broken = json.loads(json.dumps(data))
    broken["figures"][0]["rule"] = {"kind": "roughly"}
    (tmp_path / "a.json").write_text(json.dumps(broken))
    with pytest.raises(PapersError, match=r"chinchilla_alpha.*rule kind"):
        load_papers(tmp_path / "a.json")
    broken = json.loads(json.dumps(data))
    del broken["papers"]["hoffmann2022"]["arxiv"]
    (tmp_path / "b.json").write_text(json.dumps(broken))
    with pytest.raises(PapersError, match=r"hoffmann2022.*arxiv"):
        load_papers(tmp_path / "b.json")
    broken = json.loads(json.dumps(data))
    broken["figures"][0]["paper"] = "nobody2099"
    (tmp_path / "c.json").write_text(json.dumps(broken))
    with pytest.raises(PapersError, match="nobody2099"):
        load_papers(tmp_path / "c.json")


def test_package_data_ships_the_papers_file():
    # (tomllib is Python 3.11+; the package supports 3.10, so the section is read as text)
    section = (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-data]")[1].split("\n[")[0]
    assert re.search(r'^minilm\s*=\s*\[[^]]*"papers\.json"', section, re.M), section
    assert PAPERS_FILE.parent == ROOT / "minilm" and PAPERS_FILE.is_file()


# ---------------------------------------------------------------------------------------------
# verdicts


@pytest.mark.parametrize("value, unc, p, verdict", [
    # interval: the run's value +- 2 unc against the paper's value, value +- 2 SE, or range
    (0.36, 0.01, paper("interval", 0.34), "agree"),         # [0.34, 0.38] touches 0.34
    (0.37, 0.01, paper("interval", 0.34), "disagree"),      # [0.35, 0.39] misses it
    (0.34, None, paper("interval", 0.34), "agree"),         # no uncertainty: the bare values
    (0.35, None, paper("interval", 0.34), "disagree"),
    (0.40, 0.01, paper("interval", 0.3478, uncertainty=0.02), "agree"),     # [0.38, 0.42] vs [0.3078, 0.3878]
    (0.45, 0.01, paper("interval", 0.3478, uncertainty=0.02), "disagree"),  # [0.43, 0.47] vs [0.3078, 0.3878]
    (0.47, 0.01, paper("interval", 0.46, range=(0.454, 0.455)), "agree"),   # [0.45, 0.49] vs [0.454, 0.455]
    (0.47, 0.002, paper("interval", 0.46, range=(0.454, 0.455)), "disagree"),
    # ratio: within a factor of the paper's value
    (2.4, None, paper("ratio", 2.0, rule={"factor": 1.25}), "agree"),
    (2.6, None, paper("ratio", 2.0, rule={"factor": 1.25}), "disagree"),
    (1.5, None, paper("ratio", 2.0, rule={"factor": 1.25}), "disagree"),
    (1.45, 0.1, paper("ratio", 2.0, rule={"factor": 1.25}), "agree"),       # 1.65 is within 1.25x of 2
    (-1.0, None, paper("ratio", 2.0, rule={"factor": 1.25}), "cannot compare"),
    # direction: which side of a threshold, beyond 2 uncertainties
    (0.05, 0.01, paper("direction", None, rule={"side": "above", "threshold": 0.0}), "agree"),
    (0.01, 0.01, paper("direction", None, rule={"side": "above", "threshold": 0.0}), "cannot compare"),
    (-0.05, 0.01, paper("direction", None, rule={"side": "above", "threshold": 0.0}), "disagree"),
    (0.046, 0.004, paper("direction", None, rule={"side": "below", "threshold": 0.0}), "disagree"),
    (0.9, None, paper("direction", None, rule={"side": "below", "threshold": 1.0}), "agree"),
    (1.0, None, paper("direction", None, rule={"side": "below", "threshold": 1.0}), "cannot compare"),
    # bound: against the paper's value, of |x| when absolute
    (-0.1, 0.05, paper("bound", 0.25, rule={"side": "below", "absolute": True}), "agree"),
    (-0.3, 0.01, paper("bound", 0.25, rule={"side": "below", "absolute": True}), "disagree"),
    (0.2, 0.05, paper("bound", 0.25, rule={"side": "below", "absolute": True}), "cannot compare"),
    (0.3, 0.01, paper("bound", 0.25, rule={"side": "below"}), "disagree"),
    # never judged
    (0.25, 0.0, paper("not_comparable", 0.25), "cannot compare"),
])
def test_verdicts(value, unc, p, verdict):
    got, why = judge(value, unc, p)
    assert got == verdict, why
    if verdict != "agree":
        assert "a reason" in why  # the paper's why is shown whenever the run does not simply agree


def test_interval_verdict_against_brute_force():
    """The overlap test against a brute-force scan of both intervals."""
    import numpy as np

    rng = np.random.default_rng(0)
    for _ in range(300):
        v, u, pv, pu = rng.normal(0, 1), abs(rng.normal(0, 0.3)), rng.normal(0, 1), abs(rng.normal(0, 0.3))
        mine = np.linspace(v - 2 * u, v + 2 * u, 2001)
        overlap = bool(np.any(np.abs(mine - pv) <= 2 * pu + 4 * u / 2000))
        edge = min(abs((v - 2 * u) - (pv + 2 * pu)), abs((pv - 2 * pu) - (v + 2 * u)))
        if edge < 1e-3:
            continue  # too close to call by scanning
        got, _ = judge(v, u, paper("interval", pv, uncertainty=pu))
        assert (got == "agree") == overlap, (v, u, pv, pu)


def test_units_must_match_to_be_judged():
    got, why = judge(0.1, None, paper("bound", 0.25, unit="%", rule={"side": "below"}), unit="nats")
    assert got == "cannot compare" and "units differ" in why
    assert judge(0.1, None, paper("bound", 0.25, unit="%", rule={"side": "below"}), unit="%")[0] == "agree"
    # a direction is a sign: nats per token or per character alike
    sign = paper("direction", None, unit="nats", rule={"side": "above", "threshold": 0.0})
    assert judge(0.1, None, sign, unit="nats/token")[0] == "agree"


# ---------------------------------------------------------------------------------------------
# reports on constructed records


@pytest.fixture
def folder(tmp_path):
    write(tmp_path, "01", {"alpha": figure(0.61, "", "fitted alpha", uncertainty=0.05),
                           "beta": figure(0.30, "", uncertainty=0.03), "n_runs": 12}, flops=1e12)
    write(tmp_path, "06", {"fp8_gap_pct_deepseek": figure(0.013, "%", uncertainty=0.05),
                           "fp8_time_vs_fp32_deepseek": figure(3.2)}, flops=2e12)
    write(tmp_path, "04", {"wsd_minus_cosine": figure(0.046, "nats", uncertainty=0.004)})
    return tmp_path


def test_compare_gives_every_recorded_figure_a_row(folder):
    records, errors = load(folder=folder)
    rows = compare(records)
    assert not errors
    by = {(r.lab, r.figure, r.paper_id): r.verdict for r in rows}
    assert by["01", "alpha", "chinchilla_alpha"] == "disagree" and by["01", "alpha", "epoch_alpha"] == "disagree"
    assert by["01", "beta", "chinchilla_beta"] == "agree" and by["01", "beta", "epoch_beta"] == "agree"
    assert by["01", "n_runs", None] == "no paper figure"
    assert by["06", "fp8_gap_pct_deepseek", "deepseek_fp8_gap"] == "agree"
    assert by["06", "fp8_time_vs_fp32_deepseek", "deepseek_fp8_speed"] == "cannot compare"
    assert by["04", "wsd_minus_cosine", "minicpm_wsd_vs_cosine"] == "disagree"
    text = report_text(rows)
    assert all(len(line) <= 100 for line in text.splitlines()), max(text.splitlines(), key=len)
    for name in ("alpha", "beta", "n_runs", "fp8_gap_pct_deepseek", "wsd_minus_cosine"):
        assert re.search(rf"^\d\d\s+{name}\s", text, re.M), name
    assert "arXiv:2203.15556" in text and "arXiv:2412.19437" in text  # the sources are listed


def test_malformed_and_foreign_records_are_reported_and_the_rest_shown(folder, capsys):
    (folder / "junk.json").write_text("{not json")
    (folder / "foreign.json").write_text(json.dumps({"name": "someone else's results"}))
    bad = json.loads((folder / "lab04.json").read_text())
    bad["figures"]["wsd_minus_cosine"]["value"] = "big"
    (folder / "lab05.json").write_text(json.dumps(bad | {"lab": "05"}))
    assert run(folder=folder) == 0
    out, err = capsys.readouterr()
    skipped = [line for line in err.splitlines() if line.startswith("minilm report: skipped")]
    assert len(skipped) == 3
    assert any("junk.json" in s and "not valid JSON" in s for s in skipped)
    assert any("foreign.json" in s and "not a minilm record" in s for s in skipped)
    assert any("lab05.json" in s for s in skipped)
    assert "fp8_gap_pct_deepseek" in out and "wsd_minus_cosine" in out


def test_json_output_parses_with_a_row_per_recorded_figure(folder, capsys):
    assert main(["report", "--folder", str(folder), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == "minilm.report/1" and data["errors"] == []
    recorded = {(r.lab, n) for r in load(folder=folder)[0] for n in r.figures}
    assert {(r["lab"], r["figure"]) for r in data["rows"]} == recorded
    for lab, name in recorded:
        expected = max(1, len(PAPERS.facing(lab, name)))
        assert sum((r["lab"], r["figure"]) == (lab, name) for r in data["rows"]) == expected
    assert main(["report", "06", "--folder", str(folder), "--json"]) == 0
    assert {r["lab"] for r in json.loads(capsys.readouterr().out)["rows"]} == {"06"}


def test_compute_gap_arithmetic(folder):
    records, _ = load(folder=folder)
    gap = compute_report(records)
    assert gap["total_flops"] == pytest.approx(3e12)
    assert gap["labs"] == {"01": 1e12, "06": 2e12} and gap["labs_without_compute"] == ["04"]
    chin = next(b for b in gap["budgets"] if b["id"] == "chinchilla_70b")
    assert chin["ratio"] == pytest.approx(5.76e23 / 3e12)
    assert chin["orders_of_magnitude"] == pytest.approx(math.log10(1.92e11))
    assert any("cannot" in s for s in gap["text"]) and any("trends" in s for s in gap["text"])
    assert compute_report([r for r in records if r.lab == "04"])["budgets"][0]["ratio"] is None


def test_compute_flag_prints_the_gap(folder, capsys):
    assert main(["report", "--folder", str(folder), "--compute"]) == 0
    out = capsys.readouterr().out
    assert "3e+12" in out and "5.76e+23" in out and "orders of magnitude" in out
    assert max(len(line) for line in out.splitlines()) <= 100
    assert main(["report", "--folder", str(folder), "--compute", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["compute"]["total_flops"] == pytest.approx(3e12)


def test_exit_codes(folder, tmp_path, capsys):
    assert main(["report", "--folder", str(folder)]) == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", "--folder", str(empty)]) == 1
    assert "no lab records" in capsys.readouterr().err
    (empty / "junk.json").write_text("[]")
    assert main(["report", "--folder", str(empty)]) == 1  # nothing readable is still nothing
    assert main(["report", "03", "--folder", str(folder)]) == 1  # no record of that lab
    assert main(["report", "4x", "--folder", str(folder)]) == 2  # a bad lab id
    assert main(["report", "--folder", str(folder), "--reference"]) == 2
    assert "not both" in capsys.readouterr().err


def test_show_draws_a_table_and_plots(folder, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    monkeypatch.setattr("matplotlib.pyplot.show", lambda: shown.append("plot"))
    rows = show(folder=folder, compute=True)
    html = shown[0].data
    assert "<table>" in html and "fp8_gap_pct_deepseek" in html and "disagree" in html
    assert "orders of magnitude" in shown[1].data and shown[-1] == "plot"
    assert rows == compare(load(folder=folder)[0])
    assert report_json(rows)["rows"][0]["lab"] == "01"


# ---------------------------------------------------------------------------------------------
# the committed reference records


@pytest.mark.parametrize("path", REFERENCE_RECORDS or [None], ids=lambda p: p.name if p else "none-yet")
def test_reference_report_has_a_row_for_every_recorded_figure(path, capsys):
    if path is None:
        pytest.skip(f"no committed reference records in {REFERENCE_DIR} yet")
    record = read_record(path)
    assert main(["report", record.lab, "--reference", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert {r["figure"] for r in rows} == set(record.figures)
    assert main(["report", record.lab, "--reference"]) == 0
    text = capsys.readouterr().out
    for name in record.figures:
        assert re.search(rf"^{record.lab}\s+{re.escape(name)}\b", text, re.M), name
