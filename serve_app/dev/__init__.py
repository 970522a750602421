"""Development fixtures shipped with the package: the embedded tiny Qwen2.5-VL (the default model
of ``configs/local.yaml``) and synthetic media for tests and benchmarks."""
