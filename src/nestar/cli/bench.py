"""`nestar bench speed | quality | claims | nfe`: the benchmarks (protocol in benchmarks/README.md)."""

from __future__ import annotations

import argparse


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _grids(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("", "none", "off"):
        return ()
    try:
        return tuple(int(t) for t in _csv_list(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"--grids takes comma-separated ints (e.g. 8,16,32), got {text!r}"
        ) from e


def _distinct_csv(cast, example: str):
    """An argparse type: comma-separated distinct non-negative numbers of type `cast`."""

    def parse(text: str) -> tuple:
        try:
            out = tuple(cast(t) for t in _csv_list(text))
        except ValueError:
            out = ()
        if not out or len(set(out)) != len(out) or min(out) < 0:
            raise argparse.ArgumentTypeError(
                f"expected distinct non-negative {cast.__name__}s, comma-separated "
                f"(e.g. {example}), got {text!r}"
            )
        return out

    return parse


_csv_ints = _distinct_csv(int, "0,1,2")  # training seeds, NFE counts
_csv_floats = _distinct_csv(float, "1,1.5,2,3")  # guidance scales


def _load(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--load takes NAME=PATH, got {text!r}")
    name, path = text.split("=", 1)
    return name, path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks: speed of every model, quality of every model on one budget",
        description="Benchmarks (protocol in benchmarks/README.md and docs/results.md):\n\n"
        "  nestar bench speed    steps, FLOPs, latency, throughput, memory of every model\n"
        "  nestar bench quality  train every model on one budget and evaluate each\n"
        "  nestar bench claims   check the paper's claims against quality results\n"
        "  nestar bench nfe      quality against flow-head steps on trained models",
    )
    bsub = p.add_subparsers(dest="bench_command", required=True)
    _add_speed(bsub)
    _add_quality(bsub)
    _add_claims(bsub)
    _add_nfe(bsub)


def _add_speed(bsub) -> None:
    """`nestar bench speed`."""
    from nestar.cli.common import add_overrides_epilog

    s = bsub.add_parser(
        "speed",
        help="steps, head NFE, FLOPs, latency, throughput, memory and growth of every model in one run",
        description="Measure all models in one process on one machine (same dtype and threads) and write "
        "speed.md / speed.csv / growth.csv / speed.png / speed.json under --out. "
        "Overrides (--section.key=value) apply to every preset.",
    )
    add_overrides_epilog(s)
    s.add_argument(
        "--presets",
        type=_csv_list,
        default=None,
        help="comma-separated presets (default: the '-s' preset of every model family, "
        "nestar.models.MODEL_SPECS; the -tiny ones with --quick; unregistered ones are "
        "skipped with a note)",
    )
    s.add_argument(
        "--quick",
        action="store_true",
        help="tiny presets, 1 warm-up, 2 repeats, throughput batch 8",
    )
    s.add_argument("--out", default="benchmarks/results/speed", help="output directory")
    s.add_argument(
        "--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ..."
    )
    s.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights' dtype; auto: bfloat16 where the hardware runs bf16 natively, else float32",
    )
    s.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    s.add_argument(
        "--repeats", type=int, default=None, help="timed calls per measurement (default 5; quick 2)"
    )
    s.add_argument(
        "--warmup", type=int, default=None, help="untimed warm-up calls (default 2; quick 1)"
    )
    s.add_argument(
        "--throughput-warmup",
        type=int,
        default=None,
        help="untimed calls at the throughput batch (default: --warmup; 0 is fair on CPU after the latency warm-up)",
    )
    s.add_argument("--batch-latency", type=int, default=1, help="batch of the latency measurement")
    s.add_argument(
        "--batch-throughput",
        type=int,
        default=None,
        help="batch of the throughput measurement (default 64; quick 8)",
    )
    s.add_argument(
        "--flops-batch", type=int, default=2, help="batch of the FLOP count (FLOPs are per image)"
    )
    s.add_argument(
        "--head-steps",
        type=int,
        default=None,
        help="flow-head ODE steps (default: each preset's sample.num_steps)",
    )
    g = s.add_mutually_exclusive_group()
    g.add_argument(
        "--cfg",
        type=float,
        default=None,
        help="guidance scale for all models (default: each preset's sample.cfg)",
    )
    g.add_argument(
        "--no-cfg", action="store_true", help="guidance off (cfg = 1: no unconditional branch)"
    )
    s.add_argument(
        "--cfg-schedule",
        default="linear",
        choices=["constant", "linear"],
        help="guidance over the generation: constant, or rising linearly",
    )
    s.add_argument(
        "--grids",
        type=_grids,
        default=(8, 16, 32),
        help="growth-curve token grids (default 8,16,32; 'off' = none)",
    )
    s.add_argument(
        "--growth-repeats",
        type=int,
        default=None,
        help="timed calls per growth point (default min(repeats, 3))",
    )
    s.add_argument(
        "--load",
        type=_load,
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="measure a trained checkpoint / run directory under NAME (repeatable)",
    )
    s.add_argument("--seed", type=int, default=0, help="random seed of the sampled images")
    s.add_argument(
        "--flops-only",
        action="store_true",
        help="print parameters and FLOPs per image of each preset and exit (nothing timed or "
        "written; FLOP counts do not depend on the machine's load)",
    )
    s.add_argument(
        "--peak-seconds",
        type=float,
        default=None,
        help="seconds per dtype of the matmul-peak measurement, before and after the models "
        "(default 1; quick 0.1; 0 = skip)",
    )
    s.set_defaults(func=run)


def _add_quality(bsub) -> None:
    """`nestar bench quality`."""
    from nestar.cli.common import add_overrides_epilog

    q = bsub.add_parser(
        "quality",
        help="train every model on one budget and evaluate each with the suite (FID, KID, P/R, ...)",
        description="Train (or resume) each entry under --runs-dir, sample --num-eval images, evaluate against "
        "the cached test-split statistics and write quality.md / quality.json / models.png under "
        "--out. Finished entries are cached: rerunning continues an interrupted bench. "
        "Overrides (--section.key=value) apply to every entry.",
    )
    add_overrides_epilog(q)
    q.add_argument(
        "--suite",
        type=_csv_list,
        default=["models"],
        help="models, ablations or both (comma-separated; default: models)",
    )
    q.add_argument(
        "--only", type=_csv_list, default=None, help="comma-separated entry names (default: all)"
    )
    q.add_argument("--runs-dir", default="runs/quality", help="one run directory per entry")
    q.add_argument("--out", default="benchmarks/results/quality", help="output directory")
    q.add_argument("--num-eval", type=int, default=1000, help="samples per model (balanced labels)")
    q.add_argument("--kid-subset-size", type=int, default=1000, help="images per KID subset")
    q.add_argument("--seed", type=int, default=0, help="random seed of the evaluation samples")
    q.add_argument(
        "--train-seeds",
        type=_csv_ints,
        default=(0,),
        help="comma-separated training seeds, one model per seed and entry (e.g. 0,1,2); tables give "
        "mean ± std, and seed s samples with --seed + s",
    )
    q.add_argument(
        "--guidance-sweep",
        type=_csv_floats,
        default=(),
        help="comma-separated guidance scales at which each trained model is also sampled and "
        "scored (e.g. 1,1.5,2,3): recall at matched precision for `bench claims`",
    )
    q.add_argument(
        "--cached-only",
        action="store_true",
        help="train and sample nothing: report the cached entries (and sweep points) only, e.g. to "
        "rebuild quality.json after running the entries one command at a time",
    )
    q.add_argument("--quick", action="store_true", help="tiny presets: a smoke test of the harness")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=run_quality)


