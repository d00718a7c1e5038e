"""How informative module 1's cells are: foreground share and spread of each first-module cell.

With the `lattice` order on an 8x8 grid of 4x4 pixel patches, module 1 emits one cell per quadrant;
`model.order_offset` moves them. For each of those cells, over real training images: the share of
images with any pixel above 0.1 of full scale in the cell ("foreground"), and the std across
images of the cell's mean value (how much there is to decide). docs/design.md, "Seams".

    python benchmarks/anchor_cells.py [--images 10000] [--offsets 0,2]
"""

from __future__ import annotations

import argparse

from nestar.data.fashion_mnist import load_fashion_mnist
from nestar.models.orders import GenerationOrder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--offsets", default="0,2")
    ap.add_argument("--grid", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    args = ap.parse_args()
    x_B1HW = load_fashion_mnist("train")[0][: args.images].float() / 255
    g, p = args.grid, x_B1HW.shape[-1] // args.grid
    tok_BLD = x_B1HW.reshape(-1, g, p, g, p).permute(0, 1, 3, 2, 4).reshape(-1, g * g, p * p)
    for off in (int(o) for o in args.offsets.split(",")):
        order = GenerationOrder(g, args.k, "lattice", off)
        for i in order.perm[: args.k].tolist():
            cell_BD = tok_BLD[:, i]
            fg = (cell_BD > 0.1).any(-1).float().mean().item()
            spread = cell_BD.mean(-1).std().item()
            print(
                f"offset {off} cell ({i // g},{i % g}): foreground {fg:.2f}, mean-value std {spread:.3f}"
            )


if __name__ == "__main__":
    main()
