"""Callbacks: the scheduler state carried by the experiment snapshot; W&B mode selection."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

from hpcm_tune import metrics
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
