"""Latent caching (MAR-style): encode a dataset once, train on cached VAE posteriors.

`cache_latents` stores, for every image and for its horizontal flip, the posterior moments
(mean and log-variance, unscaled, as the VAE's `quant_conv` produced them) in shards:

    DIR/manifest.json                tokenizer identity (architecture, weights sha256), image
                                     size, channels, latent shape, dataset fingerprint and count,
                                     shard size, dtype, the tokenizer's scale/shift, completed shards
    DIR/shard-00000.safetensors      moments (n, 2, 2C, h, w) [:, 0] = image, [:, 1] = its flip;
                                     channels 0..C-1 mean, C..2C-1 logvar; labels (n,) int64

Every shard and every manifest update is written atomically, so an interrupted run leaves only
complete shards; re-running the same command skips them and writes the rest (images are encoded
deterministically, so the result is identical to an uninterrupted run). A cache made with another
tokenizer (different weights or architecture), image size or dataset is refused with
`CacheMismatchError` naming the fields, before anything is written.

`CachedLatentDataset` draws, per item, one of the two flips at random and a reparameterised
posterior sample, and returns tokens (h*w, C) = (z - shift) * scale in raster order, scale and
shift being the tokenizer's (from its config) unless given.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from nestar.config import ConfigError, save_json
from nestar.data import DataConfig
from nestar.tokenizers import TokenizerConfig
from nestar.utils.io import atomic_write

CACHE_FORMAT = "nestar-latent-cache/1"
MANIFEST = "manifest.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


@dataclass
class CacheLatentsConfig:
    """What `nestar cache-latents` encodes: `--data.*` and `--tokenizer.*` overrides apply here."""

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


class CacheMismatchError(ConfigError):
    """A latent cache does not belong to this tokenizer / image size / dataset, or is incomplete."""


def _print(msg: str) -> None:
    print(msg, flush=True)


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def dataset_fingerprint(ds) -> str:
    """An identity of the images a dataset yields: content hash for in-memory tensors, file list
    (relative paths, sizes, labels) plus resize settings for image folders."""
    h = hashlib.sha256()
    images = getattr(ds, "images", None)
    if isinstance(images, torch.Tensor):
        h.update(f"tensor:{tuple(images.shape)}:{images.dtype};".encode())
        h.update(images.contiguous().numpy().tobytes())
        h.update(ds.labels.to(torch.int64).contiguous().numpy().tobytes())
        return "sha256:" + h.hexdigest()
    samples = getattr(ds, "samples", None)
    if samples is not None and hasattr(ds, "root"):
        h.update(
            f"folder:{getattr(ds, 'image_size', '?')}:{getattr(ds, 'channels', '?')};".encode()
        )
        root = Path(ds.root)
        for path, label in samples:
            p = Path(path)
            try:
                rel = p.relative_to(root)
            except ValueError:
                rel = p
            h.update(f"{rel}:{p.stat().st_size}:{label};".encode())
        return "sha256:" + h.hexdigest()
    return f"unhashed:{type(ds).__name__}:{len(ds)}"


def _diff(want: dict, have: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(want) | set(have)):
        a, b = want.get(k, "<missing>"), have.get(k, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: this run {a!r} vs cache {b!r}")
    return out


def _read_manifest(root: Path) -> Optional[dict]:
    p = root / MANIFEST
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CacheMismatchError(
            f"{p} is not valid JSON ({e}); it is not a latent cache written by nestar"
        ) from e


def _shard_ok(path: Path, start: int, count: int, weights: str) -> bool:
    """A complete shard of this cache (atomic writes mean an existing file is whole)."""
    from safetensors import safe_open

    if not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception:
        return False
    return (
        meta.get("start") == str(start)
        and meta.get("count") == str(count)
        and meta.get("weights_sha256") == weights
    )


def _open_manifest(root: Path, key: dict, fresh: dict) -> dict:
    """The existing manifest if it matches `key`, else a new one ({**key, **fresh}) written now;
    refuses a cache made with other settings and a non-empty directory that is not a cache."""
    manifest = _read_manifest(root)
    if manifest is not None:
        diffs = _diff(key, {k: manifest.get(k) for k in key})
        if diffs:
            raise CacheMismatchError(
                f"{root} holds a latent cache made with different settings; nothing was "
                f"changed. Use another --out, or delete it to rebuild: " + "; ".join(diffs)
            )
        return manifest
    if root.exists() and any(root.iterdir()):
        raise CacheMismatchError(
            f"{root} exists and is not a latent cache (no {MANIFEST}); refusing to write into it"
        )
    manifest = {**key, **fresh}
    save_json(manifest, root / MANIFEST)
    return manifest


def _encode_shard(tokenizer, subset, batch_size: int, num_workers: int, dtype: str) -> dict:
    """{'moments': (n, 2, 2C, h, w) for each image and its horizontal flip, 'labels': (n,)}."""
    from nestar.data import collate, to_float

    dev = next(tokenizer.parameters()).device
    loader = torch.utils.data.DataLoader(
        subset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers
    )
    moments, labels = [], []
    for images, lab in loader:
        x = to_float(images.to(dev))
        m0 = torch.cat(tokenizer.encode_moments(x), 1)
        m1 = torch.cat(tokenizer.encode_moments(x.flip(-1)), 1)
        moments.append(torch.stack([m0, m1], 1).to("cpu", DTYPES[dtype]))
        labels.append(torch.as_tensor(lab, dtype=torch.int64))
    return {"moments": torch.cat(moments).contiguous(), "labels": torch.cat(labels).contiguous()}


def cache_latents(
    tokenizer,
    dataset,
    out_dir,
    *,
    shard_size: int = 4096,
    batch_size: int = 64,
    dtype: str = "float32",
    split: str = "train",
    data_config: Optional[dict] = None,
    tokenizer_config: Optional[dict] = None,
    num_workers: int = 0,
    max_shards: Optional[int] = None,
    log: Optional[Callable[[str], None]] = _print,
) -> dict:
    """Write (or finish) the cache of `dataset` (items: uint8 (C, S, S), label) under `out_dir`.

    `tokenizer` is a VAE tokenizer (`KLTokenizer`: has `encode_moments` and `identity()`).
    `max_shards` stops after writing that many new shards (the cache stays resumable). Returns the
    manifest.
    """
    from safetensors.torch import save_file

    log = log or (lambda s: None)
    if not hasattr(tokenizer, "encode_moments"):
        raise ConfigError(
            f"latent caching needs a VAE tokenizer (tokenizer.name='kl' or 'kl16'), "
            f"got {type(tokenizer).__name__}"
        )
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if shard_size < 1 or batch_size < 1:
        raise ConfigError("shard_size and batch_size must be >= 1")
    root = Path(out_dir)
    n = len(dataset)
    ident = tokenizer.identity()
    c, g = tokenizer.token_dim, tokenizer.grid_size
    num_shards = (n + shard_size - 1) // shard_size
    key = {
        "format": CACHE_FORMAT,
        "tokenizer": ident,
        "image_size": tokenizer.image_size,
        "channels": tokenizer.channels,
        "latent_shape": [c, g, g],
        "dataset": {"fingerprint": dataset_fingerprint(dataset), "count": n, "split": split},
        "shard_size": shard_size,
        "dtype": dtype,
    }
    fresh = {
        "num_shards": num_shards,
        "flip": True,
        "scale": tokenizer.scale,
        "shift": tokenizer.shift,
        "tokenizer_config": tokenizer_config,
        "data_config": data_config,
        "shards": {},
        "complete": False,
    }
    manifest = _open_manifest(root, key, fresh)
    weights = ident["weights_sha256"]
    written, t0 = 0, time.time()
    for s in range(num_shards):
        lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
        path = root / shard_name(s)
        if _shard_ok(path, lo, hi - lo, weights):
            if shard_name(s) not in manifest["shards"]:  # written before a crash hit the manifest
                manifest["shards"][shard_name(s)] = {"start": lo, "count": hi - lo}
                save_json(manifest, root / MANIFEST)
            continue
        if max_shards is not None and written >= max_shards:
            break
        subset = torch.utils.data.Subset(dataset, range(lo, hi))
        tensors = _encode_shard(tokenizer, subset, batch_size, num_workers, dtype)
        meta = {
            "format": CACHE_FORMAT,
            "start": str(lo),
            "count": str(hi - lo),
            "weights_sha256": weights,
        }
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
        manifest["shards"][shard_name(s)] = {"start": lo, "count": hi - lo}
        save_json(manifest, root / MANIFEST)
        written += 1
        log(f"shard {s + 1}/{num_shards} ({hi} / {n} images) {time.time() - t0:.0f}s")
    manifest["complete"] = len(manifest["shards"]) == num_shards
    save_json(manifest, root / MANIFEST)
    log(
        f"{root}: {len(manifest['shards'])}/{num_shards} shards"
        + ("" if manifest["complete"] else " (incomplete: rerun to finish)")
    )
    return manifest


class CachedLatentDataset(torch.utils.data.Dataset):
    """Tokens sampled from a latent cache: items are (tokens (h*w, C) float32, label).

    Each access picks the image or its flip at random (`flip`) and draws a posterior sample
    (`sample`; else the mean), then maps it as (z - shift) * scale. Pass `tokenizer` (a VAE
    tokenizer) and/or `image_size` to verify the cache was made with them; a mismatch raises
    `CacheMismatchError`. `scale`/`shift` default to the tokenizer's, else the manifest's.
    `generator` makes the draws reproducible (else the global torch RNG, seeded per DataLoader worker).
    """

    def __init__(
        self,
        root,
        *,
        tokenizer=None,
        image_size: Optional[int] = None,
        scale: Optional[float] = None,
        shift: Optional[float] = None,
        flip: bool = True,
        sample: bool = True,
        generator: Optional[torch.Generator] = None,
    ):
        self.root = Path(root)
        m = _read_manifest(self.root)
        if m is None:
            raise CacheMismatchError(
                f"{self.root} is not a latent cache ({MANIFEST} missing); "
                f"write one with `nestar cache-latents --out {self.root} ...`"
            )
        if m.get("format") != CACHE_FORMAT:
            raise CacheMismatchError(
                f"{self.root}: cache format {m.get('format')!r} is not {CACHE_FORMAT!r}"
            )
        if not m.get("complete"):
            raise CacheMismatchError(
                f"{self.root}: the cache is incomplete ({len(m.get('shards', {}))}/"
                f"{m.get('num_shards')} shards); rerun `nestar cache-latents` to finish it"
            )
        diffs = []
        if image_size is not None and image_size != m["image_size"]:
            diffs.append(f"image_size: this run {image_size} vs cache {m['image_size']}")
        if tokenizer is not None:
            if not hasattr(tokenizer, "identity"):
                raise CacheMismatchError(
                    f"{self.root} caches VAE latents; tokenizer {type(tokenizer).__name__} has none"
                )
            diffs += [f"tokenizer.{d}" for d in _diff(tokenizer.identity(), m["tokenizer"])]
            if tokenizer.image_size != m["image_size"] and image_size is None:
                diffs.append(
                    f"image_size: this run {tokenizer.image_size} vs cache {m['image_size']}"
                )
        if diffs:
            raise CacheMismatchError(
                f"latent cache {self.root} was made with different settings: " + "; ".join(diffs)
            )
        self.manifest = m
        self.scale = float(
            scale if scale is not None else tokenizer.scale if tokenizer is not None else m["scale"]
        )
        self.shift = float(
            shift if shift is not None else tokenizer.shift if tokenizer is not None else m["shift"]
        )
        self.flip, self.sample, self.generator = flip, sample, generator
        self.count, self.shard_size = m["dataset"]["count"], m["shard_size"]
        self.token_dim, self.grid_size = m["latent_shape"][0], m["latent_shape"][1]
        self._files: dict[int, object] = {}

    def __len__(self) -> int:
        return self.count

    def __getstate__(self):  # open safetensors handles are per process
        state = dict(self.__dict__)
        state["_files"] = {}
        return state

    def _shard(self, s: int):
        if s not in self._files:
            from safetensors import safe_open

            path = self.root / shard_name(s)
            if not path.is_file():
                raise CacheMismatchError(
                    f"{path} is missing from the latent cache; rerun `nestar cache-latents`"
                )
            self._files[s] = safe_open(str(path), "pt")
        return self._files[s]

    def moments(self, idxs: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw cached moments (B, 2, 2C, h, w) float32 and labels (B,) of the given items."""
        idx = torch.as_tensor(idxs, dtype=torch.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.count):
            raise IndexError(f"index out of range for a cache of {self.count} items")
        out = torch.empty(len(idx), 2, 2 * self.token_dim, self.grid_size, self.grid_size)
        labels = torch.empty(len(idx), dtype=torch.int64)
        shard_of = idx // self.shard_size
        for s in shard_of.unique().tolist():
            sel = (shard_of == s).nonzero().squeeze(1)
            f = self._shard(s)
            local = (idx[sel] - s * self.shard_size).tolist()
            mom, lab = f.get_slice("moments"), f.get_slice("labels")
            out[sel] = torch.stack([mom[i] for i in local]).float()
            labels[sel] = torch.stack([lab[i] for i in local]).reshape(-1)
        return out, labels

    def tokens_from_moments(self, moments: torch.Tensor) -> torch.Tensor:
        """(B, 2, 2C, h, w) -> tokens (B, h*w, C): random flip, posterior sample, scale/shift."""
        b = moments.shape[0]
        if self.flip:
            pick = torch.randint(0, 2, (b,), generator=self.generator)
        else:
            pick = torch.zeros(b, dtype=torch.int64)
        m = moments[torch.arange(b), pick]
        mean, logvar = m.chunk(2, dim=1)
        z = mean
        if self.sample:
            std = torch.exp(0.5 * logvar.clamp(LOGVAR_MIN, LOGVAR_MAX))
            z = mean + std * torch.randn(mean.shape, generator=self.generator)
        return ((z - self.shift) * self.scale).flatten(2).transpose(1, 2).contiguous()

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        mom, lab = self.moments([int(idx)])
        return self.tokens_from_moments(mom)[0], int(lab[0])

    def __getitems__(self, idxs: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        mom, lab = self.moments(list(idxs))
        return self.tokens_from_moments(mom), lab
