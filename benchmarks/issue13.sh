#!/usr/bin/env bash
# Every measurement behind the issue-13 claims (docs/results.md, sections 5, 6 and 8), as one
# resumable script. Each stage is a `nestar bench` command whose finished entries are cached under
# docs/results/: rerunning skips them, so the script can be stopped and restarted anywhere, split
# over sessions, or run at once on a GPU (the models are ~7M parameters: minutes per arm there,
# 30-50 min per arm on 2 CPU cores).
#
# Usage:  bash benchmarks/issue13.sh [STAGE ...]     (default: all stages, in this order)
#   headline  nestar, raster AR, next-scale: N = 5,000, training seeds 0-2, guidance sweep 1-3
#   offset    the default before lattice offset 2 won (nestar-offset0: module 1 at the top-left
#             corners): seeds 0-2, N = 5,000, the same guidance sweep; per-module loss means at
#             offset 0 (nestar-moduleloss, seed 0)
#   firstmod  the first-module ablation (module_depths 1,4,4) at offsets 2 and 0: seeds 0-2,
#             N = 5,000; and nestar-offset0's seed 0 trained in fp32 (docs/results/q13-fp32), the
#             precision control for its other seeds, which trained in bf16
#   baselines MAR and ARINAR, one seed, N = 5,000
#   screen    the NestAR options at the demo size against the defaults of round 3 (lattice
#             offset 0, pinned here), one seed, N = 1,000: a first look only (screen13/round3/; the
#             folders beside it hold earlier rounds that ran against older defaults)
#   curve     nestar and raster AR at 1,600 and 3,200 steps (seeds $SEEDS, N = 5,000, the same
#             guidance sweep); the 800-step point is the headline
#   noise     sampling noise at N = 5,000: the shipped nestar-fmnist sampled with 8 seeds
#             (docs/results/noise13; the source of SAMPLING_STD in nestar/bench/claims.py)
#   latent    the headline arms on 8x8x4 latents of the project's own KL VAE (trained first,
#             3,000 steps; the committed entries used RUNS=/work/runs13), seeds 0-2, N = 5,000,
#             the same guidance sweep
#   claims    docs/results/q13/quality.json rebuilt from the cache (whatever has finished), then
#             docs/results/claims.json from it; the same for each learning-curve point
#             (curve13/STEPS/quality.json -> claims-STEPS.json: the NestAR vs raster AR claims) and
#             the latent track (latent13/quality.json -> claims-latent.json)
# Environment: RUNS (run directories, default runs/issue13), NESTAR (the command, default
# `python -m nestar.cli.main` from this checkout), SEEDS (default 0,1,2), SWEEP (guidance scales of
# every stage's sweep, default 1,1.5,2,3; SWEEP= skips it, e.g. to rebuild quality.json from the
# cache after running the arms one at a time). A sweep point not yet cached samples the trained model
# of its entry: the run directory the entry recorded, else $RUNS/q13/<entry>; it stops with a clear
# error where neither holds it (the models are not committed, only their scores).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${RUNS:-runs/issue13}
SEEDS=${SEEDS:-0,1,2}
SWEEP=${SWEEP-1,1.5,2,3}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}  # shared machines: no spinning threads
read -r -a NESTAR <<<"${NESTAR:-python -m nestar.cli.main}"
Q=("${NESTAR[@]}" bench quality --quiet)
SWEEP_ARGS=()  # every stage that scores 3 seeds sweeps guidance the same way
[[ -z $SWEEP ]] || SWEEP_ARGS=(--guidance-sweep "$SWEEP")
SCREEN_SIZE=(--model.dim=128 --model.z_dim=128 --model.head.width=128 --model.head.batch_mul=1
    --train.steps=1200 --train.batch_size=32 --train.precision=fp32 --train.ckpt_every=300
    --train.sample_every=0)

