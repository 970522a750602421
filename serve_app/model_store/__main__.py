"""Fill or check a node's model cache by hand (the replicas do the same on their own):

    python -m serve_app.model_store fetch s3://models/q72-awq --cache-dir /var/cache/serve-app-models \\
        [--endpoint-url http://minio:9000] [--revision R] [--tokenizer-only]
    python -m serve_app.model_store verify /var/cache/serve-app-models/s3/models--q72-awq/latest-1a2b3c4d5e6f

``fetch`` prints the model directory. ``verify`` re-hashes every file against the hashes recorded
when it was downloaded (a warm cache is otherwise only checked by size) and exits 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys

from serve_app.model_store import DownloadConfig, local_model_dir
from serve_app.model_store.files import RemoteFile, hash_problem
from serve_app.model_store.store import MARKER


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serve_app.model_store", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download a model into the cache (or find it there)")
    f.add_argument("path")
    f.add_argument("--revision")
    f.add_argument("--cache-dir")
    f.add_argument("--endpoint-url")
    f.add_argument("--region")
    f.add_argument("--verify", choices=["hash", "size"], default="hash")
    f.add_argument("--workers", type=int, default=4)
    f.add_argument("--tokenizer-only", action="store_true")
    v = sub.add_parser("verify", help="re-hash a cached model directory against its marker")
    v.add_argument("dir", type=pathlib.Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.cmd == "fetch":
        cfg = DownloadConfig(cache_dir=args.cache_dir, endpoint_url=args.endpoint_url, region=args.region,
                             verify=args.verify, workers=args.workers)
        print(local_model_dir(args.path, args.revision, cfg, "tokenizer" if args.tokenizer_only else "all"))
        return 0
    marker = json.loads((args.dir / MARKER).read_text())
    bad = 0
    for name, meta in sorted(marker["files"].items()):
        problem = hash_problem(args.dir, RemoteFile.from_json(name, meta))
        if problem:
            bad += 1
            print(f"{name}: {problem}")
    print(f"{len(marker['files']) - bad} of {len(marker['files'])} files match {marker['source']}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
