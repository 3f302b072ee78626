import pandas as pd
import pytest

from hpcm_tune.analysis.cli import main
from hpcm_tune.testing import write_experiment_dir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_writes_every_output_and_prints_markdown(storage, tmp_path, scale_weight_trials, trial, capsys):
    trials = scale_weight_trials() + [trial("s1 emphasis", 0.0035, config={"scale_weights": [0.5, 0.3, 0.2]},
                                            error=True, epochs_run=1, corrupt="truncated_result")]
    write_experiment_dir(storage, "exp", trials)
    out = tmp_path / "out"
    assert main([str(storage / "exp"), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "## Study `scale_weights`" in printed.out and "Leaderboard per lambda" in printed.out
    assert "Baseline: **s2 emphasis**" in printed.out
    assert "Errored trials" in printed.out and "fake failure" in printed.out
    assert "result.json" in printed.err and "corrupted line" in printed.err
    assert "Skipped or replaced while reading (2)" in printed.out
    trials_csv = pd.read_csv(out / "trials.csv")
    assert len(trials_csv) == 17 and set(trials_csv["status"]) == {"finished", "errored"}
    ablation = pd.read_csv(out / "ablation.csv")
    assert set(ablation["configuration"]) == {"equal", "s1 emphasis", "s2 emphasis", "s3 emphasis"}
    assert ablation.loc[ablation["configuration"] == "s3 emphasis", "BD-rate PSNR (%)"].iloc[0] == pytest.approx(-10)
    assert len(pd.read_csv(out / "leaderboard.csv")) == 17  # 4 lambdas x 4 configurations + the errored one
    assert len(pd.read_csv(out / "curves.csv")) == 16
    tex = (out / "tables_scale_weights.tex").read_text()
    assert "\\begin{tabular}" in tex and "s3 emphasis" in tex and "\\%" in tex
    assert (out / "report.md").read_text().startswith("# HPCM sweep analysis")
    for name in ("rd_curves.png", "weights.png", "gammas.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 20_000, name
    assert not list(out.glob(".*"))  # no temporary file left behind


def test_no_argument_analyzes_the_latest_sweep_in_results(tmp_path, monkeypatch, trial, capsys):
    write_experiment_dir(tmp_path / "results", "only", [trial("a", lam) for lam in (0.001, 0.002)])
    monkeypatch.chdir(tmp_path)
    assert main(["--no-plots", "--quiet"]) == 0
    assert (tmp_path / "analysis" / "only" / "trials.csv").is_file()
    assert "wrote" in capsys.readouterr().err


def test_errors_exit_2_with_a_message(tmp_path, monkeypatch, storage, scale_weight_trials, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--storage", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    write_experiment_dir(storage, "exp", scale_weight_trials(lambdas=(0.001, 0.002)))
    assert main([str(storage / "exp"), "--baseline", "nope", "--no-plots", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "matches no configuration" in err and "s2 emphasis" in err
    assert main([str(storage / "exp"), "--min-overlap", "2", "--no-plots"]) == 2
    assert "min_overlap=2.0 is not allowed" in capsys.readouterr().err


def test_a_sweep_with_nothing_finished_yet_still_gives_a_report(storage, tmp_path, trial, capsys):
    trials = [trial("", lam, epochs_run=0, status="PENDING", corrupt="no_dir") for lam in (0.001, 0.002)]
    trials.append(trial("", 0.003, epochs_run=1, status="RUNNING"))
    write_experiment_dir(storage, "exp", trials)
    out = tmp_path / "out"
    assert main([str(storage / "exp"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "0 finished, 0 stopped early, 0 errored, 3 unfinished" in printed
    assert "not finished: 1 unfinished" in printed  # the leaderboard still lists what ran
    assert "n/a [1]" in printed and "[1] the baseline" in printed and "no usable RD point" in printed
    for name in ("rd_curves.png", "weights.png", "gammas.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    assert len(pd.read_csv(out / "trials.csv")) == 3


def test_an_experiment_without_trials(storage, tmp_path, trial, capsys):
    write_experiment_dir(storage, "exp", [])
    assert main([str(storage / "exp"), "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    assert "No trial found." in capsys.readouterr().out


def test_the_report_states_point_and_rate_at_the_top_and_writes_per_image_csv(storage, tmp_path, trial, capsys):
    write_experiment_dir(storage, "exp", [trial("a", lam, images=("a.png", "b.png")) for lam in (0.001, 0.002)])
    out = tmp_path / "out"
    assert main([str(storage / "exp"), "--out", str(out), "--point", "best", "--rate", "actual_bpp", "--no-plots",
                 "--no-reference"]) == 0
    printed = capsys.readouterr().out
    head = printed.split("## Study")[0]
    assert "`--point best` (RD point of a trial: its best epoch" in head and "`--rate actual_bpp`" in head
    assert "Provenance:" in head and "analysed by: hpcm-tune" in head
    assert f"python analyze.py {storage / 'exp'} --out {out} --point best --rate actual_bpp" in head
    assert "no per-image bitstream size is reported" in printed  # per-image bpp stays the estimated rate
    assert len(pd.read_csv(out / "per_image.csv")) == 4
    assert (out / "report.md").read_text().strip() == printed.strip()


def test_many_experiments_get_a_default_folder_name_a_file_system_accepts(storage, tmp_path, trial, monkeypatch,
                                                                          capsys):
    from hpcm_tune.analysis.cli import MAX_OUT_NAME, default_out_name

    names = [f"objectives-2026113{i % 10}-2359{i:02d}" for i in range(40)]
    short = default_out_name(names)
    assert len(short.encode()) <= MAX_OUT_NAME and short.startswith(names[0]) and "+39-more-" in short
    assert default_out_name(names[:-1]) != short  # distinct sets, distinct folders
    assert default_out_name(names[:2]) == "+".join(names[:2])
    for i in range(12):
        write_experiment_dir(storage, f"a-rather-long-experiment-name-number-{i:02d}", [trial("a", 0.001)])
    monkeypatch.chdir(tmp_path)
    assert main([str(storage), "--no-plots", "--no-reference", "--quiet"]) == 0
    (out,) = (tmp_path / "analysis").iterdir()
    assert "+11-more-" in out.name and (out / "report.md").is_file()


def test_an_output_path_under_a_regular_file_exits_2_naming_it(storage, tmp_path, trial, capsys):
    write_experiment_dir(storage, "exp", [trial("a", 0.001)])
    (tmp_path / "file").write_text("not a folder")
    assert main([str(storage / "exp"), "--out", str(tmp_path / "file" / "out"), "--no-plots", "--no-reference",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write the report to {tmp_path / 'file' / 'out'}" in err and "Traceback" not in err
    assert (tmp_path / "file").read_text() == "not a folder"
