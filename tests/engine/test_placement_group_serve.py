"""With logical GPUs, Serve creates an engine replica's placement group exactly as derived from
TP: one bundle per GPU, the replica's CPU in bundle 0, STRICT_PACK. The probe deployment carries
the engine's real deployment options; it reports the placement group it runs in."""

import pytest
import ray
from ray import serve
from ray.util.placement_group import get_current_placement_group, placement_group_table

from serve_app.app_config import EngineSection
from serve_app.engine.placement import engine_placement


@serve.deployment
class PlacementProbe:
    def where(self) -> str:
        pg = get_current_placement_group()
        return pg.id.hex() if pg else ""


@pytest.fixture(scope="module")
def ray_with_logical_gpus():
    ray.init(num_cpus=6, num_gpus=4, include_dashboard=False, address="local",
             runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}})
    serve.start(http_options={"host": "127.0.0.1", "port": 0})
    yield
    serve.shutdown()
    ray.shutdown()


@pytest.mark.parametrize("tp", [2, 4])
def test_tp_engine_replica_placement_group(ray_with_logical_gpus, tp):
    placement = engine_placement(EngineSection(tensor_parallel_size=tp, replica_cpus=1, worker_cpus=0.5))
    handle = serve.run(PlacementProbe.options(**placement.deployment_options()).bind(),
                       name=f"probe{tp}", route_prefix=None)
    pg_id = handle.where.remote().result(timeout_s=60)
    assert pg_id, "the replica is not in a placement group"
    table = {pg["placement_group_id"]: pg for pg in placement_group_table().values()}[pg_id]
    assert table["strategy"] == "STRICT_PACK"
    bundles = [table["bundles"][i] for i in range(tp)]
    assert bundles[0] == {"CPU": 1.5, "GPU": 1.0}
    assert bundles[1:] == [{"CPU": 0.5, "GPU": 1.0}] * (tp - 1)
    serve.delete(f"probe{tp}")
