"""Datasets: Fashion-MNIST (the embedded default) and image folders, behind one config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from nestar.config import ConfigError, check_min
from nestar.errors import DataError
from nestar.data.fashion_mnist import CLASS_NAMES, DatasetMissingError, load_fashion_mnist
from nestar.data.image_folder import ImageFolderDataset


@dataclass
class DataConfig:
    """Which images to train on. `name`: 'fashion_mnist' or 'folder' (then `data_dir` is the root).

    `latent_cache`: a `nestar cache-latents` directory; training then reads posterior samples of
    the cached VAE latents (random flip) instead of encoding images every step. The cache is
    checked against the run's tokenizer and image size before training starts.
    """

    name: str = "fashion_mnist"
    data_dir: Optional[str] = None
    image_size: int = 32
    channels: int = 1
    num_classes: int = 10
    latent_cache: Optional[str] = None

    def __post_init__(self) -> None:
        if self.name not in ("fashion_mnist", "folder"):
            raise ValueError(f"data.name must be 'fashion_mnist' or 'folder', got {self.name!r}")
        if self.name == "folder" and not self.data_dir:
            raise ValueError("data.data_dir is required when data.name='folder'")
        if self.channels not in (1, 3):
            raise ConfigError(
                f"data.channels must be 1 (grayscale) or 3 (RGB), got {self.channels}"
            )
        check_min("data.", 1, image_size=self.image_size, num_classes=self.num_classes)
        if self.name == "fashion_mnist" and (self.channels, self.num_classes) != (
            1,
            len(CLASS_NAMES),
        ):
            raise ConfigError(
                f"data.name='fashion_mnist' has data.channels=1 and data.num_classes={len(CLASS_NAMES)}, "
                f"got channels={self.channels}, num_classes={self.num_classes}; drop the overrides "
                f"or use --data.name=folder for other data"
            )
        if self.name == "fashion_mnist" and self.image_size < 28:
            raise ConfigError(
                f"data.image_size must be >= 28 for fashion_mnist (28x28 images, zero-padded), "
                f"got {self.image_size}"
            )


class TensorImageDataset(torch.utils.data.Dataset):
    """In-memory uint8 images with labels; supports batched fetching (`__getitems__`)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        return self.images[idx], int(self.labels[idx])

    def __getitems__(self, idxs: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(idxs)
        return self.images[idx], self.labels[idx]


def build_dataset(cfg: DataConfig, split: str = "train") -> torch.utils.data.Dataset:
    """A dataset yielding (uint8 [C, S, S], label)."""
    if cfg.name == "fashion_mnist":
        images, labels = load_fashion_mnist(split, cfg.data_dir, pad_to=cfg.image_size)
        return TensorImageDataset(images, labels)
    root = cfg.data_dir if split == "train" else f"{cfg.data_dir}/../{split}"
    ds = ImageFolderDataset(root, cfg.image_size, cfg.channels)
    if len(ds.classes) != cfg.num_classes:
        raise DataError(
            f"data.num_classes={cfg.num_classes} but {root} has {len(ds.classes)} class folders; "
            f"set --data.num_classes={len(ds.classes)}"
        )
    return ds


def class_names(cfg: DataConfig) -> Optional[tuple[str, ...]]:
    """Names of the classes, in label order: Fashion-MNIST's, or an image folder's sub-folders when
    that folder is on this machine; None when unknown."""
    if cfg.name == "fashion_mnist":
        return CLASS_NAMES
    root = Path(cfg.data_dir or "")
    names = (
        tuple(sorted(d.name for d in root.iterdir() if d.is_dir()))
        if cfg.data_dir and root.is_dir()
        else ()
    )
    return names if len(names) == cfg.num_classes else None


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images_uint8.float().div(127.5).sub(1.0)


def collate(data: Any) -> Any:
    """Batched datasets (`__getitems__`) already return (images, labels) tensors."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return data
    return torch.utils.data.default_collate(data)


__all__ = [
    "CLASS_NAMES",
    "DataConfig",
    "DataError",
    "DatasetMissingError",
    "ImageFolderDataset",
    "TensorImageDataset",
    "build_dataset",
    "class_names",
    "collate",
    "load_fashion_mnist",
    "to_float",
]
