"""Your numbers beside the papers': every recorded figure of a lab next to the paper figure it faces.

The labs write their measured figures to records (``minilm.records``); the papers' figures live in
one data file shipped with the package, ``minilm/papers.json``, each with its citation (authors,
year, title, arXiv id and the table, figure or section), the lab figure it faces and a rule that
decides the verdict:

- ``interval``: agree when the run's value ± 2 uncertainties overlaps the paper's range (or its
  value ± 2 standard errors, or its bare value); disagree otherwise.
- ``ratio``: agree when the run's value (± 2 uncertainties) comes within ``factor`` of the paper's.
- ``direction``: agree when the run's value lies on the paper's ``side`` of ``threshold`` by more
  than 2 uncertainties, disagree when it lies beyond 2 uncertainties on the other side; in between
  the run cannot tell (its noise straddles the threshold).
- ``bound``: the same test against the paper's own value as the threshold (``absolute``: of |value|).
- ``not_comparable``: the row is shown with the reason, never judged.

Two uncertainties (≈ 95% for a normal error) is the one tolerance used everywhere; a figure recorded
without an uncertainty is compared by its value alone, and the row says so.

``compare`` makes the rows, ``report_text`` prints them for a terminal, ``report_json`` for tools,
``show`` draws them in JupyterLab (an HTML table and one plot per compared figure), and
``compute_report`` sets the training FLOPs the records spent beside the papers' budgets.
``minilm report`` is the command line for all of it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from minilm.records import Record, RecordError, read_records, results_dir

PAPERS_FILE = Path(__file__).with_name("papers.json")
PAPERS_SCHEMA = "minilm.papers/1"
REPORT_SCHEMA = "minilm.report/1"
#: The committed reference records (each lab's fast-mode run), in a clone of the repository.
REFERENCE_DIR = Path(__file__).resolve().parents[1] / "course" / "records"
RULES = ("interval", "ratio", "direction", "bound", "not_comparable")
VERDICTS = ("agree", "disagree", "cannot compare", "no paper figure")
_K = 2.0  # uncertainties either side of a value: the one tolerance of every rule
_CITATION_KEYS = ("authors", "year", "title", "arxiv")


class PapersError(ValueError):
    """The papers' data file is malformed: the message names the entry and what is wrong."""


@dataclass(frozen=True)
class Citation:
    """Where a paper figure comes from: the paper and the place in it."""

    authors: str
    year: int
    title: str
    arxiv: str
    where: str
    short_name: str = ""

    def short(self) -> str:
        """``Hoffmann 2022``: the paper's short name, else the first author's surname and the year."""
        return self.short_name or f"{self.authors.split(',')[0].split()[-1]} {self.year}"

    def paper(self) -> str:
        """The paper alone: authors, year, title, arXiv id."""
        return f"{self.authors} ({self.year}). {self.title}. arXiv:{self.arxiv}."

    def full(self) -> str:
        """The paper and the place in it (table, figure or section)."""
        return f"{self.paper()} {self.where}."


@dataclass(frozen=True)
class PaperFigure:
    """One paper figure and the lab figure it faces, with the rule that judges the pair."""

    id: str
    lab: str
    figure: str
    citation: Citation
    rule: dict
    why: str
    unit: str = ""
    value: float | None = None
    uncertainty: float | None = None
    range: tuple[float, float] | None = None
    claim: str = ""
    checked: str = ""
    optional: bool = False  # the lab records this figure only when its run can measure it

    def paper_text(self) -> str:
        """The paper's figure as printed in a table: ``0.3478 ± 0.02``, ``0.454–0.455``, ``> 0``."""
        if self.value is None:
            kind, side = self.rule["kind"], self.rule.get("side")
            if kind == "direction":
                return f"{'>' if side == 'above' else '<'} {_num(self.rule.get('threshold', 0.0))}"
            return "(claim)"
        text = _num(self.value)
        if self.uncertainty is not None:
            text += f" ± {_num(self.uncertainty, 2)}"
        if self.range is not None:  # the interval is what the rule uses
            text = f"{_num(self.range[0])}–{_num(self.range[1])}"
        if self.rule["kind"] == "direction":  # only the sign is judged: say so beside the paper's number
            text += f" ({'>' if self.rule['side'] == 'above' else '<'}{_num(self.rule.get('threshold', 0.0))})"
        if self.rule["kind"] == "bound":
            sign = "< " if self.rule["side"] == "below" else "> "
            text = ("|x| " if self.rule.get("absolute") else "") + sign + text
        return text


