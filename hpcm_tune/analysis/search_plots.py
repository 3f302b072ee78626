"""Figures of a search (analysis.search): the sweep's metric against each searched parameter (a simplex as its
components, log x axes for loguniform domains) and parallel coordinates of the parameters and the metric.

Finished trials are filled dots, trials stopped early hollow grey rings (their value is from fewer epochs), the
best finished trial a star. Artists carry gids ``search\\x1f<component>\\x1f<status>`` so a test (or a reader of
the Figure) can find what was drawn. The ``*_figure`` functions return the matplotlib Figure; :func:`render` the
PNG bytes of every figure of the report's searches, by the file names analysis.search.figure_names gives."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from hpcm_tune.analysis.plots import DPI, _empty, _png  # noqa: E402
from hpcm_tune.analysis.results import FINISHED, STOPPED  # noqa: E402
from hpcm_tune.analysis.search import SearchAtLambda, SearchSection, figure_names  # noqa: E402

SEARCH_GID = "search"
FINISHED_COLOR, STOPPED_COLOR, BEST_COLOR = "#1f77b4", "0.55", "#d62728"
PANELS_PER_ROW = 4
CMAP = "viridis"


def search_gid(component: str, status: str) -> str:
    return f"{SEARCH_GID}\x1f{component}\x1f{status}"


def _positions(section: SearchSection, component: str, values) -> tuple[np.ndarray, list | None]:
    """x positions of one component's values: numbers as they are, choices as their index (with the labels)."""
    param = section.param_of(component)
    if not param.categorical:
        return np.array([float(v) if v is not None else np.nan for v in values], dtype=np.float64), None
    labels = list(dict.fromkeys([*param.values, *(v for v in values if v is not None)]))
    return np.array([labels.index(v) if v is not None else np.nan for v in values], dtype=np.float64), labels


def _importance_text(at: SearchAtLambda, component: str) -> str:
    if not at.importances:
        return ""
    return " (" + ", ".join(f"{imp.method} {imp.values.get(component, 0.0):.2f}" for imp in at.importances) + ")"


