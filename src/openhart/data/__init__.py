"""Training data: image-caption datasets and their preprocessing."""

from .datasets import ImageCaptionFolder, Sample, TarShards, epoch_order

__all__ = ["ImageCaptionFolder", "Sample", "TarShards", "epoch_order"]
