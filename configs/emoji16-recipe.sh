#!/usr/bin/env bash
# A candidate recipe for the next shipped model (issue #24): the 16x16-latent tokenizer (507
# tokens) and the transformer trained progressively, as HART trains its own: first at 32 px (the
# first 6 scales, 130 tokens, four times cheaper per image), then at 64 px from those weights.
# Stages: the emoji dataset, the tokenizer, the latent caches (64 px training and held-out, 32 px
# training), the two transformer stages, the export (fp16), the evaluation. Each stage is skipped
# when its result exists, and a stopped training run resumes from its last checkpoint.
# Run from the repository root after the README's first command.
# Usage: bash configs/emoji16-recipe.sh [OUT_MODEL_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out_model=${1:-runs/openhart-emoji16-64}
bin=.venv/bin
[ -d data/emoji ] || $bin/openhart data emoji data/emoji
[ -f runs/emoji16-tokenizer/model/config.json ] ||
  time $bin/openhart train tokenizer --config configs/emoji16-tokenizer.json
for spec in train:64:cache/emoji16-64 heldout:64:cache/emoji16-64-heldout train:32:cache/emoji16-32; do
  IFS=: read -r split resolution cache <<<"$spec"
  [ -d "$cache" ] || time $bin/openhart cache --data data/emoji/$split --tokenizer runs/emoji16-tokenizer/model \
      --text-encoder all-MiniLM-L6-v2 --resolution "$resolution" --context-tokens 24 --out "$cache"
done
[ -f runs/emoji16-stage32/checkpoints/ckpt-00001500.pt ] ||
  time $bin/openhart train transformer --config configs/emoji16-stage32.json
[ -f runs/emoji16-stage64/checkpoints/ckpt-00000900.pt ] ||
  time $bin/openhart train transformer --config configs/emoji16-stage64.json
$bin/openhart export runs/emoji16-stage64 "$out_model" --dtype fp16 --overwrite
$bin/openhart eval --model "$out_model" --data data/emoji/heldout --train-data data/emoji/train --out "eval/$(basename "$out_model")" \
    --variants discrete_only,hybrid_consistent_temp0,hybrid_consistent
