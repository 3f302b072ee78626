"""A sweep on S3 end to end, against a moto server on 127.0.0.1: tune.py --storage s3://BUCKET/PREFIX with a parent
section (the FakeEngine: seconds per trial), the driver SIGKILLed mid-sweep, --resume, then analyze.py on the
experiment's URI. The endpoint reaches the driver and Ray's workers through AWS_ENDPOINT_URL (the workers inherit
the driver's environment); analyze.py uses the URI form ?endpoint_override=HOST:PORT&scheme=http instead."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import fake_engine
import pytest
import yaml
from kill_support import kill_sweep, tagged
from s3_support import create_bucket

from hpcm_tune.experiment import RESULT_FILE, delete_checkpoints, newest_stored_checkpoints
from hpcm_tune.sweep import launcher
from hpcm_tune.sweep import parents as pa

pytestmark = [pytest.mark.ray, pytest.mark.slow]
moto_server = pytest.importorskip("moto.server")  # dev dependency: moto[server]

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "hpcm-sweeps"
EPOCHS = 5


@pytest.fixture(scope="module")
def s3():
    import logging

    import pyarrow.fs

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"{host}:{port}"
    create_bucket(endpoint, BUCKET)
    fs = pyarrow.fs.S3FileSystem(endpoint_override=endpoint, scheme="http", access_key="test", secret_key="test",
                                 region="us-east-1", request_timeout=60, connect_timeout=10)
    yield endpoint, fs
    server.stop()


def env(endpoint: str | None) -> dict[str, str]:
    out = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1",
           "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    out.pop("AWS_ENDPOINT_URL_S3", None)
    out.pop("AWS_ENDPOINT_URL", None)
    if endpoint is not None:
        out["AWS_ENDPOINT_URL"] = f"http://{endpoint}"
    return out


def files(fs, prefix: str) -> dict[str, int]:
    import pyarrow.fs

    infos = fs.get_file_info(pyarrow.fs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return {i.path[len(prefix) + 1:]: i.size for i in infos if i.type == pyarrow.fs.FileType.File}


def snapshot_and_results_agree(fs, exp: str, stored) -> bool:
    """Whether a stored snapshot (experiment_state-*.json) has a trial whose last result came with a checkpoint,
    and every such trial has its results on S3 up to that epoch. Ray uploads the snapshot and the trials'
    result.json file by file in one copy, the snapshot not necessarily last, so a SIGKILL in the middle of it
    leaves a snapshot newer than the results (docs/design.md §6): the resume continues from the checkpoint and the
    epochs before it are missing from result.json."""
    needed: dict[str, int] = {}  # trial id -> epochs its stored result.json must hold
    for key in stored:
        if key.startswith("experiment_state-"):
            with contextlib.suppress(OSError, ValueError), fs.open_input_stream(f"{exp}/{key}") as f:
                for trial_id, index in newest_stored_checkpoints(f.read().decode()).items():
                    # checkpoint_00000i came with epoch i+1: the trials have not been restored before the kill
                    needed[trial_id] = max(needed.get(trial_id, 0), index + 1)
    for trial_id, epochs in needed.items():
        found = [k for k in stored if k.endswith(f"/{RESULT_FILE}") and f"_{trial_id}_" in k]
        if len(found) != 1:
            return False
        with fs.open_input_stream(f"{exp}/{found[0]}") as f:
            if len(f.read().decode().splitlines()) < epochs:
                return False
    return bool(needed)


def test_sweep_on_s3_killed_resumed_and_analyzed(s3, tmp_path):
    endpoint, fs = s3
    log = tmp_path / "engine.log"
    space = {
        "study": "ons3", "samples": 2, "max_concurrent": 2, "searcher": "random", "scheduler": "fifo",
        "parent": {"objective": "standard", "epochs": 2, "resources": {"cpus": 1}},
        "fixed": {"preset": "tiny", "objective": "balanced", "lmbda": 0.013, "epochs": EPOCHS,
                  "_fake_epoch_seconds": 0.8, "_fake_log": str(log)},
        "params": {"gamma_s1": {"type": "loguniform", "low": 0.001, "high": 0.02}},
    }
    space_file = tmp_path / "ons3.yaml"
    space_file.write_text(yaml.safe_dump(space))
    storage = f"s3://{BUCKET}/team"
    base = [sys.executable, fake_engine.TUNE, "--storage", storage, "--num-cpus", "2", "-q"]
    driver_log = (tmp_path / "driver.log").open("w")
    driver_env, tag = tagged(env(endpoint))  # the kill takes every process of its local Ray (kill_support.py)
    # A snapshot every second (Ray's default: 10 s or more, and the whole sweep takes less), so one reaches S3
    # while the trials still run.
    driver_env["TUNE_GLOBAL_CHECKPOINT_S"] = "1"
    driver = subprocess.Popen([*base, "--space", str(space_file), "--name", "k"], cwd=ROOT, env=driver_env,
                              stdout=driver_log, stderr=subprocess.STDOUT, start_new_session=True)
    exp = f"{BUCKET}/team/k"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            epochs_done = log.read_text().count(" epoch ") if log.exists() else 0
            stored = files(fs, exp)
            # Kill once Ray's snapshot names a checkpoint and the results up to it are stored: work after the
            # last complete upload is lost on SIGKILL (docs/design.md §6), so a checkpoint on S3 alone does not
            # make the resume continue from it.
            if epochs_done >= 4 and snapshot_and_results_agree(fs, exp, stored):
                break
            assert driver.poll() is None, "the sweep ended before it could be killed:\n" + \
                (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("the sweep made no progress:\n" + (tmp_path / "driver.log").read_text()[-3000:])
        print(f"killed after {time.monotonic() - deadline + 300:.1f} s at {epochs_done} epochs")
    finally:
        kill_sweep(driver, tag)  # the driver and its local Ray, as after a machine restart
        driver_log.close()
    killed_log = (tmp_path / "driver.log").read_text()
    assert "Sweep finished" not in killed_log
    # The parent was trained and uploaded (marker last) before the trials started; each trial fetched it.
    parents = {k.split("/")[0] for k in files(fs, f"{BUCKET}/team/{pa.PARENTS_DIR}")}
    assert len(parents) == 1
    (parent,) = parents
    assert pa.DONE_FILE in {k.split("/")[-1] for k in files(fs, f"{BUCKET}/team/{pa.PARENTS_DIR}/{parent}")}
    lines_at_kill = len(log.read_text().splitlines())

    start = time.monotonic()
    resumed = subprocess.run([*base, "--resume", "k"], cwd=ROOT, env=env(endpoint), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    print(f"resumed in {time.monotonic() - start:.1f} s")
    assert f"Sweep finished: 2 trials, 2 ran all {EPOCHS} epochs" in resumed.stdout
    assert f"Parent {parent} (cached" in resumed.stdout  # reused from S3, not retrained
    assert f"Results: {storage}/k" in resumed.stdout
    with fs.open_input_stream(f"{exp}/{launcher.SUMMARY_FILE}") as f:
        summary = json.loads(f.read())
    assert summary["trials"] == 2 and summary["finished"] == 2 and not summary["errored"]
    with fs.open_input_stream(f"{exp}/{launcher.META_FILE}") as f:
        meta = json.loads(f.read())
    assert len(meta["resumed"]) == 1 and meta["parents"][0]["path"] == f"{storage}/{pa.PARENTS_DIR}/{parent}"
    # Unfinished trials continued from a checkpoint read back from S3, not from epoch 1.
    after = log.read_text().splitlines()[lines_at_kill:]
    restores = [ln for ln in after if " restore " in ln]
    assert restores and all(int(ln.split()[-1]) >= 1 for ln in restores), after
    # Every trial's results are on S3, one line per epoch up to the last.
    stored = files(fs, exp)
    results = [k for k in stored if k.endswith("/result.json")]
    assert len(results) == 2
    for key in results:
        with fs.open_input_stream(f"{exp}/{key}") as f:
            epochs = [json.loads(x)["epoch"] for x in f.read().decode().splitlines() if x.strip()]
        assert epochs[-1] == EPOCHS and set(epochs) == set(range(1, EPOCHS + 1))

    # analyze.py reads the experiment from its URI, the endpoint in the URI this time (no AWS_ENDPOINT_URL).
    uri = f"{storage}/k?endpoint_override={endpoint}&scheme=http"
    out = tmp_path / "analysis"
    analysed = subprocess.run([sys.executable, "analyze.py", uri, "--out", str(out), "--no-plots", "--no-reference",
                               "--quiet"], cwd=ROOT, env=env(None), capture_output=True, text=True, timeout=120)
    assert analysed.returncode == 0, analysed.stderr[-3000:]
    import csv

    with open(out / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {r.get("status") for r in rows} == {"finished"}, rows


def test_checkpoint_clean_up_deletes_checkpoints_on_s3(s3):
    """The end of a sweep deletes checkpoints (--delete-stopped-checkpoints, PBT's newest-N) through the file
    system of the trial's result, so object storage too: a checkpoint there is a key prefix, not a folder."""
    _, fs = s3
    trial = f"{BUCKET}/clean/hpcm_trial_a"
    for i in range(3):
        with fs.open_output_stream(f"{trial}/checkpoint_{i:06d}/model.pt") as f:
            f.write(b"weights")
    with fs.open_output_stream(f"{trial}/{RESULT_FILE}") as f:
        f.write(b"{}\n")
    assert delete_checkpoints(fs, trial, keep=1) == 2
    assert sorted(files(fs, trial)) == ["checkpoint_000002/model.pt", RESULT_FILE]
    assert delete_checkpoints(fs, trial, keep=0) == 1
    assert sorted(files(fs, trial)) == [RESULT_FILE]
