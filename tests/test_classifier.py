"""Dataset classifier: cache key, cache round trip, staleness, determinism; reference-stats cache."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nestar.data import DataConfig
from nestar.evaluation.classifier import ClassifierSettings, classifier_key, get_classifier, train_classifier
from nestar.evaluation.extractors import ClassifierExtractor
from nestar.evaluation.reference import reference_stats

TINY = ClassifierSettings(epochs=1, batch_size=32, width=4)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _fake_fmnist(root: Path, n: int = 64, seed: int = 0) -> DataConfig:
    """Idx files of `n` random 28x28 images per split: a stand-in with the real file layout."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for img, lbl in (("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                     ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")):
        labels = np.arange(n) % 10
        images = rng.integers(0, 40, (n, 28, 28)) + labels[:, None, None] * 20  # brightness encodes the class
        _write_idx(root / f"{img}.gz", images)
        _write_idx(root / f"{lbl}.gz", labels)
    return DataConfig(data_dir=str(root))


def test_key_changes_with_data_fingerprint_and_settings(tmp_path):
    cfg_a = _fake_fmnist(tmp_path / "a", n=64)
    cfg_b = _fake_fmnist(tmp_path / "b", n=80)  # different files on disk
    cfg_a2 = _fake_fmnist(tmp_path / "a2", n=64)  # same names and sizes: same fingerprint
    assert classifier_key(cfg_a, TINY) != classifier_key(cfg_b, TINY)
    assert classifier_key(cfg_a, TINY) == classifier_key(cfg_a2, TINY)
    assert classifier_key(cfg_a, TINY) != classifier_key(cfg_a, ClassifierSettings(epochs=2, batch_size=32, width=4))
    assert classifier_key(cfg_a, TINY, fingerprints=("x", "y")) != classifier_key(cfg_a, TINY, fingerprints=("x2", "y"))


def test_cache_round_trip_and_retrain_when_stale(tmp_path, capsys):
    cfg = _fake_fmnist(tmp_path / "data")
    cache = tmp_path / "cache"
    m1, info1 = get_classifier(cfg, cache_dir=cache, progress=False, settings=TINY)
    assert not info1["cached"] and Path(info1["cache_path"]).is_file()
    assert set(info1) >= {"test_accuracy", "train_seconds", "cache_path", "key"}
    assert json.loads(Path(info1["cache_path"]).with_suffix(".json").read_text())["key"] == info1["key"]
    m2, info2 = get_classifier(cfg, cache_dir=cache, progress=False, settings=TINY)
    assert info2["cached"] and info2["key"] == info1["key"]
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    assert torch.equal(m1(x), m2(x))
    assert m1.features(x).shape == (4, 128)
    # different training settings -> different key -> trained again, alongside the old file
    _, info3 = get_classifier(cfg, cache_dir=cache, progress=False, settings=TINY, seed=1)
    assert not info3["cached"] and info3["key"] != info1["key"]
    # a corrupt weights file is retrained, not trusted
    Path(info1["cache_path"]).write_bytes(b"garbage")
    _, info4 = get_classifier(cfg, cache_dir=cache, progress=False, settings=TINY)
    assert not info4["cached"] and "unreadable" in capsys.readouterr().out


def test_training_is_deterministic_and_leaves_global_rng_alone(tmp_path):
    cfg = _fake_fmnist(tmp_path / "data")
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    m1, _ = train_classifier(cfg, TINY, progress=False)
    after = torch.rand(3)
    m2, _ = train_classifier(cfg, TINY, progress=False)
    assert torch.equal(before, after)
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(v1, v2), k


@pytest.mark.filterwarnings("ignore:only .* samples for 128-d features")  # tiny fake data, on purpose
def test_reference_stats_are_cached_and_keyed_by_extractor(tmp_path):
    cfg = _fake_fmnist(tmp_path / "data")
    model, info = get_classifier(cfg, cache_dir=tmp_path / "cls", progress=False, settings=TINY)
    ext = ClassifierExtractor(model, info)
    s1 = reference_stats(cfg, ext, cache_dir=tmp_path / "ref", progress=False)
    assert not s1.meta["cached"] and s1.num_images == 64 and s1.sigma.shape == (128, 128)
    assert s1.logits.shape == (64, 10) and s1.labels.tolist() == [i % 10 for i in range(64)]
    assert s1.knn_radii.shape == (64,) and s1.knn_radii.dtype == torch.float64
    s2 = reference_stats(cfg, ext, cache_dir=tmp_path / "ref", progress=False)
    assert s2.meta["cached"] and np.array_equal(s1.mu, s2.mu) and torch.equal(s1.features, s2.features)
    assert torch.equal(s1.knn_radii, s2.knn_radii) and np.array_equal(s1.sigma, s2.sigma)
    s3 = reference_stats(cfg, ext, cache_dir=tmp_path / "ref", progress=False, max_images=20)
    assert not s3.meta["cached"] and s3.num_images == 20
    torch.manual_seed(0)
    other = ClassifierExtractor(type(model)(1, 10, width=4))  # other weights -> other identity -> other file
    s4 = reference_stats(cfg, other, cache_dir=tmp_path / "ref", progress=False)
    assert not s4.meta["cached"] and s4.meta["key"] != s1.meta["key"]
    # the same cache key with other weights (a classifier retrained on another machine) is another network
    retrained = ClassifierExtractor(type(model)(1, 10, width=TINY.width), info)
    assert retrained.identity.startswith(ext.identity.rsplit(":", 1)[0]) and retrained.identity != ext.identity
    s5 = reference_stats(cfg, retrained, cache_dir=tmp_path / "ref", progress=False)
    assert not s5.meta["cached"]
