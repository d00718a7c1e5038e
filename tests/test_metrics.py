"""Metrics against closed forms and brute force; extractors (TorchScript path) and reference cache."""
from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import cdist

from conftest import FakeInception
from nestar.data import DataConfig, load_fashion_mnist, to_float
from nestar.evaluation.classifier import SmallCNN
from nestar.evaluation.extractors import ClassifierExtractor, InceptionTorchScript, build_extractor
from nestar.evaluation.metrics import (
    class_agreement, fid_from_features, frechet_distance, gaussian_stats, inception_score, kid, knn_radii, precision_recall,
    within_class_diversity,
)


def _spd(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / (rank or d)


def _scipy_fd(mu1, s1, mu2, s2, eps: float = 0.0) -> float:
    """The textbook computation (pytorch-fid style), for cross-checking."""
    off = eps * np.eye(s1.shape[0])
    covmean = scipy.linalg.sqrtm((s1 + off) @ (s2 + off)).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# --- Fréchet distance -------------------------------------------------------------------------

def test_fd_equal_covariances_is_squared_mean_distance():
    rng = np.random.default_rng(0)
    s = _spd(rng, 12)
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    assert frechet_distance(mu1, s, mu2, s) == pytest.approx(((mu1 - mu2) ** 2).sum(), rel=1e-9, abs=1e-9)
    assert frechet_distance(mu1, s, mu1, s) == pytest.approx(0.0, abs=1e-9)


def test_fd_diagonal_covariances_closed_form():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 4, 9), rng.uniform(0.1, 4, 9)
    mu1, mu2 = rng.standard_normal(9), rng.standard_normal(9)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # singular diagonals: zero variances are allowed and still exact
    a[:3], b[2:5] = 0.0, 0.0
    expected = ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu1, np.diag(b)) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("d", [2, 16, 64])
def test_fd_matches_scipy_on_random_spd(d):
    rng = np.random.default_rng(d)
    s1, s2 = _spd(rng, d), _spd(rng, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(_scipy_fd(mu1, s1, mu2, s2), rel=1e-7)
    assert ours == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)  # symmetric
    # torch float32 inputs give the same float64 answer
    t = [torch.from_numpy(x).float() for x in (mu1, s1, mu2, s2)]
    assert frechet_distance(*t) == pytest.approx(ours, rel=1e-5)


def test_fd_near_singular_covariances():
    """Rank-deficient covariances (N < D): stable, non-negative, and close to scipy with a tiny eps."""
    rng = np.random.default_rng(3)
    d = 32
    s1, s2 = _spd(rng, d, rank=5), _spd(rng, d, rank=7)
    mu = np.zeros(d)
    ours = frechet_distance(mu, s1, mu, s2)
    assert np.isfinite(ours) and ours > 0
    assert ours == pytest.approx(_scipy_fd(mu, s1, mu, s2, eps=1e-10), rel=1e-4)
    # equal singular covariances: exactly the mean term
    assert frechet_distance(mu, s1, mu + 1.0, s1) == pytest.approx(float(d), rel=1e-6)


def test_fd_rejects_bad_inputs():
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(np.zeros(2), np.eye(2) * np.nan, np.zeros(2), np.eye(2))


