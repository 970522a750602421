"""/stats over every engine replica (pure, milliseconds)."""

from serve_app.observability.replica_stats import engine_stats


def test_per_replica_entries_totals_and_unreachable_replicas():
    out = engine_stats([{"replica_id": "r2", "node_id": "n1", "unfinished_requests": 4},
                        TimeoutError("slow"),
                        {"replica_id": "r1", "node_id": "n2", "unfinished_requests": 1, "healthy": True}])
    assert out["unfinished_requests"] == 5  # the sum: what /stats said for a single replica before
    assert out["num_replicas"] == 2 and out["unreachable_replicas"] == 1
    assert [r["replica_id"] for r in out["replicas"]] == ["r1", "r2"]
    assert "healthy" not in out and "node_id" not in out  # only numbers are added up


def test_no_answers():
    assert engine_stats([]) == {"num_replicas": 0, "unreachable_replicas": 0, "replicas": []}
