"""Bjøntegaard deltas: BD-rate and BD-PSNR between two rate-distortion curves (docs/design.md §8).

G. Bjøntegaard, "Calculation of average PSNR differences between RD-curves", VCEG-M33 (2001): fit each
curve's distortion D against log R (BD-PSNR) or log R against D (BD-rate), integrate both fits over the
interval where the curves overlap, and average the difference. The BD-rate is then
(10^(mean delta log10 R) − 1)·100 %. Two fits are offered:

- ``cubic``: one least-squares cubic polynomial per curve (VCEG-M33), needs at least 4 points;
- ``pchip``: a piecewise cubic Hermite interpolant through the points (the JVET common-test-condition
  sheets; monotone, no overshoot), needs at least 2 points.

Log base 10 is used everywhere, for the fit and for the conversion back (mixing log10 with exp is a known
bug of some copies of the VCEG script). Our ``pchip`` is the ``bjontegaard`` package's ``method='pchip'``
(scipy's PchipInterpolator, integrated exactly) and our ``cubic`` its ``method='cubic'`` (np.polyfit of
degree 3, integrated exactly); both with the package's overlap interval, and ``require_matching_points=False``
when the curves have different numbers of points. Where the package accepts the input the values are equal.

The package refuses points that are not a curve (its PCHIP needs strictly monotone x and asserts the
direction), but sorting, as :func:`bd_rate` does, would silently integrate them: PSNR falling while the rate
rises, or points spanning a few hundredths of a dB, give BD-rate and BD-PSNR of opposite signs. So callers
that have the points in lambda order check them with :func:`curve_problem` first (or pass ``min_span_db``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator

from hpcm_tune.registry import Registry

# Below this fraction of the union of both ranges the curves are said to overlap little (as `bjontegaard`).
DEFAULT_MIN_OVERLAP = 0.75
# A curve whose quality spans less than this over its lambdas is noise around one point, not a curve.
DEFAULT_MIN_QUALITY_SPAN_DB = 0.5


class BDError(ValueError):
    """A Bjøntegaard delta that cannot be computed; ``reason`` is short enough for a table footnote."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BDOverlapWarning(UserWarning):
    """The two curves overlap over less than ``min_overlap`` of their joint range: the delta extrapolates
    little but averages over a narrow interval, so read it with care."""


@dataclass(frozen=True)
class _Fit:
    """How to fit y(x) through a curve's points and integrate the fit; ``min_points`` the fewest it needs."""

    min_points: int
    integral: Callable[[np.ndarray, np.ndarray, float, float], float]