def test_gaussian_stats_warns_when_fewer_samples_than_dims():
    with pytest.warns(UserWarning, match="unreliable"):
        gaussian_stats(np.random.default_rng(0).standard_normal((10, 20)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mu, sigma = gaussian_stats(np.random.default_rng(0).standard_normal((50, 20)))
    assert mu.shape == (20,) and sigma.shape == (20, 20) and mu.dtype == np.float64


def test_fid_from_features_of_gaussians_tracks_the_mean_shift():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((4000, 8)), rng.standard_normal((4000, 8))
    assert fid_from_features(x, y) < 0.05
    assert fid_from_features(x, y + 1.0) == pytest.approx(8.0, rel=0.05)


# --- KID, IS ----------------------------------------------------------------------------------

def test_kid_near_zero_for_one_distribution_and_positive_for_shifted():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((600, 16)), rng.standard_normal((600, 16))
    same_mean, same_std = kid(x, y, subsets=20, subset_size=300)
    shift_mean, _ = kid(x, y + 0.5, subsets=20, subset_size=300)
    assert abs(same_mean) < 3 * same_std + 1e-3
    assert shift_mean > 0.05 and shift_mean > 20 * abs(same_mean)


def test_kid_matches_direct_unbiased_mmd_on_full_sets():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((40, 5)), rng.standard_normal((40, 5)) + 0.3
    k = lambda a, b: (a @ b.T / 5 + 1) ** 3  # noqa: E731
    m = 40
    direct = ((k(x, x).sum() - np.trace(k(x, x))) / (m * (m - 1)) + (k(y, y).sum() - np.trace(k(y, y))) / (m * (m - 1))
              - 2 * k(x, y).mean())
    mean, std = kid(x, y, subsets=3, subset_size=1000)  # subset = whole set (order does not matter)
    assert mean == pytest.approx(direct, rel=1e-10) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_bounds():
    k = 10
    confident = torch.eye(k).repeat(20, 1) * 50.0  # every class equally often, each sample certain
    assert inception_score(confident, splits=1)[0] == pytest.approx(k, rel=1e-6)
    uniform = torch.zeros(200, k)
    assert inception_score(uniform, splits=4)[0] == pytest.approx(1.0, abs=1e-9)
    collapsed = torch.zeros(200, k)
    collapsed[:, 3] = 50.0  # certain but always the same class
    assert inception_score(collapsed, splits=1)[0] == pytest.approx(1.0, abs=1e-6)


# --- precision / recall -----------------------------------------------------------------------

def _clusters(rng, n=60, d=4):
    a = rng.standard_normal((n, d))
    b = rng.standard_normal((n, d)) + 100.0
    c = rng.standard_normal((n, d)) - 100.0
    return a, b, c


def test_precision_recall_constructed_clouds():
    a, b, c = _clusters(np.random.default_rng(7))
    real = np.concatenate([a, b])
    assert precision_recall(real, real) == (1.0, 1.0)
    assert precision_recall(real, a) == (1.0, 0.5)  # mode dropping: perfect fidelity, half the recall
    assert precision_recall(real, np.concatenate([a, c])) == (0.5, 0.5)  # half the samples off-manifold
    assert precision_recall(real, c) == (0.0, 0.0)


def test_precision_recall_matches_brute_force():
    rng = np.random.default_rng(8)
    real, fake = rng.standard_normal((70, 6)), rng.standard_normal((50, 6)) * 1.3 + 0.4

    def brute(r, f, k=3):
        rad_r = np.sort(cdist(r, r), axis=1)[:, k]
        rad_f = np.sort(cdist(f, f), axis=1)[:, k]
        p = (cdist(f, r) <= rad_r[None]).any(1).mean()
        rc = (cdist(r, f) <= rad_f[None]).any(1).mean()
        return p, rc

    expected = brute(real, fake)
    assert precision_recall(real, fake, k=3) == pytest.approx(expected)
    assert precision_recall(real, fake, k=3, batch=7) == pytest.approx(expected)  # batching is exact
    radii = knn_radii(torch.from_numpy(real), 3)  # cached real radii give the same answer
    assert precision_recall(real, fake, k=3, real_radii=radii) == pytest.approx(expected)


# --- class agreement, diversity ---------------------------------------------------------------

def test_class_agreement():
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0]])
    assert class_agreement(logits, torch.tensor([0, 1, 2, 2])) == 0.75
    assert class_agreement(logits.numpy(), [0, 1, 2, 0]) == 1.0
    with pytest.raises(ValueError):
        class_agreement(logits, torch.tensor([0, 1]))


def test_within_class_diversity():
    feats = torch.tensor([[0.0], [3.0], [1.0], [1.0], [1.0], [7.0]])
    labels = torch.tensor([0, 0, 1, 1, 1, 2])  # class 2 has one sample: skipped
    assert within_class_diversity(feats, labels) == pytest.approx((3.0 + 0.0) / 2)
    with pytest.raises(ValueError):
        within_class_diversity(feats[:1], labels[:1])


