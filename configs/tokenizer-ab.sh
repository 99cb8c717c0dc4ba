#!/usr/bin/env bash
# Short A/B runs of the emoji tokenizer (issue #24, item 3): each variant of
# configs/emoji-tokenizer.json trains for STEPS steps and is measured by `openhart eval-tokenizer`
# (PSNR, SSIM, rFID and the retrieval ceiling of its reconstructions, strict and grouped).
# Run from the repository root after the README's first command.
# Usage: bash configs/tokenizer-ab.sh STEPS VARIANT [VARIANT ...]
#   variants: base (the shipped tokenizer's config), ch32 (32 latent channels at 8x8),
#             lat16 (a 16x16 latent, scales up to 16), vocab2048 (a 2048-entry codebook)
# Writes runs/tok-ab-STEPS-VARIANT and eval/tok-ab-STEPS-VARIANT/results.json. A run checkpoints every
# 300 steps; run the same command again to resume a stopped one.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,9p "$0" >&2; exit 2; }
steps=$1; shift
bin=.venv/bin
[ -d data/emoji ] || $bin/openhart data emoji data/emoji
for variant in "$@"; do
  case $variant in
    base) sets=() ;;
    ch32) sets=(--set model.latent_channels=32) ;;
    lat16) sets=(--set 'model.channel_mult=[1,2,4]' --set 'model.patch_nums=[1,2,3,4,6,8,11,16]') ;;
    vocab2048) sets=(--set model.vocab_size=2048) ;;
    *) echo "unknown variant $variant: use base, ch32, lat16 or vocab2048" >&2; exit 2 ;;
  esac
  name=tok-ab-$steps-$variant
  time $bin/openhart train tokenizer --config configs/emoji-tokenizer.json --set run.output_dir=runs/$name \
      --set run.steps=$steps --set run.checkpoint_every=300 --set run.sample_every=$steps "${sets[@]}"
  $bin/openhart eval-tokenizer runs/$name/model --data data/emoji/heldout --train-data data/emoji/train \
      --out eval/$name --quiet
done
