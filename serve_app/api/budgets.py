"""Budgets a request is held to before any replica fetches or decodes anything (pure).

- **Items per kind** against vLLM's ``engine_kwargs.limit_mm_per_prompt`` (``{image: N, video: M}``):
  vLLM would refuse the prompt only after the preprocessor decoded every item (32 WebPs that declare
  99.99 MP each: 40 s and 5 GB before "at most 4 images"); here it is a 400 at the ingress.
- **Explicit sizes** (``resized_height`` × ``resized_width``) under the same pixel caps as
  ``max_pixels`` (``media.image_max_pixels``; per video frame ``media.video_max_pixels``): they
  otherwise bypass the server's caps (12.8 MP frames).
- **Structured-output schemas** by size and by the work of compiling them (nesting depth, objects
  and arrays, enum values, counted repetitions in patterns): vLLM compiles the grammar before the
  first token and nothing stops a compile once it started.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from serve_app.app_config import ServingSection
from serve_app.errors import InvalidRequestError
from serve_app.media.config import MediaConfig
from serve_app.media.spec import MediaSpec


def mm_limits(engine_kwargs: Mapping[str, Any]) -> dict[str, int]:
    """``limit_mm_per_prompt`` as {kind: count}; vLLM 0.32 also accepts {kind: {"count": n, ...}}."""
    raw = engine_kwargs.get("limit_mm_per_prompt") or {}
    out: dict[str, int] = {}
    if isinstance(raw, Mapping):
        for kind, value in raw.items():
            if isinstance(value, Mapping):
                value = value.get("count")
            if isinstance(value, int) and not isinstance(value, bool):
                out[str(kind)] = value
    return out


def check_item_limits(media: Sequence[MediaSpec], engine_kwargs: Mapping[str, Any]) -> None:
    limits = mm_limits(engine_kwargs)
    seen: Counter[str] = Counter()
    for spec in media:
        seen[spec.kind] += 1
        limit = limits.get(spec.kind)
        if limit is not None and seen[spec.kind] > limit:
            total = sum(1 for s in media if s.kind == spec.kind)
            raise InvalidRequestError(
                f"{spec.where}: the request has {total} {spec.kind}s; this server accepts at most {limit} "
                f"{spec.kind}{'' if limit == 1 else 's'} per request", param="messages")


def check_explicit_size(spec: MediaSpec, config: MediaConfig) -> None:
    opts = spec.options or {}
    h, w = opts.get("resized_height"), opts.get("resized_width")
    if h is None or w is None:
        return
    cap = config.image_max_pixels if spec.kind == "image" else config.video_max_pixels
    if h * w > cap:
        what = "an image" if spec.kind == "image" else "a video frame"
        raise InvalidRequestError(
            f"{spec.where}: resized_height x resized_width = {int(h)} x {int(w)} = {int(h * w)} pixels, more than "
            f"this server's cap of {cap} pixels for {what}", param=spec.where)


# ---------------------------------------------------------------- structured-output schemas
_SCHEMA = "response_format.json_schema.schema"
_COUNTED_REPEAT = re.compile(r"\{(\d{1,9})(?:,(\d{0,9}))?\}")
_GROUP_PREFIX = re.compile(r"\?(?::|=|!|<=|<!|<[A-Za-z_]\w*>|P<[A-Za-z_]\w*>)?")
# A grammar state that admits many characters admits most of a large vocabulary, and the compiler
# checks every token against every such state: those states are the expensive ones.
WIDE = 16  # one position admitting (almost) any character
NARROW = 1  # one position admitting a few characters (a digit, a hex digit, a literal)
FORMAT = 64  # a string "format" (email, uri, ...): a fixed grammar of a few wide states
_WIDE_ESCAPES = set("wWsSDpPX")
_CLASS_ESCAPE_WIDTH = {"d": 10, "w": 63, "s": 6}


def _class_weight(body: str) -> int:
    """``body`` is the inside of ``[...]``."""
    if body.startswith("^"):
        return WIDE
    width, i = 0, 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            c = body[i + 1]
            width += _CLASS_ESCAPE_WIDTH.get(c, 1) if c not in "WSDpP" else 1000
            i += 2
        elif i + 2 < len(body) and body[i + 1] == "-":
            width += max(ord(body[i + 2]) - ord(body[i]) + 1, 1)
            i += 3
        else:
            width += 1
            i += 1
    return WIDE if width > 16 else NARROW


def pattern_work(pattern: str) -> int:
    """Grammar states ``pattern`` needs once counted repetitions are written out, each weighed
    :data:`WIDE` or :data:`NARROW`: ``\\d{1000}`` is 1000, ``.{4}`` 64, ``(ab{3}){2}`` 8 and ``[a-z]+``
    16 (a loop costs one copy); alternatives add up. A lexical scan, not a parser: it never fails,
    and anything it does not recognise is one narrow atom."""
    frames = [[0, 0]]  # per open group: [closed alternatives, the open alternative]
    last = 0  # weight of the atom a quantifier would apply to
    i, n = 0, len(pattern)

    def atom(weight: int) -> None:
        nonlocal last
        frames[-1][1] += weight
        last = weight

    while i < n:
        ch = pattern[i]
        if ch == "\\":
            j = i + 2
            if i + 1 < n and pattern[i + 1] in "pPuxk" and j < n and pattern[j] == "{":
                close = pattern.find("}", j)
                j = n if close < 0 else close + 1
            atom(WIDE if i + 1 < n and pattern[i + 1] in _WIDE_ESCAPES else NARROW)
            i = j
        elif ch == "[":
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            atom(_class_weight(pattern[i + 1:j]))
            i = j + 1
        elif ch == ".":
            atom(WIDE)
            i += 1
        elif ch == "(":
            frames.append([0, 0])
            last = 0
            m = _GROUP_PREFIX.match(pattern, i + 1)
            i = m.end() if m else i + 1
        elif ch == ")" and len(frames) > 1:
            closed, open_ = frames.pop()
            atom(closed + open_)
            i += 1
        elif ch == "|":
            frames[-1][0] += frames[-1][1]
            frames[-1][1] = 0
            last = 0
            i += 1
        elif ch == "{" and last and (m := _COUNTED_REPEAT.match(pattern, i)):
            times = max(int(m[2]) if m[2] else int(m[1]), 1)  # {n,}: n copies, then a loop
            frames[-1][1] += last * (times - 1)
            last *= times
            i = m.end()
        elif ch in "*+?^$":
            i += 1
        else:
            atom(NARROW)
            i += 1
    while len(frames) > 1:
        closed, open_ = frames.pop()
        frames[-1][1] += closed + open_
    return frames[0][0] + frames[0][1]


def string_work(node: dict) -> int:
    """The string constraints of one schema object, weighed as :func:`pattern_work` does: a length
    bound is that many wide positions, a ``format`` :data:`FORMAT`."""
    work = 0
    if isinstance(node.get("pattern"), str):
        work += pattern_work(node["pattern"])
    props = node.get("patternProperties")
    if isinstance(props, dict):
        work += sum(pattern_work(p) for p in props)
    bounds = [v for k in ("minLength", "maxLength") if isinstance(v := node.get(k), int) and not isinstance(v, bool)]
    if bounds:
        work += WIDE * max(0, *bounds)
    if isinstance(node.get("format"), str):
        work += FORMAT
    return work


def check_json_schema(schema: Any, serving: ServingSection) -> None:
    """The size and the compile work of a ``response_format`` schema against ``serving``'s
    ``max_json_schema_*`` budgets: vLLM compiles the grammar before the first token, and nothing
    stops a compile once it started."""
    size = len(json.dumps(schema, separators=(",", ":")))
    if size > serving.max_json_schema_bytes:
        raise InvalidRequestError(f"{_SCHEMA} is {size} bytes; this server accepts at most "
                                  f"{serving.max_json_schema_bytes}", param=_SCHEMA)
    nodes = enums = work = 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = list(node.values())
            if "enum" in node:
                enums += len(node["enum"]) if isinstance(node["enum"], list) else 1
            if "const" in node:
                enums += 1
            work += string_work(node)
        elif isinstance(node, list):
            children = node
        else:
            continue
        nodes += 1
        if depth > serving.max_json_schema_depth:
            raise InvalidRequestError(f"{_SCHEMA} nests objects and arrays more than {serving.max_json_schema_depth} "
                                      "levels deep (serving.max_json_schema_depth)", param=_SCHEMA)
        if nodes > serving.max_json_schema_nodes:
            raise InvalidRequestError(f"{_SCHEMA} has more than {serving.max_json_schema_nodes} objects and arrays "
                                      "(serving.max_json_schema_nodes)", param=_SCHEMA)
        stack.extend((c, depth + 1) for c in children)
    if enums > serving.max_json_schema_enum_values:
        raise InvalidRequestError(f"{_SCHEMA} has {enums} enum/const values; this server accepts at most "
                                  f"{serving.max_json_schema_enum_values} (serving.max_json_schema_enum_values)",
                                  param=_SCHEMA)
    if work > serving.max_json_schema_string_work:
        raise InvalidRequestError(
            f"{_SCHEMA}'s string constraints (maxLength/minLength, pattern, format) weigh {work} grammar states; "
            f"this server accepts at most {serving.max_json_schema_string_work} "
            "(serving.max_json_schema_string_work: a character bounded by a length or matched by a wide pattern "
            "class counts 16, a narrow pattern atom 1, a format 64)", param=_SCHEMA)
