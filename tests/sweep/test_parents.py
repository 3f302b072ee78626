"""Parents (pretrain once, fine-tune many): the parent section of a search space, the cache, and training
without Ray. The Ray path (a sweep that trains its parent, then a second one that reuses it) is in
tests/sweep/test_sweep_parents.py."""

from __future__ import annotations

import contextlib
import json
import shutil

import pytest
import torch

from hpcm_tune import experiment as ex
from hpcm_tune import metrics
from hpcm_tune.checkpoint import list_checkpoints, read_state
from hpcm_tune.config import RunConfig
from hpcm_tune.engine import Engine
from hpcm_tune.sweep import parents as pa
from hpcm_tune.sweep import space as sp
from hpcm_tune.testing import make_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), n_train=3, n_test=1, size=(64, 64))


def space_with_parent(folder=None, parent=None, **over):
    fixed = {"preset": "tiny", "objective": "balanced", "epochs": 2, "steps_per_epoch": 2, "batch_size": 2,
             "patch_size": 64, "num_workers": 0, "codec_interval": 0, "lr": 1e-4}
    if folder is not None:
        fixed["data"] = str(folder)
    data = {
        "study": "p",
        "searcher": "random",
        "scheduler": "fifo",
        "fixed": fixed,
        "params": {"lmbda": {"type": "grid", "values": [0.0035, 0.013]},
                   "w_lr": {"type": "loguniform", "low": 0.01, "high": 0.05}},
        "parent": {"objective": "standard", "epochs": 2, "lr": 1e-3, "steps_per_epoch": 2, "batch_size": 2,
                   "patch_size": 64, "codec_interval": 0} if parent is None else parent,
    }
    data.update(over)
    return sp.parse_space(data, source="p.yaml")


# --- the parent section ---------------------------------------------------------------------------------


def test_one_parent_per_lambda_with_the_trials_match_keys_and_the_parent_section():
    space = space_with_parent()
    configs = sp.parent_configs(space)
    assert len(configs) == 2
    by_lambda = {c["lmbda"]: c for c in configs.values()}
    assert set(by_lambda) == {0.0035, 0.013}
    for cfg in by_lambda.values():
        # the parent section, the match keys and the data keys; nothing else of fixed, no searched key
        assert (cfg["objective"], cfg["epochs"], cfg["lr"], cfg["patch_size"]) == ("standard", 2, 1e-3, 64)
        assert "w_lr" not in cfg and cfg["preset"] == "tiny" and cfg["num_workers"] == 0
        assert "steps_per_epoch" in cfg and "codec_interval" in cfg  # from the parent section
        assert cfg.get("data") is None  # not set in fixed: the default
    # Every trial's parent key is one of the parents'.
    for cfg in sp.trial_configs(space):
        assert ex.parent_key(cfg) in configs


@pytest.mark.parametrize(("parent", "params", "key", "says"), [
    ({"w_lr": 0.02}, None, "parent.w_lr", "searched in params"),
    ({"lmbda": 0.01}, None, "parent.lmbda", "searched in params"),
    ({"distortion": "ms-ssim"}, None, "parent.distortion", "taken from each trial"),
    ({"preset": "small"}, None, "parent.preset", "taken from each trial"),
    ({"epoch": 3}, None, "parent.epoch", "unknown config key"),
    ({"lr": -1}, None, "parent.lr", "> 0"),
    ({"objective": "standard"}, {"lmbda": {"type": "loguniform", "low": 0.001, "high": 0.01}},
     "params.lmbda.type", "one parent is trained per value"),
])
def test_bad_parent_sections_name_the_file_and_key(parent, params, key, says):
    over = {} if params is None else {"params": params}
    with pytest.raises(sp.SpaceError) as info:
        space_with_parent(parent=parent, **over)
    assert info.value.source == "p.yaml" and info.value.key == key
    assert says in str(info.value)


def test_parent_and_init_from_in_fixed_are_refused():
    with pytest.raises(sp.SpaceError, match="fixed.init_from"):
        sp.parse_space({"study": "p", "searcher": "random", "fixed": {"epochs": 1, "init_from": "/x"},
                        "parent": {"objective": "standard"}}, source="p.yaml")


