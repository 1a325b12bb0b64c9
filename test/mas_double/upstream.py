"""Where the double finds the read-only upstream MAS contracts.

``<repo>/../shared/upstream`` (the layout of this workplace), or the directory
named by ``MAS_DOUBLE_UPSTREAM_DIR``.  The files are read, never copied.
"""

from __future__ import annotations

import os
from pathlib import Path


class UpstreamMissing(FileNotFoundError):
    """An upstream contract file the double needs is not available."""


def upstream_dir() -> Path:
    """Return the directory holding ``mas/config.schema.json`` and friends."""
    override = os.environ.get("MAS_DOUBLE_UPSTREAM_DIR")
    if override:
        return Path(override)
    # test/mas_double/upstream.py -> parents[2] is the repository root
    return Path(__file__).resolve().parents[2].parent / "shared" / "upstream"


def _require(relative: str) -> Path:
    path = upstream_dir() / relative
    if not path.is_file():
        raise UpstreamMissing(f"upstream MAS file not available: {path} is missing")
    return path


def config_schema() -> Path:
    """Path of ``mas/config.schema.json`` (raises :class:`UpstreamMissing`)."""
    return _require("mas/config.schema.json")


def schema_sql() -> Path:
    """Path of ``mas/schema.sql`` (raises :class:`UpstreamMissing`)."""
    return _require("mas/schema.sql")


def admin_api_spec() -> Path:
    """Path of ``mas/admin-api-spec.json`` (raises :class:`UpstreamMissing`)."""
    return _require("mas/admin-api-spec.json")
