"""Paired statistics, n in every cell, BD only on R-D curves, the per-seed table and bad input (issue 11)."""

import json
import math

import bjontegaard
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from hpcm_tune import metrics as m
from hpcm_tune.analysis.cli import main
from hpcm_tune.analysis.report import build_report, render_markdown
from hpcm_tune.analysis.results import load_experiments
from hpcm_tune.analysis.tables import (
    COLLAPSED,
    DAGGER,
    DELTA_PSNR,
    DELTA_RATE,
    MIXED_NOTE,
    PAIRED_COLUMNS,
    AnalysisOptions,
    trial_table,
)
from hpcm_tune.testing import write_experiment_dir

LAMBDAS = (0.0018, 0.0067, 0.013, 0.0483)
BD_PSNR = "BD-PSNR (dB)"


def _build(storage, trials, name="exp", **options):
    root = write_experiment_dir(storage, name, trials)
    options.setdefault("reference", False)
    return build_report(load_experiments([root]), AnalysisOptions(**options))


def _offsets(labels, seeds, lambdas=LAMBDAS, sd=0.05, rng_seed=1):
    """A PSNR offset per (configuration, seed, lambda): the configuration's shift plus its own jitter."""
    rng = np.random.default_rng(rng_seed)
    return {(label, seed, lam): shift + float(rng.normal(0.0, sd))
            for label, shift in labels.items() for seed in seeds for lam in lambdas}


def _trials(trial, offsets, baseline="base"):
    labels = list(dict.fromkeys(k[0] for k in offsets))
    return [trial(label, lam, seed, objective="standard" if label == baseline else "hierarchical",
                  psnr_offset=off, config={"gamma_s1": labels.index(label)})
            for (label, seed, lam), off in offsets.items()]


def _row(frame, **where):
    mask = np.ones(len(frame), dtype=bool)
    for key, value in where.items():
        mask &= (frame[key] == value).to_numpy() if isinstance(value, str) else np.isclose(frame[key], value)
    assert mask.sum() == 1, where
    return frame[mask].iloc[0]


def _disp(st, label, column):
    return st.display[st.display["configuration"].str.startswith(label)].iloc[0][column]


def _note(st, cell):
    return " ".join(st.footnotes[int(k) - 1] for k in __import__("re").findall(r"\[(\d+)\]", cell))


def _hand_interval(values):
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    mean, sd = values.mean(), values.std(ddof=1)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half, n


def test_paired_intervals_equal_a_hand_computation_with_scipys_t(storage, trial):
    seeds = (0, 1, 2)
    offsets = _offsets({"base": 0.0, "better": 0.2}, seeds)
    st = _build(storage, _trials(trial, offsets)).studies[0]
    assert st.baseline == "base" and list(st.paired.columns) == PAIRED_COLUMNS
    # Per lambda: the PSNR difference of each seed is the difference of the two offsets (same seed, lambda).
    for lam in LAMBDAS:
        diffs = [offsets[("better", s, lam)] - offsets[("base", s, lam)] for s in seeds]
        mean, sd, lo, hi, n = _hand_interval(diffs)
        row = _row(st.paired, configuration="better", lmbda=lam, quantity=DELTA_PSNR)
        assert (row["mean"], row["std"], row["lo"], row["hi"]) == pytest.approx((mean, sd, lo, hi), abs=1e-9)
        assert row["n"] == n and row["within_noise"] == (lo <= 0 <= hi)
        # Same rate: the rate differences are all 0 (an interval [0, 0], within noise).
        rate = _row(st.paired, configuration="better", lmbda=lam, quantity=DELTA_RATE)
        assert rate["mean"] == pytest.approx(0.0, abs=1e-12) and rate["within_noise"]
    # BD-PSNR: each seed's curve against the baseline's same seed, by the bjontegaard package, then t.
    per_seed = st.per_seed
    values = []
    for seed in seeds:
        curve = {lb: per_seed[(per_seed["configuration"] == lb) & (per_seed["seed"] == seed)].sort_values("lmbda")
                 for lb in ("base", "better")}
        values.append(bjontegaard.bd_psnr(curve["base"]["bpp"], curve["base"]["psnr"], curve["better"]["bpp"],
                                          curve["better"]["psnr"], method="pchip"))
    mean, sd, lo, hi, n = _hand_interval(values)
    row = _row(st.paired, configuration="better", quantity=BD_PSNR)
    assert math.isnan(row["lmbda"]) and row["basis"] == "paired seeds"
    assert (row["mean"], row["std"], row["lo"], row["hi"], row["n"]) == pytest.approx((mean, sd, lo, hi, n), abs=1e-9)
    num = st.ablation[st.ablation["configuration"] == "better"].iloc[0]
    assert (num[BD_PSNR + " lo"], num[BD_PSNR + " hi"], num[BD_PSNR + " n"]) == pytest.approx((lo, hi, n))
    assert _disp(st, "better", BD_PSNR).startswith(f"{mean:+.3f} ± {sd:.3f} (n=3)")


