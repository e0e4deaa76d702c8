#!/usr/bin/env bash
# The accelerator check, for a session lent a device machine (the `device` tool), as one
# call from the repository root, e.g.  run(command="bash experiments/device_check.sh").
# Writes BENCHMARKS-style sections and raw JSON under $OUT (the tool fetches $OUT); copy
# the sections into BENCHMARKS.md here. About 8-12 minutes on an H100/H200.
set -euo pipefail
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
python3 -c "import jax, numba; print(jax.__version__, numba.__version__, jax.devices())"
python3 experiments/bench_store.py --out "$OUT/BENCHMARKS.md"
# The host side alone, pinned to 1..16 cores: what this host can feed the GPU (one round:
# the device time is short; the 16-core host is not the noisy 2-core VM).
python3 experiments/bench_host.py --cores=1,2,4,8,16 --rounds=1 --out "$OUT/BENCHMARKS.md"
for shards in 8 1; do
  extra=()
  if [ "$shards" = 1 ]; then extra=(--nobaseline --nocompare_admission --nocvm); fi
  python3 experiments/bench_e2e.py --hours=5 --rows_per_hour=50000 --batch_size=4096 \
    --store_shards="$shards" --baseline_rows_sweep= ${extra[@]+"${extra[@]}"} \
    --section="End to end on the lent GPU, $shards store shard(s)" \
    --out="$OUT/BENCHMARKS.md" --json="$OUT/e2e_${shards}_shards.json"
done
# Pass mode: a pass's rows on the GPU, the sparse optimizer inside the step.
python3 experiments/bench_e2e.py --hours=5 --rows_per_hour=50000 --batch_size=4096 \
  --store_shards=8 --pass_batches=16 --nobaseline --nocompare_admission --nocvm \
  --baseline_rows_sweep= --section="End to end on the lent GPU, pass mode (16 batches a pass)" \
  --out="$OUT/BENCHMARKS.md" --json="$OUT/e2e_pass.json"
