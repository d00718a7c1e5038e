"""Fashion-MNIST from the Debian package `dataset-fashion-mnist` (or any folder with the idx files)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from nestar.errors import DataError, UserError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DatasetMissingError(UserError, FileNotFoundError):
    """The dataset files are not on disk; the message names the command that installs them."""


def resolve_dir(data_dir: str | None) -> Path:
    return Path(data_dir or os.environ.get("NESTAR_FASHION_MNIST_DIR") or DEFAULT_DIR)


def _find(base: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (base / name).is_file():
            return base / name
    raise DatasetMissingError(
        f"Fashion-MNIST file {stem}(.gz) not found in {base}. Install the dataset with:\n"
        f"    {INSTALL_HINT}\n"
        f"or pass --data.data_dir=DIR pointing at a folder with the four idx files."
    )


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 8 or data[0] != 0 or data[1] != 0:
        raise DataError(
            f"{path} is not an idx file (bad magic number); reinstall the dataset ({INSTALL_HINT}) "
            f"or point --data.data_dir at intact files"
        )
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DataError(
            f"{path} is truncated: expected {int(np.prod(dims))} bytes of data, got {arr.size}; "
            f"reinstall the dataset ({INSTALL_HINT}) or point --data.data_dir at intact files"
        )
    return arr.reshape(dims)


def load_fashion_mnist(
    split: str = "train", data_dir: str | None = None, pad_to: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (images uint8 [N, 1, pad_to, pad_to], labels int64 [N]); 28x28 is zero-padded centrally."""
    if split not in _FILES:
        raise ValueError(f"split must be one of {list(_FILES)}, got {split!r}")
    base = resolve_dir(data_dir)
    img_stem, lbl_stem = _FILES[split]
    images = _read_idx(_find(base, img_stem))
    label_path = _find(base, lbl_stem)
    labels = _read_idx(label_path).astype(np.int64)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1:
        raise DataError(
            f"{base}: expected 28x28 images and 1-d labels, got image shape {images.shape} and label "
            f"shape {labels.shape}; point --data.data_dir at Fashion-MNIST's idx files"
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{base}: {images.shape[0]} images but {labels.shape[0]} labels")
    bad = int(((labels < 0) | (labels >= len(CLASS_NAMES))).sum())
    if bad:  # an out-of-range label would index past the class embedding (or train a wrong class silently)
        raise DataError(
            f"{label_path}: {bad} label(s) outside [0, {len(CLASS_NAMES)}) (max {int(labels.max())}); "
            f"the file is not Fashion-MNIST's labels"
        )
    if pad_to < 28:
        raise ValueError(f"pad_to must be >= 28, got {pad_to}")
    lo = (pad_to - 28) // 2
    out = np.zeros((images.shape[0], 1, pad_to, pad_to), np.uint8)
    out[:, 0, lo : lo + 28, lo : lo + 28] = images
    return torch.from_numpy(out), torch.from_numpy(labels)


def fingerprint(split: str = "train", data_dir: str | None = None) -> str:
    """A cheap identity of the split on disk (file names, sizes, mtimes) for cache keys."""
    base = resolve_dir(data_dir)
    parts = []
    for stem in _FILES[split]:
        p = _find(base, stem)
        st = p.stat()
        parts.append(f"{p.name}:{st.st_size}")
    return ";".join(parts)