def test_a_configuration_bit_identical_to_the_baseline_is_within_noise_in_every_column(storage, scale_weight_trials):
    # No offsets: all four configurations get exactly the baseline's seed-dependent metrics.
    st = _build(storage, scale_weight_trials(seeds=(0, 1, 2), offsets={"none": {}}, noise=0.3)).studies[0]
    others = st.paired[st.paired["configuration"] != st.baseline]
    assert len(others) == 3 * (3 + 2 * len(LAMBDAS))  # 3 BD columns and 2 deltas per lambda, 3 configurations
    assert (others["n"] == 3).all() and others["within_noise"].eq(True).all()
    assert np.allclose(others["mean"], 0.0, atol=1e-9)
    for label in ("equal", "s1 emphasis", "s3 emphasis"):
        for column in ("BD-rate PSNR (%)", "BD-rate MS-SSIM (%)", BD_PSNR):
            assert " ~ " in _disp(st, label, column), (label, column)
        row = st.per_lambda[st.per_lambda["configuration"] == label].iloc[0]
        for lam in LAMBDAS:
            assert row[f"Δ lambda {lam:g}"].count("~") == 2  # ΔPSNR and Δbpp alike
            assert "(n=3)" in row[f"lambda {lam:g}"]
    assert any("contains 0" in f for f in st.footnotes)


def test_one_seed_has_no_interval_and_says_so(storage, trial):
    offsets = _offsets({"base": 0.0, "better": 0.3}, seeds=(0,))
    st = _build(storage, _trials(trial, offsets)).studies[0]
    cell = _disp(st, "better", BD_PSNR)
    assert "(n=1)" in cell and "one seed" in _note(st, cell) and "~" not in cell
    rows = st.paired[st.paired["configuration"] == "better"]
    assert (rows["n"] == 1).all() and rows["lo"].isna().all() and rows["within_noise"].isna().all()
    assert rows["note"].str.contains("one seed").all()


def test_non_monotone_and_flat_curves_give_na_with_the_reason(storage, trial):
    seeds = (0, 1)
    offsets = _offsets({"base": 0.0, "dips": 0.0, "flat": 0.0}, seeds, sd=0.0)
    for seed in seeds:
        offsets[("dips", seed, 0.013)] = -3.0  # PSNR falls at the third lambda while the rate rises
        for i, lam in enumerate(LAMBDAS):  # 0.03 dB per lambda: 0.09 dB over the four
            offsets[("flat", seed, lam)] = 30.0 + 0.03 * i - (29.4022 + 2.539 * math.log(lam / 0.0018))
    st = _build(storage, _trials(trial, offsets)).studies[0]
    for label, reason in (("dips", "PSNR does not rise strictly with lambda"), ("flat", "spans less than 0.5 dB")):
        for column in ("BD-rate PSNR (%)", BD_PSNR):
            cell = _disp(st, label, column)
            assert cell.startswith("n/a [") and reason in _note(st, cell), (label, column, cell)
            num = st.ablation[st.ablation["configuration"] == label].iloc[0]
            assert math.isnan(num[column]) and num[column + " n"] == 0
        assert reason in _row(st.paired, configuration=label, quantity=BD_PSNR)["note"]
    # The per-lambda differences are still there: the dip is a clear -3 dB at lambda 0.013.
    dip = _row(st.paired, configuration="dips", lmbda=0.013, quantity=DELTA_PSNR)
    assert dip["mean"] == pytest.approx(-3.0) and dip["n"] == 2 and not dip["within_noise"]
    # --min-span 0.05 lets the flat curve (0.09 dB) through; the dipping one stays out.
    loose = build_report(load_experiments([storage / "exp"]),
                         AnalysisOptions(reference=False, min_quality_span_db=0.05)).studies[0]
    assert np.isfinite(loose.ablation.set_index("configuration").loc["flat", BD_PSNR])
    assert math.isnan(loose.ablation.set_index("configuration").loc["dips", BD_PSNR])
    assert loose.min_quality_span_db == 0.05


