"""`nestar cache-latents`: encode a dataset once with a VAE tokenizer (moments of each image and its flip)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from nestar.cli.common import add_overrides_epilog

    p = sub.add_parser(
        "cache-latents",
        help="cache VAE posterior moments (image + h-flip) in resumable shards",
        description="Encode --data with a VAE tokenizer and write DIR/manifest.json + DIR/shard-*.safetensors. "
        "Re-running the same command resumes (finished shards are skipped); a cache made with "
        "another tokenizer, image size or dataset is refused. Example: nestar cache-latents "
        "--tokenizer.name=kl --tokenizer.path=runs/vae --data.name=fashion_mnist --out runs/latents. "
        "--preset/--config take the data and tokenizer sections of a run config.",
    )
    p.add_argument("--out", default=None, help="cache directory (required unless --keys)")
    p.add_argument("--preset", default=None, help="take data/tokenizer sections from this preset")
    p.add_argument(
        "--config", default=None, help="take data/tokenizer sections from this JSON run config"
    )
    p.add_argument("--split", default="train", help="dataset split (default train)")
    p.add_argument("--shard-size", type=int, default=4096, help="images per shard (default 4096)")
    p.add_argument("--batch-size", type=int, default=64, help="encoding batch size")
    p.add_argument("--num-workers", type=int, default=0, help="data loader workers")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float16", "bfloat16"],
        help="stored dtype",
    )
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    p.add_argument(
        "--max-shards", type=int, default=None, help="stop after writing this many new shards"
    )
    p.add_argument(
        "--keys",
        action="store_true",
        help="print every --section.key=value this command accepts and exit",
    )
    add_overrides_epilog(
        p,
        "config overrides: --data.* and --tokenizer.* as --section.key=value, e.g. "
        "--tokenizer.name=kl --tokenizer.path=runs/vae. List the valid keys with their "
        "values: nestar cache-latents --keys",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nestar.config import ConfigError, apply_overrides, to_dict
    from nestar.data import build_dataset
    from nestar.data.latents import CacheLatentsConfig, cache_latents
    from nestar.tokenizers import build_tokenizer

    cls = CacheLatentsConfig
    base = cls()
    if args.config or args.preset:
        from nestar.registry import RunConfig, get_preset

        if args.config:
            from nestar.cli.common import read_config_file

            rc = RunConfig.from_dict(read_config_file(args.config))
        else:
            rc = get_preset(args.preset)
        base = cls(data=rc.data, tokenizer=rc.tokenizer)
    cfg = apply_overrides(base, args.overrides)
    if args.keys:
        from nestar.cli.common import override_keys

        print("\n".join(override_keys(to_dict(cfg))))
        return 0
    if not args.out:
        raise ConfigError("--out DIR is required: where to write the cache")
    if cfg.tokenizer.name == "patch":
        raise ConfigError(
            "cache-latents needs a VAE tokenizer: --tokenizer.name=kl --tokenizer.path=DIR "
            "(from `nestar train-tokenizer`) or --tokenizer.name=kl16 --tokenizer.path=kl16.ckpt"
        )
    from nestar.utils.device import parse_device

    device = parse_device(args.device, "--device")
    tok = build_tokenizer(cfg.tokenizer, cfg.data.image_size, cfg.data.channels).to(device)
    ds = build_dataset(cfg.data, args.split)
    m = cache_latents(
        tok,
        ds,
        args.out,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        dtype=args.dtype,
        split=args.split,
        data_config=to_dict(cfg.data),
        tokenizer_config=to_dict(cfg.tokenizer),
        num_workers=args.num_workers,
        max_shards=args.max_shards,
    )
    print(
        f"{args.out}: {m['dataset']['count']} images, {len(m['shards'])}/{m['num_shards']} shards"
        + (" complete" if m["complete"] else " (incomplete: rerun to finish)")
    )
    return 0
