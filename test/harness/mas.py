"""Which MAS the integration tests talk to: the double, or a real ``mas-cli``.

By default every test runs the MAS test double (``test/mas_double``).  With
both ``MAS_REAL_CLI`` (the path of a real ``mas-cli``, e.g. from the upstream
release tarball) and ``MAS_REAL_SHARE`` (its ``share/`` directory: policy.wasm,
manifest.json, assets/, templates/, translations/) set, every integration test
that talks to MAS runs that program instead, with the same fixtures (real
PostgreSQL, Synapse and nginx); tests of the double's own fault switches skip
(:data:`double_only`).

* :func:`cli` -- the ``mas-cli`` to run;
* :func:`share_dir` -- its ``share/`` (for the double: built under the given directory);
* :func:`binary_pillar` -- ``mas:binary`` pointing at both;
* :func:`share_config` -- the config.yaml sections that point MAS at a ``share/``;
* :func:`migrate` -- bring a database to MAS's schema (the double: the upstream
  ``schema.sql``; real MAS: ``mas-cli database migrate``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import yaml

from harness.util import require_upstream, run

REAL_CLI = os.environ.get("MAS_REAL_CLI", "")
REAL_SHARE = os.environ.get("MAS_REAL_SHARE", "")

#: Marks tests of the double's own behaviour: its fault switches (``MAS_DOUBLE_FAULT``) and test-only
#: knobs (``MAS_DOUBLE_WELL_KNOWN_BASE``, ``MAS_DOUBLE_UPSTREAM_DIR``, its wrapper). When the suite runs the
#: real MAS they are deselected (``test/conftest.py``): ``scripts/test`` runs them in its second pass,
#: against the double.
double_only = pytest.mark.double_only


def real() -> bool:
    """True when the suite runs the real MAS (``MAS_REAL_CLI`` and ``MAS_REAL_SHARE`` set)."""
    if bool(REAL_CLI) != bool(REAL_SHARE):
        raise RuntimeError(
            "set both MAS_REAL_CLI (a real mas-cli) and MAS_REAL_SHARE (its share/ directory), or neither"
        )
    if REAL_CLI and not (os.access(REAL_CLI, os.X_OK) and Path(REAL_SHARE, "policy.wasm").is_file()):
        raise RuntimeError(
            f"MAS_REAL_CLI={REAL_CLI} is not executable or MAS_REAL_SHARE={REAL_SHARE} has no policy.wasm"
        )
    return bool(REAL_CLI)


def require_double_contracts(*relative: str) -> None:
    """Skip (fail under CI) when the double runs and lacks the upstream contract files it works from
    (its ``config check`` validates against ``mas/config.schema.json``, its syn2mas and its server load
    ``mas/schema.sql``); real MAS brings its own."""
    if not real():
        for path in relative or ("mas/config.schema.json",):
            require_upstream(path)


def cli() -> Path:
    """The ``mas-cli`` the tests run."""
    if real():
        return Path(REAL_CLI).resolve()
    from mas_double import MAS_CLI

    return MAS_CLI


def share_dir(workdir: Path | None = None) -> Path:
    """The ``share/`` directory of :func:`cli`; the double's is built (once) under ``workdir``."""
    if real():
        return Path(REAL_SHARE).resolve()
    from mas_double import share

    target = Path(workdir or tempfile.mkdtemp(prefix="mas-double-")) / "mas-double-share"
    if not (target / "policy.wasm").is_file():
        share.build(target)
    return target


def binary_pillar(workdir: Path | None = None) -> dict:
    """``mas:binary`` for a MAS installed beside the tests (``path`` and ``share_dir``)."""
    return {"path": str(cli()), "share_dir": str(share_dir(workdir))}


def share_config(share: Path) -> dict:
    """The config.yaml sections that point MAS at ``share`` (absolute paths, as the formula writes them)."""
    return {
        "policy": {"wasm_module": str(share / "policy.wasm")},
        "templates": {
            "path": f"{share / 'templates'}/",
            "assets_manifest": str(share / "manifest.json"),
            "translations_path": f"{share / 'translations'}/",
        },
    }


def migrate(pg, dbname: str, user: str | None = None) -> None:
    """Give database ``dbname`` MAS's schema, owned by ``user``.

    The double works on the upstream ``schema.sql`` (loaded by the harness);
    real MAS keeps its own migration records, so it migrates the database
    itself (``mas-cli database migrate`` over the cluster's socket).
    """
    if not real():
        pg.load_mas_schema(dbname, user=user)
        return
    with tempfile.TemporaryDirectory(prefix="mas-migrate-") as tmp:
        config = Path(tmp) / "config.yaml"
        database = {"socket": str(pg.sockdir), "port": pg.port, "username": user or pg.superuser, "database": dbname}
        config.write_text(yaml.safe_dump({"database": database}))
        run([str(cli()), "-c", str(config), "database", "migrate"], cwd=tmp)
