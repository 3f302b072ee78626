"""Figures of an analysis: RD curves per study (baseline black, every trial's point, paired ΔPSNR intervals),
task-weight and gamma trajectories over epochs.

One colour per configuration across every figure of a study (:func:`study_colors`); the baseline is always
black, the configurations beyond the MAX_HIGHLIGHT best a thin grey. The ``*_figure`` functions return the
matplotlib Figure; :func:`rd_curves`, :func:`weights` and :func:`gammas` its PNG bytes (the caller writes them
atomically)."""

from __future__ import annotations

import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402
from scipy import stats  # noqa: E402
from scipy.interpolate import PchipInterpolator  # noqa: E402

from hpcm_tune import metrics as m  # noqa: E402
from hpcm_tune.analysis import formatting as fmt  # noqa: E402
from hpcm_tune.analysis.results import LMBDA, SEED, STUDY  # noqa: E402
from hpcm_tune.analysis.tables import COLLAPSED, RATES, curve_points  # noqa: E402

DELTA = "delta psnr"  # the ΔPSNR panel of rd_curves
MAX_LEGEND = 14  # more entries than this hide the plot; the rest are summarised as "+N more"
MAX_BANDS = 5  # std bands only up to this many configurations per panel (more are unreadable and slow)
MAX_HIGHLIGHT = 11  # beyond the baseline, the best configurations (by BD-rate) in colour; the rest thin grey
MAX_LABEL = 48  # characters of a legend label (generated labels of random searches can be long)
CONFIDENCE = 0.95  # of the paired t intervals on the ΔPSNR panel
BASELINE_COLOR = "#000000"
OTHERS_COLOR = to_hex("0.7")
# Colours of the highlighted configurations: tab20 without its greys (grey is the others' and the reference
# codecs'), the saturated half first. More than MAX_HIGHLIGHT are never needed.
PALETTE = tuple(to_hex(colormaps["tab20"](i)) for i in (*range(0, 20, 2), *range(1, 20, 2)) if i not in (14, 15))
# Reference codecs: neutral grey, told apart by dash and marker (never a configuration's colour).
REFERENCE_COLOR = "0.35"
REFERENCE_STYLES = (("--", "x"), (":", "+"), ("-.", "1"), ((0, (5, 1, 1, 1)), "2"))
# Artist gids: "<kind>\x1f<study>\x1f<configuration>", so a test (or a reader of the Figure) can find what was drawn.
MEAN_GID, TRIAL_GID, COLLAPSED_GID, DELTA_GID = "mean", "trial", "collapsed", "delta"
# The attribute of tables.StudyTables with the paired differences at each lambda (StudyTables.paired: columns
# configuration, lmbda, quantity, mean, lo, hi, n; quantity TABLES_DELTA_PSNR), to draw instead of the ones
# computed here; the panel then says "at equal λ". Off by default: those pair the baseline's trial of the same
# seed *and lambda*, so a configuration that reaches the same PSNR with 10 % less rate reads as "within noise",
# and they keep collapsed trials (differences of -15 dB squash the panel's 0.1 dB scale). Computed here, the
# difference is at equal rate with collapsed trials left out, as the BD-rates are; for a configuration at the
# baseline's rates both agree exactly.
TABLES_INTERVALS: str | None = None
TABLES_DELTA_PSNR = "ΔPSNR (dB)"
EQUAL_RATE, EQUAL_LAMBDA = "equal rate", "equal λ"
COLLAPSED_LABEL = "collapsed trial (its configuration's colour)"
WITHIN_NOISE = f"all differences within noise ({CONFIDENCE:.0%} paired t intervals contain 0)".replace("%", " %")
DPI = 110


def gid(kind: str, study: str, label: str) -> str:
    return f"{kind}\x1f{study}\x1f{label}"


def parse_gid(value: str | None) -> tuple[str, str, str] | None:
    parts = (value or "").split("\x1f")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


def _short(label: str) -> str:
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…"


# ---------------------------------------------------------------------------------------------- colours


def _study_labels(report, study: str) -> list[str]:
    """Every configuration of the study (trial table order), whether or not a figure has data for it."""
    for frame in (report.trials, report.curves):
        if not frame.empty and "configuration" in frame.columns:
            labels = list(dict.fromkeys(frame.loc[frame[STUDY] == study, "configuration"]))
            if labels:
                return labels
    return []


