"""The fixtures of the syn2mas unit tests (``test_mas_syn2mas*.py``): the pillar, the outside world's stand-ins
(``cmd.run_all``, ``service.*``, the HTTP probe), the opt-in stubs, another run that records a phase meanwhile, and
a world under tmp (a deployed MAS, a Synapse config)."""

import contextlib
from unittest.mock import MagicMock

import pytest
import yaml

from mas_formula import http, syn2mas_backup, syn2mas_guards, syn2mas_marker, syn2mas_preflight, syn2mas_verify
from syn2mas_unit import DB_PASSWORD, MACAROON, PEPPER, PILLAR_SMTP, SHARED, FakeCli, OrchestrationStubs


@pytest.fixture
def pillar():
    return {"mas": {"email": {"password": PILLAR_SMTP}}}


@pytest.fixture
def cli():
    return FakeCli()


@pytest.fixture
def services():
    return {
        "service.status": MagicMock(return_value=True),
        "service.stop": MagicMock(return_value=True),
        "service.start": MagicMock(return_value=True),
    }


@pytest.fixture
def up(monkeypatch):
    """Which of Synapse/MAS answer over HTTP (the formula's probe, ``mas_formula.http.answers``, is replaced)."""
    state = {"synapse": False, "mas": False}

    def answers(url, timeout=3):
        return state["synapse"] if "/_matrix/" in url else state["mas"]

    monkeypatch.setattr(http, "answers", answers)
    return state


@pytest.fixture
def orchestration_stubs(monkeypatch):
    """Opt-in: the PostgreSQL readers of a run replaced (:class:`OrchestrationStubs`), the rest of it real."""
    stubs = OrchestrationStubs()
    monkeypatch.setattr(syn2mas_preflight, "preflight", stubs.preflight)
    monkeypatch.setattr(syn2mas_backup, "backup_plan", stubs.backup_plan)
    monkeypatch.setattr(syn2mas_verify, "verify", stubs.verify)
    return stubs


@pytest.fixture
def mas_database_empty(monkeypatch):
    """Opt-in, for the tests of the reset's bookkeeping: MAS's database is found empty (the look into a real one,
    ``syn2mas_guards.mas_leftovers``, is integration-tested); lists the databases asked."""
    asked = []

    def leftovers(mas, database, secrets):
        asked.append(database["label"])

    monkeypatch.setattr(syn2mas_guards, "mas_leftovers", leftovers)
    return asked


@pytest.fixture
def meanwhile(monkeypatch):
    """Another run that records a phase after this call looked at the marker and before it holds the lock:
    ``meanwhile(phase, **fields)`` arms it for the next ``syn2mas_marker.exclusive``."""
    real, armed = syn2mas_marker.exclusive, []

    @contextlib.contextmanager
    def exclusive(mas):
        if armed:
            phase, fields = armed.pop()
            syn2mas_marker.set_phase(mas, syn2mas_marker.read_marker(mas), phase, **fields)
        with real(mas):
            yield

    monkeypatch.setattr(syn2mas_marker, "exclusive", exclusive)
    return lambda phase, **fields: armed.append((phase, fields))


@pytest.fixture
def world(tmp_path):
    """A deployed MAS (wrapper, state dir, a secret file) and a Synapse config under tmp."""
    base = tmp_path / "srv"
    for sub in ("bin", "formula", "config/secrets"):
        (base / sub).mkdir(parents=True)
    wrapper = base / "bin" / "mas-cli"
    wrapper.write_text("#!/bin/sh\nexit 99\n")
    wrapper.chmod(0o755)
    (base / "config" / "secrets" / "homeserver_secret").write_text(SHARED)
    synapse = tmp_path / "synapse"
    (synapse / "conf.d").mkdir(parents=True)
    hs = synapse / "homeserver.yaml"
    hs.write_text(
        yaml.safe_dump(
            {
                "server_name": "example.com",
                "macaroon_secret_key": MACAROON,
                "password_config": {"pepper": PEPPER},
                "database": {
                    "name": "psycopg2",
                    "args": {"user": "synapse", "password": DB_PASSWORD, "dbname": "synapse"},
                },
            }
        )
    )
    (synapse / "conf.d" / "oidc.yaml").write_text("oidc_providers: []\n")
    return {"base": base, "hs": hs, "conf_d": synapse / "conf.d", "tmp": tmp_path}
