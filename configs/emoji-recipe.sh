#!/usr/bin/env bash
# The recipe of the shipped default model (src/openhart/models/openhart-emoji-64), end to end on
# one CPU: the emoji dataset, the tokenizer, the latent caches (training and held-out), the
# transformer + residual head, the export (weights stored as fp16), the evaluation.
# Run from the repository root after the README's first command.
# Usage: bash configs/emoji-recipe.sh [OUT_MODEL_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out_model=${1:-runs/openhart-emoji-64}
bin=.venv/bin
[ -d data/emoji ] || $bin/openhart data emoji data/emoji
time $bin/openhart train tokenizer --config configs/emoji-tokenizer.json
for split in train heldout; do
  cache=cache/emoji-64$([ $split = heldout ] && echo -heldout || true)
  [ -d "$cache" ] || time $bin/openhart cache --data data/emoji/$split --tokenizer runs/emoji-tokenizer/model \
      --text-encoder all-MiniLM-L6-v2 --resolution 64 --context-tokens 24 --out "$cache"
done
time $bin/openhart train transformer --config configs/emoji-transformer.json
$bin/openhart export runs/emoji-transformer "$out_model" --dtype fp16 --overwrite
$bin/openhart eval --model "$out_model" --data data/emoji/heldout --train-data data/emoji/train --out eval/emoji