def _ranked(report, study: str) -> tuple[str | None, list[str], list[str]]:
    """(baseline, highlighted, others) over the whole study: highlighted are the MAX_HIGHLIGHT best
    configurations by BD-rate (then by name), so a sweep of a hundred configurations still gives a readable
    figure; in the study's own order."""
    labels = _study_labels(report, study)
    base = report.baselines.get(study)
    rest = [lb for lb in labels if lb != base]
    if len(rest) <= MAX_HIGHLIGHT:
        return base, rest, []
    tables = next((st for st in report.studies if st.study == study), None)
    score = {}
    if tables is not None and "BD-rate PSNR (%)" in tables.ablation:
        score = dict(zip(tables.ablation["configuration"], tables.ablation["BD-rate PSNR (%)"], strict=True))
    order = sorted(rest, key=lambda lb: (not np.isfinite(score.get(lb, np.nan)), score.get(lb, 0.0), lb))
    best = set(order[:MAX_HIGHLIGHT])
    return base, [lb for lb in rest if lb in best], [lb for lb in rest if lb not in best]


def study_colors(report, study: str) -> dict[str, str]:
    """The colour (hex) of each configuration of ``study`` in every figure: the baseline black, the
    highlighted configurations (see :func:`_ranked`) a palette colour each in the study's order, the others
    grey. The only place a configuration gets its colour."""
    base, highlighted, others = _ranked(report, study)
    colors = dict(zip(highlighted, PALETTE, strict=False))
    colors.update(dict.fromkeys(others, OTHERS_COLOR))
    if base is not None:
        colors[base] = BASELINE_COLOR
    return colors


# ---------------------------------------------------------------------------------------------- helpers


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # after tight_layout: no second "tight" draw pass
    return buf.getvalue()


def _empty(message: str) -> Figure:
    fig = Figure(figsize=(6, 2))
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, wrap=True)
    return fig


BEST_LEGEND_MAX_POINTS = 300


def _legend(ax, loc: str = "best", outside: bool = False, sources: list | None = None, last: list[str] | tuple = (),
            title: str | None = None) -> None:
    """A legend on ``ax`` for the lines of ``sources`` (default: ax itself), each label once; the entries named
    in ``last`` (collapse marks, reference codecs) come after the configurations and are always shown;
    ``title``: what the error bars or bands are."""
    found: dict[str, object] = {}
    for source in sources or [ax]:
        for handle, label in zip(*source.get_legend_handles_labels(), strict=True):
            found.setdefault(label, handle)
    tail = [lb for lb in last if lb in found]
    labels = [lb for lb in found if lb not in tail] + tail
    handles = [found[lb] for lb in labels]
    if not handles:
        return
    keep_last = len(tail)
    extra = len(handles) - MAX_LEGEND
    if extra > 0:
        head = MAX_LEGEND - keep_last
        handles = handles[:head] + handles[len(handles) - keep_last:]
        labels = labels[:head] + labels[len(labels) - keep_last:]
        handles.append(Line2D([], [], linestyle="none"))
        labels.append(f"+{extra} more")
    style = {"fontsize": 8, "title": title, "title_fontsize": 8}
    if outside:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.03, 1.0), borderaxespad=0.0, **style)
        return
    # "best" placement tests every drawn point against every candidate box (about 0.2 s per panel at 600
    # points): above a few hundred, the upper left, where R-D curves (rising to the right) leave room.
    drawn = sum(len(line.get_xdata()) for line in ax.lines) + sum(len(c.get_offsets()) for c in ax.collections)
    ax.legend(handles, labels, loc=loc if len(handles) <= 6 or drawn <= BEST_LEGEND_MAX_POINTS else "upper left",
              framealpha=0.85, **style)


def _log_rate_axis(ax) -> None:
    """Log rate axis with plain-number tick labels (0.2, 0.5, 1), also between powers of ten: a sweep's
    rates rarely span more than a decade, where a log axis' default labels are a single 10^-1."""
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 1.0
    subs = (2, 3, 4, 5, 6, 8) if decades <= 1.2 else ((2, 3, 5) if decades <= 2.5 else ())
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_locator(LogLocator(base=10.0))
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_locator(LogLocator(base=10.0, subs=subs or (1.0,), numticks=50))
    ax.xaxis.set_minor_formatter(plain if subs else NullFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)


