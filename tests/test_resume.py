"""Resume never hides what changed: changed training settings stop the run (listing each field)
unless allowed, allowed changes are recorded in config.json and the checkpoint, exempt fields and
train.steps pass, and a finished run reports its real last loss."""
from __future__ import annotations

import csv
import json

import pytest

from nestar.cli.main import main
from nestar.config import apply_overrides
from nestar.serialization import CheckpointError, read_checkpoint_config
from nestar.training import Trainer
from nestar.training.resume import config_changes, last_logged_loss


@pytest.fixture
def run4(tiny_cfg, fmnist_small, tmp_path):
    """A finished 4-step run of nestar-tiny (cosine LR); returns (config, run_dir)."""
    cfg = apply_overrides(tiny_cfg, ["train.steps=4", "train.ckpt_every=2"])
    Trainer(cfg, tmp_path / "run", progress=False, dataset=fmnist_small).fit()
    return cfg, tmp_path / "run"


def test_changed_settings_stop_and_list_each_field(run4, fmnist_small):
    cfg, run = run4
    ckpt = run / "checkpoints" / "last.safetensors"
    before = (ckpt.read_bytes(), (run / "config.json").read_text())
    other = apply_overrides(cfg, ["train.steps=6", "train.lr=0.0005", "train.betas=(0.9, 0.99)", "train.seed=3",
                                  "train.grad_accum=2"])
    with pytest.raises(CheckpointError) as e:
        Trainer(other, run, progress=False, dataset=fmnist_small)
    msg = str(e.value)
    for line in ("train.lr: 0.001 -> 0.0005", "train.betas: (0.9, 0.95) -> (0.9, 0.99)", "train.seed: 0 -> 3",
                 "train.grad_accum: 1 -> 2"):  # same number of processes: other micro-batch draws
        assert line in msg
    assert "train.steps" not in msg  # raising the step count needs no flag
    assert "--allow-config-change" in msg and "--train.lr=0.001" in msg  # both ways out are named
    assert (ckpt.read_bytes(), (run / "config.json").read_text()) == before  # nothing written


def test_allowed_change_is_recorded_in_config_and_checkpoint(run4, fmnist_small):
    cfg, run = run4
    other = apply_overrides(cfg, ["train.steps=6", "train.lr=0.0005"])
    t = Trainer(other, run, progress=False, dataset=fmnist_small, allow_config_change=True)
    entry = {"step": 4, "changes": {"train.lr": [0.001, 0.0005], "train.steps": [4, 6]}}
    assert json.loads((run / "config.json").read_text())["history"] == [entry]
    t.fit()
    assert read_checkpoint_config(run / "checkpoints" / "last.safetensors")["history"] == [entry]
    assert json.loads((run / "model" / "config.json").read_text())["history"] == [entry]  # exported weights too
    # Resuming with the settings it now has adds nothing; going back to the old lr is a new change.
    Trainer(apply_overrides(other, ["train.steps=8"]), run, progress=False, dataset=fmnist_small)
    history = json.loads((run / "config.json").read_text())["history"]
    assert history == [entry, {"step": 6, "changes": {"train.steps": [6, 8]}}]
    with pytest.raises(CheckpointError, match=r"train.lr: 0.0005 -> 0.001"):
        Trainer(apply_overrides(cfg, ["train.steps=8"]), run, progress=False, dataset=fmnist_small)


def test_a_training_only_model_field_is_a_recorded_fine_tune_not_another_network(run4, fmnist_small):
    """The rollout objective as a fine-tune phase: switching it on when resuming needs the flag and is
    recorded; a network field (depth) is still refused, flag or not."""
    cfg, run = run4
    tune = apply_overrides(cfg, ["train.steps=6", "model.rollout_prob=1.0"])
    with pytest.raises(CheckpointError, match=r"model.rollout_prob: 0.0 -> 1.0"):
        Trainer(tune, run, progress=False, dataset=fmnist_small)
    Trainer(tune, run, progress=False, dataset=fmnist_small, allow_config_change=True).fit()
    history = json.loads((run / "config.json").read_text())["history"]
    assert history == [{"step": 4, "changes": {"model.rollout_prob": [0.0, 1.0], "train.steps": [4, 6]}}]
    with pytest.raises(CheckpointError, match="model.depth"):
        Trainer(apply_overrides(tune, ["model.depth=3"]), run, progress=False, dataset=fmnist_small,
                allow_config_change=True)


def test_exempt_fields_pass_unrecorded_and_steps_say_what_they_do(run4, fmnist_small, capsys):
    cfg, run = run4
    exempt = apply_overrides(cfg, ["train.log_every=1", "train.sample_every=3", "train.ckpt_every=1",
                                   "sample.cfg=1.5", "train.num_workers=0"])
    Trainer(exempt, run, progress=False, dataset=fmnist_small)
    assert json.loads((run / "config.json").read_text())["history"] == []
    capsys.readouterr()
    Trainer(apply_overrides(cfg, ["train.steps=8"]), run, progress=False, dataset=fmnist_small)
    out = capsys.readouterr().out
    assert "train.steps 4 -> 8: continuing from step 4" in out and "cosine LR" in out
    with pytest.raises(CheckpointError, match="at step 4, beyond --train.steps=3"):
        Trainer(apply_overrides(cfg, ["train.steps=3"]), run, progress=False, dataset=fmnist_small)


def test_fresh_run_drops_a_copied_history(tiny_cfg, fmnist_small, tmp_path):
    cfg = apply_overrides(tiny_cfg, ["train.steps=2"])
    cfg.history = [{"step": 1, "changes": {"train.lr": [0.1, 0.2]}}]
    Trainer(cfg, tmp_path / "new", progress=False, dataset=fmnist_small)
    assert json.loads((tmp_path / "new" / "config.json").read_text())["history"] == []


def test_config_changes_skips_exempt_and_network_sections():
    a = {"train": {"lr": 1.0, "log_every": 5}, "sample": {"cfg": 3.0}, "model": {"dim": 8}, "preset": "x"}
    b = {"train": {"lr": 2.0, "log_every": 9}, "sample": {"cfg": 1.0}, "model": {"dim": 16}, "preset": "y"}
    assert config_changes(a, b, skip_prefixes=("model.",)) == {"train.lr": [1.0, 2.0]}


def test_finished_run_says_so_with_its_last_loss(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--preset", "nestar-tiny", "--run-dir", str(run), "--quiet", "--train.steps=3",
            "--train.device=cpu"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    step, loss = last_logged_loss(run)
    with open(run / "log.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    assert step == 3 and loss == float(last["loss"])
    assert f"is finished: 3 of 3 steps, last loss {loss:.4f}" in out and "nan" not in out
