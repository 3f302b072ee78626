"""A simulated 2-node cluster with declared GPUs (ray.cluster_utils.Cluster, no real GPU needed): trials asking
for half a GPU are packed two per GPU and spread over both nodes, as the search space's resources say."""

from __future__ import annotations

import os
import sys
import time

import pytest

from hpcm_tune.sweep import cli

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def stand_in_trial(config):
    """Reports where it ran and what Ray assigned it (a stand-in for the engine)."""
    import ray
    from ray import tune

    ctx = ray.get_runtime_context()
    start = time.time()
    time.sleep(config["hold_s"])
    tune.report({"epoch": 1, "node": ctx.get_node_id(), "gpu_ids": ",".join(map(str, ray.get_gpu_ids())),
                 "gpu_share": ctx.get_assigned_resources().get("GPU", 0.0), "start": start, "end": time.time()})


@pytest.fixture(scope="module")
def two_node_cluster():
    import ray
    from ray import cloudpickle
    from ray.cluster_utils import Cluster

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 1,
                                                             "include_dashboard": False})
    cluster.add_node(num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_fractional_gpus_pack_two_per_gpu_across_nodes(two_node_cluster, tmp_path):
    from ray import tune

    args = cli.build_parser().parse_args(["--gpus-per-trial", "0.5", "--cpus-per-trial", "0.5",
                                          "--max-concurrent", "4", "--scheduler", "fifo"])
    space = cli.space_from_args(args)
    assert (space.gpus, space.cpus) == (0.5, 0.5)
    trainable = tune.with_resources(stand_in_trial, {"cpu": space.cpus, "gpu": space.gpus})
    tuner = tune.Tuner(
        trainable, param_space={"hold_s": 6.0, "i": tune.grid_search([0, 1, 2, 3])},
        tune_config=tune.TuneConfig(max_concurrent_trials=space.max_concurrent),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="cluster", verbose=0),
    )
    rows = [r.metrics for r in tuner.fit()]
    assert len(rows) == 4
    assert {r["gpu_share"] for r in rows} == {0.5}
    nodes = {r["node"] for r in rows}
    assert len(nodes) == 2, "trials spread over both nodes"
    per_gpu: dict[tuple[str, str], int] = {}
    for r in rows:
        per_gpu[(r["node"], r["gpu_ids"])] = per_gpu.get((r["node"], r["gpu_ids"]), 0) + 1
    assert sorted(per_gpu.values()) == [2, 2], per_gpu  # two trials share each GPU
    # All four ran at once (4 half-GPU trials on 2 GPUs): their time windows overlap.
    assert max(r["start"] for r in rows) < min(r["end"] for r in rows)
