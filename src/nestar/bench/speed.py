"""Speed harness: every model measured in ONE process on one machine, same dtype, same threads.

For each preset (default: the `*-s` presets of every model family that is registered) it records
- `seq_steps`: sequential backbone evaluations per image (the SampleOutput's count);
- head NFE: per token (`head.nfe(steps)`), sequential per image (sum over the head calls of one
  image of `nfe`, i.e. the head evaluations on the critical path), and per-token total per image
  (tokens x nfe, both guidance branches counted);
- parameters; FLOPs per image (torch.utils.flop_counter over one `sample` call at batch
  `flops_batch`, divided by the batch, with the CPU attention kernel's formula added by
  nestar.bench.flops; only matmul/attention/conv ops have FLOP formulas, so element-wise work is
  not counted);
- latency at batch `batch_latency` (median over `repeats` timed calls after `warmup` calls) and
  throughput at batch `batch_throughput` (images / median seconds per call), timed with
  time.perf_counter, with torch.cuda.synchronize around every call on CUDA;
- peak memory during one batch-`batch_throughput` call: CUDA: torch.cuda.max_memory_allocated
  (weights included); CPU: the peak increase of the process RSS over its value before the call,
  sampled every millisecond from /proc/self/statm (weights, already resident, excluded;
  approximate: the allocator may reuse or keep freed pages);
- the machine (nestar.bench.machine): square-matmul peak GFLOP/s in float32 and the bench dtype,
  before and after the models, CPU model, threads, OMP_WAIT_POLICY, load averages, and warnings
  when other processes compete; per preset, achieved GFLOP/s (FLOPs per image x throughput) and
  its fraction of the peak;
- a growth curve over token grids (default 8x8, 16x16, 32x32 via `tokenizer.patch_size` overrides
  of 32x32 images: 4, 2, 1): sequential steps and time per image (batch 1) against n.
Models are randomly initialised unless a checkpoint is given (weights do not change the work done).
The tokenizer decode is excluded (the pixel-patch tokenizer is a reshape).
Ratios are against the first NestAR row of the same run; never compare numbers across runs.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import os
import platform
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from nestar.utils.device import parse_device
from nestar.utils.precision import resolve_precision

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class SpeedOptions:
    """Harness settings; None fields take their defaults from `quick` (see `resolved`)."""

    presets: Optional[list[str]] = None  # None: every family's 's' preset ('tiny' with quick)
    out: str = "benchmarks/results/speed"
    device: str = "auto"
    dtype: str = "auto"  # weights' dtype; 'auto': bfloat16 where the hardware runs bf16 natively, else float32
    threads: Optional[int] = None  # None: leave torch's setting
    repeats: Optional[int] = None  # timed calls per measurement (default 5, quick 2)
    warmup: Optional[int] = None  # untimed calls first (default 2, quick 1)
    throughput_warmup: Optional[int] = (
        None  # untimed calls at the throughput batch (default: warmup)
    )
    batch_latency: int = 1
    batch_throughput: Optional[int] = None  # default 64, quick 8
    flops_batch: int = 2
    head_steps: Optional[int] = None  # flow-head ODE steps; None: each preset's sample.num_steps
    cfg: Optional[float] = None  # None: each preset's sample.cfg; 1.0: guidance off
    cfg_schedule: str = "linear"
    grids: tuple[int, ...] = (8, 16, 32)  # growth curve token grids; () = no growth curve
    growth_repeats: Optional[int] = None  # default min(repeats, 3)
    quick: bool = False
    overrides: list[str] = field(default_factory=list)  # --section.key=value for every preset
    load: dict[str, str] = field(default_factory=dict)  # preset/label -> checkpoint or run dir
    seed: int = 0
    flops_only: bool = False  # parameters and FLOPs only: nothing timed, no machine peak
    peak_size: Optional[int] = None  # square matmul of the machine's peak (default 1024, quick 256)
    peak_seconds: Optional[float] = (
        None  # per dtype, before and after (default 1.0, quick 0.1; 0: skip)
    )

    def resolved(self) -> "SpeedOptions":
        d = asdict(self)
        q = self.quick
        d["repeats"] = self.repeats or (2 if q else 5)
        d["warmup"] = self.warmup if self.warmup is not None else (1 if q else 2)
        d["batch_throughput"] = self.batch_throughput or (8 if q else 64)
        d["throughput_warmup"] = (
            self.throughput_warmup if self.throughput_warmup is not None else d["warmup"]
        )
        d["growth_repeats"] = self.growth_repeats or min(d["repeats"], 3)
        d["grids"] = tuple(self.grids)
        d["peak_size"] = self.peak_size or (256 if q else 1024)
        d["peak_seconds"] = (
            self.peak_seconds if self.peak_seconds is not None else (0.1 if q else 1.0)
        )
        if self.dtype not in (*DTYPES, "auto"):
            raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {self.dtype!r}")
        return SpeedOptions(**d)


# ----- helpers -------------------------------------------------------------------------------------
def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def default_presets(quick: bool) -> list[str]:
    """Every registered family's matched small preset ('s'), or its 'tiny' one with `quick`."""
    from nestar.models import MODEL_SPECS

    return [spec.presets["tiny" if quick else "s"] for spec in MODEL_SPECS.values()]


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # non-Linux: ru_maxrss (a process-lifetime peak, coarse)
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r if platform.system() == "Darwin" else r * 1024


