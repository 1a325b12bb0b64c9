"""Shared fixtures of the mas-formula test suite.

- ``upstream_dir``: MAS's published contracts in ``../shared/upstream`` (or
  ``$MAS_DOUBLE_UPSTREAM_DIR``); they are never copied into the project. A test
  that needs them skips when they are absent (fails under ``CI=true``).
- Every skip goes through ``harness.util.unavailable`` (``CI=true`` turns it
  into a failure), and the end of a run lists the skipped tests, one line per
  reason (``pytest_terminal_summary``).
- ``salt_call``: real ``salt-call --local`` against the formula in this
  checkout, with a temporary minion config and pillar (see ``saltrun.py``).
- The integration harness fixtures (PostgreSQL, Synapse, nginx, MAS double)
  are in ``integration/conftest.py``: the unit and functional tiers load none
  of them.
"""

import json
import logging

import pytest

from harness import mas as mas_target
from harness.util import require_root, require_upstream, skip_summary
from pillars import PILLAR_SECRETS, deep_update
from saltrun import REPO_ROOT, SaltMinion


def pytest_unconfigure(config):  # pylint: disable=unused-argument
    """Salt's log handlers outlive pytest's captured streams: keep the
    harmless "Logging error ... I/O operation on closed file" off the end of
    the run (where CI reads pytest's closing line)."""
    logging.raiseExceptions = False


def pytest_collection_modifyitems(config, items):
    """Against the real MAS, leave out the tests of the double's own switches (``double_only``):
    ``scripts/test`` runs them against the double in its second pass."""
    if not mas_target.real():
        return
    kept = [item for item in items if item.get_closest_marker("double_only") is None]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


def pytest_terminal_summary(terminalreporter):
    """One line per group of tests that did not run, and why (a newcomer sees
    at a glance what a missing package or ``../shared/upstream`` left out)."""
    lines = skip_summary(terminalreporter.stats)
    if lines:
        terminalreporter.section("not run: missing prerequisites", sep="-")
        for line in lines:
            terminalreporter.line(line)


@pytest.fixture(scope="session")
def repo_root():
    """The root of this checkout (holds mas/, _modules/, _states/)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def upstream_dir():
    """MAS's published contracts (config schema, admin API, DB schema)."""
    return require_upstream("mas/config.schema.json").parents[1]


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
    require_root()
    return SaltMinion(tmp_path, REPO_ROOT, extmods=salt_extmods)


@pytest.fixture(scope="module")
def module_salt_minion(tmp_path_factory, salt_extmods):
    """A masterless minion shared by the tests of one module."""
    require_root()
    return SaltMinion(tmp_path_factory.mktemp("minion"), REPO_ROOT, extmods=salt_extmods)


@pytest.fixture
def paths(tmp_path):
    """Where the formula writes in a test."""
    return {
        "base": tmp_path / "srv" / "mas",
        "units": tmp_path / "systemd",
        "synapse_dir": tmp_path / "synapse" / "conf.d",
        "synapse_cfg": tmp_path / "synapse" / "homeserver.yaml",
        "nginx": tmp_path / "nginx" / "mas.conf",
        "traefik": tmp_path / "traefik" / "mas.yml",
    }


@pytest.fixture
def minimal_pillar(paths):
    """The smallest enabled pillar, all paths under tmp, no secrets given."""
    return {
        "enabled": True,
        "server_name": "example.com",
        "runtime": "binary",
        "binary": {"path": "/usr/local/bin/mas-cli", "share_dir": "/usr/local/share/mas-cli"},
        "base_path": str(paths["base"]),
        "service": {"manage": False, "unit_dir": str(paths["units"])},
        "synapse": {
            "user": "root",
            "group": "root",
            "restart": False,
            "config_dir": str(paths["synapse_dir"]),
            "config_files": [str(paths["synapse_cfg"])],
        },
        "proxy": {
            "reload": False,
            "nginx": {
                "snippet_path": str(paths["nginx"]),
                "public_snippet_path": str(paths["nginx"].with_name("mas-public.conf")),
            },
            "traefik": {"config_path": str(paths["traefik"])},
        },
        # no Synapse or MAS database behind these paths: the syn2mas guards
        # (lock-out, rollback) cannot look, so say it is a new homeserver
        "syn2mas": {"assume_fresh": True, "force_rollback": True},
    }


@pytest.fixture
def full_pillar(minimal_pillar):
    """An enabled pillar that sets every secret from pillar."""
    return deep_update(
        minimal_pillar,
        {
            "secrets": {
                "encryption": PILLAR_SECRETS["encryption"],
                "homeserver_secret": PILLAR_SECRETS["homeserver_secret"],
            },
            "database": {"password": PILLAR_SECRETS["database_password"]},
            "email": {
                "transport": "smtp",
                "hostname": "smtp.example.com",
                "port": 587,
                "mode": "starttls",
                "username": "mas@example.com",
                "password": PILLAR_SECRETS["email_password"],
            },
            "synapse": {"pepper": PILLAR_SECRETS["pepper"]},
            "upstream_oauth2_providers": [
                {
                    "id": "01HFVBY12TMNTYTBV8W921M5FA",
                    "synapse_idp_id": "oidc-keycloak",
                    "issuer": "https://keycloak.example.com/realms/matrix/",
                    "client_id": "mas",
                    "client_secret": PILLAR_SECRETS["client_secret"],
                    "token_endpoint_auth_method": "client_secret_post",
                    "scope": "openid email profile",
                }
            ],
            "account": {"password_registration_enabled": False},
            "config": {"branding": {"service_name": "Test"}},
        },
    )
