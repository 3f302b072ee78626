"""Callbacks: the scheduler state carried by the experiment snapshot; W&B mode selection."""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import pyarrow.fs

from hpcm_tune import metrics
from hpcm_tune.experiment import deletable_checkpoints, newest_stored_checkpoints
from hpcm_tune.sweep import callbacks as cb
from hpcm_tune.sweep.schedulers import PerGroupASHA


def asha():
    s = PerGroupASHA(max_t=4)
    s.set_search_properties(metrics.EVAL_LOSS, "min")
    return s


def test_state_callback_carries_rungs_and_survives_pickling_with_the_scheduler():
    s = asha()
    t = SimpleNamespace(trial_id="a", config={"lmbda": 0.01})
    s.on_trial_add(None, t)
    s.on_trial_result(None, t, {metrics.EPOCH: 1, metrics.EVAL_LOSS: 1.0})
    callback = cb.SchedulerStateCallback(s)
    state = callback.get_state()
    assert state and state["scheduler"]["rungs"]["[0.01]"]["1"] == {"a": -1.0}
    # Tune pickles scheduler and callbacks together (tuner.pkl): the reference must survive.
    bundle = pickle.loads(pickle.dumps({"scheduler": s, "callbacks": [callback]}))
    assert bundle["callbacks"][0].scheduler is bundle["scheduler"]
    fresh = asha()
    callback2 = cb.SchedulerStateCallback(fresh)
    callback2.set_state(state)
    assert fresh.state_dict() == s.state_dict()
    # An empty scheduler still gives a non-empty state (Tune skips empty ones).
    assert cb.SchedulerStateCallback(asha()).get_state()


def test_wandb_offline_without_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert cb.wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert cb.wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert cb.wandb_mode() == "disabled"


def test_wandb_callback_groups_by_sweep_with_bounded_upload(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    c = cb.wandb_callback("proj", group="sweep-1", upload_timeout_s=7)
    assert (c.project, c.group, c._upload_timeout) == ("proj", "sweep-1", 7)
    assert c.kwargs["mode"] == "offline"


def snapshot(*trials):
    """An experiment snapshot as Ray writes it: per trial, its state and its runtime metadata, each JSON text."""
    data = [[json.dumps({"trial_id": tid}),
             json.dumps({"last_result": {"trial_id": tid, "epoch": 1,
                                         **({"checkpoint_dir_name": ckpt} if ckpt else {})}})]
            for tid, ckpt in trials]
    return json.dumps({"trial_data": data, "runner_data": {}, "stats": {}})


def test_the_stored_snapshot_names_the_checkpoint_of_each_trials_last_result():
    text = snapshot(("a", "checkpoint_000003"), ("b", None))
    assert newest_stored_checkpoints(text) == {"a": 3}


def test_deletable_checkpoints_keep_the_newest_and_what_the_snapshot_restores():
    names = [f"checkpoint_{i:06d}" for i in (4, 0, 1, 2, 3)]
    assert deletable_checkpoints(names, keep=2, restored_from=None) == ["checkpoint_000000", "checkpoint_000001",
                                                                           "checkpoint_000002"]
    assert deletable_checkpoints(names, keep=2, restored_from=1) == ["checkpoint_000000"]
    assert deletable_checkpoints(names, keep=2, restored_from=4) == deletable_checkpoints(names, 2, None)
    assert deletable_checkpoints(names[:2], keep=2, restored_from=None) == []


def test_pruning_after_a_save_spares_the_checkpoint_the_stored_snapshot_restores(tmp_path):
    """Ray deleted the checkpoint a stored snapshot named before the next snapshot was stored: a driver killed in
    between could not resume the trial. The callback only deletes what no stored snapshot can restore."""
    exp = tmp_path / "exp"
    trial_dir = exp / "hpcm_trial_a"
    for i in range(5):
        (trial_dir / f"checkpoint_{i:06d}").mkdir(parents=True)
    (trial_dir / "result.json").write_text("")
    state = exp / "experiment_state-2026-12-01_05-00-00.json"
    state.write_text(snapshot(("a", "checkpoint_000001")))
    trial = SimpleNamespace(trial_id="a", storage=SimpleNamespace(
        storage_filesystem=pyarrow.fs.LocalFileSystem(), trial_fs_path=str(trial_dir), experiment_fs_path=str(exp)))
    keep = cb.KeepRestorableCheckpoints(keep=2)
    keep.on_trial_save(iteration=1, trials=[trial], trial=trial)
    remaining = sorted(p.name for p in trial_dir.iterdir())
    assert remaining == ["checkpoint_000001", "checkpoint_000002", "checkpoint_000003", "checkpoint_000004",
                         "result.json"]
    # A newer snapshot reaches storage (a new session's file name sorts last): the rest can go.
    (exp / "experiment_state-2026-12-01_06-00-00.json").write_text(snapshot(("a", "checkpoint_000004")))
    keep.on_trial_save(iteration=2, trials=[trial], trial=trial)
    assert sorted(p.name for p in trial_dir.glob("checkpoint_*")) == ["checkpoint_000003", "checkpoint_000004"]
