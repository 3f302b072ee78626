import pytest
import torch

from hpcm_tune.checkpoint import (
    FORMAT_VERSION,
    STATE_FILE,
    CheckpointError,
    architecture_fingerprint,
    list_checkpoints,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
    warm_start_candidates,
)


def _state(epoch, preset="tiny", **extra):
    return {"format": FORMAT_VERSION, "preset": preset, "epoch": epoch, "step": 10 * epoch,
            "model": {"w": torch.full((3,), float(epoch))}, **extra}


class NotATensor:
    def __init__(self):
        self.payload = "would run code on load"


def test_save_is_atomic_keeps_the_newest_and_round_trips(tmp_path):
    for epoch in (1, 2, 3):
        path = save_checkpoint(_state(epoch), tmp_path, epoch, keep=2)
        assert path.name == f"epoch_{epoch:06d}" and (path / STATE_FILE).is_file()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch_000002", "epoch_000003"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    state, used = load_checkpoint(tmp_path, "tiny")
    assert used.name == "epoch_000003" and state["epoch"] == 3
    assert torch.equal(state["model"]["w"], torch.full((3,), 3.0))
    # A checkpoint directory given directly is used as is.
    state, used = load_checkpoint(tmp_path / "epoch_000002", "tiny")
    assert state["epoch"] == 2


def test_rewriting_an_epoch_replaces_it(tmp_path):
    save_checkpoint(_state(1), tmp_path, 1)
    save_checkpoint(_state(1, step_marker=7), tmp_path, 1)
    state, _ = load_checkpoint(tmp_path, "tiny")
    assert state["step_marker"] == 7


