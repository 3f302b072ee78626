import math

import pytest

from hpcm_tune import metrics


def test_task_names_match_the_original_design_and_map_to_scales():
    assert metrics.TASKS == ("s1_distortion", "s1_bpp", "s2_distortion", "s2_bpp", "s3_bpp")
    assert set(metrics.TASK_SCALE) == set(metrics.TASKS)
    assert set(metrics.TASK_SCALE.values()) == set(metrics.SCALES)


def test_metric_names_are_the_published_ones():
    assert metrics.WEIGHTS["s2_bpp"] == "weights/s2_bpp"
    assert metrics.TRAIN_TASKS["s1_distortion"] == "train/s1_distortion"
    assert metrics.GAMMA["s3"] == "gamma/s3"
    assert metrics.SCALE_CONTRIB["s1"] == "scale_contrib/s1"
    assert metrics.EVAL_BPP_SCALE["s2"] == "eval/bpp_s2"
    assert len(set(metrics.EVAL_METRICS)) == len(metrics.EVAL_METRICS) == 9


# --- the collapse diagnostics -----------------------------------------------------------------------------


def test_diagnostic_metric_names():
    assert (metrics.TRAIN_LAMBDA_EFF, metrics.EVAL_Y_SHARE, metrics.EVAL_FLAT_PSNR, metrics.EVAL_COLLAPSED) == (
        "train/lambda_eff", "eval/y_share", "eval/flat_psnr", "eval/collapsed")
    # Not among EVAL_METRICS: analysis code that reads those sees the same nine as before.
    assert metrics.EVAL_Y_SHARE not in metrics.EVAL_METRICS


def test_task_kind_of_every_objectives_tasks():
    kinds = {t: metrics.task_kind(t) for t in (*metrics.TASKS, *metrics.BALANCED_TASKS)}
    assert kinds == {"s1_distortion": "distortion", "s2_distortion": "distortion", "distortion": "distortion",
                     "s1_bpp": "bpp", "s2_bpp": "bpp", "s3_bpp": "bpp", "bpp": "bpp"}
    with pytest.raises(ValueError, match="'mse': not a distortion or rate task"):
        metrics.task_kind("mse")
    with pytest.raises(ValueError):
        metrics.task_kind("bppx")


def test_effective_lambda_is_lambda_when_every_coefficient_is_equal():
    losses = {"distortion": 37.5, "bpp": 0.31}
    assert metrics.effective_lambda(0.013, {"distortion": 1.0, "bpp": 1.0}, losses, 37.5, 0.31) == pytest.approx(0.013)
    assert metrics.effective_lambda(0.013, {"distortion": 2.0, "bpp": 2.0}, losses, 37.5, 0.31) == pytest.approx(0.013)


def test_effective_lambda_of_two_famo_tasks_by_hand():
    lmbda, lambda_d, rate, z_d, z_r = 0.0067, 40.0, 0.2, 0.6, 0.4
    a = {"distortion": z_d / (lambda_d + 1), "bpp": z_r / (rate + 1)}  # FAMO with min loss -1
    got = metrics.effective_lambda(lmbda, a, {"distortion": lambda_d, "bpp": rate}, lambda_d, rate)
    assert got == pytest.approx(0.0067 * (0.6 / 0.4) * 1.2 / 41.0, rel=1e-12)
    # lambda * D >> 1 (a model trained from scratch): lambda_eff far below lambda; lambda * D ~ 1: near it.
    assert got < lmbda / 20
    near = metrics.effective_lambda(lmbda, {"distortion": 0.5 / 1.8, "bpp": 0.5 / 1.2},
                                    {"distortion": 0.8, "bpp": 0.2}, 0.8, 0.2)
    assert near == pytest.approx(lmbda * 1.2 / 1.8)


def test_effective_lambda_of_five_tasks_by_hand():
    lmbda = 0.013
    losses = {"s1_distortion": 12.0, "s1_bpp": 0.05, "s2_distortion": 8.0, "s2_bpp": 0.12, "s3_bpp": 0.33}
    z = {"s1_distortion": 0.15, "s1_bpp": 0.15, "s2_distortion": 0.2, "s2_bpp": 0.2, "s3_bpp": 0.3}
    a = {t: z[t] / (losses[t] + 1) for t in losses}
    lambda_d, rate = 20.0, 0.5
    # sum_d a_d L_d / (lambda D) = (0.15*12/13 + 0.2*8/9) / 20; sum_r a_r L_r / R = (...) / 0.5
    dist_side = (0.15 * 12 / 13 + 0.2 * 8 / 9) / 20
    rate_side = (0.15 * 0.05 / 1.05 + 0.2 * 0.12 / 1.12 + 0.3 * 0.33 / 1.33) / 0.5
    assert metrics.effective_lambda(lmbda, a, losses, lambda_d, rate) == pytest.approx(lmbda * dist_side / rate_side)


def test_effective_lambda_is_nan_without_a_side():
    a = {"distortion": 1.0, "bpp": 1.0}
    assert math.isnan(metrics.effective_lambda(0.01, a, {"distortion": 1.0, "bpp": 0.0}, 1.0, 0.0))
    assert math.isnan(metrics.effective_lambda(0.01, a, {"distortion": 0.0, "bpp": 0.5}, 0.0, 0.5))


def test_y_rate_share():
    assert metrics.y_rate_share(0.5, 0.05) == pytest.approx(0.9)
    assert metrics.y_rate_share(0.008, 0.008) == 0.0
    assert math.isnan(metrics.y_rate_share(0.0, 0.0))


@pytest.mark.parametrize("y_share, psnr, flat, collapsed", [
    (0.04, 30.0, 12.0, True),    # y carries almost nothing
    (0.9, 30.0, 12.0, False),    # a working code
    (0.9, 11.0, 12.0, True),     # worse than the mean colour
    (0.9, 12.0, 12.0, True),     # exactly the mean colour
    (0.9, 12.0 + 1e-8, 12.0, True),  # the mean colour, up to rounding
    (0.9, 12.5, 12.0, False),
])
def test_is_collapsed(y_share, psnr, flat, collapsed):
    assert metrics.is_collapsed(y_share, psnr, flat) is collapsed


def test_per_image_metric_names_round_trip():
    assert metrics.eval_image_metric("kodim01.png", "psnr") == "eval_image/kodim01.png/psnr"
    assert metrics.eval_image_metric("a b/c", "bpp") == "eval_image/a_b_c/bpp"
    assert metrics.parse_eval_image_metric("eval_image/kodim01.png/bpp") == ("kodim01.png", "bpp")
    assert metrics.parse_eval_image_metric(metrics.EVAL_PSNR) is None
    assert metrics.parse_eval_image_metric("eval_image/x/ssim") is None
    with pytest.raises(ValueError, match="psnr, bpp"):
        metrics.eval_image_metric("x", "ssim")