class _PeakRSS:
    """Peak RSS increase (bytes) while the block runs, sampled every `interval` seconds."""

    def __init__(self, interval: float = 0.001):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> "_PeakRSS":
        self.base = self.peak = _rss_bytes()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_bytes())
        self.delta = self.peak - self.base


def _timed(
    fn: Callable[[], Any], repeats: int, warmup: int, dev: torch.device
) -> tuple[list[float], Any]:
    """Seconds of each of `repeats` calls after `warmup` untimed ones, and the last call's output."""
    out = None
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        out = fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return times, out


class _HeadCounter:
    """Counts head evaluations by wrapping `sample` of every Head inside a model (restored on exit)."""

    def __init__(self, model: torch.nn.Module):
        from nestar.heads.base import Head

        self.heads = [m for m in model.modules() if isinstance(m, Head)]
        self.calls = self.seq_nfe = self.token_nfe = 0
        self.nfe_per_token: set[int] = set()

    def __enter__(self) -> "_HeadCounter":
        for h in self.heads:
            orig = h.sample

            def wrapped(z_NZ, *a, _orig=orig, _h=h, **kw):
                nfe = _h.nfe(kw.get("num_steps"))
                guided = kw.get("z_uncond_NZ") is not None and kw.get("guidance_scale", 1.0) != 1.0
                self.calls += 1
                self.seq_nfe += nfe
                self.token_nfe += z_NZ.shape[0] * nfe * (2 if guided else 1)
                self.nfe_per_token.add(nfe)
                return _orig(z_NZ, *a, **kw)

            h.__dict__["sample"] = wrapped
        return self

    def __exit__(self, *exc) -> None:
        for h in self.heads:
            h.__dict__.pop("sample", None)


def _labels(batch: int, num_classes: int, dev: torch.device) -> torch.Tensor:
    return torch.arange(batch, device=dev) % num_classes


# ----- building models -----------------------------------------------------------------------------
def _build(name: str, opts: SpeedOptions, dev: torch.device) -> tuple[Any, torch.nn.Module]:
    """The preset's config and randomly initialised model, or a loaded checkpoint (`opts.load`)."""
    from nestar.config import apply_overrides
    from nestar.registry import get_preset, resolve

    dtype = DTYPES[opts.dtype]
    if name in opts.load:
        try:
            from nestar.pipeline import Pipeline
        except ImportError as e:  # pragma: no cover - depends on the rest of the package
            raise RuntimeError(f"loading {opts.load[name]} needs nestar.pipeline: {e}") from e
        pipe = Pipeline.from_pretrained(opts.load[name], device=str(dev), use_ema=True)
        return pipe.config, pipe.model.to(device=dev, dtype=dtype).eval()
    cfg = resolve(apply_overrides(get_preset(name), list(opts.overrides)))
    return cfg, _random_model(cfg, opts, dev)


