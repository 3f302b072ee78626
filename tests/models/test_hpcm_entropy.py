"""The generalized Gaussian entropy model: CDF, hand-written backward, floors, CDF tables (docs/design.md §2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from hpcm_tune.models.entropy import (
    LIKELIHOOD_FLOOR,
    SCALE_FLOOR,
    ChannelGGConditional,
    GeneralizedGaussianConditional,
    default_scale_table,
    ggm_cdf,
)


def test_cdf_matches_scipy_gennorm():
    u = torch.linspace(-8, 8, 161, dtype=torch.float64)
    expected = scipy.stats.gennorm.cdf(u.numpy(), 1.5)
    np.testing.assert_allclose(ggm_cdf(u).numpy(), expected, rtol=1e-10, atol=1e-14)


def test_backward_is_the_density_and_finite_at_zero():
    u = torch.tensor([0.0, -0.0, 1e-12, 0.3, -2.0, 9.0], dtype=torch.float64, requires_grad=True)
    ggm_cdf(u).sum().backward()
    assert torch.isfinite(u.grad).all()
    np.testing.assert_allclose(u.grad.numpy(), scipy.stats.gennorm.pdf(u.detach().numpy(), 1.5), rtol=1e-10)
    # Plain autograd through the incomplete gamma function is NaN at 0: the reason for the custom backward.
    v = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    torch.special.gammainc(torch.tensor(2 / 3, dtype=torch.float64), v.abs() ** 1.5).sum().backward()
    assert torch.isnan(v.grad).all()


def test_gradcheck():
    u = torch.tensor([-1.7, -0.2, 0.4, 2.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ggm_cdf(t), (u,))


@pytest.mark.parametrize("scale", [0.12, 0.7, 3.0, 40.0])
def test_likelihoods_sum_to_one_over_integers(scale):
    model = GeneralizedGaussianConditional(None)
    k = torch.arange(-600, 601, dtype=torch.float64)
    like = model.likelihood(k, torch.full_like(k, scale))
    assert abs(like.sum().item() - 1.0) < 1e-5  # plus the 1e-9 floor of each far integer


def test_floors():
    model = GeneralizedGaussianConditional(None)
    r = torch.tensor([0.0, 1.0, 3.0])
    tiny = model.likelihood(r, torch.full_like(r, 1e-3))
    floor = model.likelihood(r, torch.full_like(r, SCALE_FLOOR))
    assert torch.equal(tiny, floor)
    far = model.likelihood(torch.tensor([500.0]), torch.tensor([0.5]))
    assert far.item() == pytest.approx(LIKELIHOOD_FLOOR)


def test_gradients_through_likelihood_are_finite_at_zero_residual():
    model = GeneralizedGaussianConditional(None)
    r = torch.zeros(8, requires_grad=True)
    s = torch.linspace(0.05, 5.0, 8).requires_grad_(True)
    (-torch.log2(model.likelihood(r, s))).sum().backward()
    assert torch.isfinite(r.grad).all() and torch.isfinite(s.grad).all()
    assert s.grad[-1] > 0  # a wider distribution costs more bits at r = 0
    assert s.grad[0] == 0  # below the floor, LowerBound blocks a gradient that would push the scale down...
    r2 = torch.full((1,), 3.0)
    s2 = torch.full((1,), 0.05, requires_grad=True)
    (-torch.log2(model.likelihood(r2, s2))).sum().backward()
    assert s2.grad[0] < 0  # ...and lets through one that pushes it back up


def test_quantile_inverts_cdf():
    model = GeneralizedGaussianConditional(None)
    for q in (1e-9, 1e-4, 0.2):
        u = model._standardized_quantile(q)
        assert ggm_cdf(torch.tensor(u, dtype=torch.float64)).item() == pytest.approx(q, rel=1e-6)


def test_scale_table_tables_and_round_trip():
    model = GeneralizedGaussianConditional(None)
    table = default_scale_table()
    assert table[0] == pytest.approx(SCALE_FLOOR) and all(b / a < 1.04 for a, b in zip(table, table[1:]))
    model.update_scale_table(table, force=True)
    torch.manual_seed(0)
    scales = torch.rand(1, 4, 8, 8) * 10
    values = torch.round(torch.randn(1, 4, 8, 8) * scales)
    values[0, 0, 0, 0] = 10_000  # far outside the tables: escape (bypass) coding
    idx = model.build_indexes(scales)
    strings = model.compress(values, idx)
    decoded = model.decompress(strings, idx)
    assert torch.equal(decoded, values)


def test_channel_tables_follow_scales_hyper():
    z_model = ChannelGGConditional(None)
    scales = torch.tensor([0.01, 0.5, 4.0, 30.0])
    z_model.update_channels(scales)
    assert z_model._quantized_cdf.shape[0] == 4
    assert torch.allclose(z_model.scale_table, scales.clamp_min(SCALE_FLOOR))
    values = torch.tensor([[[[0.0]], [[1.0]], [[-5.0]], [[40.0]]]])
    idx = z_model.channel_indexes(values.shape)
    assert idx.view(-1).tolist() == [0, 1, 2, 3]
    assert torch.equal(z_model.decompress(z_model.compress(values, idx), idx), values)
    assert math.isfinite(z_model._standardized_quantile(1e-9))
