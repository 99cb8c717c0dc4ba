#!/usr/bin/env bash
# Every row of docs/performance.md: the 0.7B preset at 256/512/1024 in fp32 and bf16, plus the
# 1024 bf16 low-memory row. Results go to benchmarks/results/<size>-<dtype>[-lowmem].json.
# Usage: bash benchmarks/run_all.sh [extra openhart bench flags]
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results
mkdir -p "$out"
for size in 256 512 1024; do
  for dtype in fp32 bf16; do
    .venv/bin/openhart bench --size "$size" --dtype "$dtype" --json "$out/$size-$dtype.json" "$@"
  done
done
.venv/bin/openhart bench --size 1024 --dtype bf16 --low-memory --json "$out/1024-bf16-lowmem.json" "$@"
