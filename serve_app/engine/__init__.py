"""The engine process (GPU replicas, batch engine actors): one vLLM ``AsyncLLM`` per replica, its
placement group and engine arguments, and the deltas it streams back to the ingress."""