@dataclass(frozen=True)
class Budget:
    """A paper's training compute, for ``compute_report``."""

    id: str
    what: str
    flops: float
    citation: Citation
    checked: str = ""


@dataclass(frozen=True)
class Papers:
    figures: list[PaperFigure]
    budgets: list[Budget]

    def facing(self, lab: str, name: str) -> list[PaperFigure]:
        return [p for p in self.figures if p.lab == lab and p.figure == name]


@dataclass
class Row:
    """One line of the report: a recorded figure, the paper figure it faces (if any) and the verdict."""

    lab: str
    figure: str
    value: float
    uncertainty: float | None
    unit: str
    description: str
    verdict: str
    why: str
    paper_id: str | None = None
    paper: str | None = None  # the paper's figure as text
    paper_value: float | None = None
    paper_uncertainty: float | None = None
    paper_range: list[float] | None = None
    source: str | None = None  # full citation
    cite: str | None = None  # short citation: "Hoffmann 2022"
    where: str | None = None  # the table, figure or section of the paper
    reference: str | None = None  # the paper alone (authors, year, title, arXiv id)
    threshold: float | None = None  # direction and bound rules: the line whose side is judged
    rule: str | None = None
    mode: str | None = None

    def yours(self) -> str:
        text = _num(self.value)
        return text + (f" ± {_num(self.uncertainty, 2)}" if self.uncertainty is not None else "")


# ---------------------------------------------------------------------------------------------
# the papers' data file


def _bad(entry: str, problem: str) -> PapersError:
    return PapersError(f"{PAPERS_FILE.name}: {entry}: {problem}")


def load_papers(path: str | os.PathLike | None = None) -> Papers:
    """Read and validate the papers' data file (default: the one shipped in the package)."""
    path = Path(path) if path is not None else PAPERS_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("schema") != PAPERS_SCHEMA:
        raise _bad("schema", f"expected {PAPERS_SCHEMA!r}, found {data.get('schema')!r}")
    papers = data.get("papers", {})
    for key, paper in papers.items():
        missing = [k for k in _CITATION_KEYS if not paper.get(k)]
        if missing:
            raise _bad(f"paper {key!r}", f"citation lacks {missing}")

    def citation(entry: dict, name: str) -> Citation:
        paper = papers.get(entry.get("paper"))
        if paper is None:
            raise _bad(name, f"names paper {entry.get('paper')!r}, which 'papers' does not list")
        if not entry.get("where"):
            raise _bad(name, "needs 'where' (the table, figure or section of the paper)")
        return Citation(paper["authors"], int(paper["year"]), paper["title"], str(paper["arxiv"]), entry["where"],
                        paper.get("short", ""))

    figures, seen = [], set()
    for entry in data.get("figures", []):
        name = f"figure {entry.get('id')!r}"
        if not entry.get("id") or entry["id"] in seen:
            raise _bad(name, "needs a unique 'id'")
        seen.add(entry["id"])
        lab, fig = str(entry.get("lab", "")), entry.get("figure")
        if len(lab) != 2 or not lab.isdigit() or not fig:
            raise _bad(name, "needs 'lab' (two digits) and 'figure' (the lab's recorded name)")
        rule = entry.get("rule") or {}
        kind = rule.get("kind")
        if kind not in RULES:
            raise _bad(name, f"rule kind must be one of {RULES}, found {kind!r}")
        value = entry.get("value")
        if kind in ("interval", "ratio", "bound") and value is None:
            raise _bad(name, f"a {kind!r} rule needs the paper's 'value'")
        if kind == "ratio" and not rule.get("factor", 0) > 1:
            raise _bad(name, "a 'ratio' rule needs 'factor' > 1")
        if kind in ("direction", "bound") and rule.get("side") not in ("above", "below"):
            raise _bad(name, f"a {kind!r} rule needs 'side': 'above' or 'below'")
        if not entry.get("why"):
            raise _bad(name, "needs a one-line 'why' (shown when the run cannot be compared)")
        rng = entry.get("range")
        if rng is not None and (len(rng) != 2 or rng[0] > rng[1]):
            raise _bad(name, "'range' must be [low, high]")
        figures.append(PaperFigure(
            entry["id"], lab, fig, citation(entry, name), dict(rule), entry["why"], entry.get("unit", ""),
            None if value is None else float(value), entry.get("uncertainty"),
            None if rng is None else (float(rng[0]), float(rng[1])), entry.get("claim", ""), entry.get("checked", ""),
            bool(entry.get("optional", False))))
    budgets = []
    for entry in data.get("budgets", []):
        name = f"budget {entry.get('id')!r}"
        if not entry.get("what") or not entry.get("flops", 0) > 0:
            raise _bad(name, "needs 'what' and 'flops' > 0")
        budgets.append(Budget(entry["id"], entry["what"], float(entry["flops"]), citation(entry, name),
                              entry.get("checked", "")))
    return Papers(figures, budgets)


