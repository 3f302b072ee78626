"""The figures of an analysis: one colour per configuration in every figure of a study, the baseline black, a log
rate axis, labelled error bars and bands, paired ΔPSNR intervals, every trial's point and the collapsed ones."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from scipy import stats

from hpcm_tune import metrics as m
from hpcm_tune.analysis import plots
from hpcm_tune.analysis.report import build_report
from hpcm_tune.analysis.results import load_experiments
from hpcm_tune.analysis.tables import COLLAPSED, AnalysisOptions, curve_points
from hpcm_tune.testing import write_experiment_dir

LAMBDAS = (0.0018, 0.0067, 0.013, 0.0483)
SCALE_WEIGHTS = {"equal": [0.33, 0.33, 0.34], "s1 emphasis": [0.5, 0.3, 0.2], "s2 emphasis": [0.3, 0.4, 0.3],
                 "s3 emphasis": [0.2, 0.3, 0.5]}
BASELINE = "s2 emphasis"  # the training defaults' scale weights
STUDY = "scale_weights"


def _trials(seeds=(0, 1, 2), offsets=None, epochs=3, rate_factors=(("s3 emphasis", 0.9),)):
    """The scale-weights study: 4 configurations x 4 lambdas x ``seeds``; ``offsets[label][seed]`` (dB) on top
    of a 0.4 dB seed jitter that every configuration shares (fake_rd_metrics draws it from seed and lambda)."""
    offsets, rate_factors = offsets or {}, dict(rate_factors)
    out = []
    for label, weights in SCALE_WEIGHTS.items():
        for lam in LAMBDAS:
            for seed in seeds:
                config = {"objective": "hierarchical", "lmbda": lam, "seed": seed, "epochs": epochs, "study": STUDY,
                          "label": label, "scale_weights": weights}
                out.append({"config": config, "noise": 0.4, "psnr_offset": offsets.get(label, {}).get(seed, 0.0),
                            "rate_factor": rate_factors.get(label, 1.0)})
    return out


def _collapse(root, label="s1 emphasis", lmbda=0.0018):
    """The newer engine's collapse metrics in every trial; ``label``'s trials at ``lmbda`` collapsed."""
    for params in root.glob("*/params.json"):
        config = json.loads(params.read_text())
        bad = config["label"] == label and config["lmbda"] == lmbda
        result = params.parent / "result.json"
        rows = [json.loads(line) for line in result.read_text().splitlines()]
        for row in rows:
            if bad:
                row.update({m.EVAL_BPP: 0.05, m.EVAL_PSNR: 15.2, m.EVAL_BPP_Z: 0.049})
            row[m.EVAL_FLAT_PSNR] = 15.0
            row[m.EVAL_COLLAPSED] = float(bad)
        result.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _report(root):
    return build_report(load_experiments([root]), AnalysisOptions(reference=False))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = write_experiment_dir(tmp_path_factory.mktemp("plots") / "results", "exp", _trials(), study=STUDY)
    _collapse(root)
    return _report(root)


@pytest.fixture(scope="module")
def rd_figure(report):
    return plots.rd_curves_figure(report)


def _panel(fig, title_part):
    return next(ax for ax in fig.axes if title_part in ax.get_title())


def _color(artist):
    if hasattr(artist, "get_offsets"):  # a scatter: its face colour, or its edge colour for a cross
        colors = artist.get_facecolor()
        return to_hex((colors if len(colors) else artist.get_edgecolor())[0])
    return to_hex(artist.get_color())


def _drawn(fig, kinds=(plots.MEAN_GID, plots.TRIAL_GID, plots.COLLAPSED_GID, plots.DELTA_GID)):
    """(kind, study, configuration, colour, artist) of each configuration's artist in ``fig``."""
    out = []
    for artist in fig.findobj(lambda a: plots.parse_gid(a.get_gid()) is not None):
        kind, study, label = plots.parse_gid(artist.get_gid())
        if kind in kinds:
            out.append((kind, study, label, _color(artist), artist))
    return out


def _offsets(ax, kind):
    return sum(len(c.get_offsets()) for c in ax.collections if (plots.parse_gid(c.get_gid()) or ("",))[0] == kind)


def test_a_configuration_has_one_colour_in_every_figure_and_the_baseline_is_black(report, rd_figure):
    colors = plots.study_colors(report, STUDY)
    assert set(colors) == set(SCALE_WEIGHTS)
    assert colors[BASELINE] == "#000000"
    others = [c for lb, c in colors.items() if lb != BASELINE]
    assert len(set(others)) == len(others) and "#000000" not in others and plots.OTHERS_COLOR not in others
    for fig in (rd_figure, plots.weights_figure(report), plots.gammas_figure(report)):
        drawn = _drawn(fig)
        assert {label for _, _, label, _, _ in drawn} == set(SCALE_WEIGHTS)
        for kind, study, label, color, _ in drawn:
            assert study == STUDY and color == colors[label], (kind, label)
    # The legend says the same: each configuration's entry has its colour.
    legend = _panel(rd_figure, "PSNR (dB) vs rate").get_legend()
    entries = {t.get_text(): h for t, h in zip(legend.get_texts(), legend.legend_handles, strict=True)}
    assert to_hex(entries[f"{BASELINE} (baseline)"].get_color()) == "#000000"
    assert to_hex(entries["equal"].get_color()) == colors["equal"]


