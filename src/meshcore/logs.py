"""Logging setup shared by the executables: one line per event, as text or as JSON."""

from __future__ import annotations

import json
import logging
import sys
import time

__all__ = ["JsonFormatter", "describe_error", "log_unexpected", "setup_logging"]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any `extra` fields."""

    _STANDARD = frozenset(vars(logging.makeLogRecord({})))

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._STANDARD and key not in entry:
                entry[key] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Log to stderr at `level` ("debug", "info", ...) as "text" or "json"."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def describe_error(exc: BaseException) -> str:
    """One line for an error: its message, or its class name when it has none; for a
    trio resource error, the meshcore error it stands for (its cause)."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    text = str(cause)
    return text if text else type(cause).__name__


def log_unexpected(logger: logging.Logger, what: str, exc: BaseException) -> None:
    """Log an error nobody expected as one line at error level ("<what>: <type>: <text>");
    its traceback follows only when debug logging is on (`--log-level debug`)."""
    logger.error("%s: %s: %s", what, type(exc).__name__, describe_error(exc))
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("traceback of the error above", exc_info=exc)
