"""Fault injection switch of the MAS test double (``MAS_DOUBLE_FAULT``).

The variable holds comma-separated fault names (see the package docstring);
it is read on every call so that a test can change it between commands.
"""

from __future__ import annotations

import os
import time

#: Fault names understood by the double (``migrate-exit1`` is handled by syn2mas).
KNOWN = frozenset({"refuse", "http500", "migrate-exit1", "slow", "no-personal-sessions"})

#: Seconds of delay added by the ``slow`` fault (override: ``MAS_DOUBLE_SLOW_SECONDS``).
DEFAULT_SLOW_SECONDS = 2.0


def active_faults() -> frozenset[str]:
    """Return the set of fault names currently enabled."""
    raw = os.environ.get("MAS_DOUBLE_FAULT", "")
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def active(name: str) -> bool:
    """True when fault ``name`` is enabled."""
    return name in active_faults()


def maybe_slow() -> None:
    """Sleep when the ``slow`` fault is enabled."""
    if active("slow"):
        time.sleep(float(os.environ.get("MAS_DOUBLE_SLOW_SECONDS", DEFAULT_SLOW_SECONDS)))