headline() {
    "${Q[@]}" --suite models --only nestar,raster,nextscale --train-seeds "$SEEDS" --num-eval 5000 \
        "${SWEEP_ARGS[@]}" --out docs/results/q13 --runs-dir "$RUNS/q13" --train.ckpt_every=100
}
offset() {  # the offset-0 reference (claims fid_lattice_offset, recall_offset0_vs_nextscale)
    "${Q[@]}" --suite ablations --only nestar-offset0 --train-seeds "$SEEDS" --num-eval 5000 \
        "${SWEEP_ARGS[@]}" --out docs/results/q13 --runs-dir "$RUNS/q13" --train.ckpt_every=100
    "${Q[@]}" --suite ablations --only nestar-moduleloss --num-eval 5000 --out docs/results/q13 \
        --runs-dir "$RUNS/q13" --train.ckpt_every=100
}
firstmod() {  # claims recall_first_module (offset 2) and recall_first_module_offset0
    "${Q[@]}" --suite ablations --only nestar-first-small,nestar-offset0-first-small --train-seeds "$SEEDS" \
        --num-eval 5000 --out docs/results/q13 --runs-dir "$RUNS/q13" --train.ckpt_every=100
    "${Q[@]}" --suite ablations --only nestar-offset0 --num-eval 5000 --out docs/results/q13-fp32 \
        --runs-dir "$RUNS/q13-fp32" --train.ckpt_every=100 --train.precision=fp32
}
baselines() {
    "${Q[@]}" --suite models --only mar,arinar --num-eval 5000 --out docs/results/q13-baselines \
        --runs-dir "$RUNS/q13" --train.ckpt_every=100
}
screen() {  # round 3 changed one setting each of the defaults of its time: offset 0, pinned here
    local e
    for e in nestar-rollout nestar-moduleloss nestar-boundarynoise nestar-depths246 nestar-rasterinit \
        nestar-nonbr; do
        "${Q[@]}" --suite ablations --only "$e" --num-eval 1000 --out "docs/results/screen13/round3/$e" \
            --runs-dir "$RUNS/screen13" "${SCREEN_SIZE[@]}" --model.order_offset=0
    done
    # the offset option (today's default) and the reference of that time, trained the same way
    "${Q[@]}" --suite models --only nestar --num-eval 1000 --out docs/results/screen13/round3/nestar-offset2 \
        --runs-dir "$RUNS/screen13-offset2" "${SCREEN_SIZE[@]}"
    "${Q[@]}" --suite models --only nestar --num-eval 1000 --out docs/results/screen13/round3/nestar \
        --runs-dir "$RUNS/screen13" "${SCREEN_SIZE[@]}" --model.order_offset=0
}
curve_point() {  # STEPS [--cached-only]: one point of the learning curve, with the guidance sweep
    local steps=$1
    shift
    "${Q[@]}" --suite models --only nestar,raster --train-seeds "$SEEDS" --num-eval 5000 "${SWEEP_ARGS[@]}" \
        --out "docs/results/curve13/$steps" --runs-dir "$RUNS/curve13-$steps" \
        --train.steps="$steps" --train.ckpt_every=200 "$@"
}
curve() {
    curve_point 1600
    curve_point 3200
}
noise() {
    local s out=docs/results/noise13
    for s in 0 1 2 3 4 5 6 7; do
        [[ -f $out/seed$s.json ]] || "${NESTAR[@]}" eval --checkpoint src/nestar/assets/pretrained/nestar-fmnist \
            --num-samples 5000 --seed "$s" --quiet --out "$out/seed$s.json"
    done
    python3 benchmarks/sampling_noise.py "$out"/seed*.json --out "$out/noise.json"  # stdlib only
}
latent_arms() {  # extra arguments go to bench quality (claims passes --cached-only)
    # the entries' cache keys hold the VAE's path: keep it to reuse the committed entries
    "${Q[@]}" --suite models --only nestar,raster,nextscale --train-seeds "$SEEDS" --num-eval 5000 \
        "${SWEEP_ARGS[@]}" --out docs/results/latent13 --runs-dir "$RUNS/latent13" --tokenizer.name=kl \
        --tokenizer.path="$RUNS/vae-fmnist-3000" --train.ckpt_every=100 "$@"
}
latent() {
    [[ -f $RUNS/vae-fmnist-3000/config.json ]] ||
        "${NESTAR[@]}" train-tokenizer --data.name=fashion_mnist --steps 3000 --out "$RUNS/vae-fmnist-3000"
    latent_arms
}
claims() {  # quality.json rebuilt from every cached headline entry first (arms may run one by one)
    "${Q[@]}" --suite models,ablations --only nestar,raster,nextscale,nestar-offset0,nestar-moduleloss,nestar-first-small,nestar-offset0-first-small \
        --train-seeds "$SEEDS" --num-eval 5000 "${SWEEP_ARGS[@]}" --out docs/results/q13 --runs-dir "$RUNS/q13" \
        --train.ckpt_every=100 --cached-only
    "${NESTAR[@]}" bench claims docs/results/q13/quality.json --out docs/results/claims.json
    local steps
    for steps in 1600 3200; do
        [[ -d docs/results/curve13/$steps/entries ]] || continue  # that point not started yet
        curve_point "$steps" --cached-only
        "${NESTAR[@]}" bench claims "docs/results/curve13/$steps/quality.json" \
            --only fid_nestar_vs_raster,seam_nestar_vs_raster --compare nestar,raster,recall,matched \
            --compare nestar,raster,recall --out "docs/results/claims-$steps.json"
    done
    if [[ -d docs/results/latent13/entries ]]; then
        latent_arms --cached-only
        "${NESTAR[@]}" bench claims docs/results/latent13/quality.json \
            --only fid_nestar_vs_raster,recall_nestar_vs_nextscale --compare nestar,nextscale,recall,matched \
            --compare nestar,raster,recall,matched \
            --compare nestar,raster,recall --compare nestar,raster,precision \
            --compare nestar,raster,class_agreement --out docs/results/claims-latent.json
    fi
    python3 benchmarks/learning_curve.py docs/results/q13/quality.json docs/results/curve13/*/quality.json \
        --arms nestar,raster --out docs/results/curve13/curve  # stdlib only
}

stages=("$@")
((${#stages[@]})) || stages=(headline offset firstmod baselines screen curve noise latent claims)
for s in "${stages[@]}"; do
    case $s in
    headline | offset | firstmod | baselines | screen | curve | noise | latent | claims)
        echo "== issue13: $s ($(date -u +%FT%TZ))"
        "$s"
        ;;
    *)
        echo "unknown stage '$s' (headline offset firstmod baselines screen curve noise latent claims)" >&2
        exit 2
        ;;
    esac
done
