"""The engine side: what runs in an engine replica (GPU or vLLM's CPU build) around vLLM."""