def test_parent_resources_are_checked():
    space = space_with_parent(parent={"objective": "standard", "resources": {"cpus": 2, "gpus": 0.5}})
    assert space.parent_resources == {"cpus": 2, "gpus": 0.5}
    assert "resources" not in space.parent
    with pytest.raises(sp.SpaceError, match="parent.resources.cpus"):
        space_with_parent(parent={"resources": {"cpus": 0}})


def test_training_config_points_each_trial_at_its_parent(tmp_path):
    space = pa.with_parents(space_with_parent(), pa.plan_parents(space_with_parent(), str(tmp_path)))
    table = json.loads(space.fixed[ex.PARENTS_KEY])
    for cfg in sp.trial_configs(space):
        resolved = ex.training_config(cfg)
        assert resolved["init_from"] == table[ex.parent_key(cfg)]
        assert f"lmbda{cfg['lmbda']:g}" in resolved["init_from"]
        assert ex.PARENTS_KEY not in resolved
    with pytest.raises(ValueError, match="no parent for"):
        ex.training_config({ex.PARENTS_KEY: json.dumps({"other": "/x"}), "lmbda": 0.5})


def test_digest_follows_the_config_and_ignores_labels(tmp_path):
    base = RunConfig.from_dict({"objective": "standard", "lmbda": 0.0067}).to_dict()
    fp = pa.model_fingerprint("tiny")
    d = pa.parent_digest(base, fp)
    assert pa.parent_digest({**base, "label": "x", "study": "y", "num_workers": 7}, fp) == d
    assert pa.parent_digest({**base, "epochs": 3}, fp) != d
    assert pa.parent_digest(base, pa.model_fingerprint("small")) != d
    assert pa.parent_digest(base, fp, engine="fake") != d


