"""PerGroupASHA: ASHA's rule per lambda group, state round trip (no Ray runtime needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray.tune.schedulers import FIFOScheduler, PopulationBasedTraining, TrialScheduler

from hpcm_tune import metrics
from hpcm_tune.sweep import space as sp
from hpcm_tune.sweep.schedulers import SCHEDULERS, PerGroupASHA, build_scheduler, rung_decision, rung_milestones

STOP, CONTINUE = TrialScheduler.STOP, TrialScheduler.CONTINUE


def trial(tid, lmbda):
    return SimpleNamespace(trial_id=tid, config={"lmbda": lmbda})


def make(max_t=8, grace=1, rf=2):
    s = PerGroupASHA(max_t=max_t, grace_period=grace, reduction_factor=rf)
    assert s.set_search_properties(metrics.EVAL_LOSS, "min")
    return s


def report(s, t, epoch, loss):
    return s.on_trial_result(None, t, {metrics.EPOCH: epoch, metrics.EVAL_LOSS: loss})


def test_milestones_like_asha():
    assert rung_milestones(1, 8, 2) == (1, 2, 4)
    assert rung_milestones(2, 6, 2) == (2, 4)
    assert rung_milestones(1, 100, 4) == (1, 4, 16, 64)


def test_rung_decision_stops_below_quantile_and_records():
    rungs = {1: {"a": -1.0, "b": -2.0}}
    assert rung_decision(rungs, "c", 1, -3.0, 2) == (STOP, 1)
    assert rungs[1]["c"] == -3.0
    assert rung_decision(rungs, "d", 1, -0.5, 2) == (CONTINUE, 1)
    assert rung_decision(rungs, "d", 1, -0.1, 2) == (CONTINUE, None)  # judged once per rung


def test_lambdas_are_never_compared():
    """Losses at lambda 0.025 are ~4x those at 0.0035: one ASHA over both would stop every large-lambda
    trial at the first rung; per-lambda ASHA judges each trial only against its own lambda."""
    s = make()
    small = [trial(f"s{i}", 0.0035) for i in range(3)]
    large = [trial(f"l{i}", 0.025) for i in range(3)]
    for t in small + large:
        s.on_trial_add(None, t)
    for i, t in enumerate(small):
        assert report(s, t, 1, 1.0 + 0.01 * i) in (CONTINUE, STOP)
    # The best large-lambda trial, far worse than every small-lambda loss, is first in its group: continues.
    assert report(s, large[0], 1, 4.0) == CONTINUE
    assert report(s, large[1], 1, 4.5) == STOP  # worse than the median of its own group
    assert report(s, large[2], 1, 3.9) == CONTINUE
    state = s.state_dict()
    assert set(state["rungs"]) == {'[0.0035]', '[0.025]'}
    assert set(state["rungs"]['[0.025]']["1"]) == {"l0", "l1", "l2"}
    assert set(state["rungs"]['[0.0035]']["1"]) == {"s0", "s1", "s2"}
    assert set(s.stopped_early) >= {"l1"} and s.stopped_early["l1"]["epoch"] == 1


def test_max_t_stops_and_errored_trials_are_dropped():
    s = make(max_t=4)
    a, b = trial("a", 0.01), trial("b", 0.01)
    s.on_trial_add(None, a)
    s.on_trial_add(None, b)
    assert report(s, a, 1, 1.0) == CONTINUE
    s.on_trial_error(None, a)
    assert "a" not in s.state_dict()["rungs"]["[0.01]"]["1"]
    assert report(s, b, 4, 9.0) == STOP and "b" not in s.stopped_early  # end of budget, not an early stop


def test_missing_time_attr_fails_loudly_and_metric_mode_given_once():
    s = make()
    s.on_trial_add(None, trial("a", 0.01))
    with pytest.raises(ValueError, match="epoch"):
        s.on_trial_result(None, trial("a", 0.01), {metrics.EVAL_LOSS: 1.0})
    assert not s.set_search_properties(metrics.EVAL_PSNR, None)
    fresh = PerGroupASHA(max_t=4)
    with pytest.raises(ValueError, match="metric"):
        fresh.on_trial_add(None, trial("a", 0.01))


def test_state_round_trip_gives_same_decisions():
    s1, s2 = make(), make()
    ts = [trial(f"t{i}", 0.01) for i in range(4)]
    losses = [1.0, 0.9, 1.2, 1.1]
    for t, loss in zip(ts[:2], losses[:2], strict=True):
        s1.on_trial_add(None, t)
        report(s1, t, 1, loss)
    s2.load_state_dict(s1.state_dict())
    for t, loss in zip(ts[2:], losses[2:], strict=True):
        assert report(s1, t, 1, loss) == report(s2, t, 1, loss)
    assert s1.state_dict() == s2.state_dict()
    with pytest.raises(ValueError, match="version"):
        s2.load_state_dict({"version": 99})


def test_bad_construction():
    with pytest.raises(ValueError, match="grace_period"):
        PerGroupASHA(max_t=4, grace_period=5)
    with pytest.raises(ValueError, match="reduction_factor"):
        PerGroupASHA(max_t=4, reduction_factor=1)


def test_registry_builds_each_scheduler():
    base = {"study": "t", "fixed": {"preset": "tiny", "lmbda": 0.01, "epochs": 6},
            "params": {"gamma_s1": {"type": "uniform", "low": 0.001, "high": 0.01}}}
    asha = build_scheduler(sp.parse_space({**base, "scheduler": {"name": "asha", "grace_period": 2}}, "a"))
    assert isinstance(asha, PerGroupASHA) and asha.max_t == 6
    assert type(build_scheduler(sp.parse_space({**base, "scheduler": "fifo"}, "a"))) is FIFOScheduler
    pbt = build_scheduler(sp.parse_space({**base, "scheduler": "pbt", "searcher": "random"}, "a"))
    assert isinstance(pbt, PopulationBasedTraining)
    with pytest.raises(ValueError, match="unknown scheduler 'nope'; valid: asha, fifo, pbt"):
        SCHEDULERS.get("nope")
