"""Log handlers survive a library's logging.config.dictConfig (pure, milliseconds)."""

import logging
import logging.config
import logging.handlers

from serve_app.observability.logs import keep_handlers


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _replica_like_logger(name):
    """What Serve sets up for a replica: a MemoryHandler in front of the log file."""
    target = _Collect()
    memory = logging.handlers.MemoryHandler(capacity=1, target=target, flushLevel=logging.ERROR)
    lg = logging.getLogger(name)
    lg.handlers[:] = [memory]
    lg.setLevel(logging.INFO)
    lg.propagate = False
    return lg, memory, target


def _library_reconfigures_logging():
    logging.config.dictConfig({"version": 1, "disable_existing_loggers": False,
                               "loggers": {"some.library": {"level": "INFO"}}})


def test_dictconfig_alone_silences_a_buffered_log():
    lg, memory, target = _replica_like_logger("test.logs.unprotected")
    _library_reconfigures_logging()
    lg.info("lost")
    assert memory.target is None and target.lines == []  # why keep_handlers exists


def test_keep_handlers_gives_the_buffer_its_target_back():
    lg, memory, target = _replica_like_logger("test.logs.protected")
    lg.info("before")
    with keep_handlers():
        _library_reconfigures_logging()
    lg.info("after")
    assert memory.target is target and target.lines == ["before", "after"]
