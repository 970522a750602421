"""Placement of an engine replica: the Serve deployment options derived from TP × PP (pure).

An engine replica is a Serve replica actor plus, when the engine spans several devices, vLLM's Ray
workers. Serve creates one placement group per replica from ``placement_group_bundles``; the
replica actor lives in bundle 0 and vLLM's Ray executor puts worker *i* in bundle *i* of that same
group (the engine hands the replica's group to vLLM explicitly).

GPU, TP×PP = 1:  [{CPU: replica_cpus, GPU: 1}] — the replica owns the GPU and runs vLLM in-process
                 (vLLM's own engine-core subprocess inherits CUDA_VISIBLE_DEVICES).
GPU, TP×PP = N:  [{CPU: replica_cpus + worker_cpus, GPU: 1}, {CPU: worker_cpus, GPU: 1} × (N-1)]
                 — the replica holds no GPU itself (num_gpus=0); each vLLM worker takes one bundle's GPU.
CPU, TP×PP = 1:  [{CPU: replica_cpus}] (vLLM's CPU build, development and CI).
CPU, TP×PP = N:  [{CPU: replica_cpus + N × worker_cpus}] — vLLM's CPU build runs tensor
                 parallelism in worker subprocesses of the replica ("mp" executor), not Ray actors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serve_app.app_config import EngineSection


@dataclass(frozen=True)
class EnginePlacement:
    bundles: list[dict[str, float]]
    strategy: str
    replica_num_cpus: float
    replica_num_gpus: float
    executor_backend: str | None  # None: vLLM's default for one device (in-process)

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options(...)``."""
        return {
            "placement_group_bundles": [dict(b) for b in self.bundles],
            "placement_group_strategy": self.strategy,
            "ray_actor_options": {"num_cpus": self.replica_num_cpus, "num_gpus": self.replica_num_gpus},
        }


def engine_placement(engine: EngineSection) -> EnginePlacement:
    world = engine.world_size
    device = {"GPU": 1.0} if engine.accelerator == "GPU" else {}
    device.update({k: float(v) for k, v in engine.bundle_resources.items()})
    if world == 1:
        bundles = [{"CPU": float(engine.replica_cpus), **device}]
        return EnginePlacement(
            bundles=bundles,
            strategy=engine.placement_strategy,
            replica_num_cpus=float(engine.replica_cpus),
            replica_num_gpus=1.0 if engine.accelerator == "GPU" else 0.0,
            executor_backend=None,
        )
    worker_cpus = float(engine.worker_cpus)
    if engine.accelerator == "CPU":
        # vLLM's CPU build has no Ray executor (its platform declares no Ray device key, so no
        # bundle qualifies); it runs tensor parallelism with worker subprocesses of the replica
        # ("mp"), which share the replica's single bundle.
        cpus = float(engine.replica_cpus) + worker_cpus * world
        return EnginePlacement(
            bundles=[{"CPU": cpus, **device}],
            strategy=engine.placement_strategy,
            replica_num_cpus=cpus,
            replica_num_gpus=0.0,
            executor_backend="mp",
        )
    first = {"CPU": float(engine.replica_cpus) + worker_cpus, **device}
    rest = [{"CPU": worker_cpus, **device} for _ in range(world - 1)]
    bundles = [_drop_zero(first)] + [_drop_zero(b) for b in rest]
    return EnginePlacement(
        bundles=bundles,
        strategy=engine.placement_strategy,
        replica_num_cpus=float(engine.replica_cpus),
        replica_num_gpus=0.0,
        executor_backend="ray",
    )


def _drop_zero(bundle: dict[str, float]) -> dict[str, float]:
    # Ray rejects bundles whose resources are all zero; a zero entry is noise anyway.
    return {k: v for k, v in bundle.items() if v > 0}