def _random_model(cfg: Any, opts: SpeedOptions, dev: torch.device) -> torch.nn.Module:
    from nestar.registry import build_model

    torch.manual_seed(opts.seed)
    return build_model(cfg).to(device=dev, dtype=DTYPES[opts.dtype]).eval()


def _sample_fn(model, cfg, opts: SpeedOptions, batch: int, dev: torch.device) -> Callable[[], Any]:
    labels = _labels(batch, model.num_classes, dev)
    w = cfg.sample.cfg if opts.cfg is None else opts.cfg
    steps = opts.head_steps if opts.head_steps is not None else cfg.sample.num_steps

    def fn():
        gen = torch.Generator(device=dev).manual_seed(opts.seed)
        with torch.no_grad():
            return model.sample(
                labels,
                guidance_scale=w,
                cfg_schedule=opts.cfg_schedule,
                temperature=1.0,
                num_steps=steps,
                generator=gen,
            )

    return fn


# ----- measuring -----------------------------------------------------------------------------------
def count_preset_flops(name: str, opts: SpeedOptions, dev: torch.device) -> dict:
    """Parameters and GFLOPs per image of one preset, nothing timed (`--flops-only`: FLOP counts
    do not depend on the machine's load, so they can be re-counted on a busy machine)."""
    from nestar.bench.flops import count_flops

    cfg, model = _build(name, opts, dev)
    fn = _sample_fn(model, cfg, opts, opts.flops_batch, dev)
    return {
        "preset": name,
        "model_type": cfg.model_type,
        "params_M": model.num_params() / 1e6,
        "gflops_per_img": count_flops(fn) / opts.flops_batch / 1e9,
    }


