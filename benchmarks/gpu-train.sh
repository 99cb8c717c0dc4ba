#!/usr/bin/env bash
# One prepared GPU check of training (issue #5 on CUDA): the tokenizer, the latent cache and the
# transformer + head on the synthetic shapes set, on one CUDA device, in bf16 autocast and fp32,
# the transformer also under torchrun (DDP and FSDP2 with NCCL) where there are several GPUs.
# Runs from the repository root with whatever python3 holds a CUDA PyTorch; nothing is installed.
set -uo pipefail
out=${OUT:-gpu-train}
mkdir -p "$out"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
work=$(mktemp -d)
device=${DEVICE:-cuda}  # DEVICE=cpu STEPS=3 checks the script itself on a CPU
steps=${STEPS:-200}
gpus=$(nvidia-smi -L 2>/dev/null | wc -l); [ "$gpus" -ge 1 ] || gpus=1
oh() { python3 -m openhart "$@"; }
step() { echo "== $*"; local t=$SECONDS; "$@" 2>&1 | tail -n 25; echo "-- ${PIPESTATUS[0]} in $((SECONDS - t)) s"; }
{
step oh data shapes "$work/shapes" --count 512 --size 64
step oh train tokenizer --config configs/tokenizer-shapes.json --quiet --set run.device=$device \
    --set run.precision=bf16 --set run.steps=$steps --set "run.output_dir=$work/tok" --set "data.path=$work/shapes"
step oh cache --data "$work/shapes" --tokenizer "$work/tok/model" --text-encoder random --resolution 64 \
    --context-tokens 16 --context-dim 64 --out "$work/cache" --device $device --quiet
for precision in bf16 fp32; do
    step oh train transformer --config configs/transformer-shapes.json --quiet --set run.device=$device \
        --set run.precision=$precision --set run.steps=$steps --set "run.output_dir=$work/tf-$precision" \
        --set "cache=$work/cache" --set run.sample_every=0
done
# DDP / FSDP need one process per GPU (NCCL refuses two ranks on one device); with one process
# the run is the plain single-device one above.
for parallel in $([ "$gpus" -ge 2 ] && echo ddp fsdp); do
    step torchrun --standalone --nproc_per_node "$gpus" -m openhart train transformer \
        --config configs/transformer-shapes.json --quiet --set run.device=$device --set run.precision=bf16 \
        --set run.parallel=$parallel --set run.steps=$((steps / 2)) --set "run.output_dir=$work/tf-$parallel" \
        --set "cache=$work/cache" --set run.sample_every=0
done
for run in tok tf-bf16 tf-fp32 $([ "$gpus" -ge 2 ] && echo tf-ddp tf-fsdp); do
    echo "== $run metrics (first, last)"; head -n 1 "$work/$run/metrics.jsonl"; tail -n 1 "$work/$run/metrics.jsonl"
done
step oh generate "a red circle" --model "$work/tf-bf16/model" --device $device --seed 0 --out "$out/red-circle.png"
} 2>&1 | tee "$out/train-log.txt"
