"""Sweeps through Ray Tune with the seconds-long FakeEngine: the shortened default sweep end to end (Optuna told
'pruned' for early stops), fault injection, a metric the engine never reports. One local Ray per module."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import fake_engine
import pytest

from hpcm_tune import metrics
from hpcm_tune.sweep import cli, launcher
from hpcm_tune.sweep import space as sp

pytestmark = [pytest.mark.ray, pytest.mark.slow]
FAKE = fake_engine.NAME  # registered by the test support (tests/sweep/fake_engine.py), not by production


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    import ray

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["WANDB_MODE"] = "offline"
    launcher.init_ray(None, num_cpus=2)
    yield
    ray.shutdown()


def test_local_ray_listens_on_loopback_only():
    import ray

    assert ray.util.get_node_ip_address() == "127.0.0.1"
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")


def trial_dirs(exp: Path) -> list[Path]:
    return sorted(p for p in exp.iterdir() if p.is_dir() and (p / "params.json").exists())


def test_shortened_default_sweep_end_to_end(tmp_path, capsys):
    rc = cli.main(["--epochs", "4", "--num-samples", "6", "--storage", str(tmp_path), "--name", "d",
                   "--delete-stopped-checkpoints", "-q"], engine=FAKE)
    assert rc == 0
    out = capsys.readouterr().out
    exp = tmp_path / "d"
    assert "Best at lambda = 0.0067" in out and f"Results: {exp}" in out
    meta = json.loads((exp / launcher.META_FILE).read_text())
    assert (meta["study"], meta["metric"], meta["mode"], meta["max_epochs"]) == ("default", metrics.EVAL_LOSS,
                                                                              "min", 4)
    assert meta["space"]["params"]["scale_weights"]["type"] == "simplex"
    dirs = trial_dirs(exp)
    assert len(dirs) == 6
    for d in dirs:
        params = json.loads((d / "params.json").read_text())
        assert params["study"] == "default" and params["label"] == "default"
        assert abs(sum(params["scale_weights"]) - 1) < 1e-5
        lines = (d / "result.json").read_text().splitlines()
        assert [json.loads(x)[metrics.EPOCH] for x in lines] == list(range(1, len(lines) + 1))
        assert len(list(d.glob("checkpoint_*"))) <= 2  # checkpoints_to_keep
    summary = json.loads((exp / launcher.SUMMARY_FILE).read_text())
    assert summary["trials"] == 6 and not summary["errored"]
    stopped = {r["trial"] for r in summary["stopped_early"]}
    assert stopped, "ASHA (grace 2, eta 2) over 6 trials stops some"
    assert summary["epochs_run"] < 6 * 4
    for d in dirs:  # --delete-stopped-checkpoints: only the trials that ran the full budget keep checkpoints
        assert bool(list(d.glob("checkpoint_*"))) == (d.name not in stopped), d.name
    assert summary["checkpoints_deleted"] >= len(stopped)
    # Optuna's study (pickled with the experiment): early-stopped trials are PRUNED, full ones COMPLETE.
    from optuna.trial import TrialState

    state_file = next(exp.glob("searcher-state-*.pkl"))
    with open(state_file, "rb") as f:
        searcher = pickle.load(f)
    study = searcher["searcher"]["_ot_study"] if "searcher" in searcher else searcher["_ot_study"]
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states.count(TrialState.PRUNED) == len(stopped)
    assert states.count(TrialState.COMPLETE) == 6 - len(stopped)


def test_fault_injection_errors_one_trial_retries_another(tmp_path):
    log = tmp_path / "engine.log"
    hooks = {"_fake_fail_once_dir": str(tmp_path), "_fake_log": str(log)}
    data = {
        "study": "faults", "scheduler": "fifo", "searcher": "grid", "max_concurrent": 2, "max_failures": 1,
        "fixed": {"preset": "tiny", "lmbda": 0.0067, "epochs": 4, **hooks},
        "configurations": {
            "healthy": {"_fake_fail_epoch": 0, "_fake_nan_epoch": 99},
            "crash once": {"_fake_fail_epoch": 3, "_fake_nan_epoch": 99},
            "diverges": {"_fake_fail_epoch": 0, "_fake_nan_epoch": 2},
        },
    }
    space = sp.parse_space(data, "faults.yaml")
    summary = launcher.run_sweep(space, launcher.SweepOptions(engine=FAKE, storage=str(tmp_path), name="f",
                                                              verbose=0))
    by_label = {r["label"]: r for r in summary["errored"]}
    assert set(by_label) == {"diverges"}
    assert "NonFiniteMetricError" in by_label["diverges"]["error"] and "non-finite" in by_label["diverges"]["error"]
    assert summary["trials"] == 3 and summary["finished"] == 2
    finished_labels = {r["label"] for rows in summary["best"].values() for r in rows}
    assert finished_labels == {"healthy", "crash once"}
    # The crashed trial was retried from its last checkpoint (epoch 2), not from scratch.
    assert any(line.endswith("restore 2") for line in log.read_text().splitlines())
    assert "Errored trials" in launcher.format_summary(summary)
    # --resume --retry-errored: only the errored trial runs again, from its last checkpoint (epoch 1).
    lines_before = log.read_text().splitlines()
    again = launcher.resume_sweep(str(tmp_path / "f"), launcher.SweepOptions(engine=FAKE, storage=str(tmp_path),
                                                                             retry_errored=True, verbose=0))
    new_lines = log.read_text().splitlines()[len(lines_before):]
    assert new_lines
    assert any(line.endswith("restore 1") for line in new_lines)
    assert len(new_lines) <= 3  # restore + epoch 2 (NaN again), not a rerun of the healthy trials
    assert [r["label"] for r in again["errored"]] == ["diverges"] and again["finished"] == 2


def test_metric_never_reported_fails_loudly(tmp_path, capsys):
    import yaml

    data = {
        "study": "nometric", "scheduler": "asha", "searcher": "random", "max_failures": 0,
        "fixed": {"preset": "tiny", "lmbda": 0.0067, "epochs": 3, "_fake_omit": [metrics.EVAL_LOSS]},
    }
    (tmp_path / "nometric.yaml").write_text(yaml.safe_dump(data))
    rc = cli.main(["--space", str(tmp_path / "nometric.yaml"), "--storage", str(tmp_path), "--name", "n", "-q"],
                  engine=FAKE)
    err = capsys.readouterr().err
    assert rc == 1
    assert metrics.EVAL_LOSS in err and "--resume n" in err


def test_wandb_one_offline_run_per_trial(tmp_path, capsys):
    rc = cli.main(["--epochs", "2", "--num-samples", "2", "--storage", str(tmp_path), "--name", "w", "--wandb",
                   "--wandb-project", "test", "--wandb-upload-timeout", "20", "-q"], engine=FAKE)
    assert rc == 0
    dirs = trial_dirs(tmp_path / "w")
    assert len(dirs) == 2
    for d in dirs:
        runs = list((d / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, d  # one run per trial, written offline (no API key in tests)
        trial_id = d.name.split("_")[2]
        assert runs[0].name.endswith(trial_id)  # W&B run id = Tune trial id
    out = capsys.readouterr().out
    # The summary names the runs where they stay, with one sync command that works after the session.
    assert "W&B: 2 offline run(s)" in out and f"wandb sync {tmp_path / 'w'}/*/wandb/offline-run-*" in out
    assert "wandb sync /tmp/ray" not in out  # not a path inside Ray's session folder, gone after the session


def test_wandb_sweep_exits_without_a_traceback(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "WANDB_MODE": "offline"}
    done = subprocess.run([sys.executable, fake_engine.TUNE, "--epochs", "2", "--num-samples", "1",
                           "--storage", str(tmp_path), "--name", "w", "--wandb", "--num-cpus", "2", "-q"],
                          cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "is_initialized" not in done.stderr and "Exception ignored in" not in done.stderr, done.stderr[-2000:]
    assert "wandb sync" in done.stdout


def test_pbt_exploits_checkpoints_within_one_lambda(tmp_path):
    log = tmp_path / "engine.log"
    data = {"study": "pbt", "samples": 4, "max_concurrent": 2, "searcher": "random",
            "scheduler": {"name": "pbt", "perturbation_interval": 1},
            "fixed": {"preset": "tiny", "lmbda": 0.0067, "epochs": 4, "_fake_epoch_seconds": 0.3,
                      "_fake_log": str(log)},
            "params": {"gamma_s1": {"type": "loguniform", "low": 0.001, "high": 0.05}}}
    summary = launcher.run_sweep(sp.parse_space(data, "pbt.yaml"),
                                 launcher.SweepOptions(engine=FAKE, storage=str(tmp_path), name="p", verbose=0))
    assert summary["trials"] == 4 and summary["finished"] == 4 and not summary["errored"]
    assert any(" restore " in line for line in log.read_text().splitlines())  # exploit: another trial's weights
    for d in trial_dirs(tmp_path / "p"):  # all kept while trials could restore them, the newest 2 at the end
        assert 1 <= len(list(d.glob("checkpoint_*"))) <= 2, d.name


def test_parent_of_an_engine_the_test_registered_trains_as_a_ray_task(tmp_path):
    """A parent trains as a Ray task, whose fresh ENGINES lacks the engine this test registered: the driver
    hands the task the engine's path, while hpcm_tune.json records the registered name."""
    data = {"study": "fp", "samples": 1, "searcher": "random", "scheduler": "fifo",
            "parent": {"objective": "standard", "epochs": 2, "resources": {"cpus": 1}},
            "fixed": {"preset": "tiny", "objective": "balanced", "lmbda": 0.013, "epochs": 2},
            "params": {"gamma_s1": {"type": "loguniform", "low": 0.001, "high": 0.02}}}
    summary = launcher.run_sweep(sp.parse_space(data, "fp.yaml"),
                                 launcher.SweepOptions(engine=FAKE, storage=str(tmp_path), name="fp", verbose=0))
    assert summary["finished"] == 1 and not summary["errored"]
    (parent,) = summary["parents"]
    assert not parent["cached"] and parent["epochs"] == 2
    meta = json.loads((tmp_path / "fp" / launcher.META_FILE).read_text())
    assert meta["engine"] == FAKE and [p["engine"] for p in meta["parents"]] == [FAKE]