def measure_preset(name: str, opts: SpeedOptions, dev: torch.device) -> tuple[dict, Any]:
    """The main row of one preset (or loaded checkpoint) and its resolved config."""
    from nestar.bench.flops import count_flops

    cfg, model = _build(name, opts, dev)
    row: dict[str, Any] = {
        "preset": name,
        "model_type": cfg.model_type,
        "params_M": model.num_params() / 1e6,
        "grid": cfg.model.grid_size,
        "tokens": cfg.model.grid_size**2,
        "token_dim": cfg.model.token_dim,
        "cfg": cfg.sample.cfg if opts.cfg is None else opts.cfg,
        "head_steps": opts.head_steps if opts.head_steps is not None else cfg.sample.num_steps,
    }
    one = _sample_fn(model, cfg, opts, 1, dev)
    with _HeadCounter(model) as hc:
        out = one()
    row["seq_steps"] = int(out.sequential_steps)
    row["head_calls"] = hc.calls
    row["head_nfe_per_token"] = "/".join(str(n) for n in sorted(hc.nfe_per_token)) or "n/a"
    row["head_nfe_seq"] = hc.seq_nfe
    row["head_nfe_tokens"] = hc.token_nfe
    row["total_seq_evals"] = row["seq_steps"] + hc.seq_nfe

    fb = opts.flops_batch
    fl = _sample_fn(model, cfg, opts, fb, dev)
    row["gflops_per_img"] = (
        count_flops(fl) / fb / 1e9
    )  # attention included on CPU too (bench/flops.py)

    lat, _ = _timed(
        _sample_fn(model, cfg, opts, opts.batch_latency, dev), opts.repeats, opts.warmup, dev
    )
    row["latency_ms"] = statistics.median(lat) * 1e3  # per call at batch_latency
    bt = opts.batch_throughput
    thr_fn = _sample_fn(model, cfg, opts, bt, dev)
    if dev.type == "cuda":
        thr, _ = _timed(thr_fn, opts.repeats, opts.throughput_warmup, dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        thr_fn()
        _sync(dev)
        row["peak_mem_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    else:  # RSS is sampled during the timed calls: no extra call (minutes per call for MAR on a CPU)
        for _ in range(opts.throughput_warmup):
            thr_fn()
        with _PeakRSS() as pk:
            thr, _ = _timed(thr_fn, opts.repeats, 0, dev)
        row["peak_mem_mb"] = pk.delta / 2**20
    row["throughput_img_s"] = bt / statistics.median(thr)
    row["ms_per_img_batched"] = statistics.median(thr) * 1e3 / bt
    del model
    return row, cfg


def measure_growth(name: str, base_cfg: Any, opts: SpeedOptions, dev: torch.device) -> list[dict]:
    """Steps and batch-1 time per image of `base_cfg` rebuilt (random weights) at every grid of `opts.grids`."""
    from nestar.config import to_dict
    from nestar.registry import load_run_config

    image_size = base_cfg.data.image_size
    rows = []
    for g in opts.grids:
        r: dict[str, Any] = {"preset": name, "grid": g, "tokens": g * g}
        if image_size % g:
            r["error"] = f"image size {image_size} is not a multiple of grid {g}"
            rows.append(r)
            continue
        try:
            cfg = load_run_config(to_dict(base_cfg), [f"--tokenizer.patch_size={image_size // g}"])
            model = _random_model(cfg, opts, dev)
            fn = _sample_fn(model, cfg, opts, 1, dev)
            t, out = _timed(
                fn, opts.growth_repeats, 1, dev
            )  # minutes per call at 32x32 on a CPU: no extra call
            r.update(
                seq_steps=int(out.sequential_steps),
                ms_per_img=statistics.median(t) * 1e3,
                params_M=model.num_params() / 1e6,
            )
            del model
        except Exception as e:  # a model may not support a grid (e.g. k^M != n): record, go on
            r["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        rows.append(r)
    return rows


def environment(opts: SpeedOptions, dev: torch.device) -> dict:
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "device": str(dev),
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "dtype": opts.dtype,
        "repeats": opts.repeats,
        "warmup": opts.warmup,
        "throughput_warmup": opts.throughput_warmup,
        "batch_latency": opts.batch_latency,
        "batch_throughput": opts.batch_throughput,
        "flops_batch": opts.flops_batch,
        "cfg": "per preset" if opts.cfg is None else opts.cfg,
        "cfg_schedule": opts.cfg_schedule,
        "head_steps": "per preset" if opts.head_steps is None else opts.head_steps,
        "memory": "torch.cuda.max_memory_allocated (weights included)"
        if dev.type == "cuda"
        else "peak RSS increase during the call (weights excluded; sampled every 1 ms)",
        "decode": "excluded (pixel-patch tokenizer)",
        "quick": opts.quick,
        "overrides": list(opts.overrides),
        "loaded": dict(opts.load),
    }


def add_ratios(rows: list[dict]) -> None:
    """x_vs_nestar = value / the first NestAR row's value (for time: >1 means slower than NestAR)."""
    ref = next((r for r in rows if r.get("model_type") == "nestar"), None)
    keys = {
        "seq_steps": "steps_vs_nestar",
        "total_seq_evals": "seq_evals_vs_nestar",
        "gflops_per_img": "gflops_vs_nestar",
        "latency_ms": "latency_vs_nestar",
        "throughput_img_s": "throughput_vs_nestar",
        "params_M": "params_vs_nestar",
    }
    for r in rows:
        for k, rk in keys.items():
            if ref is None or "error" in r or not ref.get(k):
                r[rk] = None
            else:
                r[rk] = r[k] / ref[k]


def _peak_dtypes(opts: SpeedOptions) -> list[torch.dtype]:
    return [torch.float32, DTYPES[opts.dtype]]


def _machine_before(opts: SpeedOptions, dev: torch.device, log: Callable[[str], None]) -> dict:
    """Load average and matmul peaks before the models (see nestar.bench.machine); logs them."""
    from nestar.bench import machine

    snap = machine.snapshot(dev, _peak_dtypes(opts), opts.peak_size, opts.peak_seconds)
    peaks = ", ".join(f"{dt} {v:.1f}" for dt, v in snap["peak_gflops"].items()) or "not measured"
    log(
        f"[bench] {machine.cpu_model()}; OMP_WAIT_POLICY {machine.omp_wait_policy()}; "
        f"load average {snap['loadavg']}; matmul peak GFLOP/s: {peaks}"
    )
    return snap


def _machine_after(before: dict, rows: list[dict], opts: SpeedOptions, dev: torch.device) -> dict:
    """The machine record (peaks again, busy warnings); each row's achieved GFLOP/s and peak fraction."""
    from nestar.bench import machine

    after = machine.snapshot(dev, _peak_dtypes(opts), opts.peak_size, opts.peak_seconds)
    record = machine.summarise(before, after, dev, opts.dtype, opts.peak_size)
    machine.add_efficiency(rows, record)
    return record


def run_speed(opts: SpeedOptions, log: Callable[[str], None] = print) -> dict:
    """Measure every preset; returns {'env', 'rows', 'growth', 'notes'} (see `write_report`)."""
    from nestar.registry import PRESETS

    opts = opts.resolved()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    dev = parse_device(opts.device, "--device")
    if opts.dtype in (
        "auto",
        "bfloat16",
    ):  # bf16 only where native; forced bf16 where emulated warns
        prec = resolve_precision("auto" if opts.dtype == "auto" else "bf16", dev, "--dtype")
        opts = replace(opts, dtype="bfloat16" if prec.bf16 else "float32")
        log(f"[bench] {prec.describe()}")
    notes: list[str] = []
    if opts.presets:
        names = []
        for n in opts.presets:
            if n in PRESETS or n in opts.load:
                names.append(n)
            else:
                notes.append(f"{n}: not registered, skipped")
    else:
        names = default_presets(opts.quick)
    names += [n for n in opts.load if n not in names]
    env = environment(opts, dev)
    if opts.flops_only:
        rows = [count_preset_flops(n, opts, dev) for n in names]
        return {"env": env, "rows": rows, "growth": [], "notes": notes}
    before = _machine_before(opts, dev, log)
    rows, growth = [], []
    for n in names:
        log(f"[bench] {n}: measuring on {dev} ({opts.dtype}, {torch.get_num_threads()} threads)")
        cfg = None
        try:
            row, cfg = measure_preset(n, opts, dev)
        except Exception as e:
            row = {"preset": n, "error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
            notes.append(f"{n}: failed: {row['error']}")
            log(f"[bench] {n}: FAILED {row['error']}")
        rows.append(row)
        if opts.grids and cfg is not None:
            growth += measure_growth(n, cfg, opts, dev)
    add_ratios(rows)
    env["machine"] = _machine_after(before, rows, opts, dev)
    notes += env["machine"]["warnings"]
    for n in notes:
        log(f"[bench] note: {n}")
    return {"env": env, "rows": rows, "growth": growth, "notes": notes}


# ----- reporting -----------------------------------------------------------------------------------
MAIN_COLUMNS = [
    ("preset", "preset", "{}"),
    ("model_type", "model", "{}"),
    ("params_M", "params (M)", "{:.2f}"),
    ("grid", "grid", "{}"),
    ("seq_steps", "seq. steps", "{}"),
    ("head_nfe_per_token", "head NFE/token", "{}"),
    ("head_nfe_seq", "head NFE seq./img", "{}"),
    ("total_seq_evals", "total seq. evals", "{}"),
    ("gflops_per_img", "GFLOPs/img", "{:.3f}"),
    ("latency_ms", "latency b=1 (ms)", "{:.1f}"),
    ("throughput_img_s", "throughput (img/s)", "{:.2f}"),
    ("peak_mem_mb", "peak mem (MB)", "{:.1f}"),
    ("achieved_gflops_s", "achieved GFLOP/s", "{:.1f}"),
    ("peak_fraction", "of matmul peak", "{:.0%}"),
]
RATIO_COLUMNS = [
    ("preset", "preset", "{}"),
    ("steps_vs_nestar", "steps", "{:.2f}x"),
    ("seq_evals_vs_nestar", "total seq. evals", "{:.2f}x"),
    ("gflops_vs_nestar", "FLOPs", "{:.2f}x"),
    ("latency_vs_nestar", "latency", "{:.2f}x"),
    ("throughput_vs_nestar", "throughput", "{:.2f}x"),
    ("params_vs_nestar", "params", "{:.2f}x"),
]
CSV_COLUMNS = [
    "preset",
    "model_type",
    "params_M",
    "grid",
    "tokens",
    "token_dim",
    "cfg",
    "head_steps",
    "seq_steps",
    "head_calls",
    "head_nfe_per_token",
    "head_nfe_seq",
    "head_nfe_tokens",
    "total_seq_evals",
    "gflops_per_img",
    "latency_ms",
    "throughput_img_s",
    "ms_per_img_batched",
    "peak_mem_mb",
    "achieved_gflops_s",
    "peak_fraction",
    "peak_fraction_fp32",
    "steps_vs_nestar",
    "seq_evals_vs_nestar",
    "gflops_vs_nestar",
    "latency_vs_nestar",
    "throughput_vs_nestar",
    "params_vs_nestar",
    "error",
]
GROWTH_COLUMNS = ["preset", "grid", "tokens", "seq_steps", "ms_per_img", "params_M", "error"]


def _fmt(v: Any, f: str) -> str:
    if v is None or v == "":
        return "-"
    try:
        return f.format(v)
    except (ValueError, TypeError):
        return str(v)


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    head = "| " + " | ".join(c[1] for c in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, sep]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k), f) for k, _, f in columns) + " |")
    return "\n".join(lines)


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return buf.getvalue()


