"""The generalized Gaussian entropy model of HPCM (ICCV 2025, §3.3; docs/design.md §2).

Each residual r = y - mu is modelled by a zero-mean generalized Gaussian GG(alpha, beta) with density
f(r) = beta / (2 alpha Gamma(1/beta)) exp(-(|r| / alpha)^beta) and beta = 1.5 fixed. The discrete likelihood of
a quantized residual is P(r_hat) = F((r_hat + 1/2) / alpha) - F((r_hat - 1/2) / alpha), with the standardized CDF

    F(u) = 1/2 + sign(u) / 2 * P(1/beta, |u|^beta)       (P: the regularized lower incomplete gamma function)

The gradient of P with respect to its second argument behaves like t^(1/beta - 1) at t = 0 and autograd yields
inf * 0 = NaN there, so F has a hand-written backward: dF/du = f(u) (with alpha = 1), finite everywhere.

Both conditionals subclass CompressAI's GaussianConditional, so CompressAI's CDF-table construction, symbol
indexing and rANS coding are reused unchanged; only the standardized CDF and quantile are replaced.
"""

from __future__ import annotations

import math

import scipy.special
import torch
from compressai.entropy_models import GaussianConditional

BETA = 1.5
SCALE_FLOOR = 0.12
LIKELIHOOD_FLOOR = 1e-9


class _GGMCdf(torch.autograd.Function):
    """Standardized GG CDF F(u) with the analytic derivative f(u) (finite at u = 0, unlike autograd's)."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, beta: float) -> torch.Tensor:
        a = torch.full_like(u, 1.0 / beta)
        t = u.abs().pow(beta)
        # Lower tail via the complementary function keeps precision far from the mode (as CompressAI's erfc).
        lower_tail = 0.5 * torch.special.gammaincc(a, t)
        cdf = torch.where(u < 0, lower_tail, 1.0 - lower_tail)
        ctx.save_for_backward(u)
        ctx.beta = beta
        return cdf

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (u,) = ctx.saved_tensors
        beta = ctx.beta
        norm = beta / (2.0 * math.gamma(1.0 / beta))
        density = norm * torch.exp(-u.abs().pow(beta))
        return grad_out * density, None


def ggm_cdf(u: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """F(u) of the standardized (alpha = 1) zero-mean generalized Gaussian, differentiable everywhere."""
    return _GGMCdf.apply(u, beta)


def default_scale_table(lo: float = SCALE_FLOOR, hi: float = 256.0, levels: int = 256) -> list[float]:
    """Log-spaced alpha values for the y CDF tables (ratio ~1.05 between levels, so coding with the next
    table scale above the predicted one costs well under 1 % of rate)."""
    return torch.exp(torch.linspace(math.log(lo), math.log(hi), levels)).tolist()


class GeneralizedGaussianConditional(GaussianConditional):
    """GaussianConditional with the generalized Gaussian (beta = 1.5) in place of the normal distribution.

    ``scales`` are the alpha parameters; they are floored at 0.12 with CompressAI's LowerBound (which lets the
    gradient push a too-small scale back up) and likelihoods at 1e-9.
    """

    def __init__(self, scale_table=None, beta: float = BETA, **kwargs) -> None:
        kwargs.setdefault("scale_bound", SCALE_FLOOR)
        kwargs.setdefault("likelihood_bound", LIKELIHOOD_FLOOR)
        super().__init__(scale_table, **kwargs)
        self.beta = float(beta)

    def _standardized_cumulative(self, inputs: torch.Tensor) -> torch.Tensor:
        return ggm_cdf(inputs, self.beta)

    def _standardized_quantile(self, quantile: float) -> float:
        # F(u) = q for q < 1/2: 1/2 Q(1/beta, |u|^beta) = q.
        a = 1.0 / self.beta
        return -float(scipy.special.gammainccinv(a, 2.0 * quantile)) ** (1.0 / self.beta)

    def likelihood(self, residual: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """P(residual) for an (already quantized or noisy) zero-mean residual, floored at 1e-9.

        Computed in float32 at least (under bf16/fp16 autocast too): the incomplete gamma function has no
        half-precision kernels, and rates need the precision anyway."""
        dtype = torch.promote_types(torch.promote_types(residual.dtype, scales.dtype), torch.float32)
        with torch.autocast(residual.device.type, enabled=False):
            like = self._likelihood(residual.to(dtype), scales.to(dtype))
            if self.use_likelihood_bound:
                like = self.likelihood_lower_bound(like)
        return like


class ChannelGGConditional(GeneralizedGaussianConditional):
    """The hyper-latent model: z - means_hyper ~ GG(scales_hyper[c], 1.5) per channel c.

    There is no EntropyBottleneck (and so no auxiliary loss): its CDF tables are one per channel, built from
    the current ``scales_hyper`` by :meth:`update_channels`, and a symbol's table index is its channel.
    """

    def update_channels(self, scales: torch.Tensor) -> None:
        scales = self.lower_bound_scale(scales.detach().reshape(-1).float())
        # Bypass the sorted-table check of update_scale_table: tables are indexed by channel, not by scale.
        self.scale_table = scales.to(self.scale_table.device)
        self.update()

    def channel_indexes(self, size: torch.Size) -> torch.Tensor:
        n, c = size[0], size[1]
        idx = torch.arange(c, dtype=torch.int32).view(1, c, *([1] * (len(size) - 2)))
        return idx.expand(n, c, *size[2:])
