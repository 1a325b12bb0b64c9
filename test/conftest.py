"""Shared fixtures of the mas-formula test suite.

- ``upstream_dir``: MAS's published contracts in ``../shared/upstream`` (skips
  when absent; they are never copied into the project).
- ``salt_call``: real ``salt-call --local`` against the formula in this
  checkout, with a temporary minion config and pillar (see ``saltrun.py``).
- The integration harness fixtures (PostgreSQL, Synapse, nginx, MAS double)
  come from ``harness.fixtures``.
"""

import json
import os
import pathlib

import pytest

from harness.fixtures import *  # noqa: F401,F403  pylint: disable=wildcard-import,unused-wildcard-import
from saltrun import REPO_ROOT, SaltMinion

UPSTREAM_DIR = REPO_ROOT.parent / "shared" / "upstream"


@pytest.fixture(scope="session")
def repo_root():
    """The root of this checkout (holds mas/, _modules/, _states/)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def upstream_dir():
    """MAS's published contracts (config schema, admin API, DB schema)."""
    if not (UPSTREAM_DIR / "mas" / "config.schema.json").is_file():
        pytest.skip(f"MAS upstream contracts not found: {UPSTREAM_DIR / 'mas' / 'config.schema.json'}")
    return UPSTREAM_DIR


@pytest.fixture(scope="session")
def mas_config_schema(upstream_dir):
    """MAS's published JSON schema of config.yaml."""
    return json.loads((upstream_dir / "mas" / "config.schema.json").read_text())


@pytest.fixture(scope="session")
def salt_extmods(tmp_path_factory):
    """One synced extension-module directory for the whole session
    (``saltutil.sync_all`` is slow; the modules do not change during a run)."""
    minion = SaltMinion(tmp_path_factory.mktemp("saltsync"), REPO_ROOT)
    minion.sync()
    return minion.extmods.resolve()


@pytest.fixture
def salt_minion(tmp_path, salt_extmods):
    """A masterless minion for one test: ``salt_minion.apply(pillar)``."""
    if os.geteuid() != 0:
        pytest.skip("the functional tests create a service account: run them as root")
    return SaltMinion(tmp_path, REPO_ROOT, extmods=salt_extmods)
