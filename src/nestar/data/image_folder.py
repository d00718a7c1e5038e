"""A folder of images, one sub-folder per class (ImageNet layout), for users' own data."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nestar.errors import DataError

IMG_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
# Folders up to this many files have every header checked at start (milliseconds per file), so a
# folder of mostly unreadable files fails before training instead of repeating its few good images.
VERIFY_LIMIT = 20_000


def unreadable_reason(path: Path) -> str | None:
    """Why PIL cannot open `path` (header only, no full decode), or None if it opens.

    Catches corrupt or non-image files and decompression bombs (PIL's DecompressionBombError).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "error", Image.DecompressionBombWarning
            )  # > MAX_IMAGE_PIXELS: refuse
            with Image.open(path) as img:
                img.size  # noqa: B018 -- the header is parsed on open; size forces nothing more
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, bombs, ...)
        return f"{type(e).__name__}: {e}"
    return None


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

    def __init__(
        self, root: str | Path, image_size: int, channels: int = 3, verify: bool | None = None
    ):
        """`verify`: check every file's header at start and drop unreadable ones (default: folders of
        at most VERIFY_LIMIT files); larger folders skip unreadable files as they are met."""
        self.root = Path(root)
        if not self.root.is_dir():
            what = (
                "is not a directory"
                if self.root.exists()
                else "does not exist (or is a broken/looping link)"
            )
            raise DataError(
                f"image folder {self.root} {what}; --data.data_dir must be a folder of class "
                f"sub-folders (root/<class>/<image>)"
            )
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels}")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        if not self.classes:
            raise DataError(f"{self.root} has no class sub-folders (expected root/<class>/<image>)")
        self.samples: list[tuple[Path, int]] = []
        empty = []
        for label, name in enumerate(self.classes):
            found = [
                p
                for p in sorted((self.root / name).rglob("*"))
                if p.suffix.lower() in IMG_EXTENSIONS and p.is_file()
            ]
            empty += [] if found else [name]
            self.samples += [(p, label) for p in found]
        if not self.samples:
            raise DataError(
                f"{self.root} contains no images with extensions {sorted(IMG_EXTENSIONS)}"
            )
        if empty:  # each folder is a class id: an empty one would be a class the model never sees
            raise DataError(
                f"{self.root}: class folder(s) {empty[:5]} hold no images; add images or remove them"
            )
        self.image_size, self.channels = image_size, channels
        self.bad_files: set[Path] = set()
        self.skipped: list[tuple[Path, str]] = []  # dropped at start by the header check
        if verify if verify is not None else len(self.samples) <= VERIFY_LIMIT:
            self._drop_unreadable()

    def _drop_unreadable(self) -> None:
        keep = []
        for path, label in self.samples:
            reason = unreadable_reason(path)
            if reason is None:
                keep.append((path, label))
            else:
                self.skipped.append((path, reason))
        if not keep:
            raise DataError(
                f"{self.root}: none of its {len(self.samples)} image files can be read "
                f"(e.g. {self.skipped[0][0]}: {self.skipped[0][1]})"
            )
        if self.skipped:
            warnings.warn(
                f"{self.root}: skipped {len(self.skipped)} unreadable image file(s) of {len(self.samples)} "
                f"(e.g. {self.skipped[0][0]}: {self.skipped[0][1]})",
                stacklevel=3,
            )
        self.samples = keep

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
        raise DataError(
            f"no readable image in {self.root} ({len(self.bad_files)} unreadable files)"
        )
