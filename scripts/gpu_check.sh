#!/usr/bin/env bash
# One-shot GPU check (one NVIDIA GPU, about 10 minutes of wall time in all):
#   train   `nestar train --preset nestar-s` in bf16, eager and with --train.compile=true:
#           images/s (steady state), peak memory (torch.cuda.max_memory_allocated), compile time
#   sample  Pipeline.from_pretrained of the trained model (load time) and sampling images/s
#   bench   `nestar bench speed` on the GPU (the *-s presets of every model family)
#   tests   the test suite (`python -m pytest -q -x`): tests/conftest.py has no device switch, so
#           the suite runs as on any machine; it goes last and gets the time that is left
#   report  a markdown table appended under "## GPU check results" in docs/scaling.md
# The GPU phases come first so that a slow test suite cannot eat their time. Every phase runs
# under its own timeout, clamped to what is left of BUDGET_S; a phase that fails or times out is
# recorded in the table, the others still run, and the script then exits 1. With no CUDA device
# it stops at once (exit 3).
#
# Usage:  bash scripts/gpu_check.sh                 on the GPU machine (from any directory)
#         DRY_RUN=1 bash scripts/gpu_check.sh       on a CPU: tiny step counts and batches, every
#                                                   phase's plumbing; never writes docs/scaling.md
# Environment: PYTHON (default .venv/bin/python, else python3), BUDGET_S (default 570: 30 s of
# slack in 10 min), WORK (scratch + results, default a new /tmp/nestar_gpu_check.*; the table is
# WORK/results/table.md; checkpoints are deleted at the end unless KEEP_RUNS=1),
# TRAIN_STEPS / TRAIN_WARMUP / TRAIN_BATCH, SAMPLE_BATCHES, BENCH_PRESETS, TESTS / T_TESTS (test
# paths / their timeout), DRY_COMPILE=1 (compile in a dry run too: minutes on a CPU).
# Precision: --train.precision=bf16. The dry run trains in fp32 (DRY_PRECISION=bf16 to change) and
# runs only TESTS=tests/test_loading.py.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=$(command -v python3); fi
fi
DRY_RUN=${DRY_RUN:-0}
BUDGET_S=${BUDGET_S:-570}
WORK=${WORK:-$(mktemp -d /tmp/nestar_gpu_check.XXXXXX)}
RES=$WORK/results
mkdir -p "$RES"
DOC=$ROOT/docs/scaling.md
START=$(date +%s)
export PYTHONUNBUFFERED=1 NESTAR_CACHE=${NESTAR_CACHE:-$WORK/nestar_cache}
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}  # works without an installed nestar too

if [[ $DRY_RUN == 1 ]]; then
    DEVICE=cpu
    TRAIN_STEPS=${TRAIN_STEPS:-3} TRAIN_WARMUP=${TRAIN_WARMUP:-1} TRAIN_BATCH=${TRAIN_BATCH:-8}
    SAMPLE_BATCHES=${SAMPLE_BATCHES:-2} SAMPLE_REPEATS=1
    BENCH_ARGS=(--quick --repeats 1 --warmup 0 --batch-throughput 2 --grids off --head-steps 2)
    BENCH_PRESETS=${BENCH_PRESETS:-nestar-tiny,nextscale-tiny}
    TESTS=${TESTS:-tests/test_loading.py}  # the whole suite takes far longer than a dry run on a CPU
    # one thread: on a small shared CPU, torch's threads spin against other processes (measured
    # 20-35x slower sampling with 2 threads on 2 busy cores)
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    PREC_VALUE=${DRY_PRECISION:-fp32}  # bf16 is emulated on most CPUs: ~15 s per nestar-s step
    T_TRAIN=120 T_COMPILE=300 T_SAMPLE=120 T_BENCH=120 T_TESTS=${T_TESTS:-90}
else
    DEVICE=cuda
    TRAIN_STEPS=${TRAIN_STEPS:-40} TRAIN_WARMUP=${TRAIN_WARMUP:-5} TRAIN_BATCH=${TRAIN_BATCH:-64}
    SAMPLE_BATCHES=${SAMPLE_BATCHES:-64,256} SAMPLE_REPEATS=2
    BENCH_ARGS=(--repeats 2 --warmup 1 --grids off)
    BENCH_PRESETS=${BENCH_PRESETS:-nestar-s,raster-s,mar-s,arinar-s,nextscale-s}
    TESTS=${TESTS:-tests}
    PREC_VALUE=bf16
    T_TRAIN=90 T_COMPILE=180 T_SAMPLE=60 T_BENCH=180 T_TESTS=${T_TESTS:-240}
