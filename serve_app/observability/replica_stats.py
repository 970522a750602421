"""``GET /stats``: the engine section from every engine replica's own counters (pure).

The ingress asks every running Engine replica at once (``DeploymentHandle.broadcast``); one that
fails or has gone away between the listing and the call is counted as unreachable rather than
failing the whole answer, so the endpoint still works while a replica restarts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def engine_stats(answers: Iterable[Any]) -> dict[str, Any]:
    """Each replica's counters (``replicas``, sorted by replica id), their sums at the top level
    (e.g. ``unfinished_requests`` over all replicas), ``num_replicas`` that answered and
    ``unreachable_replicas`` (an exception in ``answers``)."""
    replicas: list[dict[str, Any]] = []
    unreachable = 0
    for answer in answers:
        if isinstance(answer, BaseException) or not isinstance(answer, dict):
            unreachable += 1
        else:
            replicas.append(dict(answer))
    replicas.sort(key=lambda r: str(r.get("replica_id", "")))
    totals: dict[str, int | float] = {}
    for r in replicas:
        for key, value in r.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                totals[key] = totals.get(key, 0) + value
    return {**totals, "num_replicas": len(replicas), "unreachable_replicas": unreachable, "replicas": replicas}