def params_figure(section: SearchSection, at: SearchAtLambda) -> Figure:
    """One panel per searched component: the metric of each trial against its value."""
    board = at.board[at.board["value"].map(lambda v: isinstance(v, float) and math.isfinite(v))]
    components = list(section.components)
    if board.empty or not components:
        return _empty(f"{section.study}, lambda {at.lmbda:g}: no trial with a value of {section.metric}")
    cols = min(PANELS_PER_ROW, len(components))
    rows = math.ceil(len(components) / cols)
    fig = Figure(figsize=(3.6 * cols + 0.6, 3.2 * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    best = at.best.trial_dir if at.best is not None else None
    for index, component in enumerate(components):
        ax = axes[index // cols][index % cols]
        x, labels = _positions(section, component, list(board[component]))
        y = board["value"].to_numpy(dtype=np.float64)
        status = board["status"].to_numpy()
        done, early = status == FINISHED, status == STOPPED
        ax.scatter(x[done], y[done], s=26, color=FINISHED_COLOR, zorder=3, gid=search_gid(component, FINISHED))
        if early.any():
            ax.scatter(x[early], y[early], s=26, facecolors="none", edgecolors=STOPPED_COLOR, zorder=2,
                       gid=search_gid(component, STOPPED))
        is_best = (board["trial_dir"] == best).to_numpy()
        if is_best.any():
            ax.scatter(x[is_best], y[is_best], s=140, marker="*", color=BEST_COLOR, zorder=4,
                       gid=search_gid(component, "best"))
        if section.param_of(component).log:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        if labels is not None:
            ax.set_xticks(range(len(labels)), [str(v) for v in labels], rotation=30, fontsize=7)
        ax.set_xlabel(component + _importance_text(at, component), fontsize=8)
        ax.grid(True, alpha=0.3)
        if index % cols == 0:
            ax.set_ylabel(f"{section.metric} ({'lower' if section.mode == 'min' else 'higher'} is better)")
    for index in range(len(components), rows * cols):
        axes[index // cols][index % cols].axis("off")
    handles = [Line2D([], [], linestyle="none", marker="o", color=FINISHED_COLOR, label="finished"),
               Line2D([], [], linestyle="none", marker="o", markerfacecolor="none", markeredgecolor=STOPPED_COLOR,
                      label="stopped early (fewer epochs)"),
               Line2D([], [], linestyle="none", marker="*", color=BEST_COLOR, markersize=11, label="best")]
    fig.legend(handles=handles, loc="upper right", fontsize=8, ncols=3)
    fig.suptitle(f"{section.study}, λ = {at.lmbda:g}: {section.metric} against each searched parameter",
                 fontsize=10, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


def parallel_figure(section: SearchSection, at: SearchAtLambda) -> Figure:
    """Parallel coordinates: one vertical axis per searched component (log-scaled for log domains, min and max
    written at its ends) and the metric last; one line per trial, coloured by its value (finished), dashed
    grey (stopped early)."""
    board = at.board[at.board["value"].map(lambda v: isinstance(v, float) and math.isfinite(v))]
    components = list(section.components)
    if board.empty or not components:
        return _empty(f"{section.study}, lambda {at.lmbda:g}: no trial with a value of {section.metric}")
    axes_names = [*components, section.metric]
    scaled, ends = [], []
    for name in axes_names:
        if name == section.metric:
            x, labels, log = board["value"].to_numpy(dtype=np.float64), None, False
        else:
            x, labels = _positions(section, name, list(board[name]))
            log = section.param_of(name).log and bool(np.nanmin(x) > 0)
        v = np.log10(x) if log else x
        lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
        scaled.append((v - lo) / (hi - lo) if hi > lo else np.full_like(v, 0.5))
        if labels is not None:
            ends.append((str(labels[int(np.nanmin(x))]), str(labels[int(np.nanmax(x))])))
        else:
            ends.append((f"{np.nanmin(x):.3g}", f"{np.nanmax(x):.3g}"))
    data = np.vstack(scaled).T  # trials x axes
    fig = Figure(figsize=(max(6.0, 1.5 * len(axes_names) + 1.5), 4.4))
    ax = fig.subplots()
    values = board["value"].to_numpy(dtype=np.float64)
    status = board["status"].to_numpy()
    done = values[status != STOPPED]
    lo, hi = (float(np.nanmin(done)), float(np.nanmax(done))) if done.size else (float(np.nanmin(values)),
                                                                                  float(np.nanmax(values)))
    cmap = colormaps[CMAP if section.mode == "min" else CMAP + "_r"]
    xs = np.arange(len(axes_names))
    order = np.argsort(-values if section.mode == "min" else values)  # the best drawn last, on top
    for i in order:
        early = status[i] == STOPPED
        color = STOPPED_COLOR if early else cmap(min(max((values[i] - lo) / (hi - lo), 0.0), 1.0) if hi > lo else 0.0)
        ax.plot(xs, data[i], color=color, linestyle="--" if early else "-", linewidth=0.9 if early else 1.6,
                alpha=0.7 if early else 0.9, gid=search_gid("parallel", str(status[i])))
    for k, (low, high) in enumerate(ends):
        ax.axvline(k, color="0.2", linewidth=0.8)
        ax.text(k, -0.06, low, ha="center", va="top", fontsize=7)
        ax.text(k, 1.06, high, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(xs, [n + (" (log)" if n != section.metric and section.param_of(n).log else "")
                       for n in axes_names], rotation=20, fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.15, 1.15)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    mappable = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(lo, hi), cmap=cmap)
    fig.colorbar(mappable, ax=ax, label=f"{section.metric} (finished trials)", fraction=0.04, pad=0.02)
    ax.set_title(f"{section.study}, λ = {at.lmbda:g}: parallel coordinates (dashed grey: stopped early)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def render(sections: list[SearchSection]) -> dict[str, bytes]:
    """PNG bytes of both figures of every lambda of every search, by file name."""
    out: dict[str, bytes] = {}
    for section in sections:
        for at in section.per_lambda:
            names = figure_names(section, at)
            out[names["params"]] = _png(params_figure(section, at))
            out[names["parallel"]] = _png(parallel_figure(section, at))
    return out


__all__ = ["DPI", "params_figure", "parallel_figure", "render", "search_gid"]
