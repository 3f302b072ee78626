import json
import math

import numpy as np
import pandas as pd
import pytest

from hpcm_tune import metrics as m
from hpcm_tune.analysis.report import build_report
from hpcm_tune.analysis.results import FINISHED, load_experiments
from hpcm_tune.analysis.tables import AnalysisOptions, trial_table
from hpcm_tune.testing import write_experiment_dir

LAMBDAS = (0.0018, 0.0067, 0.013, 0.0483)


def _report(storage, name, trials, **options):
    write_experiment_dir(storage, name, trials)
    return build_report(load_experiments([storage / name]), AnalysisOptions(**options))


def _row(study_tables, label):
    table = study_tables.ablation
    return table[table["configuration"] == label].iloc[0]


def _cell(study_tables, label, column):
    disp = study_tables.display
    return disp[disp["configuration"].str.startswith(label)].iloc[0][column]


def test_trial_table_has_config_status_final_and_best_metrics(storage, trial):
    write_experiment_dir(storage, "exp", [trial("a", lmbda=0.001, config={"scale_weights": [0.3, 0.4, 0.3]}),
                                          trial("a", lmbda=0.002, epochs_run=2)])
    table = trial_table(load_experiments([storage / "exp"]))
    assert list(table["status"]) == [FINISHED, "stopped early"]
    assert list(table["epochs_run"]) == [4, 2]
    assert table.loc[0, "scale_weights"] == (0.3, 0.4, 0.3)
    for name in (m.EVAL_PSNR, m.EVAL_BPP, m.EVAL_MS_SSIM_DB, m.EVAL_ACTUAL_BPP, m.WEIGHTS["s1_bpp"], m.GAMMA["s1"],
                 *m.EVAL_BPP_SCALE.values()):
        assert table[name].notna().all(), name
    # eval/loss falls every epoch here, so the best epoch is the last and best == final.
    assert list(table["best_epoch"]) == [4, 2]
    assert table.loc[0, "best " + m.EVAL_PSNR] == table.loc[0, m.EVAL_PSNR]


def test_configurations_ignore_lambda_and_seed_and_name_unlabeled_ones(storage, trial):
    trials = [trial(None, lam, seed, config={"w_lr": w}) for w in (0.01, 0.05) for lam in (0.001, 0.002)
              for seed in (0, 1)]
    trials += [trial("same", 0.001, config={"gamma_s1": g}) for g in (0.001, 0.003)]
    write_experiment_dir(storage, "exp", trials)
    table = trial_table(load_experiments([storage / "exp"]))
    assert table["config_key"].nunique() == 4
    names = set(table["configuration"])
    assert names == {"w_lr=0.01", "w_lr=0.05", "same [gamma_s1=0.001]", "same [gamma_s1=0.003]"}
    assert (table.groupby("configuration").size().sort_index() == [1, 1, 4, 4]).all()


def test_bd_rate_against_the_default_configuration(storage, scale_weight_trials):
    report = _report(storage, "exp", scale_weight_trials())
    st = report.studies[0]
    assert st.baseline == "s2 emphasis" and "default" in st.baseline_reason
    assert _row(st, "s3 emphasis")["BD-rate PSNR (%)"] == pytest.approx(-10.0, abs=1e-6)
    assert _row(st, "s3 emphasis")["BD-rate MS-SSIM (%)"] == pytest.approx(-10.0, abs=1e-6)
    assert _row(st, "equal")["BD-rate PSNR (%)"] == pytest.approx(0.0, abs=1e-6)
    assert _row(st, "s3 emphasis")["BD-PSNR (dB)"] > 0.1
    assert _cell(st, "s2 emphasis", "BD-rate PSNR (%)") == "0 (anchor)"
    assert _cell(st, "s3 emphasis", "BD-rate PSNR (%)").startswith("-10.00")
    # z's rate counted in s3: shares 20/30/45+5.
    assert _cell(st, "equal", "rate share s1/s2/s3 (%)") == "20/30/50"
    assert set(st.per_lambda.columns) == {"configuration", *(f"lambda {lam:g}" for lam in LAMBDAS),
                                          *(f"Δ lambda {lam:g}" for lam in LAMBDAS)}
    assert _row(st, "s1 emphasis")["w s1_distortion"] > _row(st, "equal")["w s1_distortion"]


