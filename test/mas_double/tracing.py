"""Log lines in the shape of MAS's ``tracing`` output, always written to stderr.

Real ``mas-cli`` logs through ``tracing-subscriber``; without a TTY a line is::

    2025-01-01T12:00:00.123456Z  INFO mas_cli::commands::config:42 Configuration file looks good

that is ``<RFC 3339 UTC timestamp> <LEVEL padded to 5> <target>:<line> <message>``
followed by ``key=value`` fields (an event without a message shows only its fields).  Multi-line messages keep their newlines.
The level filter follows ``RUST_LOG`` (``error``, ``warn``, ``info`` (default),
``debug``, ``trace``); only a bare level is understood.
"""

from __future__ import annotations

import datetime
import os
import sys

_LEVELS = {"TRACE": 0, "DEBUG": 1, "INFO": 2, "WARN": 3, "ERROR": 4}


def _threshold() -> int:
    wanted = os.environ.get("RUST_LOG", "info").strip().upper()
    if wanted == "WARNING":
        wanted = "WARN"
    return _LEVELS.get(wanted, _LEVELS["INFO"])


def timestamp() -> str:
    """Return the current UTC time as tracing prints it (microseconds, ``Z``)."""
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def log(level: str, target: str, message: str, _stacklevel: int = 1, **fields: object) -> None:
    """Write one tracing-style line to stderr.

    Args:
        level: ``ERROR``, ``WARN``, ``INFO``, ``DEBUG`` or ``TRACE``.
        target: the Rust module path shown in the line, e.g. ``mas_cli::commands::manage``.
        message: the message (may span several lines).
        _stacklevel: which caller's line number is shown (1 = the direct caller).
        fields: structured fields appended as ``key=value``; pass dotted names
            such as ``user.id`` with ``**{"user.id": value}``.
    """
    level = level.upper()
    if _LEVELS[level] < _threshold():
        return
    try:
        line = sys._getframe(_stacklevel).f_lineno
    except ValueError:
        line = 0
    text = " ".join([message] * bool(message) + [f"{key}={value}" for key, value in fields.items()])
    sys.stderr.write(f"{timestamp()} {level:>5} {target}:{line} {text}\n")
    sys.stderr.flush()


class Logger:
    """A logger bound to one tracing target (a Rust module path)."""

    def __init__(self, target: str):
        self.target = target

    def error(self, message: str, **fields: object) -> None:
        """Log at ERROR level."""
        log("ERROR", self.target, message, _stacklevel=2, **fields)

    def warn(self, message: str, **fields: object) -> None:
        """Log at WARN level."""
        log("WARN", self.target, message, _stacklevel=2, **fields)

    def info(self, message: str, **fields: object) -> None:
        """Log at INFO level."""
        log("INFO", self.target, message, _stacklevel=2, **fields)

    def debug(self, message: str, **fields: object) -> None:
        """Log at DEBUG level."""
        log("DEBUG", self.target, message, _stacklevel=2, **fields)
