#!/usr/bin/env bash
# A candidate for the next shipped model (issue #24): the shipped recipe (configs/emoji-recipe.sh)
# with three changes: a 2,048-entry codebook (the tokenizer A/B's `vocab2048`, whose discrete-only
# ceiling is 32.8% strict top-5 against 29.4%: docs/results.md §6), the transformer compiled, and
# 4000 steps (37 epochs) instead of 4500, so that the recipe fits 2.5 h on a 2-core AVX2 CPU in
# fp32 (tokenizer 40 min at 0.99 s/step, transformer about 104 min at 1.56 s/step).
# Each stage is skipped when its result exists, and a stopped training run resumes from its last
# checkpoint: run the same command again.
# Run from the repository root after the README's first command.
# Usage: bash configs/emoji-v2048-recipe.sh [OUT_MODEL_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out_model=${1:-runs/openhart-emoji-v2048-64}
bin=.venv/bin
tokenizer=runs/emoji-v2048-tokenizer
[ -d data/emoji ] || $bin/openhart data emoji data/emoji
[ -f $tokenizer/model/config.json ] ||
  time $bin/openhart train tokenizer --config configs/emoji-tokenizer.json --set run.output_dir=$tokenizer \
      --set model.vocab_size=2048
for split in train heldout; do
  cache=cache/emoji-v2048-64$([ $split = heldout ] && echo -heldout || true)
  [ -d "$cache" ] || time $bin/openhart cache --data data/emoji/$split --tokenizer $tokenizer/model \
      --text-encoder all-MiniLM-L6-v2 --resolution 64 --context-tokens 24 --out "$cache"
done
[ -f runs/emoji-v2048-transformer/checkpoints/ckpt-00004000.pt ] ||
  time $bin/openhart train transformer --config configs/emoji-transformer.json \
      --set run.output_dir=runs/emoji-v2048-transformer --set run.compile=true --set run.steps=4000 \
      --set cache=cache/emoji-v2048-64 --set heldout_cache=cache/emoji-v2048-64-heldout
$bin/openhart export runs/emoji-v2048-transformer "$out_model" --dtype fp16 --overwrite
$bin/openhart eval --model "$out_model" --data data/emoji/heldout --train-data data/emoji/train \
    --out "eval/$(basename "$out_model")" --variants discrete_only,hybrid_consistent_temp0,hybrid_consistent
