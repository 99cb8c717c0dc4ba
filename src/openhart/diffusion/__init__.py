"""The residual diffusion head, its schedule and its sampler."""

from .head import DiffusionHead
from .sampler import DiffusionNoise, sample_residual
from .schedule import DiffusionSchedule

__all__ = ["DiffusionHead", "DiffusionNoise", "DiffusionSchedule", "sample_residual"]
