"""Qwen2.5-VL serving on Ray Serve.

One package per kind of process a request passes through: ``api`` (ingress), ``preprocess`` and
``media`` (CPU replicas), ``engine`` (GPU replicas), ``batch`` (the batch job's driver and actors);
``awq`` (checkpoint checks and padding) and ``dev`` (the embedded tiny model, synthetic media).
``app`` builds the Serve application; ``app_config``, ``errors`` and ``ray_env`` are shared.
"""

__version__ = "0.1.0"
