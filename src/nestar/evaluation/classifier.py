"""The dataset classifier (docs/evaluation.md): a small CNN trained by the project on the train split.

It scores class agreement (does a sample look like the class it was asked for?) and, through
`features`, serves as the offline feature extractor for FID/KID/precision-recall. Nothing is
downloaded: the network is trained here (about a minute on two CPU cores for Fashion-MNIST) and
cached under $NESTAR_CACHE/classifiers (default ~/.cache/nestar/classifiers) as safetensors +
JSON. The cache key hashes the data fingerprint, the architecture version and the training
settings, so a change in any of them retrains instead of silently reusing stale weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from nestar.config import save_json
from nestar.data import DataConfig, build_dataset, to_float
from nestar.utils.io import atomic_write
from nestar.utils.precision import resolve_precision

# Classifiers shipped with the package (the default Fashion-MNIST one), found by the same file name
# as in the cache: a fresh machine scores samples at once instead of training for minutes.
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "assets" / "classifiers"

# Bump when SmallCNN or the training loop changes in a way that changes the weights.
ARCH_VERSION = "cnn-v2"


@dataclass(frozen=True)
class ClassifierSettings:
    """Training hyper-parameters; all of them enter the cache key."""

    epochs: int = 3
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    seed: int = 0
    width: int = 16
    label_smoothing: float = 0.0
    augment: bool = False  # random shift + h-flip: it cost accuracy (docs/results.md, "Measurements behind defaults")
    # 'auto' | 'fp32' | 'bf16' (utils/precision.py): bf16 autocast is ~1.5x faster where native and
    # ~100x slower where emulated (AVX2 CPUs). Not part of the cache key: it says how, not what.
    precision: str = "auto"


DEFAULT_SETTINGS = ClassifierSettings()


def cache_root() -> Path:
    """$NESTAR_CACHE, else ~/.cache/nestar (shared by every nestar cache)."""
    return Path(os.environ.get("NESTAR_CACHE", Path.home() / ".cache" / "nestar"))


class SmallCNN(nn.Module):
    """Three conv stages (w, 2w, 4w channels) with BatchNorm, global average pooling, 128-d features.

    Inputs larger than 32 px are average-pooled down to about 32 px first so the cost stays small
    for any `image_size`; the global pooling makes every size work.
    """

    feature_dim = 128

    def __init__(self, channels: int, num_classes: int, width: int = 16, image_size: int = 32):
        super().__init__()
        self.channels, self.num_classes, self.image_size = channels, num_classes, image_size
        self.stem_pool = max(1, image_size // 32)

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]

        w = width
        self.body = nn.Sequential(
            *block(channels, w),
            *block(w, w),
            nn.MaxPool2d(2),
            *block(w, 2 * w),
            *block(2 * w, 2 * w),
            nn.MaxPool2d(2),
            *block(2 * w, 4 * w),
            *block(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.proj = nn.Sequential(nn.Linear(4 * w, self.feature_dim), nn.ReLU(inplace=True))
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"classifier expects (B, {self.channels}, H, W) images in [-1, 1], got {tuple(x.shape)}"
            )
        if self.stem_pool > 1:
            x = F.avg_pool2d(x, self.stem_pool)
        return x

    def features(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        """Penultimate 128-d features of images in [-1, 1] (the layer the logits are linear in)."""
        return self.proj(self.body(self._check(x_BCHW)))

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        """Class logits of images in [-1, 1]."""
        return self.fc(F.dropout(self.features(x_BCHW), 0.2, self.training))


def dataset_fingerprint(cfg: DataConfig, split: str) -> str:
    """A cheap identity of a split on disk (names and sizes of the files), for cache keys."""
    if cfg.name == "fashion_mnist":
        from nestar.data.fashion_mnist import fingerprint

        return fingerprint(split, cfg.data_dir)
    ds = build_dataset(cfg, split)
    h = hashlib.sha256()
    for path, label in ds.samples:
        h.update(f"{path.relative_to(ds.root)}:{label}:{path.stat().st_size};".encode())
    return h.hexdigest()


def classifier_key(
    cfg: DataConfig,
    settings: ClassifierSettings = DEFAULT_SETTINGS,
    fingerprints: Optional[tuple[str, str]] = None,
) -> str:
    """16 hex chars identifying (data on disk, data config, architecture, training settings)."""
    train_fp, test_fp = fingerprints or (
        dataset_fingerprint(cfg, "train"),
        dataset_fingerprint(cfg, "test"),
    )
    recipe = {k: v for k, v in asdict(settings).items() if k != "precision"}
    ident = {
        "arch": ARCH_VERSION,
        "settings": recipe,
        "data": [cfg.name, cfg.image_size, cfg.channels, cfg.num_classes],
        "train": train_fp,
        "test": test_fp,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def load_split(cfg: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split in memory: (uint8 [N, C, S, S], int64 labels [N])."""
    ds = build_dataset(cfg, split)
    if hasattr(ds, "images"):
        return ds.images, ds.labels
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


@torch.no_grad()
def accuracy(
    model: nn.Module, images_u8: torch.Tensor, labels: torch.Tensor, batch: int = 1000
) -> float:
    """Top-1 accuracy of `model` on uint8 images (fp32, eval mode)."""
    model.eval()
    correct = 0
    for i in range(0, len(labels), batch):
        correct += (
            (model(to_float(images_u8[i : i + batch])).argmax(-1) == labels[i : i + batch])
            .sum()
            .item()
        )
    return correct / len(labels)


