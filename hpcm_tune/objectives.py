"""Rate-distortion objectives: the plain R-D loss and its split into named tasks (docs/design.md §3).

Every objective follows CompressAI's convention, L = lambda * D + R with D = 255^2 * MSE (RGB in [0, 1]) or
D = 1 - MS-SSIM, and R the estimated rate in bits per pixel from the model's likelihoods,
R = sum_k -log2 p(y_hat_k) / (N * H * W). What differs is how L is cut into the tasks a weighting method sees:

- ``standard``: two named parts, ``distortion`` = lambda * D and ``bpp`` = R (summed by the ``standard``
  weighting this is exactly CompressAI's loss).
- ``balanced``: the same two tasks, meant for FAMO (Balanced Rate-Distortion Optimization, CVPR 2025).
- ``hierarchical``: five tasks s1_distortion, s1_bpp, s2_distortion, s2_bpp, s3_bpp (HPCM's three coding
  scales, ICCV 2025). ``decomposition="measured"`` (default) takes each scale's real rate from the likelihoods
  of the y elements coded in that scale's steps, counts z's rate in s3 (the original design calls s3 the
  hyperprior scale), and splits the distortion exactly by a two-level orthonormal Haar transform of the error
  x - x_hat into the coarse band (s1_distortion) and the detail bands (s2_distortion); the five tasks then sum
  to the standard loss. ``decomposition="ratio"`` is the original design's fixed fractions
  (0.40 lambda D, 0.30 R, 0.35 lambda D, 0.40 R, 0.30 R): every task is a constant multiple f of D or R, so
  every gradient is a mix of grad D and grad R only: a 2-task method in disguise. Under a log-based weighting
  with min loss -1 (the default) the fractions do not cancel: grad log(1 + f L) = f grad L / (1 + f L), so they
  only rescale lambda_eff (hpcm_tune.metrics.effective_lambda); they cancel from the gradient only with min
  loss 0 (grad log(f L) = grad L / L).

Whatever the objective, the result also carries ``loss`` (the plain lambda * D + R, so runs are comparable),
``bpp``, ``mse``, the measured per-scale parts s1_distortion ... s3_bpp (except in ``ratio`` mode, where
those keys are the ratio tasks being optimized) and the raw rates ``bpp_s1``, ``bpp_s2``, ``bpp_s3``,
``bpp_z``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hpcm_tune.metrics import BALANCED_TASKS, LIKELIHOOD_KEYS, TASKS
from hpcm_tune.registry import Registry

OBJECTIVES: Registry[type[RDObjective]] = Registry("objective")

DISTORTIONS: tuple[str, ...] = ("mse", "ms-ssim")
DECOMPOSITIONS: tuple[str, ...] = ("measured", "ratio")

# The original design's fixed fractions (ratio mode): task -> (multiplies lambda*D?, fraction).
RATIO_FRACTIONS: dict[str, tuple[str, float]] = {
    "s1_distortion": ("distortion", 0.40),
    "s1_bpp": ("bpp", 0.30),
    "s2_distortion": ("distortion", 0.35),
    "s2_bpp": ("bpp", 0.40),
    "s3_bpp": ("bpp", 0.30),
}

# Keys of the raw per-scale rates in the objective's result (bpp_s1, bpp_s2, bpp_s3, bpp_z).
RATE_KEYS: dict[str, str] = {key: f"bpp_{key.removeprefix('y_')}" for key in LIKELIHOOD_KEYS}


def rate_bpp(likelihoods: torch.Tensor, num_pixels: int) -> torch.Tensor:
    """Estimated rate in bits per pixel, sum -log2 p / num_pixels (CompressAI's bpp_loss)."""
    return torch.log(likelihoods).sum() / (-math.log(2) * num_pixels)


def haar_energy_split(error: torch.Tensor, levels: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared energy of the coarse (LL_levels) band and of all detail bands of an orthonormal Haar transform.

    ``error`` is (N, C, H, W); it is zero-padded to a multiple of 2^levels, which adds no energy, and an
    orthonormal transform keeps energy (Parseval), so coarse + detail == ||error||^2 up to rounding.
    """
    mult = 2**levels
    pad_h, pad_w = (-error.shape[-2]) % mult, (-error.shape[-1]) % mult
    band = F.pad(error, (0, pad_w, 0, pad_h)) if pad_h or pad_w else error
    detail = error.new_zeros(())
    for _ in range(levels):
        a, b = band[..., 0::2, 0::2], band[..., 0::2, 1::2]
        c, d = band[..., 1::2, 0::2], band[..., 1::2, 1::2]
        # The three detail bands of one level; /2 makes the 2x2 Haar basis orthonormal.
        detail = detail + ((a - b + c - d) / 2).pow(2).sum() + ((a + b - c - d) / 2).pow(2).sum()
        detail = detail + ((a - b - c + d) / 2).pow(2).sum()
        band = (a + b + c + d) / 2
    return band.pow(2).sum(), detail


def _ms_ssim(x_hat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from pytorch_msssim import ms_ssim  # CompressAI's own MS-SSIM dependency

    return ms_ssim(x_hat, target, data_range=1.0)


@dataclass(frozen=True)
class RDObjective:
    """Base class: lambda * D + R from the model output, cut into ``task_names``.

    Called as ``objective(output, target)`` with ``output = {"x_hat", "likelihoods": {"y_s1", "y_s2",
    "y_s3", "z"}}`` and ``target`` the original x in [0, 1], shape (N, 3, H, W).
    """

    lmbda: float
    distortion: str = "mse"
    # Only the hierarchical objective splits by it; accepted (and validated) by all so one flat config fits all.
    decomposition: str = "measured"

    task_names = BALANCED_TASKS

    def __post_init__(self) -> None:
        if isinstance(self.lmbda, bool) or not isinstance(self.lmbda, int | float) or not math.isfinite(self.lmbda) \
                or self.lmbda <= 0:
            raise ValueError(f"lmbda: got {self.lmbda!r}; must be a finite number > 0")
        if self.distortion not in DISTORTIONS:
            raise ValueError(f"distortion: got {self.distortion!r}; allowed: {', '.join(DISTORTIONS)}")
        if self.decomposition not in DECOMPOSITIONS:
            raise ValueError(
                f"decomposition: got {self.decomposition!r}; allowed: {', '.join(DECOMPOSITIONS)}"
            )

    def measure(self, output: Mapping, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The plain R-D loss and every measured part (no task split beyond the measured one)."""
        likelihoods = output["likelihoods"]
        missing = [k for k in LIKELIHOOD_KEYS if k not in likelihoods]
        if missing:
            raise ValueError(f"model output likelihoods lack {missing}; expected keys {list(LIKELIHOOD_KEYS)}")
        n, _, h, w = target.shape
        num_pixels = n * h * w
        x_hat = output["x_hat"]
        out: dict[str, torch.Tensor] = {}
        for key in LIKELIHOOD_KEYS:
            out[RATE_KEYS[key]] = rate_bpp(likelihoods[key], num_pixels)
        bpp = sum(out[RATE_KEYS[k]] for k in LIKELIHOOD_KEYS)
        error = x_hat - target
        mse = error.pow(2).mean()
        coarse, detail = haar_energy_split(error)
        # Fractions of the squared error in each band; coarse + detail = 1 (Parseval).
        coarse_frac, detail_frac = coarse / error.numel(), detail / error.numel()
        if self.distortion == "mse":
            d = 255.0**2 * mse
            s1_d, s2_d = self.lmbda * 255.0**2 * coarse_frac, self.lmbda * 255.0**2 * detail_frac
        else:
            msssim = _ms_ssim(x_hat, target)
            out["ms_ssim"] = msssim
            d = 1.0 - msssim
            # MS-SSIM has no additive band split: cut lambda*D by the bands' (constant) shares of the error.
            share = (coarse / (coarse + detail).clamp_min(1e-30)).detach()
            s1_d, s2_d = self.lmbda * d * share, self.lmbda * d * (1 - share)
        out.update(
            loss=self.lmbda * d + bpp,
            bpp=bpp,
            mse=mse,
            distortion=self.lmbda * d,
            s1_distortion=s1_d,
            s2_distortion=s2_d,
            s1_bpp=out[RATE_KEYS["y_s1"]],
            s2_bpp=out[RATE_KEYS["y_s2"]],
            s3_bpp=out[RATE_KEYS["y_s3"]] + out[RATE_KEYS["z"]],  # z counted in s3, the "hyperprior scale"
        )
        return out

    def __call__(self, output: Mapping, target: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.measure(output, target)


@OBJECTIVES.register("standard")
@dataclass(frozen=True)
class StandardObjective(RDObjective):
    """CompressAI's L = lambda * D + R as two named parts, ``distortion`` and ``bpp``."""


@OBJECTIVES.register("balanced")
@dataclass(frozen=True)
class BalancedObjective(RDObjective):
    """The two tasks lambda * D and R of Balanced Rate-Distortion Optimization (CVPR 2025)."""


@OBJECTIVES.register("hierarchical")
@dataclass(frozen=True)
class HierarchicalObjective(RDObjective):
    """The five scale tasks of the hierarchical balanced objective (see the module docstring)."""

    task_names = TASKS

    def __call__(self, output: Mapping, target: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.measure(output, target)
        if self.decomposition == "ratio":
            for task, (part, fraction) in RATIO_FRACTIONS.items():
                out[task] = fraction * out[part]
        return out


def build_objective(name: str, lmbda: float, **options) -> RDObjective:
    """``build_objective("hierarchical", 0.0067, decomposition="measured", distortion="mse")``.

    Options: ``distortion`` (mse | ms-ssim; with ms-ssim use CompressAI's MS-SSIM lambdas, e.g. 2.40 ... 60.50)
    and ``decomposition`` (measured | ratio; only ``hierarchical`` splits by it, the others validate and ignore
    it so one flat config serves every objective). ``None`` means the default.
    """
    cls = OBJECTIVES.get(name)
    options = {k: v for k, v in options.items() if v is not None}
    allowed = {"distortion", "decomposition"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"objective {name!r}: unknown option(s) {unknown}; allowed: {sorted(allowed)}")
    return cls(lmbda=lmbda, **options)


__all__ = [
    "DECOMPOSITIONS",
    "DISTORTIONS",
    "OBJECTIVES",
    "RATE_KEYS",
    "RATIO_FRACTIONS",
    "BalancedObjective",
    "HierarchicalObjective",
    "RDObjective",
    "StandardObjective",
    "build_objective",
    "haar_energy_split",
    "rate_bpp",
]
