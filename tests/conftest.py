import os

import pytest
import torch

# One thread: on a shared 2-core machine PyTorch with 2 threads was measured 3-13x slower.
torch.set_num_threads(int(os.environ.get("MINILM_TEST_THREADS", "1")))
os.environ.setdefault("MPLBACKEND", "Agg")


def _test_device() -> torch.device:
    """The device that device-aware tests run on: $MINILM_TEST_DEVICE (cpu, cuda, mps or auto), default cpu."""
    from minilm.device import resolve_device

    return resolve_device(os.environ.get("MINILM_TEST_DEVICE", "cpu"))


@pytest.fixture
def device() -> torch.device:
    """Tests that take this fixture run on $MINILM_TEST_DEVICE (benchmarks/gpu_check.sh sets it to cuda)."""
    return _test_device()


def pytest_collection_modifyitems(config, items):
    # `pytest -m device` selects the tests that run on $MINILM_TEST_DEVICE.
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


def pytest_report_header(config):
    return f"minilm test device: {os.environ.get('MINILM_TEST_DEVICE', 'cpu')} (tests taking the `device` fixture)"


@pytest.fixture
def tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path
