import warnings

import bjontegaard
import numpy as np
import pytest

from hpcm_tune.analysis import BDError, BDOverlapWarning, bd_psnr, bd_rate
from hpcm_tune.analysis.bd import curve_problem

# HPCM Base on Kodak, paper points (docs/design.md §2): bpp, PSNR dB.
BASE_BPP = [0.1211, 0.1757, 0.2729, 0.4125, 0.5898, 0.8209]
BASE_PSNR = [29.4022, 30.7547, 32.4012, 34.2063, 36.0145, 37.7525]
# HPCM Large on Kodak (official repository lyq133/LIC-HPCM, README "R-D Data").
LARGE_BPP = [0.0951, 0.1537, 0.2438, 0.3778, 0.5516, 0.7843]
LARGE_PSNR = [28.9135, 30.4490, 32.1219, 33.9923, 35.8511, 37.7480]
# Minnen 2018 (NeurIPS) on Kodak, tensorflow/compression's published results: an older codec, 9 points.
MINNEN_BPP = [0.071997, 0.153354, 0.264381, 0.428511, 0.635404, 0.904279, 1.258828, 1.982050, 2.992778]
MINNEN_PSNR = [26.804116, 28.880747, 30.927089, 33.028649, 34.998064, 37.053312, 39.120817, 42.165220, 45.074915]
# A second, worse codec: not a shifted copy of Base, so both fits actually differ in shape.
OTHER_BPP = [0.1302, 0.1911, 0.2951, 0.4460, 0.6352, 0.8790]
OTHER_PSNR = [29.21, 30.57, 32.14, 33.97, 35.68, 37.46]

METHODS = ["pchip", "cubic"]


@pytest.mark.parametrize("method", METHODS)
def test_agrees_with_bjontegaard_package_on_published_curve(method):
    ours = bd_rate(BASE_BPP, BASE_PSNR, OTHER_BPP, OTHER_PSNR, method=method)
    ref = bjontegaard.bd_rate(BASE_BPP, BASE_PSNR, OTHER_BPP, OTHER_PSNR, method=method)
    assert abs(ours - ref) < 0.01
    assert ours > 3.0  # the other codec is clearly worse: it needs more bits
    ours_db = bd_psnr(BASE_BPP, BASE_PSNR, OTHER_BPP, OTHER_PSNR, method=method)
    ref_db = bjontegaard.bd_psnr(BASE_BPP, BASE_PSNR, OTHER_BPP, OTHER_PSNR, method=method)
    assert abs(ours_db - ref_db) < 1e-4
    assert ours_db < 0


