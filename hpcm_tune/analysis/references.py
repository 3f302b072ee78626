"""Reference codecs in the analysis: which images a study was evaluated on, the JPEG/WebP/AVIF points on them
(hpcm_tune.reference, cached), the "BD-rate vs JPEG" of each configuration and the plain verdict on whether
the trained models are codecs at all (better than JPEG at equal rate? better than a flat colour image?).

A failure to compute the points (a data folder that is gone, an unreadable image) is a warning and n/a in the
tables, never a crash of the analysis.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.interpolate import PchipInterpolator

from hpcm_tune.analysis import formatting as fmt
from hpcm_tune.analysis.results import STUDY
from hpcm_tune.reference import ANCHOR, ReferenceWarning

DATA_KEY, EVAL_MAX_IMAGES_KEY = "data", "eval_max_images"  # the flat config keys naming the evaluation images
BD_VS_ANCHOR = "BD-rate vs JPEG (%)"
VS_ANCHOR = "vs JPEG (points)"


@dataclass
class StudyReference:
    """The reference points of one study's evaluation images, or why there are none. ``note``: how the image
    set was chosen when the study's trials do not agree on it."""

    data: str
    eval_max_images: int
    points: object | None = None  # hpcm_tune.reference.ReferenceSet
    error: str | None = None
    note: str | None = None
    default: bool = False  # the trials' configs do not name their data: the training default was used

    @functools.cached_property
    def anchor_curve(self) -> tuple[np.ndarray, np.ndarray] | None:
        """JPEG's (bpp, PSNR), sorted by rate (computed once: every configuration is compared with it)."""
        if self.points is None or ANCHOR not in self.points.codecs:
            return None
        return self.points.curve(ANCHOR)

    @functools.cached_property
    def anchor_interpolant(self) -> PchipInterpolator | None:
        """JPEG's PSNR as a function of log10 bpp (piecewise cubic Hermite, no extrapolation)."""
        if self.anchor_curve is None:
            return None
        log_bpp, index = np.unique(np.log10(self.anchor_curve[0]), return_index=True)
        return PchipInterpolator(log_bpp, self.anchor_curve[1][index], extrapolate=False)

    def describe(self) -> str:
        where = f"data `{self.data}`" + (" (the training default: the trials' configs do not set it)"
                                         if self.default else "")
        count = f"first {self.eval_max_images} test images" if self.eval_max_images else "all test images"
        if self.points is not None:
            count = f"{len(self.points.images)} test image(s): {', '.join(self.points.images[:6])}" + (
                ", ..." if len(self.points.images) > 6 else "")
        return f"{where}, {count}"


def _defaults() -> tuple[str, int]:
    try:
        from hpcm_tune.config import flat_defaults
    except ImportError:
        return "samples", 0
    d = flat_defaults()
    return str(d.get(DATA_KEY, "samples")), int(d.get(EVAL_MAX_IMAGES_KEY, 0) or 0)


def _value(row: dict, key: str, default):
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return default, True
    return value, False


def study_image_sets(trials: pd.DataFrame) -> dict[str, tuple[tuple[str, int], str | None, bool]]:
    """Per study: the (data, eval_max_images) its trials were evaluated on, a note when they differ (the most
    common is used), and whether it is the training default (the configs do not name it)."""
    default_data, default_n = _defaults()
    out = {}
    if trials.empty:
        return out
    cols = [c for c in (DATA_KEY, EVAL_MAX_IMAGES_KEY) if c in trials.columns]
    for study, part in trials.groupby(STUDY, sort=False):
        counts: Counter = Counter()
        defaulted = 0
        for row in part[cols].to_dict("records") if cols else [{}] * len(part):
            data, d1 = _value(row, DATA_KEY, default_data)
            n, _ = _value(row, EVAL_MAX_IMAGES_KEY, default_n)
            counts[(str(data), int(n))] += 1
            defaulted += d1
        (key, _), note = counts.most_common(1)[0], None
        if len(counts) > 1:
            listed = "; ".join(f"data {d!r}, eval_max_images {n} ({c} trials)" for (d, n), c in counts.most_common())
            note = (f"the trials of this study were evaluated on different images ({listed}); the reference "
                    f"points use the most common")
        out[str(study)] = (key, note, defaulted == len(part))
    return out


