import pytest
import torch

from hpcm_tune.checkpoint import (
    FORMAT_VERSION,
    STATE_FILE,
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
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