def test_the_rate_axis_is_log_by_default(report, rd_figure):
    rate_panels = [ax for ax in rd_figure.axes if ax.get_xlabel().startswith("rate:")]
    assert len(rate_panels) == 3  # PSNR, ΔPSNR and MS-SSIM
    assert all(ax.get_xscale() == "log" and "log scale" in ax.get_xlabel() for ax in rate_panels)
    linear = plots.rd_curves_figure(report, log_rate=False)
    assert all(ax.get_xscale() == "linear" for ax in linear.axes if ax.get_xlabel().startswith("rate:"))


def test_every_trial_point_is_drawn_and_collapsed_ones_are_crosses(report, rd_figure):
    points = curve_points(report.trials, report.options)
    assert len(points) == 48
    collapsed = int((points[COLLAPSED] == 1.0).sum())
    assert collapsed == 3  # s1 emphasis at the lowest lambda, every seed
    ax = _panel(rd_figure, "PSNR (dB) vs rate")
    assert _offsets(ax, plots.TRIAL_GID) + _offsets(ax, plots.COLLAPSED_GID) == len(points)
    assert _offsets(ax, plots.COLLAPSED_GID) == collapsed
    crosses = [a for kind, _, label, _, a in _drawn(rd_figure, (plots.COLLAPSED_GID,)) if a.axes is ax]
    assert [plots.parse_gid(a.get_gid())[2] for a in crosses] == ["s1 emphasis"]
    assert plots.COLLAPSED_LABEL in [t.get_text() for t in ax.get_legend().get_texts()]
    # The trials' own points, not the means: the plotted PSNRs are the trial table's.
    plotted = np.sort(np.concatenate([np.asarray(c.get_offsets())[:, 1] for c in ax.collections if c.get_gid()]))
    assert plotted == pytest.approx(np.sort(points["psnr"].to_numpy()))


def test_error_bars_and_bands_say_what_they_are(report, rd_figure):
    for title in ("PSNR (dB) vs rate", "MS-SSIM (dB) vs rate"):
        legend = _panel(rd_figure, title).get_legend()
        assert legend.get_title().get_text() == "error bars: ±1 std over 3 seeds"
    for fig in (plots.weights_figure(report), plots.gammas_figure(report)):
        titles = [ax.get_legend().get_title().get_text() for ax in fig.axes if ax.get_legend()]
        assert len(titles) == 1 and "±1 std" in titles[0] and "12 trials per epoch" in titles[0]


def test_lambdas_are_written_at_the_baseline_points(rd_figure):
    ax = _panel(rd_figure, "PSNR (dB) vs rate")
    texts = sorted(t.get_text() for t in ax.texts if t.get_text().startswith("λ="))
    assert texts == sorted(f"λ={lam:g}" for lam in LAMBDAS)


def test_weights_and_gammas_panels_share_their_y_range_per_row(report):
    for fig in (plots.weights_figure(report), plots.gammas_figure(report)):
        panels = [ax for ax in fig.axes if ax.get_title()]
        assert len(panels) >= 3
        assert len({ax.get_ylim() for ax in panels}) == 1


def test_paired_t_interval_equals_a_hand_computation():
    d = [0.12, -0.05, 0.31, 0.08]
    mean = sum(d) / 4
    s = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)
    t = stats.t.ppf(0.975, 3)
    assert t == pytest.approx(3.182446, abs=1e-6)  # the table value t_{0.975, 3}
    got = plots.paired_t_interval(d + [math.nan])  # NaN (no pair) is left out
    assert got == pytest.approx((mean, t * s / 2.0, 4))
    assert plots.paired_t_interval([0.2])[2] == 1 and math.isnan(plots.paired_t_interval([0.2])[1])
    assert plots.paired_t_interval([])[2] == 0


def _delta_note(fig):
    ax = _panel(fig, "ΔPSNR")
    return ax, "\n".join(t.get_text() for t in ax.texts)


