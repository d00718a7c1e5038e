"""Why few Euler steps lose recall: the spread of the flow head's draws at fixed conditions.

For a trained NestAR run, the conditions z of the last module's tokens are computed teacher-forced
from real test images (their labels, and the null label for the guided branch). Each z is then
sampled K times with every solver setting; for each z the per-channel standard deviation over the K
draws is averaged ("spread": how much the head still varies given everything before the token).
If a coarse solver pulls draws toward the conditional mean, its spread falls below the 25-step
one: fewer distinct images, lower recall, FID barely moved.

    python benchmarks/head_spread.py RUN_DIR [--images 16] [--draws 64] [--out spread.json]
"""

from __future__ import annotations

import argparse
import json

import torch

from nestar.data import build_dataset, to_float
from nestar.heads.flow_mlp import flow_solver
from nestar.pipeline import Pipeline

SETTINGS = (("euler", 25), ("euler", 12), ("euler", 8), ("euler", 4), ("heun", 6), ("heun", 5))


@torch.no_grad()
def conditions(pipe: Pipeline, n_images: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, z_null, real tokens) of the last module's tokens of `n_images` test images."""
    model = pipe.model
    ds = build_dataset(pipe.config.data, "test")
    images, labels = zip(*(ds[i] for i in range(n_images)))
    x = to_float(torch.stack(list(images)))
    labels_B = torch.as_tensor(labels)
    x_ord = pipe.tokenizer.encode(x)[:, model.perm]
    m = model.num_modules
    P, S, T = model.order.layout(m)
    z = model.module_conditions(m, x_ord, labels_B)
    z_null = model.module_conditions(m, x_ord, torch.full_like(labels_B, model.num_classes))
    flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731
    return flat(z), flat(z_null), flat(x_ord[:, P : P + T * S])


@torch.no_grad()
def spread(pipe, z, z_null, real, draws: int, guidance: float, seed: int = 0) -> list[dict]:
    head, rows = pipe.model.head, []
    zr, zu = z.repeat_interleave(draws, 0), z_null.repeat_interleave(draws, 0)
    for solver, steps in SETTINGS:
        gen = torch.Generator().manual_seed(seed)
        with flow_solver(pipe.model, sampler=solver):
            x = head.sample(zr, z_uncond_NZ=zu if guidance != 1 else None, guidance_scale=guidance,
                            num_steps=steps, generator=gen)
            nfe = head.nfe(steps)
        x = x.reshape(len(z), draws, -1)
        rows.append({
            "solver": solver, "steps": steps, "nfe": nfe,
            "guidance": guidance,
            "spread": x.std(1).mean().item(),  # per z and channel over the draws, averaged
            "mean_to_real": (x.mean(1) - real).pow(2).mean().sqrt().item(),
            "draw_to_real": (x - real[:, None]).pow(2).mean().sqrt().item(),
        })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--draws", type=int, default=64)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    pipe = Pipeline.from_pretrained(args.run)
    z, z_null, real = conditions(pipe, args.images)
    rows = []
    for g in (pipe.config.sample.cfg, 1.0):
        rows += spread(pipe, z, z_null, real, args.draws, g)
    print(f"{len(z)} conditions x {args.draws} draws ({args.images} test images, last module)")
    print("| solver | steps | NFE | guidance | spread | |mean - real| | |draw - real| |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['solver']} | {r['steps']} | {r['nfe']} | {r['guidance']:g} | {r['spread']:.4f} | "
              f"{r['mean_to_real']:.4f} | {r['draw_to_real']:.4f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"run": args.run, "images": args.images, "draws": args.draws, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
