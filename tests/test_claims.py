"""Claims are decided from mean ± std over seeds, and only with enough samples and seeds."""
import json
import subprocess
import sys

import pytest

from nestar.bench.claims import CLAIMS, Claim, evaluate_claim, evaluate_files
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
    rec = evaluate_claim(Claim("r", "recall above", "nestar", "nextscale", "recall", "gt2se"), summary)
    # difference 0.02; nextscale's std 0.01 is floored at recall's sampling std 0.019:
    # se = sqrt(0.02^2/3 + 0.019^2/3) = 0.0159, 0.02 < 2 se, so not shown
    assert rec["standard_error"] == pytest.approx(((0.02**2 + 0.019**2) / 3) ** 0.5)
    assert rec["standard_error_seeds_only"] == pytest.approx(((0.02**2 + 0.01**2) / 3) ** 0.5)
    assert rec["holds"] is False


def test_a_seed_spread_below_the_sampling_noise_is_not_taken_at_face_value():
    """Two arms whose 3 seeds happen to agree to 0.004 in recall: the seeds alone would put a 0.017
    difference at 5 standard errors; floored at one draw's sampling std (0.019 at N = 5,000, and
    larger at smaller N) it is 1.1, and a 'ci' claim does not hold."""
    from nestar.bench.claims import SAMPLING_STD, sampling_std

    summary = summarize(_rows("small", [3.0] * 3, [0.491, 0.495, 0.499]) + _rows("full", [3.0] * 3, [0.508, 0.512, 0.516]))
    c = evaluate_claim(Claim("f", "first module", "small", "full", "recall", "ci"), summary)
    assert c["difference"] == pytest.approx(-0.017)
    assert c["standard_error_seeds_only"] == pytest.approx((2 * 0.004**2 / 3) ** 0.5)
    assert c["standard_error"] == pytest.approx((2 * SAMPLING_STD["recall"] ** 2 / 3) ** 0.5)
    assert c["ci95"][0] < 0 < c["ci95"][1] and c["holds"] is False
    assert sampling_std("recall", 500) == pytest.approx(SAMPLING_STD["recall"] * 10**0.5)
    assert sampling_std("class_agreement", 5000) == 0.0  # not measured: no floor


