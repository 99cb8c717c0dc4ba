#!/usr/bin/env bash
# One prepared GPU check of issue #4: `openhart bench` at 1024 px on CUDA, batch 1 and 8, in
# bf16 and fp16, plus 512/256 px, each row in its own process (JSON + log under $OUT or ./bench-gpu).
# Runs from the repository root with whatever python3 holds a CUDA PyTorch; nothing is installed.
set -uo pipefail
out=${OUT:-bench-gpu}
mkdir -p "$out"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"
bench() {  # name, then openhart bench arguments
    local name=$1; shift
    echo "== $name: openhart bench $*"
    timeout 240 python3 -m openhart bench --device cuda --json "$out/$name.json" "$@" 2>&1 | tee -a "$out/log.txt"
}
bench tiny --preset tiny --warmup 0 --repeats 1 --dtype bf16
bench 1024-bf16-b1 --size 1024 --dtype bf16 --batch 1 --warmup 1 --repeats 5
bench 1024-bf16-b8 --size 1024 --dtype bf16 --batch 8 --warmup 1 --repeats 3
bench 1024-fp16-b1 --size 1024 --dtype fp16 --batch 1 --warmup 1 --repeats 5
bench 512-bf16-b1 --size 512 --dtype bf16 --batch 1 --warmup 1 --repeats 5
bench 256-bf16-b1 --size 256 --dtype bf16 --batch 1 --warmup 1 --repeats 5
