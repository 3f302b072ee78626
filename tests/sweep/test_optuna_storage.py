"""Optuna's study in a database (--optuna-storage; default SQLite <experiment>/optuna.db): readable with
optuna.load_study while the sweep runs (from another process, as optuna-dashboard reads it) and after it, with
states and values that match the experiment directory; a sweep resumed after SIGKILL of its driver repeats no
trial number; a refused or unreachable URL is an error naming the flag before anything starts."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import fake_engine
import pytest
import yaml
from kill_support import kill_sweep, tagged

from hpcm_tune import metrics
from hpcm_tune.sweep import cli, launcher
from hpcm_tune.sweep.searchers import LOST_ATTR, RAY_TRIAL_ID_ATTR

ROOT = Path(__file__).resolve().parents[2]


def env() -> dict[str, str]:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}


def write_space(tmp_path: Path, epochs: int, samples: int, epoch_s: float, **fixed) -> Path:
    space = {
        "study": "odb", "samples": samples, "max_concurrent": 2, "max_failures": 0,
        "searcher": {"name": "optuna", "sampler": "random"},
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
        "fixed": {"preset": "tiny", "lmbda": 0.0067, "epochs": epochs, "_fake_epoch_seconds": epoch_s, **fixed},
        "params": {"gamma_s1": {"type": "loguniform", "low": 0.001, "high": 0.02}},
    }
    path = tmp_path / "odb.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def sweep_cmd(space: Path, storage: Path, *extra: str) -> list[str]:
    return [sys.executable, fake_engine.TUNE, "--storage", str(storage), "--num-cpus", "2", "-q",
            "--space", str(space), *extra]


def load(url: str, name: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=url)


def experiment_trials(exp: Path, started_only: bool = False) -> dict[str, tuple[Path, list[dict]]]:
    """Ray trial id -> (its directory, its result rows), for every trial directory of the experiment.
    ``started_only``: skip folders with no result yet (a trial that was just starting when the driver was killed),
    instead of failing on them."""
    out = {}
    for d in exp.iterdir():
        if (d / "params.json").exists():
            result = d / "result.json"
            text = result.read_text() if result.exists() else ""
            rows = [json.loads(x) for x in text.splitlines() if x.strip().endswith("}")]
            if not rows and started_only:
                continue
            assert rows, f"{d.name} reported nothing"
            out[rows[0]["trial_id"]] = (d, rows)
    return out


def check_matches_experiment(study, exp: Path, epochs: int, only: set[str] | None = None) -> None:
    """Every trial of the experiment directory is one trial of the study, whose state, intermediate values and
    final value are those of its result rows (and the summary's errored list)."""
    from optuna.trial import TrialState

    summary = json.loads((exp / launcher.SUMMARY_FILE).read_text())
    errored = {r["trial"] for r in summary["errored"]}
    by_ray = {}
    for t in study.get_trials(deepcopy=False):
        if RAY_TRIAL_ID_ATTR in t.user_attrs:
            assert t.user_attrs[RAY_TRIAL_ID_ATTR] not in by_ray, "two Optuna trials for one Ray trial"
            by_ray[t.user_attrs[RAY_TRIAL_ID_ATTR]] = t
    trials = experiment_trials(exp)
    assert set(trials) <= set(by_ray)
    for tid, (d, rows) in trials.items():
        if only is not None and tid not in only:
            continue
        ot = by_ray[tid]
        assert ot.params["gamma_s1"] == pytest.approx(json.loads((d / "params.json").read_text())["gamma_s1"])
        assert ot.intermediate_values == pytest.approx(
            {r["training_iteration"]: r[metrics.EVAL_LOSS] for r in rows}), tid
        if d.name in errored:
            assert ot.state == TrialState.FAIL, tid
        elif rows[-1][metrics.EPOCH] == epochs:
            assert ot.state == TrialState.COMPLETE and ot.value == pytest.approx(rows[-1][metrics.EVAL_LOSS]), tid
        else:
            # Optuna gives a PRUNED trial its last intermediate value as value.
            assert ot.state == TrialState.PRUNED and ot.value == pytest.approx(rows[-1][metrics.EVAL_LOSS]), tid


@pytest.mark.ray
@pytest.mark.slow
def test_study_readable_during_and_after_the_sweep(tmp_path):
    epochs = 4
    # One trial fails at epoch 2 (the first to get there; the marker spares the others): FAIL in the study.
    space = write_space(tmp_path, epochs, samples=6, epoch_s=0.6, _fake_fail_epoch=2,
                        _fake_fail_once_dir=str(tmp_path))
    storage = tmp_path / "results"
    url = f"sqlite:///{storage / 'live' / launcher.OPTUNA_DB}"
    seen: list[tuple[int, int, int]] = []  # (trials, running with intermediate values, finished) per poll
    errors: list[str] = []
    stop = threading.Event()

    def poll() -> None:  # another reader of the database while the driver writes it, as optuna-dashboard is
        from optuna.trial import TrialState

        while not stop.is_set():
            try:
                ts = load(url, "live").get_trials(deepcopy=False)
                seen.append((len(ts), sum(t.state == TrialState.RUNNING and bool(t.intermediate_values)
                                          for t in ts), sum(t.state.is_finished() for t in ts)))
            except Exception as exc:  # not created yet, or briefly locked by the writer
                errors.append(type(exc).__name__)
            time.sleep(0.3)

    poller = threading.Thread(target=poll, daemon=True)
    driver = subprocess.Popen([*sweep_cmd(space, storage, "--name", "live")], cwd=ROOT, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    poller.start()
    try:
        out, err = driver.communicate(timeout=300)
    finally:
        stop.set()
        poller.join(timeout=10)
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 0, err[-3000:]
    assert any(running for _, running, _ in seen), f"never saw a running trial's epochs mid-sweep: {seen[-5:]}"
    assert any(0 < done < 6 for _, _, done in seen), "never saw the study part-way"
    assert f"optuna-dashboard {url}" in out
    exp = storage / "live"
    meta = json.loads((exp / launcher.META_FILE).read_text())
    assert meta["optuna"]["url"] == url and meta["optuna"]["study"] == "live"

    from optuna.trial import TrialState

    study = load(url, "live")
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(6))
    assert study.metric_names == [metrics.EVAL_LOSS] and study.user_attrs["experiment"] == str(exp)
    states = [t.state for t in trials]
    assert states.count(TrialState.FAIL) == 1 and TrialState.RUNNING not in states
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states
    check_matches_experiment(study, exp, epochs)


@pytest.mark.ray
@pytest.mark.slow
def test_resume_after_sigkill_repeats_no_trial_number(tmp_path):
    from optuna.trial import TrialState

    epochs, samples = 5, 6
    space = write_space(tmp_path, epochs, samples=samples, epoch_s=0.8)
    storage = tmp_path / "results"
    exp = storage / "k"
    url = f"sqlite:///{exp / launcher.OPTUNA_DB}"
    driver_env, tag = tagged(env())  # the kill takes every process of its local Ray (kill_support.py)
    driver = subprocess.Popen(sweep_cmd(space, storage, "--name", "k"), cwd=ROOT, env=driver_env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 200
        while time.time() < deadline:
            assert driver.poll() is None, "the sweep ended before it could be killed"
            with contextlib.suppress(Exception):
                ts = load(url, "k").get_trials(deepcopy=False)
                finished = sum(t.state.is_finished() for t in ts)
                running = sum(t.state == TrialState.RUNNING and bool(t.intermediate_values) for t in ts)
                states = list(exp.glob("searcher-state-*.pkl"))
                snapshot = max((p.stat().st_mtime for p in states), default=0.0)
                # A snapshot taken after a trial finished, so that trial stays finished when resumed.
                finished_in_snapshot = any(t.state.is_finished() and t.datetime_complete.timestamp() < snapshot - 0.5
                                           for t in ts)
                if finished >= 1 and running >= 1 and finished_in_snapshot:
                    break
            time.sleep(0.3)
        else:
            pytest.fail("the sweep made no progress")
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        kill_sweep(driver, tag)
    before = load(url, "k").get_trials()
    finished_before = {t.user_attrs[RAY_TRIAL_ID_ATTR] for t in before if t.state.is_finished()}
    rows_at_kill = {tid: rows for tid, (_, rows) in experiment_trials(exp, started_only=True).items()}
    assert any(t.state == TrialState.RUNNING for t in before), "killed with no trial running"

    resumed = subprocess.run([sys.executable, fake_engine.TUNE, "--storage", str(storage), "--num-cpus",
                              "2", "-q", "--resume", "k"], cwd=ROOT, env=env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Sweep finished: {samples} trials" in resumed.stdout

    study = load(url, "k")
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials))), "a trial number repeated or skipped"
    ray_ids = [t.user_attrs[RAY_TRIAL_ID_ATTR] for t in trials]
    assert len(ray_ids) == len(set(ray_ids)), "one Ray trial told twice"
    in_experiment = experiment_trials(exp)
    assert len(in_experiment) == samples and set(in_experiment) <= set(ray_ids)
    for t in trials:
        assert t.state.is_finished(), f"trial {t.number} left {t.state}"
        if t.user_attrs[RAY_TRIAL_ID_ATTR] not in in_experiment:  # asked after the last snapshot, then lost
            assert t.state == TrialState.FAIL and LOST_ATTR in t.user_attrs
    # Trials the first driver finished, and Ray did not run again, are in the study as the experiment directory
    # has them. (One it finished after its last snapshot is run again from that snapshot; the study keeps the
    # state told first: a finished Optuna trial cannot be reopened, searchers.PrunedOptunaSearch.restore.)
    untouched = {tid for tid in finished_before & set(in_experiment)
                 if in_experiment[tid][1] == rows_at_kill.get(tid)}
    assert untouched, "no trial finished before the kill kept its results"
    check_matches_experiment(study, exp, epochs, only=untouched)
    # Those it had not finished were continued in the same Optuna trial (no new number for them).
    for t in before:
        if t.state == TrialState.RUNNING and t.user_attrs[RAY_TRIAL_ID_ATTR] in in_experiment:
            after = next(a for a in trials if a.number == t.number)
            assert after.user_attrs[RAY_TRIAL_ID_ATTR] == t.user_attrs[RAY_TRIAL_ID_ATTR]
            assert after.state.is_finished()


