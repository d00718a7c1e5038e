"""Atomic file writes: a crash mid-write never leaves a half-written checkpoint or config."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

TMP_SUFFIX = ".tmp"  # temp files are `.<name>.<random>.tmp` next to their target


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); silently skipped where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _keep_previous(path: Path, previous: Path) -> None:
    """Make `previous` hold the current `path` (a hard link: `path` exists at every instant)."""
    link = previous.with_name(f".{previous.name}.link{TMP_SUFFIX}")
    try:
        if link.exists():
            link.unlink()
        os.link(path, link)
        os.replace(link, previous)
    except (
        OSError
    ):  # no hard links on this file system: rename (a crash now leaves only `previous`)
        os.replace(path, previous)


def atomic_write(
    path: str | Path, write_fn: Callable[[str], None], previous: Optional[str | Path] = None
) -> None:
    """Call `write_fn(tmp_path)` on a temp file next to `path`, fsync it, then rename over `path`.

    `previous`: first keep the file being replaced there (e.g. `prev.safetensors` beside `last.safetensors`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            _keep_previous(path, Path(previous))
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    def _write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, _write)


def remove_orphan_tmp(directories: list[Path]) -> tuple[int, int]:
    """Delete temp files that `atomic_write` left behind when a process died mid-write.

    Only call this while holding the directory's lock (no live writer owns them). Returns (files, bytes).
    """
    count = size = 0
    for d in directories:
        if not d.is_dir():
            continue
        for p in d.glob(f".*{TMP_SUFFIX}"):
            if p.is_file():
                size += p.stat().st_size
                p.unlink()
                count += 1
    return count, size