def markdown_report(result: dict) -> str:
    env, rows, growth = result["env"], result["rows"], result["growth"]
    ok = [r for r in rows if "error" not in r]
    parts = ["# Speed benchmark", ""]
    parts.append(
        f"{env['date']}; torch {env['torch']}; {env['device']} ({env['device_name']}); dtype {env['dtype']}; "
        f"{env['threads']} threads of {env['cpu_count']} CPUs; cfg {env['cfg']} ({env['cfg_schedule']}); "
        f"head steps {env['head_steps']}; {env['warmup']} warm-up + median of {env['repeats']} timed calls "
        f"({env.get('throughput_warmup', env['warmup'])} warm-up at the throughput batch); "
        f"latency at batch {env['batch_latency']}, throughput at batch {env['batch_throughput']}; "
        f"FLOPs at batch {env['flops_batch']}; memory: {env['memory']}; decode {env['decode']}."
        + (" QUICK (tiny configs)." if env["quick"] else "")
    )
    if env.get("machine"):
        from nestar.bench.machine import markdown as machine_markdown

        parts += ["", machine_markdown(env["machine"], env["batch_throughput"])]
    parts += ["", "## Models", "", markdown_table(ok, MAIN_COLUMNS), ""]
    if any(r.get("steps_vs_nestar") is not None for r in ok):
        parts += [
            "## Ratios vs NestAR (same run)",
            "",
            "Time and steps: >1 = more than NestAR; throughput: >1 = faster.",
            "",
            markdown_table(ok, RATIO_COLUMNS),
            "",
        ]
    if growth:
        grids = sorted({g["grid"] for g in growth})
        cols = [("preset", "preset", "{}")]
        table = []
        for name in dict.fromkeys(g["preset"] for g in growth):
            r = {"preset": name}
            for g in growth:
                if g["preset"] == name:
                    r[f"s{g['grid']}"] = g.get("seq_steps", "err")
                    r[f"t{g['grid']}"] = g.get("ms_per_img", "err")
            table.append(r)
        for gsz in grids:
            cols += [
                (f"s{gsz}", f"steps {gsz}x{gsz}", "{}"),
                (f"t{gsz}", f"ms/img {gsz}x{gsz}", "{:.1f}"),
            ]
        parts += [
            "## Growth with the token grid (batch 1)",
            "",
            markdown_table(table, cols),
            "",
            "![growth](speed.png)",
            "",
        ]
    if result["notes"]:
        parts += ["## Notes", ""] + [f"- {n}" for n in result["notes"]]
        errs = [g for g in growth if g.get("error")]
        parts += [f"- growth {g['preset']} {g['grid']}x{g['grid']}: {g['error']}" for g in errs]
        parts.append("")
    elif any(g.get("error") for g in growth):
        parts += (
            ["## Notes", ""]
            + [
                f"- growth {g['preset']} {g['grid']}x{g['grid']}: {g['error']}"
                for g in growth
                if g.get("error")
            ]
            + [""]
        )
    return "\n".join(parts)


