"""Trainer, checkpoints and Pipeline: exact resume, atomic/corrupt checkpoints, config checks,
the NaN stop, export round trips, EMA and LR math. Runs on the `nestar-tiny` preset and real
Fashion-MNIST images in a few seconds."""
from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn

from nestar.config import apply_overrides
from nestar.data import TensorImageDataset
from nestar.pipeline import Pipeline
from nestar.registry import build_model
from nestar.serialization import (
    CheckpointError, load_checkpoint, load_pretrained, read_checkpoint_config, save_checkpoint, save_pretrained,
)
from nestar.training import Trainer, TrainingDivergedError
from nestar.training.data_order import StepBatchSampler
from nestar.training.ema import ema_decay_at, make_ema, update_ema
from nestar.training.lr import lr_at, make_optimizer
from nestar.utils.io import atomic_write


def state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def tmp_files(directory) -> list:
    return [p.name for p in directory.rglob("*.tmp")]


# ----- resume ---------------------------------------------------------------------------------
def test_resume_equals_straight_run(tiny_cfg, fmnist_small, tmp_path):
    straight = Trainer(tiny_cfg, tmp_path / "a", progress=False, dataset=fmnist_small)
    res = straight.fit()
    assert res.steps == 10 and math.isfinite(res.final_loss)

    first = Trainer(tiny_cfg, tmp_path / "b", progress=False, dataset=fmnist_small)
    assert first.fit(max_steps=5).steps == 5
    torch.manual_seed(1234)  # whatever happened to the global RNG in between must not matter
    resumed = Trainer(tiny_cfg, tmp_path / "b", progress=False, dataset=fmnist_small)
    assert resumed.step == 5
    assert not state_equal(resumed.model, straight.model)
    resumed.fit()

    assert resumed.step == 10
    assert state_equal(resumed.model, straight.model)
    assert state_equal(resumed.ema, straight.ema)
    opt_a, opt_b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(opt_a[i][k], opt_b[i][k]) for i in opt_a for k in opt_a[i])
    with open(tmp_path / "b" / "log.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [5, 10]


def test_data_order_is_a_function_of_seed_and_step():
    a = StepBatchSampler(20, 4, seed=3)
    b = StepBatchSampler(20, 4, seed=3, start_step=7)
    assert [a.indices(s) for s in range(12)][7:] == [b.indices(s) for s in range(7, 12)]
    epoch0 = sum((a.indices(s) for s in range(5)), [])
    assert sorted(epoch0) == list(range(20))  # one epoch is a permutation
    assert epoch0 != sum((a.indices(s) for s in range(5, 10)), [])  # a new order each epoch
    assert StepBatchSampler(20, 4, seed=4).indices(0) != a.indices(0)


# ----- checkpoints ----------------------------------------------------------------------------
@pytest.fixture
def trained(tiny_cfg, fmnist_small, tmp_path):
    """A 5-step run; returns the trainer (its checkpoint is run_dir/checkpoints/last.safetensors)."""
    cfg = apply_overrides(tiny_cfg, ["train.steps=5"])
    t = Trainer(cfg, tmp_path / "run", progress=False, dataset=fmnist_small)
    t.fit()
    return t


def test_checkpoint_round_trip_and_atomic(trained, tmp_path):
    path = tmp_path / "ck" / "c.safetensors"
    save_checkpoint(path, model=trained.model, ema=trained.ema, optimizer=trained.optimizer, step=5,
                    config=trained.cfg, extra={"note": "x"})
    save_checkpoint(path, model=trained.model, ema=trained.ema, optimizer=trained.optimizer, step=5,
                    config=trained.cfg, extra={"note": "x"})  # overwrite in place
    assert tmp_files(tmp_path) == []
    assert path.read_bytes()[:8]  # a real file, not a leftover link or temp

    model, ema = build_model(trained.cfg), build_model(trained.cfg)
    opt = make_optimizer(model, trained.cfg.train)
    info = load_checkpoint(path, model=model, ema=ema, optimizer=opt, config=trained.cfg)
    assert info["step"] == 5 and info["extra"] == {"note": "x"}
    assert info["config"]["model"]["dim"] == trained.cfg.model.dim == read_checkpoint_config(path)["model"]["dim"]
    assert state_equal(model, trained.model) and state_equal(ema, trained.ema)
    assert not state_equal(model, ema)
    assert opt.state_dict()["state"].keys() == trained.optimizer.state_dict()["state"].keys()


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def crash(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, crash)
    assert path.read_bytes() == b"old" and tmp_files(tmp_path) == []


@pytest.mark.parametrize("keep", [0.5, 0.01])
def test_truncated_checkpoint_is_a_clear_error(trained, tiny_cfg, fmnist_small, keep):
    path = trained.ckpt_path
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
        load_checkpoint(path, model=build_model(trained.cfg))
    assert str(path) in str(e.value)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        Trainer(tiny_cfg, trained.run_dir, progress=False, dataset=fmnist_small)  # no silent restart
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        Pipeline.from_pretrained(trained.run_dir)


def test_config_mismatch_names_each_field(trained, tiny_cfg, fmnist_small):
    other = apply_overrides(tiny_cfg, ["model.dim=48", "tokenizer.patch_size=2"])
    before, cfg_json = trained.ckpt_path.read_bytes(), (trained.run_dir / "config.json").read_text()
    with pytest.raises(CheckpointError) as e:
        Trainer(other, trained.run_dir, progress=False, dataset=fmnist_small)
    msg = str(e.value)
    assert str(trained.ckpt_path) in msg and "does not match the config" in msg
    assert "model.dim: 32 != 48" in msg and "tokenizer.patch_size: 4 != 2" in msg
    assert trained.ckpt_path.read_bytes() == before
    assert (trained.run_dir / "config.json").read_text() == cfg_json  # nothing overwritten
    # train settings may change on resume when asked for (tests/test_resume.py: when not)
    longer = apply_overrides(tiny_cfg, ["train.steps=6", "train.lr=0.0005", "train.weight_decay=0.1"])
    t = Trainer(longer, trained.run_dir, progress=False, dataset=fmnist_small, allow_config_change=True)
    assert t.step == 5 and t.optimizer.param_groups[0]["weight_decay"] == 0.1
    assert t.fit().steps == 6


def test_weight_mismatch_names_keys(trained, tmp_path):
    wrong = apply_overrides(trained.cfg, ["model.depth=2"])
    with pytest.raises(CheckpointError, match="missing keys") as e:
        load_checkpoint(trained.ckpt_path, model=build_model(wrong))  # no config given: weights checked
    assert "blocks.1." in str(e.value)
    wider = apply_overrides(trained.cfg, ["model.head.width=48"])
    with pytest.raises(CheckpointError, match="mismatched shapes"):
        load_checkpoint(trained.ckpt_path, model=build_model(wider))


# ----- NaN stop -------------------------------------------------------------------------------
def test_nan_stops_before_update_and_keeps_last_checkpoint(tiny_cfg, fmnist_arrays, tmp_path):
    images, labels = fmnist_arrays
    images = images.float()  # raw [0, 255] values, as float so one pixel can be corrupted
    bad_step = 7  # 1-based: the 7th update sees the corrupt image
    idx = StepBatchSampler(len(images), tiny_cfg.train.batch_size, tiny_cfg.train.seed).indices(bad_step - 1)[0]
    images[idx, 0, 16, 16] = float("nan")
    data = TensorImageDataset(images, labels)

    Trainer(tiny_cfg, tmp_path, progress=False, dataset=data).fit(max_steps=5)
    ckpt = tmp_path / "checkpoints" / "last.safetensors"
    before = ckpt.read_bytes()

    t = Trainer(tiny_cfg, tmp_path, progress=False, dataset=data)
    with pytest.raises(TrainingDivergedError) as e:
        t.fit()
    msg = str(e.value)
    assert f"step {bad_step}" in msg and str(ckpt) in msg and "(step 5)" in msg
    assert ckpt.read_bytes() == before and tmp_files(tmp_path) == []
    assert t.step == bad_step - 1
    assert all(s["step"].item() == bad_step - 1 for s in t.optimizer.state.values())  # no 7th update
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    assert all(torch.isfinite(p).all() for p in t.ema.parameters())


# ----- export and pipeline --------------------------------------------------------------------
def test_pipeline_round_trip_same_images(tiny_cfg, fmnist_small, tmp_path):
    cfg = apply_overrides(tiny_cfg, ["train.steps=4", "train.sample_every=4", "train.log_every=2"])
    t = Trainer(cfg, tmp_path / "run", progress=False, dataset=fmnist_small)
    res = t.fit()
    run = tmp_path / "run"
    assert res.checkpoint == run / "checkpoints" / "last.safetensors" and res.images_per_sec > 0
    assert (run / "config.json").is_file() and (run / "samples" / "step_000004.png").is_file()
    with open(run / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["2", "4"]
    assert {"loss", "loss_m1", "lr", "grad_norm", "images_per_sec", "elapsed_s"} <= rows[0].keys()

    labels = torch.tensor([0, 3, 9, 3, 1])

    def images(pipe: Pipeline, seed: int = 7, **kw) -> torch.Tensor:
        return pipe(labels, generator=torch.Generator().manual_seed(seed), batch_size=2, **kw).images

    from_run = Pipeline.from_pretrained(run)  # EMA weights of the last checkpoint
    assert state_equal(from_run.model, t.ema)
    out = from_run(labels, generator=torch.Generator().manual_seed(7), batch_size=2)
    assert out.images.shape == (5, 1, 32, 32) and out.images.min() >= -1 and out.images.max() <= 1
    assert out.intermediates and all(s.shape == out.images.shape for s in out.intermediates)
    assert out.sequential_steps == from_run.model.sequential_steps()

    ref = out.images
    assert torch.equal(images(from_run), ref)  # same seed, same images
    assert not torch.equal(images(from_run, seed=8), ref)
    assert torch.equal(images(Pipeline.from_pretrained(run / "model")), ref)  # trainer's export
    from_run.save_pretrained(tmp_path / "export")
    assert torch.equal(images(Pipeline.from_pretrained(tmp_path / "export")), ref)
    model, loaded_cfg = load_pretrained(tmp_path / "export")
    assert loaded_cfg == t.cfg and state_equal(model, t.ema)

    raw = Pipeline.from_pretrained(run / "checkpoints" / "last.safetensors", use_ema=False)
    assert state_equal(raw.model, t.model)
    with pytest.raises(CheckpointError, match="neither a run directory"):
        Pipeline.from_pretrained(tmp_path / "nowhere")


def test_save_pretrained_files(tiny_cfg, tmp_path):
    model = build_model(tiny_cfg)
    save_pretrained(tmp_path, model, tiny_cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded, cfg = load_pretrained(tmp_path)
    assert state_equal(loaded, model) and cfg == tiny_cfg
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_pretrained(tmp_path)


def test_bf16_autocast_keeps_fp32_weights(tiny_cfg, fmnist_small, tmp_path):
    cfg = apply_overrides(tiny_cfg, ["train.steps=2", "train.precision=bf16"])
    t = Trainer(cfg, tmp_path, progress=False, dataset=fmnist_small)
    assert math.isfinite(t.fit().final_loss)
    assert all(p.dtype == torch.float32 for p in t.model.parameters())


# ----- EMA, LR, optimiser groups --------------------------------------------------------------
def test_ema_math():
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(10, 0.999) == pytest.approx(11 / 20)
    assert ema_decay_at(10**6, 0.999) == 0.999
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = make_ema(model)
    assert not any(p.requires_grad for p in ema.parameters()) and not ema.training
    old = [p.detach().clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(5.0)
    d = update_ema(ema, model, step=3, decay=0.999)
    assert d == pytest.approx(4 / 13)
    for e, o, p in zip(ema.parameters(), old, model.parameters()):
        torch.testing.assert_close(e, d * o + (1 - d) * p)
    assert torch.equal(ema[1].running_mean, model[1].running_mean)


def test_lr_schedule(tiny_cfg):
    tc = apply_overrides(tiny_cfg, ["train.steps=100", "train.warmup_steps=10", "train.lr=0.01"]).train
    assert lr_at(0, tc) == pytest.approx(0.001) and lr_at(9, tc) == pytest.approx(0.01)
    assert lr_at(10, tc) == pytest.approx(0.01)
    assert lr_at(99, tc) == pytest.approx(0.01 * tc.min_lr_ratio, rel=1e-2)
    assert lr_at(500, tc) == pytest.approx(0.01 * tc.min_lr_ratio)
    lrs = [lr_at(s, tc) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    const = apply_overrides(tiny_cfg, ["train.lr_schedule=constant", "train.lr=0.01"]).train
    assert lr_at(10**4, const) == 0.01


def test_no_weight_decay_on_vectors(tiny_cfg):
    model = build_model(tiny_cfg)
    decay, no_decay = make_optimizer(model, tiny_cfg.train).param_groups
    assert decay["weight_decay"] == tiny_cfg.train.weight_decay and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert no_decay["params"]


def test_config_check_fills_fields_added_since_the_checkpoint(tiny_cfg):
    """A checkpoint written before a field existed still matches its default, and only that."""
    import copy

    from nestar.registry import config_to_dict
    from nestar.serialization import check_config

    saved = copy.deepcopy(config_to_dict(tiny_cfg))
    del saved["model"]["head"]["kind"], saved["data"]["latent_cache"]  # fields newer than the checkpoint
    check_config("old.safetensors", saved, tiny_cfg)
    saved["model"]["dim"] = 64
    with pytest.raises(CheckpointError, match=r"model\.dim: 64 != 32"):
        check_config("old.safetensors", saved, tiny_cfg)
