"""The project's trainable running the real engine (tiny HPCM on a small fake image folder, on the CPU) under Ray,
on a simulated two-node cluster with declared GPUs (ray.cluster_utils.Cluster: a head without resources, two
worker nodes of 2 CPUs and 1 GPU each; no real GPU needed). The engine is wrapped by ``sweep_probes.ProbeEngine``
only to record what happens inside the trial's worker (restores, epochs, node, assigned GPU) and to crash on cue:

* a trial that crashes once is retried from its real checkpoint and ends with the weights of an uninterrupted run;
* a retry whose newest Ray checkpoint is corrupt warns and restores the one before it;
* fractional-GPU trials are packed two per GPU over both nodes;
* a trial whose node is removed continues on the other node from its last checkpoint.

One cluster for the module (the node-loss test, last, removes a node)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import sweep_probes
import torch

from hpcm_tune import metrics
from hpcm_tune.checkpoint import read_state
from hpcm_tune.sweep import cli, launcher
from hpcm_tune.sweep import space as sp
from hpcm_tune.testing import make_image_folder

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    # No CPUs on the head: every trial runs on a worker node, which a test may remove.
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0, "include_dashboard": False})
    for _ in range(2):
        c.add_node(num_cpus=2, num_gpus=1)
    c.wait_for_nodes()
    launcher.init_ray(c.address)  # what --address does
    assert ray.get_runtime_context().get_node_id() == c.head_node.node_id
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), n_train=2, n_test=1, size=(64, 64))


def sweep(tmp_path: Path, folder: Path, study: str, configurations: dict, epochs: int = 3,
          **top) -> tuple[sp.SearchSpace, Path]:
    log = tmp_path / "probe.jsonl"
    fixed = {"preset": "tiny", "lmbda": 0.013, "epochs": epochs, "steps_per_epoch": 1, "batch_size": 1,
             "patch_size": 64, "num_workers": 0, "codec_interval": 0, "lr": 1e-3, "device": "cpu", "seed": 7,
             "data": str(folder), "_probe_log": str(log), "_probe_marker": str(tmp_path / "crashed"),
             "_probe_gate": str(tmp_path / "gate")}
    data = {"study": study, "scheduler": "fifo", "searcher": "grid", "max_concurrent": 2, "max_failures": 1,
            "fixed": fixed, "configurations": configurations, **top}
    return sp.parse_space(data, f"{study}.yaml"), log


def options(tmp_path: Path, name: str, **kw) -> launcher.SweepOptions:
    return launcher.SweepOptions(engine=sweep_probes.NAME, storage=str(tmp_path / "results"), name=name, verbose=0,
                                 **kw)


def events(log: Path, label: str | None = None) -> list[dict]:
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    return [r for r in rows if label is None or r["label"] == label]


def trial_dir(exp: Path, label: str) -> Path:
    (d,) = [p for p in exp.iterdir() if (p / "params.json").exists()
            and json.loads((p / "params.json").read_text())["label"] == label]
    return d


def results(d: Path) -> list[dict]:
    return [json.loads(x) for x in (d / "result.json").read_text().splitlines()]


def final_model(d: Path) -> dict[str, torch.Tensor]:
    return read_state(sorted(d.glob("checkpoint_*"))[-1])["model"]


def test_a_trial_that_crashes_once_resumes_from_its_checkpoint(cluster, folder, tmp_path, monkeypatch):
    # Only the snapshots Ray forces (every checkpoints_to_keep = 2 checkpoints of a trial) upload result.json
    # during the test: storage has epochs 1-2 of the crashing trial when it crashes at epoch 4, after reporting
    # epoch 3; the retry keeps epoch 3's line only because the sweep uploads it first (KeepResultsOfRetriedTrials).
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "600")
    configurations = {"crash once": {"_probe_crash_epoch": 4, "_probe_hold_epoch": 2, "_probe_hold_s": 1.5},
                      "steady": {"_probe_crash_epoch": 0, "_probe_hold_epoch": 0, "_probe_hold_s": 0}}
    space, log = sweep(tmp_path, folder, "crash", configurations, epochs=5)
    summary = launcher.run_sweep(space, options(tmp_path, "c"))
    assert summary["trials"] == 2 and summary["finished"] == 2 and not summary["errored"]
    exp = tmp_path / "results" / "c"
    crashed = trial_dir(exp, "crash once")
    # Ray got epochs 1-5 once each: epoch 4 crashed before its report, the retry continued from epoch 3.
    assert [r[metrics.EPOCH] for r in results(crashed)] == [1, 2, 3, 4, 5]
    seen = events(log, "crash once")
    assert [r["event"] for r in seen] == ["build", *["epoch"] * 4, "build", "restore", "epoch", "epoch"]
    assert [r["epoch"] for r in seen if r["event"] == "epoch"] == [1, 2, 3, 4, 4, 5]
    (restore,) = [r for r in seen if r["event"] == "restore"]
    # The retry got Ray's checkpoint of epoch 3 in the experiment's storage (not a copy) and loaded it.
    assert Path(restore["given"]) == crashed / "checkpoint_000002" == Path(restore["used"])
    assert restore["epoch"] == 3 and not restore["warnings"]
    steady = trial_dir(exp, "steady")
    assert "restore" not in [r["event"] for r in events(log, "steady")]
    # Exact resume: the crashed-and-retried trial ends with the weights of the uninterrupted one (same seed), which
    # are not those it restored (it trained on).
    resumed, uninterrupted = final_model(crashed), final_model(steady)
    assert resumed.keys() == uninterrupted.keys()
    for k, v in uninterrupted.items():
        assert torch.equal(resumed[k], v), k
    assert restore["weights"].keys() <= resumed.keys()
    assert any(float(resumed[k].double().sum()) != v for k, v in restore["weights"].items())


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(cluster, folder, tmp_path):
    space, log = sweep(tmp_path, folder, "corrupt", {"crash": {"_probe_crash_epoch": 3}}, max_failures=0)
    first = launcher.run_sweep(space, options(tmp_path, "k"))
    assert [r["label"] for r in first["errored"]] == ["crash"]
    exp = tmp_path / "results" / "k"
    d = trial_dir(exp, "crash")
    assert [r[metrics.EPOCH] for r in results(d)] == [1, 2]
    newest = d / "checkpoint_000001"
    state = newest / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # a torn write
    again = launcher.resume_sweep(str(exp), options(tmp_path, None, retry_errored=True))
    assert again["finished"] == 1 and not again["errored"]
    (restore,) = [r for r in events(log) if r["event"] == "restore"]
    assert Path(restore["given"]) == newest
    assert Path(restore["used"]) == d / "checkpoint_000000" and restore["epoch"] == 1
    assert any("checkpoint_000001" in w and "unreadable" in w and "falling back" in w for w in restore["warnings"])
    # Epoch 2 trained again from epoch 1's state, then epoch 3: the trial finished.
    assert [r[metrics.EPOCH] for r in results(d)] == [1, 2, 2, 3]


def test_fractional_gpu_trials_pack_two_per_gpu_on_both_nodes(cluster, folder, tmp_path):
    import yaml

    configurations = {f"t{i}": {"_probe_slot": i} for i in range(4)}
    space, _ = sweep(tmp_path, folder, "pack", configurations)
    (tmp_path / "pack.yaml").write_text(yaml.safe_dump(space.raw))
    # The resources as a user sets them for a cluster (tune.py --address ... --gpus-per-trial 0.5).
    args = cli.build_parser().parse_args(["--space", str(tmp_path / "pack.yaml"), "--gpus-per-trial", "0.5",
                                          "--cpus-per-trial", "0.5", "--max-concurrent", "4"])
    space = cli.space_from_args(args)
    assert (space.gpus, space.cpus) == (0.5, 0.5)
    summary = launcher.run_sweep(space, options(tmp_path, "p", address=cluster.address))
    assert summary["finished"] == 4 and not summary["errored"]
    exp = tmp_path / "results" / "p"
    meta = json.loads((exp / launcher.META_FILE).read_text())
    assert meta["resources"] == {"cpus": 0.5, "gpus": 0.5}
    rows = [results(trial_dir(exp, label))[-1] for label in configurations]
    assert {r["probe_gpu_share"] for r in rows} == {0.5}  # what the trainable caps CUDA memory to
    worker_nodes = {n.node_id for n in cluster.worker_nodes}
    assert {r["probe_node"] for r in rows} == worker_nodes, "both nodes used"
    per_gpu: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        per_gpu.setdefault((r["probe_node"], r["probe_gpu_ids"]), []).append(r)
    assert sorted(len(v) for v in per_gpu.values()) == [2, 2], per_gpu.keys()  # two trials on each GPU
    # At most two at a time on a GPU, and all four ran at once: their time windows overlap.
    assert max(r["probe_start"] for r in rows) < min(r["probe_end"] for r in rows)


def test_a_trial_continues_on_another_node_when_its_node_is_lost(cluster, folder, tmp_path):
    space, log = sweep(tmp_path, folder, "lost", {"lost": {"_probe_hold_epoch": 1}})
    exp = tmp_path / "results" / "n"
    removed: list[str] = []
    problems: list[BaseException] = []

    def remove_its_node() -> None:
        try:
            deadline = time.time() + 150
            while time.time() < deadline:
                dirs = [p for p in exp.glob("hpcm_trial_*") if (p / "checkpoint_000000" / "state.pt").exists()]
                rows = results(dirs[0]) if dirs and (dirs[0] / "result.json").exists() else []
                if rows:
                    (node,) = [n for n in cluster.worker_nodes if n.node_id == rows[0]["probe_node"]]
                    cluster.remove_node(node)
                    removed.append(node.node_id)
                    break
                time.sleep(0.2)
        except BaseException as error:  # reported by the test, not lost in the thread
            problems.append(error)
        finally:
            (tmp_path / "gate").touch()

    remover = threading.Thread(target=remove_its_node, daemon=True)
    remover.start()
    summary = launcher.run_sweep(space, options(tmp_path, "n"))
    remover.join(timeout=30)
    assert not problems, problems
    assert removed, "the trial's node was never removed"
    assert summary["finished"] == 1 and not summary["errored"]
    d = trial_dir(exp, "lost")
    rows = results(d)
    assert [r[metrics.EPOCH] for r in rows] == [1, 2, 3]
    assert rows[0]["probe_node"] == removed[0]
    assert {r["probe_node"] for r in rows[1:]} == {n.node_id for n in cluster.worker_nodes} - set(removed)
    (restore,) = [r for r in events(log) if r["event"] == "restore"]
    assert Path(restore["used"]) == d / "checkpoint_000000" and restore["epoch"] == 1
    assert restore["probe_node"] != removed[0]
