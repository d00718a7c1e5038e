"""Learning curve: the same arms of several quality benches, one per training budget, in one table.

Each quality.json (written by `nestar bench quality`) is one point of the curve; its training
budget is read from the rows (`train_steps`), never from the path. Per arm and point: mean ± std
over training seeds, the per-seed values, N, and where the rows trained (CPU, precision), since a
curve whose points come from different machines or precisions says so.

    python benchmarks/learning_curve.py docs/results/q13/quality.json \\
        docs/results/curve13/1600/quality.json docs/results/curve13/3200/quality.json \\
        --arms nestar,raster --out docs/results/curve13/curve
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

METRICS = ("fid", "precision", "recall", "class_agreement", "seam")


def _point(path: str, arms: list[str]) -> dict:
    """{arm: {steps, N, seeds, values: {metric: [...]}, trained: [...]}} for one quality.json."""
    data = json.loads(Path(path).read_text())
    out = {}
    for arm in arms:
        rows = [r for r in data["rows"] if r["name"] == arm and r.get("metrics", {}).get("fid") is not None]
        if not rows:
            continue
        steps = {r.get("train_steps") for r in rows}
        if len(steps) != 1:
            raise SystemExit(f"{path}: {arm}'s rows trained for different budgets {sorted(steps)}")
        rows.sort(key=lambda r: r.get("train_seed") or 0)
        trained = sorted({f"{r['machine']['cpu']} {r.get('train_precision') or '?'}" if r.get("machine")
                          else "not recorded" for r in rows})
        out[arm] = {"steps": steps.pop(), "N": rows[0].get("num_eval"),
                    "seeds": [r.get("train_seed") or 0 for r in rows], "trained": trained,
                    "values": {m: [r["metrics"].get(m) for r in rows] for m in METRICS}}
    return out


def _cell(vals: list, metric: str) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    scale, fmt = (100, "{:.1f}%") if metric == "class_agreement" else (1, "{:.3f}" if metric in ("precision", "recall") else "{:.2f}")
    mean = fmt.format(statistics.mean(vals) * scale)
    sd = f" ± {fmt.format(statistics.stdev(vals) * scale).rstrip('%')}" if len(vals) > 1 else ""
    return f"{mean}{sd}"


def table(points: list[dict], arms: list[str]) -> str:
    """Markdown: one row per (budget, arm), mean ± std over seeds, then the per-seed FIDs."""
    head = ["steps", "arm", "seeds", "N"] + list(METRICS) + ["FID per seed", "trained on"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for pt in sorted(points, key=lambda p: min(a["steps"] for a in p.values())):
        for arm in arms:
            if arm not in pt:
                continue
            a = pt[arm]
            cells = [str(a["steps"]), arm, ",".join(map(str, a["seeds"])), str(a["N"])]
            cells += [_cell(a["values"][m], m) for m in METRICS]
            cells += [" / ".join(f"{v:.2f}" for v in a["values"]["fid"]), "; ".join(a["trained"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="quality.json files, one per training budget")
    ap.add_argument("--arms", default="nestar,raster", help="entry names to follow (default nestar,raster)")
    ap.add_argument("--out", default=None, help="write OUT.md and OUT.json")
    args = ap.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    points = [p for p in (_point(r, arms) for r in args.results) if p]
    if not points:
        raise SystemExit(f"none of {arms} in {args.results}")
    md = table(points, arms)
    print(md, end="")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(md)
        out.with_suffix(".json").write_text(json.dumps({"sources": args.results, "points": points}, indent=2) + "\n")


if __name__ == "__main__":
    main()
