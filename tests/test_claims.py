"""Claims are decided from mean ± std over seeds, and only with enough samples and seeds."""
import json

import pytest

from nestar.bench.claims import CLAIMS, evaluate_claim, evaluate_files
from nestar.bench.quality import summarize


def _rows(name: str, fids: list[float], recalls: list[float], n: int = 5000) -> list[dict]:
    return [{"name": name, "group": "models", "train_seed": s, "num_eval": n,
             "metrics": {"fid": f, "recall": r, "precision": 0.9, "class_agreement": 0.9,
                         "within_class_diversity": 3.0, "seam": 1.2}}
            for s, (f, r) in enumerate(zip(fids, recalls))]


def _claim(cid: str):
    return next(c for c in CLAIMS if c.id == cid)


def test_le_and_two_standard_errors_rules():
    summary = summarize(_rows("nestar", [5.0, 5.2, 5.4], [0.50, 0.52, 0.54]) + _rows("raster", [6.0, 6.1, 6.2], [0.5] * 3)
                        + _rows("nextscale", [9.0, 9.0, 9.0], [0.49, 0.50, 0.51]))
    fid = evaluate_claim(_claim("fid_nestar_vs_raster"), summary)
    assert fid["holds"] is True and fid["difference"] == pytest.approx(-0.9)
    rec = evaluate_claim(_claim("recall_nestar_vs_nextscale"), summary)
    # difference 0.02, se = sqrt(0.02^2/3 + 0.01^2/3) = 0.0129: 0.02 < 2 se, so not shown
    assert rec["standard_error"] == pytest.approx(((0.02**2 + 0.01**2) / 3) ** 0.5)
    assert rec["holds"] is False


def test_too_few_seeds_or_samples_leave_the_claim_undecided(tmp_path):
    rows = _rows("nestar", [5.0, 5.2], [0.5, 0.5]) + _rows("raster", [6.0, 6.1, 6.2], [0.5] * 3, n=500)
    p = tmp_path / "quality.json"
    p.write_text(json.dumps({"summary": summarize(rows)}))
    report = evaluate_files([p])
    fid = next(c for c in report["claims"] if c["id"] == "fid_nestar_vs_raster")
    assert fid["holds"] is None and "nestar" in fid["why"] and "raster" in fid["why"]
    mar = next(c for c in report["claims"] if c["id"] == "fid_nestar_vs_mar")
    assert mar["holds"] is None and "not measured" in mar["why"]
    (tmp_path / "old.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="summary"):
        evaluate_files([tmp_path / "old.json"])
