"""The dataset classifier (SPEC 6a): a small CNN trained by the project on the train split.

It scores class agreement (does a sample look like the class it was asked for?) and, through
`features`, serves as the offline feature extractor. Weights are cached under
$NESTAR_CACHE (default ~/.cache/nestar)/classifiers with a key that hashes the data fingerprint,
the architecture version and the training settings, so a change in any of them retrains.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
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

ARCH_VERSION = "cnn-v1"
TRAIN_SETTINGS = {"epochs": 3, "batch_size": 128, "lr": 3e-3, "weight_decay": 5e-4, "seed": 0}


def cache_root() -> Path:
    return Path(os.environ.get("NESTAR_CACHE", Path.home() / ".cache" / "nestar"))


class SmallCNN(nn.Module):
    """Three conv stages (16-32-64 ch) with BatchNorm, global average pooling, 128-d features."""

    def __init__(self, channels: int, num_classes: int, width: int = 16):
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        w = width
        self.body = nn.Sequential(
            *block(channels, w), *block(w, w), nn.MaxPool2d(2),
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w), *block(4 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.proj = nn.Sequential(nn.Linear(4 * w, 128), nn.ReLU(inplace=True))
        self.fc = nn.Linear(128, num_classes)

    def features(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        """Penultimate 128-d features of images in [-1, 1]."""
        return self.proj(self.body(x_BCHW))

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.fc(F.dropout(self.features(x_BCHW), 0.2, self.training))


def dataset_fingerprint(cfg: DataConfig, split: str) -> str:
    if cfg.name == "fashion_mnist":
        from nestar.data.fashion_mnist import fingerprint

        return fingerprint(split, cfg.data_dir)
    ds = build_dataset(cfg, split)
    h = hashlib.sha256()
    for path, label in ds.samples:
        h.update(f"{path.relative_to(ds.root)}:{label}:{path.stat().st_size};".encode())
    return h.hexdigest()


def classifier_key(cfg: DataConfig, settings: dict = TRAIN_SETTINGS) -> str:
    ident = {"arch": ARCH_VERSION, "settings": settings, "data": [cfg.name, cfg.image_size, cfg.channels, cfg.num_classes],
             "train": dataset_fingerprint(cfg, "train"), "test": dataset_fingerprint(cfg, "test")}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _load_all(ds) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(ds, "images"):
        return ds.images, ds.labels
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


@torch.no_grad()
def accuracy(model: nn.Module, images_u8: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(labels), batch):
        correct += (model(to_float(images_u8[i : i + batch])).argmax(-1) == labels[i : i + batch]).sum().item()
    return correct / len(labels)


def train_classifier(cfg: DataConfig, settings: dict = TRAIN_SETTINGS, progress: bool = True) -> tuple[SmallCNN, dict]:
    """Train on the train split (random crop by 2 px + h-flip), report test accuracy."""
    torch.manual_seed(settings["seed"])
    x_tr, y_tr = _load_all(build_dataset(cfg, "train"))
    x_te, y_te = _load_all(build_dataset(cfg, "test"))
    model = SmallCNN(cfg.channels, cfg.num_classes)
    bs, epochs = settings["batch_size"], settings["epochs"]
    steps = epochs * (len(y_tr) // bs)
    opt = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings["lr"], total_steps=steps)
    g = torch.Generator().manual_seed(settings["seed"])
    t0 = time.perf_counter()
    bar = tqdm(total=steps, disable=not progress, desc="classifier", dynamic_ncols=True)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y_tr), generator=g)
        for i in range(len(y_tr) // bs):
            idx = perm[i * bs : (i + 1) * bs]
            x = to_float(x_tr[idx])
            dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            if torch.rand((), generator=g) < 0.5:
                x = x.flip(3)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    info = {"test_accuracy": accuracy(model, x_te, y_te), "train_seconds": round(time.perf_counter() - t0, 1),
            "arch": ARCH_VERSION, "settings": settings}
    return model.eval(), info


def get_classifier(cfg: DataConfig, *, cache_dir: Optional[str | Path] = None, device: str = "cpu",
                   progress: bool = True) -> tuple[SmallCNN, dict]:
    """The cached classifier for this dataset, trained first if missing or stale."""
    key = classifier_key(cfg)
    root = Path(cache_dir) if cache_dir else cache_root() / "classifiers"
    w_path, j_path = root / f"{cfg.name}-{key}.safetensors", root / f"{cfg.name}-{key}.json"
    model = SmallCNN(cfg.channels, cfg.num_classes)
    if w_path.is_file() and j_path.is_file():
        try:
            model.load_state_dict(load_file(str(w_path)))
            info = json.loads(j_path.read_text())
            return model.to(device).eval(), {**info, "cache_path": str(w_path), "key": key, "cached": True}
        except Exception as e:  # a corrupt cache is rebuilt, never trusted
            print(f"classifier cache {w_path} unreadable ({e}); retraining")
    model, info = train_classifier(cfg, progress=progress)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(w_path, lambda tmp: save_file(sd, tmp))
    save_json(info, j_path)
    return model.to(device).eval(), {**info, "cache_path": str(w_path), "key": key, "cached": False}


def class_agreement(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of samples whose predicted class is the class they were generated for."""
    return (logits.argmax(-1) == labels.to(logits.device)).float().mean().item()


__all__ = ["SmallCNN", "class_agreement", "get_classifier"]
