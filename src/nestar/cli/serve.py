"""`nestar serve`: a local web page to sample a trained model (classes, guidance, temperature, seed)."""

from __future__ import annotations

import argparse

from nestar.cli.common import positive_int

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="a local web page that samples a run directory or exported model",
        description="Serve a web page (standard library only) where you pick classes, guidance, "
        "temperature, head steps and seed, and see the samples and the coarse-to-fine "
        "strip with the sequential step count and sampling time.",
    )
    p.add_argument(
        "path",
        help="run directory, checkpoint .safetensors, save_pretrained directory, shipped "
        "model name (e.g. nestar-fmnist) or Hub repo id",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--no-ema", action="store_true", help="use raw instead of EMA weights")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default=None,
        help="sampling precision (default: the run's sample.precision)",
    )
    p.add_argument(
        "--max-images", type=positive_int, default=64, help="most images one request may ask for"
    )
    p.add_argument(
        "--max-head-steps",
        type=positive_int,
        default=200,
        help="most flow-head steps one request may ask for",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nestar.app.server import DemoService, Limits, make_server
    from nestar.config import ConfigError
    from nestar.pipeline import Pipeline

    if args.max_images < 1 or args.max_head_steps < 1:
        raise ConfigError("--max-images and --max-head-steps must be >= 1")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {args.port}")
    pipe = Pipeline.from_pretrained(args.path, device=args.device, use_ema=not args.no_ema)
    if args.precision:
        pipe.config.sample.precision = args.precision
    service = DemoService(
        pipe,
        Limits(max_images=args.max_images, max_head_steps=args.max_head_steps),
        source=str(args.path),
    )
    try:
        server = make_server(service, args.host, args.port)
    except OSError as e:  # port taken, address not on this machine, ...
        raise ConfigError(
            f"cannot listen on {args.host}:{args.port} ({e.strerror or e}); "
            f"pick another --port (0: any free one)"
        ) from e
    host, port = server.server_address[:2]
    if args.host not in LOOPBACK:
        print(
            f"warning: listening on {args.host}: anyone who can reach this machine can use the page"
        )
    info = service.info()
    print(
        f"serving {args.path} ({info['preset'] or info['model_type']}, {info['params'] / 1e6:.2f}M parameters, "
        f"{info['sequential_steps']} sequential steps, {pipe.precision.describe()})"
    )
    shown = f"[{host}]" if ":" in host else host
    print(f"open http://{shown}:{port}/ (Ctrl+C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0
