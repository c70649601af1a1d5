#!/usr/bin/env bash
# One prepared run for a lent GPU machine (the device tool), under 10 minutes: the CUDA tests, the search
# step cost (bench/search_step_cost.py: plain vs batched cells, ms per step and peak memory at batch 8), then
# bench/search_quality.py --profile gpu (GAS vs no-GGM, shared cells, softmax and LUT-latency-matched
# random genotypes at 360x480, with torchvision's peers in the same run). Expects the CamVid copy and the
# peer script in .device_data (git-ignored; carry it):
#   mkdir -p .device_data && cp -r ../shared/datasets/camvid .device_data/ && cp ../shared/bench/peer_camvid.py .device_data/
# device run: command "OUT=\$OUT bash bench/device_check.sh", carry [".device_data"], timeout_s 600
# MODE=camvid runs the older bench/gas_camvid.py (GAS vs peers, one search) instead of the quality profile;
# MODE=latency runs issue 11's GPU part instead: bench/latency_trust.py for every runtime the GPU worker has
# (torch-eager, torch-optimised = CUDA graphs), 20 spread networks at 360x480, quiet and beside 2 CPU hogs.
# MODE=speed runs issue 9's GPU part: the step cost again with search.compile (default, reduce-overhead: CUDA
# graphs), each variant's ms per step, peak memory and first-step (compile) seconds, at batch 8, 360x480.
# MODE=search runs issue 9's goal itself: the default CamVid search at 360x480 (python -m core search, every
# search setting at its default; COMPILE=default|reduce-overhead to compile its steps; BUDGET_MS, default 8),
# stopped after 7 minutes if it has not finished: the report's wall_s, or how far it got (search.log).
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
MODE=${MODE:-quality}
# the CUDA tests; the compiled-step ones (a minute or two of Triton compiling) only where MODE=speed
if [ "$MODE" = speed ]; then
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/core/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.log"
else
  timeout 60 python3 -m pytest -q -p no:cacheprovider tests/core/test_cuda.py -k "not compiled" 2>&1 | tee "$OUT/cuda_tests.log"
fi
# search step cost: aten calls and saved bytes (machine-independent) and, on the GPU, ms per step and peak memory
# (MODE=quality only: MODE=speed times it with search.compile, the other modes need the 10 minutes for themselves)
if [ "$MODE" = quality ]; then
  timeout 120 python3 bench/search_step_cost.py --out "$OUT" --rounds 2 2>&1 | tail -12 | tee "$OUT/step_cost.log"
fi
if [ "$MODE" = search ]; then
  SEARCH_DIR="/tmp/default_search_${COMPILE:-off}"
  rm -rf "$SEARCH_DIR"  # a folder left by an earlier run on a warm machine would be resumed, not searched
  timeout 420 python3 -m core search --out "$SEARCH_DIR" --data .device_data/camvid \
    --set latency.budget_ms="${BUDGET_MS:-8}" --set search.compile="${COMPILE:-off}" > "$OUT/search.log" 2>&1
  echo "exit $?" >> "$OUT/search.log"
  cp "$SEARCH_DIR/artifacts/report.json" "$OUT/default_search_report.json" 2>/dev/null
  tail -40 "$OUT/search.log" | tee "$OUT/bench.log"
elif [ "$MODE" = speed ]; then
  timeout 390 python3 bench/search_step_cost.py --out "$OUT/compiled" --cuda-only --compile cuda \
    2>&1 | tail -20 | tee "$OUT/bench.log"
elif [ "$MODE" = latency ]; then
  timeout 480 python3 bench/latency_trust.py --out "$OUT" --resolutions "${RESOLUTIONS:-360x480}" --sampling spread \
    2>&1 | tail -30 | tee "$OUT/bench.log"
elif [ "$MODE" = camvid ]; then
  timeout 420 python3 bench/gas_camvid.py .device_data/camvid "$OUT" --train-budget-s "${TRAIN_BUDGET_S:-60}" \
    --search-epochs "${SEARCH_EPOCHS:-6}" --warmup-epochs 2 --lut-samples 8 \
    --peer-script "$GAS_SHARED/bench/peer_camvid.py" 2>&1 | tee "$OUT/bench.log"
else
  timeout 400 python3 bench/search_quality.py --profile gpu --data .device_data/camvid --out "$OUT" \
    --work /tmp/sq_gpu --peer-script "$GAS_SHARED/bench/peer_camvid.py" 2>&1 | tee "$OUT/bench.log"
fi
