"""Sampling noise of the quality metrics: one trained model, several sample draws, mean and std.

Every figure of a quality table is one draw of N samples, so it moves between draws even for a
fixed model. This reads the metrics JSONs of `nestar eval` runs that differ only in `--seed` (same
checkpoint, same N) and prints each metric's mean, std and range over the draws; `--out` writes
them as JSON (docs/results/noise13/noise.json; `nestar bench claims` floors each arm's seed std at
the recall/precision/FID figures measured this way, nestar/bench/claims.py `SAMPLING_STD`).

    for s in 0 1 2 3 4 5 6 7; do
      nestar eval --checkpoint src/nestar/assets/pretrained/nestar-fmnist --num-samples 5000 \\
          --seed $s --out docs/results/noise13/seed$s.json
    done
    python benchmarks/sampling_noise.py docs/results/noise13/seed*.json --out docs/results/noise13/noise.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

METRICS = ("fid", "precision", "recall", "class_agreement", "within_class_diversity", "seam")


def summarise(paths: list[str]) -> dict:
    """Per metric: mean, sample std, min and max over the draws; refuses mixed checkpoints or N."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    if len(runs) < 2:
        raise SystemExit("need at least two draws (metrics JSONs of nestar eval with different --seed)")
    same = {(r["sampling"].get("checkpoint"), r["num_samples"]) for r in runs}
    if len(same) != 1:
        raise SystemExit(f"the draws must share checkpoint and N, got {sorted(same)}")
    (checkpoint, n), = same
    out = {"checkpoint": checkpoint, "num_samples": n, "seeds": [r["sampling"]["seed"] for r in runs]}
    for m in METRICS:
        vals = [r["metrics"][m] for r in runs if r["metrics"].get(m) is not None]
        if len(vals) >= 2:
            out[m] = {"mean": statistics.mean(vals), "std": statistics.stdev(vals),
                      "min": min(vals), "max": max(vals), "values": vals}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", nargs="+", help="metrics JSONs of `nestar eval`, one per sample seed")
    ap.add_argument("--out", default=None, help="write the summary here as JSON")
    args = ap.parse_args()
    s = summarise(args.metrics)
    print(f"{len(s['seeds'])} draws of N = {s['num_samples']} from {s['checkpoint']} (seeds {s['seeds']})")
    for m in METRICS:
        if m in s:
            v = s[m]
            print(f"{m:24s} mean {v['mean']:.4f}  std {v['std']:.4f}  range [{v['min']:.4f}, {v['max']:.4f}]")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(s, indent=2) + "\n")


if __name__ == "__main__":
    main()
