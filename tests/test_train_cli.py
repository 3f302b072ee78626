import json
import subprocess
import sys

import pytest
import torch

from hpcm_tune import metrics as M
from hpcm_tune.testing import make_image_folder
from hpcm_tune.train import main


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machine: intra-op threads only spin against other processes
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), n_train=2, n_test=1, size=(64, 64))


def _printed_config(capsys, *argv):
    assert main([*argv, "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_original_design_example_runs_nearly_as_written(capsys):
    config = _printed_config(capsys, "--use_hierarchical", "--scale_weights", "0.2", "0.3", "0.5",
                             "--gamma_s1", "0.008", "--gamma_s2", "0.006", "--gamma_s3", "0.004",
                             "--adaptive_gamma", "--gamma_strategy", "hierarchical", "--w_lr", "0.01",
                             "--clip_max_norm", "2.0", "--lambda", "0.013")
    assert config["objective"] == "hierarchical" and config["weighting"] == "hierarchical"
    assert config["scale_weights"] == [0.2, 0.3, 0.5] and config["gamma_strategy"] == "hierarchical"
    assert config["w_lr"] == 0.01 and config["clip_max_norm"] == 2.0 and config["lmbda"] == 0.013


def test_adaptive_gamma_alone_selects_the_original_default_strategy(capsys):
    assert _printed_config(capsys, "--adaptive_gamma")["gamma_strategy"] == "hierarchical"
    assert _printed_config(capsys)["gamma_strategy"] == "fixed"


def test_layers_file_then_flags_then_set(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("optimizer:\n  lr: 2.0e-4\nw_lr: 0.05\nepochs: 9\nlabel: from-file\n")
    config = _printed_config(capsys, "--config", str(path), "--w_lr", "0.04", "--set", "epochs=11",
                             "--set", "scale_weights=[0.5, 0.3, 0.2]")
    assert config["lr"] == 2e-4 and config["w_lr"] == 0.04 and config["epochs"] == 11
    assert config["scale_weights"] == [0.5, 0.3, 0.2] and config["label"] == "from-file"


@pytest.mark.parametrize("argv, message", [
    (["--set", "epochs=0"], "epochs: got 0"),
    (["--set", "nonsense"], "expected KEY=VALUE"),
    (["--set", "learning_rate=1"], "learning_rate: unknown key"),
])
def test_bad_values_exit_2_with_a_message(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main([*argv, "--print-config"])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_yaml_is_read_safely(tmp_path, capsys):
    path = tmp_path / "evil.yaml"
    path.write_text("lr: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SystemExit) as info:
        main(["--config", str(path), "--print-config"])
    assert info.value.code == 2 and "not valid YAML" in capsys.readouterr().err


def test_a_short_run_writes_params_results_and_checkpoints_and_resumes(folder, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--out", str(out), "--quiet", "-d", str(folder), "--set", "batch_size=2", "--set", "patch_size=64",
              "--set", "steps_per_epoch=1", "--set", "num_workers=0", "--set", "codec_interval=0",
              "--set", "lr_schedule=constant"]
    assert main([*common, "--set", "epochs=2"]) == 0
    last = json.loads(capsys.readouterr().out)
    assert last[M.EPOCH] == 2
    params = json.loads((out / "params.json").read_text())
    assert params["epochs"] == 2 and params["data"] == str(folder)
    lines = [json.loads(line) for line in (out / "result.json").read_text().splitlines()]
    assert [r[M.EPOCH] for r in lines] == [1, 2] and lines[-1] == last
    assert (out / "checkpoints" / "epoch_000002" / "state.pt").is_file()

    with pytest.raises(SystemExit) as info:  # never silently overwrite a run
        main([*common, "--set", "epochs=2"])
    assert info.value.code == 2 and "already holds a run" in capsys.readouterr().err

    assert main(["--out", str(out), "--resume", "--quiet"]) == 0  # the recorded config: nothing left to do
    assert len((out / "result.json").read_text().splitlines()) == 2
    capsys.readouterr()
    with pytest.warns(UserWarning, match="differs from this run's config in epochs"):
        assert main([*common, "--resume", "--set", "epochs=3"]) == 0
    lines = [json.loads(line) for line in (out / "result.json").read_text().splitlines()]
    assert [r[M.EPOCH] for r in lines] == [1, 2, 3]
    # The same three epochs in one go give the same numbers (constant lr, fixed gammas).
    fresh = tmp_path / "fresh"
    assert main([*common[2:], "--out", str(fresh), "--set", "epochs=3"]) == 0
    assert [json.loads(line) for line in (fresh / "result.json").read_text().splitlines()] == lines


@pytest.mark.slow
def test_console_script_module_runs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "hpcm_tune.train", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "--use_hierarchical" in result.stdout and "--set" in result.stdout


def test_console_progress_shows_the_headline_metrics():
    import io

    from hpcm_tune.progress import ConsoleProgress

    stream = io.StringIO()
    with ConsoleProgress(3, start=1, stream=stream) as bar:
        bar({M.TRAIN_LOSS: 1.5, M.EVAL_PSNR: 30.25, M.EVAL_BPP: 0.5, M.EPOCH: 2}, None)
    text = stream.getvalue()
    assert "2/3" in text and "psnr=30.25" in text and "loss=1.5" in text


def test_init_from_is_a_key_and_a_flag(tmp_path, capsys):
    assert _printed_config(capsys)["init_from"] is None
    assert _printed_config(capsys, "--set", f"init_from={tmp_path}")["init_from"] == str(tmp_path)
    assert _printed_config(capsys, "--init-from", str(tmp_path))["init_from"] == str(tmp_path)
    # The flag is an alias like the others: --set still wins.
    assert _printed_config(capsys, "--init-from", "a", "--set", "init_from=b")["init_from"] == "b"


@pytest.mark.parametrize("how", ["flag", "set"])
def test_init_from_warm_starts_and_a_resumed_child_no_longer_needs_it(folder, tmp_path, capsys, how):
    from hpcm_tune.checkpoint import read_state

    common = ["--quiet", "-d", str(folder), "--set", "batch_size=2", "--set", "patch_size=64", "--set",
              "steps_per_epoch=1", "--set", "num_workers=0", "--set", "codec_interval=0", "--set",
              "lr_schedule=constant", "--set", "eval_max_images=1"]
    parent = tmp_path / "parent"
    assert main([*common, "--out", str(parent), "--set", "epochs=1"]) == 0
    capsys.readouterr()
    child = tmp_path / "child"
    source = ["--init-from", str(parent)] if how == "flag" else ["--set", f"init_from={parent}"]
    # A learning rate so small that one Adam step leaves the weights where the parent left them (~1e-12).
    child_args = [*common, "--out", str(child), *source, "--set", "lr=1e-12", "--set", "objective=balanced"]
    assert main([*child_args, "--set", "epochs=1"]) == 0
    assert f"warm-started from {parent / 'checkpoints' / 'epoch_000001'}" in capsys.readouterr().err
    assert json.loads((child / "params.json").read_text())["init_from"] == str(parent)
    theirs = read_state(parent / "checkpoints" / "epoch_000001")["model"]
    mine = read_state(child / "checkpoints" / "epoch_000001")["model"]
    for key, value in theirs.items():
        torch.testing.assert_close(mine[key], value, rtol=0, atol=1e-9)
    assert any(not torch.equal(mine[k], theirs[k]) for k in theirs)  # yet it did train a step
    parent.rename(tmp_path / "parent-moved")
    assert main([*child_args, "--resume", "--set", "epochs=2"]) == 0
    err = capsys.readouterr().err
    assert "resumed from" in err and "warm-started" not in err
    assert [json.loads(line)[M.EPOCH] for line in (child / "result.json").read_text().splitlines()] == [1, 2]


def test_init_from_a_missing_path_exits_2_before_training(folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--quiet", "-d", str(folder), "--out", str(tmp_path / "run"), "--init-from", str(tmp_path / "nope")])
    assert info.value.code == 2 and "no such file or directory" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # checked before anything is written


def test_a_sweep_trial_directory_is_never_overwritten_without_resume(folder, tmp_path, capsys):
    # A trial's results but no checkpoints/ folder (Ray keeps checkpoint_NNNNNN/ beside them).
    trial = tmp_path / "trial"
    trial.mkdir()
    (trial / "params.json").write_text('{"epochs": 5}')
    (trial / "result.json").write_text('{"epoch": 1}\n')
    (trial / "checkpoint_000000").mkdir()
    before = {p.name: p.read_bytes() for p in trial.iterdir() if p.is_file()}
    with pytest.raises(SystemExit) as info:
        main(["--quiet", "-d", str(folder), "--out", str(trial), "--set", "epochs=1"])
    assert info.value.code == 2 and "already holds a run (params.json, result.json" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in trial.iterdir() if p.is_file()} == before


def test_resume_skips_a_result_line_cut_by_a_kill(folder, tmp_path):
    out = tmp_path / "run"
    common = ["--quiet", "-d", str(folder), "--set", "steps_per_epoch=1", "--set", "batch_size=1",
              "--set", "patch_size=64", "--set", "codec_interval=0", "--out", str(out)]
    assert main([*common, "--set", "epochs=1"]) == 0
    with (out / "result.json").open("a") as f:
        f.write('{"epoch": 2, "train/lo')  # the driver was killed mid-line
    with pytest.warns(UserWarning, match="line 2 is not a complete JSON record"):
        assert main([*common, "--resume", "--set", "epochs=2"]) == 0
    lines = [json.loads(x) for x in (out / "result.json").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
