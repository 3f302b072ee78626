"""Shared fakes for tests and benchmarks: a tiny compression model, a toy multi-task problem, a fake image folder.

They follow the real interfaces (CompressAI's model output, the objectives' named task losses, CompressAI's
ImageFolder layout) so a test written against a fake exercises the same code paths as the real thing.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hpcm_tune.metrics import LIKELIHOOD_KEYS


class TinyCompressionModel(nn.Module):
    """A ~2k-parameter stand-in for HPCM with the same output contract.

    ``forward(x)`` returns ``{"x_hat", "likelihoods": {"y_s1", "y_s2", "y_s3", "z"}}``: y (stride 4) is split
    by channel into three "scales" and z is a global code, each with a Gaussian likelihood of a quantized
    (noisy in training) latent, so rates are differentiable and partition exactly as HPCM's do.
    """

    pad_multiple = 4

    def __init__(self, channels: int = 6) -> None:
        super().__init__()
        if channels % 3:
            raise ValueError(f"channels must be a multiple of 3, got {channels}")
        self.channels = channels
        self.g_a = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.LeakyReLU(),
                                 nn.Conv2d(8, channels, 3, stride=2, padding=1))
        self.g_s = nn.Sequential(nn.ConvTranspose2d(channels, 8, 4, stride=2, padding=1), nn.LeakyReLU(),
                                 nn.ConvTranspose2d(8, 3, 4, stride=2, padding=1))
        self.log_scales = nn.Parameter(torch.zeros(channels))
        self.z_log_scale = nn.Parameter(torch.zeros(1))

    @staticmethod
    def _quantize(v: torch.Tensor, training: bool) -> torch.Tensor:
        if training:
            return v + torch.empty_like(v).uniform_(-0.5, 0.5)
        return torch.round(v)

    @staticmethod
    def _likelihood(v_hat: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        normal = torch.distributions.Normal(torch.zeros_like(v_hat), scale.clamp_min(0.11))
        return (normal.cdf(v_hat + 0.5) - normal.cdf(v_hat - 0.5)).clamp_min(1e-9)

    def forward(self, x: torch.Tensor) -> dict:
        y = self.g_a(x)
        y_hat = self._quantize(y, self.training)
        scales = self.log_scales.exp().view(1, -1, 1, 1).expand_as(y_hat)
        likelihoods = self._likelihood(y_hat, scales)
        z = y.mean(dim=(2, 3), keepdim=True)
        z_hat = self._quantize(z, self.training)
        z_likelihoods = self._likelihood(z_hat, self.z_log_scale.exp().expand_as(z_hat))
        c = self.channels // 3
        parts = (likelihoods[:, :c], likelihoods[:, c : 2 * c], likelihoods[:, 2 * c :], z_likelihoods)
        x_hat = self.g_s(y_hat).clamp(0, 1) if not self.training else self.g_s(y_hat)
        return {"x_hat": x_hat, "likelihoods": dict(zip(LIKELIHOOD_KEYS, parts, strict=True))}


class ToyMultiTask(nn.Module):
    """Two (or more) quadratic tasks of very different scales sharing one parameter vector.

    L_i(theta) = scale_i * ||theta - target_i||^2. With scales (1, 100) plain summation is dominated by the
    large task; a balanced weighting should even out the tasks' relative improvement rates.
    """

    def __init__(self, scales: tuple[float, ...] = (1.0, 100.0), dim: int = 4, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.task_names = tuple(f"task{i}" for i in range(len(scales)))
        self.register_buffer("scales", torch.tensor(scales, dtype=torch.float64))
        self.register_buffer("targets", torch.randn(len(scales), dim, generator=gen, dtype=torch.float64))
        self.theta = nn.Parameter(torch.zeros(dim, dtype=torch.float64))

    def forward(self) -> dict[str, torch.Tensor]:
        return {
            name: self.scales[i] * (self.theta - self.targets[i]).pow(2).sum()
            for i, name in enumerate(self.task_names)
        }


class ToyRateDistortion(nn.Module):
    """A one-parameter rate-distortion toy: a 'step size' s trades rate R(s) = log2(1 + 1/s^2) against
    distortion D(s) = s^2 / 12 (uniform quantization). The R-D optimum moves to lower D as lambda grows."""

    def __init__(self, init_log_step: float = 0.0) -> None:
        super().__init__()
        self.log_step = nn.Parameter(torch.tensor(float(init_log_step), dtype=torch.float64))

    def forward(self) -> dict[str, torch.Tensor]:
        step = self.log_step.exp()
        return {"distortion": step.pow(2) / 12.0, "bpp": torch.log2(1.0 + 1.0 / step.pow(2))}


def random_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth, photo-like uint8 RGB image (low-frequency waves plus a little noise), deterministic in seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.zeros((height, width, 3))
    for c in range(3):
        for _ in range(4):
            fy, fx, phase = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(0, 2 * math.pi)
            img[..., c] += np.sin(2 * math.pi * (fy * yy / height + fx * xx / width) + phase)
    img = (img - img.min()) / (np.ptp(img) + 1e-9) * 220 + 20 + rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image_folder(
    root: str | Path,
    n_train: int = 4,
    n_test: int = 2,
    size: tuple[int, int] = (96, 128),
    corrupt: int = 0,
    small: int = 0,
) -> Path:
    """Write a CompressAI ImageFolder tree (root/train, root/test) of PNG photos.

    ``corrupt`` extra unreadable files and ``small`` extra 16x16 images go into train/, for the data
    loader's warnings.
    """
    from PIL import Image

    root = Path(root)
    for split, count, offset in (("train", n_train, 0), ("test", n_test, 1000)):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(random_photo(*size, seed=offset + i)).save(folder / f"img{i:03d}.png")
    for i in range(corrupt):
        (root / "train" / f"corrupt{i}.png").write_bytes(b"not a png at all")
    for i in range(small):
        Image.fromarray(random_photo(16, 16, seed=500 + i)).save(root / "train" / f"small{i}.png")
    return root
