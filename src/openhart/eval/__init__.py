"""Evaluation reports: `openhart eval`, `eval-curve` and `eval-tokenizer` (FID, KID, retrieval,
reconstruction), built on `openhart.metrics`."""
