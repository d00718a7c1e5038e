"""Quality against head NFE: one trained model sampled with several flow-head solvers (`nestar bench nfe`).

For each run directory and each setting (solver x time grid x NFE per token) it samples `num_eval`
images with balanced labels and one seed (the same seed for every setting, so the settings differ
only by the solver), scores them with the quality bench's suite (classifier features against the
cached test-split statistics: FID, precision, recall, class agreement, seam statistic) and records
the sampling time. Heun at s steps costs 2s - 1 evaluations; a requested NFE n is run as
s = (n + 1) // 2 steps and the table gives the NFE actually spent. Finished settings are cached as
JSON under `out/entries/` (keyed by run, setting, N and seed): an interrupted sweep continues, and
nfe.md / nfe.json cover every setting cached there with the same N and seed, so a sweep split over
several commands (or models) ends in one report.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from nestar.heads.flow_mlp import TIME_GRIDS

SOLVERS = ("euler", "heun")


@dataclass(frozen=True)
class Setting:
    solver: str
    grid: str
    steps: int

    @property
    def nfe(self) -> int:
        return 2 * self.steps - 1 if self.solver == "heun" else self.steps

    @property
    def slug(self) -> str:
        return f"{self.solver}-{self.grid}-{self.steps}"


def settings_for(nfes: list[int], solvers: list[str], grids: list[str]) -> list[Setting]:
    """Every solver x grid at (about) each NFE per token, most expensive first."""
    out = []
    for n in sorted(set(nfes), reverse=True):
        for solver in solvers:
            for grid in grids:
                steps = max(1, (n + 1) // 2) if solver == "heun" else n
                out.append(Setting(solver, grid, steps))
    return list(dict.fromkeys(out))


@dataclass
class NFEOptions:
    runs: dict[str, str]  # name -> run directory (or shipped pretrained name)
    nfes: list[int] = field(default_factory=lambda: [25, 12, 8, 4])
    solvers: list[str] = field(default_factory=lambda: ["euler", "heun"])
    grids: list[str] = field(default_factory=lambda: ["uniform", "data"])
    num_eval: int = 5000
    seed: int = 0
    batch_size: int = 64
    kid_subset_size: int = 1000
    out: str = "benchmarks/results/nfe"
    progress: bool = True


def _score(pipe, setting: Setting, opts: NFEOptions, evaluator, seam_patch) -> dict:
    from nestar.evaluation.suite import balanced_labels

    labels = balanced_labels(opts.num_eval, pipe.config.data.num_classes)
    gen = torch.Generator().manual_seed(opts.seed)
    t0 = time.perf_counter()
    out = pipe(
        labels,
        num_steps=setting.steps,
        head_sampler=setting.solver,
        time_grid=setting.grid,
        generator=gen,
        batch_size=opts.batch_size,
    )
    sample_s = time.perf_counter() - t0
    metrics, _ = evaluator(out.images, labels, opts.kid_subset_size, seam_patch_size=seam_patch)
    return {"metrics": metrics, "sample_ms_per_image": round(sample_s * 1e3 / opts.num_eval, 2)}


def run_nfe(opts: NFEOptions, log: Callable[[str], None] = print) -> dict:
    """Sample and score every (run, setting); returns {'rows': [...], 'options': {...}}."""
    from nestar.bench.quality import _Evaluator, _seam_patch
    from nestar.config import save_json
    from nestar.pipeline import Pipeline

    bad = [s for s in opts.solvers if s not in SOLVERS]
    if bad:
        raise ValueError(f"unknown solver(s) {bad}; choose from {list(SOLVERS)}")
    settings = settings_for(opts.nfes, opts.solvers, opts.grids)
    out_dir = Path(opts.out)
    rows, evaluator = [], None
    for name, path in opts.runs.items():
        pipe = Pipeline.from_pretrained(path)
        if evaluator is None:
            evaluator = _Evaluator(pipe.config.data, opts.progress)
        s = pipe.config.sample
        for st in settings:
            key = {
                "run": str(path),
                "setting": st.slug,
                "num_eval": opts.num_eval,
                "seed": opts.seed,
                "batch_size": opts.batch_size,
                "guidance": s.cfg,
                "cfg_schedule": s.cfg_schedule,
                "temperature": s.temperature,
                "extractor": evaluator.extractor.identity,
            }
            cache = out_dir / "entries" / f"{name}-{st.slug}.json"
            if cache.is_file() and json.loads(cache.read_text()).get("key") == key:
                rows.append(json.loads(cache.read_text()))
                log(f"-- {name} {st.slug}: cached")
                continue
            log(f"-- {name} {st.slug} (NFE {st.nfe}/token): sampling {opts.num_eval} images")
            row = {
                "name": name,
                "model_type": pipe.config.model_type,
                "solver": st.solver,
                "grid": st.grid,
                "steps": st.steps,
                "nfe": st.nfe,
                "num_eval": opts.num_eval,
                **_score(pipe, st, opts, evaluator, _seam_patch(pipe.config)),
                "key": key,
            }
            save_json(row, cache)
            m = row["metrics"]
            log(
                f"   FID {m['fid']:.2f} precision {m['precision']:.3f} recall {m['recall']:.3f} "
                f"seam {m.get('seam') or float('nan'):.2f} ({row['sample_ms_per_image']} ms/img)"
            )
            rows.append(row)
    return {
        "rows": _with_earlier_entries(rows, out_dir),
        "options": {
            "runs": opts.runs,
            "num_eval": opts.num_eval,
            "seed": opts.seed,
            "batch_size": opts.batch_size,
        },
    }


def _with_earlier_entries(rows: list[dict], out_dir: Path) -> list[dict]:
    """This invocation's rows plus every other setting cached under `out_dir` by earlier ones (same
    N and seed), so the report covers the whole sweep however it was split into commands; one table
    per model, most NFE first."""
    mine = {(r["name"], r["solver"], r["grid"], r["steps"]) for r in rows}
    key = rows[0]["key"] if rows else None
    for path in sorted((out_dir / "entries").glob("*.json")):
        r = json.loads(path.read_text())
        k = r.get("key", {})
        if (r.get("name"), r.get("solver"), r.get("grid"), r.get("steps")) in mine or key is None:
            continue
        if (k.get("num_eval"), k.get("seed")) == (key["num_eval"], key["seed"]):
            rows.append(r)
    names = list(dict.fromkeys(r["name"] for r in rows))
    order = {s: i for i, s in enumerate(SOLVERS)}
    grids = {g: i for i, g in enumerate(TIME_GRIDS)}
    return sorted(
        rows,
        key=lambda r: (
            names.index(r["name"]),
            -r["nfe"],
            order[r["solver"]],
            grids.get(r["grid"], 9),
        ),
    )


def markdown(result: dict) -> str:
    """One table per model: solver, grid, steps, NFE per token, metrics, sampling time."""
    lines = []
    for name in dict.fromkeys(r["name"] for r in result["rows"]):
        lines += [
            f"**{name}**",
            "",
            "| solver | time grid | steps | NFE/token | FID | precision | recall | "
            "class agr. | seam | ms/img |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in result["rows"] if r["name"] == name):
            m = r["metrics"]
            seam = f"{m['seam']:.2f}" if m.get("seam") is not None else "-"
            lines.append(
                f"| {r['solver']} | {r['grid']} | {r['steps']} | {r['nfe']} | {m['fid']:.2f} | "
                f"{m['precision']:.3f} | {m['recall']:.3f} | {m['class_agreement']:.1%} | {seam} | "
                f"{r['sample_ms_per_image']} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_report(result: dict, out: str | Path) -> dict[str, Path]:
    from nestar.config import save_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "nfe.json", "md": out / "nfe.md"}
    save_json(
        {**result, "rows": [{k: v for k, v in r.items() if k != "key"} for r in result["rows"]]},
        paths["json"],
    )
    paths["md"].write_text(
        f"# Quality against head NFE (N = {result['options']['num_eval']})\n\n" + markdown(result)
    )
    return paths


def parse_runs(items: list[str]) -> dict[str, str]:
    """['nestar=runs/a', 'runs/b'] -> {'nestar': 'runs/a', 'b': 'runs/b'}."""
    out: dict[str, str] = {}
    for it in items:
        name, _, path = it.rpartition("=")
        out[name or Path(path).name] = path
    return out
