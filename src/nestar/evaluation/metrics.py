"""Sample-quality metrics on feature vectors, written out here (no torch-fidelity/clean-fid).

Everything that accumulates (means, covariances, kernel sums, matrix square roots) runs in
float64: FID is a small difference of large traces, and float32 loses it. Inputs may be torch
tensors or numpy arrays; scalars come back as Python floats.
"""

from __future__ import annotations

import warnings
from typing import Optional, Union

import numpy as np
import torch

Array = Union[np.ndarray, torch.Tensor]


def _np64(x: Array) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _t64(x: Array) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double()
    return torch.from_numpy(np.asarray(x, dtype=np.float64))


def _labels(x: Array) -> torch.Tensor:
    return (
        torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        .reshape(-1)
        .cpu()
        .long()
    )


def gaussian_stats(feats: Array) -> tuple[np.ndarray, np.ndarray]:
    """(mean, unbiased covariance) of (N, D) features in float64.

    Warns when N < D: the covariance is then rank-deficient and FID is biased and noisy, so
    numbers from such runs should not be compared with published ones.
    """
    f = _np64(feats)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {f.shape}")
    n, d = f.shape
    if n < d:
        warnings.warn(
            f"only {n} samples for {d}-d features: the covariance is singular and FID is "
            f"unreliable (use N >= {d}, ideally 10x more)",
            stacklevel=2,
        )
    return f.mean(0), np.cov(f, rowvar=False).reshape(d, d)


def _sym_sqrt_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues -> 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^1/2) via the symmetric form tr((S1^1/2 S2 S1^1/2)^1/2).

    S1 S2 is not symmetric, and scipy.linalg.sqrtm on it can return complex parts or fail on
    near-singular inputs; S1^1/2 S2 S1^1/2 is symmetric PSD with the same eigenvalues, so an
    eigendecomposition gives the trace stably, singular covariances included.
    """
    s1 = _sym_sqrt_psd(sigma1)
    m = s1 @ sigma2 @ s1
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def frechet_distance(mu1: Array, sigma1: Array, mu2: Array, sigma2: Array) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):
    ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2). This is FID when the Gaussians are fit
    to Inception (or other) features of two image sets.
    """
    mu1, mu2 = _np64(mu1).reshape(-1), _np64(mu2).reshape(-1)
    s1, s2 = np.atleast_2d(_np64(sigma1)), np.atleast_2d(_np64(sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"shape mismatch: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}"
        )
    if not (
        np.isfinite(s1).all()
        and np.isfinite(s2).all()
        and np.isfinite(mu1).all()
        and np.isfinite(mu2).all()
    ):
        raise ValueError("non-finite statistics (NaN/inf features?)")
    diff = mu1 - mu2
    fd = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))
    return max(fd, 0.0)  # tiny negative values are round-off of two equal distributions


def fid_from_features(feats1: Array, feats2: Array) -> float:
    """FID between two (N, D) feature sets."""
    return frechet_distance(*gaussian_stats(feats1), *gaussian_stats(feats2))


