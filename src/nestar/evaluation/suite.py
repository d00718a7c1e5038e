"""The evaluation harness shared by `nestar eval` and `nestar bench quality`: balanced labels for
sampling, and every metric of docs/evaluation.md from features, logits and the reference statistics."""

from __future__ import annotations

from typing import Optional

import torch

from nestar.evaluation import metrics as M
from nestar.evaluation.seams import seam_statistic


def balanced_labels(n: int, num_classes: int):
    """0, 1, ..., K-1, 0, 1, ...: every prefix is as balanced as it can be."""
    return torch.arange(n) % num_classes


def compute_metrics(
    feats,
    logits,
    labels,
    ref,
    *,
    class_logits=None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    images=None,
    seam_patch_size: Optional[int] = None,
) -> dict:
    """Every metric of docs/evaluation.md from fake features/logits and the reference statistics.

    `logits` (the extractor's) feed the Inception-style score; `class_logits` (the dataset
    classifier's) feed class agreement, and stand in for missing labels in the diversity figure.
    """
    mu, sigma = M.gaussian_stats(feats)
    out: dict[str, Optional[float]] = {"fid": M.frechet_distance(mu, sigma, ref.mu, ref.sigma)}
    out["kid_mean"], out["kid_std"] = M.kid(ref.features, feats, kid_subsets, kid_subset_size)
    out["precision"], out["recall"] = M.precision_recall(
        ref.features, feats, k=3, real_radii=ref.knn_radii
    )
    out["inception_score_mean"] = out["inception_score_std"] = None
    if logits is not None:
        out["inception_score_mean"], out["inception_score_std"] = M.inception_score(
            logits, splits=10
        )
    out["class_agreement"] = None
    if class_logits is not None and labels is not None:
        out["class_agreement"] = M.class_agreement(class_logits, labels)
    div_labels = (
        labels
        if labels is not None
        else (class_logits.argmax(1) if class_logits is not None else None)
    )
    out["within_class_diversity"] = (
        M.within_class_diversity(feats, div_labels) if div_labels is not None else None
    )
    out["within_class_diversity_real"] = M.within_class_diversity(ref.features, ref.labels)
    out["seam"] = (
        seam_statistic(images, seam_patch_size) if images is not None and seam_patch_size else None
    )
    return out