_COLORS = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
]


def plot_growth(growth: list[dict], path: str | Path) -> Path:
    """Two log-log panels (sequential steps, ms per image) against the number of tokens (Pillow)."""
    from PIL import Image, ImageDraw, ImageFont

    W, H, panel_w = 1000, 440, 500
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    names = list(dict.fromkeys(g["preset"] for g in growth))
    good = [g for g in growth if not g.get("error")]
    ns = sorted({g["tokens"] for g in good}) or [1]
    for pi, (key, title) in enumerate(
        [("seq_steps", "sequential steps"), ("ms_per_img", "ms / image (batch 1)")]
    ):
        x0, y0, x1, y1 = pi * panel_w + 70, 40, pi * panel_w + panel_w - 20, H - 110
        vals = [g[key] for g in good if g.get(key)] or [1.0]
        lo, hi = math.log10(max(min(vals), 1e-6)), math.log10(max(max(vals), 1e-6))
        lo, hi = math.floor(lo), math.ceil(hi + 1e-9)
        if hi <= lo:
            hi = lo + 1
        nlo, nhi = math.log2(ns[0]), math.log2(ns[-1])
        if nhi <= nlo:
            nlo, nhi = nlo - 1, nhi + 1
        px = lambda n: x0 + (math.log2(n) - nlo) / (nhi - nlo) * (x1 - x0)  # noqa: E731
        py = lambda v: y1 - (math.log10(max(v, 1e-6)) - lo) / (hi - lo) * (y1 - y0)  # noqa: E731
        d.rectangle([x0, y0, x1, y1], outline="black")
        d.text((x0, 15), f"{title} vs tokens n (log-log)", fill="black", font=font)
        for e in range(lo, hi + 1):
            for m in (1, 2, 5) if hi - lo <= 3 else (1,):
                v = m * 10.0**e
                if v > 10.0**hi * 1.001:
                    continue
                y = py(v)
                d.line([x0, y, x1, y], fill=(225, 225, 225) if m == 1 else (242, 242, 242))
                label = f"{v:g}" if 0.01 <= v < 1e5 else f"{v:.0e}"
                d.text((x0 - 8 - 6 * len(label), y - 6), label, fill="black", font=font)
        for n in ns:
            x = px(n)
            d.line([x, y0, x, y1], fill=(225, 225, 225))
            d.text((x - 10, y1 + 6), str(n), fill="black", font=font)
        for i, name in enumerate(names):
            col = _COLORS[i % len(_COLORS)]
            pts = [
                (px(g["tokens"]), py(g[key])) for g in good if g["preset"] == name and g.get(key)
            ]
            if len(pts) > 1:
                d.line(pts, fill=col, width=2)
            for x, y in pts:
                d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=col)
    for i, name in enumerate(names):  # legend
        col = _COLORS[i % len(_COLORS)]
        x, y = 70 + (i % 4) * 230, H - 70 + (i // 4) * 18
        d.line([x, y + 6, x + 25, y + 6], fill=col, width=3)
        d.text((x + 32, y), name, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def write_report(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """speed.md, speed.csv, growth.csv, speed.png (when there is a growth curve) and speed.json."""
    from nestar.utils.io import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "speed.md", "csv": out / "speed.csv", "json": out / "speed.json"}
    atomic_write_text(paths["md"], markdown_report(result))
    atomic_write_text(paths["csv"], _csv(result["rows"], CSV_COLUMNS))
    atomic_write_text(paths["json"], json.dumps(result, indent=2, default=str) + "\n")
    if result["growth"]:
        paths["growth_csv"] = out / "growth.csv"
        atomic_write_text(paths["growth_csv"], _csv(result["growth"], GROWTH_COLUMNS))
        paths["png"] = plot_growth(result["growth"], out / "speed.png")
    return paths
