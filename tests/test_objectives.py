"""The R-D objectives: CompressAI's convention, the exact measured 5-task split, the ratio degeneracy."""

from __future__ import annotations

import math

import pytest
import torch

from hpcm_tune.metrics import BALANCED_TASKS, LIKELIHOOD_KEYS, TASKS
from hpcm_tune.objectives import OBJECTIVES, RATIO_FRACTIONS, build_objective, haar_energy_split
from hpcm_tune.testing import TinyCompressionModel


@pytest.fixture
def batch() -> tuple[dict, torch.Tensor]:
    torch.manual_seed(0)
    model = TinyCompressionModel()
    x = torch.rand(2, 3, 36, 44)
    return model(x), x


def test_registry_names_and_unknown_name() -> None:
    assert set(OBJECTIVES.names()) == {"standard", "balanced", "hierarchical"}
    with pytest.raises(ValueError, match="balanced, hierarchical, standard"):
        build_objective("hierarchial", 0.01)


@pytest.mark.parametrize(
    "kwargs, key",
    [({"lmbda": 0.0}, "lmbda"), ({"lmbda": float("nan")}, "lmbda"), ({"lmbda": 0.01, "distortion": "l1"},
     "distortion"), ({"lmbda": 0.01, "decomposition": "fixed"}, "decomposition"),
     ({"lmbda": 0.01, "weights": 3}, "weights")],
)
def test_bad_options_name_the_key(kwargs: dict, key: str) -> None:
    lmbda = kwargs.pop("lmbda")
    with pytest.raises(ValueError, match=key):
        build_objective("hierarchical", lmbda, **kwargs)


def test_standard_is_compressai_convention(batch) -> None:
    output, x = batch
    lmbda = 0.0067
    out = build_objective("standard", lmbda)(output, x)
    n, _, h, w = x.shape
    bpp = sum(torch.log(output["likelihoods"][k]).sum() for k in LIKELIHOOD_KEYS) / (-math.log(2) * n * h * w)
    mse = torch.mean((output["x_hat"] - x) ** 2)
    expected = lmbda * 255**2 * mse + bpp
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["bpp"], bpp)
    torch.testing.assert_close(out["mse"], mse)
    # The named parts sum to the loss.
    assert build_objective("standard", lmbda).task_names == BALANCED_TASKS
    torch.testing.assert_close(out["distortion"] + out["bpp"], expected)


@pytest.mark.parametrize("name", ["standard", "balanced", "hierarchical"])
def test_every_objective_reports_the_five_measured_parts(batch, name: str) -> None:
    output, x = batch
    out = build_objective(name, 0.013)(output, x)
    for key in (*TASKS, "loss", "bpp", "mse", "bpp_s1", "bpp_s2", "bpp_s3", "bpp_z"):
        assert key in out and torch.isfinite(out[key])


def test_measured_five_tasks_sum_to_standard_loss(batch) -> None:
    output, x = batch
    objective = build_objective("hierarchical", 0.0483)
    out = objective(output, x)
    assert objective.task_names == TASKS
    total = sum(out[t] for t in TASKS)
    assert abs(total.item() / out["loss"].item() - 1) < 1e-6
    # z's rate is counted in s3; the rates partition the total bpp.
    torch.testing.assert_close(out["s3_bpp"], out["bpp_s3"] + out["bpp_z"])
    torch.testing.assert_close(out["s1_bpp"] + out["s2_bpp"] + out["s3_bpp"], out["bpp"])
    # Both distortion bands carry a real, different share (not a fixed ratio).
    assert out["s1_distortion"] > 0 and out["s2_distortion"] > 0


def test_measured_sum_holds_for_sizes_not_multiple_of_four() -> None:
    torch.manual_seed(1)
    x = torch.rand(1, 3, 21, 30)
    output = {"x_hat": x + 0.1 * torch.randn_like(x),
              "likelihoods": {k: torch.rand(1, 4, 5, 7).clamp_min(1e-3) for k in LIKELIHOOD_KEYS}}
    out = build_objective("hierarchical", 0.0018)(output, x)
    assert abs(sum(out[t] for t in TASKS).item() / out["loss"].item() - 1) < 1e-6


def test_haar_split_is_orthonormal_and_separates_frequencies() -> None:
    torch.manual_seed(2)
    e = torch.randn(2, 3, 16, 20, dtype=torch.float64)
    coarse, detail = haar_energy_split(e)
    torch.testing.assert_close(coarse + detail, e.pow(2).sum())
    # A constant error is all coarse; a checkerboard is all detail.
    const = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    c, d = haar_energy_split(const)
    assert d.item() == pytest.approx(0.0, abs=1e-12) and c.item() == pytest.approx(64.0)
    checker = (-1.0) ** (torch.arange(8).view(-1, 1) + torch.arange(8).view(1, -1)).double()
    c, d = haar_energy_split(checker.view(1, 1, 8, 8))
    assert c.item() == pytest.approx(0.0, abs=1e-12) and d.item() == pytest.approx(64.0)


def test_measured_tasks_have_their_own_gradients(batch) -> None:
    output, x = batch
    out = build_objective("hierarchical", 0.0067)(output, x)
    g1 = torch.autograd.grad(out["s1_distortion"], output["x_hat"], retain_graph=True)[0].flatten()
    g2 = torch.autograd.grad(out["s2_distortion"], output["x_hat"], retain_graph=True)[0].flatten()
    cosine = torch.nn.functional.cosine_similarity(g1, g2, dim=0)
    assert cosine.abs() < 0.5  # different bands, nearly orthogonal directions


def test_ratio_decomposition_is_two_tasks_in_disguise(batch) -> None:
    """With ratio, both distortion tasks (and all three rate tasks) share one gradient direction."""
    output, x = batch
    lmbda = 0.0067
    out = build_objective("hierarchical", lmbda, decomposition="ratio")(output, x)
    std = build_objective("standard", lmbda)(output, x)
    for task, (part, fraction) in RATIO_FRACTIONS.items():
        torch.testing.assert_close(out[task], fraction * std[part])
    g1 = torch.autograd.grad(out["s1_distortion"], output["x_hat"], retain_graph=True)[0].flatten()
    g2 = torch.autograd.grad(out["s2_distortion"], output["x_hat"], retain_graph=True)[0].flatten()
    assert torch.nn.functional.cosine_similarity(g1, g2, dim=0).item() == pytest.approx(1.0, abs=1e-6)
    # Under a log weighting, grad log(c * D) = grad D / D: identical for both tasks.
    torch.testing.assert_close(g1 / out["s1_distortion"], g2 / out["s2_distortion"])
    # The plain loss is still the standard one, so runs stay comparable.
    torch.testing.assert_close(out["loss"], std["loss"])


def test_ms_ssim_uses_compressai_convention() -> None:
    from pytorch_msssim import ms_ssim

    torch.manual_seed(3)
    x = torch.rand(1, 3, 176, 176)
    x_hat = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    output = {"x_hat": x_hat, "likelihoods": {k: torch.full((1, 2, 11, 11), 0.5) for k in LIKELIHOOD_KEYS}}
    lmbda = 8.73
    out = build_objective("hierarchical", lmbda, distortion="ms-ssim")(output, x)
    expected_d = 1 - ms_ssim(x_hat, x, data_range=1.0)
    torch.testing.assert_close(out["loss"], lmbda * expected_d + out["bpp"])
    assert abs(sum(out[t] for t in TASKS).item() / out["loss"].item() - 1) < 1e-6
