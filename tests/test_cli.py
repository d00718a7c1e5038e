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


# ----- help: fast, user-facing, complete ------------------------------------------------------------
HELP_COMMANDS = ["", "train", "sample", "demo", "presets", "eval", "bench", "bench speed", "bench quality",
                 "train-tokenizer", "cache-latents"]


@pytest.mark.parametrize("cmd", HELP_COMMANDS)
def test_help_imports_neither_torch_nor_numpy(cmd):
    """`--help` must answer at once: the parser is built without the heavy imports (5-9 s of torch)."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "nestar.cli.main", *cmd.split(), "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "usage: nestar" in r.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"torch", "numpy", "PIL", "safetensors", "nestar.registry", "nestar.models"}


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


def test_every_command_and_option_is_described():
    import argparse

    from nestar.cli.main import build_parser

    commands = dict(_subparsers(build_parser()))
    assert {"train", "sample", "demo", "presets", "eval", "bench speed"} <= set(commands)
    undescribed = [name for name, p in commands.items() if not p.description]
    helpless = [f"{name} {a.option_strings or a.dest}" for name, p in commands.items() for a in p._actions
                if not a.help and not isinstance(a, argparse._SubParsersAction)]
    assert not undescribed and not helpless
    for name, p in commands.items():
        if p.get_default("takes_overrides"):  # the syntax, and where the valid keys are listed
            assert "--section.key=value" in p.epilog and "--keys" in p.epilog, name
    assert commands["sample"].get_default("takes_overrides")  # --sample.* only (the rest is refused)
    assert not commands["serve"].get_default("takes_overrides")


def test_keys_lists_valid_overrides(capsys):
    assert main(["presets", "--keys", "nestar-tiny"]) == 0
    keys = capsys.readouterr().out.splitlines()
    assert "--train.steps=20" in keys and "--model.order=\"lattice\"" in keys
    assert any(k.startswith("--model.grid_size=8") and "derived" in k for k in keys)
    assert main(["train", "--preset", "nestar-tiny", "--keys", "--train.lr=0.5"]) == 0
    assert "--train.lr=0.5" in capsys.readouterr().out.splitlines()
    assert main(["train-tokenizer", "--keys"]) == 0
    assert "--vae.z_channels=" in capsys.readouterr().out


def test_commands_without_overrides_refuse_them():
    with pytest.raises(SystemExit) as e:  # (sample and eval take --sample.* only: tests/test_reliability.py)
        main(["serve", "runs/x", "--train.lr=3"])
    assert e.value.code == 2


def test_class_names_are_forgiving():
    from nestar.cli.common import parse_classes
    from nestar.config import ConfigError
    from nestar.data import CLASS_NAMES

    text = "sneaker,Bag,tshirt,T-Shirt/Top,top,shirt,ankle-boot,Ankle boot,boot,trousers,sneakers,7"
    assert parse_classes(text, 10, CLASS_NAMES) == [7, 8, 0, 0, 0, 6, 9, 9, 9, 1, 7, 7]
    with pytest.raises(ConfigError, match="Ankle boot"):  # the error lists the names
        parse_classes("hat", 10, CLASS_NAMES)
    with pytest.raises(ConfigError, match="no class names"):
        parse_classes("bag", 10, None)
    with pytest.raises(ConfigError, match="out of range"):
        parse_classes("3,10", 10, CLASS_NAMES)