fi

elapsed() { echo $(( $(date +%s) - START )); }
log() { printf '[gpu_check %4ss] %s\n' "$(elapsed)" "$*"; }
die() { log "ERROR: $1" >&2; exit "${2:-1}"; }
# min(want, time left - reserve); fails when under 15 s are left.
budget() {
    local want=$1 reserve=${2:-15} left
    left=$(( BUDGET_S - $(elapsed) - reserve ))
    (( left < want )) && want=$left
    (( want >= 15 )) || return 1
    echo "$want"
}
FAILED=0
# run_phase NAME WANT_S CMD...: timeout, timing and a status line in $RES/phases.tsv; never exits.
run_phase() {
    local name=$1 want=$2 t rc=0 t0 secs status
    shift 2
    if ! t=$(budget "$want"); then
        log "phase $name: SKIPPED (out of time)"
        printf '%s\tskipped (out of time)\t0\n' "$name" >> "$RES/phases.tsv"
        FAILED=1
        return 0
    fi
    log "phase $name: start (timeout ${t}s)"
    t0=$(date +%s)
    timeout --kill-after=10 "$t" "$@" > "$WORK/$name.log" 2>&1 || rc=$?
    secs=$(( $(date +%s) - t0 ))
    case $rc in
        0) status=ok ;;
        124|137) status="timeout after ${t}s"; FAILED=1 ;;
        *) status="failed (exit $rc)"; FAILED=1 ;;
    esac
    printf '%s\t%s\t%s\n' "$name" "$status" "$secs" >> "$RES/phases.tsv"
    log "phase $name: $status in ${secs}s (log $WORK/$name.log)"
    [[ $rc == 0 ]] || tail -n 15 "$WORK/$name.log" | sed 's/^/    | /' >&2
    return 0
}

# ----- preflight --------------------------------------------------------------------------------
log "work dir $WORK; python $PYTHON; DRY_RUN=$DRY_RUN; budget ${BUDGET_S}s"
[[ -x $PYTHON ]] || die "no python at $PYTHON (set PYTHON=...)"
: > "$RES/phases.tsv"
if [[ $DRY_RUN != 1 ]]; then
    "$PYTHON" - <<'EOF' || die "torch.cuda.is_available() is False: this check needs an NVIDIA GPU with a CUDA build of torch (DRY_RUN=1 checks the plumbing on a CPU)" 3
import sys, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")
sys.exit(0 if torch.cuda.is_available() else 1)
EOF
fi
"$PYTHON" - "$RES/env.json" "$DEVICE" <<'EOF'
import json, os, platform, subprocess, sys, torch
out, device = sys.argv[1], sys.argv[2]
env = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": device, "cpus": os.cpu_count(),
       "host": platform.node(), "python": platform.python_version()}
