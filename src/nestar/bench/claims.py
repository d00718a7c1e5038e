"""The paper's claims as checks over quality-bench summaries (`nestar bench claims`).

Each claim compares two arms (entry names of `nestar bench quality`) on one metric, from the mean ±
std over training seeds in quality.json's `summary`. A claim is only decided with the evidence the
project's protocol asks for (N >= 5,000 samples and >= 3 seeds per arm); otherwise `holds` is None
and `why` says what is missing. The difference's standard error is sqrt(sa^2/na + sb^2/nb), each
arm's std s floored at the metric's measured sampling std (`SAMPLING_STD`): a spread over 3 seeds
below the noise of one draw is luck, not precision. `standard_error_seeds_only` keeps the unfloored
figure beside it.

Matched-precision claims read each seed's metric at one precision from its guidance sweep
(`matched_at_precision`); when no precision is reached by every swept seed of both arms they fall
back to Pareto dominance (`dominance`), which needs no interpolation and no monotone curve.

Ad-hoc comparisons (`comparison`, `bench claims --compare A,B,METRIC[,matched]`) use the same
statistics with the two-sided 'ci' rule, and are reported apart from the claims: they were not
fixed before the results were seen. Their matched read is `frontier_at_precision` (each seed's best
value at or above the highest precision every seed reaches), which stays sound on sweeps whose
precision is not monotone in guidance; the claims keep the interpolated read they were fixed with.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from nestar.errors import ConfigError

MIN_N, MIN_SEEDS = 5000, 3
RULES = ("le", "gt2se", "gt2se_matched", "ci", "ci_matched")
# Metrics where higher is better: the only ones an ad-hoc matched read may use (the frontier takes the max).
MATCHED_METRICS = ("recall",)
# Std of a metric between sample draws of ONE trained model at N = 5,000 (benchmarks/sampling_noise.py,
# docs/results/noise13/noise.json: the shipped nestar-fmnist, 8 draws: 0.052, 0.0060, 0.0187).
# Every arm's value per seed is one draw, so its spread over seeds cannot be below this; with 3
# seeds the observed std can be, by chance, and would then overstate a difference. Each arm's std
# is floored at it (scaled by sqrt(5000 / N)) before the standard error is formed.
SAMPLING_STD = {"fid": 0.05, "precision": 0.006, "recall": 0.019}


def sampling_std(metric: str, n: Optional[int]) -> float:
    """The floor for one arm's std: SAMPLING_STD at N = 5,000, scaled to N (0 for other metrics)."""
    base = SAMPLING_STD.get(metric, 0.0)
    return base * math.sqrt(MIN_N / n) if base and n else base


