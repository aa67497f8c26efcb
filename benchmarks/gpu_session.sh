#!/usr/bin/env bash
# Everything a GPU session should do, in one call (the device tool's `run` gives 10 minutes):
# build for the local GPU only, run the gpu-marked tests (streams, CUDA graphs) and then the whole
# suite on the GPU (every kernel test runs on the kernel device: the GPU here, the CPU interpreter
# and emulator in CI), time the full benchmark set.
# Results land in $OUT (the device tool's output folder) or ./bench-out; commit the JSON/PNG under
# benchmarks/results/ with the device and date in the name.
#   device run:  bash benchmarks/gpu_session.sh
set -uo pipefail
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
cap=$(python3 -c "import torch; p=torch.cuda.get_device_properties(0); print(f'{p.major}{p.minor}')")
GANKERN_CUDA=1 GANKERN_CUDA_ARCHS="$cap" python3 -m pip install -q --no-build-isolation --no-deps -e . \
  2>&1 | tail -5
python3 -m gankern info | tee "$OUT/info.txt"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,power.draw --format=csv >> "$OUT/info.txt"
python3 -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tee "$OUT/gpu-tests.log" | tail -15
python3 -m pytest -q -x -p no:cacheprovider tests 2>&1 | tail -3 | tee -a "$OUT/gpu-tests.log"
python3 -m gankern bench --device cuda --full --no-progress --out "$OUT" ${BENCH_OPS:+--ops $BENCH_OPS} \
  2>&1 | tee "$OUT/bench.log" | tail -60
