"""Lab records (minilm.records): written atomically, read back exactly, and validated against the schema."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from minilm.records import SCHEMA, RecordError, figure, read_record, read_records, record_path, write_record


def _write(folder, lab="04", **kw):
    figures = {"decay_drop": figure(np.float32(0.052), "nats", "loss drop in the decay", uncertainty=0.004),
               "runs": 7}
    return write_record(lab, figures, mode="fast", seed=1, device=torch.device("cpu"),
                        compute={"flops": 1.5e12, "wall_time_s": 12.0}, folder=folder, verbose=False, **kw)


def test_round_trip_with_provenance(tmp_path):
    path = _write(tmp_path)
    assert path == tmp_path / "lab04.json" == record_path(4, tmp_path)
    rec = read_record(path)
    assert rec.lab == "04"
    assert rec.figures["decay_drop"].value == pytest.approx(0.052)
    assert rec.figures["decay_drop"].uncertainty == pytest.approx(0.004)
    assert rec.figures["decay_drop"].unit == "nats"
    assert rec.figures["runs"].value == 7 and rec.figures["runs"].uncertainty is None
    prov = rec.provenance
    assert (prov["lab"], prov["mode"], prov["seed"], prov["device"]) == ("04", "fast", 1, "cpu")
    assert prov["torch"] == torch.__version__ and prov["threads"] == torch.get_num_threads()
    assert prov["wall_time_s"] == 12.0  # taken from the compute ledger when not given
    assert rec.compute == {"flops": 1.5e12, "wall_time_s": 12.0}
    assert json.loads(path.read_text())["schema"] == SCHEMA


def test_results_folder_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILM_RESULTS_DIR", str(tmp_path / "mine"))
    path = write_record("1", {"alpha": 0.3}, mode="full", seed=0, verbose=False)
    assert path == tmp_path / "mine" / "lab01.json"
    records, errors = read_records()
    assert [r.lab for r in records] == ["01"] and errors == []


def test_write_is_atomic_old_record_survives_a_failed_write(tmp_path, monkeypatch):
    path = _write(tmp_path)
    before = path.read_text()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        _write(tmp_path)
    assert path.read_text() == before  # the old record is intact
    assert [p.name for p in tmp_path.iterdir()] == ["lab04.json"]  # no temporary file left behind


@pytest.mark.parametrize("figures, match", [
    ({"Decay Drop": 1.0}, "snake_case"),
    ({"x": float("nan")}, "finite"),
    ({"x": "0.5"}, "finite number"),
    ({}, "at least one figure"),
])
def test_bad_figures_are_refused_before_writing(tmp_path, figures, match):
    with pytest.raises(ValueError, match=match):
        write_record("04", figures, mode="fast", seed=0, folder=tmp_path, verbose=False)
    assert not list(tmp_path.iterdir())


def test_bad_mode_and_lab_id(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        write_record("04", {"x": 1.0}, mode="quick", seed=0, folder=tmp_path)
    with pytest.raises(ValueError, match="lab id"):
        write_record("lab4", {"x": 1.0}, mode="fast", seed=0, folder=tmp_path)


def _mutate(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change, match", [
    (lambda d: d.update(schema="something/else"), "not a minilm record"),
    (lambda d: d.update(lab="4"), "two-digit"),
    (lambda d: d["figures"].update(x={"value": None}), "finite"),
    (lambda d: d["figures"].update(x={"unit": "s"}), "needs 'value'"),
    (lambda d: d["figures"]["runs"].update(colour="red"), "unexpected"),
    (lambda d: d["provenance"].pop("seed"), "provenance lacks"),
    (lambda d: d["provenance"].update(lab="05"), "provenance names lab"),
    (lambda d: d.update(compute={"flops": "many"}), "compute"),
])
def test_malformed_records_get_a_clear_error(tmp_path, change, match):
    path = _write(tmp_path)
    _mutate(path, change)
    with pytest.raises(RecordError, match=match) as err:
        read_record(path)
    assert str(path) in str(err.value) and "re-run that lab" in str(err.value)


def test_a_bad_file_does_not_hide_the_others(tmp_path):
    _write(tmp_path, lab="04")
    _write(tmp_path, lab="06")
    (tmp_path / "notes.json").write_text('{"hello": "world"}')  # foreign JSON
    (tmp_path / "lab05.json").write_text("{not json")  # a truncated record
    records, errors = read_records(tmp_path)
    assert [r.lab for r in records] == ["04", "06"]
    assert sorted(e.args[0].split(":")[0].rsplit("/", 1)[-1] for e in errors) == ["lab05.json", "notes.json"]
    only, _ = read_records(tmp_path, labs=["6"])
    assert [r.lab for r in only] == ["06"]


def test_missing_record_and_missing_folder(tmp_path):
    with pytest.raises(RecordError, match="run the lab"):
        read_record(tmp_path / "lab03.json")
    assert read_records(tmp_path / "nowhere") == ([], [])
