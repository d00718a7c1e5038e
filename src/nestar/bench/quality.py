"""`nestar bench quality`: train every model on one budget, evaluate each with one harness.

Each entry is a preset plus overrides. The bench trains it with the shared Trainer (resuming a run
that exists), samples `num_eval` images with balanced labels and one seed, and scores them with the
evaluation suite (docs/evaluation.md: FID, KID, precision/recall, class agreement, within-class diversity)
against the cached statistics of the real test split. A "real" row (images of the train split,
same N) gives the floor that finite N allows. Finished entries are cached as JSON under
`out/entries/`, so an interrupted bench continues where it stopped.

Suites: `models` (NestAR and the four baselines, matched in size) and `ablations` (one NestAR
setting changed at a time; the unchanged NestAR is the shared reference arm).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from nestar.bench.claims import mean_std
from nestar.models import MODEL_SPECS


@dataclass(frozen=True)
class Entry:
    """One trained-and-evaluated model. `group`: 'models' or the ablation it belongs to."""

    name: str
    preset: str
    overrides: tuple[str, ...] = ()
    group: str = "models"

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in self.name)


# Presets of matched size (registry.py: within 2% of nestar-fmnist's 6.8M parameters), one per family.
MODEL_ENTRIES = [Entry(spec.name, spec.presets["fmnist"]) for spec in MODEL_SPECS.values()]
# Each ablation changes one setting of nestar-fmnist; sizes are adjusted only where the change would
# otherwise alter the parameter count (k=2 has 6 modules instead of 3; the joint head's transformer
# blocks are wider than MLP blocks). Ordered by priority: a bench cut short has the first ones.
ABLATION_ENTRIES = [
    # the issue-13 levers against seams and the raster-AR gap (docs/design.md, "Seams")
    Entry(
        "nestar-nonbr",
        "nestar-fmnist",
        ("model.neighbour_context=false",),
        "queries: known neighbours vs position only",
    ),
    Entry(
        # measured at full size at offset 0 only: compare it with nestar-offset0
        "nestar-moduleloss",
        "nestar-fmnist",
        ("model.loss_weighting=module", "model.order_offset=0"),
        "loss: per-token vs per-module mean (at offset 0)",
    ),
    Entry(
        # the default before offset 2 won (docs/results.md): the reference of the offset-0 rows below
        "nestar-offset0",
        "nestar-fmnist",
        ("model.order_offset=0",),
        "lattice offset: 2 (quadrant centres) vs 0 (top-left corners)",
    ),
    Entry(
        "nestar-rasterinit",
        "nestar-fmnist",
        ("model.embed_init=raster",),
        "embedding init: default vs raster's",
    ),
    Entry(
        "nestar-depths246",
        "nestar-fmnist",
        ("model.module_depths=(2,4,6)",),
        "capacity: depths 4/4/4 vs 2/4/6",
    ),
    Entry(
        "nestar-boundarynoise",
        "nestar-fmnist",
        (
            "model.prefix_noise_mode=boundary",
            "model.prefix_noise=0.2",
            "model.sample_prefix_noise=0.05",
        ),
        "coordination: none vs boundary noise (U(0, 0.2), 0.05 at sampling, level told)",
    ),
    Entry(
        "nestar-rollout",
        "nestar-fmnist",
        ("model.rollout_prob=0.5",),
        "coordination: teacher forcing vs rollout prefixes for half the samples (8 head steps)",
    ),
    Entry("nestar-zorder", "nestar-fmnist", ("model.order=zorder",), "order: lattice vs zorder"),
    Entry(
        "nestar-prefixnoise",
        "nestar-fmnist",
        ("model.prefix_noise=0.3",),
        "prefix noise: off vs 0.3",
    ),
    Entry(
        "nestar-jointhead",
        "nestar-fmnist",
        ("model.head.kind=joint", "model.head.width=128"),
        "head: per-token MLP (256 x 3) vs joint patch transformer (128 x 3)",
    ),
    Entry("nestar-k2", "nestar-fmnist", ("model.k=2", "model.depth=2"), "k: 4 vs 2"),
    Entry(
        "nestar-first-small",
        "nestar-fmnist",
        ("model.module_depths=(1,4,4)",),
        "first module: depth 4 vs 1 vs 8",
    ),
    Entry(
        # the same at offset 0, where three of module 1's four cells are mostly background, so depth
        # 1 may have nothing to lose (against nestar-offset0)
        "nestar-offset0-first-small",
        "nestar-fmnist",
        ("model.order_offset=0", "model.module_depths=(1,4,4)"),
        "first module at lattice offset 0: depth 4 vs 1",
    ),
    Entry(
        "nestar-first-large",
        "nestar-fmnist",
        ("model.module_depths=(8,4,4)",),
        "first module: depth 4 vs 1 vs 8",
    ),
]
QUICK_ENTRIES = [Entry(spec.name, spec.presets["tiny"]) for spec in MODEL_SPECS.values()]
QUICK_ABLATIONS = [
    Entry("nestar-zorder", "nestar-tiny", ("model.order=zorder",), "order: lattice vs zorder")
]


@dataclass
class QualityOptions:
    suites: tuple[str, ...] = ("models",)
    only: Optional[tuple[str, ...]] = None  # entry names to run (default: all of the suites)
    runs_dir: str = "runs/quality"
    out: str = "benchmarks/results/quality"
    num_eval: int = 1000
    seed: int = 0
    batch_size: int = 64
    overrides: list[str] = field(
        default_factory=list
    )  # applied to every entry (e.g. train.steps=100)
    quick: bool = False  # tiny presets: a smoke test of the whole harness
    train_seeds: tuple[int, ...] = (
        0,
    )  # one trained model per seed and entry; tables give mean +- std
    kid_subset_size: int = 1000
    progress: bool = True
    # guidance scales at which every (entry, seed) is also sampled and scored (recall at matched
    # precision, bench/claims.py); empty = only the entry's own guidance
    guidance_sweep: tuple[float, ...] = ()
    # report only what is cached (no training or sampling): rebuilds quality.json / .md after the
    # entries were run one command at a time
    cached_only: bool = False


def entries_for(opts: QualityOptions) -> list[Entry]:
    """The entries of the chosen suites; every ablation also needs the unchanged NestAR."""
    models = QUICK_ENTRIES if opts.quick else MODEL_ENTRIES
    ablations = QUICK_ABLATIONS if opts.quick else ABLATION_ENTRIES
    out: list[Entry] = []
    if "models" in opts.suites:
        out += models
    if "ablations" in opts.suites:
        out += [models[0]] + ablations
    unknown = set(opts.suites) - {"models", "ablations"}
    if unknown:
        raise ValueError(f"unknown suite(s) {sorted(unknown)}; choose from models, ablations")
    out = list(dict.fromkeys(out))
    if opts.only:
        known = {e.name for e in models + ablations}
        missing = set(opts.only) - known
        if missing:
            raise ValueError(f"--only: unknown entries {sorted(missing)}; known: {sorted(known)}")
        out = [e for e in out if e.name in opts.only]
    return out


def entry_config(entry: Entry, opts: QualityOptions, train_seed: int = 0):
    from nestar.config import apply_overrides
    from nestar.registry import get_preset

    seed = [f"train.seed={train_seed}"] if train_seed else []
    return apply_overrides(
        get_preset(entry.preset), list(entry.overrides) + list(opts.overrides) + seed
    )


def _seed_slug(entry: Entry, train_seed: int) -> str:
    """Seed 0 keeps the entry's own name, so single-seed caches and run directories stay valid."""
    return entry.slug if train_seed == 0 else f"{entry.slug}-seed{train_seed}"