def test_dry_run_shows_parents_and_whether_each_is_cached(tmp_path, capsys):
    from hpcm_tune.sweep import cli

    path = tmp_path / "p.yaml"
    import yaml

    data = {"study": "p", "searcher": "random", "scheduler": "fifo",
            "fixed": {"preset": "tiny", "objective": "balanced", "epochs": 2},
            "params": {"lmbda": {"type": "grid", "values": [0.0035, 0.013]}},
            "parent": {"objective": "standard", "epochs": 3}}
    path.write_text(yaml.safe_dump(data))
    assert cli.main(["--space", str(path), "--storage", str(tmp_path / "store"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 parent(s)" in out
    assert out.count(": missing; 3 epochs, objective standard") == 2
    # --set parent.KEY reaches the parent section (and so its digest).
    assert cli.main(["--space", str(path), "--storage", str(tmp_path / "store"), "--dry-run",
                     "--set", "parent.epochs=5"]) == 0
    assert out.count("5 epochs") == 0 and capsys.readouterr().out.count("missing; 5 epochs") == 2


# --- training and the cache, without Ray ----------------------------------------------------------------


class Stop(Exception):
    pass


def one_parent(folder, storage, epochs=2):
    space = space_with_parent(folder, parent={"objective": "standard", "epochs": epochs, "lr": 1e-3,
                                              "steps_per_epoch": 2, "batch_size": 2, "patch_size": 64,
                                              "codec_interval": 0},
                              params={"lmbda": {"type": "grid", "values": [0.013]}})
    (parent,) = pa.plan_parents(space, str(storage))
    return parent


@pytest.mark.slow
def test_cache_miss_trains_then_a_hit_trains_nothing(folder, tmp_path, monkeypatch):
    parent = one_parent(folder, tmp_path)
    assert pa.status(parent) == "missing"
    (row,) = pa.ensure_parents([parent], in_process=True)
    assert row["cached"] is False and row["epochs"] == 2 and row["steps"] == 4
    assert pa.status(parent) == "cached" and pa.verify(parent) is None
    done = json.loads((tmp_path / pa.PARENTS_DIR / parent.name / pa.DONE_FILE).read_text())
    assert done["digest"] == parent.digest and done["lambda_d"] > 0
    # A second sweep asking for the same parent trains nothing.
    monkeypatch.setattr(pa, "train_parent", lambda p: pytest.fail("a cached parent was retrained"))
    (again,) = pa.ensure_parents([parent], in_process=True)
    assert again["cached"] is True and again["psnr"] == row["psnr"]


@pytest.mark.slow
def test_a_corrupt_cached_parent_is_retrained_never_used(folder, tmp_path, capsys):
    parent = one_parent(folder, tmp_path, epochs=1)
    pa.ensure_parents([parent], in_process=True)
    for ckpt in list_checkpoints(tmp_path / pa.PARENTS_DIR / parent.name / "checkpoints"):
        (ckpt / "state.pt").write_bytes(b"garbage")
    assert "unusable" in pa.verify(parent)
    (row,) = pa.ensure_parents([parent], in_process=True)
    assert row["cached"] is False
    assert "unusable" in capsys.readouterr().err
    assert pa.verify(parent) is None


@pytest.mark.slow
def test_a_killed_parent_resumes_and_equals_an_uninterrupted_one(folder, tmp_path):
    parent = one_parent(folder, tmp_path / "a")
    # The parent stage killed after epoch 1: a checkpoint, no marker.
    run_dir = tmp_path / "a" / pa.PARENTS_DIR / parent.name
    engine = Engine(RunConfig.from_dict(parent.config), workdir=run_dir)

    def stop(m, _d):  # as train_parent's own callback: one result line per epoch, then the kill
        with (run_dir / pa.RESULT_FILE).open("a") as f:
            f.write(json.dumps(m) + "\n" + '{"epoch": 2, "cut by the ki')
        raise Stop

    with contextlib.suppress(Stop):
        engine.run(stop)
    assert pa.status(parent) == "partial (epoch 1 of 2)"
    pa.ensure_parents([parent], in_process=True)
    assert pa.status(parent) == "cached"
    whole = one_parent(folder, tmp_path / "b")
    pa.ensure_parents([whole], in_process=True)

    def final(p):
        (ckpt,) = list_checkpoints(tmp_path / p.path.split("/")[-3] / pa.PARENTS_DIR / p.name / "checkpoints")[-1:]
        return read_state(ckpt)["model"]

    a, b = final(parent), final(whole)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "a" / pa.PARENTS_DIR / parent.name / pa.RESULT_FILE).read_text().splitlines()
    assert [json.loads(x)[metrics.EPOCH] for x in lines] == [1, 2]


@pytest.mark.slow
def test_trials_start_from_the_parent_weights(folder, tmp_path):
    parent = one_parent(folder, tmp_path, epochs=1)
    pa.ensure_parents([parent], in_process=True)
    space = pa.with_parents(space_with_parent(folder, params={"lmbda": {"type": "grid", "values": [0.013]}},
                                              parent={"objective": "standard", "epochs": 1, "lr": 1e-3,
                                                      "steps_per_epoch": 2, "batch_size": 2, "patch_size": 64,
                                                      "codec_interval": 0}),
                            [parent])
    trial = ex.training_config(sp.trial_configs(space)[0])
    child = Engine(RunConfig.from_dict(trial), workdir=tmp_path / "child")
    child.warm_start()
    parent_state = read_state(list_checkpoints(tmp_path / pa.PARENTS_DIR / parent.name / "checkpoints")[-1])
    for k, v in parent_state["model"].items():
        assert torch.equal(child.model.state_dict()[k], v), k


def test_check_init_from_names_the_key_before_ray(tmp_path, folder):
    space = sp.parse_space({"study": "w", "searcher": "random",
                            "fixed": {"epochs": 1, "init_from": str(tmp_path / "nowhere")}}, source="w.yaml")
    with pytest.raises(sp.SpaceError) as info:
        pa.check_init_from(space)
    assert info.value.key == "fixed.init_from" and "no such file" in str(info.value)
    # A checkpoint of another preset.
    small = Engine(RunConfig.from_dict({"preset": "small", "data": str(folder), "epochs": 1}),
                   workdir=tmp_path / "small")
    small.save()
    space = sp.parse_space({"study": "w", "searcher": "random",
                            "fixed": {"epochs": 1, "init_from": str(tmp_path / "small")}}, source="w.yaml")
    with pytest.raises(sp.SpaceError, match="preset 'small'.*preset 'tiny'"):
        pa.check_init_from(space)
    shutil.rmtree(tmp_path / "small")
