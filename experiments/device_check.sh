#!/usr/bin/env bash
# The accelerator check, for a session lent a device machine (the `device` tool), as one
# call from the repository root:
#   run(command="bash experiments/device_check.sh", timeout_s=600)
# Writes BENCHMARKS-style sections, raw JSON and a log of the stages under $OUT (the tool
# fetches $OUT); copy the sections into BENCHMARKS.md here.
#
# The tool stops a command after 10 minutes and lends ~15 minutes of device time in all,
# the machine's start included, so the stages run most important first, each under the
# time that is left of BUDGET seconds (default 540): a stage that would not fit is
# skipped, one that runs over is stopped, and a failing stage does not stop the next.
# SMOKE=1 runs the same stages on a tiny stream (a dry run of this script on any machine).
set -uo pipefail
OUT=${OUT:-/tmp/device_check}
BUDGET=${BUDGET:-540}
SMOKE=${SMOKE:-0}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
LOG="$OUT/device_check.log"
deadline=$((SECONDS + BUDGET))

# stage NAME MIN_SECONDS COMMAND...: runs COMMAND if MIN_SECONDS are left, bounded by what is.
stage() {
  local name=$1 need=$2 left=$((deadline - SECONDS)) t0=$SECONDS rc
  shift 2
  if ((left < need)); then
    echo "== $name: skipped, ${left}s left (it needs ~${need}s)" | tee -a "$LOG"
    return
  fi
  echo "== $name: start, ${left}s left" | tee -a "$LOG"
  timeout -k 5 "$left" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t0))s" | tee -a "$LOG"
}

if [ "$SMOKE" = 1 ]; then
  e2e=(--hours=2 --rows_per_hour=3000 --batch_size=512)
  host=(--smoke)
  store=(--smoke)
else
  e2e=(--hours=5 --rows_per_hour=50000 --batch_size=4096)
  # One round, no side-by-side processes (device minutes are short; the 16-core host is
  # not the noisy 2-core VM).
  host=(--cores=1,4,16 --modes=null,lr --rounds=1 --noindependent)
  store=()
fi

stage versions 5 python3 -c "import jax, numba; print(jax.__version__, numba.__version__, jax.devices())"
# 1. The goals: the DNN at batch 4096 against the hashed baseline in the same run,
#    and step time ~ max(device, host). Quality comparisons (admission, CVM) ran on CPU.
stage "e2e, 8 shards" 90 python3 experiments/bench_e2e.py "${e2e[@]}" --store_shards=8 \
  --nocompare_admission --nocvm --baseline_rows_sweep= \
  --section="End to end on the lent GPU, 8 store shard(s)" \
  --out="$OUT/BENCHMARKS.md" --json="$OUT/e2e_8_shards.json"
# 2. Pass mode: a pass's rows on the GPU, the sparse optimizer inside the step.
stage "e2e, pass mode" 60 python3 experiments/bench_e2e.py "${e2e[@]}" --store_shards=8 \
  --pass_batches=16 --nobaseline --nocompare_admission --nocvm --baseline_rows_sweep= \
  --section="End to end on the lent GPU, pass mode (16 batches a pass)" \
  --out="$OUT/BENCHMARKS.md" --json="$OUT/e2e_pass.json"
# 3. The host side alone, pinned to 1, 4 and 16 cores: what this host can feed the GPU.
stage "host pipeline" 120 python3 experiments/bench_host.py "${host[@]}" --out="$OUT/BENCHMARKS.md"
# 4. One shard: how much the shards' parallel pulls and pushes bring.
stage "e2e, 1 shard" 60 python3 experiments/bench_e2e.py "${e2e[@]}" --store_shards=1 \
  --nobaseline --nocompare_admission --nocvm --baseline_rows_sweep= \
  --section="End to end on the lent GPU, 1 store shard(s)" \
  --out="$OUT/BENCHMARKS.md" --json="$OUT/e2e_1_shards.json"
# 5. The store's own kernels on this host's cores.
stage "store" 60 python3 experiments/bench_store.py "${store[@]}" --out="$OUT/BENCHMARKS.md"
echo "== done after ${SECONDS}s" | tee -a "$LOG"