def mean_std(xs: list[float]) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (None for the std of fewer than two values)."""
    if not xs:
        return None, None
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, None
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


@dataclass(frozen=True)
class Claim:
    """`rule`: 'le' (a's mean no worse, i.e. <=, than b's), 'gt2se' (a above b by > 2 standard errors),
    'gt2se_matched' (the same, with the metric read at one precision shared by both arms from each
    seed's guidance sweep: `matched_at_precision`), 'ci' (report the difference a - b with its 95%
    interval, whichever way it goes) or 'ci_matched' ('ci' on `frontier_at_precision`)."""

    id: str
    text: str
    a: str
    b: str
    metric: str
    rule: str

    def __post_init__(self) -> None:
        # evaluate_claim reads any rule it does not know as 'ci': a typo must not pass silently
        if self.rule not in RULES:
            raise ValueError(f"claim {self.id!r}: unknown rule {self.rule!r}; choose from {RULES}")


CLAIMS = (
    Claim(
        "fid_nestar_vs_raster",
        "equal budget: NestAR's mean FID no worse than raster AR's",
        "nestar",
        "raster",
        "fid",
        "le",
    ),
    Claim(
        "seam_nestar_vs_raster",
        "NestAR's seam statistic no worse than raster AR's",
        "nestar",
        "raster",
        "seam",
        "le",
    ),
    Claim(
        # fixed (for the offset-2 arm, then an ablation) before any of its sweep points was scored
        "recall_nestar_vs_nextscale",
        "NestAR's recall above next-scale's by more than two standard errors at matched precision",
        "nestar",
        "nextscale",
        "recall",
        "gt2se_matched",
    ),
    Claim(
        # the same test for the default before offset 2 (module 1 at the top-left corners)
        "recall_offset0_vs_nextscale",
        "with lattice offset 0, NestAR's recall above next-scale's by more than two standard "
        "errors at matched precision",
        "nestar-offset0",
        "nextscale",
        "recall",
        "gt2se_matched",
    ),
    Claim(
        "fid_nestar_vs_mar",
        "NestAR's mean FID no worse than MAR's at equal budget",
        "nestar",
        "mar",
        "fid",
        "le",
    ),
    Claim(
        # fixed before seeds 1-2 of the small arm were scored; both arms fp32 on one CPU type
        "recall_first_module",
        "a small first module (depth 1 vs 4) changes recall (paper: ~17% less diversity)",
        "nestar-first-small",
        "nestar",
        "recall",
        "ci",
    ),
    Claim(
        "recall_first_module_offset0",
        "at lattice offset 0 (module 1 at the top-left corners, mostly background) a small first "
        "module (depth 1 vs 4) changes recall",
        "nestar-offset0-first-small",
        "nestar-offset0",
        "recall",
        "ci",
    ),
    Claim(
        "fid_lattice_offset",
        "the lattice offset 2 (module 1 at the quadrant centres, not the corners) changes FID",
        "nestar",
        "nestar-offset0",
        "fid",
        "ci",
    ),
)


def _arm(summary: dict, name: str, metric: str) -> Optional[dict]:
    e = summary.get(name)
    if e is None or e["mean"].get(metric) is None:
        return None
    vals = [v for v in e["values"][metric] if v is not None]
    return {
        "name": name,
        "N": e.get("num_eval"),
        "seeds": e["seeds"],
        "values": vals,
        "mean": e["mean"][metric],
        "std": e["std"][metric],
    }


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    """Piecewise-linear y(x) through the points sorted by x (x inside their range)."""
    pts = sorted(zip(xs, ys))
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    raise ValueError(f"{x} outside [{pts[0][0]}, {pts[-1][0]}]")


def _complete_sweeps(summary: dict, names: tuple[str, str]) -> tuple[dict, Optional[str]]:
    """({arm: its per-seed sweeps}, None), or ({}, why) when an arm has no sweep or a seed's sweep has
    one point (its own scale: the others not scored yet), which is no curve to read."""
    sweeps = {n: (summary.get(n) or {}).get("sweeps") for n in names}
    missing = [n for n, sw in sweeps.items() if not sw]
    if missing:
        return {}, f"no guidance sweep for {', '.join(missing)} (bench quality --guidance-sweep)"
    partial = [
        f"{n} seed {seed}"
        for n, sw in sweeps.items()
        for seed, s in zip(_sweep_seeds(summary[n]), sw)
        if len(s) < 2
    ]
    if partial:
        return {}, f"guidance sweep incomplete (one point) for {', '.join(partial)}"
    return sweeps, None


def matched_at_precision(summary: dict, names: tuple[str, str], metric: str) -> dict:
    """Per arm and seed, `metric` read at one precision p* from that seed's guidance sweep.

    p* is the middle of the precision range every swept seed of both arms covers, so no value is
    extrapolated. Returns {'precision': p*, name: arm dict} or {'why': ...} when it cannot be read."""
    sweeps, why = _complete_sweeps(summary, names)
    if why:
        return {"why": why}
    curves = {
        n: [([p["precision"] for p in s], [p[metric] for p in s]) for s in sw]
        for n, sw in sweeps.items()
    }
    lo = max(min(ps) for cs in curves.values() for ps, _ in cs)
    hi = min(max(ps) for cs in curves.values() for ps, _ in cs)
    if lo > hi:
        return dominance(summary, names, metric, f"{lo:.3f} > {hi:.3f}")
    p_star = (lo + hi) / 2
    out: dict = {"precision": p_star, "method": "interpolated"}
    for n in names:
        out[n] = _sweep_arm(summary, n, [_interp(p_star, ps, ys) for ps, ys in curves[n]])
    return out


def dominance(summary: dict, names: tuple[str, str], metric: str, gap: str = "") -> dict:
    """Fallback of `matched_at_precision` when no precision is reached by every swept seed.

    For a metric where higher is better (recall). P_b is the highest precision any sweep point of b
    reaches. Per seed, a's value is its LOWEST
    `metric` among its points with precision >= P_b, b's value its HIGHEST over all its points. If a
    clears b by the claim's rule, some guidance of every a seed is at least as precise as anything b
    reached and still beats b's best: a dominates, with no interpolation and no monotone curve
    assumed. Undecided when some seed of a never reaches P_b (b may then be the more precise arm)."""
    a, b = names
    sweeps = {n: summary[n]["sweeps"] for n in names}
    p_b = max(p["precision"] for s in sweeps[b] for p in s)
    above = [[p[metric] for p in s if p["precision"] >= p_b] for s in sweeps[a]]
    short = [str(seed) for seed, v in zip(_sweep_seeds(summary[a]), above) if not v]
    if short:
        return {
            "why": f"the swept precision ranges do not overlap ({gap}) and {a} seed(s) "
            f"{', '.join(short)} never reach {b}'s top precision {p_b:.3f}, so neither arm dominates"
        }
    return {
        "precision": p_b,
        "method": "dominance",
        a: _sweep_arm(summary, a, [min(v) for v in above]),
        b: _sweep_arm(summary, b, [max(p[metric] for p in s) for s in sweeps[b]]),
    }


def frontier_at_precision(summary: dict, names: tuple[str, str], metric: str) -> dict:
    """Per arm and seed, the best `metric` among its sweep points with precision >= p*, where p* is
    the highest precision every swept seed of both arms reaches (the read of ad-hoc `matched`).

    A step read of each seed's precision/recall frontier: no interpolation, so a curve whose
    precision is not monotone in guidance (over-guided points lose precision) is never read between
    an over- and an under-guided point, as `matched_at_precision` would."""
    sweeps, why = _complete_sweeps(summary, names)
    if why:
        return {"why": why}
    p_star = min(max(p["precision"] for p in s) for sw in sweeps.values() for s in sw)
    out: dict = {"precision": p_star, "method": "frontier"}
    for n in names:
        best = [max(p[metric] for p in s if p["precision"] >= p_star) for s in sweeps[n]]
        out[n] = _sweep_arm(summary, n, best)
    return out


def _sweep_seeds(e: dict) -> list:
    """The training seed of each sweep (quality.json before `sweep_seeds`: the seeds in order)."""
    return e.get("sweep_seeds") or e["seeds"]


def _sweep_arm(summary: dict, name: str, vals: list[float]) -> dict:
    mean, sd = mean_std(vals)
    e = summary[name]
    return {
        "name": name,
        "N": e.get("num_eval"),
        "seeds": _sweep_seeds(e)[: len(vals)],
        "values": vals,
        "mean": mean,
        "std": sd,
    }


def _standard_error(a: dict, b: dict, metric: Optional[str]) -> Optional[float]:
    """sqrt(sa^2/na + sb^2/nb), each std floored at the metric's sampling std (None: no floor)."""
    if a["std"] is None or b["std"] is None:
        return None
    floors = [sampling_std(metric, x["N"]) if metric else 0.0 for x in (a, b)]
    return math.sqrt(sum(max(x["std"], f) ** 2 / len(x["values"]) for x, f in zip((a, b), floors)))


