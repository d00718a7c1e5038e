"""Precision chosen from the hardware (utils/precision.py) and recorded by every run."""
from __future__ import annotations

import json

import pytest
import torch

from nestar.config import ConfigError, apply_overrides, to_dict
from nestar.data import DataConfig, DatasetMissingError
from nestar.evaluation.classifier import SHIPPED_DIR, ClassifierSettings, classifier_key
from nestar.registry import RunConfig, get_preset, load_run_config
from nestar.training import Trainer
from nestar.utils import precision as P


def _fake_cpu(monkeypatch, cap: str, native: bool) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: cap)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)


def test_auto_is_fp32_without_native_bf16(monkeypatch):
    _fake_cpu(monkeypatch, "AVX2", False)
    p = P.resolve_precision("auto", "cpu")
    assert p.name == "fp32" and not p.bf16
    assert p.describe() == "precision: fp32 (CPU AVX2, no native bf16)"
    with p.autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_auto_is_bf16_with_native_bf16(monkeypatch):
    _fake_cpu(monkeypatch, "AVX512", True)
    p = P.resolve_precision("auto", "cpu")
    assert p.name == "bf16" and p.reason == "CPU AVX512, native bf16"
    with p.autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_forced_bf16_where_emulated_warns_and_explicit_fp32_is_kept(monkeypatch):
    _fake_cpu(monkeypatch, "AVX2", False)
    with pytest.warns(UserWarning, match=r"train.precision=bf16 on CPU AVX2.*emulated.*10-15x slower"):
        p = P.resolve_precision("bf16", "cpu", "train.precision")
    assert p.name == "bf16" and "emulated" in p.reason
    _fake_cpu(monkeypatch, "AVX512", True)
    assert P.resolve_precision("fp32", "cpu").name == "fp32"


@pytest.mark.parametrize("override", ["train.precision=fp16", "sample.precision=half"])
def test_unknown_precision_is_a_config_error_naming_the_field(override):
    field = override.split("=")[0]
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        apply_overrides(get_preset("nestar-tiny"), [override])


def test_legacy_bf16_field_is_read_as_precision():
    for old, new in ((True, "bf16"), (False, "fp32")):
        d = to_dict(get_preset("nestar-tiny"))
        del d["train"]["precision"]
        d["train"]["bf16"] = old
        assert load_run_config(d).train.precision == new


def test_trainer_prints_and_records_the_resolved_precision(monkeypatch, tiny_cfg, fmnist_small, tmp_path, capsys):
    _fake_cpu(monkeypatch, "AVX2", False)
    cfg = apply_overrides(tiny_cfg, ["train.steps=1", "train.precision=auto"])
    Trainer(cfg, tmp_path, progress=False, dataset=fmnist_small).fit()
    assert "precision: fp32 (CPU AVX2, no native bf16)" in capsys.readouterr().out
    saved = RunConfig.from_dict(json.loads((tmp_path / "config.json").read_text()))
    assert saved.train.precision == "fp32"


def test_classifier_key_ignores_precision_and_default_classifier_ships():
    a = classifier_key(DataConfig(), ClassifierSettings(precision="fp32"), fingerprints=("a", "b"))
    assert a == classifier_key(DataConfig(), ClassifierSettings(precision="bf16"), fingerprints=("a", "b"))
    assert a != classifier_key(DataConfig(), ClassifierSettings(epochs=1), fingerprints=("a", "b"))
    # The default classifier of the Debian Fashion-MNIST files ships with the package: a fresh
    # machine never trains it (the key hashes the data files' names and sizes).
    try:
        key = classifier_key(DataConfig())
    except DatasetMissingError as e:
        pytest.skip(str(e))
    assert (SHIPPED_DIR / f"fashion_mnist-{key}.safetensors").is_file()


def test_legacy_nestar_configs_keep_the_defaults_they_were_trained_with():
    """A NestAR config written before `neighbour_context` / `loss_weighting` / `order_offset` existed
    reads as trained then (no neighbour context, per-module loss means, lattice offset 0), whatever
    today's defaults are."""
    d = to_dict(get_preset("nestar-tiny"))
    assert d["model"]["neighbour_context"] is True and d["model"]["order_offset"] == 2
    del d["model"]["neighbour_context"], d["model"]["loss_weighting"], d["model"]["order_offset"]
    old = load_run_config(d).model
    assert (old.neighbour_context, old.loss_weighting, old.order_offset) == (False, "module", 0)
    d["model"]["loss_weighting"] = "token"  # a value that was written is kept
    assert load_run_config(d).model.loss_weighting == "token"
