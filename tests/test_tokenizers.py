"""KL autoencoder tokenizers: KL-16 layout, checkpoint loading, geometry, small-VAE training."""
from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import save_file

from nestar.config import ConfigError
from nestar.data import TensorImageDataset, to_float
from nestar.registry import RunConfig
from nestar.tokenizers import TokenizerConfig, build_tokenizer, tokenizer_geometry
from nestar.tokenizers.kl16 import KL16_SCALE, TokenizerCheckpointError, load_kl16, load_weights, read_state_dict
from nestar.tokenizers.kl_vae import (
    KLAutoencoder, KLAutoencoderConfig, KLTokenizer, kl16_config, load_kl_dir, save_kl_dir, small_vae_config,
)
from nestar.training.train_vae import TokenizerTrainConfig, VAEArchConfig, VAETrainConfig, train_vae


# ----- KL-16 architecture -------------------------------------------------------------------
def _expected_kl16_params() -> int:
    """Parameter count of MAR's KL-16 written out level by level (not derived from our module)."""
    conv = lambda i, o, k: i * o * k * k + o  # noqa: E731
    gn = lambda c: 2 * c  # noqa: E731
    rb = lambda i, o: gn(i) + conv(i, o, 3) + gn(o) + conv(o, o, 3) + (conv(i, o, 1) if i != o else 0)  # noqa: E731
    attn = lambda c: gn(c) + 4 * conv(c, c, 1)  # noqa: E731
    mid = 2 * rb(512, 512) + attn(512)
    enc = conv(3, 128, 3)
    enc += 2 * rb(128, 128) + conv(128, 128, 3)                                 # level 0 (256^2)
    enc += 2 * rb(128, 128) + conv(128, 128, 3)                                 # level 1 (128^2)
    enc += rb(128, 256) + rb(256, 256) + conv(256, 256, 3)                      # level 2 (64^2)
    enc += 2 * rb(256, 256) + conv(256, 256, 3)                                 # level 3 (32^2)
    enc += rb(256, 512) + rb(512, 512) + 2 * attn(512)                          # level 4 (16^2), attention
    enc += mid + gn(512) + conv(512, 32, 3)
    dec = conv(16, 512, 3) + mid
    dec += 3 * rb(512, 512) + conv(512, 512, 3)                                 # level 4, no attention
    dec += rb(512, 256) + 2 * rb(256, 256) + conv(256, 256, 3)                  # level 3
    dec += 3 * rb(256, 256) + conv(256, 256, 3)                                 # level 2
    dec += rb(256, 128) + 2 * rb(128, 128) + conv(128, 128, 3)                  # level 1
    dec += 3 * rb(128, 128) + gn(128) + conv(128, 3, 3)                         # level 0
    return enc + dec + conv(32, 32, 1) + conv(16, 16, 1)


@pytest.fixture(scope="module")
def kl16_model() -> KLAutoencoder:
    torch.manual_seed(0)
    return KLAutoencoder(kl16_config()).eval()


def test_kl16_layout_matches_the_public_checkpoint(kl16_model):
    sd = kl16_model.state_dict()
    assert sum(v.numel() for v in sd.values()) == _expected_kl16_params()
    shapes = {
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.down.0.block.1.conv2.weight": (128, 128, 3, 3),
        "encoder.down.2.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.3.downsample.conv.weight": (256, 256, 3, 3),
        "encoder.down.4.attn.1.proj_out.weight": (512, 512, 1, 1),
        "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "encoder.mid.block_2.norm2.bias": (512,),
        "encoder.conv_out.weight": (32, 512, 3, 3),
        "quant_conv.weight": (32, 32, 1, 1),
        "post_quant_conv.weight": (16, 16, 1, 1),
        "decoder.conv_in.weight": (512, 16, 3, 3),
        "decoder.mid.attn_1.v.bias": (512,),
        "decoder.up.4.block.2.conv1.weight": (512, 512, 3, 3),
        "decoder.up.4.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.up.3.block.0.nin_shortcut.weight": (256, 512, 1, 1),
        "decoder.up.1.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "decoder.up.0.block.2.norm1.weight": (128,),
        "decoder.conv_out.weight": (3, 128, 3, 3),
    }
    for k, shape in shapes.items():
        assert tuple(sd[k].shape) == shape, k
    attn = {k.split(".attn")[0] for k in sd if ".attn" in k}
    assert attn == {"encoder.down.4", "encoder.mid", "decoder.mid"}  # MAR: no attention in the decoder's up path
    assert not any("temb" in k for k in sd) and "decoder.up.0.upsample.conv.weight" not in sd
    assert "encoder.down.4.downsample.conv.weight" not in sd