def test_seeds_without_a_curve_fall_back_to_the_mean_curve_labelled_as_such(storage, trial):
    # Seed i ran lambda i only: no seed has a curve of its own, but the mean over seeds (one point per lambda)
    # is one.
    trials = [trial(label, lam, seed, objective="standard" if label == "base" else "hierarchical",
                    psnr_offset=0.4 if label == "better" else 0.0, config={"gamma_s1": int(label == "better")})
              for label in ("base", "better") for seed, lam in enumerate(LAMBDAS)]
    st = _build(storage, trials).studies[0]
    cell = _disp(st, "better", BD_PSNR)
    assert cell.startswith("+0.400 (mean curve) [") and "mean over seeds" in _note(st, cell)
    assert "single lambda" in _note(st, cell)
    row = _row(st.paired, configuration="better", quantity=BD_PSNR)
    assert row["basis"] == "mean curve" and row["n"] == 1 and pd.isna(row["within_noise"])


def _rewrite(root, change):
    """change(config, rows) -> rows, for every trial's result.json."""
    for params in root.glob("*/params.json"):
        config = json.loads(params.read_text())
        result = params.parent / "result.json"
        rows = change(config, [json.loads(line) for line in result.read_text().splitlines()])
        result.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_per_seed_table_has_every_point_its_collapse_flag_and_lambda_eff(storage, trial):
    offsets = _offsets({"base": 0.0, "better": 0.2}, seeds=(0, 1))
    root = write_experiment_dir(storage, "exp", _trials(trial, offsets))

    def change(config, rows):
        bad = config["label"] == "better" and config["lmbda"] == 0.0067 and config["seed"] == 1
        return [{**r, m.EVAL_COLLAPSED: float(bad), m.TRAIN_LAMBDA_EFF: config["lmbda"] * (0.01 if bad else 0.5)}
                for r in rows]

    _rewrite(root, change)
    st = build_report(load_experiments([root]), AnalysisOptions(reference=False)).studies[0]
    per_seed = st.per_seed
    assert len(per_seed) == 16 and set(per_seed["seed"]) == {0, 1}
    assert list(per_seed.columns)[:3] == ["configuration", "lmbda", "seed"]
    assert {"bpp", "psnr", COLLAPSED, "lambda_eff", "trial_id", "epoch"} <= set(per_seed.columns)
    bad = _row(per_seed, configuration="better", lmbda=0.0067, seed=1)
    assert bad[COLLAPSED] == 1.0 and bad["lambda_eff"] == pytest.approx(0.0067 * 0.01) and bad["epoch"] == 4
    assert per_seed[COLLAPSED].sum() == 1
    # The per-lambda cell says 1 of 2 collapsed, and that the mean of the two describes neither run.
    cell = st.per_lambda.loc[st.per_lambda["configuration"].str.startswith("better"), "lambda 0.0067"].iloc[0]
    assert cell.endswith(f"{DAGGER} 1/2") and "(n=2)" in cell and MIXED_NOTE in _note(st, cell)


def test_point_and_rate_reach_every_table_and_are_recorded(storage, trial):
    offsets = _offsets({"base": 0.0, "better": 0.2}, seeds=(0, 1))
    root = write_experiment_dir(storage, "exp", _trials(trial, offsets))

    def change(config, rows):  # epoch 2 is every trial's best: 1 dB above its final point, at the same rates
        last = rows[-1]
        rows[1].update({m.EVAL_LOSS: 0.0, m.EVAL_PSNR: last[m.EVAL_PSNR] + 1.0, m.EVAL_BPP: last[m.EVAL_BPP],
                        m.EVAL_ACTUAL_BPP: last[m.EVAL_ACTUAL_BPP]})
        return rows

    _rewrite(root, change)
    exps = load_experiments([root])
    table = trial_table(exps).set_index("trial_id")
    final = build_report(exps, AnalysisOptions(reference=False)).studies[0]
    best = build_report(exps, AnalysisOptions(reference=False, point="best", rate="actual_bpp")).studies[0]
    assert (final.point, final.rate, best.point, best.rate) == ("final", "bpp", "best", "actual_bpp")
    assert (best.per_seed["epoch"] == 2).all() and (final.per_seed["epoch"] == 4).all()
    ids = best.per_seed["trial_id"]
    assert np.allclose(best.per_seed["psnr"], table.loc[ids, "best " + m.EVAL_PSNR])
    assert np.allclose(best.per_seed["bpp"], table.loc[ids, "best " + m.EVAL_ACTUAL_BPP])
    assert np.allclose(final.per_seed["bpp"], table.loc[final.per_seed["trial_id"], m.EVAL_BPP])
    assert np.allclose(best.per_seed["psnr"] - 1.0, final.per_seed["psnr"])  # epoch 2 is 1 dB above the last
    board = best.leaderboard.set_index(["lmbda", "configuration"])
    for (lam, label), group in best.per_seed.groupby(["lmbda", "configuration"]):
        assert board.loc[(lam, label), "psnr"] == pytest.approx(group["psnr"].mean())
        assert board.loc[(lam, label), "bpp"] == pytest.approx(group["bpp"].mean())
    # With the final point the tables say how many trials had a better evaluation earlier.
    assert _disp(final, "better", "trials").startswith("8/8 (8 best earlier) [")
    assert "best earlier" not in _disp(best, "better", "trials")
    # Paired differences are taken at the chosen point: at epoch 2 both sides gained 1 dB, so ΔPSNR is unchanged.
    a = final.paired[final.paired["quantity"] == DELTA_PSNR]["mean"].to_numpy()
    b = best.paired[best.paired["quantity"] == DELTA_PSNR]["mean"].to_numpy()
    assert len(a) == len(LAMBDAS) and np.allclose(a, b, atol=1e-9)