# --- extractors -------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_inception_torchscript_loads_resizes_and_replicates_gray(tmp_path):
    path = tmp_path / "fake_inception.pt"
    torch.jit.script(FakeInception()).save(str(path))
    ext = InceptionTorchScript(path, input_range="0-255")
    assert ext.feature_dim == 2048 and ext.has_logits
    images = torch.rand(5, 1, 32, 32) * 2 - 1
    feats, logits = ext.extract(images, batch_size=2)
    assert feats.shape == (5, 2048) and logits.shape == (5, 1008)
    assert torch.allclose(logits.softmax(1).sum(1), torch.ones(5), atol=1e-4)
    # gray == the same image replicated to RGB; uint8 input is accepted and equals its float form
    assert torch.allclose(feats, ext.features(images.expand(-1, 3, -1, -1)), atol=1e-5)
    u8 = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    assert torch.allclose(ext.features(u8), ext.features(to_float(u8)), atol=1e-5)
    assert build_extractor(f"inception:{path}:0-255").identity == ext.identity


def test_inception_torchscript_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*evaluation.md"):
        InceptionTorchScript(tmp_path / "missing.pt")
    bad = tmp_path / "not_a_module.pt"
    bad.write_bytes(b"this is not torchscript")
    with pytest.raises(ValueError, match="not a TorchScript module"):
        InceptionTorchScript(bad)
    with pytest.raises(ValueError, match="needs a path"):
        build_extractor("inception")
    with pytest.raises(ValueError, match="unknown extractor"):
        build_extractor("vgg")


def test_torch_fidelity_backend_is_optional():
    if importlib.util.find_spec("torch_fidelity") is None:
        with pytest.raises(ImportError, match="pip install torch-fidelity"):
            build_extractor("torch-fidelity")
    else:
        with pytest.raises(FileNotFoundError, match="never downloads"):
            build_extractor("torch-fidelity")


# --- FID on real data -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fmnist_test_images() -> torch.Tensor:
    try:
        images, _ = load_fashion_mnist("test")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return images


def _real_vs_noise(extractor, train_u8, test_u8) -> tuple[float, float]:
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(test_u8.shape, generator=g) * 2 - 1
    f_train = extractor.features(train_u8)
    f_test = extractor.features(test_u8)
    f_noise = extractor.features(noise)
    return fid_from_features(f_train, f_test), fid_from_features(f_test, f_noise)


def test_fid_real_vs_real_far_below_real_vs_noise_random_features(fmnist_arrays, fmnist_test_images):
    """Even an untrained CNN separates real images from noise; needs no classifier training."""
    torch.manual_seed(0)
    ext = ClassifierExtractor(SmallCNN(1, 10))
    n = fmnist_arrays[0].shape[0]
    fid_rr, fid_rn = _real_vs_noise(ext, fmnist_arrays[0], fmnist_test_images[:n])
    assert fid_rr * 10 < fid_rn


@pytest.mark.slow
def test_fid_with_trained_classifier(fmnist_test_images):
    """The default dataset classifier: shipped with the package, so nothing is trained here."""
    from nestar.evaluation.classifier import get_classifier

    model, info = get_classifier(DataConfig(), progress=False)
    assert info["cached"] and "assets" in info["cache_path"]
    assert info["test_accuracy"] >= 0.90
    ext = ClassifierExtractor(model, info)
    train_u8, _ = load_fashion_mnist("train")
    fid_rr, fid_rn = _real_vs_noise(ext, train_u8[:1000], fmnist_test_images[:1000])
    assert fid_rr * 20 < fid_rn


# --- `nestar eval` ----------------------------------------------------------------------------

def _eval_args(extractor: str, **kw) -> list[str]:
    """`nestar eval` arguments with the fake Inception, a small reference subset and no classifier."""
    opts = {"extractor": extractor, "ref-max-images": "64", "kid-subsets": "5", **kw}
    return ["eval", "--quiet", "--no-classifier"] + [a for k, v in opts.items() for a in (f"--{k}", str(v))]