# ---------------------------------------------------------------------------------------------- paired ΔPSNR


def paired_t_interval(differences, confidence: float = CONFIDENCE) -> tuple[float, float, int]:
    """(mean, half-width, n) of the two-sided ``confidence`` t interval of paired differences (the finite
    ones): t_{(1+confidence)/2, n-1} * s / sqrt(n) with s the sample std (ddof 1); half-width NaN when n < 2."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    n = int(d.size)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(d.mean())
    if n < 2:
        return mean, math.nan, n
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1) * d.std(ddof=1) / math.sqrt(n))
    return mean, half, n


def paired_deltas(points: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Per trial of the other configurations (collapsed trials left out, as from the BD-rates): its PSNR minus
    the PSNR of the baseline's trials *of the same seed*, their curve over lambda interpolated at this trial's
    rate (piecewise cubic Hermite in log rate, no extrapolation: NaN outside). Same seed and lambda give
    the pair; interpolating at equal rate keeps a configuration that saves rate from reading as no better.
    Columns configuration, lmbda, seed, rate, delta."""
    columns = ["configuration", LMBDA, SEED, "rate", "delta"]
    if points.empty:
        return pd.DataFrame(columns=columns)
    usable = points[(points["rate"] > 0) & points["psnr"].notna()]
    if COLLAPSED in usable.columns:
        usable = usable[usable[COLLAPSED] != 1.0]
    anchors = {}
    for seed, rows in usable[usable["configuration"] == baseline].groupby(SEED, sort=False):
        curve = rows.groupby(LMBDA)[["rate", "psnr"]].mean().sort_values("rate")
        log_rate, index = np.unique(np.log10(curve["rate"].to_numpy(dtype=np.float64)), return_index=True)
        if log_rate.size >= 2:
            anchors[seed] = PchipInterpolator(log_rate, curve["psnr"].to_numpy(dtype=np.float64)[index],
                                              extrapolate=False)
    out = usable[(usable["configuration"] != baseline) & usable[SEED].isin(list(anchors))]
    if out.empty:
        return pd.DataFrame(columns=columns)
    rate = out["rate"].to_numpy(dtype=np.float64)
    anchor = np.array([float(anchors[s](np.log10(r))) for s, r in zip(out[SEED], rate, strict=True)])
    return pd.DataFrame({"configuration": out["configuration"].to_numpy(), LMBDA: out[LMBDA].to_numpy(),
                         SEED: out[SEED].to_numpy(), "rate": rate,
                         "delta": out["psnr"].to_numpy(dtype=np.float64) - anchor})


