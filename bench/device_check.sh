#!/usr/bin/env bash
# One prepared run for a lent GPU machine (the device tool): CUDA tests, then the CamVid benchmark
# with its peers. Expects the CamVid copy in .device_data/camvid (git-ignored; carry it).
#   mkdir -p .device_data && cp -r ../shared/datasets/camvid .device_data/ && cp ../shared/bench/peer_camvid.py .device_data/
# device run: command "bash bench/device_check.sh", carry [".device_data"], timeout 600
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 GAS_SHARED="$PWD/.device_data/shared"
mkdir -p "$GAS_SHARED/datasets" "$GAS_SHARED/bench"
ln -sfn "$PWD/.device_data/camvid" "$GAS_SHARED/datasets/camvid"
cp .device_data/peer_camvid.py "$GAS_SHARED/bench/" 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -m pip install -q --no-deps -e . 2>/dev/null || true
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/core/test_cuda.py tests/core/test_search.py 2>&1 | tee "$OUT/cuda_tests.log"
timeout 420 python3 bench/gas_camvid.py .device_data/camvid "$OUT" --train-budget-s "${TRAIN_BUDGET_S:-60}" \
  --search-epochs "${SEARCH_EPOCHS:-6}" --warmup-epochs 2 --lut-samples 8 \
  --peer-script "$GAS_SHARED/bench/peer_camvid.py" 2>&1 | tee "$OUT/bench.log"
