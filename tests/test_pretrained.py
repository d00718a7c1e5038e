"""Pretrained models that ship with the package: the shipped nestar-fmnist loads, keeps in step with
its preset and samples; the exporter and the lookup by name work; pyproject ships the files."""
from __future__ import annotations

import fnmatch
import hashlib
import re
from pathlib import Path

import pytest
import torch

import nestar.pretrained as pretrained
from nestar.cli.main import main
from nestar.config import apply_overrides
from nestar.pipeline import Pipeline
from nestar.registry import config_to_dict, get_preset
from nestar.serialization import CheckpointError, save_pretrained
from nestar.training import Trainer
from nestar.training.export import export_pretrained

SHIPPED = "nestar-fmnist"
ROOT = Path(__file__).resolve().parents[1]
needs_shipped = pytest.mark.skipif(
    SHIPPED not in pretrained.available(),
    reason=f"{SHIPPED} is not in this checkout yet (scripts/export_pretrained.py RUN_DIR {SHIPPED} adds it)")


# ----- the shipped model --------------------------------------------------------------------------
@needs_shipped
def test_shipped_model_keeps_in_step_with_its_preset_and_samples():
    pipe = Pipeline.from_pretrained(SHIPPED)
    shipped, preset = config_to_dict(pipe.config), config_to_dict(get_preset(SHIPPED))
    for section in ("model_type", "model", "tokenizer", "data"):  # what the weights' shapes and meaning follow
        assert shipped[section] == preset[section], f"{SHIPPED} {section} differs from the preset: re-export it"
    out = pipe(torch.tensor([7, 8]), num_steps=4, generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (2, 1, 32, 32) and torch.isfinite(out.images).all()
    assert out.images.min() >= -1 and out.images.max() <= 1 and not torch.equal(out.images[0], out.images[1])
    assert out.sequential_steps == 10 and len(out.intermediates) == len(out.known) == 3


def test_fast_preset_is_nestar_fmnist_with_at_most_10_head_evaluations_per_token():
    from nestar.heads.flow_mlp import FlowMLPHead, flow_solver
    from nestar.registry import build_model

    fast, base = get_preset("nestar-fmnist-fast"), get_preset("nestar-fmnist")
    fast_d, base_d = config_to_dict(fast), config_to_dict(base)
    assert [k for k in base_d if k not in ("preset", "sample") and fast_d[k] != base_d[k]] == []
    changed = {k for k in base_d["sample"] if fast_d["sample"][k] != base_d["sample"][k]}
    assert changed == {"head_sampler", "num_steps"}  # the same trained model, another solver
    model = build_model(fast)
    with flow_solver(model, fast.sample.head_sampler, fast.sample.time_grid):
        heads = [m for m in model.modules() if isinstance(m, FlowMLPHead)]
        assert heads and all(h.nfe(fast.sample.num_steps) <= 10 for h in heads)
    assert base.model.head.num_steps == base.sample.num_steps == 25


@needs_shipped
def test_shipped_metrics_describe_the_shipped_weights():
    folder = pretrained.pretrained_dir(SHIPPED)
    metrics = pretrained.read_metrics(SHIPPED)
    weights = folder / "model.safetensors"
    assert metrics["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert metrics["step"] == metrics["train_steps"] and metrics["weights"] == "EMA"
    assert weights.stat().st_size < 50 * 2**20


@needs_shipped
def test_cli_samples_the_shipped_model_by_class_name(tmp_path):
    out = tmp_path / "grid.png"
    assert main(["sample", "--pretrained", SHIPPED, "--classes", "sneaker,bag", "--per-class", "2",
                 "--num-steps", "4", "--out", str(out)]) == 0
    from PIL import Image

    assert Image.open(out).size == (2 * (2 * 34 + 2), 2 * (2 * 34 + 2))  # 2 rows (classes) x 2 columns


# ----- the mechanism, on a tiny run ---------------------------------------------------------------
@pytest.fixture
def tiny_run(tiny_cfg, fmnist_small, tmp_path):
    cfg = apply_overrides(tiny_cfg, ["train.steps=3", "train.ckpt_every=3"])
    t = Trainer(cfg, tmp_path / "run", progress=False, dataset=fmnist_small)
    t.fit()
    return t


def test_export_writes_the_three_files_and_loads_by_name(tiny_run, tmp_path, monkeypatch):
    root = tmp_path / "pretrained"
    dest = export_pretrained(tiny_run.run_dir, "tiny-demo", root)
    assert sorted(p.name for p in dest.iterdir()) == sorted(pretrained.FILES)
    metrics = pretrained.read_metrics("tiny-demo", root)
    assert metrics["step"] == 3 and metrics["params_M"] > 0 and metrics["last_loss"] > 0
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", root)
    assert pretrained.available() == ["tiny-demo"]
    by_name, by_run = Pipeline.from_pretrained("tiny-demo"), Pipeline.from_pretrained(tiny_run.run_dir)
    ema = tiny_run.ema.state_dict()
    assert all(torch.equal(v, ema[k]) for k, v in by_name.model.state_dict().items())
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert torch.equal(by_name([0, 9], generator=g()).images, by_run([0, 9], generator=g()).images)
    out = tmp_path / "grid.png"
    assert main(["sample", "--pretrained", "tiny-demo", "--classes", "Ankle-Boot,tshirt,7", "--per-class", "1",
                 "--batch-size", "2", "--out", str(out)]) == 0 and out.is_file()
    with pytest.raises(FileExistsError):
        export_pretrained(tiny_run.run_dir, "tiny-demo", root)


def test_a_path_wins_over_a_shipped_name(tiny_run, tmp_path, monkeypatch):
    export_pretrained(tiny_run.run_dir, "tiny-demo", tmp_path / "pretrained")
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path / "pretrained")
    local = tmp_path / "cwd" / "tiny-demo"
    save_pretrained(local, tiny_run.model, tiny_run.cfg)  # raw weights, not EMA: tell them apart
    monkeypatch.chdir(tmp_path / "cwd")
    loaded, raw, ema = (Pipeline.from_pretrained("tiny-demo").model.state_dict(), tiny_run.model.state_dict(),
                        tiny_run.ema.state_dict())
    assert not all(torch.equal(v, ema[k]) for k, v in raw.items())
    assert all(torch.equal(v, raw[k]) for k, v in loaded.items())


def test_unknown_name_says_which_ship(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path / "none")
    with pytest.raises(CheckpointError, match="none ship with this installation"):
        Pipeline.from_pretrained("no-such-model")


def test_unfinished_run_is_not_exported(tiny_cfg, fmnist_small, tmp_path):
    t = Trainer(apply_overrides(tiny_cfg, ["train.steps=4", "train.ckpt_every=2"]), tmp_path / "run",
                progress=False, dataset=fmnist_small)
    t.fit(max_steps=2)
    with pytest.raises(CheckpointError, match="stopped at step 2 of 4"):
        export_pretrained(t.run_dir, "half", tmp_path / "pretrained")


def test_package_data_ships_every_asset():
    """Every file under src/nestar/assets (and any future pretrained model) matches pyproject's package-data."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"\[tool\.setuptools\.package-data\]\s*nestar\s*=\s*\[(.*?)\]", text, re.S).group(1)
    patterns = re.findall(r'"([^"]+)"', block)
    assets = ROOT / "src" / "nestar" / "assets"
    files = [p.relative_to(assets.parent).as_posix() for p in assets.rglob("*") if p.is_file()]
    files += [f"assets/pretrained/any-name/{f}" for f in pretrained.FILES]
    missing = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert not missing, f"not shipped by pyproject.toml package-data: {missing}"
