"""Sweeps with a parent section through Ray Tune and the real engine (tiny HPCM on a small fake image folder):
the first sweep trains its parent and its trials fine-tune from it, a second sweep reuses it, object storage
(a file:// URI goes through the same upload and download paths as s3://), and a sweep killed during the parent
stage continues with --resume. One local Ray per module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kill_support import kill_sweep, tagged

from hpcm_tune import metrics
from hpcm_tune.checkpoint import list_checkpoints, read_state
from hpcm_tune.sweep import cli, launcher
from hpcm_tune.sweep import parents as pa
from hpcm_tune.testing import make_image_folder

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    import ray

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    launcher.init_ray(None, num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), n_train=3, n_test=1, size=(64, 64))


def write_space(path: Path, folder: Path, parent_epochs: int = 2) -> Path:
    data = {
        "study": "warm", "samples": 2, "max_concurrent": 2, "scheduler": "fifo",
        "searcher": {"name": "optuna", "sampler": "random", "n_startup_trials": 1},
        "parent": {"objective": "standard", "epochs": parent_epochs, "steps_per_epoch": 2, "batch_size": 2,
                   "patch_size": 64, "lr": 1e-3, "codec_interval": 0, "resources": {"cpus": 1}},
        "fixed": {"preset": "tiny", "objective": "balanced", "lmbda": 0.013, "epochs": 1, "steps_per_epoch": 2,
                  "batch_size": 2, "patch_size": 64, "num_workers": 0, "codec_interval": 0, "lr": 1e-4,
                  "lr_schedule": "constant", "data": str(folder)},
        "params": {"w_lr": {"type": "loguniform", "low": 0.01, "high": 0.05}},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def trial_dirs(exp: Path) -> list[Path]:
    return sorted(p for p in exp.iterdir() if p.is_dir() and (p / "params.json").exists())


def test_first_sweep_trains_the_parent_and_a_second_reuses_it(tmp_path, folder, capsys):
    space = write_space(tmp_path / "warm.yaml", folder)
    storage = tmp_path / "store"
    assert cli.main(["--space", str(space), "--storage", str(storage), "--name", "one", "-q"]) == 0
    out = capsys.readouterr().out
    assert "(trained now, 2 epochs, 4 steps)" in out
    (parent_dir,) = (storage / pa.PARENTS_DIR).iterdir()
    done = json.loads((parent_dir / pa.DONE_FILE).read_text())
    assert done["config"]["objective"] == "standard" and done["steps"] == 4
    meta = json.loads((storage / "one" / launcher.META_FILE).read_text())
    assert [p["name"] for p in meta["parents"]] == [parent_dir.name]
    summary = json.loads((storage / "one" / launcher.SUMMARY_FILE).read_text())
    assert summary["parents"][0]["cached"] is False and summary["trials"] == 2
    # Each trial fine-tuned from the parent: after one epoch at lr 1e-4 its weights are close to the parent's
    # (a fresh initialisation would be far away), and it reports the diagnostics.
    parent_model = read_state(list_checkpoints(parent_dir / "checkpoints")[-1])["model"]
    for d in trial_dirs(storage / "one"):
        (ckpt,) = sorted(d.glob("checkpoint_*"))[-1:]
        model = read_state(ckpt)["model"]
        w = "g_a.0.weight"
        assert (model[w] - parent_model[w]).abs().max() < 0.05 * parent_model[w].abs().max()
        last = json.loads((d / "result.json").read_text().splitlines()[-1])
        assert metrics.TRAIN_LAMBDA_EFF in last and metrics.EVAL_COLLAPSED in last
    # A second sweep asking for the same parent trains none.
    assert cli.main(["--space", str(space), "--storage", str(storage), "--name", "two", "-q"]) == 0
    out = capsys.readouterr().out
    assert "(cached, 2 epochs, 4 steps)" in out and "trained now" not in out
    assert len(list((storage / pa.PARENTS_DIR).iterdir())) == 1
    assert cli.main(["--space", str(space), "--storage", str(storage), "--dry-run"]) == 0
    assert f"{parent_dir.name}: cached" in capsys.readouterr().out


def test_parents_on_object_storage(tmp_path, folder, capsys):
    space = write_space(tmp_path / "warm.yaml", folder, parent_epochs=1)
    uri = f"file://{tmp_path / 'bucket'}"
    assert cli.main(["--space", str(space), "--storage", uri, "--name", "s", "-q"]) == 0
    assert "trained now" in capsys.readouterr().out
    (parent_dir,) = (tmp_path / "bucket" / pa.PARENTS_DIR).iterdir()
    assert (parent_dir / pa.DONE_FILE).is_file() and list_checkpoints(parent_dir / "checkpoints")
    assert len(trial_dirs(tmp_path / "bucket" / "s")) == 2
    summary = json.loads((tmp_path / "bucket" / "s" / launcher.SUMMARY_FILE).read_text())
    assert not summary["errored"]


def test_a_sweep_killed_during_the_parent_stage_resumes(tmp_path, folder):
    space = write_space(tmp_path / "warm.yaml", folder, parent_epochs=20)
    storage = tmp_path / "store"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "tune.py", "--space", str(space), "--storage", str(storage), "--num-cpus", "2", "-q"]
    # Its own session and a tagged environment, so the kill takes every process of the local Ray with the driver
    # (a lingering worker would otherwise finish the parent on its own before the resume).
    log = (tmp_path / "driver.log").open("w")
    driver_env, tag = tagged(env)
    proc = subprocess.Popen([*cmd, "--name", "k"], cwd=ROOT, env=driver_env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    lines: list[str] = []
    while time.monotonic() < deadline and proc.poll() is None and not lines:
        time.sleep(0.05)  # kill the driver once the parent has finished an epoch (checkpoint, then result line)
        found = list(storage.glob(f"{pa.PARENTS_DIR}/*/{pa.RESULT_FILE}"))
        lines = [x for x in found[0].read_text().splitlines() if x.endswith("}")] if found else []
    assert proc.poll() is None, "the driver ended before the parent's first epoch:\n" + \
        (tmp_path / "driver.log").read_text()[-3000:]
    stragglers = kill_sweep(proc, tag)
    log.close()
    print(f"processes left after the group kill and killed by their tag: {len(stragglers)}")
    (parent_dir,) = (storage / pa.PARENTS_DIR).iterdir()
    assert not (parent_dir / pa.DONE_FILE).exists() and list_checkpoints(parent_dir / "checkpoints")
    resume = [sys.executable, "tune.py", "--storage", str(storage), "--num-cpus", "2", "-q", "--resume", "k"]
    done = subprocess.run(resume, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    marker = json.loads((parent_dir / pa.DONE_FILE).read_text())
    assert marker["epochs"] == 20 and marker["resumed_from_epoch"] >= 1  # continued, not restarted
    epochs = [json.loads(x)[metrics.EPOCH] for x in (parent_dir / pa.RESULT_FILE).read_text().splitlines()]
    assert epochs == list(range(1, 21))
    assert len(trial_dirs(storage / "k")) == 2
    for d in trial_dirs(storage / "k"):
        assert (d / "result.json").read_text().strip()
