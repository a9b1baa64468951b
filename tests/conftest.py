import os

import pytest
import torch

# One thread: on a shared 2-core machine PyTorch with 2 threads was measured 3-13x slower.
torch.set_num_threads(int(os.environ.get("MINILM_TEST_THREADS", "1")))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path