@pytest.mark.parametrize("offsets, within", [((0.3, 0.1, 0.2), True), ((0.3, 0.25, 0.35), False)])
def test_delta_panel_draws_paired_intervals_and_says_when_all_contain_zero(tmp_path, offsets, within):
    """'equal' is 'offsets' dB above the baseline per seed; the 0.4 dB seed jitter is shared, so pairing by seed
    removes it and the interval is the t interval of 'offsets' (at equal rate: the same bpp as the baseline)."""
    trials = _trials(offsets={"equal": dict(enumerate(offsets))}, epochs=2, rate_factors=())
    report = _report(write_experiment_dir(tmp_path, "exp", trials, study=STUDY))
    points = curve_points(report.trials, report.options)
    intervals, basis = plots.study_intervals(report, STUDY, points)
    assert basis == plots.EQUAL_RATE
    equal = intervals[intervals["configuration"] == "equal"]
    mean, half, n = np.mean(offsets), stats.t.ppf(0.975, 2) * np.std(offsets, ddof=1) / math.sqrt(3), 3
    assert len(equal) == 4
    assert equal["mean"].to_numpy() == pytest.approx([mean] * 4, abs=1e-9)
    assert equal["half"].to_numpy() == pytest.approx([half] * 4, abs=1e-9)
    assert (equal["n"] == n).all()
    # At the baseline's rates the tables' paired differences (same seed and lambda) are the same numbers.
    paired = report.studies[0].paired
    tables = paired[(paired["configuration"] == "equal") & (paired["quantity"] == plots.TABLES_DELTA_PSNR)]
    assert tables["mean"].to_numpy() == pytest.approx(equal["mean"].to_numpy(), abs=1e-9)
    assert tables["hi"].to_numpy() == pytest.approx(equal["high"].to_numpy(), abs=1e-9)
    fig = plots.rd_curves_figure(report)
    ax, note = _delta_note(fig)
    bars = next(c for c in ax.containers if c.lines[0].get_gid() == plots.gid(plots.DELTA_GID, STUDY, "equal"))
    assert bars.lines[0].get_ydata() == pytest.approx([mean] * 4, abs=1e-9)
    segments = bars.lines[2][0].get_segments()
    assert [s[1][1] - s[0][1] for s in segments] == pytest.approx([2 * half] * 4, abs=1e-9)
    assert "95 % paired t intervals over 3 seeds" in note
    # The other two configurations differ from the baseline by 0 in every pair (their intervals are 0 exactly).
    assert (plots.WITHIN_NOISE in note) == within
    if not within:
        assert "4 of " in note and "intervals exclude 0" in note


def test_delta_panel_can_draw_the_tables_paired_differences(report, monkeypatch):
    """With TABLES_INTERVALS naming the tables' paired table (same seed and lambda), the panel draws those, at
    the configuration's mean rate at each lambda, and says they compare at equal λ."""
    rows = [("equal", lam, "ΔPSNR (dB)", 0.1, -0.05, 0.25, 3) for lam in LAMBDAS]
    rows += [("equal", lam, "Δbpp (%)", 5.0, 4.0, 6.0, 3) for lam in LAMBDAS]  # another quantity: not drawn
    paired = pd.DataFrame.from_records(rows, columns=["configuration", "lmbda", "quantity", "mean", "lo", "hi", "n"])
    monkeypatch.setattr(plots, "TABLES_INTERVALS", "paired")
    monkeypatch.setattr(report.studies[0], "paired", paired, raising=False)
    ax, note = _delta_note(plots.rd_curves_figure(report))
    assert "equal λ" in ax.get_ylabel() and plots.WITHIN_NOISE in note and "over 3 seeds (same seed and λ)" in note
    bars = next(c for c in ax.containers if c.lines[0].get_gid() == plots.gid(plots.DELTA_GID, STUDY, "equal"))
    points = curve_points(report.trials, report.options)
    rates = points[points["configuration"] == "equal"].groupby("lmbda")["rate"].mean()
    assert bars.lines[0].get_xdata() == pytest.approx(rates.to_numpy())
    assert bars.lines[0].get_ydata() == pytest.approx([0.1] * 4)
    assert "no point paired with the baseline" in note  # the other configurations have no row


def test_one_seed_says_no_spread(tmp_path):
    report = _report(write_experiment_dir(tmp_path, "exp", _trials(seeds=(0,), epochs=2), study=STUDY))
    fig = plots.rd_curves_figure(report)
    assert "n=1: no spread" in _panel(fig, "PSNR (dB) vs rate").get_legend().get_title().get_text()
    assert "n=1: no spread" in _delta_note(fig)[1]
    assert plots.WITHIN_NOISE not in _delta_note(fig)[1]


def test_the_pngs_are_rendered(report):
    for draw in (plots.rd_curves, plots.weights, plots.gammas):
        assert draw(report)[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_all_draws_the_same_pngs_side_by_side_as_one_after_the_other(report):
    together = plots.render_all(report, workers=3)
    alone = plots.render_all(report, workers=1)
    assert list(together) == list(plots.FIGURES) and together == alone
    assert all(png.startswith(b"\x89PNG") for png in together.values())
