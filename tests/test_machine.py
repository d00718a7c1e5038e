"""Machine record of a speed run: matmul peak, busy-machine rule, report columns (no timing asserts)."""
from __future__ import annotations

import torch

from nestar.bench import machine
from nestar.bench.speed import CSV_COLUMNS, SpeedOptions, _csv, environment, markdown_report

CPU = torch.device("cpu")


def test_matmul_peak_is_a_positive_float_on_a_tiny_size():
    peak = machine.matmul_peak_gflops(CPU, torch.float32, size=32, seconds=0.01, trials=2)
    assert isinstance(peak, float) and peak > 0


def test_snapshot_without_peak_seconds_records_only_the_load():
    snap = machine.snapshot(CPU, [torch.float32, torch.float32], size=32, seconds=0)
    assert snap["peak_gflops"] == {}
    assert snap["loadavg"] is None or len(snap["loadavg"]) == 3
    snap = machine.snapshot(CPU, [torch.float32, torch.bfloat16], size=32, seconds=0.01)
    assert set(snap["peak_gflops"]) == {"float32", "bfloat16"}


def test_busy_rule_on_fake_inputs():
    quiet = {"float32": 60.0}
    assert machine.busy_warnings(0.1, 2.1, 2, 2, quiet, {"float32": 55.0}) == []
    assert machine.busy_warnings(None, None, 2, 2, quiet, {}) == []  # no load average, no second peak
    before = machine.busy_warnings(1.5, 2.0, 2, 2, quiet, quiet)  # another process on a core before the run
    assert len(before) == 1 and "before the run" in before[0]
    after = machine.busy_warnings(0.0, 3.4, 2, 2, quiet, quiet)
    assert len(after) == 1 and "after the run" in after[0]
    assert machine.busy_warnings(0.5, 2.0, 2, 16, quiet, quiet) == []  # 2 of 16 cores: room for others
    drift = machine.busy_warnings(0.0, 2.0, 2, 2, quiet, {"float32": 40.0})
    assert len(drift) == 1 and "float32" in drift[0]


def test_omp_wait_policy_reports_the_default(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert machine.omp_wait_policy() == "default (spin)"
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert machine.omp_wait_policy() == "PASSIVE"


def _result(busy: bool, monkeypatch) -> dict:
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 2)  # the busy rule depends on the cores: fix them
    monkeypatch.setattr(machine.torch, "get_num_threads", lambda: 2)
    before = {"loadavg": [0.1, 0.2, 0.3], "peak_gflops": {"float32": 60.0, "bfloat16": 200.0}}
    after = {"loadavg": [3.5 if busy else 2.0, 1.0, 0.5], "peak_gflops": {"float32": 62.0, "bfloat16": 190.0}}
    record = machine.summarise(before, after, CPU, "bfloat16", 1024)
    rows = [{"preset": "nestar-s", "model_type": "nestar", "gflops_per_img": 40.0, "throughput_img_s": 2.5},
            {"preset": "mar-s", "error": "boom"}]
    machine.add_efficiency(rows, record)
    env = environment(SpeedOptions(device="cpu", dtype="bfloat16").resolved(), CPU)
    env["machine"] = record
    return {"env": env, "rows": rows, "growth": [], "notes": list(record["warnings"])}


def test_efficiency_uses_the_best_peak_of_the_bench_dtype(monkeypatch):
    row = _result(False, monkeypatch)["rows"][0]
    assert row["achieved_gflops_s"] == 100.0
    assert row["peak_fraction"] == 100.0 / 200.0 and row["peak_fraction_fp32"] == 100.0 / 62.0


def test_report_has_the_machine_and_the_new_columns(monkeypatch):
    res = _result(False, monkeypatch)
    md = markdown_report(res)
    assert "achieved GFLOP/s" in md and "of matmul peak" in md and "| 100.0 | 50% |" in md
    assert "Machine:" in md and "OMP_WAIT_POLICY" in md and "float32 60.0" in md and "Warning" not in md
    header = _csv(res["rows"], CSV_COLUMNS).splitlines()[0].split(",")
    assert {"achieved_gflops_s", "peak_fraction", "peak_fraction_fp32"} <= set(header)
    busy = _result(True, monkeypatch)
    assert busy["env"]["machine"]["busy"] and "**Warning: busy machine" in markdown_report(busy)
