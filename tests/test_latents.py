"""Latent cache: shards + manifest, resume after interruption, flips, mismatch refusal, sampling dataset."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from nestar.cli.main import main
from nestar.data import TensorImageDataset, to_float
from nestar.data.latents import CacheMismatchError, CachedLatentDataset, cache_latents
from nestar.tokenizers.kl_vae import KLAutoencoder, KLTokenizer, save_kl_dir, small_vae_config

N, SHARD = 40, 16  # 3 shards: 16 + 16 + 8


def _tokenizer(seed: int = 0, scale: float = 0.7, shift: float = 0.1) -> KLTokenizer:
    torch.manual_seed(seed)
    vae = KLAutoencoder(small_vae_config(channels=1, z_channels=4, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1))
    return KLTokenizer(vae, 32, scale=scale, shift=shift)


def _dataset(n: int = N, seed: int = 0) -> TensorImageDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorImageDataset(torch.randint(0, 256, (n, 1, 32, 32), generator=g, dtype=torch.uint8),
                              torch.arange(n) % 10)


def _shards(d) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_file(str(p)) for p in sorted(d.glob("shard-*.safetensors"))}


def _run(tok, ds, d, **kw):
    return cache_latents(tok, ds, d, shard_size=SHARD, batch_size=8, log=None, **kw)


def test_cache_layout_and_flip_moments(tmp_path):
    tok, ds = _tokenizer(), _dataset()
    m = _run(tok, ds, tmp_path / "c")
    assert m["complete"] and m["num_shards"] == 3 and len(m["shards"]) == 3
    assert m["dataset"]["count"] == N and m["image_size"] == 32 and m["latent_shape"] == [4, 8, 8]
    shards = _shards(tmp_path / "c")
    mom = torch.cat([s["moments"] for s in shards.values()])
    labels = torch.cat([s["labels"] for s in shards.values()])
    assert mom.shape == (N, 2, 8, 8, 8) and torch.equal(labels, ds.labels)
    x = to_float(ds.images)
    mean, logvar = tok.encode_moments(x)
    fmean, flogvar = tok.encode_moments(x.flip(-1))
    torch.testing.assert_close(mom[:, 0], torch.cat([mean, logvar], 1))
    torch.testing.assert_close(mom[:, 1], torch.cat([fmean, flogvar], 1))
    assert (mom[:, 0] - mom[:, 1]).abs().mean() > 1e-3  # the flip is encoded, not copied
    assert not torch.allclose(mom[:, 1, :4], mean.flip(-1), atol=1e-4)  # ...nor is it the flipped latent


def test_interrupted_cache_resumes_to_the_identical_result(tmp_path):
    tok, ds = _tokenizer(), _dataset()
    ref = _run(tok, ds, tmp_path / "ref")
    d = tmp_path / "c"
    m = _run(tok, ds, d, max_shards=1)  # "interrupted" after one shard
    assert not m["complete"] and list(m["shards"]) == ["shard-00000.safetensors"]
    with pytest.raises(CacheMismatchError, match="incomplete"):
        CachedLatentDataset(d)
    first = d / "shard-00000.safetensors"
    stamp = (first.stat().st_mtime_ns, first.stat().st_ino)

    # a crash in the middle of the second shard leaves no partial file behind
    calls = {"n": 0}
    real = tok.encode_moments

    def flaky(x):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(x)

    tok.encode_moments = flaky
    with pytest.raises(KeyboardInterrupt):
        _run(tok, ds, d)
    del tok.encode_moments
    assert sorted(p.name for p in d.iterdir()) == ["manifest.json", "shard-00000.safetensors"]

    m = _run(tok, ds, d)
    assert m["complete"] and m["shards"] == ref["shards"]
    assert (first.stat().st_mtime_ns, first.stat().st_ino) == stamp  # completed shard skipped, not rewritten
    a, b = _shards(d), _shards(tmp_path / "ref")
    assert a.keys() == b.keys()
    for name in a:
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), (name, k)
    # a shard written just before a crash hit the manifest is picked up, not recomputed
    man = json.loads((d / "manifest.json").read_text())
    del man["shards"]["shard-00002.safetensors"]
    man["complete"] = False
    (d / "manifest.json").write_text(json.dumps(man))
    stamp2 = (d / "shard-00002.safetensors").stat().st_mtime_ns
    assert _run(tok, ds, d)["complete"]
    assert (d / "shard-00002.safetensors").stat().st_mtime_ns == stamp2


def test_mismatched_cache_is_refused_and_untouched(tmp_path):
    tok, ds = _tokenizer(), _dataset()
    d = tmp_path / "c"
    _run(tok, ds, d)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    with pytest.raises(CacheMismatchError, match="weights_sha256"):
        _run(_tokenizer(seed=1), ds, d)  # another tokenizer
    with pytest.raises(CacheMismatchError, match="dataset.fingerprint"):
        _run(tok, _dataset(seed=1), d)  # other images
    tok64 = KLTokenizer(tok.vae, 64)
    with pytest.raises(CacheMismatchError, match="image_size: this run 64 vs cache 32"):
        _run(tok64, TensorImageDataset(torch.zeros(N, 1, 64, 64, dtype=torch.uint8), ds.labels), d)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    with pytest.raises(CacheMismatchError, match="weights_sha256"):
        CachedLatentDataset(d, tokenizer=_tokenizer(seed=1))
    with pytest.raises(CacheMismatchError, match="image_size: this run 64 vs cache 32"):
        CachedLatentDataset(d, image_size=64)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(CacheMismatchError, match="not a latent cache"):
        _run(tok, ds, tmp_path / "other")


def test_cached_dataset_samples_flips_and_scales(tmp_path):
    tok, ds = _tokenizer(scale=0.7, shift=0.1), _dataset()
    d = tmp_path / "c"
    _run(tok, ds, d)
    exact = CachedLatentDataset(d, tokenizer=tok, flip=False, sample=False)
    tokens, label = exact[5]
    assert tokens.shape == (64, 4) and label == 5
    torch.testing.assert_close(tokens, tok.encode(to_float(ds.images[5:6]))[0])  # same scale/shift and raster order
    batch, labels = exact.__getitems__([0, 17, 39])  # across shards
    torch.testing.assert_close(batch, tok.encode(to_float(ds.images[[0, 17, 39]])))
    assert labels.tolist() == [0, 7, 9]

    g = torch.Generator().manual_seed(0)
    noisy = CachedLatentDataset(d, tokenizer=tok, generator=g)
    draws = torch.stack([noisy[3][0] for _ in range(64)])
    mom, _ = noisy.moments([3])
    means = [CachedLatentDataset(d, flip=False, sample=False)[3][0]]
    fl = mom[0, 1, :4]
    means.append(((fl - 0.1) * 0.7).flatten(1).t())
    # every draw is near one of the two flips' means, both flips occur, and draws vary
    dist = torch.stack([(draws - m).pow(2).mean((1, 2)) for m in means], 1)
    assert set(dist.argmin(1).tolist()) == {0, 1}
    assert draws.std(0).mean() > 0
    # the posterior std of the draws matches the cached log-variance (scaled)
    sel = draws[dist.argmin(1) == 0]
    if len(sel) > 8:
        want = (0.5 * mom[0, 0, 4:]).exp().mean() * 0.7
        assert 0.5 * want < sel.std(0).mean() < 1.5 * want
    # the manifest's scale/shift are the defaults without a tokenizer
    plain = CachedLatentDataset(d, flip=False, sample=False)
    assert (plain.scale, plain.shift) == (pytest.approx(0.7), pytest.approx(0.1))


def test_cli_cache_latents_on_an_image_folder(tmp_path, capsys):
    torch.manual_seed(0)
    vae_dir = tmp_path / "vae"
    save_kl_dir(vae_dir, _tokenizer().vae, image_size=32, latent_scale=0.5, latent_shift=0.0)
    root = tmp_path / "imgs" / "train"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8)).save(root / cls / f"{i}.png")
    args = ["cache-latents", "--out", str(tmp_path / "cache"), "--shard-size", "4", "--tokenizer.name=kl",
            f"--tokenizer.path={vae_dir}", "--data.name=folder", f"--data.data_dir={root}", "--data.num_classes=2",
            "--data.channels=1", "--data.image_size=32", "--device", "cpu"]
    assert main(args + ["--max-shards", "1"]) == 0
    assert "1/2 shards (incomplete" in capsys.readouterr().out
    assert main(args) == 0
    assert "6 images, 2/2 shards complete" in capsys.readouterr().out
    dsl = CachedLatentDataset(tmp_path / "cache")
    assert len(dsl) == 6 and dsl.scale == 0.5 and dsl[5][0].shape == (64, 4) and dsl[5][1] == 1
    # a different image size is refused by the CLI too, naming the field
    assert main(args[:-2] + ["--data.image_size=64", "--device", "cpu"]) == 2
    assert "image_size" in capsys.readouterr().err


def test_train_from_a_latent_cache(tmp_path, tiny_cfg):
    """`data.latent_cache` points the Trainer (and so `nestar train`) at cached posteriors."""
    from nestar.config import apply_overrides
    from nestar.training import Trainer

    tok = _tokenizer()
    vae_dir = tmp_path / "vae"
    save_kl_dir(vae_dir, tok.vae, image_size=32, latent_scale=0.7, latent_shift=0.1)
    from nestar.tokenizers import TokenizerConfig, build_tokenizer

    _run(build_tokenizer(TokenizerConfig(name="kl", path=str(vae_dir)), 32, 1), _dataset(), tmp_path / "cache")
    overrides = ["tokenizer.name=kl", f"tokenizer.path={vae_dir}", f"data.latent_cache={tmp_path / 'cache'}",
                 "train.steps=3", "train.ckpt_every=3"]
    cfg = apply_overrides(tiny_cfg, overrides)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert isinstance(trainer.dataset, CachedLatentDataset) and len(trainer.dataset) == N
    res = trainer.fit()
    assert res.steps == 3 and np.isfinite(res.final_loss) and (tmp_path / "run" / "checkpoints" / "last.safetensors").is_file()
    # the cache was made from 32x32 images: a 64x64 run is refused, naming the field
    with pytest.raises(CacheMismatchError, match="image_size"):
        Trainer(apply_overrides(cfg, ["data.image_size=64"]), tmp_path / "run64", progress=False)
