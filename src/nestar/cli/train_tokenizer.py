"""`nestar train-tokenizer`: train a small KL-VAE tokenizer and save it for `--tokenizer.name=kl`."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from nestar.cli.common import add_overrides_epilog

    p = sub.add_parser(
        "train-tokenizer",
        help="train a small KL-VAE tokenizer (safetensors + JSON config)",
        description="Train a small KL-VAE on the data (default Fashion-MNIST 32x32 -> 8x8x4 latents), report "
        "test PSNR, measure the latent scale, and save DIR/model.safetensors + DIR/config.json. "
        "Use it with --tokenizer.name=kl --tokenizer.path=DIR. Overrides: --data.*, --vae.* "
        "(ch, ch_mult, num_res_blocks, z_channels, norm_groups, attn_resolutions), --train.* "
        "(lr, batch_size, kl_weight, l1_weight, l2_weight, precision, device, ...).",
    )
    p.add_argument("--out", default=None, help="output directory (required unless --keys)")
    p.add_argument("--steps", type=int, default=None, help="training steps (same as --train.steps)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a tokenizer already saved in --out"
    )
    p.add_argument(
        "--keys",
        action="store_true",
        help="print every --section.key=value this command accepts and exit",
    )
    add_overrides_epilog(
        p,
        "config overrides: --section.key=value, e.g. --train.steps=3000 --vae.z_channels=8 "
        "(values are Python literals). List the valid keys with their values: "
        "nestar train-tokenizer --keys",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nestar.cli.common import override_keys
    from nestar.config import ConfigError, apply_overrides, to_dict
    from nestar.training.train_vae import TokenizerTrainConfig, train_vae

    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    cfg = apply_overrides(TokenizerTrainConfig(), overrides)
    if args.keys:
        print("\n".join(override_keys(to_dict(cfg))))
        return 0
    if not args.out:
        raise ConfigError("--out DIR is required: where to save the tokenizer")
    res = train_vae(cfg, args.out, overwrite=args.overwrite)
    print(
        f"trained {res.steps} steps in {res.seconds:.0f}s: {res.psnr_split} PSNR {res.psnr:.2f} dB, latent scale "
        f"{res.latent_scale:.4f}, shift {res.latent_shift:.4f}; use --tokenizer.name=kl --tokenizer.path={res.out_dir}"
    )
    return 0
