"""A catalogue of bad inputs, tried as a user would: search-space files, command-line flags, data folders,
checkpoints and experiment directories. Each case must end in a message that names what is wrong (file, key or
value and what is allowed), with the exit status of the tool, before Ray starts, and must leave the disk exactly
as it was (no experiment directory, no half-written run)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from hpcm_tune.sweep import cli as tune_cli
from hpcm_tune.testing import make_image_folder
from hpcm_tune.train import main as train_main

GOOD_FIXED = {"preset": "tiny", "objective": "hierarchical", "lmbda": 0.0067, "epochs": 2}


def space_file(root: Path, data: dict, name: str = "s.yaml") -> Path:
    path = root / name
    path.write_text(yaml.safe_dump(data))
    return path


def with_space(**over) -> Callable[[Path], list[str]]:
    """A case: a search-space file made of a valid base with ``over`` applied (None deletes a setting)."""

    def make(root: Path) -> list[str]:
        data = {"study": "bad", "searcher": "random", "scheduler": "fifo", "fixed": dict(GOOD_FIXED),
                "params": {"gamma_s1": {"type": "loguniform", "low": 0.001, "high": 0.02}}}
        for k, v in over.items():
            if v is None:
                data.pop(k, None)
            else:
                data[k] = v
        return ["--space", str(space_file(root, data))]

    return make


def raw_space(text: str) -> Callable[[Path], list[str]]:
    def make(root: Path) -> list[str]:
        path = root / "raw.yaml"
        path.write_text(text)
        return ["--space", str(path)]

    return make


def argv(*args: str) -> Callable[[Path], list[str]]:
    return lambda root: [a.replace("ROOT", str(root)) for a in args]


BOMB = "a: &a [1,1,1,1,1,1,1,1,1]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True))

# (case id, make(root) -> tune.py argv, exit status, message fragment)
TUNE_CASES = [
    ("unknown setting", with_space(sampels=3), 2, "sampels = 3: unknown setting"),
    ("unknown config key", with_space(fixed={**GOOD_FIXED, "lambda": 0.1}), 2, "fixed.lambda"),
    ("negative gamma", with_space(fixed={**GOOD_FIXED, "gamma_s2": -0.1}), 2,
     "gamma_s2 = -0.1: allowed: a finite number >= 0"),
    ("lambda zero", with_space(fixed={**GOOD_FIXED, "lmbda": 0}), 2, "lmbda = 0: allowed: a finite number > 0"),
    ("no epochs", with_space(fixed={"preset": "tiny"}), 2, "fixed.epochs"),
    ("low above high", with_space(params={"w_lr": {"type": "uniform", "low": 0.5, "high": 0.1}}), 2,
     "must be below high"),
    ("loguniform at zero", with_space(params={"w_lr": {"type": "loguniform", "low": 0, "high": 0.1}}), 2,
     "loguniform needs low > 0"),
    ("quniform bounds off the grid", with_space(params={"batch_size": {"type": "quniform", "low": 3, "high": 16,
                                                                       "q": 4}}), 2, "must be a multiple of q = 4"),
    ("patch size bound invalid", with_space(params={"patch_size": {"type": "randint", "low": 64, "high": 256}}), 2,
     "patch_size = 255: allowed: a multiple of 16"),
    ("patch sizes mostly invalid", with_space(params={"patch_size": {"type": "randint", "low": 64, "high": 257}}), 2,
     "every domain is tried at both bounds"),
    ("empty choice", with_space(params={"w_lr": {"type": "choice", "values": []}}), 2, "must be a non-empty list"),
    ("unknown domain type", with_space(params={"w_lr": {"type": "normal"}}), 2, "allowed: fixed, uniform"),
    ("simplex without room", with_space(params={"scale_weights": {"type": "simplex", "dim": 3, "min": 0.4}}), 2,
     "dim*min < 1"),
    ("weights not summing to one", with_space(fixed={**GOOD_FIXED, "scale_weights": [0.5, 0.5, 0.5]}), 2,
     "scale_weights = [0.5, 0.5, 0.5]: allowed: three numbers > 0 (s1, s2, s3) summing to 1"),
    ("unknown objective", with_space(fixed={**GOOD_FIXED, "objective": "fancy"}), 2,
     "objective = 'fancy': allowed: "),
    ("unknown optimizer", with_space(fixed={**GOOD_FIXED, "optimizer": "sgd"}), 2, "allowed: adam, cautious_adam"),
    ("epochs in a configuration", with_space(configurations={"a": {"epochs": 9}, "b": {"epochs": 2}}), 2,
     "the sweep's budget"),
    ("seed searched", with_space(params={"seed": {"type": "choice", "values": [0, 1]}}), 2, "seeds come from"),
    ("study escaping the storage", with_space(study="../../x"), 2, "study = '../../x': a name of letters"),
    ("study with a slash", with_space(study="a/b"), 2, "names the experiment's directory"),
    ("optuna with a grid", with_space(searcher="optuna", params={"w_lr": {"type": "grid", "values": [0.1, 0.2]}}),
     2, "cannot run a grid axis"),
    ("asha group without lambda", with_space(scheduler={"name": "asha", "group_by": ["preset"]}), 2,
     "must contain lmbda"),
    ("pbt over several lambdas", with_space(scheduler="pbt", fixed={"preset": "tiny", "epochs": 2},
                                            params={"lmbda": {"type": "grid", "values": [0.1, 0.2]}}),
     2, "PBT copies weights between trials"),
    ("parent setting a searched key", with_space(parent={"gamma_s1": 0.01}), 2, "searched in params"),
    ("parent setting lambda", with_space(parent={"preset": "small"}), 2, "taken from each trial"),
    ("missing data folder", with_space(fixed={**GOOD_FIXED, "data": "/nonexistent/photos"}), 2,
     "fixed.data = '/nonexistent/photos'"),
    ("cuda without a GPU share", with_space(fixed={**GOOD_FIXED, "device": "cuda"}), 2,
     "a CUDA device needs a GPU share"),
    ("init_from missing", with_space(fixed={**GOOD_FIXED, "init_from": "/nonexistent/run"}), 2,
     "fixed.init_from = '/nonexistent/run': init_from /nonexistent/run: no such file"),
    ("YAML alias bomb", raw_space("study: bomb\nfixed: {epochs: 1}\n" + BOMB), 2, "more than 100000 values"),
    ("YAML nested too deep", raw_space("study: deep\nx: " + "[" * 80 + "]" * 80 + "\n"), 2, "nested deeper than 64"),
    ("not YAML", raw_space("study: [unclosed\n"), 2, "not valid YAML"),
    ("not a mapping", raw_space("- 1\n- 2\n"), 2, "the file must hold a mapping"),
    ("no such space file", argv("--space", "ROOT/none.yaml"), 2, "no such file or preset; presets: "),
    ("--set of an unknown key", argv("--set", "lamda=0.1"), 2, "lamda"),
    ("--set of a searched key", argv("--set", "gamma_s1=0.1"), 2, "gamma_s1 is searched in"),
    ("--set not KEY=VALUE", argv("--set", "epochs"), 2, "allowed: KEY=VALUE"),
    ("--set parent key without a parent", lambda root: [*with_space()(root), "--set", "parent.epochs=3"], 2,
     "has no parent section"),
    ("--epochs zero", argv("--epochs", "0"), 2, "allowed: an integer >= 1"),
    ("--gpus-per-trial 1.5", argv("--gpus-per-trial", "1.5"), 2, "a whole number of GPUs"),
    ("--retry-errored without --resume", argv("--retry-errored"), 2, "need --resume"),
    ("--resume with --epochs", argv("--resume", "x", "--epochs", "3"), 2, "--epochs would not take effect"),
    ("--resume with --space", argv("--resume", "x", "--space", "objectives"), 2, "--space would not take effect"),
    ("--resume of nothing", argv("--resume", "ROOT/nothing"), 2, "no hpcm-tune experiment"),
    ("--name starting with a dot", argv("--name", ".hidden"), 2, "name: got '.hidden'"),
]


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(("make", "status", "message"), [c[1:] for c in TUNE_CASES], ids=[c[0] for c in TUNE_CASES])
def test_tune_refuses_before_anything_is_written(make, status, message, tmp_path, capsys):
    args = make(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as info:
        code = tune_cli.main([*args, "--storage", str(tmp_path / "store")])
        raise SystemExit(code)
    err = capsys.readouterr().err
    assert info.value.code == status, err
    assert message in err, err
    assert len(err) < 3000  # a message, not a dump
    assert snapshot(tmp_path) == before


def experiment(root: Path, meta: str | None, mode: int | None = None) -> Path:
    exp = root / "store" / "exp"
    exp.mkdir(parents=True)
    if meta is not None:
        (exp / "hpcm_tune.json").write_text(meta)
    (exp / "tuner.pkl").write_bytes(b"\x80\x04N.")
    if mode is not None:
        os.chmod(exp, mode)
    return exp


@pytest.mark.parametrize(("meta", "mode", "message"), [
    ("{not json", None, "is damaged"),
    ('{"metric": "eval/loss"}', None, "is damaged (KeyError: 'no resources, space')"),
    ('{"metric": "eval/loss", "resources": {}, "space": {"params": 3}}', None, "is damaged"),
    (None, 0o777, "no hpcm-tune experiment"),
], ids=["not JSON", "keys missing", "space unreadable", "no meta"])
def test_resume_refuses_damaged_experiments(meta, mode, message, tmp_path, capsys):
    exp = experiment(tmp_path, meta, mode)
    before = snapshot(tmp_path)
    code = tune_cli.main(["--resume", "exp", "--storage", str(tmp_path / "store")])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert snapshot(tmp_path) == before and exp.exists()


def test_resume_refuses_storage_that_others_can_write(tmp_path, capsys):
    exp = experiment(tmp_path, "{}", mode=0o777)
    code = tune_cli.main(["--resume", "exp", "--storage", str(tmp_path / "store")])
    err = capsys.readouterr().err
    assert code == 2 and "writable by other users" in err and "--trust-storage" in err
    assert stat.S_IMODE(exp.stat().st_mode) == 0o777
    # With the flag the trust check passes and the next problem (the damaged meta) is reported instead.
    code = tune_cli.main(["--resume", "exp", "--storage", str(tmp_path / "store"), "--trust-storage"])
    assert code == 2 and "is damaged" in capsys.readouterr().err


# --- hpcm-train: data folders, checkpoints, run directories -----------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), n_train=2, n_test=1, size=(64, 64))


def empty_folder(root: Path) -> str:
    (root / "empty" / "train").mkdir(parents=True)
    (root / "empty" / "test").mkdir()
    return str(root / "empty")


def other_preset_checkpoint(root: Path) -> str:
    from hpcm_tune.config import RunConfig
    from hpcm_tune.engine import Engine

    Engine(RunConfig.from_dict({"preset": "small", "epochs": 1}), workdir=root / "small").save()
    return str(root / "small")


def checkpoint_without_model(root: Path) -> str:
    import torch

    (root / "ckpt").mkdir()
    torch.save({"format": 1, "preset": "tiny"}, root / "ckpt" / "state.pt")
    return str(root / "ckpt")


def png_claiming(root: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height pixels (its data is a 4x4 image)."""
    import io
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    path = root / "huge.png"
    path.write_bytes(bytes(data))
    return path


