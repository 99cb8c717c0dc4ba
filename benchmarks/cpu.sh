#!/usr/bin/env bash
# The CPU rows of docs/performance.md on this machine: 256 and 512 px in bf16 and 512 px in fp32
# with profiles, the peak memory of a 1024 px bf16 generation (default and --low-memory), and the
# 512 px bf16 run with the C library's allocator (OPENHART_MALLOC=system) for comparison.
# Usage: bash benchmarks/cpu.sh [OUTDIR]   (default benchmarks/results/cpu-<hostname>)
# On a CPU with AMX, add the issue's 1024 row: openhart bench --size 1024 --dtype bf16 --json ...
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/cpu-$(hostname)}
mkdir -p "$out"
bench() { .venv/bin/openhart bench "$@"; }
bench --size 256 --dtype bf16 --warmup 1 --repeats 3 --profile --json "$out/256-bf16.json"
bench --size 512 --dtype bf16 --warmup 1 --repeats 2 --profile --json "$out/512-bf16.json"
OPENHART_MALLOC=system bench --size 512 --dtype bf16 --warmup 1 --repeats 2 --json "$out/512-bf16-system-malloc.json"
bench --size 512 --dtype fp32 --warmup 1 --repeats 1 --profile --json "$out/512-fp32.json"
.venv/bin/python benchmarks/memory.py --size 1024 --dtype bf16 --low-memory --json "$out/memory-1024-bf16-low-memory.json"
.venv/bin/python benchmarks/memory.py --size 1024 --dtype bf16 --json "$out/memory-1024-bf16.json"