def evaluate_claim(claim: Claim, summary: dict) -> dict:
    """The claim's arms, difference, standard error, and whether it holds (None: not enough evidence)."""
    a, b = _arm(summary, claim.a, claim.metric), _arm(summary, claim.b, claim.metric)
    matched = None
    if claim.rule in ("gt2se_matched", "ci_matched"):
        read = matched_at_precision if claim.rule == "gt2se_matched" else frontier_at_precision
        matched = read(summary, (claim.a, claim.b), claim.metric)
        a, b = matched.get(claim.a), matched.get(claim.b)
    out = {
        "id": claim.id,
        "claim": claim.text,
        "metric": claim.metric,
        "rule": claim.rule,
        "arms": [a, b],
        "holds": None,
    }
    if matched is not None:
        out["arms"] = [a, b]
        if "why" in matched:
            out["why"] = matched["why"]
            return out
        out["matched_precision"] = matched["precision"]
        out["matched_by"] = matched["method"]
    if a is None or b is None:
        out["why"] = f"arm {claim.a if a is None else claim.b!r} not measured"
        return out
    diff = a["mean"] - b["mean"]
    se = _standard_error(a, b, claim.metric)
    out.update(
        difference=diff,
        standard_error=se,
        ci95=[diff - 1.96 * se, diff + 1.96 * se] if se is not None else None,
        standard_error_seeds_only=_standard_error(a, b, None),
    )
    short = [x["name"] for x in (a, b) if len(x["values"]) < MIN_SEEDS or (x["N"] or 0) < MIN_N]
    if short:
        out["why"] = (
            f"needs N >= {MIN_N} and >= {MIN_SEEDS} seeds per arm; short: {', '.join(short)}"
        )
        return out
    if claim.rule == "le":
        out["holds"] = diff <= 0
    elif claim.rule in ("gt2se", "gt2se_matched"):
        out["holds"] = diff > 2 * se
    else:  # 'ci': reported either way; it "holds" when the interval excludes zero
        out["holds"] = not (out["ci95"][0] <= 0 <= out["ci95"][1])
    return out


