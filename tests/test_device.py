"""Device choice and the thread policy (minilm.device)."""

import pytest
import torch

import minilm.device as device


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(device, "_threads_chosen", None)
    monkeypatch.delenv("MINILM_THREADS", raising=False)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("available", "physical", "expected"),
    [(1, 1, 1), (2, 1, 1), (2, 2, 1), (4, 2, 1), (4, 4, 3), (8, 4, 3), (16, 8, 7), (6, None, 5), (3, 8, 2)],
)
def test_default_threads_rule(monkeypatch, available, physical, expected):
    # 1 thread on <= 2 available cores; otherwise physical cores (capped by what is available) - 1
    monkeypatch.setattr(device, "_available_cpus", lambda: available)
    monkeypatch.setattr(device, "_physical_cores", lambda: physical)
    assert device.default_threads()[0] == expected


def test_argument_beats_environment_beats_default(monkeypatch):
    monkeypatch.setattr(device, "default_threads", lambda: (1, "test default"))
    monkeypatch.setenv("MINILM_THREADS", "2")
    assert device.configure_threads(3, verbose=False) == 3 == torch.get_num_threads()
    assert device.configure_threads(verbose=False) == 2 == torch.get_num_threads()
    monkeypatch.delenv("MINILM_THREADS")
    assert device.configure_threads(verbose=False) == 1 == torch.get_num_threads()


@pytest.mark.parametrize("bad", [0, -1, "two", 1.5, True])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        device.configure_threads(bad)


def test_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("MINILM_THREADS", "many")
    with pytest.raises(ValueError, match="MINILM_THREADS must be a positive integer"):
        device.configure_threads()


def test_choice_is_printed_once_and_ensure_keeps_it(capsys, monkeypatch):
    monkeypatch.setattr(device, "default_threads", lambda: (1, "test default"))
    assert device.ensure_threads() == 1
    assert device.ensure_threads() == 1
    torch.set_num_threads(2)  # a user's own later choice survives ensure_threads
    assert device.ensure_threads() == 2
    out = capsys.readouterr().out
    assert out.count("minilm: using 1 CPU thread(s)") == 1


def test_available_cpus_is_positive():
    assert device._available_cpus() >= 1


def test_resolve_device_names_the_fix():
    assert device.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        device.resolve_device("tpu9")