if device == "cuda":
    p = torch.cuda.get_device_properties(0)
    env.update(gpu=p.name, gpu_mem_gb=round(p.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported())
try:
    env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    env["dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip())
except OSError:
    pass
json.dump(env, open(out, "w"))
print(env)
EOF

PREC=--train.precision=$PREC_VALUE
log "precision override: $PREC"

# nestar-s trains on Fashion-MNIST; without the dataset, synthetic idx files of the same shape
# (throughput and memory do not depend on the pixels).
DATA_ARGS=()
DATA_KIND=fashion_mnist
if ! "$PYTHON" -c "from nestar.data import load_fashion_mnist; load_fashion_mnist('train')" > /dev/null 2>&1; then
    DATA_KIND=synthetic
    DATA_ARGS=(--data.data_dir="$WORK/fmnist")
    "$PYTHON" - "$WORK/fmnist" <<'EOF'
import gzip, sys
from pathlib import Path
import numpy as np
d, n = Path(sys.argv[1]), 6000
d.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
labels = np.arange(n, dtype=np.uint8) % 10
yy, xx = np.mgrid[:28, :28]
images = ((np.sin(xx[None] * (labels[:, None, None] + 1) / 9.0 + yy[None] / 5.0) * 0.5 + 0.5) * 200).astype(np.uint8)
images = np.clip(images + rng.integers(0, 40, images.shape), 0, 255).astype(np.uint8)
def idx(path, arr, code=8):
    head = bytes([0, 0, code, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.tobytes())
for split in ("train", "t10k"):
    idx(d / f"{split}-images-idx3-ubyte.gz", images)
    idx(d / f"{split}-labels-idx1-ubyte.gz", labels)
EOF
fi
log "training data: $DATA_KIND"

# ----- train: nestar-s, bf16, eager and compiled --------------------------------------------------
# `nestar train` (the CLI's own entry point) in a wrapper process that then reads the CUDA peak
# memory and the run's log.csv (one row per step: steady images/s over the steps after TRAIN_WARMUP).
cat > "$WORK/train_run.py" <<'EOF'
import csv, json, sys, time
import torch
from nestar.cli.main import main

out, run_dir, warmup, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
argv = sys.argv[5:]
assert warmup >= 1, "TRAIN_WARMUP must be >= 1"
t0 = time.perf_counter()
rc = main(["train", "--preset", "nestar-s", "--run-dir", run_dir, "--no-resume", "--quiet", *argv])
res = {"rc": rc, "wall_s": time.perf_counter() - t0, "args": argv, "batch": batch}
if rc:
    sys.exit(rc)
if torch.cuda.is_available() and torch.cuda.is_initialized():
    res["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
rows = list(csv.DictReader(open(f"{run_dir}/log.csv", newline="")))
steps = [int(r["step"]) for r in rows]
# Seconds spent in training steps 1..k: from images_per_sec (= k * batch / that time; logging and
# checkpoints excluded) where its 0.1 resolution is fine, else from elapsed_s (0.1 s resolution).
ips = [float(r["images_per_sec"]) for r in rows]
busy = ([k * batch / v for k, v in zip(steps, ips)] if min(ips) >= 100
        else [float(r["elapsed_s"]) for r in rows])
w = steps.index(warmup)
res.update(steps=steps[-1], warmup_steps=warmup, warmup_s=busy[w], final_loss=float(rows[-1]["loss"]),
           steady_img_s=(steps[-1] - warmup) * batch / (busy[-1] - busy[w]),
           steady_step_ms=1e3 * (busy[-1] - busy[w]) / (steps[-1] - warmup))
cfg = json.load(open(f"{run_dir}/config.json"))
res["precision"] = cfg["train"]["precision"]
res["compile"] = cfg["train"].get("compile")
json.dump(res, open(out, "w"), indent=1)
print(json.dumps(res))
EOF
TRAIN_ARGS=("$PREC" --train.steps=$((TRAIN_WARMUP + TRAIN_STEPS)) --train.batch_size="$TRAIN_BATCH"
            --train.log_every=1 --train.sample_every=0 --train.ckpt_every=0 --train.device="$DEVICE"
            ${DATA_ARGS[@]+"${DATA_ARGS[@]}"})
rm -rf "$WORK/train_eager" "$WORK/train_compile"
run_phase train_eager "$T_TRAIN" "$PYTHON" "$WORK/train_run.py" "$RES/train_eager.json" "$WORK/train_eager" \
    "$TRAIN_WARMUP" "$TRAIN_BATCH" "${TRAIN_ARGS[@]}" --train.compile=false
if [[ $DRY_RUN == 1 && ${DRY_COMPILE:-0} != 1 ]]; then
    # inductor on a 2-core CPU takes minutes: the dry run checks the plumbing with compile off
    run_phase train_compile "$T_COMPILE" "$PYTHON" "$WORK/train_run.py" "$RES/train_compile.json" \
        "$WORK/train_compile" "$TRAIN_WARMUP" "$TRAIN_BATCH" "${TRAIN_ARGS[@]}" --train.compile=false
else
    run_phase train_compile "$T_COMPILE" "$PYTHON" "$WORK/train_run.py" "$RES/train_compile.json" \
        "$WORK/train_compile" "$TRAIN_WARMUP" "$TRAIN_BATCH" "${TRAIN_ARGS[@]}" --train.compile=true
fi

# ----- sample: load time and images/s through the Pipeline ---------------------------------------
cat > "$WORK/sample_run.py" <<'EOF'
import json, sys, time
import torch
from nestar.pipeline import Pipeline
from nestar.registry import build_model, get_preset
from nestar.serialization import save_pretrained

out, model_dir, device, batches, repeats = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
res = {"device": device, "source": model_dir}
try:
    Pipeline.from_pretrained(model_dir, device="cpu")
except Exception as e:  # no trained model (the train phase failed): random weights do the same work
    res["source"] = f"random nestar-s ({type(e).__name__})"
    model_dir = f"{out}.model"
    cfg = get_preset("nestar-s")
    save_pretrained(model_dir, build_model(cfg), cfg)
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
t0 = time.perf_counter()
pipe = Pipeline.from_pretrained(model_dir, device=device)
sync()
res["load_s"] = time.perf_counter() - t0
prec = getattr(pipe, "precision", None)  # the resolved sample precision, where the Pipeline has one
res["sample_precision"] = prec.name if prec is not None else getattr(pipe.config.sample, "precision", "fp32")
s = pipe.config.sample
res["settings"] = f"cfg {s.cfg} {s.cfg_schedule}, {s.num_steps} head steps"
gen = torch.Generator().manual_seed(0)
pipe(torch.arange(4) % 10, generator=gen)  # warm-up
res["runs"] = []
for b in (int(x) for x in batches.split(",")):
    labels = torch.arange(b) % 10
    pipe(labels, generator=gen, batch_size=b)  # warm-up at this batch
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        out_b = pipe(labels, generator=gen, batch_size=b)
        sync()
        times.append(time.perf_counter() - t)
    r = {"batch": b, "s_per_call": min(times), "img_s": b / min(times), "seq_steps": out_b.sequential_steps}
    if device == "cuda":
        r["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    res["runs"].append(r)
    print(json.dumps(r))
json.dump(res, open(out, "w"), indent=1)
print(json.dumps({k: v for k, v in res.items() if k != "runs"}))
EOF
run_phase sample "$T_SAMPLE" "$PYTHON" "$WORK/sample_run.py" "$RES/sample.json" "$WORK/train_eager/model" \
    "$DEVICE" "$SAMPLE_BATCHES" "$SAMPLE_REPEATS"

# ----- bench: nestar bench speed ------------------------------------------------------------------
run_phase bench "$T_BENCH" "$PYTHON" -m nestar.cli.main bench speed --device "$DEVICE" --out "$WORK/bench" \
    --presets "$BENCH_PRESETS" "${BENCH_ARGS[@]}"

# ----- tests: whatever time is left -----------------------------------------------------------------
# shellcheck disable=SC2086  # TESTS may name several paths
run_phase tests "$T_TESTS" "$PYTHON" -m pytest -q -x -p no:cacheprovider $TESTS

# ----- report -----------------------------------------------------------------------------------------
"$PYTHON" - "$WORK" "$DATA_KIND" "$DRY_RUN" > "$RES/table.md" <<'EOF'
import datetime, json, sys
from pathlib import Path

work, data_kind, dry = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
res = work / "results"
load = lambda p: json.loads(p.read_text()) if p.is_file() else {}  # noqa: E731
env, eager, comp, samp = (load(res / f) for f in ("env.json", "train_eager.json", "train_compile.json", "sample.json"))
bench = load(work / "bench" / "speed.json")
phases = [line.split("\t") for line in (res / "phases.tsv").read_text().splitlines() if line]
f = lambda v, fmt="{:.1f}": "n/a" if v is None else fmt.format(v)  # noqa: E731

hw = env.get("gpu", "CPU (dry run)")
print(f"### {datetime.date.today()} — {hw}{' — DRY RUN' if dry else ''}\n")
print(f"torch {env.get('torch')} (CUDA {env.get('cuda')}), {env.get('cpus')} CPU cores, commit {env.get('commit', '?')}"
      f"{' (uncommitted changes)' if env.get('dirty') else ''}; training data: {data_kind}. "
      f"Raw results: `{work}`.\n")
print("| phase | status | wall (s) |\n|---|---|---|")
for name, status, secs in phases:
    print(f"| {name} | {status} | {secs} |")
print()
print("| nestar-s training | precision | batch | steady img/s | step (ms) | first steps (s) | compile (s) | peak mem (MiB) | loss |")
print("|---|---|---|---|---|---|---|---|---|")
for label, r in (("eager", eager), ("torch.compile", comp)):
    if not r:
        print(f"| {label} | | | failed | | | | | |")
        continue
    ctime = None
    if r is comp and eager and r.get("compile"):  # extra warm-up time over eager = compilation
        ctime = r["warmup_s"] - eager["warmup_s"]
    label = label if r is eager or r.get("compile") else f"{label} (off in dry run)"
    print(f"| {label} | {r.get('precision')} | {r.get('batch')} | {f(r.get('steady_img_s'))} | {f(r.get('steady_step_ms'))} "
          f"| {f(r.get('warmup_s'))} ({r.get('warmup_steps')} steps) | {f(ctime)} | {f(r.get('peak_mem_mb'), '{:.0f}')} "
          f"| {f(r.get('final_loss'), '{:.4f}')} |")
print()
if samp:
    print(f"Sampling (Pipeline, {samp.get('source')}; {samp.get('settings')}; sample precision "
          f"{samp.get('sample_precision')}): `Pipeline.from_pretrained` {f(samp.get('load_s'), '{:.2f}')} s to {samp.get('device')}.\n")
    print("| batch | s / call | img/s | seq. steps | peak mem (MiB) |\n|---|---|---|---|---|")
    for r in samp.get("runs", []):
        print(f"| {r['batch']} | {r['s_per_call']:.3f} | {r['img_s']:.1f} | {r['seq_steps']} | {f(r.get('peak_mem_mb'), '{:.0f}')} |")
    print()
if bench.get("rows"):
    print(f"`nestar bench speed` ({bench['env'].get('dtype', '?') if isinstance(bench.get('env'), dict) else '?'}):\n")
    print("| preset | params (M) | seq. steps | latency b=1 (ms) | throughput (img/s) | peak mem (MiB) | vs nestar (throughput) |")
    print("|---|---|---|---|---|---|---|")
    for r in bench["rows"]:
        if "error" in r:
            print(f"| {r['preset']} | failed: {r['error'][:80]} | | | | | |")
            continue
        print(f"| {r['preset']} | {f(r.get('params_M'), '{:.1f}')} | {r.get('seq_steps')} | {f(r.get('latency_ms'))} "
              f"| {f(r.get('throughput_img_s'))} | {f(r.get('peak_mem_mb'), '{:.0f}')} | {f(r.get('throughput_vs_nestar'), '{:.2f}x')} |")
    print()
EOF
log "results table: $RES/table.md"
cat "$RES/table.md"

if [[ $DRY_RUN == 1 ]]; then
    log "DRY_RUN: $DOC not touched"
else
    # Insert at the end of the '## GPU check results' section (created at the end of the file if
    # absent), through a temp file renamed over the original.
    "$PYTHON" - "$DOC" "$RES/table.md" <<'EOF'
import os, sys
from pathlib import Path
doc, table = Path(sys.argv[1]), Path(sys.argv[2]).read_text().rstrip() + "\n"
heading = "## GPU check results"
lines = doc.read_text().splitlines() if doc.is_file() else []
if heading not in (l.strip() for l in lines):
    lines += ["", heading, "", "Written by `scripts/gpu_check.sh`, newest last.", ""]
start = [l.strip() for l in lines].index(heading)
end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
new = lines[:end] + ([""] if lines[end - 1].strip() else []) + table.splitlines() + [""] + lines[end:]
tmp = doc.with_suffix(doc.suffix + ".tmp")
tmp.write_text("\n".join(new).rstrip() + "\n")
os.replace(tmp, doc)
EOF
    log "appended the table under '## GPU check results' in $DOC"
fi
if [[ ${KEEP_RUNS:-0} != 1 ]]; then  # checkpoints and data are large; logs and results stay
    rm -rf "$WORK"/train_*/checkpoints "$WORK"/train_*/model "$RES/sample.json.model" "$WORK/fmnist"
fi
log "done in $(elapsed)s; $( (( FAILED )) && echo 'SOME PHASES FAILED OR TIMED OUT (see the table)' || echo 'all phases ok')"
exit $FAILED
