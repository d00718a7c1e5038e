"""Evaluation (docs/evaluation.md): the dataset classifier, feature extractors, cached reference statistics and
the metrics (FID, KID, Inception-style score, precision/recall, class agreement, diversity).

Heavy pieces are imported lazily by callers; this module re-exports the public names.
"""

from __future__ import annotations

from nestar.evaluation.classifier import ClassifierSettings, SmallCNN, get_classifier
from nestar.evaluation.extractors import (
    ClassifierExtractor,
    FeatureExtractor,
    InceptionTorchScript,
    TorchFidelityInception,
    build_extractor,
)
from nestar.evaluation.metrics import (
    class_agreement,
    fid_from_features,
    frechet_distance,
    gaussian_stats,
    inception_score,
    kid,
    precision_recall,
    within_class_diversity,
)
from nestar.evaluation.reference import ReferenceStats, reference_stats

__all__ = [
    "ClassifierExtractor",
    "ClassifierSettings",
    "FeatureExtractor",
    "InceptionTorchScript",
    "ReferenceStats",
    "SmallCNN",
    "TorchFidelityInception",
    "build_extractor",
    "class_agreement",
    "fid_from_features",
    "frechet_distance",
    "gaussian_stats",
    "get_classifier",
    "inception_score",
    "kid",
    "precision_recall",
    "reference_stats",
    "within_class_diversity",
]