def train_classifier(
    cfg: DataConfig, settings: ClassifierSettings = DEFAULT_SETTINGS, progress: bool = True
) -> tuple[SmallCNN, dict]:
    """Train on the train split (AdamW + OneCycle), report test accuracy.

    Runs inside `fork_rng` so the caller's global RNG is untouched; the same seed and thread
    count give the same weights.
    """
    x_tr, y_tr = load_split(cfg, "train")
    x_te, y_te = load_split(cfg, "test")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = SmallCNN(cfg.channels, cfg.num_classes, settings.width, cfg.image_size)
        model = model.to(memory_format=torch.channels_last)  # ~1.5x faster conv training on CPU
        bs, epochs = settings.batch_size, settings.epochs
        per_epoch = max(1, len(y_tr) // bs)
        steps = epochs * per_epoch
        opt = torch.optim.AdamW(
            model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=steps)
        g = torch.Generator().manual_seed(settings.seed)
        shift = max(1, cfg.image_size // 16)
        prec = resolve_precision(settings.precision, "cpu", "classifier precision")
        if progress:
            print(f"classifier {prec.describe()}", flush=True)
        t0 = time.perf_counter()
        bar = tqdm(total=steps, disable=not progress, desc="classifier", dynamic_ncols=True)
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(y_tr), generator=g)
            for i in range(per_epoch):
                idx = perm[i * bs : (i + 1) * bs]
                x = to_float(x_tr[idx])
                if settings.augment:
                    dx, dy = torch.randint(-shift, shift + 1, (2,), generator=g).tolist()
                    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
                    if torch.rand((), generator=g) < 0.5:
                        x = x.flip(3)
                x = x.contiguous(memory_format=torch.channels_last)
                with prec.autocast("cpu"):
                    loss = F.cross_entropy(
                        model(x), y_tr[idx], label_smoothing=settings.label_smoothing
                    )
                if not math.isfinite(loss.item()):
                    raise FloatingPointError("classifier training diverged (non-finite loss)")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
        train_s = time.perf_counter() - t0
    model = model.to(
        memory_format=torch.contiguous_format
    )  # same layout as a model loaded from cache
    info = {
        "test_accuracy": accuracy(model, x_te, y_te),
        "train_seconds": round(train_s, 1),
        "arch": ARCH_VERSION,
        "settings": asdict(settings),
        "precision": prec.name,
        "threads": torch.get_num_threads(),
    }
    return model.eval(), info


def get_classifier(
    data_cfg: DataConfig,
    *,
    cache_dir: Optional[str | Path] = None,
    device: str = "cpu",
    progress: bool = True,
    epochs: Optional[int] = None,
    seed: Optional[int] = None,
    settings: Optional[ClassifierSettings] = None,
) -> tuple[SmallCNN, dict]:
    """The classifier for this dataset: cached, else shipped with the package, else trained and cached.

    Returns (model in eval mode on `device`, info) where info holds `test_accuracy`,
    `train_seconds`, `cache_path`, `key`, `cached` and the training settings. `epochs`/`seed`
    override the defaults (and so change the key).
    """
    settings = settings or DEFAULT_SETTINGS
    if epochs is not None:
        settings = replace(settings, epochs=int(epochs))
    if seed is not None:
        settings = replace(settings, seed=int(seed))
    key = classifier_key(data_cfg, settings)
    root = Path(cache_dir) if cache_dir else cache_root() / "classifiers"
    stem = f"{data_cfg.name}-{key}"
    w_path, j_path = root / f"{stem}.safetensors", root / f"{stem}.json"
    found = w_path, j_path
    if (
        not (w_path.is_file() and j_path.is_file())
        and (SHIPPED_DIR / f"{stem}.safetensors").is_file()
    ):
        found = SHIPPED_DIR / f"{stem}.safetensors", SHIPPED_DIR / f"{stem}.json"
    if found[0].is_file() and found[1].is_file():
        try:
            info = json.loads(found[1].read_text())
            if info.get("key") not in (None, key):
                raise ValueError(f"JSON key {info.get('key')} != {key}")
            model = SmallCNN(
                data_cfg.channels, data_cfg.num_classes, settings.width, data_cfg.image_size
            )
            model.load_state_dict(load_file(str(found[0])))
            return model.to(device).eval(), {
                **info,
                "cache_path": str(found[0]),
                "key": key,
                "cached": True,
            }
        except Exception as e:  # a corrupt or foreign cache is rebuilt, never trusted
            print(f"classifier cache {found[0]} unreadable ({type(e).__name__}: {e}); retraining")
    model, info = train_classifier(data_cfg, settings, progress=progress)
    info["key"] = key
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(
        w_path, lambda tmp: save_file(sd, tmp, metadata={"key": key, "arch": ARCH_VERSION})
    )
    save_json(info, j_path)
    return model.to(device).eval(), {**info, "cache_path": str(w_path), "cached": False}


__all__ = ["ClassifierSettings", "SmallCNN", "classifier_key", "get_classifier", "train_classifier"]
