"""Placement-group bundles of an engine replica, derived from TP × PP."""

import pytest

from serve_app.app_config import EngineSection
from serve_app.engine.placement import engine_placement


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_gpu_bundles_one_gpu_per_rank_and_replica_in_bundle_zero(tp):
    p = engine_placement(EngineSection(tensor_parallel_size=tp, replica_cpus=1, worker_cpus=1))
    assert len(p.bundles) == tp
    assert all(b["GPU"] == 1 for b in p.bundles)
    assert p.strategy == "STRICT_PACK"
    opts = p.deployment_options()
    assert opts["placement_group_bundles"] == p.bundles
    assert opts["placement_group_strategy"] == "STRICT_PACK"
    if tp == 1:
        # The replica runs vLLM in-process and owns the GPU.
        assert p.bundles == [{"CPU": 1.0, "GPU": 1.0}]
        assert p.replica_num_gpus == 1 and p.executor_backend is None
    else:
        # Replica's own CPU sits in bundle 0 next to worker 0; workers take the GPUs.
        assert p.bundles[0] == {"CPU": 2.0, "GPU": 1.0}
        assert p.bundles[1:] == [{"CPU": 1.0, "GPU": 1.0}] * (tp - 1)
        assert p.replica_num_gpus == 0 and p.executor_backend == "ray"
    # Serve requires the replica actor's resources to fit in bundle 0.
    assert opts["ray_actor_options"]["num_cpus"] <= p.bundles[0]["CPU"]
    assert opts["ray_actor_options"]["num_gpus"] <= p.bundles[0]["GPU"]


def test_pipeline_parallel_multiplies_bundles_and_strategy_is_configurable():
    p = engine_placement(EngineSection(tensor_parallel_size=4, pipeline_parallel_size=2, placement_strategy="PACK"))
    assert len(p.bundles) == 8 and p.strategy == "PACK"


def test_cpu_engine_bundles_have_no_gpu():
    p = engine_placement(EngineSection(accelerator="CPU", tensor_parallel_size=1, replica_cpus=2))
    assert p.bundles == [{"CPU": 2.0}] and p.replica_num_gpus == 0
    # vLLM's CPU build has no Ray executor: TP workers are subprocesses sharing the replica's bundle.
    p2 = engine_placement(EngineSection(accelerator="CPU", tensor_parallel_size=2, replica_cpus=0.5, worker_cpus=0.5))
    assert p2.bundles == [{"CPU": 1.5}] and p2.executor_backend == "mp" and p2.replica_num_cpus == 1.5


def test_zero_worker_cpus_are_dropped_from_gpu_bundles():
    p = engine_placement(EngineSection(tensor_parallel_size=2, worker_cpus=0))
    assert p.bundles == [{"CPU": 1.0, "GPU": 1.0}, {"GPU": 1.0}]


def test_bundle_resources_are_added_to_every_bundle():
    p = engine_placement(EngineSection(tensor_parallel_size=2, bundle_resources={"accelerator_type:H100": 0.001}))
    assert all(b["accelerator_type:H100"] == 0.001 and b["GPU"] == 1 for b in p.bundles)
