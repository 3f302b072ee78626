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

from hpcm_tune import metrics as m  # noqa: E402
from hpcm_tune.analysis.results import STUDY  # noqa: E402
from hpcm_tune.analysis.tables import RATES  # noqa: E402

MAX_LEGEND = 14  # more entries than this hide the plot; the rest are summarised as "+N more"
DPI = 110


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
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


def _legend(ax, baseline_first: bool = True) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    extra = len(handles) - MAX_LEGEND
    if extra > 0:
        handles, labels = handles[:MAX_LEGEND], labels[:MAX_LEGEND]
        handles.append(plt.Line2D([], [], linestyle="none"))
        labels.append(f"+{extra} more")
    ax.legend(handles, labels, fontsize=8, loc="best", framealpha=0.85)


def rd_curves(report) -> bytes:
    """bpp vs PSNR (and vs MS-SSIM dB when reported) per configuration, one row per study; the baseline is
    the thick black line; error bars are the std over seeds."""
    curves = report.curves
    if curves.empty:
        return _empty("No RD point: no finished trial with eval/psnr and eval/bpp\n(--include-partial uses the others)")
    qualities = [("psnr", "PSNR (dB)")]
    if curves["ms_ssim_db"].notna().any():
        qualities.append(("ms_ssim_db", "MS-SSIM (dB)"))
    studies = list(dict.fromkeys(curves[STUDY]))
    fig, axes = plt.subplots(len(studies), len(qualities), figsize=(7.0 * len(qualities), 4.8 * len(studies)),
                             squeeze=False)
    baselines = report.baselines
    for r, study in enumerate(studies):
        part = curves[curves[STUDY] == study]
        labels = list(dict.fromkeys(part["configuration"]))
        base = baselines.get(study)
        others = [lb for lb in labels if lb != base]
        for c, (col, name) in enumerate(qualities):
            ax = axes[r][c]
            if base in labels:
                _rd_line(ax, part[part["configuration"] == base], col, f"{base} (baseline)", "black", 2.6, "s", 5)
            for label, color in zip(others, _colors(len(others)), strict=True):
                _rd_line(ax, part[part["configuration"] == label], col, label, color, 1.4, "o", 3)
            ax.set_xlabel(f"rate: {RATES[report.options.rate]} (bits per pixel)")
            ax.set_ylabel(name)
            ax.set_title(f"{study}: {name} vs rate", fontsize=11)
            ax.grid(True, alpha=0.3)
            _legend(ax)
    fig.tight_layout()
    return _png(fig)


def _rd_line(ax, rows: pd.DataFrame, col: str, label: str, color, width: float, marker: str, z: int) -> None:
    rows = rows.sort_values("rate")
    rows = rows[rows[col].notna()]
    if rows.empty:
        return
    err = rows[f"{col}_std"].to_numpy() if f"{col}_std" in rows else None
    err = None if err is None or not np.isfinite(err).any() else np.nan_to_num(err)
    ax.errorbar(rows["rate"], rows[col], yerr=err, label=label, color=color, linewidth=width, marker=marker,
                markersize=4 + width, capsize=2 if err is not None else 0, zorder=z)


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
    baselines = report.baselines
    stats = hist.groupby([STUDY, "configuration", "metric", "epoch"])["value"].agg(["mean", "std"]).reset_index()
    for r, study in enumerate(studies):
        part = stats[stats[STUDY] == study]
        labels = list(dict.fromkeys(hist.loc[hist[STUDY] == study, "configuration"]))
        colors = dict(zip(labels, _colors(len(labels)), strict=True))
        for c, name in enumerate(names):
            ax = axes[r][c]
            for label in labels:
                line = part[(part["configuration"] == label) & (part["metric"] == name)].sort_values("epoch")
                if line.empty:
                    continue
                is_base = label == baselines.get(study)
                color = "black" if is_base else colors[label]
                ax.plot(line["epoch"], line["mean"], color=color, linewidth=2.4 if is_base else 1.3,
                        label=label + (" (baseline)" if is_base else ""))
                if line["std"].notna().any():
                    ax.fill_between(line["epoch"], line["mean"] - line["std"].fillna(0),
                                    line["mean"] + line["std"].fillna(0), color=color, alpha=0.12, linewidth=0)
            ax.set_title(f"{study}: {name}", fontsize=10)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(True, alpha=0.3)
            if c == 0:
                ax.set_ylabel(what)
                _legend(ax)
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
