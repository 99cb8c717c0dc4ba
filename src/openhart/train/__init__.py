"""Training: losses (more to come: trainer, checkpoints, parallelism)."""
