"""Launcher and CLI checks that need no Ray runtime: refusals, flag validation, metadata, summaries."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import fake_engine
import pyarrow.fs
import pytest

from hpcm_tune import metrics
from hpcm_tune.experiment import DONE
from hpcm_tune.source import code_commit
from hpcm_tune.sweep import cli, launcher
from hpcm_tune.sweep import space as sp
from hpcm_tune.sweep.callbacks import KeepRestorableCheckpoints


def default_space(**over):
    return sp.load_space(sp.resolve_space_path("default")).with_overrides(**over)


def test_existing_experiment_name_is_refused(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(sp.SpaceError, match="--resume taken"):
        launcher.run_sweep(default_space(), launcher.SweepOptions(name="taken", storage=str(tmp_path)))


def test_cli_refuses_existing_name_before_ray(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    rc = cli.main(["--name", "taken", "--storage", str(tmp_path)], engine=fake_engine.NAME)
    assert rc == 2
    assert "already exists" in capsys.readouterr().err


def test_unregistered_engine_is_refused_before_anything_is_written(tmp_path, capsys):
    rc = cli.main(["--storage", str(tmp_path / "r"), "--name", "x"], engine="tpu")
    assert rc == 2
    assert "unknown engine 'tpu'; valid: fake, hpcm" in capsys.readouterr().err  # fake: registered by this test
    assert not (tmp_path / "r").exists()


def test_resume_of_an_engine_this_program_has_not_registered_names_it(tmp_path):
    """A sweep started with the test's fake engine, resumed by plain tune.py (which registers only the real one):
    refused before Ray starts, naming the recorded engine and the registered ones."""
    import subprocess
    import sys

    meta = launcher.experiment_meta(default_space(epochs=3), launcher.SweepOptions(engine=fake_engine.NAME), "k")
    launcher.write_json(str(tmp_path / "k" / launcher.META_FILE), meta)
    done = subprocess.run([sys.executable, "tune.py", "--resume", "k", "--storage", str(tmp_path)],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "the sweep was started with engine 'fake', which this program has not registered (registered: hpcm)" \
        in done.stderr
    with pytest.raises(sp.SpaceError, match="engine 'tpu', which this program has not registered"):
        launcher.check_recorded_engines("k", ["hpcm", fake_engine.NAME, "tpu"])  # e.g. a parent's engine
    launcher.check_recorded_engines("k", ["hpcm", fake_engine.NAME])  # registered here: resumed from here


@pytest.mark.parametrize("argv", [
    ["--epochs", "0"], ["--gpus-per-trial", "1.5"], ["--scheduler", "hyperband"], ["--searcher", "bayes"],
    ["--cpus-per-trial", "-1"], ["--set", "novalue"], ["--retry-errored"], ["--num-samples", "x"],
    ["--engine", "fake"],  # no such flag: users have one engine
])
def test_bad_flags_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "needle"), [
    (["--set", "lmbda=-1", "--dry-run"], "lmbda = -1"),
    (["--set", "gamma_s1=0.1", "--dry-run"], "gamma_s1 is searched"),
    (["--set", "colour=red", "--dry-run"], "colour"),
    (["--space", "nope", "--dry-run"], "presets:"),
    (["--searcher", "grid", "--dry-run"], "searcher grid enumerates"),
    (["--resume", "does-not-exist"], "no hpcm-tune experiment"),
])
def test_bad_values_name_the_flag_or_key(argv, needle, capsys, tmp_path):
    assert cli.main([*argv, "--storage", str(tmp_path)]) == 2
    assert needle in capsys.readouterr().err


def test_dry_run_lists_trial_configs(capsys, tmp_path):
    assert cli.main(["--space", "objectives", "--dry-run", "--set", "preset=tiny", "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "20 trials" in out and "'label': 'hierarchical'" in out
    epochs = _preset_parent_epochs("objectives")
    assert "4 parent(s)" in out and out.count(f": missing; {epochs} epochs, objective standard") == 4


def _preset_parent_epochs(name):
    """The parent length written in a preset (the dry run must show the file's number, whatever it is)."""
    import yaml

    path = Path(__file__).resolve().parents[2] / "search_spaces" / f"{name}.yaml"
    return yaml.safe_load(path.read_text())["parent"]["epochs"]


def test_flag_overrides_reach_the_space():
    args = cli.build_parser().parse_args(["--epochs", "3", "--num-samples", "2", "--gpus-per-trial", "0.25",
                                          "--scheduler", "fifo", "--set", "steps_per_epoch=5", "--seed", "7"])
    s = cli.space_from_args(args)
    assert (s.max_epochs, s.samples, s.gpus, s.scheduler, s.seed) == (3, 2, 0.25, "fifo", 7)
    assert s.fixed["steps_per_epoch"] == 5


def test_meta_round_trip_restores_the_space(tmp_path):
    s = default_space(epochs=3)
    meta = launcher.experiment_meta(s, launcher.SweepOptions(engine="fake"), "x")
    meta = json.loads(json.dumps(meta))
    assert (meta["metric"], meta["mode"], meta["max_epochs"], meta["study"]) == (metrics.EVAL_LOSS, "min", 3, "default")
    assert meta["space_file"].endswith("default.yaml")
    assert meta["commit"] == code_commit() != ""  # the code the trials run, for the report's provenance
    back = launcher.space_from_meta(meta)
    assert back.params == s.params and back.fixed == s.fixed and back.scheduler_options == s.scheduler_options
    path = str(tmp_path / "e" / launcher.META_FILE)
    launcher.write_json(path, meta)
    assert launcher.read_json(path) == meta
    assert not (tmp_path / "e" / (launcher.META_FILE + ".tmp")).exists()


def fake_result(tid, lmbda, epoch, loss, error=None, label="l", root="/x", done=True):
    """A Ray Result as finish() reads it; done=False: its trial was cut off by an interrupted sweep."""
    return SimpleNamespace(path=f"{root}/{tid}", filesystem=pyarrow.fs.LocalFileSystem(),
                           config={"lmbda": lmbda, "label": label, "gamma_s1": 0.1},
                           metrics={metrics.EPOCH: epoch, metrics.EVAL_LOSS: loss, "trial_id": tid,
                                    DONE: error is None and done}, error=error)


def pbt_space(**settings):
    return sp.parse_space({"study": "pbt", "samples": 2, "searcher": "random", "scheduler": "pbt", **settings,
                           "fixed": {"preset": "tiny", "lmbda": 0.0067, "epochs": 4},
                           "params": {"gamma_s1": {"type": "loguniform", "low": 0.001, "high": 0.05}}}, "pbt.yaml")


def test_the_end_of_a_sweep_keeps_the_newest_checkpoints_of_each_trial(tmp_path):
    """What was kept while trials could restore it (all of them under PBT) goes at the end, but the newest
    checkpoints_to_keep of each trial."""
    space = pbt_space(checkpoints_to_keep=2)
    for tid, count in (("a", 4), ("b", 1)):
        for i in range(count):
            (tmp_path / tid / f"checkpoint_{i:06d}").mkdir(parents=True)
    (tmp_path / "a" / "result.json").write_text("{}")  # not a checkpoint: stays
    results = [fake_result(tid, 0.0067, 4, 0.5, root=str(tmp_path)) for tid in ("a", "b")]
    summary = launcher.finish(results, space, str(tmp_path), scheduler=None)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["checkpoint_000002", "checkpoint_000003",
                                                                   "result.json"]
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["checkpoint_000000"]
    assert summary["checkpoints_pruned"] == 2 and summary["checkpoints_deleted"] == 0
    assert "Deleted 2 older checkpoints" in launcher.format_summary(summary)


@pytest.mark.parametrize(("space", "pruned_while_running"), [(default_space(), True), (pbt_space(), False)],
                         ids=["asha", "pbt"])
def test_ray_deletes_no_checkpoint_and_pbt_keeps_all_while_trials_run(tmp_path, space, pruned_while_running):
    _, _, (_, run_config) = launcher._build(space, launcher.SweepOptions(engine=fake_engine.NAME), "n", str(tmp_path))
    assert run_config.checkpoint_config.num_to_keep is None  # Ray's own pruning outruns the stored snapshot
    keepers = [c for c in run_config.callbacks if isinstance(c, KeepRestorableCheckpoints)]
    assert [c.keep for c in keepers] == ([space.checkpoints_to_keep] if pruned_while_running else [])


def test_delete_stopped_checkpoints_removes_every_checkpoint_of_a_stopped_trial_only(tmp_path):
    for tid in ("full", "stopped"):
        for i in range(2):
            (tmp_path / tid / f"checkpoint_{i:06d}").mkdir(parents=True)
    results = [fake_result("full", 0.01, 4, 0.5, root=str(tmp_path)),
               fake_result("stopped", 0.01, 2, 0.6, root=str(tmp_path))]
    summary = launcher.finish(results, default_space(epochs=4), str(tmp_path), scheduler=None,
                              delete_stopped=True)
    assert len(list((tmp_path / "full").iterdir())) == 2 and not list((tmp_path / "stopped").iterdir())
    assert summary["checkpoints_deleted"] == 2 and summary["checkpoints_pruned"] == 0
    assert launcher.format_summary(summary).startswith("Sweep finished: 2 trials, 1 ran all 4 epochs")


@pytest.mark.parametrize("space", [pbt_space(checkpoints_to_keep=1), default_space(epochs=4)], ids=["pbt", "asha"])
def test_an_interrupted_sweep_deletes_no_checkpoint_and_says_how_to_resume(tmp_path, space):
    """Ray's fit() returns when the sweep is interrupted (Ctrl-C): a trial cut off looks stopped early, but it
    resumes from its checkpoints, and PBT's paused trials from other trials' older ones."""
    for tid in ("a", "b"):
        for i in range(3):
            (tmp_path / tid / f"checkpoint_{i:06d}").mkdir(parents=True)
    results = [fake_result("a", 0.0067, 4, 0.5, root=str(tmp_path)),
               fake_result("b", 0.0067, 2, 0.6, root=str(tmp_path), done=False)]
    summary = launcher.finish(results, space, str(tmp_path), scheduler=None,
                              delete_stopped=True)
    assert len(list(tmp_path.glob("*/checkpoint_*"))) == 6
    assert summary["unfinished"] == 1 and summary["checkpoints_deleted"] == summary["checkpoints_pruned"] == 0
    text = launcher.format_summary(summary)
    assert text.startswith("Sweep interrupted: 1 of 2 trials unfinished") and "Sweep finished" not in text
    assert f"--resume {tmp_path}" in text


def test_summary_ranks_per_lambda_and_lists_errors(tmp_path):
    s = default_space(epochs=4)
    results = [fake_result("a", 0.01, 4, 0.5), fake_result("b", 0.01, 2, 0.3), fake_result("c", 0.01, 4, 0.4),
               fake_result("d", 0.02, 4, 2.0), fake_result("e", 0.02, 1, 9.0, error=RuntimeError("boom\nx: NaN"))]
    summary = launcher.finish(results, s, str(tmp_path), scheduler=None, top=2)
    assert [r["trial"] for r in summary["best"]["0.01"]] == ["c", "a"]  # full budget first, then by loss
    assert [r["trial"] for r in summary["best"]["0.02"]] == ["d"]
    assert [r["trial"] for r in summary["stopped_early"]] == ["b"]
    assert summary["errored"][0]["error"] == "RuntimeError: x: NaN"
    text = launcher.format_summary(summary)
    assert "Best at lambda = 0.01" in text and "Errored trials" in text and f"Results: {tmp_path}" in text
    assert json.loads((tmp_path / launcher.SUMMARY_FILE).read_text())["trials"] == 5


def test_trial_dirname_is_short_and_safe():
    t = SimpleNamespace(trainable_name="hpcm_trial", trial_id="ab12", config={"label": "s2 emphasis/x", "lmbda": 0.01})
    assert launcher.trial_dirname(t) == "hpcm_trial_ab12_s2-emphasis-x_lmbda0.01"


def test_write_json_replaces_the_file_whole_and_a_failed_write_leaves_the_old_one(tmp_path):
    path = tmp_path / "exp" / "state.json"
    launcher.write_json(str(path), {"a": 1})
    launcher.write_json(str(path), {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}

    class Unserialisable:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        launcher.write_json(str(path), {"a": Unserialisable()})
    with pytest.raises(OSError), launcher._atomic_output(str(path)) as stream:
        stream.write(b'{"a": 3')
        raise OSError("disk full")
    assert json.loads(path.read_text()) == {"a": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]  # no temporary file left behind


def test_copy_moves_a_file_into_place_through_a_temporary_name(tmp_path):
    src = tmp_path / "optuna.db"
    src.write_bytes(b"x" * (5 << 20))  # more than one 4 MiB chunk
    dst = tmp_path / "remote" / "exp" / "optuna.db"
    launcher._copy(str(src), str(dst))
    assert dst.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dst.parent.iterdir()) == ["optuna.db"]
