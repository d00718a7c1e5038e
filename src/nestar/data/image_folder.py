"""A folder of images, one sub-folder per class (ImageNet layout), for users' own data."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMG_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def center_crop_resize(img: Image.Image, size: int) -> Image.Image:
    """ADM-style: downsample by powers of two with BOX, then BICUBIC so the short side is `size`,
    then centre-crop to size x size."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return img.crop((left, top, left + size, top + size))


class ImageFolderDataset(torch.utils.data.Dataset):
    """Images under `root/<class>/...`, returned as (uint8 [C, S, S], label).

    Classes are the sorted sub-folder names. A file that cannot be decoded is skipped (another
    image is returned in its place) and counted; a warning reports the count, so one corrupt JPEG
    never stops a long run.
    """

    def __init__(self, root: str | Path, image_size: int, channels: int = 3):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        if not self.classes:
            raise ValueError(f"{self.root} has no class sub-folders (expected root/<class>/<image>)")
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            for p in sorted((self.root / name).rglob("*")):
                if p.suffix.lower() in IMG_EXTENSIONS and p.is_file():
                    self.samples.append((p, label))
        if not self.samples:
            raise ValueError(f"{self.root} contains no images with extensions {sorted(IMG_EXTENSIONS)}")
        self.image_size, self.channels = image_size, channels
        self.bad_files: set[Path] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, path: Path) -> torch.Tensor:
        with Image.open(path) as img:
            img = img.convert("L" if self.channels == 1 else "RGB")
            img = center_crop_resize(img, self.image_size)
            arr = np.asarray(img, dtype=np.uint8)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return torch.from_numpy(arr.copy())

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        for attempt in range(len(self.samples)):
            path, label = self.samples[(idx + attempt) % len(self.samples)]
            if path in self.bad_files:
                continue
            try:
                return self._load(path), label
            except Exception as e:  # PIL raises many types for corrupt files
                self.bad_files.add(path)
                warnings.warn(
                    f"skipping unreadable image {path} ({type(e).__name__}: {e}); "
                    f"{len(self.bad_files)} unreadable file(s) skipped so far",
                    stacklevel=2,
                )
        raise RuntimeError(f"no readable image in {self.root}")