def test_too_few_seeds_or_samples_leave_the_claim_undecided(tmp_path, capsys):
    rows = _rows("nestar", [5.0, 5.2], [0.5, 0.5]) + _rows("raster", [6.0, 6.1, 6.2], [0.5] * 3, n=500)
    p = tmp_path / "quality.json"
    p.write_text(json.dumps({"summary": summarize(rows), "overrides": ["--tokenizer.name=kl"]}))
    report = evaluate_files([p])
    assert report["overrides"] == {str(p): ["--tokenizer.name=kl"]}  # the track each source ran on
    fid = next(c for c in report["claims"] if c["id"] == "fid_nestar_vs_raster")
    assert fid["holds"] is None and "nestar" in fid["why"] and "raster" in fid["why"]
    mar = next(c for c in report["claims"] if c["id"] == "fid_nestar_vs_mar")
    assert mar["holds"] is None and "not measured" in mar["why"]
    only = evaluate_files([p], only=["fid_nestar_vs_raster"])["claims"]
    assert [c["id"] for c in only] == ["fid_nestar_vs_raster"] and only[0] == fid
    with pytest.raises(ValueError, match="unknown claim id.*fid_nestar_vs_raster"):
        evaluate_files([p], only=["fid_nestar_vs_rastr"])
    from nestar.cli.main import main

    assert main(["bench", "claims", str(p), "--only", "fid_nestar_vs_rastr", "--out", str(tmp_path / "c.json")]) == 2
    assert "nestar bench claims: error: unknown claim id" in capsys.readouterr().err  # names the subcommand
    (tmp_path / "old.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="summary"):
        evaluate_files([tmp_path / "old.json"])


def _swept(name: str, curves: list[list[tuple[float, float, float]]]) -> list[dict]:
    """One row per seed whose guidance sweep holds (guidance, precision, recall) points."""
    rows = _rows(name, [5.0] * len(curves), [0.5] * len(curves))
    for r, pts in zip(rows, curves):
        r["guidance_sweep"] = [{"guidance": g, "metrics": {"fid": 5.0, "precision": p, "recall": rc}}
                               for g, p, rc in pts]
    return rows


def test_recall_is_compared_at_a_precision_both_arms_reach():
    """Recall read at the middle of the common precision range, per seed, by linear interpolation;
    without a sweep, or without overlap, the claim stays undecided and says why."""
    nestar = [[(1.0, 0.80, 0.70), (2.0, 0.90, 0.60), (3.0, 0.94, 0.50)]] * 2 + [[(1.0, 0.80, 0.72), (3.0, 0.94, 0.52)]]
    nextscale = [[(1.0, 0.86, 0.50), (3.0, 0.98, 0.30)]] * 3
    summary = summarize(_swept("nestar", nestar) + _swept("nextscale", nextscale))
    rec = evaluate_claim(_claim("recall_nestar_vs_nextscale"), summary)
    assert rec["matched_precision"] == pytest.approx(0.90)  # common range [0.86, 0.94]
    a, b = rec["arms"]
    assert a["values"] == pytest.approx([0.60, 0.60, 0.72 - 0.20 * (0.10 / 0.14)])
    assert b["values"] == pytest.approx([0.50 - 0.20 / 3] * 3)
    assert rec["holds"] is True and rec["difference"] > 2 * rec["standard_error"]
    assert rec["matched_by"] == "interpolated"
    unswept = summarize(_rows("nestar", [5.0] * 3, [0.6] * 3) + _swept("nextscale", nextscale))
    assert "--guidance-sweep" in evaluate_claim(_claim("recall_nestar_vs_nextscale"), unswept)["why"]
    apart = summarize(_swept("nestar", [[(1.0, 0.5, 0.7), (3.0, 0.6, 0.6)]] * 3) + _swept("nextscale", nextscale))
    far = evaluate_claim(_claim("recall_nestar_vs_nextscale"), apart)
    assert far["holds"] is None and "do not overlap" in far["why"]
    one_point = summarize(_swept("nestar", nestar) + _swept("nextscale", nextscale[:2] + [[(3.0, 0.98, 0.3)]]))
    partial = evaluate_claim(_claim("recall_nestar_vs_nextscale"), one_point)
    assert partial["holds"] is None and "incomplete (one point) for nextscale seed 2" in partial["why"]


def test_without_a_common_precision_the_claim_falls_back_to_pareto_dominance():
    """No precision is reached by every seed of both arms: a's lowest recall among its points at
    least as precise as b's most precise point, against b's highest recall, per seed."""
    nestar = [[(1.0, 0.90, 0.56), (2.0, 0.91, 0.55), (3.0, 0.90, 0.50)],
              [(1.0, 0.89, 0.58), (2.0, 0.92, 0.53), (3.0, 0.93, 0.51)],
              [(1.0, 0.91, 0.57), (3.0, 0.89, 0.49)]]
    nextscale = [[(1.0, 0.88, 0.38), (2.0, 0.905, 0.42)],  # overlaps nestar's range...
                 [(1.0, 0.86, 0.34), (3.0, 0.85, 0.35)],  # ...these two lie below it
                 [(1.0, 0.87, 0.36), (3.0, 0.86, 0.37)]]
    summary = summarize(_swept("nestar", nestar) + _swept("nextscale", nextscale))
    rec = evaluate_claim(_claim("recall_nestar_vs_nextscale"), summary)
    assert rec["matched_by"] == "dominance" and rec["matched_precision"] == pytest.approx(0.905)
    a, b = rec["arms"]
    assert a["values"] == pytest.approx([0.55, 0.51, 0.57]) and a["seeds"] == [0, 1, 2]
    assert b["values"] == pytest.approx([0.42, 0.35, 0.37])
    assert rec["holds"] is True
    # b's best recall close to a's worst: computed the same way, decided by the 2-SE rule
    close = [[(1.0, 0.88, 0.56), (2.0, 0.905, 0.40)]] + nextscale[1:]
    near = evaluate_claim(_claim("recall_nestar_vs_nextscale"),
                          summarize(_swept("nestar", nestar) + _swept("nextscale", close)))
    assert near["matched_by"] == "dominance" and near["holds"] is False
    # a seed of a that never gets as precise as b's top point: no dominance, undecided
    higher = [[(1.0, 0.88, 0.38), (2.0, 0.925, 0.42)]] + nextscale[1:]
    open_ = evaluate_claim(_claim("recall_nestar_vs_nextscale"),
                           summarize(_swept("nestar", nestar) + _swept("nextscale", higher)))
    assert open_["holds"] is None and "nestar seed(s) 0, 2 never reach" in open_["why"]


def test_sweeps_carry_their_training_seed():
    # seed 0 unswept, seeds 1-2 swept (one of them one point so far): the message names seed 2
    rows = _swept("nextscale", [[(1.0, 0.88, 0.4), (3.0, 0.86, 0.35)]] * 3)
    del rows[0]["guidance_sweep"]
    rows[2]["guidance_sweep"] = rows[2]["guidance_sweep"][:1]
    summary = summarize(_swept("nestar", [[(1.0, 0.9, 0.5), (3.0, 0.91, 0.45)]] * 3) + rows)
    assert summary["nextscale"]["sweep_seeds"] == [1, 2]
    why = evaluate_claim(_claim("recall_nestar_vs_nextscale"), summary)["why"]
    assert why.endswith("for nextscale seed 2")


def test_claims_load_without_torch():
    # `nestar bench claims` is pure statistics over JSON: it must not pay for importing torch.
    code = "import sys, nestar.bench.claims; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_claim_compares_entries_the_quality_bench_runs():
    # a misspelt arm would leave its claim "not measured" for ever instead of failing here
    from nestar.bench.quality import ABLATION_ENTRIES, MODEL_ENTRIES

    known = {e.name for e in MODEL_ENTRIES + ABLATION_ENTRIES}
    for c in CLAIMS:
        assert {c.a, c.b} <= known, c.id
    with pytest.raises(ValueError, match="unknown rule 'gt3se'"):
        Claim("x", "typo", "nestar", "raster", "fid", "gt3se")


def test_ad_hoc_comparisons_use_the_same_statistics_and_are_reported_apart(tmp_path, capsys):
    """`--compare A,B,METRIC[,matched]`: the two-sided 'ci' rule with the sampling floor; `matched`
    reads each seed's best recall at or above the highest precision every seed reaches (a frontier
    read, sound when precision is not monotone in guidance); kept out of 'claims'; a typo in an arm,
    metric or spec is an error."""
    from nestar.bench.claims import comparison
    from nestar.cli.main import main

    nestar = [[(1.0, 0.80, 0.70), (3.0, 0.94, 0.50)]] * 3
    raster = [[(1.0, 0.86, 0.66), (3.0, 0.98, 0.46)]] * 3  # p* = 0.94: 0.50 vs 0.46
    p = tmp_path / "quality.json"
    p.write_text(json.dumps({"summary": summarize(_swept("nestar", nestar) + _swept("raster", raster))}))
    report = evaluate_files([p], only=["fid_nestar_vs_raster"],
                            compare=(comparison("nestar,raster,recall,matched"), comparison("nestar, raster, fid")))
    assert [c["id"] for c in report["claims"]] == ["fid_nestar_vs_raster"]
    matched, fid = report["comparisons"]
    assert matched["id"] == "nestar_vs_raster_recall_matched" and matched["rule"] == "ci_matched"
    assert matched["matched_by"] == "frontier" and matched["matched_precision"] == pytest.approx(0.94)
    assert matched["difference"] == pytest.approx(0.04)
    # identical seeds: the spread is the sampling floor alone
    assert matched["standard_error"] == pytest.approx((2 * 0.019**2 / 3) ** 0.5)
    assert matched["holds"] is True  # 0.04 against 1.96 SE = 0.030: the interval excludes 0
    assert fid["holds"] is False and fid["difference"] == 0
    # guidance 3 less precise than 1.5 (over-guided): interpolating by precision would read a's recall
    # between its guidance-3 and guidance-1.5 points (0.648); the frontier reads guidance 1.5 (0.72)
    bent = [[(1.0, 0.90, 0.74), (1.5, 0.92, 0.72), (3.0, 0.91, 0.63)]] * 3
    flat = [[(1.0, 0.905, 0.70), (2.0, 0.912, 0.72)]] * 3
    p.write_text(json.dumps({"summary": summarize(_swept("nestar", bent) + _swept("raster", flat))}))
    even = evaluate_files([p], compare=(comparison("nestar,raster,recall,matched"),))["comparisons"][0]
    assert even["matched_precision"] == pytest.approx(0.912) and even["difference"] == pytest.approx(0.0)
    for bad, msg in (("nestar,raster", "expected A,B,METRIC"), ("nestar,raster,recall,match", "expected"),
                     ("nestar,raster,fid,matched", "recall only")):
        with pytest.raises(ValueError, match=msg):
            comparison(bad)
    with pytest.raises(ValueError, match="no arm 'rastr'.*nestar, raster"):
        evaluate_files([p], compare=(comparison("nestar,rastr,recall"),))
    with pytest.raises(ValueError, match="no metric 'recal'"):
        evaluate_files([p], compare=(comparison("nestar,raster,recal"),))
    out = tmp_path / "c.json"
    assert main(["bench", "claims", str(p), "--only", "fid_nestar_vs_raster", "--compare",
                 "nestar,raster,fid", "--out", str(out)]) == 0
    assert "ad hoc nestar_vs_raster_fid: within the noise (a - b = +0.000, 95% interval" in capsys.readouterr().out
    assert json.loads(out.read_text())["comparisons"][0]["rule"] == "ci"
