"""Shared fixtures: the `nestar-tiny` preset, a small slice of real Fashion-MNIST, a tiny Inception stand-in."""
from __future__ import annotations

import warnings

import pytest
import torch

from nestar.config import apply_overrides
from nestar.data import DatasetMissingError, TensorImageDataset, load_fashion_mnist
from nestar.registry import RunConfig, get_preset

FMNIST_SUBSET = 256  # enough for 32 batches of 8 before the data order repeats


@pytest.fixture(scope="session", autouse=True)
def fresh_cache(tmp_path_factory):
    """Every test run starts from an empty nestar cache, as on a fresh machine (never the user's)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("NESTAR_CACHE", str(tmp_path_factory.mktemp("nestar_cache")))
    yield
    mp.undo()


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


class FakeInception(torch.nn.Module):
    """Mimics NVIDIA's inception-2015-12-05.pt calling convention on a tiny scale."""

    def __init__(self, dim: int = 2048):
        super().__init__()
        self.proj = torch.nn.Linear(3, dim)
        self.head = torch.nn.Linear(dim, 1008)

    def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        assert img.shape[1:] == (3, 299, 299)
        f = torch.relu(self.proj(img.mean(dim=(2, 3)) / 255.0))
        if return_features:
            return f
        return torch.softmax(self.head(f), dim=1)


@pytest.fixture
def fake_inception(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("NESTAR_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "fake_inception.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(FakeInception(dim=16)).save(str(path))  # small features keep the test fast
    return f"inception:{path}:0-255"  # NVIDIA's convention, given explicitly (unknown file)


@pytest.fixture
def require():
    """`require(ok, reason)`: skip when an optional tool or extra is missing, but fail under
    NESTAR_REQUIRE_OPTIONAL=1, which .ci/run sets after installing them all (so CI never skips)."""
    import os

    def check(ok: bool, reason: str) -> None:
        if ok:
            return
        if os.environ.get("NESTAR_REQUIRE_OPTIONAL") == "1":
            pytest.fail(f"{reason} (NESTAR_REQUIRE_OPTIONAL=1: CI must install it)")
        pytest.skip(reason)

    return check