def load_references(trials: pd.DataFrame) -> dict[str, StudyReference]:
    """One :class:`StudyReference` per study; each distinct image set is computed (or read from the cache)
    once. Failures warn (:class:`ReferenceWarning`) and leave ``error`` set."""
    from hpcm_tune.reference import reference_points

    computed: dict[tuple[str, int], tuple[object | None, str | None]] = {}
    out = {}
    for study, (key, note, default) in study_image_sets(trials).items():
        if key not in computed:
            try:
                computed[key] = (reference_points(*key), None)
            except Exception as err:  # the analysis goes on without reference points, whatever went wrong
                reason = f"{type(err).__name__}: {err}"
                warnings.warn(f"no reference codec points for data {key[0]!r} (eval_max_images {key[1]}): {reason}",
                              ReferenceWarning, stacklevel=2)
                computed[key] = (None, reason)
        points, error = computed[key]
        out[study] = StudyReference(data=key[0], eval_max_images=key[1], points=points, error=error, note=note,
                                    default=default)
    return out


# ---------------------------------------------------------------------------------------------- comparisons


def anchor_summary(ref: StudyReference) -> str:
    bpp, psnr = ref.anchor_curve
    return f"{ref.points.label(ANCHOR)}: {fmt.value_range(bpp)} bpp, {fmt.value_range(psnr)} dB"


def bd_vs_anchor(ref: StudyReference, curve: dict | None, options) -> tuple[float, str | None, bool]:
    """(BD-rate in %, None, False), (value, note, False) or (NaN, reason, True) of a configuration's mean curve
    against JPEG's. JPEG's ladder spans far more than any one model, so the overlap is judged on the
    configuration's own PSNR range (the fraction JPEG covers), not on the joint range."""
    from hpcm_tune.analysis.bd import BDError, bd_rate

    anchor = ref.anchor_curve
    if anchor is None:
        return math.nan, f"no reference points: {ref.error or 'JPEG not available'}", True
    if curve is None:
        return math.nan, None, True
    keep = np.isfinite(curve["rate"]) & np.isfinite(curve["psnr"])
    rate, psnr = curve["rate"][keep], curve["psnr"][keep]
    if rate.size == 0:
        return math.nan, "no RD point", True
    try:
        value = bd_rate(anchor[0], anchor[1], rate, psnr, method=options.method, min_overlap=0.0)
    except BDError as err:
        if "do not overlap" in err.reason:
            return math.nan, (f"no overlap with JPEG's curve in PSNR ({anchor_summary(ref)}): "
                              f"BD-rate vs JPEG undefined"), True
        return math.nan, err.reason, True
    lo, hi = max(psnr.min(), anchor[1].min()), min(psnr.max(), anchor[1].max())
    span = psnr.max() - psnr.min()
    if span > 0 and (hi - lo) / span < options.min_overlap:
        return value, (f"JPEG covers less than {options.min_overlap:.0%} of this curve's PSNR range: the BD-rate "
                       f"vs JPEG averages over the covered part only"), False
    return value, None, False


def compare_points(ref: StudyReference, curve: dict | None) -> dict[str, int]:
    """Each RD point against JPEG at equal rate: ``better`` / ``worse`` (PSNR above / below JPEG's curve,
    interpolated in log rate; a point beyond JPEG's rates counts when it dominates or is dominated by JPEG's
    end point), ``nc`` (not comparable), ``flat`` (PSNR at or below the flat-colour reference), ``n``."""
    out = {"better": 0, "worse": 0, "nc": 0, "flat": 0, "n": 0}
    anchor = ref.anchor_curve
    if anchor is None or curve is None:
        return out
    bpp, quality = anchor
    interp = ref.anchor_interpolant
    for rate, psnr in zip(curve["rate"], curve["psnr"], strict=True):
        if not (np.isfinite(rate) and np.isfinite(psnr) and rate > 0):
            continue
        out["n"] += 1
        out["flat"] += bool(psnr <= ref.points.flat_psnr)
        if rate < bpp.min():
            out["better" if psnr >= quality[np.argmin(bpp)] else "nc"] += 1
        elif rate > bpp.max():
            out["worse" if psnr <= quality[np.argmax(bpp)] else "nc"] += 1
        else:
            out["better" if psnr > float(interp(np.log10(rate))) else "worse"] += 1
    return out