def test_kl16_shapes_on_a_small_image(kl16_model):
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        recon, mean, logvar = kl16_model(x, sample=False)
    assert mean.shape == logvar.shape == (2, 16, 4, 4) and recon.shape == (2, 3, 64, 64)
    tok = KLTokenizer(kl16_model, 64, scale=KL16_SCALE)
    assert (tok.grid_size, tok.token_dim, tok.channels) == (4, 16, 3)
    tokens = tok.encode(x)
    assert tokens.shape == (2, 16, 16)
    # raster order: token r*4+c is the latent column (r, c), scaled
    torch.testing.assert_close(tokens[:, 1 * 4 + 2], mean[:, :, 1, 2] * KL16_SCALE)
    torch.testing.assert_close(tok.tokens_to_latents(tokens), mean)
    assert tok.decode(tokens).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="expected images of shape"):
        tok.encode(torch.zeros(1, 3, 32, 32))


# ----- checkpoint loading -------------------------------------------------------------------
def _small_cfg() -> KLAutoencoderConfig:
    return small_vae_config(channels=1, image_size=32, z_channels=4, ch=16, ch_mult=(1, 2), num_res_blocks=1)


def test_kl16_checkpoint_round_trip_torch_pickle(tmp_path, kl16_model):
    path = tmp_path / "kl16.ckpt"
    sd = kl16_model.state_dict()
    torch.save({"model": sd}, path)  # the layout of MAR's kl16.ckpt
    tok = build_tokenizer(TokenizerConfig(name="kl16", path=str(path)), 64, 3)
    assert tok.scale == pytest.approx(0.2325) and tok.shift == 0.0
    for k, v in tok.vae.state_dict().items():
        assert torch.equal(v, sd[k]), k
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(tok.encode(x), kl16_model.encode_moments(x)[0].flatten(2).transpose(1, 2) * 0.2325)
    assert tok.identity()["weights_sha256"] == KLTokenizer(kl16_model, 64).identity()["weights_sha256"]


def test_checkpoint_round_trip_safetensors_and_wrappers(tmp_path):
    torch.manual_seed(1)
    src = KLAutoencoder(_small_cfg())
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "ldm.ckpt")
    for name in ("w.safetensors", "ldm.ckpt"):
        dst = KLAutoencoder(_small_cfg())
        report = load_weights(dst, read_state_dict(tmp_path / name), name)
        assert report.loaded == len(sd) and not report.missing and not report.unexpected
        assert all(torch.equal(dst.state_dict()[k], sd[k]) for k in sd)


def test_key_mismatch_is_reported(tmp_path):
    sd = KLAutoencoder(_small_cfg()).state_dict()
    renamed = dict(sd)
    renamed["encoder.conv_inx.weight"] = renamed.pop("encoder.conv_in.weight")
    with pytest.raises(TokenizerCheckpointError, match=r"missing.*encoder\.conv_in\.weight.*unexpected keys: encoder\.conv_inx\.weight"):
        load_weights(KLAutoencoder(_small_cfg()), renamed, "ck")
    extra = {**sd, "encoder.extra.weight": torch.zeros(1), "loss.discriminator.main.0.weight": torch.zeros(2)}
    with pytest.warns(UserWarning, match="encoder.extra.weight"):
        report = load_weights(KLAutoencoder(_small_cfg()), extra, "ck")
    assert report.unexpected == ["encoder.extra.weight"] and report.ignored == ["loss.discriminator.main.0.weight"]
    with pytest.raises(TokenizerCheckpointError, match="unexpected keys in the checkpoint: encoder.extra.weight"):
        load_weights(KLAutoencoder(_small_cfg()), extra, "ck", strict=True)


def test_shape_mismatch_names_key_and_both_shapes():
    sd = KLAutoencoder(_small_cfg()).state_dict()
    sd["quant_conv.weight"] = torch.zeros(16, 8, 1, 1)
    with pytest.raises(TokenizerCheckpointError, match=r"quant_conv\.weight: checkpoint \(16, 8, 1, 1\) vs model \(8, 8, 1, 1\)"):
        load_weights(KLAutoencoder(_small_cfg()), sd, "ck")


def test_missing_checkpoint_says_where_and_that_it_is_manual(tmp_path):
    path = tmp_path / "nowhere" / "kl16.ckpt"
    with pytest.raises(TokenizerCheckpointError, match="obtain the file manually") as e:
        build_tokenizer(TokenizerConfig(name="kl16", path=str(path)), 256, 3)
    assert str(path) in str(e.value)


