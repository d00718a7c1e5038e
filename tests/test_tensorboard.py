"""`--train.tensorboard=true`: the CSV log's rows also land in <run_dir>/tensorboard as event files."""
from __future__ import annotations

import csv
import sys

import pytest
import torch

from nestar.config import ConfigError, apply_overrides
from nestar.data import TensorImageDataset
from nestar.registry import get_preset
from nestar.training import Trainer


def random_data(n: int = 64) -> TensorImageDataset:
    g = torch.Generator().manual_seed(0)
    return TensorImageDataset(torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8, generator=g),
                              torch.randint(0, 10, (n,), generator=g))


def cfg(steps: int = 10):
    return apply_overrides(get_preset("nestar-tiny"), [f"train.steps={steps}", "train.log_every=5",
                                                        "train.ckpt_every=5", "train.device='cpu'",
                                                        "train.tensorboard=true"])


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_event_file_next_to_the_csv_log(tmp_path, require):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        require(False, "tensorboard is not installed (pip install 'nestar[tensorboard]')")
    Trainer(cfg(), tmp_path, progress=False, dataset=random_data()).fit()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    found = scalars(tmp_path / "tensorboard")
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/images_per_sec", "train/loss_m1"):
        assert [s for s, _ in found[tag]] == [5, 10], tag
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [v for _, v in found["train/loss"]] == pytest.approx([float(r["loss"]) for r in rows], rel=1e-6)

    # Resumed from step 10 to 15: one point per step, no duplicates.
    Trainer(cfg(15), tmp_path, progress=False, dataset=random_data()).fit()
    assert [s for s, _ in scalars(tmp_path / "tensorboard")["train/loss"]] == [5, 10, 15]


def test_missing_tensorboard_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    with pytest.raises(ConfigError, match=r"pip install 'nestar\[tensorboard\]'"):
        Trainer(cfg(), tmp_path, progress=False, dataset=random_data())
