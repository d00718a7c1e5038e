"""How much ARINAR's inner-AR head uses the outer model's condition z (docs/results.md, ARINAR reading).

Masks 90% of each image's tokens (random order, seed 0), computes the head's NLL of the masked tokens
with their own z and with z shuffled across tokens, and prints both per token (without the head's
C/2 log 2 pi constant). A small gap means the head models token texture and ignores where the token is.

    python benchmarks/arinar_z_usage.py runs/quality/arinar/checkpoints/last.safetensors [--images 64] [--ema]
"""
from __future__ import annotations

import argparse

import torch

from nestar.data import build_dataset, to_float
from nestar.models.arinar import ARINAR
from nestar.models.masked_ar import mask_from_orders, random_orders
from nestar.tokenizers import build_tokenizer
from nestar.serialization import load_model_from_checkpoint


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="an ARINAR training checkpoint (.safetensors)")
    ap.add_argument("--images", type=int, default=64, help="test images to score")
    ap.add_argument("--ema", action="store_true", help="EMA weights instead of the raw ones")
    args = ap.parse_args()

    model, cfg = load_model_from_checkpoint(args.checkpoint, use_ema=args.ema)
    if not isinstance(model, ARINAR):
        raise SystemExit(f"{args.checkpoint} holds a {type(model).__name__}, not an ARINAR model")
    model.eval()
    tok = build_tokenizer(cfg.tokenizer, cfg.data.image_size, cfg.data.channels)
    ds = build_dataset(cfg.data, "test")
    idx = list(range(min(args.images, len(ds))))
    images = to_float(torch.stack([ds[i][0] for i in idx]))
    labels = torch.tensor([int(ds[i][1]) for i in idx])
    tokens_BNC = tok.encode(images)
    B, n, _ = tokens_BNC.shape

    gen = torch.Generator().manual_seed(0)
    mask_BN = mask_from_orders(random_orders(B, n, gen, tokens_BNC.device), int(0.9 * n))
    z_MZ = model.backbone(tokens_BNC, mask_BN, labels)[mask_BN]
    x_MC = tokens_BNC[mask_BN]
    own = -model.head.log_prob(x_MC, z_MZ).mean().item()
    shuffled = -model.head.log_prob(x_MC, z_MZ[torch.randperm(len(z_MZ), generator=gen)]).mean().item()
    print(f"NLL per token: own z {own:.2f}, shuffled z {shuffled:.2f}, gap {shuffled - own:.2f} nats "
          f"({len(x_MC)} masked tokens of {B} test images)")


if __name__ == "__main__":
    main()
