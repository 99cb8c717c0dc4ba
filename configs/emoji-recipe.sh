#!/usr/bin/env bash
# The recipe of the shipped default model (src/openhart/models/openhart-emoji-64), end to end on
# one CPU: the emoji dataset, the tokenizer, the latent cache, the transformer + residual head,
# the evaluation. Run from the repository root after the README's first command.
# Usage: bash configs/emoji-recipe.sh [OUT_MODEL_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out_model=${1:-runs/openhart-emoji-64}
bin=.venv/bin
[ -d data/emoji ] || $bin/openhart data emoji data/emoji
time $bin/openhart train tokenizer --config configs/emoji-tokenizer.json
[ -d cache/emoji-64 ] || time $bin/openhart cache --data data/emoji/train --tokenizer runs/emoji-tokenizer/model \
    --text-encoder all-MiniLM-L6-v2 --resolution 64 --context-tokens 24 --out cache/emoji-64
time $bin/openhart train transformer --config configs/emoji-transformer.json
$bin/openhart export runs/emoji-transformer "$out_model" --overwrite
$bin/openhart eval --model "$out_model" --data data/emoji/heldout --out eval/emoji