# ---------------------------------------------------------------------------------------------
# verdicts


def _num(x: float, digits: int = 4) -> str:
    """A number for a table: 4 significant digits, scientific beyond 1e5 or below 1e-3."""
    if x == 0:
        return "0"
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.{max(digits - 1, 1)}e}"
    return f"{x:.{digits}g}"


def _norm_unit(unit: str) -> str:
    return unit.strip().lower().replace(" ", "")


def judge(value: float, uncertainty: float | None, paper: PaperFigure, unit: str = "") -> tuple[str, str]:
    """The verdict (agree / disagree / cannot compare) of a run's ``value`` against ``paper``, and why."""
    kind = paper.rule["kind"]
    if kind == "not_comparable":
        return "cannot compare", paper.why
    # a sign needs no unit; a value compared with the paper's must be in the paper's unit
    if kind != "direction" and unit and paper.unit and _norm_unit(unit) != _norm_unit(paper.unit):
        return "cannot compare", f"units differ (run: {unit!r}, paper: {paper.unit!r})"
    u = float(uncertainty or 0.0)
    lo, hi = value - _K * u, value + _K * u
    noise = f" ± {_K:g}×{_num(u, 2)}" if uncertainty is not None else " (recorded without uncertainty)"
    yours = f"{_num(value)}{noise}"
    if kind == "interval":
        if paper.range is not None:
            p_lo, p_hi, what = *paper.range, f"the paper's interval [{_num(paper.range[0])}, {_num(paper.range[1])}]"
        elif paper.uncertainty is not None:
            pu = _K * paper.uncertainty
            p_lo, p_hi = paper.value - pu, paper.value + pu
            what = f"the paper's {_num(paper.value)} ± {_K:g}×{_num(paper.uncertainty, 2)}"
        else:
            p_lo = p_hi = paper.value
            what = f"the paper's {_num(paper.value)}"
        if lo <= p_hi and p_lo <= hi:
            wide = " (the run's interval is wide, so agreement says little)" if _K * u > 0.5 * abs(value) else ""
            return "agree", f"{yours} overlaps {what}{wide}"
        return "disagree", f"{yours} misses {what}; {paper.why}"
    if kind == "ratio":
        f, p = float(paper.rule["factor"]), paper.value
        if p <= 0 or hi <= 0:
            return "cannot compare", f"a ratio needs positive values (run {_num(value)}, paper {_num(p)}); {paper.why}"
        closest = min(max(p, lo, 1e-300), hi)  # the point of the run's interval nearest the paper's value
        gap = max(closest / p, p / closest)
        if gap <= f:
            return "agree", f"{yours} is within a factor {f:g} of the paper's {_num(p)}"
        return "disagree", f"{yours} is {value / p:.2g}× the paper's {_num(p)} (allowed: a factor {f:g}); {paper.why}"
    # direction and bound: which side of a threshold
    side = paper.rule["side"]
    if kind == "bound":
        threshold = paper.value
        if paper.rule.get("absolute"):
            value, lo, hi = abs(value), max(abs(value) - _K * u, 0.0), abs(value) + _K * u
            yours = f"|{_num(value)}|{noise}"
    else:
        threshold = float(paper.rule.get("threshold", 0.0))
    word = "above" if side == "above" else "below"
    right = lo > threshold if side == "above" else hi < threshold
    wrong = hi < threshold if side == "above" else lo > threshold
    if uncertainty is None and value == threshold:
        right = wrong = False
    if right:
        return "agree", f"{yours} is {word} {_num(threshold)}, as the paper found"
    if wrong:
        return "disagree", f"{yours} is not {word} {_num(threshold)}, unlike the paper; {paper.why}"
    return "cannot compare", f"{yours} straddles {_num(threshold)}: within this run's noise; {paper.why}"