# -- fast: refused before anything starts ---------------------------------------------------------------------


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    try:
        rc = cli.main(args, engine=fake_engine.NAME)
    except SystemExit as exc:  # argparse
        rc = exc.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("url, why", [
    ("redis://localhost:6379/0", "unknown scheme 'redis'"),
    ("optuna.db", "not a database URL"),
    ("postgresql://me:secret@db.example/optuna", "contains a password"),
    ("sqlite://", "in-memory SQLite"),
])
def test_refused_url_names_flag_value_and_schemes(tmp_path, capsys, url, why):
    rc, err = run_cli(["--storage", str(tmp_path / "r"), "--optuna-storage", url], capsys)
    assert rc == 2
    assert "--optuna-storage" in err and why in err
    assert "sqlite:///PATH" in err and "postgresql://" in err and "mysql://" in err
    assert "secret" not in err
    assert not (tmp_path / "r").exists(), "something was written before the URL was checked"


def test_unreachable_database_refused_before_anything(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'no-such-dir' / 'optuna.db'}"
    rc, err = run_cli(["--storage", str(tmp_path / "r"), "--name", "n",
                       "--optuna-storage", url], capsys)
    assert rc == 2
    assert "--optuna-storage" in err and url in err and "cannot open the database" in err
    assert not (tmp_path / "r" / "n").exists()