def folder_with_test_image(root: Path, folder: str, make_test) -> str:
    """A copy of the fake folder whose test/ holds only what ``make_test(test_dir)`` writes."""
    import shutil

    target = root / "photos"
    shutil.copytree(Path(folder) / "train", target / "train")
    (target / "test").mkdir()
    make_test(target / "test")
    return str(target)


def truncated_png(test_dir: Path) -> None:
    from PIL import Image

    from hpcm_tune.testing import random_photo

    Image.fromarray(random_photo(64, 64)).save(test_dir / "only.png")
    data = (test_dir / "only.png").read_bytes()
    (test_dir / "only.png").write_bytes(data[: len(data) // 2])


TRAIN_CASES = [
    ("only test image truncated", lambda root, f: ["-d", folder_with_test_image(root, f, truncated_png)],
     "none of the 1 test image(s) can be read"),
    ("only test image claims 60000x60000", lambda root, f: [
        "-d", folder_with_test_image(root, f, lambda d: png_claiming(d, 60000, 60000))],
     "holds no readable image"),
    ("data folder missing", lambda root, f: ["-d", str(root / "none")], "neither 'samples' nor an existing folder"),
    ("data folder empty", lambda root, f: ["-d", empty_folder(root)], "empty"),
    ("unknown key", lambda root, f: ["-d", f, "--set", "lamda=1"], "lamda: unknown key"),
    ("bad YAML value", lambda root, f: ["-d", f, "--set", "lr=[1"], "is not a YAML value"),
    ("patch size not a multiple of 16", lambda root, f: ["-d", f, "--set", "patch_size=100"], "a multiple of 16"),
    ("scale weights not summing to one (the sweep's rule too)",
     lambda root, f: ["-d", f, "--scale_weights", "2", "4", "4"],
     "scale_weights: got [2.0, 4.0, 4.0]; allowed: three numbers > 0 (s1, s2, s3) summing to 1"),
    ("init_from of another preset", lambda root, f: ["-d", f, "--init-from", other_preset_checkpoint(root)],
     "is preset 'small'"),
    ("init_from without weights", lambda root, f: ["-d", f, "--init-from", checkpoint_without_model(root)],
     "no 'model' entry"),
    ("init_from empty folder", lambda root, f: ["-d", f, "--init-from", str(root)], "no checkpoint there"),
]


@pytest.mark.parametrize(("make", "message"), [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_train_refuses_before_writing_a_run(make, message, folder, tmp_path, capsys):
    args = make(tmp_path, str(folder))
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as info:
        train_main(["--quiet", "--out", str(tmp_path / "run"), "--set", "epochs=1", *args])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err, err
    assert snapshot(tmp_path) == before


def test_the_catalogue_is_large_enough():
    names = [c[0] for c in TUNE_CASES + TRAIN_CASES]
    assert len(set(names)) == len(names) and len(names) + 4 + 1 >= 40
