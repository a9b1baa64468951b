import os

import pytest
import torch

# One thread: on a shared 2-core machine PyTorch with 2 threads was measured 3-13x slower.
torch.set_num_threads(int(os.environ.get("MINILM_TEST_THREADS", "1")))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session", autouse=True)
def _records_outside_the_checkout(tmp_path_factory):
    """Lab records (minilm.records) that a test writes without naming a folder go to a temporary one,
    never to results/ in the checkout or to course/records/ (a test that needs another sets its own)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINILM_RESULTS_DIR", str(tmp_path_factory.mktemp("results")))
        yield


def _test_device() -> torch.device:
    """The device that device-aware tests run on: $MINILM_TEST_DEVICE (cpu, cuda, mps or auto), default cpu."""
    from minilm.device import resolve_device

    return resolve_device(os.environ.get("MINILM_TEST_DEVICE", "cpu"))


@pytest.fixture(scope="session")
def _session_device():
    """The test device, resolved once per session. On CUDA, TF32 is switched off for the session:
    Ampere and newer GPUs otherwise run float32 matmuls (cuBLAS) and convolutions / RNNs (cuDNN)
    with 10-bit mantissas (~1e-3 relative error), and the tests' tolerances are derived for
    float32 (~1e-7 per operation). The flags are put back when the session ends."""
    dev = _test_device()
    if dev.type != "cuda":
        yield dev
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield dev
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def device(_session_device) -> torch.device:
    """Tests that take this fixture run on $MINILM_TEST_DEVICE (benchmarks/gpu_check.sh sets it to cuda).

    Conventions of the device-aware tests: models are built on the CPU (seeded) and moved with
    ``.to(device)``; random inputs are drawn on the CPU from a seeded generator and moved, so every
    device computes on the same numbers; references are computed on the CPU (results moved there
    with ``.cpu()``) or on the same device. On CUDA the session runs with TF32 off (see above).
    """
    return _session_device


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