def test_baseline_choice_standard_then_user_spec(storage, trial):
    trials = [trial(obj, lam, objective=obj, study="objectives", psnr_offset=off)
              for obj, off in (("standard", 0.0), ("balanced", 0.2), ("hierarchical", 0.3)) for lam in LAMBDAS]
    write_experiment_dir(storage, "exp", trials)
    exps = load_experiments([storage / "exp"])
    st = build_report(exps).studies[0]
    assert st.baseline == "standard" and _row(st, "hierarchical")["BD-PSNR (dB)"] == pytest.approx(0.3, abs=1e-6)
    st = build_report(exps, AnalysisOptions(baseline=("balanced",))).studies[0]
    assert st.baseline == "balanced" and _row(st, "standard")["BD-PSNR (dB)"] == pytest.approx(-0.2, abs=1e-6)
    st = build_report(exps, AnalysisOptions(baseline=("objective=hierarchical",))).studies[0]
    assert st.baseline == "hierarchical"
    with pytest.raises(ValueError, match="matches several configurations"):
        build_report(exps, AnalysisOptions(baseline=("study=objectives",)))
    with pytest.raises(ValueError, match="method='akima' is not allowed; valid: cubic, pchip"):
        AnalysisOptions(method="akima")


def test_two_standard_configurations_take_the_one_at_the_training_defaults_as_baseline(storage, trial):
    # The objectives preset: standard with Adam (the fair control) and with Cautious Adam.
    trials = [trial(label, lam, objective=obj, study="objectives", psnr_offset=off, config={"optimizer": opt})
              for label, obj, opt, off in (("standard (cautious adam)", "standard", "cautious_adam", 0.1),
                                           ("standard (continued)", "standard", "adam", 0.0),
                                           ("hierarchical", "hierarchical", "adam", 0.3))
              for lam in LAMBDAS]
    write_experiment_dir(storage, "exp", trials)
    st = build_report(load_experiments([storage / "exp"])).studies[0]
    assert st.baseline == "standard (continued)" and "training defaults" in st.baseline_reason
    assert _row(st, "standard (cautious adam)")["BD-PSNR (dB)"] == pytest.approx(0.1, abs=1e-6)


def _noisy_trials(trial, offsets, seeds=(0, 1, 2), lambdas=LAMBDAS, sd=0.05, rng_seed=0):
    """One trial per configuration, lambda and seed; each gets its own PSNR jitter (sd dB) on top of its
    configuration's offset, so paired differences vary from seed to seed as in real runs."""
    rng = np.random.default_rng(rng_seed)
    return [trial(label, lam, seed, psnr_offset=off + float(rng.normal(0.0, sd)), config={"gamma_s1": g})
            for g, (label, off) in enumerate(offsets.items()) for lam in lambdas for seed in seeds]


def test_seeds_give_mean_and_std_and_flag_differences_within_noise(storage, trial):
    offsets = {"base": 0.0, "small": 0.002, "big": 0.5}
    report = _report(storage, "exp", _noisy_trials(trial, offsets), baseline=("base",))
    st = report.studies[0]
    big, small = _row(st, "big"), _row(st, "small")
    assert big["BD-PSNR (dB)"] == pytest.approx(0.5, abs=0.1) and big["BD-PSNR (dB) std"] > 0
    assert big["BD-PSNR (dB) n"] == 3 and big["BD-PSNR (dB) basis"] == "paired seeds"
    assert "±" in _cell(st, "big", "BD-rate PSNR (%)") and "(n=3)" in _cell(st, "big", "BD-rate PSNR (%)")
    assert " ~ " not in _cell(st, "big", "BD-rate PSNR (%)")
    assert " ~ " in _cell(st, "small", "BD-rate PSNR (%)")
    assert small["BD-rate PSNR (%) lo"] < 0 < small["BD-rate PSNR (%) hi"]
    assert any("within noise" in f for f in st.footnotes)
    assert abs(small["BD-rate PSNR (%)"]) < 2


def test_cells_that_cannot_be_computed_say_na_with_a_footnote(storage, scale_weight_trials, trial):
    trials = scale_weight_trials(lambdas=LAMBDAS[:3])
    trials += [trial("late", lam, config={"scale_weights": [0.1, 0.1, 0.8]}, epochs_run=1) for lam in LAMBDAS[:3]]
    report = _report(storage, "exp", trials, method="cubic")
    st = report.studies[0]
    cell = _cell(st, "equal", "BD-rate PSNR (%)")
    assert cell.startswith("n/a [")
    number = int(cell.split("[")[1].rstrip("]"))
    assert "cubic needs 4 distinct points" in st.footnotes[number - 1]
    assert math.isnan(_row(st, "equal")["BD-rate PSNR (%)"])
    late = _cell(st, "late", "BD-rate PSNR (%)")
    assert late.startswith("n/a") and any("no finished trial" in f for f in st.footnotes)
    # The leaderboard is always there; unfinished configurations are listed with a note.
    board = st.leaderboard
    assert set(board["lmbda"]) == set(LAMBDAS[:3])
    assert (board.groupby("lmbda")["rank"].min() == 1).all()
    assert board[board["configuration"] == "late"]["note"].str.contains("stopped early").all()
    ranked = board[board["lmbda"] == LAMBDAS[0]]
    assert list(ranked["loss"].dropna()) == sorted(ranked["loss"].dropna())