def _threshold(p: PaperFigure) -> float | None:
    if p.rule["kind"] == "direction":
        return float(p.rule.get("threshold", 0.0))
    return p.value if p.rule["kind"] == "bound" else None


def compare(records: list[Record], papers: Papers | None = None) -> list[Row]:
    """A row per (recorded figure, paper figure it faces); a recorded figure facing none gets one row too."""
    papers = papers if papers is not None else load_papers()
    rows = []
    for rec in sorted(records, key=lambda r: r.lab):
        for name, fig in rec.figures.items():
            mode = rec.provenance.get("mode")
            facing = papers.facing(rec.lab, name)
            if not facing:
                rows.append(Row(rec.lab, name, fig.value, fig.uncertainty, fig.unit, fig.description,
                                "no paper figure", "no paper reports this quantity", mode=mode))
            for p in facing:
                verdict, why = judge(fig.value, fig.uncertainty, p, fig.unit)
                rows.append(Row(rec.lab, name, fig.value, fig.uncertainty, fig.unit, fig.description, verdict, why,
                                paper_id=p.id, paper=p.paper_text(), paper_value=p.value,
                                paper_uncertainty=p.uncertainty, paper_range=None if p.range is None else list(p.range),
                                source=p.citation.full(), cite=p.citation.short(), where=p.citation.where,
                                reference=p.citation.paper(), threshold=_threshold(p), rule=p.rule["kind"],
                                mode=mode))
    return rows


# ---------------------------------------------------------------------------------------------
# the compute gap


def compute_report(records: list[Record], papers: Papers | None = None) -> dict[str, Any]:
    """The records' total training FLOPs beside each paper budget: ratio, orders of magnitude, and what follows.

    Returns ``{"total_flops", "labs": {lab: flops}, "labs_without_compute": [...], "budgets": [{"id", "what",
    "flops", "ratio", "orders_of_magnitude", "source"}], "text": [sentences]}``; ratio and orders are None
    when the records carry no compute.
    """
    papers = papers if papers is not None else load_papers()
    labs = {r.lab: float(r.compute["flops"]) for r in records if r.compute and r.compute.get("flops", 0) > 0}
    without = sorted(r.lab for r in records if r.lab not in labs)
    total = sum(labs.values())
    rows = []
    for b in papers.budgets:
        ratio = b.flops / total if total > 0 else None
        rows.append({"id": b.id, "what": b.what, "flops": b.flops, "ratio": ratio,
                     "orders_of_magnitude": None if ratio is None else math.log10(ratio), "source": b.citation.full()})
    text = []
    if total > 0:
        orders = [r["orders_of_magnitude"] for r in rows]
        gap = f"{min(orders):.1f}" + (f"–{max(orders):.1f}" if max(orders) - min(orders) >= 0.05 else "")
        text = [
            f"Your records spent {total:.3g} training FLOPs (6ND + attention) in {len(labs)} lab(s); the papers' "
            f"budgets are {gap} orders of magnitude larger.",
            "A run that many orders smaller can show directions and trends inside its own range: which recipe "
            "wins, whether a gap grows or shrinks across its few budgets, how noisy a fit is.",
            "It cannot give the papers' absolute numbers (their losses, exponents and multipliers belong to "
            "their data and scale), and extrapolating a tiny fit by those orders of magnitude multiplies every "
            "error in its exponents: agreement here is evidence of the mechanism, not of the papers' values.",
        ]
    else:
        text = ["No record carries the compute it spent (records written before the compute ledger): "
                "re-run the labs to fill it in."]
    return {"total_flops": total, "labs": labs, "labs_without_compute": without, "budgets": rows, "text": text}


# ---------------------------------------------------------------------------------------------
# output


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


_COLS = (("lab", 3), ("figure", 25), ("yours", 16), ("paper", 16), ("source", 15), ("verdict", 15))


