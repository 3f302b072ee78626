"""Figures of an analysis: RD curves per study (baseline highlighted), task-weight and gamma trajectories over
epochs. Each function returns PNG bytes (the caller writes them atomically)."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from scipy.interpolate import PchipInterpolator  # noqa: E402

from hpcm_tune import metrics as m  # noqa: E402
from hpcm_tune.analysis.results import STUDY  # noqa: E402
from hpcm_tune.analysis.tables import RATES  # noqa: E402

DELTA = "delta psnr"  # the ΔPSNR panel of rd_curves
MAX_LEGEND = 14  # more entries than this hide the plot; the rest are summarised as "+N more"
MAX_BANDS = 5  # std bands only up to this many configurations per panel (more are unreadable and slow)
MAX_HIGHLIGHT = 11  # beyond the baseline, the best configurations (by BD-rate) in colour; the rest thin grey
MAX_LABEL = 48  # characters of a legend label (generated labels of random searches can be long)
OTHERS_COLOR = "0.7"
# Reference codecs: neutral grey, told apart by dash and marker (never a configuration's colour).
REFERENCE_COLOR = "0.35"
REFERENCE_STYLES = (("--", "x"), (":", "+"), ("-.", "1"), ((0, (5, 1, 1, 1)), "2"))


def _short(label: str) -> str:
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…"


def _ranked(report, study: str, labels: list[str]) -> tuple[str | None, list[str], list[str]]:
    """(baseline, highlighted, others): highlighted are the MAX_HIGHLIGHT best configurations by BD-rate
    (then by name), so a sweep of a hundred configurations still gives a readable figure."""
    base = report.baselines.get(study)
    rest = [lb for lb in labels if lb != base]
    if len(rest) <= MAX_HIGHLIGHT:
        return base, rest, []
    tables = next((st for st in report.studies if st.study == study), None)
    score = {}
    if tables is not None and "BD-rate PSNR (%)" in tables.ablation:
        score = dict(zip(tables.ablation["configuration"], tables.ablation["BD-rate PSNR (%)"], strict=True))
    order = sorted(rest, key=lambda lb: (not np.isfinite(score.get(lb, np.nan)), score.get(lb, 0.0), lb))
    return base, order[:MAX_HIGHLIGHT], order[MAX_HIGHLIGHT:]
DPI = 110


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # after tight_layout: no second "tight" draw pass
    plt.close(fig)
    return buf.getvalue()


def _empty(message: str) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, wrap=True)
    return _png(fig)


def _colors(n: int):
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _legend(ax, loc: str = "best", outside: bool = False, sources: list | None = None, keep_last: int = 0) -> None:
    """A legend on ``ax`` for the lines of ``sources`` (default: ax itself), each label once; the ``keep_last``
    last entries (the reference codecs) are always shown."""
    found: dict[str, object] = {}
    for source in sources or [ax]:
        for handle, label in zip(*source.get_legend_handles_labels(), strict=True):
            found.setdefault(label, handle)
    handles, labels = list(found.values()), list(found)
    if not handles:
        return
    extra = len(handles) - MAX_LEGEND
    if extra > 0:
        head = MAX_LEGEND - keep_last
        handles = handles[:head] + handles[len(handles) - keep_last:]
        labels = labels[:head] + labels[len(labels) - keep_last:]
        handles.append(plt.Line2D([], [], linestyle="none"))
        labels.append(f"+{extra} more")
    if outside:
        ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.03, 1.0), borderaxespad=0.0)
        return
    # "best" placement scans every line point: only affordable for a few lines.
    ax.legend(handles, labels, fontsize=8, loc=loc if len(handles) <= 6 else "upper left", framealpha=0.85)


def rd_curves(report) -> bytes:
    """bpp vs PSNR, ΔPSNR against the baseline at equal rate, and bpp vs MS-SSIM dB when reported, per
    configuration, one row per study; the baseline is the thick black line; error bars are the std over
    seeds."""
    curves = report.curves
    if curves.empty:
        return _empty("No RD point: no finished trial with eval/psnr and eval/bpp\n(--include-partial uses the others)")
    qualities = [("psnr", "PSNR (dB)"), (DELTA, "ΔPSNR vs baseline at equal rate (dB)")]
    if curves["ms_ssim_db"].notna().any():
        qualities.append(("ms_ssim_db", "MS-SSIM (dB)"))
    studies = list(dict.fromkeys(curves[STUDY]))
    fig, axes = plt.subplots(len(studies), len(qualities), figsize=(7.0 * len(qualities), 4.8 * len(studies)),
                             squeeze=False)
    groups = dict(tuple(curves.groupby([STUDY, "configuration"], sort=False)))
    for r, study in enumerate(studies):
        base, highlighted, others = _ranked(report, study, list(dict.fromkeys(curves.loc[curves[STUDY] == study,
                                                                                        "configuration"])))
        for c, (col, name) in enumerate(qualities):
            ax = axes[r][c]
            if col == DELTA:
                _delta_panel(ax, groups, study, base, highlighted, others)
                ax.set_xlabel(f"rate: {RATES[report.options.rate]} (bits per pixel)")
                ax.set_ylabel(name)
                ax.set_title(f"{study}: {name}", fontsize=11)
                ax.grid(True, alpha=0.3)
                continue
            for i, label in enumerate(others):
                _rd_line(ax, groups[(study, label)], col, f"{len(others)} others" if i == 0 else None,
                         OTHERS_COLOR, 0.8, None, 1)
            if (study, base) in groups:
                _rd_line(ax, groups[(study, base)], col, _short(f"{base} (baseline)"), "black", 2.6, "s", 5)
            for label, color in zip(highlighted, _colors(len(highlighted)), strict=True):
                _rd_line(ax, groups[(study, label)], col, _short(label), color, 1.4, "o", 3)
            n_ref = 0
            if col == "psnr":
                n_ref = _reference_lines(ax, getattr(report, "references", {}).get(str(study)),
                                         curves.loc[curves[STUDY] == study, ["rate", "psnr"]])
            ax.set_xlabel(f"rate: {RATES[report.options.rate]} (bits per pixel)")
            ax.set_ylabel(name)
            ax.set_title(f"{study}: {name} vs rate", fontsize=11)
            ax.grid(True, alpha=0.3)
            _legend(ax, "lower right", keep_last=n_ref)
    fig.tight_layout()
    return _png(fig)


def _reference_lines(ax, reference, models: pd.DataFrame) -> int:
    """The reference codecs' curves (neutral grey), cut to the models' rates (up to twice the highest, and at
    least each codec's two lowest points) so a codec's 3-bpp end does not squash the plot, and the flat-colour
    PSNR when a model comes within 5 dB of it. Returns the number of legend entries added."""
    if reference is None or reference.points is None:
        return 0
    points = reference.points
    rates, psnrs = (models[c].to_numpy(dtype=np.float64) for c in ("rate", "psnr"))
    top = 2.0 * float(np.nanmax(rates)) if np.isfinite(rates).any() else np.inf
    for codec, (dash, marker) in zip(points.codecs, REFERENCE_STYLES * 4, strict=False):
        bpp, psnr = points.curve(codec)
        keep = (bpp <= top) | (np.arange(bpp.size) < 2)
        ax.plot(bpp[keep], psnr[keep], color=REFERENCE_COLOR, linestyle=dash, marker=marker, markersize=6,
                linewidth=1.1, label=points.label(codec), zorder=2)
    if not (np.isfinite(psnrs).any() and np.nanmin(psnrs) < points.flat_psnr + 5.0):
        return len(points.codecs)
    ax.axhline(points.flat_psnr, color=REFERENCE_COLOR, linestyle=(0, (1, 3)), linewidth=1.0, zorder=0,
               label=f"flat colour ({points.flat_psnr:.1f} dB)")
    return len(points.codecs) + 1


def _delta_panel(ax, groups: dict, study: str, base: str | None, highlighted: list[str], others: list[str]) -> None:
    """PSNR of each configuration minus the baseline's PSNR at the same rate (the baseline's curve
    interpolated in log rate, piecewise cubic Hermite, no extrapolation): the differences the BD-rate averages,
    which the absolute RD plot is too coarse to show."""
    rows = groups.get((study, base))
    if rows is None:
        ax.text(0.5, 0.5, "no baseline RD curve", ha="center", va="center", transform=ax.transAxes)
        return
    rows = rows[(rows["rate"] > 0) & rows["psnr"].notna()]
    log_rate, index = np.unique(np.log10(rows["rate"].to_numpy(dtype=np.float64)), return_index=True)
    if log_rate.size < 2:
        ax.text(0.5, 0.5, "baseline has fewer than 2 RD points", ha="center", va="center", transform=ax.transAxes)
        return
    anchor = PchipInterpolator(log_rate, rows["psnr"].to_numpy(dtype=np.float64)[index], extrapolate=False)
    ax.axhline(0.0, color="black", linewidth=2.6, zorder=5)
    colors = dict(zip(highlighted, _colors(len(highlighted)), strict=True))
    outside: list[str] = []
    for label in [*others, *highlighted]:
        test = groups[(study, label)].sort_values("rate")
        test = test[(test["rate"] > 0) & test["psnr"].notna()]
        rate = test["rate"].to_numpy(dtype=np.float64)
        delta = test["psnr"].to_numpy(dtype=np.float64) - anchor(np.log10(rate))
        keep = np.isfinite(delta)
        if not keep.any():
            outside.append(_short(label))
        elif label in colors:
            ax.plot(rate[keep], delta[keep], color=colors[label], linewidth=1.4, marker="o", markersize=5, zorder=3)
        else:
            ax.plot(rate[keep], delta[keep], color=OTHERS_COLOR, linewidth=0.8, zorder=1)
    if len(ax.lines) == 1:  # only the zero line: frame the baseline's rate range around it
        ax.set_xlim(10 ** log_rate[0], 10 ** log_rate[-1])
        ax.set_ylim(-1.0, 1.0)
    if outside:
        # An empty panel would read as "no difference"; say which curves never reach the baseline's rates.
        ax.text(0.5, 0.04, "no point inside the baseline's rate range:\n" + ", ".join(outside), ha="center",
                va="bottom", fontsize=8, transform=ax.transAxes, wrap=True)


def _rd_line(ax, rows: pd.DataFrame, col: str, label: str | None, color, width: float, marker: str | None,
             z: int) -> None:
    rows = rows.sort_values("rate")
    rows = rows[rows[col].notna()]
    if rows.empty:
        return
    err = rows[f"{col}_std"].to_numpy(dtype=np.float64, na_value=np.nan) if f"{col}_std" in rows else None
    x, y = rows["rate"].to_numpy(dtype=np.float64), rows[col].to_numpy(dtype=np.float64)
    if err is None or not np.isfinite(err).any() or marker is None:
        ax.plot(x, y, label=label, color=color, linewidth=width, marker=marker, markersize=4 + width, zorder=z)
        return
    ax.errorbar(x, y, yerr=np.nan_to_num(err), label=label, color=color, linewidth=width, marker=marker,
                markersize=4 + width, capsize=2, zorder=z, elinewidth=max(width / 2, 0.6))


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


def _trajectories(report, prefix: str, what: str, order: tuple[str, ...]) -> bytes:
    hist = _histories(report, prefix)
    if hist.empty:
        return _empty(f"No {what} reported in these results\n(the standard objective has none)")
    studies = list(dict.fromkeys(hist[STUDY]))
    present = set(hist["metric"])
    names = [n for n in order if n in present] + sorted(present.difference(order))
    fig, axes = plt.subplots(len(studies), len(names), figsize=(3.6 * len(names) + 1, 3.2 * len(studies)),
                             squeeze=False, sharex=False)
    stats = hist.groupby([STUDY, "configuration", "metric", "epoch"], sort=True)["value"].agg(["mean", "std"])
    stats = stats.reset_index()
    lines = {key: grp for key, grp in stats.groupby([STUDY, "metric", "configuration"], sort=False)}
    for r, study in enumerate(studies):
        base, highlighted, others = _ranked(report, study, list(dict.fromkeys(hist.loc[hist[STUDY] == study,
                                                                                     "configuration"])))
        labels = ([base] if base is not None else []) + highlighted + others
        colors = dict(zip(highlighted, _colors(len(highlighted)), strict=True))
        colors.update({lb: OTHERS_COLOR for lb in others})
        colors[base] = "black"
        for c, name in enumerate(names):
            ax = axes[r][c]
            for label in labels:
                line = lines.get((study, name, label))
                if line is None:
                    continue
                epoch = line["epoch"].to_numpy(dtype=np.float64)
                mean = line["mean"].to_numpy(dtype=np.float64)
                std = line["std"].to_numpy(dtype=np.float64, na_value=np.nan)
                is_base, is_other = label == base, label in others
                color = colors[label]
                if is_other:
                    shown = f"{len(others)} others" if label == others[0] else None
                else:
                    shown = _short(label + (" (baseline)" if is_base else ""))
                ax.plot(epoch, mean, color=color, linewidth=2.4 if is_base else (0.8 if is_other else 1.3),
                        label=shown, zorder=1 if is_other else (3 if is_base else 2))
                if len(labels) <= MAX_BANDS and np.isfinite(std).any():
                    std = np.nan_to_num(std)
                    ax.fill_between(epoch, mean - std, mean + std, color=color, alpha=0.12, linewidth=0)
            ax.set_title(f"{study}: {name}", fontsize=10)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(True, alpha=0.3)
            if c == 0:
                ax.set_ylabel(what)
            if c == len(names) - 1:  # one legend per study, outside the panels so it hides no line
                # Configurations differ in their tasks (2 vs 5): the legend gathers every panel of the row.
                _legend(ax, outside=True, sources=list(axes[r]))
    fig.tight_layout()
    return _png(fig)


def weights(report) -> bytes:
    """Task weights z_i over epochs per configuration (mean over its trials, band = std), one row per study."""
    order = tuple(m.WEIGHTS[t] for t in m.TASKS)
    return _trajectories(report, m.weight_name(""), "task weight", order)


def gammas(report) -> bytes:
    """The gamma_s of each scale over epochs (base gamma times the schedule's multiplier)."""
    order = tuple(m.GAMMA[s] for s in m.SCALES)
    return _trajectories(report, m.GAMMA[m.SCALES[0]].split("/")[0] + "/", "gamma", order)