def test_corrupt_latest_falls_back_to_the_previous_with_a_warning(tmp_path):
    save_checkpoint(_state(1), tmp_path, 1)
    latest = save_checkpoint(_state(2), tmp_path, 2)
    data = (latest / STATE_FILE).read_bytes()
    (latest / STATE_FILE).write_bytes(data[: len(data) // 2])  # truncated by a crash or a full disk
    with pytest.warns(UserWarning, match=r"epoch_000002 is unreadable .*falling back to .*epoch_000001"):
        state, used = load_checkpoint(tmp_path, "tiny")
    assert state["epoch"] == 1 and used.name == "epoch_000001"
    with pytest.warns(UserWarning, match="falling back"):
        state, _ = load_checkpoint(latest, "tiny")  # given the corrupt directory itself
    assert state["epoch"] == 1


def test_no_readable_checkpoint_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path, "tiny")
    only = save_checkpoint(_state(1), tmp_path, 1)
    (only / STATE_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        load_checkpoint(tmp_path, "tiny")


def test_other_preset_or_format_fails_naming_both(tmp_path):
    save_checkpoint(_state(1, preset="small"), tmp_path / "a", 1)
    with pytest.raises(CheckpointError, match=r"preset 'small'; this run uses preset 'tiny'"):
        load_checkpoint(tmp_path / "a", "tiny")
    old = _state(1)
    old["format"] = 0
    save_checkpoint(old, tmp_path / "b", 1)
    with pytest.raises(CheckpointError, match=rf"format 0; this version of hpcm_tune reads format {FORMAT_VERSION}"):
        load_checkpoint(tmp_path / "b", "tiny")


def test_loading_never_executes_pickled_objects(tmp_path):
    path = save_checkpoint(_state(1), tmp_path, 1)
    torch.save(_state(1, evil=NotATensor()), path / STATE_FILE)  # a state with an arbitrary object
    with pytest.raises(CheckpointError, match="no readable checkpoint.*(Unpickl|weights_only)"):
        load_checkpoint(tmp_path, "tiny")


# --- warm start (init_from) ---------------------------------------------------------------------------------

_MODEL = {"w": torch.zeros(3)}
_FP = architecture_fingerprint(_MODEL)


def test_architecture_fingerprint_sees_names_and_shapes_not_values_nor_codec_tables():
    base = {"conv.weight": torch.zeros(4, 3), "gc._quantized_cdf": torch.zeros(0), "gc.scale_table": torch.zeros(0)}
    fp = architecture_fingerprint(base)
    assert fp == architecture_fingerprint({**base, "conv.weight": torch.randn(4, 3)})
    # update() fills the entropy coder's tables: the same architecture.
    built = {**base, "gc._quantized_cdf": torch.zeros(32, 19), "gc.scale_table": torch.zeros(64),
             "gc._offset": torch.zeros(32), "gc._cdf_length": torch.zeros(32)}
    assert architecture_fingerprint(built) == architecture_fingerprint({**base, "gc._offset": torch.zeros(0),
                                                                        "gc._cdf_length": torch.zeros(0)})
    assert fp != architecture_fingerprint({**base, "conv.weight": torch.zeros(5, 3)})
    assert fp != architecture_fingerprint({**base, "conv.bias": torch.zeros(4)})


def _run_dir(root, epochs=(1, 2)):
    for epoch in epochs:
        save_checkpoint(_state(epoch), root / "checkpoints", epoch, keep=0)
    return root


def _trial(root, indices=(0, 1, 2)):
    root.mkdir(parents=True)
    for i in indices:
        save_checkpoint(_state(i + 1), root / "tmp", i + 1, keep=0).rename(root / f"checkpoint_{i:06d}")
    (root / "tmp").rmdir()
    (root / "checkpoint_000099").mkdir()  # no state.pt in it: not one of ours
    (root / "result.json").write_text("{}\n")
    return root


def test_warm_start_candidates_of_every_layout_newest_first(tmp_path):
    run = _run_dir(tmp_path / "run", (1, 2, 3))
    names = ["epoch_000003", "epoch_000002", "epoch_000001"]
    assert [p.name for p in warm_start_candidates(run)] == names
    assert [p.name for p in warm_start_candidates(run / "checkpoints")] == names
    assert [p.name for p in warm_start_candidates(run / "checkpoints" / "epoch_000002")] == names[1:]
    trial = _trial(tmp_path / "trial", (0, 1, 2))
    assert [p.name for p in warm_start_candidates(trial)] == ["checkpoint_000002", "checkpoint_000001",
                                                              "checkpoint_000000"]
    (tmp_path / "empty").mkdir()
    assert warm_start_candidates(tmp_path / "empty") == []
    assert warm_start_candidates(tmp_path / "nowhere") == []


def test_load_model_weights_takes_the_newest_and_falls_back_past_a_corrupt_one(tmp_path):
    trial = _trial(tmp_path / "trial", (0, 1))
    model, used = load_model_weights(trial, "tiny", _FP)
    assert used.name == "checkpoint_000001" and torch.equal(model["w"], torch.full((3,), 2.0))
    (used / STATE_FILE).write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="(?s)checkpoint_000001 is unreadable .*falling back to .*checkpoint_000000"):
        model, used = load_model_weights(trial, "tiny", _FP)
    assert used.name == "checkpoint_000000" and torch.equal(model["w"], torch.ones(3))


def test_load_model_weights_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or directory"):
        load_model_weights(tmp_path / "nowhere", "tiny", _FP)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint there; allowed: a checkpoint directory"):
        load_model_weights(tmp_path / "empty", "tiny", _FP)
    save_checkpoint(_state(1, preset="small"), tmp_path / "small", 1)
    with pytest.raises(CheckpointError, match=rf"preset 'small' \(architecture {_FP}\); this run is preset 'tiny'"):
        load_model_weights(tmp_path / "small", "tiny", _FP)
    with pytest.raises(CheckpointError, match=rf"architecture {_FP}\); this run is preset 'tiny' \(architecture 0+\)"):
        load_model_weights(tmp_path / "small", "tiny", "0" * 16)
    old = _state(1)
    old["format"] = 0
    save_checkpoint(old, tmp_path / "old", 1)
    with pytest.raises(CheckpointError, match="has format 0"):
        load_model_weights(tmp_path / "old", "tiny", _FP)
    for name, model in (("nomodel", None), ("badmodel", torch.zeros(3))):
        state = _state(1)
        del state["model"]
        if model is not None:
            state["model"] = model
        save_checkpoint(state, tmp_path / name, 1)
        with pytest.raises(CheckpointError, match="no 'model' entry" if model is None else "'model' entry is a Tensor"):
            load_model_weights(tmp_path / name, "tiny", _FP)


def test_saved_meta_names_the_architecture(tmp_path):
    import json

    path = save_checkpoint(_state(1, architecture=_FP), tmp_path, 1)
    assert json.loads((path / "meta.json").read_text())["architecture"] == _FP


def test_a_sweep_trials_corrupt_newest_checkpoint_falls_back_to_the_one_beside_it(tmp_path):
    # Ray hands the trial its newest checkpoint folder (checkpoint_000002); the older ones sit beside it.
    trial = _trial(tmp_path / "trial")
    newest = trial / "checkpoint_000002"
    (newest / STATE_FILE).write_bytes(b"truncated")
    with pytest.warns(UserWarning, match=r"checkpoint_000002 is unreadable .*falling back to .*checkpoint_000001"):
        state, used = load_checkpoint(newest, "tiny")
    assert used.name == "checkpoint_000001" and state["epoch"] == 2


def test_engine_restore_falls_back_past_a_readable_state_that_does_not_load(tmp_path):
    from hpcm_tune.config import RunConfig
    from hpcm_tune.engine import Engine
    from hpcm_tune.testing import make_image_folder

    folder = make_image_folder(tmp_path / "data", n_train=2, n_test=1, size=(64, 64))
    config = RunConfig.from_dict({"data": str(folder), "epochs": 3, "steps_per_epoch": 1, "batch_size": 1,
                                  "patch_size": 64, "num_workers": 0, "codec_interval": 0})
    engine = Engine(config, workdir=tmp_path / "run", keep_checkpoints=0)
    engine.run(lambda m, d: None)
    root = tmp_path / "run" / "checkpoints"
    newest = list_checkpoints(root)[-1]
    state = torch.load(newest / STATE_FILE, weights_only=True)
    del state["optimizer"]  # readable, right preset, but not a state of this run
    torch.save(state, newest / STATE_FILE)
    middle = list_checkpoints(root)[-2]
    state = torch.load(middle / STATE_FILE, weights_only=True)
    first = next(iter(state["model"]))
    state["model"][first] = torch.zeros(1)  # a wrong shape
    torch.save(state, middle / STATE_FILE)
    fresh = Engine(config, workdir=tmp_path / "run")
    with pytest.warns(UserWarning, match="does not load into this run"):
        used = fresh.restore(root)
    assert used.name == "epoch_000001" and fresh.epoch == 1
    # None that loads: a CheckpointError naming each problem, not a traceback from deep inside torch.
    for ckpt in list_checkpoints(root)[:1]:
        (ckpt / STATE_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="do not load into this run.*optimizer"), \
            pytest.warns(UserWarning):
        Engine(config, workdir=tmp_path / "run").restore(root)
