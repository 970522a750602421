"""Qwen2.5-VL serving on Ray Serve.

Pure modules (no Ray, no vLLM imports): ``app_config``, ``protocol``, ``sampling``, ``chat``,
``placement``, ``engine_args``, ``errors``, ``media``, ``awq``. Deployment classes in
``serve_app.deployments`` only wire those to Ray Serve and vLLM.
"""

__version__ = "0.1.0"