@pytest.mark.parametrize("case", ["single lambda", "missing baseline", "no finite metric", "one seed each"])
def test_bad_input_still_renders_with_na_and_the_reason(storage, trial, case):
    offsets = _offsets({"base": 0.0, "better": 0.2}, seeds=(0, 1), lambdas=LAMBDAS[:1] if case == "single lambda"
                       else LAMBDAS)
    trials = _trials(trial, offsets)
    if case == "missing baseline":
        for t in trials:
            if t["config"]["label"] == "base":
                t["epochs_run"] = 1  # stopped early: no usable RD point
    if case == "no finite metric":
        for t in trials:
            t["drop"] = [m.EVAL_PSNR, m.EVAL_BPP, m.EVAL_ACTUAL_BPP, m.EVAL_MS_SSIM_DB, m.EVAL_LOSS]
    if case == "one seed each":
        trials = [t for t in trials if t["config"]["seed"] == t["config"]["gamma_s1"]]  # base seed 0, better seed 1
    report = _build(storage, trials, baseline=("base",))
    st = report.studies[0]
    text = render_markdown(report)
    assert "## Study" in text
    cell = _disp(st, "better", BD_PSNR)
    expected = {"single lambda": "a single lambda", "missing baseline": "baseline has no usable RD point",
                "no finite metric": "baseline has no usable RD point",
                "one seed each": "seeds the baseline has no usable RD point for are left out"}[case]
    assert expected in _note(st, cell), (case, cell, st.footnotes)
    if case == "one seed each":  # no seed in common: the mean curves give one value, labelled, noise unknown
        assert "(mean curve)" in cell and "noise unknown" in _note(st, cell)
        assert _row(st.paired, configuration="better", quantity=BD_PSNR)["basis"] == "mean curve"
    else:
        assert cell.startswith("n/a [")
    assert list(st.paired.columns) == PAIRED_COLUMNS and list(st.per_seed.columns)[:3] == ["configuration", "lmbda",
                                                                                             "seed"]
    if case == "single lambda":  # no curve, but the paired difference at the one lambda is there
        assert _row(st.paired, configuration="better", quantity=DELTA_PSNR)["n"] == 2


def test_cli_min_span_reaches_the_tables_and_is_validated(storage, tmp_path, trial, capsys):
    offsets = _offsets({"base": 0.0, "better": 0.2}, seeds=(0,))
    root = write_experiment_dir(storage, "exp", _trials(trial, offsets))
    out = tmp_path / "out"
    assert main([str(root), "--out", str(out), "--no-plots", "--quiet", "--no-reference", "--min-span", "20"]) == 0
    ablation = pd.read_csv(out / "ablation.csv")
    better = ablation[ablation["configuration"] == "better"].iloc[0]
    assert math.isnan(better[BD_PSNR]) and "spans less than 20 dB" in better["notes"]
    assert main([str(root), "--out", str(out), "--no-plots", "--quiet", "--no-reference"]) == 0
    assert pd.read_csv(out / "ablation.csv").set_index("configuration").loc["better", BD_PSNR] > 0.1
    assert main([str(root), "--no-plots", "--quiet", "--min-span", "-1"]) == 2
    assert "min_quality_span_db=-1.0 is not allowed" in capsys.readouterr().err