def _add_claims(bsub) -> None:
    """`nestar bench claims`."""
    c = bsub.add_parser(
        "claims",
        help="check the paper's claims against quality-bench results (mean ± std over seeds)",
        description="Read the summaries of one or more quality.json files (later files win per entry), check each "
        "claim (NestAR vs raster FID and seams, recall vs next-scale, first-module effect) and write "
        "a JSON report. A claim is decided only with N >= 5,000 and >= 3 training seeds per arm.",
    )
    c.add_argument(
        "results", nargs="+", help="quality.json files written by `nestar bench quality`"
    )
    c.add_argument("--out", default="docs/results/claims.json", help="where to write the report")
    c.add_argument(
        "--only",
        type=_claim_ids,
        default=None,
        metavar="ID[,ID...]",
        help="check only these claims (e.g. those whose arms a learning-curve folder holds)",
    )
    c.add_argument(
        "--compare",
        action="append",
        type=_comparison,
        default=[],
        metavar="A,B,METRIC[,matched]",
        help="also compare two arms on a metric with the same statistics (difference, standard "
        "error with the sampling floor, 95%% interval), e.g. nestar,raster,recall,matched for each "
        "seed's best recall at or above the highest precision every swept seed reaches; reported "
        "apart from the claims as ad hoc (repeatable)",
    )
    c.set_defaults(func=run_claims)