def _integral_cubic(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    # VCEG-M33: one least-squares cubic y = p(x), integrated exactly.
    antiderivative = np.polyint(np.polyfit(x, y, 3))
    return float(np.polyval(antiderivative, hi) - np.polyval(antiderivative, lo))


def _integral_pchip(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    return float(PchipInterpolator(x, y, extrapolate=False).integrate(lo, hi))


BD_METHODS: Registry[_Fit] = Registry("BD-rate method")
BD_METHODS.add("cubic", _Fit(min_points=4, integral=_integral_cubic))
BD_METHODS.add("pchip", _Fit(min_points=2, integral=_integral_pchip))


def _curve(rate: Sequence[float], dist: Sequence[float], name: str) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rate, dtype=np.float64).ravel()
    d = np.asarray(dist, dtype=np.float64).ravel()
    if r.shape != d.shape:
        raise ValueError(f"{name}: {r.size} rates but {d.size} distortion values")
    keep = np.isfinite(r) & np.isfinite(d)
    r, d = r[keep], d[keep]
    if np.any(r <= 0):
        raise BDError(f"{name} has a non-positive rate ({r[r <= 0][0]:g}): log rate undefined")
    return np.log10(r), d


def curve_problem(rate: Sequence[float], quality: Sequence[float], min_span_db: float = DEFAULT_MIN_QUALITY_SPAN_DB,
                  quality_name: str = "PSNR") -> str | None:
    """Why the points, given in lambda order (non-finite pairs dropped), are not an R-D curve usable for a
    Bjøntegaard delta; None when they are. A curve needs at least 2 points, a strictly increasing rate with
    a strictly increasing quality (in dB, higher is better) as lambda grows, and a quality range of at least
    ``min_span_db``. The reasons are short and free of numbers, so one footnote serves many cells."""
    r = np.asarray(rate, dtype=np.float64).ravel()
    q = np.asarray(quality, dtype=np.float64).ravel()
    keep = np.isfinite(r) & np.isfinite(q)
    r, q = r[keep], q[keep]
    if r.size == 0:
        return "no RD point"
    if r.size == 1:
        return "a single lambda: one point is not a curve"
    if np.any(np.diff(r) <= 0):
        return "the rate does not rise strictly with lambda: not an R-D curve"
    if np.any(np.diff(q) <= 0):
        return (f"{quality_name} does not rise strictly with lambda (it falls or stays while the rate rises): "
                "not an R-D curve")
    if q[-1] - q[0] < min_span_db:
        return f"{quality_name} spans less than {min_span_db:g} dB over the lambdas: too flat for a BD"
    return None


def _check_curves(rate_anchor, dist_anchor, rate_test, dist_test, min_span_db: float | None) -> None:
    if min_span_db is None:
        return
    for name, rate, dist in (("anchor", rate_anchor, dist_anchor), ("test", rate_test, dist_test)):
        problem = curve_problem(rate, dist, min_span_db, "quality")
        if problem:
            raise BDError(f"{name}: {problem}")


def _sorted_unique(x: np.ndarray, y: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Sort by x; points with equal x are averaged (an interpolant needs strictly increasing x)."""
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    ux, inverse = np.unique(x, return_inverse=True)
    if ux.size < x.size:
        y = np.bincount(inverse, weights=y) / np.bincount(inverse)
        x = ux
    return x, y


def _delta(xa: np.ndarray, ya: np.ndarray, xt: np.ndarray, yt: np.ndarray, method: str, min_overlap: float,
           what: str) -> float:
    """Mean of y_test(x) − y_anchor(x) over the x interval both curves cover."""
    fit = BD_METHODS.get(method)
    xa, ya = _sorted_unique(xa, ya, "anchor")
    xt, yt = _sorted_unique(xt, yt, "test")
    for name, x in (("anchor", xa), ("test", xt)):
        if x.size < fit.min_points:
            raise BDError(f"{method} needs {fit.min_points} distinct points per curve; {name} has {x.size}")
    lo, hi = max(xa[0], xt[0]), min(xa[-1], xt[-1])
    if hi <= lo:
        raise BDError(f"curves do not overlap in {what}")
    overlap = (hi - lo) / (max(xa[-1], xt[-1]) - min(xa[0], xt[0]))
    if overlap < min_overlap:
        warnings.warn(
            f"BD over {what}: the curves overlap over only {overlap:.0%} of their joint range "
            f"(less than {min_overlap:.0%})",
            BDOverlapWarning,
            stacklevel=3,
        )
    return (fit.integral(xt, yt, lo, hi) - fit.integral(xa, ya, lo, hi)) / (hi - lo)


def bd_rate(
    rate_anchor: Sequence[float],
    dist_anchor: Sequence[float],
    rate_test: Sequence[float],
    dist_test: Sequence[float],
    method: str = "pchip",
    min_overlap: float = DEFAULT_MIN_OVERLAP,
    min_span_db: float | None = None,
) -> float:
    """BD-rate of the test curve against the anchor in percent: the average rate change at equal quality.

    Negative means the test codec needs fewer bits. ``dist_*`` is a quality in which higher is better (PSNR
    or MS-SSIM in dB). log10 R is fitted against D and integrated over the overlapping D interval.
    Raises :class:`BDError` (a ValueError) when it cannot be computed; warns :class:`BDOverlapWarning` when
    the curves overlap over less than ``min_overlap`` of their joint D range. With ``min_span_db`` the points
    are taken in lambda order and both curves must pass :func:`curve_problem` (else BDError with its reason);
    without it they are sorted, as by the VCEG script.
    """
    _check_curves(rate_anchor, dist_anchor, rate_test, dist_test, min_span_db)
    la, da = _curve(rate_anchor, dist_anchor, "anchor")
    lt, dt = _curve(rate_test, dist_test, "test")
    mean_log_ratio = _delta(da, la, dt, lt, method, min_overlap, "quality")
    return float((10.0**mean_log_ratio - 1.0) * 100.0)


def bd_psnr(
    rate_anchor: Sequence[float],
    dist_anchor: Sequence[float],
    rate_test: Sequence[float],
    dist_test: Sequence[float],
    method: str = "pchip",
    min_overlap: float = DEFAULT_MIN_OVERLAP,
    min_span_db: float | None = None,
) -> float:
    """BD-PSNR (BD-quality) of the test curve against the anchor: the average quality change in dB at equal
    rate. D is fitted against log10 R and integrated over the overlapping log-rate interval. Same errors and
    warnings, and the same ``min_span_db`` check, as :func:`bd_rate`."""
    _check_curves(rate_anchor, dist_anchor, rate_test, dist_test, min_span_db)
    la, da = _curve(rate_anchor, dist_anchor, "anchor")
    lt, dt = _curve(rate_test, dist_test, "test")
    return float(_delta(la, da, lt, dt, method, min_overlap, "rate"))
