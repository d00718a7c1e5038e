"""CLI smoke tests: the real `nestar` entry point on real data with the tiny preset."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nestar.cli.main import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nestar.cli.main", *args], capture_output=True, text=True, timeout=300)


def test_train_resume_sample_files_exist(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--preset", "nestar-tiny", "--run-dir", str(run), "--quiet", "--train.steps=6"]) == 0
    assert main(["train", "--preset", "nestar-tiny", "--run-dir", str(run), "--quiet", "--train.steps=8"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["steps"] == 8 and cfg["model"]["grid_size"] == 8
    log = (run / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,loss") and log[-1].startswith("8,")
    out, strip = tmp_path / "grid.png", tmp_path / "strip.png"
    assert main(["sample", str(run), "--out", str(out), "--strip", str(strip), "--per-class", "2", "--classes", "0,5"]) == 0
    from PIL import Image

    assert Image.open(out).size == (2 * (2 * 34 + 2), 2 * (2 * 34 + 2))  # 2x2 tiles of 32+2 px, upscaled 2x
    assert Image.open(strip).size[0] > Image.open(strip).size[1]  # stages left to right


def test_same_seed_same_png(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--preset", "nestar-tiny", "--run-dir", str(run), "--quiet", "--train.steps=3"]) == 0
    for name in ("a.png", "b.png"):
        assert main(["sample", str(run), "--out", str(tmp_path / name), "--per-class", "1", "--seed", "4"]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_bad_inputs_give_clear_errors(tmp_path):
    r = run_cli("train", "--preset", "nestar-tiny", "--run-dir", str(tmp_path / "x"), f"--data.data_dir={tmp_path}")
    assert r.returncode == 2 and "apt-get install -y dataset-fashion-mnist" in r.stderr
    r = run_cli("train", "--preset", "nestar-tiny", "--model.k=3")
    assert r.returncode == 2 and "k must be a power of 2" in r.stderr
    r = run_cli("train", "--preset", "nestar-tiny", "--model.widht=3")
    assert r.returncode == 2 and "model.widht" in r.stderr
    r = run_cli("train", "--preset", "no-such-preset")
    assert r.returncode == 2 and "unknown preset" in r.stderr
    r = run_cli("sample", str(tmp_path / "missing"))
    assert r.returncode == 2 and "neither a run directory" in r.stderr


@pytest.mark.parametrize("cmd", ["train", "sample", "demo", "presets"])
def test_help_works(cmd):
    r = run_cli(cmd, "--help")
    assert r.returncode == 0 and "usage" in r.stdout