def test_pickles_are_loaded_weights_only(tmp_path):
    path = tmp_path / "checkpoint-last.pth"
    torch.save({"model": KLAutoencoder(_small_cfg()).state_dict(), "args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(TokenizerCheckpointError, match="weights_only=True"):
        read_state_dict(path)


def test_load_kl16_refuses_a_small_checkpoint(tmp_path):
    path = tmp_path / "small.safetensors"
    save_file(KLAutoencoder(_small_cfg()).state_dict(), str(path))
    with pytest.raises(TokenizerCheckpointError, match="wrong shape"):
        load_kl16(path)


# ----- geometry without weights -------------------------------------------------------------
def test_geometry_reads_no_weights(tmp_path):
    missing = str(tmp_path / "absent.ckpt")
    assert tokenizer_geometry(TokenizerConfig(name="kl16", path=missing), 256, 3) == (16, 16)
    assert tokenizer_geometry(TokenizerConfig(patch_size=2), 32, 1) == (16, 4)
    with pytest.raises(ValueError, match="3-channel"):
        tokenizer_geometry(TokenizerConfig(name="kl16"), 256, 1)
    cfg = RunConfig.from_dict({"data": {"name": "folder", "data_dir": "x", "image_size": 256, "channels": 3,
                                        "num_classes": 1000},
                               "tokenizer": {"name": "kl16", "path": missing}})
    assert (cfg.model.grid_size, cfg.model.token_dim) == (16, 16)
    # a trained directory: geometry from config.json alone (weights file absent)
    d = tmp_path / "vae"
    save_kl_dir(d, KLAutoencoder(small_vae_config(z_channels=8)), image_size=32, latent_scale=0.5, latent_shift=0.0)
    (d / "model.safetensors").unlink()
    assert tokenizer_geometry(TokenizerConfig(name="kl", path=str(d)), 32, 1) == (8, 8)
    with pytest.raises(ConfigError, match="model.safetensors"):
        build_tokenizer(TokenizerConfig(name="kl", path=str(d)), 32, 1)
    with pytest.raises(ConfigError, match="train-tokenizer"):
        tokenizer_geometry(TokenizerConfig(name="kl", path=str(tmp_path / "none")), 32, 1)


# ----- the small trainable VAE --------------------------------------------------------------
def _toy_images(n: int, seed: int = 0) -> torch.Tensor:
    """Blurry blobs: learnable structure in a few steps (uint8, 1 x 32 x 32)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    c = torch.rand(n, 2, generator=g) * 16 + 8
    r = torch.rand(n, 1, generator=g) * 6 + 3
    d = ((yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2).sqrt()
    img = (torch.sigmoid((r[:, :, None] - d) * 1.5) * 255).round().to(torch.uint8)
    return img[:, None]


def test_small_vae_trains_saves_and_loads(tmp_path):
    imgs = _toy_images(128)
    ds = TensorImageDataset(imgs, torch.zeros(128, dtype=torch.int64))
    cfg = TokenizerTrainConfig(vae=VAEArchConfig(ch=16, ch_mult=(1, 2, 2), z_channels=4, norm_groups=8),
                               train=VAETrainConfig(steps=40, batch_size=16, lr=3e-3, warmup_steps=5, log_every=0,
                                                    eval_images=64, scale_images=64, device="cpu"))
    res = train_vae(cfg, tmp_path / "vae", train_dataset=ds, test_dataset=ds, log=None)
    first, last = sum(res.losses[:5]) / 5, sum(res.losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    saved = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert saved["latent_scale"] == pytest.approx(res.latent_scale) and saved["metrics"]["psnr_test"] == pytest.approx(res.psnr)
    assert res.psnr > 12
    tok = build_tokenizer(TokenizerConfig(name="kl", path=str(tmp_path / "vae")), 32, 1)
    assert (tok.grid_size, tok.token_dim, tok.scale) == (8, 4, pytest.approx(res.latent_scale))
    tokens = tok.encode(to_float(imgs[:64]))
    # the measured scale makes tokens roughly unit-RMS (measured on samples, here on means: <= 1)
    assert 0.3 < tokens.pow(2).mean().sqrt().item() < 1.2
    vae, _ = load_kl_dir(tmp_path / "vae")
    assert tok.identity()["weights_sha256"] == saved["weights_sha256"]
    with pytest.raises(ConfigError, match="already holds a trained tokenizer"):
        train_vae(cfg, tmp_path / "vae", train_dataset=ds, test_dataset=ds, log=None)
    # overrides: the tokenizer config's scale/shift win over the stored ones
    tok2 = build_tokenizer(TokenizerConfig(name="kl", path=str(tmp_path / "vae"), scale=1.0, shift=0.5), 32, 1)
    torch.testing.assert_close(tok2.decode(tok2.encode(to_float(imgs[:2]))), tok.decode(tok.encode(to_float(imgs[:2]))),
                               atol=1e-4, rtol=1e-4)


def test_cli_train_tokenizer_smoke(tmp_path, capsys):
    from nestar.cli.main import main
    from nestar.data import DatasetMissingError, load_fashion_mnist

    try:
        load_fashion_mnist("test")
    except DatasetMissingError as e:
        pytest.skip(str(e))
    out = tmp_path / "vae"
    args = ["train-tokenizer", "--out", str(out), "--steps", "2", "--vae.ch=16", "--vae.norm_groups=8",
            "--vae.z_channels=8", "--train.batch_size=8", "--train.eval_images=32", "--train.scale_images=32",
            "--train.precision=bf16", "--train.device=cpu", "--train.log_every=1"]
    assert main(args) == 0
    assert "test PSNR" in capsys.readouterr().out
    saved = json.loads((out / "config.json").read_text())
    assert saved["arch"]["z_channels"] == 8 and saved["train"]["steps"] == 2 and saved["train"]["precision"] == "bf16"
    assert tokenizer_geometry(TokenizerConfig(name="kl", path=str(out)), 32, 1) == (8, 8)
    assert main(args) == 2  # refuses to overwrite
    assert "already holds a trained tokenizer" in capsys.readouterr().err
