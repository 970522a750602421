"""Optional API keys (pure): ``Authorization: Bearer <key>`` against keys from an environment
variable or a secret file, compared in constant time.

Configured by ``serving.api_keys_env`` (the name of an environment variable holding one or more keys,
separated by commas or whitespace) and/or ``serving.api_keys_file`` (a file with one key per line,
``#`` comments allowed, e.g. a mounted Kubernetes secret). With neither set, or both empty, no key
is required. Keys are read once when the ingress replica starts; they never appear in logs or errors.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping

from serve_app.errors import UnauthorizedError


def load_keys(env_var: str | None, path: str | None, environ: Mapping[str, str] = os.environ) -> tuple[bytes, ...]:
    keys: list[str] = []
    if env_var:
        keys += re.split(r"[\s,]+", environ.get(env_var, ""))
    if path:
        with open(path, encoding="utf-8") as f:
            keys += [line.split("#", 1)[0] for line in f]
    # Stored as digests: equal-length inputs to compare_digest, whatever the key length.
    return tuple(hashlib.sha256(k.strip().encode()).digest() for k in keys if k.strip())


class ApiKeys:
    def __init__(self, digests: tuple[bytes, ...]) -> None:
        self._digests = digests

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: str | None) -> None:
        """Raise :class:`UnauthorizedError` (401) unless the header carries a configured key."""
        if not self._digests:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError("missing API key: send 'Authorization: Bearer <key>'")
        digest = hashlib.sha256(token.strip().encode()).digest()
        ok = False
        for d in self._digests:  # every key compared, constant time each
            ok |= hmac.compare_digest(d, digest)
        if not ok:
            raise UnauthorizedError("invalid API key")
