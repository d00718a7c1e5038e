"""Reference statistics of a real split under an extractor, computed once and cached (docs/evaluation.md).

FID needs (mu, sigma) of the real images, precision/recall and KID need their features; all of
it depends only on (data on disk, split, subset, extractor), so it is computed once and stored as
safetensors (no pickle) under $NESTAR_CACHE/reference, keyed by the dataset fingerprint and the
extractor's exact identity (weights hash). A changed dataset or network gives a new key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from nestar.data import DataConfig
from nestar.evaluation.classifier import cache_root, dataset_fingerprint, load_split
from nestar.evaluation.extractors import FeatureExtractor
from nestar.evaluation.metrics import gaussian_stats, knn_radii
from nestar.utils.io import atomic_write

STATS_VERSION = "ref-v2"
PR_K = 3  # the k of precision/recall (docs/evaluation.md)


@dataclass
class ReferenceStats:
    """Real-data statistics: Gaussian fit (float64) plus the raw features for PR/KID."""

    mu: np.ndarray
    sigma: np.ndarray
    features: torch.Tensor  # (N, D) float32
    labels: torch.Tensor  # (N,) int64
    logits: Optional[torch.Tensor] = None  # (N, K) float32 when the extractor has a head
    knn_radii: Optional[torch.Tensor] = (
        None  # (N,) float64 squared k-NN radii, k = PR_K, for precision
    )
    meta: dict = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return int(self.features.shape[0])


def subset_indices(n: int, max_images: Optional[int], seed: int = 0) -> torch.Tensor:
    """All indices, or a fixed random subset of `max_images` (sorted) so every run sees the same images."""
    if not max_images or max_images >= n:
        return torch.arange(n)
    return (
        torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_images].sort().values
    )


def reference_key(
    data_cfg: DataConfig, split: str, extractor: FeatureExtractor, max_images: Optional[int] = None
) -> str:
    """16 hex chars over (data fingerprint, data config, split, subset size, extractor identity)."""
    ident = {
        "v": STATS_VERSION,
        "data": [data_cfg.name, data_cfg.image_size, data_cfg.channels],
        "fingerprint": dataset_fingerprint(data_cfg, split),
        "split": split,
        "max_images": max_images,
        "extractor": extractor.identity,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _save(path: Path, stats: ReferenceStats) -> None:
    tensors = {
        "mu": torch.from_numpy(stats.mu),
        "sigma": torch.from_numpy(stats.sigma),
        "features": stats.features.contiguous(),
        "labels": stats.labels.contiguous(),
    }
    for name in ("logits", "knn_radii"):
        if getattr(stats, name) is not None:
            tensors[name] = getattr(stats, name).contiguous()
    atomic_write(
        path, lambda tmp: save_file(tensors, tmp, metadata={"meta": json.dumps(stats.meta)})
    )


def _load(path: Path) -> ReferenceStats:
    with safe_open(str(path), framework="pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads((f.metadata() or {}).get("meta", "{}"))
    return ReferenceStats(
        mu=t["mu"].numpy(),
        sigma=t["sigma"].numpy(),
        features=t["features"],
        labels=t["labels"],
        logits=t.get("logits"),
        knn_radii=t.get("knn_radii"),
        meta=meta,
    )


def reference_stats(
    data_cfg: DataConfig,
    extractor: FeatureExtractor,
    *,
    split: str = "test",
    max_images: Optional[int] = None,
    cache_dir: Optional[str | Path] = None,
    progress: bool = True,
) -> ReferenceStats:
    """Statistics of `split` (default the test split, docs/evaluation.md) under `extractor`, from cache if present."""
    key = reference_key(data_cfg, split, extractor, max_images)
    root = Path(cache_dir) if cache_dir else cache_root() / "reference"
    path = root / f"{data_cfg.name}-{split}-{extractor.name}-{key}.safetensors"
    if path.is_file():
        try:
            stats = _load(path)
            if stats.meta.get("key") == key:
                stats.meta["cache_path"], stats.meta["cached"] = str(path), True
                return stats
        except Exception as e:  # a corrupt cache is recomputed, never trusted
            print(f"reference cache {path} unreadable ({type(e).__name__}: {e}); recomputing")
    images, labels = load_split(data_cfg, split)
    idx = subset_indices(len(labels), max_images)
    images, labels = images[idx], labels[idx]
    feats, logits = extractor.extract(images, progress=progress, desc=f"reference {split}")
    mu, sigma = gaussian_stats(feats)
    meta = {
        "key": key,
        "split": split,
        "num_images": int(len(labels)),
        "extractor": extractor.describe(),
        "data": data_cfg.name,
        "version": STATS_VERSION,
    }
    radii = knn_radii(feats.double(), PR_K)  # depends on the real set only: computed once, cached
    stats = ReferenceStats(mu, sigma, feats, labels.long(), logits, radii, meta)
    _save(path, stats)
    stats.meta["cache_path"], stats.meta["cached"] = str(path), False
    return stats


__all__ = ["ReferenceStats", "reference_key", "reference_stats", "subset_indices"]
