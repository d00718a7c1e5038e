"""The machine a speed run measured: matmul peak, CPU model, threads, OpenMP wait policy, load.

A speed figure means little without the machine's own ceiling next to it: `matmul_peak_gflops`
times square matmuls on the bench's device, dtype and thread count, so a model's achieved
GFLOP/s (FLOPs per image x images per second) can be read as a fraction of what this machine
does at best. Measuring the peak before and after the models, and the load average, flags runs
that other processes slowed down (`busy_warnings`).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Optional

import torch

PEAK_TOLERANCE = (
    0.2  # peaks before/after differing by more than this fraction: the machine was not steady
)
LOAD_TOLERANCE = (
    0.5  # runnable threads above the core count tolerated (load averages of a quiet machine drift)
)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def matmul_peak_gflops(
    dev: torch.device,
    dtype: torch.dtype = torch.float32,
    size: int = 1024,
    seconds: float = 1.0,
    trials: int = 3,
) -> float:
    """Best GFLOP/s of `size`x`size` matmuls repeated for `seconds / trials` per trial, best of `trials`.

    Runs on torch's current thread count. Each trial does at least one matmul after a warm-up one.
    """
    a = torch.randn(size, size, device=dev).to(dtype)
    b = torch.randn(size, size, device=dev).to(dtype)
    flop = 2 * size**3
    torch.mm(a, b)  # warm-up: allocation, kernel choice
    best = 0.0
    for _ in range(trials):
        n = 0
        _sync(dev)
        t0 = time.perf_counter()
        while True:
            torch.mm(a, b)
            n += 1
            if (
                dev.type == "cuda" and n % 8
            ):  # sync only every few calls on a GPU: launches are asynchronous
                continue
            _sync(dev)
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds / trials:
                break
        best = max(best, flop * n / elapsed / 1e9)
    return best


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform's description."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def omp_wait_policy() -> str:
    """OMP_WAIT_POLICY as set for this process; unset means OpenMP's default (threads spin while waiting)."""
    return os.environ.get("OMP_WAIT_POLICY") or "default (spin)"


def load_average() -> Optional[list[float]]:
    """1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def snapshot(
    dev: torch.device, dtypes: list[torch.dtype], size: int, seconds: float
) -> dict[str, Any]:
    """Load average and the matmul peak of every dtype (GFLOP/s; none when `seconds` is 0)."""
    load = load_average()  # before the matmuls, which would raise it
    peaks = {}
    if seconds > 0:
        for dt in dict.fromkeys(dtypes):
            peaks[str(dt).removeprefix("torch.")] = matmul_peak_gflops(dev, dt, size, seconds)
    return {"loadavg": load, "peak_gflops": peaks}


def busy_warnings(
    load_before: Optional[float],
    load_after: Optional[float],
    bench_threads: int,
    cpu_count: int,
    peaks_before: dict[str, float],
    peaks_after: dict[str, float],
) -> list[str]:
    """Why the run's timings may be slowed by other processes (empty: no sign of it).

    Busy when the demand on the CPUs exceeds the cores: the 1-minute load average before the run
    plus the bench's own threads, or after the run (when the load includes the bench's threads),
    above the core count (by more than LOAD_TOLERANCE); or when the matmul peak of a dtype
    changed by more than PEAK_TOLERANCE between before and after.
    """
    out = []
    if load_before is not None and load_before + bench_threads > cpu_count + LOAD_TOLERANCE:
        out.append(
            f"busy machine: load average {load_before:.2f} before the run + {bench_threads} bench threads "
            f"> {cpu_count} cores"
        )
    if load_after is not None and load_after > cpu_count + LOAD_TOLERANCE:
        out.append(
            f"busy machine: load average {load_after:.2f} after the run (bench threads included) > {cpu_count} cores"
        )
    for dt, before in peaks_before.items():
        after = peaks_after.get(dt)
        if after and before and abs(after - before) / max(after, before) > PEAK_TOLERANCE:
            out.append(
                f"unsteady machine: {dt} matmul peak {before:.1f} GFLOP/s before, {after:.1f} after "
                f"(> {PEAK_TOLERANCE:.0%} apart)"
            )
    return out


def summarise(
    before: dict, after: dict, dev: torch.device, dtype: str, size: int
) -> dict[str, Any]:
    """The machine record of a run: model, threads, wait policy, loads, peaks (best of before/after), warnings."""
    threads = torch.get_num_threads()
    cpu_count = os.cpu_count() or 1
    load_b, load_a = before["loadavg"], after["loadavg"]
    peaks = {
        dt: max(v, after["peak_gflops"].get(dt, 0.0)) for dt, v in before["peak_gflops"].items()
    }
    warnings = busy_warnings(
        load_b[0] if load_b else None,
        load_a[0] if load_a else None,
        threads if dev.type == "cpu" else 1,
        cpu_count,
        before["peak_gflops"],
        after["peak_gflops"],
    )
    return {
        "cpu_model": cpu_model(),
        "threads": threads,
        "cpu_count": cpu_count,
        "omp_wait_policy": omp_wait_policy(),
        "loadavg_before": load_b,
        "loadavg_after": load_a,
        "peak_gflops_before": before["peak_gflops"],
        "peak_gflops_after": after["peak_gflops"],
        "peak_gflops": peaks,
        "peak_dtype": dtype,
        "peak_size": size,
        "busy": bool(warnings),
        "warnings": warnings,
    }


def add_efficiency(rows: list[dict], machine: dict) -> None:
    """achieved_gflops_s = GFLOPs per image x images per second at the throughput batch, and its
    fraction of the matmul peak in the bench's dtype (`peak_fraction`) and in float32 (`peak_fraction_fp32`)."""
    peaks = machine.get("peak_gflops", {})
    for r in rows:
        if "error" in r or r.get("gflops_per_img") is None or r.get("throughput_img_s") is None:
            continue
        r["achieved_gflops_s"] = r["gflops_per_img"] * r["throughput_img_s"]
        for key, dt in (
            ("peak_fraction", machine.get("peak_dtype")),
            ("peak_fraction_fp32", "float32"),
        ):
            r[key] = r["achieved_gflops_s"] / peaks[dt] if peaks.get(dt) else None


def markdown(machine: dict, batch: int) -> str:
    """The report's machine paragraph (and a bold warning per busy sign)."""

    def peaks(p: dict) -> str:
        return ", ".join(f"{dt} {v:.1f}" for dt, v in p.items()) or "not measured"

    def load(x: Optional[list[float]]) -> str:
        return "/".join(f"{v:.2f}" for v in x) if x else "n/a"

    text = (
        f"Machine: {machine['cpu_model']}; {machine['threads']} threads of {machine['cpu_count']} CPUs; "
        f"OMP_WAIT_POLICY {machine['omp_wait_policy']}; "
        f"load average (1/5/15 min) {load(machine['loadavg_before'])} before, "
        f"{load(machine['loadavg_after'])} after; "
        f"matmul peak (GFLOP/s, square {machine.get('peak_size', '?')}) "
        f"before: {peaks(machine['peak_gflops_before'])}; after: {peaks(machine['peak_gflops_after'])}. "
        f"Achieved GFLOP/s = GFLOPs/img x throughput at batch {batch}; % of peak: against the best "
        f"{machine['peak_dtype']} peak."
    )
    return "\n\n".join([text] + [f"**Warning: {w}.**" for w in machine["warnings"]])