def comparison_cell(counts: dict[str, int]) -> str:
    n = counts["n"]
    if n == 0:
        return ""
    if counts["better"] == n:
        return f"better {n}/{n}"
    if counts["worse"] == n:
        return f"worse {n}/{n}"
    parts = [f"{k} {counts[k]}" for k in ("better", "worse") if counts[k]]
    if counts["nc"]:
        parts.append(f"not comparable {counts['nc']}")
    return ", ".join(parts) + f" of {n}"


def verdict(ref: StudyReference, compared: dict[str, dict[str, int]], collapsed: list[str]) -> list[str]:
    """Plain sentences: are the trained models codecs, and are they better than JPEG?"""
    if ref.points is None:
        return [f"Reference codecs: not available ({ref.error})." if ref.error else "Reference codecs: none."]
    lines = []
    shown = [ref.points.label(c) + f" {fmt.value_range(ref.points.curve(c)[0])} bpp" for c in ref.points.codecs]
    lines.append(f"Reference codecs on the evaluation images ({ref.describe()}): {'; '.join(shown)}; "
                 f"flat colour (each image its mean colour): {ref.points.flat_psnr:.2f} dB.")
    for codec, why in ref.points.skipped.items():
        lines.append(f"{codec} skipped: {why}.")
    if ref.note:
        lines.append(f"Note: {ref.note}.")
    if ref.anchor_curve is None:
        return lines
    with_points = {k: v for k, v in compared.items() if v["n"]}
    better = [k for k, v in with_points.items() if v["better"] == v["n"]]
    some = [k for k, v in with_points.items() if 0 < v["better"] < v["n"]]
    flat = [k for k, v in with_points.items() if v["flat"] == v["n"]]
    total = len(with_points)

    def names(labels: list[str]) -> str:
        return ", ".join(labels[:8]) + (f" and {len(labels) - 8} more" if len(labels) > 8 else "")

    if not total:
        lines.append("Are these codecs? No RD point to compare with JPEG.")
        return lines
    if len(better) == total:
        answer = "yes: every configuration is better than JPEG at equal rate at every RD point."
    elif better or some:
        answer = (f"{len(better)} of {total} configurations beat JPEG at every RD point"
                  + (f" ({names(better)})" if better else "")
                  + (f"; {len(some)} only at some ({names(some)})" if some else "")
                  + "; the others are no better than JPEG.")
    else:
        answer = (f"no: none of the {total} configurations beats JPEG at any comparable rate; as image codecs "
                  f"the trained models are worse than JPEG.")
    lines.append("Are these codecs? " + answer)
    if flat:
        lines.append(f"{len(flat)} configuration(s) reach no more than the flat-colour PSNR at every RD point "
                     f"({names(flat)}): they carry no information about the picture, so they are not codecs.")
    if collapsed:
        lines.append(f"{len(collapsed)} configuration(s) have collapsed trials (†): {names(collapsed)}.")
    return lines


def reference_table(references: dict[str, StudyReference]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(points, per-image rows) of every distinct image set, with its data and eval_max_images."""
    seen, points, per_image = set(), [], []
    for ref in references.values():
        if ref.points is None or (ref.data, ref.eval_max_images) in seen:
            continue
        seen.add((ref.data, ref.eval_max_images))
        extra = {DATA_KEY: ref.data, EVAL_MAX_IMAGES_KEY: ref.eval_max_images}
        points.append(ref.points.points.assign(**extra, flat_psnr=ref.points.flat_psnr))
        per_image.append(ref.points.per_image.assign(**extra))
    if not points:
        return pd.DataFrame(), pd.DataFrame()
    return pd.concat(points, ignore_index=True), pd.concat(per_image, ignore_index=True)