def test_missing_db_driver_refused(tmp_path, capsys):
    pytest.importorskip("sqlalchemy")
    try:
        import psycopg2  # noqa: F401
        pytest.skip("psycopg2 installed: the connection would be tried instead")
    except ImportError:
        pass
    rc, err = run_cli(["--storage", str(tmp_path / "r"), "--optuna-storage",
                       "postgresql://me@127.0.0.1:1/optuna"], capsys)
    assert rc == 2 and "--optuna-storage" in err and "cannot open the database (ImportError" in err


def test_study_of_the_same_name_with_trials_refused(tmp_path, capsys):
    import optuna

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.create_study(study_name="taken", storage=url).enqueue_trial({"x": 1.0})
    rc, err = run_cli(["--storage", str(tmp_path / "r"), "--name", "taken",
                       "--optuna-storage", url], capsys)
    assert rc == 2 and "already holds an Optuna study named 'taken'" in err
    assert not (tmp_path / "r" / "taken").exists()


def test_optuna_storage_needs_the_optuna_searcher(tmp_path, capsys):
    rc, err = run_cli(["--storage", str(tmp_path / "r"), "--searcher", "random",
                       "--optuna-storage", f"sqlite:///{tmp_path / 'o.db'}"], capsys)
    assert rc == 2 and "needs the optuna searcher" in err and "'random'" in err
    assert not (tmp_path / "o.db").exists()


def test_resume_refuses_a_new_optuna_storage(tmp_path, capsys):
    rc, err = run_cli(["--resume", "x", "--storage", str(tmp_path), "--optuna-storage",
                       f"sqlite:///{tmp_path / 'o.db'}"], capsys)
    assert rc == 2 and "--optuna-storage would not take effect" in err
