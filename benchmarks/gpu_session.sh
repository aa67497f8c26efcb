#!/usr/bin/env bash
# Everything a GPU session does, in one device call (the device tool's `run` gives 10 minutes, a
# session 15 device-minutes in all, a machine start included). Stages run in order of value, each
# under its own cap and a shared deadline, so a slow stage costs the later ones time, never the
# whole call's output:
#   1. build for the local GPU only (CPU kernels baseline x86-64 only: the AVX-512/AVX2 clones are
#      measured on CPU machines, and skipping them took the first H200 build from 237 s to ~1 min);
#   2. the gpu-marked tests (streams, CUDA graphs);
#   3. the tests on the GPU in two runs, one after the other: first the files that never ran or failed without a
#      traceback on the last GPU session, then the rest (every kernel test runs on the kernel device:
#      the GPU here, interpreter/emulator in CI); each failure's traceback goes to failures.log as
#      it happens (tests/conftest.py);
#   4. the model bench against eager, with the profiler's breakdown;
#   5. the bench cases with each GPU backend forced (benchmarks/gpu_backends.py; BENCH_FULL=1 for
#      every case): the data PREFERRED in gankern/backends.py is filled from.
# At most 8 files come back from $OUT; this writes 8: session.log, build.log, failures.log,
# tests.log, backends.log, backends-cuda.json and the model bench's JSON and PNG. Commit them under
# benchmarks/results/<gpu>-<date>/.
#   device run:  bash benchmarks/gpu_session.sh      (DEADLINE=seconds, default 540; run's timeout_s
#                                                      a little above it)
#   a follow-up: STAGES="tests models" TESTS=@ids.txt bash benchmarks/gpu_session.sh  (STAGES: which
#                of gpu-tests, tests, models, backends run; TESTS: pytest arguments, e.g. a file of
#                the test ids that failed last time, one per line, instead of the two full runs)
# Carry .whl/ (wheels, e.g. diffusers for its scheduler and model tests) and it is installed first:
# the device image has no network. A warm machine keeps the build: a second call skips stage 1.
set -uo pipefail
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 GANKERN_FAILURE_LOG="$OUT/failures.log"
DEADLINE=$((SECONDS + ${DEADLINE:-540}))
LOG="$OUT/session.log"
stage() { echo "== $1 at ${SECONDS}s ($((DEADLINE - SECONDS))s left)" | tee -a "$LOG"; }
left() {  # seconds a stage may take: its cap, or what is left before the deadline less a reserve
  local l=$((DEADLINE - SECONDS - ${2:-0})); [ "$l" -gt "$1" ] && l=$1; [ "$l" -lt 5 ] && l=5; echo "$l"; }
tests() {  # tests <cap> <reserve> <label> <pytest args...>
  local cap=$1 reserve=$2 label=$3; shift 3
  echo "== $label" >>"$OUT/tests.log"
  # one thread per worker: 12 workers of 16 threads each (torch's and gankern's pools) made the CPU
  # tests of the 2026-11-30 session crawl, and three of them time out
  OMP_NUM_THREADS=1 timeout "$(left "$cap" "$reserve")" python3 -m pytest -v -n "${WORKERS:-12}" -p no:cacheprovider --timeout 120 \
    "$@" >>"$OUT/tests.log" 2>&1
  echo "$label: exit $? (124: cut off)" | tee -a "$LOG"
}

want() { [[ " ${STAGES:-gpu-tests tests models backends} " == *" $1 "* ]]; }  # STAGES: which of them run

stage env
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,power.draw,memory.total --format=csv
  python3 -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, torch.version.cuda, triton.__version__)"
  nproc; } 2>&1 | tee -a "$LOG"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

stage build
if ls gankern/_cuda.*.so >/dev/null 2>&1 && [ "${REBUILD:-0}" != 1 ]; then
  echo "gankern/_cuda is built already (a warm machine): no rebuild" | tee -a "$LOG"
else
  cap=$(python3 -c "import torch; p=torch.cuda.get_device_properties(0); print(f'{p.major}{p.minor}')")
  GANKERN_CUDA=1 GANKERN_CUDA_ARCHS="$cap" GANKERN_CPU_CLONES=none timeout "$(left 300)" \
    python3 -m pip install -v --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1
  echo "build exit $?" | tee -a "$LOG"
  grep -E "error|warning: " "$OUT/build.log" | grep -v Deprecat | head -30 | tee -a "$LOG"
fi
python3 -m gankern info 2>&1 | tee -a "$LOG"

if want gpu-tests; then
  stage gpu-tests
  timeout "$(left 90)" python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tail -15 | tee -a "$LOG"
fi

if want tests && [ -n "${TESTS:-}" ]; then   # TESTS: pytest arguments that replace the two runs below
  stage tests; tests 1000 "${TESTS_RESERVE:-40}" "selected" $TESTS
elif want tests; then
stage tests
# First the files that never ran or failed without a traceback on the last GPU session, then the
# rest; each failure's traceback is in failures.log as it happens.
first=$(ls tests/test_*.py | grep -E "test_(vae|norm|upfirdn2d|modulated_conv|edge_cases|filtered_lrelu|models.*|ddp|cli_train|bench_models|opcheck)\.py")
tests ${FIRST_CAP:-170} 200 "first run or unexplained" $first
rest=$(ls tests/test_*.py | grep -v -F "$(printf '%s\n' $first tests/test_install.py)")
tests ${REST_CAP:-150} 150 "the rest" $rest
echo "failed tests: $(grep -c '^=== ' "$OUT/failures.log" 2>/dev/null || echo 0)" | tee -a "$LOG"
fi
grep '^=== ' "$OUT/failures.log" 2>/dev/null | head -60 | tee -a "$LOG"

if want models; then
  stage models-bench
  timeout "$(left 110 "$(want backends && echo 50 || echo 0)")" python3 -m gankern bench --models --profile --device cuda --no-compile --no-progress \
    --out "$OUT" ${MODELS_ARGS:-} >>"$LOG" 2>&1
  echo "models bench exit $?" | tee -a "$LOG"
fi

if want backends; then
  stage backends-bench
  timeout "$(left 150)" python3 benchmarks/gpu_backends.py ${BENCH_FULL:+--full} --out "$OUT" \
    ${BENCH_OPS:+--ops $BENCH_OPS} >"$OUT/backends.log" 2>&1
  echo "backends bench exit $?" | tee -a "$LOG"
fi

stage done
grep -A60 "^op " "$OUT/backends.log" 2>/dev/null | tail -62
grep -B2 -A30 "^model " "$LOG" | tail -30
