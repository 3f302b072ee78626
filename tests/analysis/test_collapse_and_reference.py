"""Collapse marks (eval/collapsed and friends) and the reference codecs in the analysis."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from hpcm_tune import metrics as m
from hpcm_tune.analysis.bd import bd_rate
from hpcm_tune.analysis.cli import main
from hpcm_tune.analysis.references import BD_VS_ANCHOR, VS_ANCHOR
from hpcm_tune.analysis.report import build_report, render_markdown
from hpcm_tune.analysis.results import load_experiments
from hpcm_tune.analysis.tables import COLLAPSED, DAGGER, LAMBDA_EFF_RATIO, LEADERBOARD_COLUMNS, AnalysisOptions
from hpcm_tune.reference import ReferenceWarning, reference_points
from hpcm_tune.testing import make_image_folder, write_experiment_dir

LAMBDAS = (0.0018, 0.0067, 0.013, 0.0483)
COLLAPSED_AT = (0.0067, 1)  # (lambda, seed) of the one collapsed hierarchical trial


def _objective_trials(trial, offsets=(("standard", 0.0), ("hierarchical", 0.3)), data=None, seeds=(0, 1)):
    extra = {"data": data} if data is not None else {}
    return [trial(obj, lam, seed, objective=obj, study="objectives", psnr_offset=off, config=dict(extra))
            for obj, off in offsets for lam in LAMBDAS for seed in seeds]


def _add_metrics(root, mode):
    """Rewrite each trial's result.json with the newer engine's diagnostics. ``mode``: 'reported'
    (eval/collapsed given) or 'derived' (only eval/bpp_z and eval/flat_psnr: the flag is computed). The trial
    at COLLAPSED_AT of the hierarchical configuration collapses: 14 dB at 0.3 bpp, nearly all of it z's."""
    for params in root.glob("*/params.json"):
        config = json.loads(params.read_text())
        bad = config["objective"] == "hierarchical" and (config["lmbda"], config["seed"]) == COLLAPSED_AT
        result = params.parent / "result.json"
        lines = []
        for line in result.read_text().splitlines():
            row = json.loads(line)
            if bad:
                row.update({m.EVAL_BPP: 0.3, m.EVAL_PSNR: 14.0, m.EVAL_BPP_Z: 0.299})
            row[m.EVAL_FLAT_PSNR] = 15.0
            row[m.TRAIN_LAMBDA_EFF] = config["lmbda"] * (0.01 if bad else 0.5)
            if mode == "reported":
                row[m.EVAL_Y_SHARE] = m.y_rate_share(row[m.EVAL_BPP], row[m.EVAL_BPP_Z])
                row[m.EVAL_COLLAPSED] = float(bad)
            else:
                row.pop(m.EVAL_COLLAPSED, None)
            lines.append(json.dumps(row))
        result.write_text("\n".join(lines) + "\n")


def _disp(st, label):
    return st.display[st.display["configuration"].str.startswith(label)].iloc[0]


def _num(st, label):
    return st.ablation[st.ablation["configuration"] == label].iloc[0]


@pytest.mark.parametrize("mode", ["reported", "derived"])
def test_a_collapsed_trial_is_marked_and_left_out_of_the_bd_rates(storage, trial, mode):
    root = write_experiment_dir(storage, "exp", _objective_trials(trial), study="objectives")
    _add_metrics(root, mode)
    report = build_report(load_experiments([root]), AnalysisOptions(reference=False))
    st = report.studies[0]
    hier = _disp(st, "hierarchical")
    assert hier["configuration"] == f"hierarchical {DAGGER}"
    assert hier[COLLAPSED].startswith("1/8 [")
    assert _disp(st, "standard")[COLLAPSED] == "0/8"
    note = next(t for t in st.footnotes if t.startswith(DAGGER))
    assert "1 of 16 RD points of this study left out" in note and "5%" in note
    # Without the collapsed point the hierarchical curve is the standard one + 0.3 dB exactly, per seed.
    assert _num(st, "hierarchical")["BD-PSNR (dB)"] == pytest.approx(0.3, abs=1e-9)
    assert _num(st, "hierarchical")["BD-PSNR (dB) std"] == pytest.approx(0.0, abs=1e-9)
    assert _num(st, "hierarchical")[COLLAPSED] == 1
    # The per-lambda cell shows the collapsed trial (mean with it) and marks it; the others are unmarked.
    cell = st.per_lambda.loc[st.per_lambda["configuration"].str.startswith("hierarchical"), "lambda 0.0067"].iloc[0]
    assert cell.endswith(f"{DAGGER} 1/2")
    assert DAGGER not in st.per_lambda.loc[st.per_lambda["configuration"] == "standard (baseline)"].to_string()
    board = st.leaderboard
    marked = board[board["note"].str.contains("collapsed")]
    assert len(marked) == 1 and marked.iloc[0]["configuration"] == "hierarchical"
    assert marked.iloc[0]["lmbda"] == pytest.approx(0.0067) and "collapsed 1/2" in marked.iloc[0]["note"]
    # lambda_eff: 0.5 lambda everywhere except the collapsed trial (0.01 lambda).
    assert _num(st, "standard")[LAMBDA_EFF_RATIO] == pytest.approx(0.5)
    assert _num(st, "hierarchical")[LAMBDA_EFF_RATIO] == pytest.approx((7 * 0.5 + 0.01) / 8)
    assert "lambda_eff" in board.columns
    text = render_markdown(report)
    assert f"hierarchical {DAGGER}" in text and "left out" in text
    curves = report.curves
    assert curves[COLLAPSED].sum() == 1


