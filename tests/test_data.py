"""Data, tokenizer and config: real files, clear errors."""
from __future__ import annotations

import gzip
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from nestar.config import ConfigError, apply_overrides
from nestar.data import DataConfig, DatasetMissingError, ImageFolderDataset, build_dataset, load_fashion_mnist, to_float
from nestar.registry import get_preset, resolve
from nestar.tokenizers import PatchTokenizer


def test_fashion_mnist_is_padded_scaled_and_labelled():
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 1, 32, 32) and images.dtype == torch.uint8
    assert labels.shape == (10000,) and set(labels.tolist()) == set(range(10))
    assert images[:, :, :2].max() == 0 and images[:, :, :, -2:].max() == 0  # 2-pixel zero border
    x = to_float(images[:16])
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1


def test_missing_dataset_names_the_install_command(tmp_path):
    with pytest.raises(DatasetMissingError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("train", data_dir=str(tmp_path))


def test_truncated_idx_file_is_reported(tmp_path):
    src = "/usr/share/datasets/fashion-mnist"
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        data = gzip.open(f"{src}/{name}").read()
        if "images" in name:
            data = data[: len(data) // 2]
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(data)
    with pytest.raises(ValueError, match="truncated"):
        load_fashion_mnist("test", data_dir=str(tmp_path))


def test_image_folder_resizes_crops_and_skips_corrupt_files(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40 + 10 * i, 64, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dogs" / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.warns(UserWarning, match="skipped 1 unreadable image file"):  # small folder: checked at start
        checked = ImageFolderDataset(tmp_path, image_size=32, channels=1)
    assert len(checked) == 6 and [p.name for p, _ in checked.skipped] == ["broken.jpg"]
    ds = ImageFolderDataset(tmp_path, image_size=32, channels=1, verify=False)  # large folders: skipped when met
    assert ds.classes == ["cats", "dogs"] and len(ds) == 7
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [ds[i] for i in range(len(ds))]
    assert all(x.shape == (1, 32, 32) and x.dtype == torch.uint8 for x, _ in items)
    assert any("1 unreadable file(s) skipped" in str(w.message) for w in caught)
    rgb = ImageFolderDataset(tmp_path, image_size=16, channels=3)
    assert rgb[0][0].shape == (3, 16, 16)
    cfg = DataConfig(name="folder", data_dir=str(tmp_path), num_classes=3)
    with pytest.raises(ValueError, match="num_classes=3 but .* has 2 class folders"):
        build_dataset(cfg)


@pytest.mark.parametrize("patch,grid,dim", [(2, 16, 4), (4, 8, 16), (1, 32, 1)])
def test_patch_tokenizer_round_trip_is_exact(patch, grid, dim):
    tok = PatchTokenizer(32, 1, patch)
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    t = tok.encode(x)
    assert t.shape == (3, grid * grid, dim) and tok.grid_size == grid and tok.token_dim == dim
    assert torch.equal(tok.decode(t), x)
    # token (0, 1) holds the pixels of the second patch in the first row
    assert torch.equal(t[0, 1].reshape(patch, patch), x[0, 0, :patch, patch : 2 * patch])


def test_overrides_validate_and_name_the_field():
    cfg = get_preset("nestar-fmnist")
    new = resolve(apply_overrides(cfg, ["--model.order=zorder", "--train.steps=7", "--tokenizer.patch_size=2"]))
    assert new.model.order == "zorder" and new.train.steps == 7
    assert new.model.grid_size == 16 and new.model.token_dim == 4  # derived from the tokenizer
    with pytest.raises(ConfigError, match="model.dimm"):
        apply_overrides(cfg, ["--model.dimm=3"])
    with pytest.raises(ConfigError, match="train.steps: expected an int"):
        apply_overrides(cfg, ["--train.steps=abc"])
    with pytest.raises(ConfigError, match="order must be one of"):
        apply_overrides(cfg, ["--model.order=spiral"])
    with pytest.raises(ConfigError, match="64 tokens is not a power of k=16"):
        apply_overrides(cfg, ["--model.k=16"])
    both = apply_overrides(cfg, ["--tokenizer.patch_size=8", "--model.k=16"])  # 4x4 grid: 16 = 16^1
    assert both.model.grid_size == 4 and both.model.k == 16