def _machine() -> dict:
    from nestar.bench.machine import cpu_model

    return {"cpu": cpu_model(), "threads": torch.get_num_threads()}


def _train_seconds(run_dir: Path) -> Optional[float]:
    """Wall time of the whole training (all invocations) from the log's last elapsed_s."""
    log = run_dir / "log.csv"
    if not log.is_file():
        return None
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
    if len(lines) < 2:
        return None
    header = lines[0].split(",")
    if "elapsed_s" not in header:
        return None
    try:
        return float(lines[-1].split(",")[header.index("elapsed_s")])
    except (ValueError, IndexError):
        return None


def _seam_patch(cfg) -> Optional[int]:
    """The token border spacing in pixels for the seam statistic: pixel-patch tokenizers only."""
    return cfg.tokenizer.patch_size if cfg.tokenizer.name == "patch" else None


class _Evaluator:
    """The dataset classifier as feature extractor, plus the cached test-split statistics."""

    def __init__(self, data_cfg, progress: bool):
        from nestar.evaluation.extractors import build_extractor
        from nestar.evaluation.reference import reference_stats

        self.data_cfg = data_cfg
        self.extractor = build_extractor("classifier", data_cfg, progress=progress)
        self.ref = reference_stats(data_cfg, self.extractor, split="test", progress=progress)

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        kid_subset_size: int,
        seam_patch_size: Optional[int] = None,
    ) -> tuple[dict, float]:
        from nestar.evaluation.suite import compute_metrics

        t0 = time.perf_counter()
        feats, logits = self.extractor.extract(images)
        metrics = compute_metrics(
            feats,
            logits,
            labels,
            self.ref,
            class_logits=logits,
            kid_subset_size=kid_subset_size,
            images=images,
            seam_patch_size=seam_patch_size,
        )
        return metrics, time.perf_counter() - t0