def report_text(rows: list[Row], errors: list[Any] = (), compute: dict | None = None, width: int = 100) -> str:
    """The report as fixed-width plain text (readable at 100 columns): the table, each row's reason, sources."""
    lines = ["  ".join(f"{name:<{w}}" for name, w in _COLS).rstrip(), "  ".join("-" * w for _, w in _COLS)]
    sources: dict[str, str] = {}
    wrap = textwrap.TextWrapper(width=width, initial_indent="     ", subsequent_indent="     ")
    for row in rows:
        if row.source:
            sources.setdefault(row.cite, row.reference)
        lab, name = row.lab, row.figure
        if len(name) > _COLS[1][1]:  # a long name gets its own line rather than being cut
            lines.append(f"{lab:<{_COLS[0][1]}}  {name}")
            lab = name = ""
        cells = (lab, name, row.yours(), row.paper or "", row.cite or "", row.verdict)
        lines.append("  ".join(f"{_fit(str(c), w):<{w}}" for c, (_, w) in zip(cells, _COLS)).rstrip())
        if row.paper:
            lines.extend(wrap.wrap(f"[{row.where}] {row.why}"))
    counts = {v: sum(r.verdict == v for r in rows) for v in VERDICTS}
    lines += ["", f"{len(rows)} rows: " + ", ".join(f"{n} {v}" for v, n in counts.items())]
    if sources:
        lines += ["", "Sources:"]
        for short, full in sorted(sources.items()):
            lines.extend(textwrap.wrap(f"{short}: {full}", width=width, subsequent_indent="    "))
    if compute is not None:
        lines += ["", compute_text(compute, width)]
    for err in errors:
        lines.extend(textwrap.wrap(f"skipped: {err}", width=width, subsequent_indent="    "))
    return "\n".join(lines)


def compute_text(compute: dict, width: int = 100) -> str:
    """The compute gap as plain text: a line per paper budget, then what follows from it."""
    per_lab = ", ".join(f"lab {k} {v:.2g}" for k, v in sorted(compute["labs"].items()))
    lines = textwrap.wrap(f"Compute: your records spent {compute['total_flops']:.3g} training FLOPs"
                          + (f" ({per_lab})" if per_lab else ""), width=width, subsequent_indent="    ")
    if compute["labs_without_compute"]:
        lines.append(f"  (no compute recorded by lab {', '.join(compute['labs_without_compute'])})")
    for b in compute["budgets"]:
        gap = (f": {b['ratio']:.3g}× yours, {b['orders_of_magnitude']:.1f} orders of magnitude"
               if b["ratio"] is not None else "")
        lines.extend(textwrap.wrap(f"{b['what']}: {b['flops']:.3g} FLOPs{gap}", width=width,
                                   initial_indent="  ", subsequent_indent="      "))
        lines.extend(textwrap.wrap(b["source"], width=width, initial_indent="      ", subsequent_indent="      "))
    for sentence in compute["text"]:
        lines.extend(textwrap.wrap(sentence, width=width))
    return "\n".join(lines)


def report_json(rows: list[Row], errors: list[Any] = (), compute: dict | None = None) -> dict[str, Any]:
    """The report as a JSON-ready dict: ``{"schema", "rows": [...], "errors": [...], "compute"?}``."""
    out: dict[str, Any] = {"schema": REPORT_SCHEMA, "rows": [asdict(r) for r in rows],
                           "errors": [str(e) for e in errors]}
    if compute is not None:
        out["compute"] = compute
    return out


def _folder(folder: str | os.PathLike | None, reference: bool) -> Path | None:
    if reference:
        if folder is not None:
            raise ValueError("give --reference or --folder, not both")
        if not REFERENCE_DIR.is_dir():
            raise FileNotFoundError(f"the reference records live in the course's repository ({REFERENCE_DIR} not "
                                    "found): run from a clone of minilm, or pass --folder DIR")
        return REFERENCE_DIR
    return None if folder is None else Path(folder)


def load(labs: list[str] | None = None, folder: str | os.PathLike | None = None, reference: bool = False
         ) -> tuple[list[Record], list[RecordError]]:
    """The records to report on (``labs`` only, if given) and the errors of files that are not records."""
    return read_records(_folder(folder, reference), labs)


