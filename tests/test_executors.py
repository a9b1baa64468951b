"""Executors (``minilm.executors``) and the scaling sweep run through them.

The job functions below live at the top of this light module (no torch at import) because the
worker processes and submitit's jobs import it by name to unpickle them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from minilm.executors import LocalExecutor, Outcome, SubmititExecutor, _job_error

TESTS = str(Path(__file__).resolve().parent)


def tenth_of(x: float) -> float:
    if x == 0:
        raise ValueError("no zero please")
    return x / 10


def where_am_i(x: int) -> tuple[int, str | None, str | None]:
    if x < 0:
        raise ValueError(f"negative job {x}")
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("MINILM_THREADS")


def by_index(outcomes) -> dict[int, Outcome]:
    got = {}
    for o in outcomes:
        assert o.index not in got, f"job {o.index} reported twice"
        got[o.index] = o
    return got


def test_in_process_reports_each_failure_and_keeps_the_others():
    got = by_index(LocalExecutor(workers=1, gpus=[]).run(tenth_of, [20, 0, 40]))
    assert sorted(got) == [0, 1, 2]
    assert (got[0].result, got[2].result) == (2.0, 4.0) and got[0].ok and got[2].ok
    assert not got[1].ok and got[1].error == "ValueError: no zero please" and "tenth_of" in got[1].log


def test_local_workers_each_get_a_gpu_of_their_own_and_fail_alone():
    # No GPU is needed: the worker only sets CUDA_VISIBLE_DEVICES before anything starts CUDA.
    got = by_index(LocalExecutor(workers=2, gpus=["3", "5"]).run(where_am_i, [0, 1, -2, 3, 4, 5]))
    assert sorted(got) == list(range(6))
    assert got[2].error == "ValueError: negative job -2" and "where_am_i" in got[2].log
    gpu_of = {}
    for o in got.values():
        if o.ok:
            pid, gpu, _ = o.result
            assert gpu_of.setdefault(pid, gpu) == gpu  # a worker keeps its GPU
    assert set(gpu_of.values()) <= {"3", "5"} and len(set(gpu_of.values())) == len(gpu_of)  # never shared


def test_local_executor_defaults_and_bad_arguments(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,7")
    assert LocalExecutor().workers == 2 and LocalExecutor().gpus == ["2", "7"]  # one per visible GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert LocalExecutor().workers == 1  # no GPU: this process
    with pytest.raises(ValueError, match="one worker per GPU at most"):
        LocalExecutor(workers=3, gpus=[0, 1])
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        LocalExecutor(workers=0)


def test_cpu_workers_share_the_default_threads(monkeypatch):
    import minilm.device
    from minilm import executors

    monkeypatch.delenv("MINILM_THREADS", raising=False)
    monkeypatch.setattr(minilm.device, "default_threads", lambda: (7, "8 physical cores"))
    started = []

    class FakePool:  # records what each worker would be started with
        def __init__(self, n, mp_context, initializer, initargs):
            started.append((n, initargs))

        def submit(self, fn, job):
            import concurrent.futures
            f = concurrent.futures.Future()
            f.set_result(fn(job))
            return f

        def shutdown(self, wait, cancel_futures):
            pass

    monkeypatch.setattr(executors.concurrent.futures, "ProcessPoolExecutor", FakePool)
    outcomes = sorted(LocalExecutor(workers=3, gpus=[]).run(tenth_of, [10, 20, 30]), key=lambda o: o.index)
    assert [o.result for o in outcomes] == [1.0, 2.0, 3.0]
    assert started == [(3, (None, 2))]  # 7 threads // 3 workers
    executors._start_worker(None, 2)
    assert os.environ.pop("MINILM_THREADS") == "2"


def test_submitit_errors_name_the_exception():
    text = ('Job (task=0) failed during processing with trace:\n----------------------\nTraceback (most recent '
            'call last):\n  File "x.py", line 3, in f\n    raise ValueError("no")\nValueError: no\n\n'
            '----------------------\nYou can check full logs with ...\n  - /j/1_0_log.err')
    assert _job_error(RuntimeError(text)) == "ValueError: no"
    assert _job_error(RuntimeError("Job 7 has not produced any output (state: TIMEOUT)\nmore")).endswith(
        "Job 7 has not produced any output (state: TIMEOUT)")


@pytest.fixture
def tiny_sweep():
    from minilm.data.languages import MarkovLanguage

    lang = MarkovLanguage(vocab_size=8, order=1, concentration=0.3, seed=0)
    sizes = [{"n_layers": 1, "n_heads": 2, "d_model": 8}, {"n_layers": 1, "n_heads": 2, "d_model": 16}]
    kwargs = dict(token_budgets=[512], language=lang, seed=1, device="cpu", context_length=16, batch_size=8,
                  val_tokens=1024, progress=False)
    return sizes, kwargs


def test_sweep_failures_are_reported_per_run_and_only_they_run_again(tmp_path, tiny_sweep, monkeypatch):
    from minilm.scaling import sweep as sweep_module

    sizes, kwargs = tiny_sweep
    real = sweep_module.train

    def fails_for_width_16(model, *args, **kw):
        if model.config.d_model == 16:
            raise RuntimeError("out of memory (simulated)")
        return real(model, *args, **kw)

    monkeypatch.setattr(sweep_module, "train", fails_for_width_16)
    cache = tmp_path / "sweep.json"
    with pytest.raises(sweep_module.SweepError, match=r"1 of 2 sweep runs failed.*retry only the failed") as info:
        sweep_module.run_sweep(sizes, cache_path=cache, **kwargs)
    err = info.value
    assert [f["size"]["d_model"] for f in err.failures] == [16]
    assert "RuntimeError: out of memory (simulated)" in str(err)
    assert len(err.result.points) == 1 and len(json.loads(cache.read_text())["points"]) == 1  # the other is kept
    monkeypatch.setattr(sweep_module, "train", real)
    again = sweep_module.run_sweep(sizes, cache_path=cache, **kwargs)
    assert (again.n_trained, again.n_cached) == (1, 1)


def test_an_interrupted_sweeps_finished_runs_are_merged(tmp_path, tiny_sweep):
    # A job that finished after its sweep's driver was interrupted left <cache>.runs/<key>.json only.
    from minilm.scaling.sweep import run_sweep

    sizes, kwargs = tiny_sweep
    first = run_sweep(sizes[:1], cache_path=tmp_path / "a.json", **kwargs)
    runs = tmp_path / "b.json.runs"
    runs.mkdir()
    record = first.points[0]
    (runs / f"{record['key']}.json").write_text(json.dumps({k: v for k, v in record.items() if k != "flop_budget"}))
    second = run_sweep(sizes, cache_path=tmp_path / "b.json", **kwargs)
    assert (second.n_trained, second.n_cached) == (1, 1) and second.points[0]["loss"] == record["loss"]
    assert not list(runs.glob("*.json"))  # merged into the cache, then removed
    assert set(json.loads((tmp_path / "b.json").read_text())["points"]) == {p["key"] for p in second.points}


def test_sweep_through_submitits_local_executor(tmp_path, tiny_sweep):
    pytest.importorskip("submitit")
    from minilm.scaling.sweep import SweepError, run_sweep

    sizes, kwargs = tiny_sweep
    here = run_sweep(sizes, cache_path=tmp_path / "here.json", **kwargs)
    executor = SubmititExecutor(tmp_path / "jobs", cluster="local", poll_s=0.3)
    there = run_sweep(sizes, cache_path=tmp_path / "there.json", executor=executor, **kwargs)
    assert (there.n_trained, there.n_cached) == (2, 0)
    # Each job trained in its own process, with the same seeds and thread count: the same numbers.
    assert [p["loss"] for p in there.points] == [p["loss"] for p in here.points]
    assert [p["key"] for p in there.points] == [p["key"] for p in here.points]
    logs = lambda: sorted((tmp_path / "jobs").glob("*_log.err"))  # noqa: E731 - one per job submitted
    assert len(logs()) == 2
    again = run_sweep(sizes, cache_path=tmp_path / "there.json", executor=executor, **kwargs)
    assert (again.n_trained, again.n_cached) == (0, 2) and len(logs()) == 2  # cache hit rate 100%: nothing submitted
    assert not list((tmp_path / "there.json.runs").glob("*.json"))
    # A job that fails (here: it asks for a 100th GPU) is reported with its log; the cached point of
    # the same sweep is still returned.
    with pytest.raises(SweepError, match="1 of 2 sweep runs failed") as info:
        run_sweep(sizes[:1], cache_path=tmp_path / "there.json", executor=executor,
                  **{**kwargs, "token_budgets": [512, 1024], "device": "cuda:99"})
    [failure] = info.value.failures
    assert failure["token_budget"] == 1024 and "cuda" in failure["error"].lower()
    assert failure["log"] in map(str, logs()) and len(info.value.result.points) == 1


def test_submitit_is_imported_only_where_used():
    import ast

    import minilm.executors
    import minilm.scaling.sweep

    for module in (minilm.executors, minilm.scaling.sweep):
        tree = ast.parse(Path(module.__file__).read_text())
        top = [a.name for node in tree.body if isinstance(node, ast.Import) for a in node.names]
        top += [node.module for node in tree.body if isinstance(node, ast.ImportFrom)]
        assert not [m for m in top if m and m.startswith("submitit")], module.__name__


def test_the_guides_lab01_script_submits_the_notebooks_grid(capsys):
    # docs/scaling_out_lab01.py fills the cache lab 01 reads: its grid and its run_sweep call must
    # be the notebook's, or the notebook would find no run in the cache and train them all again.
    import importlib.util

    repo = Path(TESTS).parent
    spec = importlib.util.spec_from_file_location("scaling_out_lab01", repo / "docs" / "scaling_out_lab01.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    nb = json.loads((repo / "solutions" / "01_scaling_laws.ipynb").read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    [sizing] = [c for c in cells if "LADDER = [" in c]
    [sweep] = [c for c in cells if "run_sweep(" in c and "flop_budgets" in c]
    assert "run_sweep(sizes, None, language, sweep_cache, flop_budgets=[budget], seed=SEED, device=device)" in sweep
    assert "language = fast_language()" in sweep and "budgets = [3e9 * 4 ** k for k in range(len(FIRST_RUNG))]" in sweep
    for fast in (True, False):
        ns = {"FAST": fast}
        exec(sizing, ns)  # the notebook's own sizing cell
        expected = [(3e9 * 4 ** k, ns["LADDER"][r: r + ns["SIZES_PER_BUDGET"]]) for k, r in enumerate(ns["FIRST_RUNG"])]
        assert script.grid(fast) == expected
    assert script.main(["--dry-run", "--cache", "unused.json"]) == 0
    assert "full mode: 25 runs over 5 FLOP budgets" in capsys.readouterr().out