def kid(
    feats1: Array, feats2: Array, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD^2 with the cubic polynomial
    kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets. Returns (mean, std) over subsets.

    Unlike FID it is unbiased in N, so small-sample numbers are comparable. `subset_size` is
    capped at the smaller set; subsets are drawn without replacement with a fixed seed.
    """
    x_all, y_all = _np64(feats1), _np64(feats2)
    if x_all.ndim != 2 or y_all.ndim != 2 or x_all.shape[1] != y_all.shape[1]:
        raise ValueError(f"need (N, D) features of one D, got {x_all.shape} and {y_all.shape}")
    d = x_all.shape[1]
    m = min(subset_size, x_all.shape[0], y_all.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples per set")
    rng = np.random.default_rng(seed)
    vals = np.empty(subsets)
    for s in range(subsets):
        x = x_all[rng.choice(x_all.shape[0], m, replace=False)]
        y = y_all[rng.choice(y_all.shape[0], m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        vals[s] = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (
            m * (m - 1)
        ) - 2 * kxy.mean()
    return float(vals.mean()), float(vals.std())


def inception_score(logits: Array, splits: int = 10) -> tuple[float, float]:
    """Inception Score exp(E_x KL(p(y|x) || p(y))) from classifier logits, (mean, std) over splits.

    Only meaningful with the classifier the score was defined for (Inception-v3 on ImageNet);
    with the dataset classifier it is an "Inception-style" score whose maximum is num_classes.
    """
    lg = _t64(logits)
    if lg.ndim != 2:
        raise ValueError(f"logits must be (N, K), got {tuple(lg.shape)}")
    splits = max(1, min(splits, lg.shape[0]))
    logp = torch.log_softmax(lg, dim=1)
    scores = []
    for part in torch.tensor_split(logp, splits):
        log_py = torch.logsumexp(part, dim=0) - np.log(part.shape[0])  # log of the mean p(y)
        kl = (part.exp() * (part - log_py)).sum(1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (|a|^2 + |b|^2 - 2ab), clipped at 0 against round-off."""
    return ((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T).clamp_min_(0)


def knn_radii(feats: torch.Tensor, k: int = 3, batch: int = 1024) -> torch.Tensor:
    """Squared distance from each point to its k-th nearest other point (the manifold ball radii)."""
    n = feats.shape[0]
    if n <= k:
        raise ValueError(f"need more than k={k} points for k-NN radii, got {n}")
    out = torch.empty(n, dtype=feats.dtype)
    for i in range(0, n, batch):
        d = _sq_dists(feats[i : i + batch], feats)
        out[i : i + batch] = d.kthvalue(
            k + 1, dim=1
        ).values  # +1: the point itself is at distance 0
    return out


def _coverage(
    queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, batch: int = 1024
) -> float:
    """Share of `queries` inside at least one ball (support_i, radius_i)."""
    inside = 0
    for i in range(0, queries.shape[0], batch):
        d = _sq_dists(queries[i : i + batch], support)
        inside += int((d <= radii[None, :]).any(1).sum())
    return inside / queries.shape[0]


def precision_recall(
    real_feats: Array,
    fake_feats: Array,
    k: int = 3,
    batch: int = 1024,
    real_radii: Optional[Array] = None,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    Each set's manifold is the union of balls around its points with radius = distance to the
    k-th nearest neighbour. Precision: share of fake samples inside the real manifold (fidelity).
    Recall: share of real samples inside the fake manifold (coverage/diversity). Distances are
    computed in row batches so memory stays O(batch * N). `real_radii` (squared k-NN radii of the
    real set, from `knn_radii`) can be passed in from a cache: they depend on the real set only.
    """
    real, fake = _t64(real_feats), _t64(fake_feats)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"need (N, D) features of one D, got {tuple(real.shape)} and {tuple(fake.shape)}"
        )
    radii = knn_radii(real, k, batch) if real_radii is None else _t64(real_radii).reshape(-1)
    if radii.shape[0] != real.shape[0]:
        raise ValueError(f"{radii.shape[0]} real radii for {real.shape[0]} real samples")
    precision = _coverage(fake, real, radii, batch)
    recall = _coverage(real, fake, knn_radii(fake, k, batch), batch)
    return precision, recall


def class_agreement(logits: Array, labels: Array) -> float:
    """Share of samples the classifier assigns to the class they were generated for."""
    lg, lb = _t64(logits), _labels(labels)
    if lg.ndim != 2 or lb.shape[0] != lg.shape[0]:
        raise ValueError(
            f"need (N, K) logits and N labels, got {tuple(lg.shape)} and {tuple(lb.shape)}"
        )
    return float((lg.argmax(1) == lb).double().mean())


def within_class_diversity(
    feats: Array, labels: Array, max_per_class: int = 2000, seed: int = 0
) -> float:
    """Mean pairwise Euclidean feature distance between samples of one class, averaged over classes.

    Complements recall: a class-conditional model that collapses to a few images per class scores
    low here even when its class agreement is perfect. Classes with fewer than 2 samples are
    skipped; classes above `max_per_class` are subsampled (fixed seed) to bound the cost.
    """
    f = _t64(feats)
    lb = _labels(labels)
    if f.ndim != 2 or lb.shape[0] != f.shape[0]:
        raise ValueError(
            f"need (N, D) features and N labels, got {tuple(f.shape)} and {tuple(lb.shape)}"
        )
    g = torch.Generator().manual_seed(seed)
    means = []
    for c in torch.unique(lb):
        fc = f[lb == c]
        if fc.shape[0] < 2:
            continue
        if fc.shape[0] > max_per_class:
            fc = fc[torch.randperm(fc.shape[0], generator=g)[:max_per_class]]
        means.append(float(torch.pdist(fc).mean()))
    if not means:
        raise ValueError("within_class_diversity needs a class with at least 2 samples")
    return float(np.mean(means))


__all__ = [
    "class_agreement",
    "fid_from_features",
    "frechet_distance",
    "gaussian_stats",
    "inception_score",
    "kid",
    "knn_radii",
    "precision_recall",
    "trace_sqrt_product",
    "within_class_diversity",
]