def comparison(spec: str) -> Claim:
    """An ad-hoc comparison from 'A,B,METRIC' or 'A,B,METRIC,matched' (METRIC read on each seed's
    frontier, `frontier_at_precision`): a - b with its 95% interval, the 'ci' / 'ci_matched' rule."""
    parts = [p.strip() for p in spec.split(",")]
    matched = len(parts) == 4 and parts[3] == "matched"
    if len(parts) not in (3, 4) or not all(parts) or (len(parts) == 4 and not matched):
        raise ConfigError(f"--compare {spec!r}: expected A,B,METRIC or A,B,METRIC,matched")
    a, b, metric = parts[:3]
    if matched and metric not in MATCHED_METRICS:
        raise ConfigError(
            f"--compare {spec!r}: matched precision is read for {', '.join(MATCHED_METRICS)} only "
            f"(higher is better), not for {metric!r}"
        )
    at = " at matched precision" if matched else ""
    return Claim(
        f"{a}_vs_{b}_{metric}{'_matched' if matched else ''}",
        f"ad hoc: {metric} of {a} minus {b}{at}, 95% interval",
        a,
        b,
        metric,
        "ci_matched" if matched else "ci",
    )


def _check_names(claims: list[Claim], summary: dict) -> None:
    """An ad-hoc comparison naming an arm or metric no quality.json holds is a typo, not 'not measured'."""
    arms = sorted(k for k in summary)
    metrics = sorted({m for e in summary.values() for m in e.get("mean", {})})
    for c in claims:
        for name in (c.a, c.b):
            if name not in summary:
                raise ConfigError(
                    f"--compare: no arm {name!r} in the results; arms: {', '.join(arms)}"
                )
        if c.metric not in metrics:
            raise ConfigError(
                f"--compare: no metric {c.metric!r} in the results; metrics: {', '.join(metrics)}"
            )


def evaluate_files(
    paths: list[str | Path], only: Optional[list[str]] = None, compare: tuple[Claim, ...] = ()
) -> dict:
    """Merge the summaries of several quality.json files (later files win per arm) and check every
    claim, or the claims whose ids are in `only` (an unknown id is a ConfigError naming the known).
    `compare` (from `comparison`) are evaluated into 'comparisons', apart from the claims."""
    known = [c.id for c in CLAIMS]
    unknown = [i for i in only or () if i not in known]
    if unknown:
        raise ConfigError(f"unknown claim id(s) {', '.join(unknown)}; known: {', '.join(known)}")
    summary: dict = {}
    overrides: dict = {}
    for p in paths:
        data = json.loads(Path(p).read_text())
        overrides[str(p)] = data.get("overrides", [])
        if "summary" not in data:
            raise ConfigError(
                f"{p}: no 'summary' (written by `nestar bench quality` since --train-seeds); re-run "
                "the bench to refresh it (finished entries come from the cache)"
            )
        summary.update(data["summary"])
    _check_names(list(compare), summary)
    report = {
        "sources": [str(p) for p in paths],
        # the track (pixel tokens, or --tokenizer.name=kl latents) and budget each source ran with
        "overrides": overrides,
        "min_N": MIN_N,
        "min_seeds": MIN_SEEDS,
        "claims": [evaluate_claim(c, summary) for c in CLAIMS if not only or c.id in only],
    }
    if compare:
        report["comparisons"] = [evaluate_claim(c, summary) for c in compare]
    return report


__all__ = [
    "CLAIMS",
    "RULES",
    "SAMPLING_STD",
    "Claim",
    "comparison",
    "dominance",
    "evaluate_claim",
    "evaluate_files",
    "frontier_at_precision",
    "matched_at_precision",
    "sampling_std",
]