def test_eval_cli_on_npz_images(tmp_path, fake_inception, fmnist_arrays):
    import json

    from nestar.cli.main import main

    images, labels = fmnist_arrays
    npz = tmp_path / "real.npz"
    np.savez(npz, arr_0=images[:64].permute(0, 2, 3, 1).numpy(), arr_1=labels[:64].numpy())
    out = tmp_path / "m.json"
    assert main(_eval_args(fake_inception, images=npz, out=out, **{"num-samples": 64, "npz-out": tmp_path / "copy.npz"})) == 0
    res = json.loads(out.read_text())
    m = res["metrics"]
    for key in ("fid", "kid_mean", "kid_std", "inception_score_mean", "precision", "recall", "within_class_diversity"):
        assert m[key] is not None and np.isfinite(m[key]), key
    assert m["class_agreement"] is None  # Inception logits are ImageNet classes; the classifier was skipped
    assert res["num_samples"] == 64 and res["extractor"]["name"] == "inception"
    with np.load(tmp_path / "copy.npz") as z:  # ADM layout: uint8 NHWC, gray replicated to RGB
        assert z["arr_0"].shape == (64, 32, 32, 3) and z["arr_0"].dtype == np.uint8
        assert np.array_equal(z["arr_0"][..., 0], images[:64, 0].numpy()) and np.array_equal(z["arr_1"], labels[:64])
    # the exported file reads back to the same metrics (reference stats now come from the cache)
    out2 = tmp_path / "m2.json"
    assert main(_eval_args(fake_inception, images=tmp_path / "copy.npz", out=out2)) == 0
    assert json.loads(out2.read_text())["metrics"]["fid"] == pytest.approx(m["fid"], rel=1e-6)


def test_eval_cli_resizes_with_warning_and_rejects_bad_ranges(tmp_path, fake_inception, capsys):
    from nestar.cli.main import main

    big = tmp_path / "big.npz"
    np.savez(big, arr_0=np.random.default_rng(0).uniform(0, 1, (8, 3, 48, 48)).astype(np.float32))
    assert main(_eval_args(fake_inception, images=big, out=tmp_path / "a.json")) == 0
    err = capsys.readouterr().err
    assert "[0, 1]: rescaled" in err and "resized (48, 48) images to 32x32" in err and "1 channel" in err
    bad = tmp_path / "bad.npz"
    np.savez(bad, arr_0=np.full((4, 32, 32, 1), 1000.0))
    assert main(_eval_args(fake_inception, images=bad, out=tmp_path / "b.json")) == 2
    assert "must lie in [-1, 1]" in capsys.readouterr().err
    assert main(_eval_args(fake_inception, images=tmp_path / "none", out=tmp_path / "c.json")) == 2
    assert "neither a .npz file nor a folder" in capsys.readouterr().err


def test_eval_cli_on_a_checkpoint(tmp_path, fake_inception):
    import json

    from nestar.cli.main import main

    run = tmp_path / "run"
    assert main(["train", "--preset", "nestar-tiny", "--run-dir", str(run), "--quiet", "--train.steps=2"]) == 0
    out = tmp_path / "m.json"
    base = _eval_args(fake_inception, checkpoint=run, **{"num-samples": 12, "batch-size": 5, "seed": 3, "num-steps": 2})
    assert main(base + ["--out", str(out), "--npz-out", str(tmp_path / "s.npz")]) == 0
    res = json.loads(out.read_text())
    s = res["sampling"]
    assert s["seed"] == 3 and s["num_steps"] == 2 and s["batch_size"] == 5 and s["sequential_steps"] > 0
    assert {"cfg", "cfg_schedule", "temperature", "use_ema"} <= set(s)
    with np.load(tmp_path / "s.npz") as z:
        assert z["arr_1"].tolist() == [i % 10 for i in range(12)]  # balanced label order
        first = z["arr_0"]
    assert main(base + ["--out", str(tmp_path / "m2.json"), "--npz-out", str(tmp_path / "s2.npz")]) == 0
    with np.load(tmp_path / "s2.npz") as z:
        assert np.array_equal(z["arr_0"], first)  # same seed, same samples