def show(labs: list[str] | None = None, folder: str | os.PathLike | None = None, reference: bool = False,
         compute: bool = False) -> list[Row]:
    """In JupyterLab: the report as an HTML table, and a plot per compared figure (yours ± 2σ beside the paper's)."""
    import html

    from IPython.display import HTML, display

    records, errors = load(labs, folder, reference)
    rows = compare(records)
    colour = {"agree": "#1a7f37", "disagree": "#cf222e", "cannot compare": "#9a6700", "no paper figure": "#57606a"}
    head = "".join(f"<th style='text-align:left'>{h}</th>"
                   for h in ("lab", "figure", "yours", "unit", "paper", "source", "verdict", "why"))
    body = "".join(
        f"<tr><td>{r.lab}</td><td><code>{html.escape(r.figure)}</code></td><td>{html.escape(r.yours())}</td>"
        f"<td>{html.escape(r.unit)}</td><td>{html.escape(r.paper or '')}</td>"
        f"<td style='font-size:85%'>{html.escape(r.source or '')}</td>"
        f"<td style='color:{colour[r.verdict]};font-weight:bold'>{r.verdict}</td>"
        f"<td style='font-size:85%'>{html.escape(r.why if r.paper else r.description)}</td></tr>" for r in rows)
    notes = "".join(f"<p style='color:#cf222e'>skipped: {html.escape(str(e))}</p>" for e in errors)
    if not records:
        notes += "<p>No lab records found: run a lab to its Record cell, or pass <code>folder=</code>.</p>"
    display(HTML(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}"))
    if compute:
        display(HTML(f"<pre>{html.escape(compute_text(compute_report(records)))}</pre>"))
    _plot(rows)
    return rows


def _plot(rows: list[Row]) -> None:
    """A panel per judged row: the run's value ± 2σ beside the paper's value or interval, or the paper's
    threshold (a dashed line) for a rule that judges a side."""
    shown = [r for r in rows
             if r.verdict != "no paper figure" and (r.paper_value is not None or r.threshold is not None)]
    if not shown:
        return
    import matplotlib.pyplot as plt

    cols = min(4, len(shown))
    nrows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False)
    for ax, r in zip(axes.flat, shown):
        ax.errorbar([0], [r.value], yerr=[[_K * (r.uncertainty or 0.0)]], fmt="o", color="C0", capsize=4)
        if r.threshold is not None:  # direction or bound: the paper says which side of this line
            lines = [r.threshold, -r.threshold] if r.rule == "bound" and r.paper.startswith("|x|") else [r.threshold]
            for y in lines:
                ax.axhline(y, color="C1", ls="--", lw=1.5)
            ax.set_xticks([0], ["yours"])
            ax.set_xlim(-0.6, 0.6)
            title = f"{r.cite}: {r.paper}, {r.verdict}"
        else:
            if r.paper_range is not None:  # the paper's interval (its rounded value may sit outside it)
                ax.plot([1, 1], r.paper_range, color="C1", lw=4, solid_capstyle="butt")
                ax.plot([1], [r.paper_value], "s", color="C1")
            else:
                ax.errorbar([1], [r.paper_value], yerr=[[_K * (r.paper_uncertainty or 0.0)]], fmt="s", color="C1",
                            capsize=4)
            ax.set_xticks([0, 1], ["yours", r.cite or "paper"])
            ax.set_xlim(-0.6, 1.6)
            title = r.verdict
        ax.set_title(f"{r.lab} {r.figure}\n{title}", fontsize=8)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.tight_layout()
    plt.show()


def run(labs: list[str] | None = None, folder: str | os.PathLike | None = None, reference: bool = False,
        as_json: bool = False, compute: bool = False, out=None, err=None) -> int:
    """``minilm report``: print the report; exit status 0 when at least one record was read, 1 when none."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        records, errors = load(labs, folder, reference)
    except FileNotFoundError as e:
        print(f"minilm report: {e}", file=err)
        return 1
    for e in errors:
        print(f"minilm report: skipped {e}", file=err)
    if not records:
        which = f" of lab {', '.join(labs)}" if labs else ""
        if reference:
            fix = "the reference runs are written with MINILM_RESULTS_DIR=course/records (see course/README.md)"
        else:
            fix = "run a lab to its Record cell (it writes results/labNN.json), or pass --folder DIR or --reference"
        where = _folder(folder, reference) or results_dir()
        print(f"minilm report: no lab records{which} in {where}: {fix}", file=err)
        return 1
    rows = compare(records)
    gap = compute_report(records) if compute else None
    if as_json:
        print(json.dumps(report_json(rows, errors, gap), indent=1), file=out)
    else:
        print(report_text(rows, [], gap), file=out)
    return 0


__all__ = ["PAPERS_FILE", "REFERENCE_DIR", "RULES", "VERDICTS", "Budget", "Citation", "PaperFigure", "Papers",
           "PapersError", "Row", "compare", "compute_report", "compute_text", "judge", "load", "load_papers",
           "report_json", "report_text", "run", "show"]
