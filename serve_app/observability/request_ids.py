"""Request ids: taken from the client's ``X-Request-Id`` (validated, length-capped) or generated.

The id is the response's ``id``, the ``X-Request-Id`` response header, the vLLM request id, and
appears in every log line about the request. Ray Serve's proxy puts the client's header (or an
id of its own) into the request; :func:`request_id` decides what the application uses.
"""

from __future__ import annotations

import re
import uuid

HEADER = "x-request-id"
MAX_LENGTH = 128
_VALID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]*\Z")


class InvalidRequestIdError(ValueError):
    pass


def generate() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def request_id(header_value: str | None) -> str:
    """The id for a request whose ``X-Request-Id`` header is ``header_value`` (None: absent)."""
    if header_value is None or header_value == "":
        return generate()
    if len(header_value) > MAX_LENGTH:
        raise InvalidRequestIdError(f"X-Request-Id is longer than {MAX_LENGTH} characters")
    if not _VALID.match(header_value):
        raise InvalidRequestIdError(
            "X-Request-Id may contain only letters, digits and . _ : - (and must start with a letter or digit)")
    return header_value