def paired_intervals(deltas: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per configuration and lambda: the mean rate of its paired trials, the mean ΔPSNR and its paired t
    interval (:func:`paired_t_interval`): columns configuration, lmbda, rate, mean, half, low, high, n."""
    columns = ["configuration", LMBDA, "rate", "mean", "half", "low", "high", "n"]
    deltas = deltas[np.isfinite(deltas["delta"].to_numpy(dtype=np.float64))] if not deltas.empty else deltas
    if deltas.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for (label, lam), part in deltas.groupby(["configuration", LMBDA], sort=True):
        mean, half, n = paired_t_interval(part["delta"], confidence)
        rows.append((label, lam, float(part["rate"].mean()), mean, half, mean - half, mean + half, n))
    return pd.DataFrame.from_records(rows, columns=columns)


def study_intervals(report, study: str, points: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """(the paired ΔPSNR intervals of one study, columns as :func:`paired_intervals`; what they compare at:
    EQUAL_RATE or EQUAL_LAMBDA). The tables' own when TABLES_INTERVALS names them and they are there (drawn at
    the configuration's mean rate at each lambda), else computed here from the trials' RD points."""
    points = points[points[STUDY] == study] if not points.empty else points
    tables = next((st for st in report.studies if st.study == study), None)
    given = getattr(tables, TABLES_INTERVALS, None) if TABLES_INTERVALS else None
    if isinstance(given, pd.DataFrame) and {"configuration", LMBDA, "quantity", "mean", "lo", "hi", "n"} <= set(given):
        rows = given[(given["quantity"] == TABLES_DELTA_PSNR) & given[LMBDA].notna()]
        rate = points.groupby(["configuration", LMBDA])["rate"].mean() if not points.empty else pd.Series()
        half = (rows["hi"].to_numpy(dtype=np.float64) - rows["lo"].to_numpy(dtype=np.float64)) / 2.0
        out = pd.DataFrame({"configuration": rows["configuration"].to_numpy(), LMBDA: rows[LMBDA].to_numpy(),
                            "rate": [rate.get((c, lam), math.nan) for c, lam in zip(rows["configuration"],
                                                                                     rows[LMBDA], strict=True)],
                            "mean": rows["mean"].to_numpy(dtype=np.float64), "half": half,
                            "low": rows["lo"].to_numpy(dtype=np.float64), "high": rows["hi"].to_numpy(dtype=np.float64),
                            "n": rows["n"].to_numpy()})
        return out[np.isfinite(out["rate"].to_numpy(dtype=np.float64))], EQUAL_LAMBDA
    base = report.baselines.get(study)
    if base is None:
        return paired_intervals(pd.DataFrame(columns=["delta"])), EQUAL_RATE
    return paired_intervals(paired_deltas(points, base)), EQUAL_RATE



# ---------------------------------------------------------------------------------------------- RD curves


def _trial_points(report) -> pd.DataFrame:
    """Every trial's RD point (the rows the mean curves average)."""
    if report.trials.empty:
        return pd.DataFrame(columns=[STUDY, "configuration", LMBDA, SEED, "rate", "psnr", "ms_ssim_db", COLLAPSED])
    return curve_points(report.trials, report.options)


def _error_note(rows: pd.DataFrame) -> str:
    n = rows["n"].to_numpy(dtype=np.float64) if "n" in rows else np.array([])
    if n.size == 0 or np.nanmax(n) < 2:
        return "error bars: none, n=1: no spread"
    return f"error bars: ±1 std over {fmt.count_range(n[n > 0])}"


def rd_curves_figure(report, log_rate: bool = True) -> Figure:
    """bpp vs PSNR, ΔPSNR against the baseline at equal rate (paired t intervals) and bpp vs MS-SSIM dB when
    reported, one row per study. Mean curves (error bars ±1 std over seeds) in the configurations' colours
    (:func:`study_colors`), the baseline black with its lambdas written at its points; every trial's own point
    small and faint, a collapsed trial as a cross. ``log_rate``: log rate axis (default)."""
    curves = report.curves
    if curves.empty:
        return _empty("No RD point: no finished trial with eval/psnr and eval/bpp\n(--include-partial uses the others)")
    points = _trial_points(report)
    qualities = [("psnr", "PSNR (dB)"), (DELTA, "ΔPSNR vs baseline at equal rate (dB)")]
    if curves["ms_ssim_db"].notna().any():
        qualities.append(("ms_ssim_db", "MS-SSIM (dB)"))
    studies = list(dict.fromkeys(curves[STUDY]))
    fig = Figure(figsize=(7.0 * len(qualities), 4.8 * len(studies)))
    axes = fig.subplots(len(studies), len(qualities), squeeze=False)
    groups = dict(tuple(curves.groupby([STUDY, "configuration"], sort=False)))
    trial_groups = dict(tuple(points.groupby([STUDY, "configuration"], sort=False))) if not points.empty else {}
    rate_name = f"rate: {RATES[report.options.rate]} (bits per pixel{', log scale' if log_rate else ''})"
    for r, study in enumerate(studies):
        colors = study_colors(report, study)
        base, highlighted, others = _ranked(report, study)
        present = [lb for lb in [*others, base, *highlighted] if (study, lb) in groups]
        others = [lb for lb in others if lb in present]
        rows = curves[curves[STUDY] == study]
        for c, (col, name) in enumerate(qualities):
            ax = axes[r][c]
            ax.set_xlabel(rate_name)
            ax.set_ylabel(name)
            ax.grid(True, alpha=0.3)
            ax.grid(True, which="minor", axis="x", alpha=0.12)
            if col == DELTA:
                basis = _delta_panel(ax, report, study, points, colors, base, others)
                name = f"ΔPSNR vs baseline at {basis} (dB)"
                ax.set_ylabel(name)
                ax.set_title(f"{study}: {name}", fontsize=11)
                if log_rate:
                    _log_rate_axis(ax)
                continue
            for label in present:
                _trial_markers(ax, trial_groups.get((study, label)), col, study, label, colors[label])
            for label in present:
                is_base, is_other = label == base, label in others
                if is_other:
                    shown = f"{len(others)} others" if label == others[0] else None
                else:
                    shown = _short(f"{label} (baseline)" if is_base else label)
                # The thick baseline under the coloured lines: a configuration on top of it stays visible.
                _rd_line(ax, groups[(study, label)], col, shown, colors[label],
                         2.6 if is_base else (0.8 if is_other else 1.4),
                         "s" if is_base else (None if is_other else "o"), 3 if is_base else (1 if is_other else 4),
                         gid(MEAN_GID, study, label))
            if any(ax.findobj(lambda a: parse_gid(a.get_gid()) is not None
                              and parse_gid(a.get_gid())[0] == COLLAPSED_GID)):
                ax.plot([], [], linestyle="none", marker="x", color="0.25", markersize=6, label=COLLAPSED_LABEL)
            labelled = base if (study, base) in groups else next(iter(highlighted or present), None)
            if labelled is not None:
                _lambda_labels(ax, groups[(study, labelled)], col)
            refs: list[str] = []
            if col == "psnr":
                refs = _reference_lines(ax, getattr(report, "references", {}).get(str(study)),
                                        rows[["rate", "psnr"]])
            if log_rate:
                _log_rate_axis(ax)
            ax.margins(x=0.08)  # room for the last point's lambda
            ax.set_title(f"{study}: {name} vs rate", fontsize=11)
            _legend(ax, "best", last=[COLLAPSED_LABEL, *refs], title=_error_note(rows))
    fig.tight_layout()
    return fig


def rd_curves(report, log_rate: bool = True) -> bytes:
    """PNG of :func:`rd_curves_figure`."""
    return _png(rd_curves_figure(report, log_rate))


def _trial_markers(ax, rows: pd.DataFrame | None, col: str, study: str, label: str, color) -> None:
    """Each trial's RD point: a small faint dot, or a cross when the trial collapsed."""
    if rows is None:
        return
    rows = rows[rows[col].notna() & rows["rate"].notna()]
    bad = (rows[COLLAPSED] == 1.0) if COLLAPSED in rows.columns else pd.Series(False, index=rows.index)
    good = rows[~bad]
    if not good.empty:
        ax.scatter(good["rate"], good[col], s=11, color=color, alpha=0.4, linewidths=0, zorder=2,
                   gid=gid(TRIAL_GID, study, label))
    if bad.any():
        ax.scatter(rows.loc[bad, "rate"], rows.loc[bad, col], s=42, marker="x", color=color, linewidths=1.6,
                   zorder=7, gid=gid(COLLAPSED_GID, study, label))


def _lambda_labels(ax, rows: pd.DataFrame, col: str) -> None:
    """'λ=0.0067' below and right of each point of one mean curve (under the line, which rises to the right)."""
    rows = rows[rows[col].notna()].sort_values("rate")
    for lam, x, y in zip(rows[LMBDA], rows["rate"], rows[col], strict=True):
        ax.annotate(f"λ={lam:g}", (x, y), xytext=(6, -8), textcoords="offset points", fontsize=7, color="0.15",
                    ha="left", va="top", zorder=8)


def _reference_lines(ax, reference, models: pd.DataFrame) -> list[str]:
    """The reference codecs' curves (neutral grey), cut to the models' rates (up to twice the highest, and at
    least each codec's two lowest points) so a codec's 3-bpp end does not squash the plot, and the flat-colour
    PSNR when a model comes within 5 dB of it. Returns the legend labels added."""
    if reference is None or reference.points is None:
        return []
    points = reference.points
    rates, psnrs = (models[c].to_numpy(dtype=np.float64) for c in ("rate", "psnr"))
    top = 2.0 * float(np.nanmax(rates)) if np.isfinite(rates).any() else np.inf
    for codec, (dash, marker) in zip(points.codecs, REFERENCE_STYLES * 4, strict=False):
        bpp, psnr = points.curve(codec)
        keep = (bpp <= top) | (np.arange(bpp.size) < 2)
        ax.plot(bpp[keep], psnr[keep], color=REFERENCE_COLOR, linestyle=dash, marker=marker, markersize=6,
                linewidth=1.1, label=points.label(codec), zorder=2)
    if not (np.isfinite(psnrs).any() and np.nanmin(psnrs) < points.flat_psnr + 5.0):
        return [points.label(c) for c in points.codecs]
    ax.axhline(points.flat_psnr, color=REFERENCE_COLOR, linestyle=(0, (1, 3)), linewidth=1.0, zorder=0,
               label=f"flat colour ({points.flat_psnr:.1f} dB)")
    return [*(points.label(c) for c in points.codecs), f"flat colour ({points.flat_psnr:.1f} dB)"]


def _delta_panel(ax, report, study: str, points: pd.DataFrame, colors: dict, base: str | None,
                 others: list[str]) -> str:
    """ΔPSNR of each configuration against the baseline at equal rate, at each lambda: the mean over seeds of
    the paired differences (:func:`paired_deltas`), error bars their 95 % t interval; the differences the
    BD-rate averages, which the absolute RD plot is too coarse to show. A note says what the bars are and
    whether any interval excludes 0. Returns what the differences compare at (EQUAL_RATE or EQUAL_LAMBDA)."""
    study_points = points[points[STUDY] == study] if not points.empty else points
    base_rows = study_points[study_points["configuration"] == base] if base is not None else study_points.iloc[:0]
    if base_rows.empty:
        ax.text(0.5, 0.5, "no baseline RD curve", ha="center", va="center", transform=ax.transAxes)
        return EQUAL_RATE
    base_rates = base_rows["rate"][base_rows["rate"] > 0]
    if base_rates.nunique() < 2:
        ax.text(0.5, 0.5, "baseline has fewer than 2 RD points", ha="center", va="center", transform=ax.transAxes)
        return EQUAL_RATE
    intervals, basis = study_intervals(report, study, points)
    ax.axhline(0.0, color=BASELINE_COLOR, linewidth=2.6, zorder=5)
    notes: list[str] = []
    drawn = intervals[intervals["mean"].notna()] if not intervals.empty else intervals
    order = [lb for lb in colors if lb != base]
    shown = [lb for lb in order if lb not in others and not drawn.empty and lb in set(drawn["configuration"])]
    for label in sorted(order, key=lambda lb: lb not in others):  # the grey others underneath
        part = drawn[drawn["configuration"] == label].sort_values("rate") if not drawn.empty else drawn
        if part.empty:
            continue
        x, y = part["rate"].to_numpy(dtype=np.float64), part["mean"].to_numpy(dtype=np.float64)
        if label in others:
            ax.plot(x, y, color=OTHERS_COLOR, linewidth=0.8, zorder=1, gid=gid(DELTA_GID, study, label),
                    label=f"{len(others)} others" if label == others[0] else None)
            continue
        # Configurations at one rate would hide each other's bars: each is nudged by up to ±1.5 % of the rate.
        x = x * 10 ** (0.0065 * (shown.index(label) - (len(shown) - 1) / 2) if len(shown) > 1 else 0.0)
        half = part["half"].to_numpy(dtype=np.float64)
        bars = ax.errorbar(x, y, yerr=np.where(np.isfinite(half), half, 0.0), color=colors[label], linewidth=1.4,
                           marker="o", markersize=5, capsize=3, elinewidth=1.0, zorder=3, label=_short(label))
        bars.lines[0].set_gid(gid(DELTA_GID, study, label))
    trial_labels = set(study_points["configuration"])
    done = set(drawn["configuration"]) if not drawn.empty else set()
    missing = [_short(lb) for lb in order if lb in trial_labels and lb not in done]
    if drawn.empty:
        ax.set_xlim(float(base_rates.min()), float(base_rates.max()))
        ax.set_ylim(-1.0, 1.0)
    else:
        n = drawn["n"].to_numpy(dtype=np.float64)
        with_interval = drawn[np.isfinite(drawn["half"].to_numpy(dtype=np.float64)) & (n >= 2)]
        if with_interval.empty:
            notes.append("n=1: no spread, no interval (one seed paired per point)")
        else:
            notes.append(f"error bars: {CONFIDENCE:.0%} paired t intervals over {fmt.count_range(with_interval['n'])}"
                         .replace("%", " %") + (" (same seed and λ, baseline at equal rate)" if basis == EQUAL_RATE
                                           else " (same seed and λ)"))
            excluding = int(((with_interval["low"] > 0) | (with_interval["high"] < 0)).sum())
            notes.append(WITHIN_NOISE if excluding == 0 else
                         f"{excluding} of {len(with_interval)} intervals exclude 0")
    if basis == EQUAL_RATE and COLLAPSED in study_points.columns and (study_points[COLLAPSED] == 1.0).any():
        notes.append("collapsed trials left out")
    if missing:
        # An absent curve would read as "no difference"; say which ones have no paired point.
        notes.append("no point paired with the baseline at its rates: " + ", ".join(missing))
    _legend(ax, "best")
    if notes:
        low, high = ax.get_ylim()  # headroom for the note, so it hides no bar
        ax.set_ylim(low, high + (0.07 * len(notes) + 0.03) * (high - low))
        ax.text(0.02, 0.98, "\n".join(notes), ha="left", va="top", fontsize=8, transform=ax.transAxes, wrap=True,
                zorder=9, bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "alpha": 0.85, "linewidth": 0})
    return basis