def test_with_the_collapsed_trial_included_the_bd_would_differ(storage, trial):
    """The exclusion matters: without the flag the collapsed point stays in seed 1's curve, whose PSNR then falls
    while its rate rises: no R-D curve, so that seed is left out of the BD (n=1, with the reason)."""
    root = write_experiment_dir(storage, "exp", _objective_trials(trial), study="objectives")
    _add_metrics(root, "derived")
    for params in root.glob("*/params.json"):  # drop eval/flat_psnr: collapse becomes unknowable
        result = params.parent / "result.json"
        rows = [json.loads(line) for line in result.read_text().splitlines()]
        result.write_text("".join(json.dumps({k: v for k, v in r.items() if k != m.EVAL_FLAT_PSNR}) + "\n"
                                  for r in rows))
    st = build_report(load_experiments([root]), AnalysisOptions(reference=False)).studies[0]
    assert COLLAPSED not in st.display.columns
    assert _num(st, "hierarchical")["BD-PSNR (dB) n"] == 1
    assert any("PSNR does not rise strictly with lambda" in f for f in st.footnotes)


def test_an_experiment_without_the_new_metrics_renders_as_before(storage, trial):
    root = write_experiment_dir(storage, "exp", _objective_trials(trial), study="objectives")
    report = build_report(load_experiments([root]), AnalysisOptions(reference=False))
    st = report.studies[0]
    assert list(st.display.columns) == ["configuration", "trials", "BD-rate PSNR (%)", "BD-rate MS-SSIM (%)",
                                        "BD-PSNR (dB)", "rate share s1/s2/s3 (%)",
                                        *(f"w {t}" for t in m.TASKS)]
    assert COLLAPSED not in st.ablation.columns and LAMBDA_EFF_RATIO not in st.ablation.columns
    assert list(st.leaderboard.columns) == LEADERBOARD_COLUMNS and (st.leaderboard["note"] == "").all()
    assert COLLAPSED not in report.curves.columns
    assert not any(c.startswith(("eval/collapsed", "eval/flat", "train/lambda_eff")) for c in report.trials.columns)
    text = render_markdown(report)
    assert DAGGER not in text and "JPEG" not in text and "--no-reference" in text
    assert _num(st, "hierarchical")["BD-PSNR (dB)"] == pytest.approx(0.3, abs=1e-9)


@pytest.fixture
def folder(tmp_path):
    return make_image_folder(tmp_path / "data", n_train=1, n_test=2, size=(40, 56))


def test_bd_rate_vs_jpeg_is_a_number_where_curves_overlap_and_na_where_not(storage, trial, folder):
    # On these small noisy images JPEG spans ~19-35 dB: +0 dB overlaps it, +15 dB lies wholly above it.
    trials = _objective_trials(trial, offsets=(("standard", 0.0), ("hierarchical", 15.0)), data=str(folder),
                               seeds=(0,))
    root = write_experiment_dir(storage, "exp", trials, study="objectives")
    report = build_report(load_experiments([root]))
    st = report.studies[0]
    ref = reference_points(str(folder))
    jpeg_bpp, jpeg_psnr = ref.curve("jpeg")
    curve = report.curves[report.curves["configuration"] == "standard"].sort_values("rate")
    expected = bd_rate(jpeg_bpp, jpeg_psnr, curve["rate"], curve["psnr"], min_overlap=0.0)
    assert _num(st, "standard")[BD_VS_ANCHOR] == pytest.approx(expected)
    assert _disp(st, "standard")[BD_VS_ANCHOR].startswith(f"{expected:+.2f}")
    assert math.isnan(_num(st, "hierarchical")[BD_VS_ANCHOR])
    cell = _disp(st, "hierarchical")[BD_VS_ANCHOR]
    assert cell.startswith("n/a [")
    note = st.footnotes[int(cell.split("[")[1].rstrip("]")) - 1]
    assert "no overlap with JPEG's curve" in note
    # The fake models spend under 1 bpp where JPEG needs ~2-5 bpp on these images: better at every point.
    assert _disp(st, "hierarchical")[VS_ANCHOR] == "better 4/4"
    assert "Are these codecs? yes" in " ".join(st.reference_notes)
    assert st.reference.data == str(folder) and not st.reference.default