def test_missing_metrics_drop_columns_or_say_na(storage, scale_weight_trials):
    drop = [m.EVAL_MS_SSIM_DB, *m.EVAL_BPP_SCALE.values()]
    report = _report(storage, "exp", scale_weight_trials(drop=drop, ms_ssim=False))
    st = report.studies[0]
    assert "BD-rate MS-SSIM (%)" not in st.display.columns
    assert _cell(st, "equal", "rate share s1/s2/s3 (%)").startswith("n/a")
    assert any("per-scale rates" in f for f in st.footnotes)


def test_partial_points_only_on_request(storage, scale_weight_trials):
    trials = scale_weight_trials()
    for t in trials:
        if t["config"]["label"] == "equal":
            t["epochs_run"] = 3
    write_experiment_dir(storage, "exp", trials)
    exps = load_experiments([storage / "exp"])
    strict = build_report(exps).curves
    loose = build_report(exps, AnalysisOptions(include_partial=True)).curves
    assert "equal" not in set(strict["configuration"]) and "equal" in set(loose["configuration"])
    assert isinstance(loose, pd.DataFrame) and (loose["n"] == 1).all()


def test_several_experiments_merge_into_one_study(storage, scale_weight_trials):
    trials = scale_weight_trials(seeds=(0, 1))
    write_experiment_dir(storage, "first", [t for t in trials if t["config"]["seed"] == 0])
    write_experiment_dir(storage, "second", [t for t in trials if t["config"]["seed"] == 1])
    report = build_report(load_experiments([storage / "first", storage / "second"]))
    assert len(report.studies) == 1
    assert set(report.trials["experiment"]) == {"first", "second"}
    assert (report.studies[0].ablation["seeds"] == 2).all()


def test_best_point_is_the_epoch_best_in_the_sweeps_metric(storage, trial):
    path = write_experiment_dir(storage, "exp", [trial("a", lam) for lam in LAMBDAS])
    # Make epoch 2 the best of every trial: later epochs are worse in eval/loss (and in PSNR).
    for result in path.glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines()]
        rows[1][m.EVAL_LOSS], rows[1][m.EVAL_PSNR] = 0.0, 50.0
        result.write_text("".join(json.dumps(r) + "\n" for r in rows))
    exps = load_experiments([path])
    table = trial_table(exps)
    assert (table["best_epoch"] == 2).all() and (table["best " + m.EVAL_PSNR] == 50.0).all()
    assert (table[m.EVAL_PSNR] < 50.0).all()
    best = build_report(exps, AnalysisOptions(point="best")).curves
    final = build_report(exps, AnalysisOptions(point="final")).curves
    assert (best["psnr"] == 50.0).all() and (final["psnr"] < 50.0).all()


def test_ratio_decomposition_is_footnoted_as_two_tasks_in_disguise(storage, trial):
    trials = [trial(dec, lam, config={"decomposition": dec}) for dec in ("measured", "ratio") for lam in LAMBDAS]
    report = _report(storage, "exp", trials)
    st = report.studies[0]
    ratio = st.display[st.display["configuration"].str.startswith("ratio")].iloc[0]["configuration"]
    assert ratio.endswith("]") and any("2-task method in disguise" in f for f in st.footnotes)
    assert not st.display[st.display["configuration"].str.startswith("measured")].iloc[0]["configuration"].endswith("]")


def test_a_configuration_identical_to_the_baseline_has_exactly_zero_bd_with_seeds_paired(
        storage, scale_weight_trials):
    # "equal" gets the baseline's seed-dependent jitter exactly (jitter depends on seed and lambda only), as a
    # setting that changes nothing does in real runs. Compared seed by seed it is 0 ± 0; compared with the
    # baseline's mean curve, each seed's jitter would show up as a spurious BD-rate.
    report = _report(storage, "exp", scale_weight_trials(seeds=(0, 1, 2), noise=0.5))
    st = report.studies[0]
    row = _row(st, "equal")
    assert row["BD-rate PSNR (%)"] == pytest.approx(0.0, abs=1e-9)
    assert row["BD-rate PSNR (%) std"] == pytest.approx(0.0, abs=1e-9)
    assert row["BD-PSNR (dB)"] == pytest.approx(0.0, abs=1e-9)
    assert abs(_row(st, "s3 emphasis")["BD-rate PSNR (%)"] + 10.0) < 1.0