def _rd_line(ax, rows: pd.DataFrame, col: str, label: str | None, color, width: float, marker: str | None,
             z: int, artist_gid: str) -> None:
    rows = rows.sort_values("rate")
    rows = rows[rows[col].notna()]
    if rows.empty:
        return
    err = rows[f"{col}_std"].to_numpy(dtype=np.float64, na_value=np.nan) if f"{col}_std" in rows else None
    x, y = rows["rate"].to_numpy(dtype=np.float64), rows[col].to_numpy(dtype=np.float64)
    if err is None or not np.isfinite(err).any() or marker is None:
        ax.plot(x, y, label=label, color=color, linewidth=width, marker=marker, markersize=4 + width, zorder=z,
                gid=artist_gid)
        return
    bars = ax.errorbar(x, y, yerr=np.nan_to_num(err), label=label, color=color, linewidth=width, marker=marker,
                       markersize=4 + width, capsize=2, zorder=z, elinewidth=max(width / 2, 0.6))
    bars.lines[0].set_gid(artist_gid)


# ---------------------------------------------------------------------------------------------- trajectories


def _histories(report, prefix: str) -> pd.DataFrame:
    """Long table study, configuration, epoch, metric, value of the metrics starting with ``prefix``."""
    config_of = dict(zip(report.trials["trial_dir"], report.trials["configuration"], strict=True)) \
        if not report.trials.empty else {}
    records = []
    for exp in report.experiments:
        for trial in exp.trials:
            label = config_of.get(str(exp.path / trial.dirname))
            if label is None:
                continue
            for index, row in enumerate(trial.rows, start=1):
                epoch = row.get(m.EPOCH, index)
                for key, value in row.items():
                    if key.startswith(prefix) and isinstance(value, int | float) and math.isfinite(value):
                        records.append((trial.study, label, epoch, key, float(value)))
    return pd.DataFrame.from_records(records, columns=[STUDY, "configuration", "epoch", "metric", "value"])