def _real_images(data_cfg, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` random train images in [-1, 1] and their labels (the same ones for a given seed)."""
    from nestar.data import build_dataset, to_float

    ds = build_dataset(data_cfg, "train")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[:n].tolist()
    images, labels = zip(*(ds[i] for i in idx))
    return to_float(torch.stack(list(images))), torch.as_tensor(labels, dtype=torch.long)


def real_floor(
    evaluator: _Evaluator, n: int, seed: int, kid_subset_size: int, seam_patch_size: Optional[int]
) -> dict:
    """The same metrics for `n` random real train images against the test statistics."""
    images, labels = _real_images(evaluator.data_cfg, n, seed)
    metrics, _ = evaluator(images, labels, kid_subset_size, seam_patch_size=seam_patch_size)
    return {"name": "real (train split)", "group": "models", "num_eval": n, "metrics": metrics}


def reconstruction_floor(
    evaluator: _Evaluator, tokenizer_cfg, n: int, seed: int, kid_subset_size: int
) -> dict:
    """The metrics of the tokenizer's reconstructions of the real row's train images: what a model
    that matched the token distribution exactly would score. Train images, like the real row, so
    the gap between the two rows is the tokenizer's alone (test images would be scored against
    their own statistics)."""
    from nestar.tokenizers import build_tokenizer

    data = evaluator.data_cfg
    tok = build_tokenizer(tokenizer_cfg, data.image_size, data.channels).eval()
    images, labels = _real_images(data, n, seed)
    with torch.no_grad():
        recon = torch.cat([tok.decode(tok.encode(x)) for x in images.split(256)]).clamp(-1, 1)
    metrics, _ = evaluator(recon, labels, kid_subset_size)
    name = f"reconstructions ({tokenizer_cfg.name})"
    return {"name": name, "group": "models", "num_eval": n, "metrics": metrics}


def _same_key(cached: Optional[dict], key: dict) -> bool:
    """Equal keys, or equal once the cached config is read through today's dataclasses: a field
    added since the entry was cached takes its default, so new options do not void old entries
    (and a new default, such as neighbour_context, does: configs without it read as off)."""
    if not isinstance(cached, dict) or cached == key:
        return cached == key
    from nestar.config import to_dict
    from nestar.registry import load_run_config

    try:
        config = to_dict(load_run_config(cached["config"]))
    except Exception:  # unreadable today: a different key
        return False
    config.pop("history", None)
    return {**cached, "config": config} == key


def run_entry(
    entry: Entry,
    opts: QualityOptions,
    evaluator: _Evaluator,
    log: Callable[[str], None],
    train_seed: int = 0,
) -> Optional[dict]:
    """Train (or resume), sample `num_eval` images, evaluate, save a grid; cached by config
    (None with `opts.cached_only` when the entry is not cached).

    Training seed s samples with seed `opts.seed + s`, so the spread over seeds holds both the
    training and the sampling noise.
    """
    from nestar.config import save_json, to_dict
    from nestar.evaluation.suite import balanced_labels
    from nestar.pipeline import Pipeline
    from nestar.training import Trainer
    from nestar.utils.images import save_grid

    cfg = entry_config(entry, opts, train_seed)
    cfg_dict = {
        k: v for k, v in to_dict(cfg).items() if k != "history"
    }  # a record, not a setting: keeps old keys valid
    out = Path(opts.out)
    slug = _seed_slug(entry, train_seed)
    sample_seed = opts.seed + train_seed
    cache = out / "entries" / f"{slug}.json"
    # The extractor's identity (weights hash included) is part of the key: figures scored by another
    # network (e.g. a classifier retrained on another machine) are recomputed, never mixed in one table.
    key = {
        "config": cfg_dict,
        "num_eval": opts.num_eval,
        "seed": sample_seed,
        "batch_size": opts.batch_size,
        "kid_subset_size": opts.kid_subset_size,
        "extractor": evaluator.extractor.identity,
    }
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if _same_key(cached.get("key"), key):
            log(f"-- {entry.name}: cached ({cache})")
            return cached
    if opts.cached_only:
        log(f"-- {entry.name} (train seed {train_seed}): not cached, left out (--cached-only)")
        return None
    run_dir = Path(opts.runs_dir) / slug
    log(
        f"-- {entry.name} (train seed {train_seed}): training {cfg.preset} {' '.join(entry.overrides)} -> {run_dir}"
    )
    result = Trainer(cfg, run_dir, progress=opts.progress).fit()
    pipe = Pipeline.from_pretrained(run_dir)
    n_cls = cfg.data.num_classes
    labels = balanced_labels(opts.num_eval, n_cls)
    log(f"-- {entry.name}: sampling {opts.num_eval} images")
    gen = torch.Generator().manual_seed(sample_seed)
    t0 = time.perf_counter()
    sample = pipe(labels, generator=gen, batch_size=opts.batch_size)
    sample_s = time.perf_counter() - t0
    metrics, eval_s = evaluator(
        sample.images, labels, opts.kid_subset_size, seam_patch_size=_seam_patch(cfg)
    )
    order = torch.argsort(labels, stable=True)  # one row per class for the grid
    per_class = min(10, opts.num_eval // n_cls) or 1
    grid_idx = torch.cat([order[labels[order] == c][:per_class] for c in range(n_cls)])
    grid = save_grid(
        sample.images[grid_idx], out / "grids" / f"{slug}.png", nrow=per_class, scale=2
    )
    s = cfg.sample
    row = {
        "name": entry.name,
        "group": entry.group,
        "preset": cfg.preset,
        "overrides": list(entry.overrides),
        "train_seed": train_seed,
        "model_type": cfg.model_type,
        "params_M": round(pipe.model.num_params() / 1e6, 3),
        "sequential_steps": sample.sequential_steps,
        "train_steps": result.steps,
        "train_batch": cfg.train.batch_size,
        "train_seconds": _train_seconds(run_dir),
        # where and how it ran: cached rows of one table may come from several machines, and
        # precision 'auto' resolves by CPU (bf16 where native, else fp32)
        "machine": _machine(),
        "train_precision": pipe.config.train.precision,
        "sample_precision": pipe.precision.name,
        "sample_ms_per_image": round(sample_s * 1000 / opts.num_eval, 2),
        "eval_seconds": round(eval_s, 1),
        "num_eval": opts.num_eval,
        "metrics": metrics,
        # relative to `out`: committed entries must still find their grid in a clone elsewhere
        "grid": str(Path(grid).relative_to(out)) if Path(grid).is_relative_to(out) else str(grid),
        "run_dir": str(run_dir),
        "sampling": {
            "cfg": s.cfg,
            "cfg_schedule": s.cfg_schedule,
            "temperature": s.temperature,
            "head_steps": s.num_steps,
            "seed": sample_seed,
            "batch_size": opts.batch_size,
        },
        "key": key,
    }
    save_json(row, cache)
    m = metrics
    log(
        f"   FID {m['fid']:.2f} precision {m['precision']:.3f} recall {m['recall']:.3f} "
        f"class agreement {m['class_agreement']:.1%} ({row['sample_ms_per_image']} ms/img)"
    )
    return row


def _trained_run_dir(row: dict, runs_dir: str | Path, slug: str) -> Path:
    """The run directory holding a cached row's trained model: the path the row recorded, else
    `<runs_dir>/<slug>` (the row came from another machine or a moved runs folder). A sweep must
    sample the very model the row scored, so a missing one is an error, never a retrain."""
    for p in (Path(row["run_dir"]), Path(runs_dir) / slug):
        if (p / "checkpoints" / "last.safetensors").is_file():
            return p
    raise FileNotFoundError(
        f"guidance sweep of {slug}: its trained model is in neither {row['run_dir']} (recorded in "
        f"the cached entry) nor {Path(runs_dir) / slug}; pass --runs-dir pointing at the folder "
        "that holds it, or leave the sweep out (the cached points still load)"
    )


def guidance_sweep(
    entry: Entry,
    opts: QualityOptions,
    evaluator: _Evaluator,
    log: Callable[[str], None],
    train_seed: int,
    row: dict,
) -> list[dict]:
    """The trained (entry, seed) sampled and scored at each guidance scale of `opts.guidance_sweep`
    (same sampling seed and labels as its main row; that row's own scale is reused, not resampled).
    Each point is cached apart (`entries/<slug>-cfg<g>.json`), so adding scales costs only those."""
    from nestar.config import save_json
    from nestar.evaluation.suite import balanced_labels
    from nestar.pipeline import Pipeline

    slug, pipe, points = _seed_slug(entry, train_seed), None, []
    for g in opts.guidance_sweep:
        if g == row["sampling"]["cfg"]:
            points.append({"guidance": g, "metrics": row["metrics"]})
            continue
        key = {**row["key"], "guidance": g}
        cache = Path(opts.out) / "entries" / f"{slug}-cfg{g:g}.json"
        if cache.is_file() and _same_key(json.loads(cache.read_text()).get("key"), key):
            points.append(json.loads(cache.read_text())["point"])
            continue
        if opts.cached_only:
            log(f"-- {entry.name} (train seed {train_seed}): guidance {g:g} not cached, left out")
            continue
        pipe = pipe or Pipeline.from_pretrained(_trained_run_dir(row, opts.runs_dir, slug))
        labels = balanced_labels(opts.num_eval, pipe.config.data.num_classes)
        log(f"-- {entry.name} (train seed {train_seed}): guidance {g:g}, {opts.num_eval} images")
        gen = torch.Generator().manual_seed(row["sampling"]["seed"])
        images = pipe(labels, guidance_scale=g, generator=gen, batch_size=opts.batch_size).images
        metrics, _ = evaluator(
            images, labels, opts.kid_subset_size, seam_patch_size=_seam_patch(pipe.config)
        )
        points.append(
            {
                "guidance": g,
                "metrics": metrics,
                "machine": _machine(),
                "sample_precision": pipe.precision.name,
            }
        )
        save_json({"point": points[-1], "key": key}, cache)
    return points


def run_quality(opts: QualityOptions, log: Callable[[str], None] = print) -> dict:
    """Run every entry of the chosen suites in one process; returns the rows and the environment."""
    entries = entries_for(opts)
    if not entries:
        raise ValueError("no entries to run")
    torch.manual_seed(opts.seed)
    t0 = time.perf_counter()
    first = entry_config(entries[0], opts)
    evaluator = _Evaluator(first.data, opts.progress)
    rows = [
        real_floor(evaluator, opts.num_eval, opts.seed, opts.kid_subset_size, _seam_patch(first))
    ]
    if first.tokenizer.name != "patch":  # latent track: the tokenizer's own floor beside the models
        rows.append(
            reconstruction_floor(
                evaluator, first.tokenizer, opts.num_eval, opts.seed, opts.kid_subset_size
            )
        )
    for e in entries:
        for seed in opts.train_seeds:
            row = run_entry(e, opts, evaluator, log, seed)
            if row is None:  # --cached-only and not cached
                continue
            if opts.guidance_sweep:
                row = {**row, "guidance_sweep": guidance_sweep(e, opts, evaluator, log, seed, row)}
            rows.append(row)
    return {
        "rows": rows,
        "summary": summarize(rows),
        "train_seeds": list(opts.train_seeds),
        "num_eval": opts.num_eval,
        "suites": list(opts.suites),
        "overrides": opts.overrides,
        "wall_seconds_this_invocation": round(time.perf_counter() - t0, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "extractor": evaluator.extractor.describe(),
        "reference_images": evaluator.ref.num_images,
    }


SUMMARY_METRICS = (
    "fid",
    "precision",
    "recall",
    "class_agreement",
    "within_class_diversity",
    "seam",
)


SWEEP_METRICS = ("fid", "precision", "recall")


def summarize(rows: list[dict]) -> dict[str, dict]:
    """Per entry name: the training seeds, and mean / sample std / per-seed values of each metric."""
    out: dict[str, dict] = {}
    for r in rows:
        e = out.setdefault(
            r["name"],
            {"group": r["group"], "seeds": [], "num_eval": r.get("num_eval"), "values": {}},
        )
        e["seeds"].append(r.get("train_seed", 0))
        if "guidance_sweep" in r:  # per seed: (guidance, precision, recall, FID) points
            e.setdefault("sweep_seeds", []).append(r.get("train_seed", 0))
            e.setdefault("sweeps", []).append(
                [
                    {"guidance": p["guidance"], **{k: p["metrics"][k] for k in SWEEP_METRICS}}
                    for p in r["guidance_sweep"]
                ]
            )
        for k in SUMMARY_METRICS:
            v = r["metrics"].get(k)
            e["values"].setdefault(k, []).append(
                None if v is None or (isinstance(v, float) and math.isnan(v)) else v
            )
    for e in out.values():
        e["mean"], e["std"] = {}, {}
        for k, vs in e["values"].items():
            e["mean"][k], e["std"][k] = mean_std([v for v in vs if v is not None])
    return out


def _pm(mean, std, spec: str) -> str:
    return _fmt(mean, spec) + (" ± " + _fmt(std, spec) if std is not None else "")


def summary_table(summary: dict[str, dict]) -> str:
    """Mean ± std over training seeds, one row per entry (the per-seed rows are in quality.json)."""
    head = ["model", "seeds", "N", "FID", "precision", "recall", "class agr.", "seam"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, e in summary.items():
        m, sd = e["mean"], e["std"]
        lines.append(
            "| "
            + " | ".join(
                [
                    name,
                    str(len(e["seeds"])),
                    str(e["num_eval"]),
                    _pm(m["fid"], sd["fid"], ".2f"),
                    _pm(m["precision"], sd["precision"], ".3f"),
                    _pm(m["recall"], sd["recall"], ".3f"),
                    _pm(m["class_agreement"], sd["class_agreement"], ".3f"),
                    _pm(m["seam"], sd["seam"], ".2f"),
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def _row_cells(r: dict) -> list[str]:
    m = r["metrics"]
    train = r.get("train_seconds")
    name = r["name"] + (f" (seed {r['train_seed']})" if r.get("train_seed") else "")
    return [
        name,
        _fmt(r.get("params_M"), ".2f"),
        _fmt(r.get("sequential_steps"), "d"),
        _fmt(m["fid"], ".2f"),
        _fmt(m["kid_mean"] * 1e3 if m["kid_mean"] is not None else None, ".2f"),
        _fmt(m["precision"], ".3f"),
        _fmt(m["recall"], ".3f"),
        _fmt(m["class_agreement"], ".1%"),
        _fmt(m["within_class_diversity"], ".2f"),
        _fmt(m.get("seam"), ".2f"),
        _fmt(r.get("sample_ms_per_image"), ".1f"),
        _fmt(train / 60 if train else None, ".1f"),
        r.get("train_precision") or "-",  # absent in rows cached before it was recorded
    ]


HEADER = [
    "model",
    "params (M)",
    "seq. steps",
    "FID",
    "KID x1e3",
    "precision",
    "recall",
    "class agr.",
    "diversity",
    "seam",
    "ms/img (b64)",
    "train min",
    "train dtype",
]


def markdown_report(result: dict) -> str:
    """One table for the models, one per ablation (each with the shared NestAR reference arm); with
    more than one training seed, first the mean ± std table and then one row per (entry, seed)."""
    rows = result["rows"]
    lines = []
    if len(result.get("train_seeds", [0])) > 1:
        lines += [
            "**Mean ± std over training seeds**",
            "",
            summary_table(result["summary"]).rstrip("\n"),
            "",
            "**Per seed**",
            "",
        ]
    lines += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        if r["group"] == "models":
            lines.append("| " + " | ".join(_row_cells(r)) + " |")
    ref = next((r for r in rows if r["name"] in ("nestar",) and r["group"] == "models"), None)
    for group in dict.fromkeys(r["group"] for r in rows if r["group"] != "models"):
        lines += [
            "",
            f"**Ablation, {group}**",
            "",
            "| " + " | ".join(["arm"] + HEADER[1:]) + " |",
            "|" + "---|" * len(HEADER),
        ]
        arms = ([ref] if ref else []) + [r for r in rows if r["group"] == group]
        for r in arms:
            cells = _row_cells(r)
            cells[0] = r["name"] + (
                " " + " ".join(r.get("overrides", [])) if r.get("overrides") else " (default)"
            )
            lines.append("| " + " | ".join(cells) + " |")
    sweeps = sweep_table(result.get("summary", {}))
    if sweeps:
        lines += [
            "",
            "**Guidance sweep (mean ± std over training seeds)**",
            "",
            sweeps.rstrip("\n"),
        ]
    return "\n".join(lines) + "\n"


def sweep_table(summary: dict[str, dict]) -> str:
    """FID / precision / recall per (entry, guidance scale), mean ± std over the seeds swept."""
    lines = []
    for name, e in summary.items():
        for i, g in enumerate(p["guidance"] for p in (e.get("sweeps") or [[]])[0]):
            pts = [sw[i] for sw in e["sweeps"] if len(sw) > i and sw[i]["guidance"] == g]
            cells = [name, f"{g:g}", str(len(pts))]
            for k, spec in (("fid", ".2f"), ("precision", ".3f"), ("recall", ".3f")):
                cells.append(_pm(*mean_std([p[k] for p in pts]), spec))
            lines.append("| " + " | ".join(cells) + " |")
    if not lines:
        return ""
    head = "| model | guidance | seeds | FID | precision | recall |\n|---|---|---|---|---|---|\n"
    return head + "\n".join(lines) + "\n"


def grid_file(row: dict, out: str | Path) -> Optional[Path]:
    """A row's sample grid under the results folder `out`, or None when it is not there.

    Older cached rows hold the absolute path of the machine that ran them; those are looked up
    by file name in `out/grids`, where the harness writes every grid."""
    if not row.get("grid"):
        return None
    g = Path(row["grid"])
    for p in (Path(out) / g, Path(out) / "grids" / g.name):
        if p.is_file():
            return p
    return None


def montage(rows: list[dict], path: str | Path) -> Optional[Path]:
    """The sample grid of every entry side by side, each titled with its name and FID."""
    from PIL import Image, ImageDraw

    out = Path(path).parent
    tiles = [
        (r, Image.open(g).convert("RGB")) for r in rows if (g := grid_file(r, out)) is not None
    ]
    if not tiles:
        return None
    pad, title = 8, 16
    w = sum(t.width for _, t in tiles) + pad * (len(tiles) + 1)
    h = max(t.height for _, t in tiles) + title + 2 * pad
    canvas = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(canvas)
    x = pad
    for r, t in tiles:
        d.text((x, pad // 2), f"{r['name']}  FID {r['metrics']['fid']:.1f}", fill="black")
        canvas.paste(t, (x, pad + title))
        x += t.width + pad
    path = Path(path)
    canvas.save(path)
    return path


def plot_tradeoffs(rows: list[dict], path: str | Path) -> Optional[Path]:
    """Two scatter panels (Pillow): FID vs sequential steps (log x), and precision vs recall.

    One point per entry of the models group, labelled with its name; the real-image row ("real")
    marks what finite N allows. Ablations share NestAR's step count, so they stay in their tables.
    """
    from PIL import Image, ImageDraw, ImageFont

    from nestar.bench.speed import _COLORS

    pts = [r for r in rows if r["group"] == "models" and r["metrics"].get("fid") is not None]
    if not pts:
        return None
    W, H, pw = 1000, 420, 500
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    steps = [r["sequential_steps"] for r in pts if r.get("sequential_steps")] or [1]
    fids = [r["metrics"]["fid"] for r in pts]
    panels = [
        (
            "FID (lower is better) vs sequential steps (log)",
            lambda r: (
                math.log2(r["sequential_steps"]) if r.get("sequential_steps") else None,
                r["metrics"]["fid"],
            ),
            (math.log2(min(steps)) - 0.5, math.log2(max(steps)) + 0.5),
            (0.0, max(fids) * 1.1 + 1e-9),
            None,
            lambda v: f"{v:.1f}",
        ),
        (
            "precision vs recall (higher is better)",
            lambda r: (r["metrics"]["recall"], r["metrics"]["precision"]),
            (0.0, 1.0),
            (0.0, 1.0),
            lambda v: f"{v:.2f}",
            lambda v: f"{v:.2f}",
        ),
    ]
    for pi, (title, xy, (xlo, xhi), (ylo, yhi), xl, yl) in enumerate(panels):
        x0, y0, x1, y1 = pi * pw + 60, 40, pi * pw + pw - 30, H - 50
        d.text((x0, 15), title, fill="black", font=font)
        px = lambda v: x0 + (v - xlo) / (xhi - xlo) * (x1 - x0)  # noqa: E731
        py = lambda v: y1 - (v - ylo) / (yhi - ylo) * (y1 - y0)  # noqa: E731
        for i in range(5):  # ticks; the log axis gets one at each power of two
            yv = ylo + (yhi - ylo) * i / 4
            d.text((x0 - 40, py(yv) - 6), yl(yv), fill="black", font=font)
            d.line([x0 + 1, py(yv), x1 - 1, py(yv)], fill=(235, 235, 235))
        xticks = (
            [(xlo + (xhi - xlo) * i / 4, xl(xlo + (xhi - xlo) * i / 4)) for i in range(5)]
            if xl
            else [(e, str(2**e)) for e in range(math.ceil(xlo), math.floor(xhi) + 1)]
        )
        for xv, label in xticks:
            d.text((px(xv) - 6, y1 + 6), label, fill="black", font=font)
        d.rectangle([x0, y0, x1, y1], outline="black")
        for i, r in enumerate(pts):
            x, y = xy(r)
            if x is None or y is None:
                continue
            col = (0, 0, 0) if r["name"].startswith("real") else _COLORS[i % len(_COLORS)]
            cx, cy = px(x), py(y)
            d.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=col)
            dy = -14 if i % 2 else 2  # alternate above / below so close points stay readable
            d.text((cx + 6, cy + dy), r["name"].split(" ")[0], fill=col, font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def entries_dropped(result: dict, out_dir: str | Path) -> list[str]:
    """Entry names the report already in `out_dir` summarises that `result` does not: the report
    holds one invocation's rows, so writing `result` there drops them from the tables (their cached
    entries stay in `out_dir/entries/`, and `--cached-only` with every name rebuilds the whole)."""
    path = Path(out_dir) / "quality.json"
    try:
        before = json.loads(path.read_text()).get("summary", {})
    except (OSError, ValueError, AttributeError):
        return []
    now = {r["name"] for r in result["rows"]}
    return sorted(n for n in before if n not in now)


def write_report(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """quality.md (tables), quality.json (everything), montage PNGs (models, ablations), tradeoffs.png."""
    from nestar.utils.io import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "quality.md", "json": out / "quality.json"}
    atomic_write_text(paths["md"], markdown_report(result))
    slim = {**result, "rows": [{k: v for k, v in r.items() if k != "key"} for r in result["rows"]]}
    atomic_write_text(paths["json"], json.dumps(slim, indent=2, default=str) + "\n")
    models = [r for r in result["rows"] if r["group"] == "models"]
    if (p := montage(models, out / "models.png")) is not None:
        paths["models_png"] = p
    if (p := plot_tradeoffs(result["rows"], out / "tradeoffs.png")) is not None:
        paths["tradeoffs_png"] = p
    ablations = [r for r in result["rows"] if r["group"] != "models" or r["name"] == "nestar"]
    if any(r["group"] != "models" for r in ablations) and (
        p := montage(ablations, out / "ablations.png")
    ):
        paths["ablations_png"] = p
    return paths


__all__ = [
    "ABLATION_ENTRIES",
    "Entry",
    "MODEL_ENTRIES",
    "QualityOptions",
    "entries_dropped",
    "entries_for",
    "markdown_report",
    "run_quality",
    "write_report",
]