@pytest.mark.parametrize("method", METHODS)
def test_published_kodak_curves(method):
    # Large vs Base: the paper's BD-rates against VTM (-19.19 % and -15.31 %) imply about -4.6 %.
    large = bd_rate(BASE_BPP, BASE_PSNR, LARGE_BPP, LARGE_PSNR, method=method)
    assert abs(large - bjontegaard.bd_rate(BASE_BPP, BASE_PSNR, LARGE_BPP, LARGE_PSNR, method=method)) < 0.01
    assert -6.0 < large < -3.0
    # Base vs Minnen 2018: curves of different lengths and ranges (the overlap is partial: a warning).
    with pytest.warns(BDOverlapWarning):
        base = bd_rate(MINNEN_BPP, MINNEN_PSNR, BASE_BPP, BASE_PSNR, method=method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = bjontegaard.bd_rate(MINNEN_BPP, MINNEN_PSNR, BASE_BPP, BASE_PSNR, method=method,
                                  require_matching_points=False)
    assert abs(base - ref) < 0.01
    assert -30.0 < base < -20.0


@pytest.mark.parametrize("method", METHODS)
def test_swapping_anchor_and_test_inverts_the_rate_ratio(method):
    forward = bd_rate(BASE_BPP, BASE_PSNR, OTHER_BPP, OTHER_PSNR, method=method)
    backward = bd_rate(OTHER_BPP, OTHER_PSNR, BASE_BPP, BASE_PSNR, method=method)
    # Over the same overlap interval the mean log ratio just changes sign.
    assert (1 + forward / 100) * (1 + backward / 100) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_known_answers(method):
    assert bd_rate(BASE_BPP, BASE_PSNR, BASE_BPP, BASE_PSNR, method=method) == pytest.approx(0.0, abs=1e-9)
    cheaper = [r * 0.9 for r in BASE_BPP]
    assert bd_rate(BASE_BPP, BASE_PSNR, cheaper, BASE_PSNR, method=method) == pytest.approx(-10.0, abs=1e-9)
    better = [p + 0.5 for p in BASE_PSNR]
    assert bd_psnr(BASE_BPP, BASE_PSNR, BASE_BPP, better, method=method) == pytest.approx(0.5, abs=1e-9)


def test_point_order_and_duplicates_do_not_matter():
    ref = bd_rate(BASE_BPP, BASE_PSNR, OTHER_BPP, OTHER_PSNR)
    shuffled = np.random.default_rng(0).permutation(6)
    tb, tp = np.array(OTHER_BPP)[shuffled], np.array(OTHER_PSNR)[shuffled]
    assert bd_rate(BASE_BPP[::-1], BASE_PSNR[::-1], tb, tp) == pytest.approx(ref, abs=1e-12)
    # The same point twice is averaged, not a zero-width interpolation interval.
    assert bd_rate(BASE_BPP + [BASE_BPP[0]], BASE_PSNR + [BASE_PSNR[0]], OTHER_BPP, OTHER_PSNR) == pytest.approx(ref)


def test_too_few_points_and_no_overlap_raise_with_a_reason():
    with pytest.raises(BDError, match="cubic needs 4 distinct points per curve; test has 3"):
        bd_rate(BASE_BPP, BASE_PSNR, OTHER_BPP[:3], OTHER_PSNR[:3], method="cubic")
    with pytest.warns(BDOverlapWarning):
        assert np.isfinite(bd_rate(BASE_BPP, BASE_PSNR, OTHER_BPP[:3], OTHER_PSNR[:3], method="pchip"))
    with pytest.raises(BDError, match="do not overlap"):
        bd_rate(BASE_BPP[:2], BASE_PSNR[:2], OTHER_BPP[4:], OTHER_PSNR[4:])
    with pytest.raises(BDError, match="non-positive rate"):
        bd_rate([0.0, 0.2], [30, 31], [0.1, 0.2], [30, 31])
    with pytest.raises(ValueError, match="unknown BD-rate method 'akima'; valid: cubic, pchip"):
        bd_rate(BASE_BPP, BASE_PSNR, OTHER_BPP, OTHER_PSNR, method="akima")


def test_warns_on_low_overlap_only():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bd_rate(BASE_BPP, BASE_PSNR, OTHER_BPP, OTHER_PSNR)
    with pytest.warns(BDOverlapWarning, match="overlap over only"):
        value = bd_rate(BASE_BPP[:4], BASE_PSNR[:4], OTHER_BPP[2:], OTHER_PSNR[2:])
    assert np.isfinite(value)


# Points in lambda order: a curve, one whose PSNR dips at the third lambda, and a flat one (0.06 dB in all).
RISING_PSNR = [30.0, 32.0, 31.0, 34.0]
FLAT_PSNR = [30.0, 30.02, 30.04, 30.06]


def test_curve_problem_names_what_makes_points_no_rd_curve():
    assert curve_problem(BASE_BPP, BASE_PSNR) is None
    assert "PSNR does not rise strictly" in curve_problem(BASE_BPP[:4], RISING_PSNR)
    assert "rate does not rise strictly" in curve_problem([0.1, 0.3, 0.2, 0.4], BASE_PSNR[:4])
    assert "spans less than 0.5 dB" in curve_problem(BASE_BPP[:4], FLAT_PSNR)
    assert curve_problem(BASE_BPP[:4], FLAT_PSNR, min_span_db=0.05) is None
    assert "single lambda" in curve_problem([0.2, np.nan], [31.0, 32.0])
    # Order matters here (it is the lambda order): the same points reversed are no curve.
    assert curve_problem(BASE_BPP[::-1], BASE_PSNR[::-1]) is not None


@pytest.mark.parametrize("method", METHODS)
def test_on_curves_the_package_accepts_the_values_are_equal(method):
    # Per-seed-like curves: 4 lambdas, the test one shifted unevenly (not a copy of the anchor).
    anchor_bpp, anchor_psnr = BASE_BPP[:4], BASE_PSNR[:4]
    test_bpp, test_psnr = [0.118, 0.181, 0.269, 0.425], [29.31, 30.91, 32.35, 34.30]
    for ours, theirs in ((bd_rate, bjontegaard.bd_rate), (bd_psnr, bjontegaard.bd_psnr)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = theirs(anchor_bpp, anchor_psnr, test_bpp, test_psnr, method=method)
        value = ours(anchor_bpp, anchor_psnr, test_bpp, test_psnr, method=method, min_span_db=0.5)
        assert np.isfinite(expected) and value == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_non_curves_are_refused_with_a_reason_where_sorting_would_hide_them():
    bpp = BASE_BPP[:4]
    # The package's PCHIP refuses the dipping curve for BD-rate (its x, the PSNR, is not monotone) ...
    with pytest.raises(ValueError, match="strictly increasing"):
        bjontegaard.bd_rate(bpp, BASE_PSNR[:4], bpp, RISING_PSNR, method="pchip")
    # ... our BD-rate without the check sorts and integrates it; with it, it is refused with the reason.
    assert np.isfinite(bd_rate(bpp, BASE_PSNR[:4], bpp, RISING_PSNR, min_overlap=0.0))
    for method in METHODS:
        with pytest.raises(BDError, match="test: quality does not rise strictly"):
            bd_rate(bpp, BASE_PSNR[:4], bpp, RISING_PSNR, method=method, min_span_db=0.5)
        with pytest.raises(BDError, match="spans less than 0.5 dB"):
            bd_psnr(bpp, BASE_PSNR[:4], bpp, FLAT_PSNR, method=method, min_span_db=0.5)
    # The package accepts the flat curve and returns a number: the refusal is our policy (--min-span).
    assert np.isfinite(bjontegaard.bd_psnr(bpp, BASE_PSNR[:4], bpp, FLAT_PSNR, method="pchip"))