def _comparison(text: str):
    """argparse type of `bench claims --compare`."""
    from nestar.bench.claims import comparison

    try:
        return comparison(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _claim_ids(text: str) -> list[str]:
    """argparse type of `bench claims --only`: a non-empty comma-separated list of claim ids."""
    ids = [i.strip() for i in text.split(",") if i.strip()]
    if not ids:
        raise argparse.ArgumentTypeError(
            "expected one or more claim ids, e.g. fid_nestar_vs_raster"
        )
    return ids


def _add_nfe(bsub) -> None:
    """`nestar bench nfe`."""
    n = bsub.add_parser(
        "nfe",
        help="quality against flow-head NFE per token: solvers x time grids x steps on trained models",
        description="Sample each trained model with every flow-head setting (solver x time grid x NFE "
        "per token; Heun at s steps costs 2s-1), score N images with the quality suite (FID, "
        "precision, recall, class agreement, seam) and write nfe.md / nfe.json under --out. Every "
        "setting uses the same seed; finished settings are cached, and the report lists every "
        "setting cached under --out (earlier commands and other models included).\n\n"
        "  nestar bench nfe --run nestar=runs/q/nestar --nfe 25,12,8,4 --solvers euler,heun "
        "--grids uniform,data",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    n.add_argument(
        "--run",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="a trained run directory or shipped pretrained name (repeatable)",
    )
    n.add_argument(
        "--nfe",
        type=_csv_ints,
        default=(25, 12, 8, 4),
        help="head evaluations per token to try (default 25,12,8,4)",
    )
    n.add_argument("--solvers", type=_csv_list, default=["euler", "heun"], help="euler,heun")
    n.add_argument(
        "--grids",
        type=_csv_list,
        default=["uniform", "data"],
        help="time grids: uniform, data (denser near the data end), noise",
    )
    n.add_argument("--num-eval", type=int, default=5000, help="samples per setting (default 5000)")
    n.add_argument("--seed", type=int, default=0, help="seed of every setting's samples")
    n.add_argument("--out", default="benchmarks/results/nfe", help="output directory")
    n.add_argument("--quiet", action="store_true", help="no progress bars")
    n.set_defaults(func=run_nfe)


def run(args: argparse.Namespace) -> int:
    from nestar.bench.speed import (
        SpeedOptions,
        markdown_table,
        MAIN_COLUMNS,
        run_speed,
        write_report,
    )

    opts = SpeedOptions(
        presets=args.presets,
        out=args.out,
        device=args.device,
        dtype=args.dtype,
        threads=args.threads,
        repeats=args.repeats,
        warmup=args.warmup,
        throughput_warmup=args.throughput_warmup,
        batch_latency=args.batch_latency,
        batch_throughput=args.batch_throughput,
        flops_batch=args.flops_batch,
        head_steps=args.head_steps,
        cfg=1.0 if args.no_cfg else args.cfg,
        cfg_schedule=args.cfg_schedule,
        grids=args.grids,
        growth_repeats=args.growth_repeats,
        quick=args.quick,
        overrides=list(getattr(args, "overrides", []) or []),
        load=dict(args.load),
        seed=args.seed,
        peak_seconds=args.peak_seconds,
        flops_only=args.flops_only,
    )
    result = run_speed(opts)
    if args.flops_only:
        cols = [
            c
            for c in MAIN_COLUMNS
            if c[0] in ("preset", "model_type", "params_M", "gflops_per_img")
        ]
        print(markdown_table(result["rows"], cols))
        return 0
    paths = write_report(result, args.out)
    print(markdown_table([r for r in result["rows"] if "error" not in r], MAIN_COLUMNS))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 1 if not any("error" not in r for r in result["rows"]) else 0


def run_quality(args: argparse.Namespace) -> int:
    from nestar.bench.quality import (
        QualityOptions,
        markdown_report,
        entries_dropped,
        run_quality as run_bench,
        write_report,
    )

    opts = QualityOptions(
        suites=tuple(args.suite),
        only=tuple(args.only) if args.only else None,
        runs_dir=args.runs_dir,
        out=args.out,
        num_eval=args.num_eval,
        seed=args.seed,
        quick=args.quick,
        overrides=list(getattr(args, "overrides", []) or []),
        kid_subset_size=args.kid_subset_size,
        train_seeds=tuple(args.train_seeds),
        progress=not args.quiet,
        guidance_sweep=tuple(args.guidance_sweep),
        cached_only=args.cached_only,
    )
    result = run_bench(opts)
    dropped = entries_dropped(result, args.out)
    paths = write_report(result, args.out)
    print(markdown_report(result))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    if dropped:  # the report holds this invocation only: say so rather than lose rows silently
        ran = [r["name"] for r in result["rows"] if "train_seed" in r]  # not the floor rows
        names = ",".join(dict.fromkeys([*ran, *dropped]))
        print(
            f"note: {args.out}/quality.json no longer summarises {', '.join(dropped)} (their cached "
            f"entries are kept in {args.out}/entries/); to rebuild one report with all of them: "
            f"nestar bench quality --cached-only --only {names} --out {args.out} "
            "plus this invocation's other options"
        )
    return 0


def run_claims(args: argparse.Namespace) -> int:
    from nestar.bench.claims import evaluate_files
    from nestar.config import save_json

    report = evaluate_files(args.results, only=args.only, compare=tuple(args.compare))
    save_json(report, args.out)
    for c in report["claims"]:
        print(_claim_line(c, {True: "holds", False: "does not hold"}))
    for c in report.get("comparisons", []):
        print("ad hoc " + _claim_line(c, {True: "differs", False: "within the noise"}))
    print(f"wrote {args.out}")
    return 0


def _claim_line(c: dict, verdicts: dict) -> str:
    """One line of `bench claims` output: verdict, difference, matched precision, interval, why."""
    verdict = verdicts.get(c["holds"], "undecided")
    diff = f"{c['difference']:+.3f}" if c.get("difference") is not None else "-"
    at = (
        f", {c['matched_by']} at precision {c['matched_precision']:.3f}"
        if c.get("matched_by")
        else ""
    )
    ci = ""
    if c["rule"].startswith("ci") and c.get("ci95"):
        ci = f", 95% interval [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]"
    why = "; " + c["why"] if c.get("why") else ""
    return f"{c['id']}: {verdict} (a - b = {diff}{at}{ci}){why}"


def run_nfe(args: argparse.Namespace) -> int:
    from nestar.bench.nfe import NFEOptions, parse_runs, run_nfe as _run, write_report

    opts = NFEOptions(
        runs=parse_runs(args.run),
        nfes=args.nfe,
        solvers=args.solvers,
        grids=args.grids,
        num_eval=args.num_eval,
        seed=args.seed,
        out=args.out,
        progress=not args.quiet,
    )
    result = _run(opts)
    paths = write_report(result, args.out)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
