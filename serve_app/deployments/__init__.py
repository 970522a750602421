"""Ray Serve deployments. They only wire the pure modules of ``serve_app`` to Serve and vLLM."""
