"""AWQ checkpoints that shard: a tensor-parallel shape preflight and a lossless padding converter.

* :func:`serve_app.awq.preflight.check` / :func:`serve_app.awq.preflight.require_tp_compatible`
  — run before starting vLLM; headers only, milliseconds.
* :func:`serve_app.awq.pad.pad_checkpoint` — pad the MLP intermediate dimension in the packed
  AWQ GEMM tensors (e.g. Qwen2.5-VL-72B-Instruct-AWQ 29568 -> 29696 for TP 2/4/8).
* CLI: ``python -m serve_app.awq check MODEL_DIR --tp 2 4 8`` and
  ``python -m serve_app.awq pad SRC_DIR DST_DIR --tp 2 4 8``.

Pure numpy/stdlib: no vLLM, torch or Ray import.
"""

from .preflight import AwqShapeError, ShapeProblem, check, require_tp_compatible

__all__ = ["AwqShapeError", "ShapeProblem", "check", "require_tp_compatible"]
