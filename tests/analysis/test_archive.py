"""The compact archive of an experiment (hpcm_tune.analysis.archive) is analysed exactly as the original."""

import json

import pandas as pd
import pytest

from hpcm_tune.analysis.archive import ARCHIVE_STATE_FILE, write_archive
from hpcm_tune.analysis.cli import main
from hpcm_tune.analysis.report import build_report
from hpcm_tune.analysis.results import read_experiment
from hpcm_tune.analysis.tables import AnalysisOptions
from hpcm_tune.testing import write_experiment_dir


def _experiment(storage, trial):
    return write_experiment_dir(storage, "exp", [
        trial(lmbda=0.001, label="a", images=("kodim01", "kodim02")),
        trial(lmbda=0.002, label="a"),
        trial(lmbda=0.001, label="b", psnr_offset=0.5),
        trial(lmbda=0.002, label="b", epochs_run=2),                      # stopped early
        trial(lmbda=0.003, label="b", epochs_run=2, error=True),          # errored
        trial(lmbda=0.004, label="b", epochs_run=1, status="RUNNING"),    # unfinished
        trial(lmbda=0.005, label="b", epochs_run=0, status="PENDING", corrupt="no_dir"),
    ], study="s")


def test_archive_keeps_every_status_metric_and_table(trial, storage, tmp_path):
    original = _experiment(storage, trial)
    (original / "train_hpcm_x_checkpoint").mkdir()  # not a trial folder: never copied
    archive = tmp_path / "archive" / "exp"
    written = write_archive(original, archive)
    assert archive / ARCHIVE_STATE_FILE in written
    assert not (archive / "tuner.pkl").exists() and not list(archive.glob("*/progress.csv"))
    assert not (archive / "train_hpcm_x_checkpoint").exists()
    first = next(archive.glob("*/result.json")).read_text().splitlines()[0]
    assert "config" not in json.loads(first) and "pid" not in json.loads(first)
    assert json.loads(first)["hostname"] == "node"  # the provenance block names the trials' machine

    a, b = read_experiment(original), read_experiment(archive)
    key = lambda t: (t.params["lmbda"], t.params["label"])  # noqa: E731
    assert sorted((key(t), t.status, t.epochs_run, t.error) for t in a.trials) == \
        sorted((key(t), t.status, t.epochs_run, t.error) for t in b.trials)
    options = AnalysisOptions(reference=False)
    ra, rb = build_report([a], options), build_report([b], options)
    for r in (ra, rb):
        r.trials["trial_dir"] = r.trials["trial_dir"].map(lambda p: str(p).rsplit("/", 1)[-1])
    columns = list(ra.trials.columns)
    pd.testing.assert_frame_equal(ra.trials[columns].sort_values(["lmbda", "configuration"]).reset_index(drop=True),
                                  rb.trials[columns].sort_values(["lmbda", "configuration"]).reset_index(drop=True))
    pd.testing.assert_frame_equal(ra.studies[0].ablation, rb.studies[0].ablation)
    assert len(ra.per_image) == len(rb.per_image) > 0


def test_archive_is_smaller_than_the_experiment(trial, storage, tmp_path):
    original = _experiment(storage, trial)
    archive = tmp_path / "exp"
    write_archive(original, archive)
    size = lambda p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file())  # noqa: E731
    assert size(archive) < 0.6 * size(original)


def test_archive_refuses_a_non_empty_folder_and_a_non_experiment(trial, storage, tmp_path):
    original = _experiment(storage, trial)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        write_archive(original, busy)
    assert (busy / "keep.txt").read_text() == "mine"
    with pytest.raises(FileNotFoundError, match="hpcm_tune.json"):
        write_archive(tmp_path, tmp_path / "out")


def test_cli_archive(trial, storage, tmp_path, capsys):
    original = _experiment(storage, trial)
    assert main([str(original), "--archive", str(tmp_path / "a")]) == 0
    assert "archived" in capsys.readouterr().err
    assert (tmp_path / "a" / "hpcm_tune.json").is_file()
    assert main([str(original), str(original), "--archive", str(tmp_path / "b")]) == 2
    assert "exactly one experiment" in capsys.readouterr().err
    assert main([str(original), "--archive", str(tmp_path / "a")]) == 2
    assert "not empty" in capsys.readouterr().err
