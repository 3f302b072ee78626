"""Resume after Ctrl-C or SIGKILL of the driver (a subprocess running tune.py's command line with the FakeEngine:
fake_tune.py): finished trials kept, unfinished ones continue from their last checkpoint, ASHA's decisions
consistent with those already taken; the resume trains the engine the experiment recorded."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import fake_engine
import pytest
import yaml
from kill_support import kill_sweep, tagged

from hpcm_tune.experiment import newest_stored_checkpoints
from hpcm_tune.sweep import launcher

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 6


def env():
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}


def latest_callback_state(exp: Path) -> dict:
    files = sorted(exp.glob("callback-states-*.pkl"))
    assert files, "no callback state in the snapshot"
    with open(files[-1], "rb") as f:
        return pickle.load(f)[0]["scheduler"]


def snapshot_names_checkpoints(exp: Path) -> bool:
    states = sorted(exp.glob("experiment_state-*.json"))
    try:
        return bool(states) and bool(newest_stored_checkpoints(states[-1].read_text()))
    except ValueError:  # caught while Ray rewrites it
        return False


def test_resume_after_sigkill(tmp_path):
    log = tmp_path / "engine.log"
    space = {
        "study": "killed", "samples": 2, "max_concurrent": 2, "searcher": "random",
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
        "fixed": {"preset": "tiny", "epochs": EPOCHS, "_fake_epoch_seconds": 0.8, "_fake_log": str(log)},
        "params": {"lmbda": {"type": "grid", "values": [0.0035, 0.025]},
                   "gamma_s1": {"type": "loguniform", "low": 0.001, "high": 0.02}},
    }
    space_file = tmp_path / "killed.yaml"
    space_file.write_text(yaml.safe_dump(space))
    storage = tmp_path / "results"
    base = [sys.executable, fake_engine.TUNE, "--storage", str(storage), "--num-cpus", "2", "-q"]
    driver_env, tag = tagged(env())  # the kill takes every process of its local Ray (tests/sweep/kill_support.py)
    driver_env["TUNE_GLOBAL_CHECKPOINT_S"] = "1"  # a snapshot every second (Ray's default: 10 s or more)
    driver = subprocess.Popen([*base, "--space", str(space_file), "--name", "k"], cwd=ROOT, env=driver_env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    exp = storage / "k"
    try:
        deadline = time.time() + 150
        while time.time() < deadline:
            epochs_done = log.read_text().count(" epoch ") if log.exists() else 0
            # Kill once the stored snapshot names checkpoints (what the resume continues from) and ASHA's records.
            if epochs_done >= 9 and list(exp.glob("callback-states-*.pkl")) and snapshot_names_checkpoints(exp):
                break
            assert driver.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.3)
        else:
            pytest.fail("the sweep made no progress")
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        # The killed driver's local Ray (every process of it) is gone with it, as after a machine restart.
        kill_sweep(driver, tag)
    before = latest_callback_state(exp)
    lines_at_kill = len(log.read_text().splitlines())
    results_at_kill = {p.name: (p / "result.json").read_text().splitlines()
                       for p in exp.iterdir() if (p / "result.json").exists()}

    resumed = subprocess.run([*base, "--resume", "k"], cwd=ROOT, env=env(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Sweep finished: 4 trials" in resumed.stdout
    summary = json.loads((exp / launcher.SUMMARY_FILE).read_text())
    assert summary["trials"] == 4 and not summary["errored"]
    # Trials done before the kill (full budget, or stopped by ASHA in the snapshot) are kept as they were.
    for name, lines in results_at_kill.items():
        last = json.loads(lines[-1]) if lines else {}
        if last.get("epoch") == EPOCHS or last.get("trial_id") in before["stopped"]:
            assert (exp / name / "result.json").read_text().splitlines() == lines, name
    after_lines = log.read_text().splitlines()[lines_at_kill:]
    # Unfinished trials continued from a checkpoint, not from epoch 1.
    restores = [ln for ln in after_lines if " restore " in ln]
    assert restores and all(int(ln.split()[-1]) >= 1 for ln in restores)
    # ASHA: every judgement taken before the kill is still there with the same score, and every trial stopped
    # before the kill stays stopped at the same epoch (it was not resumed).
    final = summary["scheduler_state"]
    for group, rungs in before["rungs"].items():
        for milestone, recorded in rungs.items():
            for trial_id, score in recorded.items():
                assert final["rungs"][group][milestone][trial_id] == score
    for trial_id, info in before["stopped"].items():
        assert final["stopped"][trial_id]["epoch"] == info["epoch"]
    # Lambdas never compared: one rung set per lambda.
    assert set(final["rungs"]) == {"[0.0035]", "[0.025]"}
    # Every trial ran to the end or was stopped by ASHA.
    for d in exp.iterdir():
        if (d / "result.json").exists():
            last = json.loads(d.joinpath("result.json").read_text().splitlines()[-1])
            tid = last["trial_id"]
            assert last["epoch"] == EPOCHS or tid in final["stopped"]


def test_ctrl_c_keeps_every_checkpoint_and_the_sweep_resumes(tmp_path):
    """Ctrl-C (SIGINT) makes Ray end the sweep with a last snapshot and return: the summary says it was interrupted
    and how to continue, --delete-stopped-checkpoints deletes nothing (the cut-off trials look stopped early), and
    --resume finishes it from the checkpoints."""
    log = tmp_path / "engine.log"
    space = {
        "study": "cut", "samples": 2, "max_concurrent": 2, "searcher": "random", "scheduler": "fifo",
        "fixed": {"preset": "tiny", "lmbda": 0.013, "epochs": EPOCHS, "_fake_epoch_seconds": 0.8,
                  "_fake_log": str(log)},
        "params": {"gamma_s1": {"type": "loguniform", "low": 0.001, "high": 0.02}},
    }
    space_file = tmp_path / "cut.yaml"
    space_file.write_text(yaml.safe_dump(space))
    storage = tmp_path / "results"
    base = [sys.executable, fake_engine.TUNE, "--storage", str(storage), "--num-cpus", "2", "-q"]
    driver_env, tag = tagged(env())
    driver = subprocess.Popen([*base, "--space", str(space_file), "--name", "c", "--delete-stopped-checkpoints"],
                              cwd=ROOT, env=driver_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    exp = storage / "c"
    try:
        deadline = time.time() + 150
        while time.time() < deadline:
            if len(list(exp.glob("*/checkpoint_*"))) >= 4:  # two epochs of both trials
                break
            assert driver.poll() is None, "the sweep ended before it could be interrupted"
            time.sleep(0.3)
        else:
            pytest.fail("the sweep made no progress")
        driver.send_signal(signal.SIGINT)
        out, _ = driver.communicate(timeout=120)
    finally:
        kill_sweep(driver, tag)
    assert driver.returncode == 130, out[-3000:]
    assert "Sweep interrupted: 2 of 2 trials unfinished" in out and f"--resume {exp}" in out, out[-3000:]
    assert "Sweep finished" not in out
    kept = {p.parent.name for p in exp.glob("*/checkpoint_*")}
    assert len(kept) == 2  # both cut-off trials keep their checkpoints

    resumed = subprocess.run([*base, "--resume", str(exp)], cwd=ROOT, env=env(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert f"Sweep finished: 2 trials, 2 ran all {EPOCHS} epochs" in resumed.stdout
    restores = [ln for ln in log.read_text().splitlines() if " restore " in ln]
    assert len(restores) == 2 and all(int(ln.split()[-1]) >= 2 for ln in restores), restores
