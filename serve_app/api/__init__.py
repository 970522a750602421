"""The ingress process: the OpenAI HTTP API, request validation and the chat plan, and turning the
engine's deltas into OpenAI responses. Everything here but ``ingress`` is pure (no Ray, no vLLM)."""
