"""Shared fixtures: the `nestar-tiny` preset and a small slice of real Fashion-MNIST."""
from __future__ import annotations

import pytest
import torch

from nestar.config import apply_overrides
from nestar.data import DatasetMissingError, TensorImageDataset, load_fashion_mnist
from nestar.registry import RunConfig, get_preset

FMNIST_SUBSET = 256  # enough for 32 batches of 8 before the data order repeats


@pytest.fixture(scope="session")
def fmnist_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """The first FMNIST_SUBSET Fashion-MNIST train images (uint8 [N, 1, 32, 32]) and labels."""
    try:
        images, labels = load_fashion_mnist("train")
    except DatasetMissingError as e:
        pytest.skip(str(e))
    return images[:FMNIST_SUBSET].clone(), labels[:FMNIST_SUBSET].clone()


@pytest.fixture
def fmnist_small(fmnist_arrays) -> TensorImageDataset:
    images, labels = fmnist_arrays
    return TensorImageDataset(images.clone(), labels.clone())


@pytest.fixture
def tiny_cfg() -> RunConfig:
    """`nestar-tiny` on CPU: 10 steps, checkpoint every 5, no sample grids."""
    return apply_overrides(get_preset("nestar-tiny"),
                           ["train.steps=10", "train.ckpt_every=5", "train.sample_every=0", "train.device='cpu'"])
