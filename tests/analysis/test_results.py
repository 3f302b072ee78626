import json
import os
import pickle

import pytest

from hpcm_tune import metrics as m
from hpcm_tune.analysis.results import (
    ERRORED,
    FINISHED,
    STOPPED,
    UNFINISHED,
    ResultsWarning,
    find_experiments,
    latest_experiment,
    load_experiments,
    read_experiment,
)
from hpcm_tune.testing import write_experiment_dir


def _by_lambda(exp):
    return {t.params["lmbda"]: t for t in exp.trials}


def test_statuses_from_epochs_errors_and_ray_state(trial, storage):
    path = write_experiment_dir(storage, "exp", [
        trial(lmbda=0.001),
        trial(lmbda=0.002, epochs_run=2),
        trial(lmbda=0.003, epochs_run=2, error=True),
        trial(lmbda=0.004, epochs_run=1, status="RUNNING"),
        trial(lmbda=0.005, epochs_run=0, status="PENDING", corrupt="no_dir"),
    ])
    trials = _by_lambda(read_experiment(path))
    assert {lam: t.status for lam, t in trials.items()} == {
        0.001: FINISHED, 0.002: STOPPED, 0.003: ERRORED, 0.004: UNFINISHED, 0.005: UNFINISHED}
    assert [t.epochs_run for t in trials.values()] == [4, 2, 2, 1, 0]
    assert trials[0.003].error == "RuntimeError: fake failure"
    assert trials[0.001].rows[-1][m.EVAL_PSNR] > trials[0.001].rows[0][m.EVAL_PSNR]
    assert "config" not in trials[0.001].rows[0]


def test_without_experiment_state_status_comes_from_epochs(trial, storage):
    path = write_experiment_dir(storage, "exp", [trial(lmbda=0.001), trial(lmbda=0.002, epochs_run=3)],
                                experiment_state=False)
    assert [t.status for t in read_experiment(path).trials] == [FINISHED, STOPPED]


def test_corrupted_files_are_skipped_with_a_warning_naming_the_file(trial, storage):
    path = write_experiment_dir(storage, "exp", [
        trial(lmbda=0.001, corrupt="truncated_result"),
        trial(lmbda=0.002, corrupt="garbage_result"),
        trial(lmbda=0.003, corrupt="garbage_params"),
        trial(lmbda=0.004, corrupt="empty_result"),
        trial(lmbda=0.005, corrupt="no_result"),
    ])
    with pytest.warns(ResultsWarning) as caught:
        exp = read_experiment(path)
    messages = [str(w.message) for w in caught]
    dirs = {t.params.get("lmbda"): path / t.dirname for t in exp.trials}
    assert any(str(dirs[0.001] / "result.json") in msg and "corrupted line" in msg for msg in messages)
    assert any(str(dirs[0.002] / "result.json") in msg for msg in messages)
    assert any("params.json" in msg and "config copy" in msg for msg in messages)
    assert any(str(dirs[0.004] / "progress.csv") in msg for msg in messages)
    trials = _by_lambda(exp)
    assert trials[0.001].epochs_run == 3  # the truncated last epoch is lost, the others kept
    assert trials[0.002].epochs_run == 4 and len(trials[0.002].rows) == 4
    assert trials[0.003].params["lmbda"] == 0.003  # recovered from result.json's config copy
    for lam in (0.004, 0.005):  # from progress.csv, with numbers parsed as numbers
        assert trials[lam].epochs_run == 4
        assert isinstance(trials[lam].rows[-1][m.EVAL_PSNR], float)
        assert trials[lam].rows[-1]["done"] is True


def test_epochs_reported_again_after_a_restore_keep_the_last_copy(trial, storage):
    path = write_experiment_dir(storage, "exp", [trial(lmbda=0.001)])
    result = next(path.glob("*/result.json"))
    lines = result.read_text().splitlines()
    again = json.loads(lines[2])
    again[m.EVAL_PSNR] = 99.0
    result.write_text("\n".join(lines[:3] + [json.dumps(again)] + lines[3:]) + "\n")
    rows = read_experiment(path).trials[0].rows
    assert [r["training_iteration"] for r in rows] == [1, 2, 3, 4]
    assert rows[2][m.EVAL_PSNR] == 99.0


def test_nothing_is_unpickled(trial, storage, monkeypatch):
    path = write_experiment_dir(storage, "exp", [trial(lmbda=0.001, error=True, epochs_run=1)])
    (next(path.glob("train_*")) / "error.pkl").write_bytes(b"\x80\x05 junk")

    def refuse(*args, **kwargs):
        raise AssertionError("analysis must not unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    assert read_experiment(path).trials[0].status == ERRORED


def test_locating_experiments(trial, storage, tmp_path):
    old = write_experiment_dir(storage, "old", [trial()])
    new = write_experiment_dir(storage, "new", [trial()])
    os.utime(old / "hpcm_tune.json", (2e9, 2e9))  # old was written last
    assert latest_experiment(storage) == old
    assert find_experiments(storage) == [new, old]
    assert find_experiments(old) == [old]
    assert [e.name for e in load_experiments([storage])] == ["new", "old"]
    assert [e.name for e in load_experiments(None, storage=storage)] == ["old"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        latest_experiment(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no experiment directory"):
        latest_experiment(tmp_path / "empty")
