"""The stdlib scripts under benchmarks/ that turn committed results into tables."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _quality(path: Path, steps: int, fids: dict[str, list[float]], **extra) -> Path:
    rows = [{"name": arm, "train_seed": s, "train_steps": steps, "num_eval": 5000, **extra,
             "metrics": {"fid": f, "precision": 0.9, "recall": 0.6, "class_agreement": 0.95, "seam": 1.0}}
            for arm, fs in fids.items() for s, f in enumerate(fs)]
    path.write_text(json.dumps({"rows": rows}))
    return path


def test_learning_curve_reads_the_budget_from_the_rows_and_orders_the_points(tmp_path):
    lc = _load("learning_curve")
    late = _quality(tmp_path / "a.json", 1600, {"nestar": [1.4, 1.5, 1.6], "raster": [1.8]},
                    machine={"cpu": "AMD EPYC"}, train_precision="bf16")
    early = _quality(tmp_path / "b.json", 800, {"nestar": [2.0, 3.0]})
    points = [lc._point(str(p), ["nestar", "raster"]) for p in (late, early)]
    assert points[0]["nestar"]["steps"] == 1600 and points[0]["nestar"]["trained"] == ["AMD EPYC bf16"]
    md = lc.table(points, ["nestar", "raster"]).splitlines()
    assert md[2].startswith("| 800 | nestar | 0,1 | 5000 | 2.50 ± 0.71 |") and md[2].endswith("| not recorded |")
    assert md[3].startswith("| 1600 | nestar | 0,1,2 | 5000 | 1.50 ± 0.10 | 0.900 ± 0.000 |")
    assert md[4].startswith("| 1600 | raster | 0 | 5000 | 1.80 | 0.900 |")  # one seed: no std
    mixed = json.loads(late.read_text())
    mixed["rows"][0]["train_steps"] = 3200
    late.write_text(json.dumps(mixed))
    with pytest.raises(SystemExit, match="different budgets"):
        lc._point(str(late), ["nestar"])
