import subprocess
import sys

import pytest

from minilm.cli import main


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "device='auto' chooses" in out and "torch" in out


def test_train_prints_loss_and_sample(capsys, tmp_path):
    ckpt = tmp_path / "m.pt"
    assert main(["train", "--data", "markov", "--tokens", "20000", "--steps", "20", "--context", "16",
                 "--sample", "10", "--threads", "1", "--out", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "validation loss" in out and "exact entropy rate" in out and "sample:" in out
    assert ckpt.is_file()


def test_bad_input_is_one_line_not_a_traceback():
    r = subprocess.run([sys.executable, "-m", "minilm", "train", "--context", "0", "--steps", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("minilm: error:") and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["train", "--model", "nope"], ["train", "--steps", "x"]])
def test_argparse_errors(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