def _trajectories(report, prefix: str, what: str, order: tuple[str, ...]) -> Figure:
    hist = _histories(report, prefix)
    if hist.empty:
        return _empty(f"No {what} reported in these results\n(the standard objective has none)")
    studies = list(dict.fromkeys(hist[STUDY]))
    present = set(hist["metric"])
    names = [n for n in order if n in present] + sorted(present.difference(order))
    fig = Figure(figsize=(3.6 * len(names) + 2.5, 3.2 * len(studies)))
    # One y-range per row: panels of one study compare at a glance (a weight of 0.3 is as high everywhere).
    axes = fig.subplots(len(studies), len(names), squeeze=False, sharey="row")
    stats_ = hist.groupby([STUDY, "configuration", "metric", "epoch"], sort=True)["value"].agg(["mean", "std", "count"])
    stats_ = stats_.reset_index()
    lines = {key: grp for key, grp in stats_.groupby([STUDY, "metric", "configuration"], sort=False)}
    for r, study in enumerate(studies):
        colors = study_colors(report, study)
        base, highlighted, others = _ranked(report, study)
        drawn = set(hist.loc[hist[STUDY] == study, "configuration"])
        labels = [lb for lb in [*others, base, *highlighted] if lb in drawn]
        others = [lb for lb in others if lb in drawn]
        bands = len(labels) <= MAX_BANDS
        counts: list[int] = []
        for c, name in enumerate(names):
            ax = axes[r][c]
            for label in labels:
                line = lines.get((study, name, label))
                if line is None:
                    continue
                epoch = line["epoch"].to_numpy(dtype=np.float64)
                mean = line["mean"].to_numpy(dtype=np.float64)
                std = line["std"].to_numpy(dtype=np.float64, na_value=np.nan)
                counts.extend(int(v) for v in line["count"])
                is_base, is_other = label == base, label in others
                if is_other:
                    shown = f"{len(others)} others" if label == others[0] else None
                else:
                    shown = _short(label + (" (baseline)" if is_base else ""))
                ax.plot(epoch, mean, color=colors[label], linewidth=2.4 if is_base else (0.8 if is_other else 1.3),
                        label=shown, zorder=1 if is_other else (2 if is_base else 3), gid=gid(MEAN_GID, study, label))
                if bands and np.isfinite(std).any():
                    std = np.nan_to_num(std)
                    ax.fill_between(epoch, mean - std, mean + std, color=colors[label], alpha=0.12, linewidth=0)
            ax.set_title(f"{study}: {name}", fontsize=10)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(True, alpha=0.3)
            if c == 0:
                ax.set_ylabel(what)
        # One legend per study, outside the panels so it hides no line; configurations differ in their tasks
        # (2 vs 5): the legend gathers every panel of the row.
        if counts and max(counts) < 2:
            title = "mean of each configuration's trial;\nn=1: no spread"
        elif bands:
            title = ("bands: ±1 std over each configuration's\ntrials (all λ and seeds; "
                     f"{fmt.count_range(counts, 'trials')} per epoch)")
        else:
            title = f"mean over each configuration's trials\n(all λ and seeds); no bands: > {MAX_BANDS} configurations"
        _legend(axes[r][-1], outside=True, sources=list(axes[r]), title=title)
    fig.tight_layout()
    return fig


