"""Keeping a process's log handlers alive through a library that reconfigures logging.

vLLM's ``create_engine_config`` runs ``logging.config.dictConfig``, which closes every handler in the
process. A Serve replica writes its log through a ``MemoryHandler`` in front of the log file; once
closed, its target is gone and every later line of that replica is dropped silently (Serve's access
lines, this app's request lines, ``print`` output redirected into the log). Closed file handlers
reopen on their next line by themselves; buffering handlers need their target back.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
from collections.abc import Iterator


def _handlers() -> list[logging.Handler]:
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    seen: dict[int, logging.Handler] = {}
    for lg in loggers:
        for h in lg.handlers:
            seen.setdefault(id(h), h)
    return list(seen.values())


@contextlib.contextmanager
def keep_handlers() -> Iterator[None]:
    """Run the block, then give every buffering handler that lost its target the target it had."""
    targets = [(h, h.target) for h in _handlers()
               if isinstance(h, logging.handlers.MemoryHandler) and h.target is not None]
    try:
        yield
    finally:
        for handler, target in targets:
            if handler.target is None:
                handler.setTarget(target)