def test_models_below_jpeg_and_flat_colour_are_called_no_codecs(storage, trial, folder):
    # PSNR 4-13 dB at 0.1-0.8 bpp: under the flat colour (~15.8 dB on these images) and under JPEG's lowest
    # point (~19 dB at ~1.9 bpp).
    trials = _objective_trials(trial, offsets=(("standard", -25.0),), data=str(folder), seeds=(0,))
    root = write_experiment_dir(storage, "exp", trials, study="objectives")
    st = build_report(load_experiments([root])).studies[0]
    text = " ".join(st.reference_notes)
    assert "Are these codecs? no" in text
    assert "carry no information about the picture" in text and "(standard)" in text
    assert _disp(st, "standard")[VS_ANCHOR] == "not comparable 4 of 4"


def test_a_point_dominating_jpegs_lowest_counts_as_better(storage, trial, folder):
    # PSNR 13-22 dB at 0.1-0.8 bpp: the top point (21.7 dB at 0.8 bpp) beats JPEG's lowest (~19 dB at ~1.9 bpp).
    trials = _objective_trials(trial, offsets=(("standard", -16.0),), data=str(folder), seeds=(0,))
    root = write_experiment_dir(storage, "exp", trials, study="objectives")
    st = build_report(load_experiments([root])).studies[0]
    assert _disp(st, "standard")[VS_ANCHOR].startswith("better ")
    assert "1 only at some (standard)" in " ".join(st.reference_notes)


def test_missing_data_folder_warns_and_gives_na(storage, trial, tmp_path, capsys):
    trials = _objective_trials(trial, data=str(tmp_path / "gone"), seeds=(0,))
    root = write_experiment_dir(storage, "exp", trials, study="objectives")
    with pytest.warns(ReferenceWarning, match="gone"):
        report = build_report(load_experiments([root]))
    st = report.studies[0]
    cell = _disp(st, "standard")[BD_VS_ANCHOR]
    assert cell.startswith("n/a [") and "no reference codec points" in st.footnotes[int(cell[5]) - 1]
    assert "Reference codecs: not available" in render_markdown(report)
    out = tmp_path / "out"
    assert main([str(root), "--out", str(out), "--quiet", "--no-plots"]) == 0
    assert "warning: no reference codec points" in capsys.readouterr().err
    assert not (out / "reference.csv").exists()


def test_cli_writes_reference_csv_and_no_reference_turns_it_off(storage, trial, folder, tmp_path):
    trials = _objective_trials(trial, data=str(folder), seeds=(0,))
    root = write_experiment_dir(storage, "exp", trials, study="objectives")
    out = tmp_path / "out"
    assert main([str(root), "--out", str(out), "--quiet"]) == 0
    points = pd.read_csv(out / "reference.csv")
    assert set(points["codec"]) >= {"jpeg", "webp"} and (points["data"] == str(folder)).all()
    per_image = pd.read_csv(out / "reference_images.csv")
    assert len(per_image) == 2 * len(points)
    ablation = pd.read_csv(out / "ablation.csv")
    assert ablation[BD_VS_ANCHOR].notna().all()
    assert (out / "rd_curves.png").stat().st_size > 20_000
    off = tmp_path / "off"
    assert main([str(root), "--out", str(off), "--quiet", "--no-plots", "--no-reference"]) == 0
    assert not (off / "reference.csv").exists()
    assert BD_VS_ANCHOR not in pd.read_csv(off / "ablation.csv").columns


def test_trials_on_different_images_use_the_most_common_and_say_so(storage, trial, folder, tmp_path):
    other = make_image_folder(tmp_path / "other", n_train=1, n_test=1, size=(40, 56))
    trials = _objective_trials(trial, data=str(folder), seeds=(0,))
    trials[0]["config"]["data"] = str(other)
    root = write_experiment_dir(storage, "exp", trials, study="objectives")
    st = build_report(load_experiments([root])).studies[0]
    assert st.reference.data == str(folder)
    assert "different images" in " ".join(st.reference_notes) and "(7 trials)" in " ".join(st.reference_notes)


def test_synthetic_trials_without_data_use_the_training_default_samples(storage, trial):
    root = write_experiment_dir(storage, "exp", _objective_trials(trial, seeds=(0,)), study="objectives")
    st = build_report(load_experiments([root])).studies[0]
    assert st.reference.data == "samples" and st.reference.default
    assert st.reference.points.images == ["chelsea", "coffee"]
    assert np.isfinite(st.ablation[BD_VS_ANCHOR]).all()