def weights_figure(report) -> Figure:
    """Task weights z_i over epochs per configuration (mean over its trials, band = std), one row per study."""
    order = tuple(m.WEIGHTS[t] for t in m.TASKS)
    return _trajectories(report, m.weight_name(""), "task weight", order)


def gammas_figure(report) -> Figure:
    """The gamma_s of each scale over epochs (base gamma times the schedule's multiplier)."""
    order = tuple(m.GAMMA[s] for s in m.SCALES)
    return _trajectories(report, m.GAMMA[m.SCALES[0]].split("/")[0] + "/", "gamma", order)


def weights(report) -> bytes:
    """PNG of :func:`weights_figure`."""
    return _png(weights_figure(report))


def gammas(report) -> bytes:
    """PNG of :func:`gammas_figure`."""
    return _png(gammas_figure(report))


# ---------------------------------------------------------------------------------------------- all figures

FIGURES: dict[str, Any] = {"rd_curves.png": rd_curves, "weights.png": weights, "gammas.png": gammas}
_SHARED_REPORT: Any = None  # the report a forked renderer reads (set just before the fork, never pickled)


def _render(name: str) -> bytes:
    return FIGURES[name](_SHARED_REPORT)


def render_all(report, workers: int | None = None) -> dict[str, bytes]:
    """Every figure of FIGURES as PNG bytes. matplotlib draws on one core, so with more than one CPU the
    figures are drawn side by side in forked processes (each inherits the report; nothing is pickled but the
    PNGs coming back); without fork, or with one CPU, one after the other."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    global _SHARED_REPORT
    workers = min(len(FIGURES), workers or os.cpu_count() or 1)
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return {name: draw(report) for name, draw in FIGURES.items()}
    _SHARED_REPORT = report
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            return dict(zip(FIGURES, pool.map(_render, FIGURES), strict=True))
    finally:
        _SHARED_REPORT = None
