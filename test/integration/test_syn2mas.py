"""``mas.syn2mas``: the guarded migration, with the real salt-call, the MAS
double's ``mas-cli syn2mas`` and a real Synapse on PostgreSQL.

One Synapse per module (``password_config.pepper`` set) holds an admin
(``alice``), a user with an email and an OIDC link (``bob``, provider
``oidc-keycloak``) and a plain user (``carol``). The OIDC provider lives in a
separate pre-MAS config fragment handed to syn2mas through
``mas:syn2mas:synapse_config_files`` (the pre-MAS Synapse configuration); MAS maps it with
``synapse_idp_id``. Each test deploys the formula (``state.apply mas`` with
``mas:migration_in_progress: true``, binary runtime = the double) into its own
directory with its own, empty MAS database. ``mas:syn2mas:stop_services`` is
false: the tests start and stop the harness Synapse themselves.

Every salt-call output, the minion log and the phase marker are checked for
secrets (pepper, shared secret, DB passwords, Synapse's own secrets).
"""

import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import mas as mas_target
from mas_double import run_server
from pillars import deep_update
from saltrun import REPO_ROOT, SaltMinion
from syn2mas_world import (
    MIGRATED,
    PASSWORD,
    PEPPER,
    SUBJECT,
    SYNAPSE_IDP_ID,
    Deployment,
    migration_pillar,
    oidc_fragment,
    world_secrets,
)

pytestmark = pytest.mark.integration


@dataclass
class World:
    """The populated Synapse (run directly, not as a service) and the pre-MAS config fragment."""

    server: object
    fragment: Path
    secrets: list

    def running(self):
        self.server.start()

    def stopped(self):
        self.server.stop()


@pytest.fixture(scope="module")
def world(synapse_factory, pg, tmp_path_factory):
    server = synapse_factory(database=pg, start=True, extra_config={"password_config": {"pepper": PEPPER}})
    alice = server.register_user("alice", PASSWORD, admin=True)
    bob = server.register_user("bob", PASSWORD)
    server.register_user("carol", PASSWORD)
    server.add_threepid(alice["access_token"], bob["user_id"], "email", "bob@example.org")
    server.add_external_id(alice["access_token"], bob["user_id"], SYNAPSE_IDP_ID, SUBJECT)
    fragment = oidc_fragment(tmp_path_factory.mktemp("pre-mas") / "oidc.yaml")
    yield World(server, fragment, world_secrets(server))
    server.stop()


@pytest.fixture
def deployment(world, pg, salt_extmods, tmp_path, upstream_dir, request):
    """The formula applied with the migration pillar; Synapse is stopped by the tests, not by the formula."""
    dbname = f"mas_s2m_{request.node.name[5:25].replace('[', '_').replace(']', '')}"
    pg.drop_database(dbname)
    pg.create_database(dbname)  # empty: syn2mas itself creates MAS's schema
    pillar = deep_update(
        migration_pillar(tmp_path, pg, dbname, world),
        {"synapse": {"service": None}, "syn2mas": {"stop_services": False, "stop_timeout": None}},
    )
    dep = Deployment(SaltMinion(tmp_path, REPO_ROOT, extmods=salt_extmods), pillar, pg, dbname, tmp_path, world)
    res = dep.state("mas")
    assert res.returncode == 0, res.output
    assert not dep.dropin.exists()
    yield dep
    dep.assert_no_secret()
    pg.drop_database(dbname)


def test_check_and_dry_run_leave_everything_as_is(world, deployment):
    world.running()
    check = deployment.call("mas_syn2mas.check")
    assert check.returncode == 0, check.output
    assert (check.data["result"], check.data["exit_code"], check.data["errors"]) == (True, 0, [])

    # the seed's dry run, as documented: a pillar override on the command line
    res, ret = deployment.migrated('pillar={"mas": {"syn2mas": {"dry_run": true}}}')
    assert res.returncode == 0 and ret["result"] is True, ret["comment"]
    assert ret["changes"] == {} and "phase unchanged" in ret["comment"]
    assert all(deployment.count(table) == 0 for table in MIGRATED)
    assert deployment.marker() is None

    # test=True runs nothing: it predicts the refusal (Synapse answers), or the run (the formula would stop it)
    res, ret = deployment.migrated("test=True")
    assert ret["result"] is False and "syn2mas would be refused" in ret["comment"]
    assert f"Synapse answers at {world.server.base_url}/_matrix/client/versions" in ret["comment"]
    res, ret = deployment.migrated("test=True", syn2mas={"stop_services": True})
    assert ret["result"] is None and ret["changes"] == {"phase": {"old": "legacy_auth", "new": "verified"}}
    assert "syn2mas would migrate" in ret["comment"] and world.server.running
    status = deployment.call("mas_syn2mas.status").data
    assert status["phase"] == "legacy_auth" and status["recorded"] is False and status["synapse_answers"] is True
    assert deployment.marker() is None and deployment.count("users") == 0


def test_warnings_are_refused_unless_accepted(world, deployment, tmp_path):
    registration = tmp_path / "registration.yaml"
    registration.write_text("enable_registration: true\nenable_registration_without_verification: true\n")
    files = [str(world.server.config_path), str(world.fragment), str(registration)]
    check = deployment.call("mas_syn2mas.check", syn2mas={"synapse_config_files": files})
    assert check.returncode == 1 and check.data["result"] is False and check.data["exit_code"] == 11
    # the preflight's warning (file and what to do), then upstream's
    assert check.data["warnings"] == [
        f"Synapse has registration enabled (enable_registration in {registration}): turn it off before Synapse "
        "comes back (the formula refuses it once Synapse delegates; users then register in MAS)",
        "Synapse config has registration enabled. This must be disabled after migration before bringing "
        "Synapse back online.",
    ]
    world.stopped()
    res, ret = deployment.migrated(syn2mas={"synapse_config_files": files})
    assert res.returncode == 2 and ret["result"] is False and ret["changes"] == {}
    assert "accept_warnings" in ret["comment"] and "registration enabled" in ret["comment"]
    assert deployment.marker() is None and deployment.count("users") == 0

    res, ret = deployment.migrated(syn2mas={"synapse_config_files": files, "dry_run": True, "accept_warnings": True})
    assert ret["result"] is True, ret["comment"]
    assert deployment.marker() is None and deployment.count("users") == 0


def test_guarded_migration_runs_once(world, deployment):
    world.running()
    config = deployment.root / "srv" / "config" / "config.yaml"
    with run_server([config], log_path=deployment.root / "mas.log"):
        refused = deployment.call("mas_syn2mas.migrate")
    assert refused.returncode == 1 and refused.data["result"] is False, refused.output
    errors = "\n".join(refused.data["errors"])
    assert f"Synapse answers at {world.server.base_url}/_matrix/client/versions: stop it yourself first" in errors
    assert "MAS answers at" in errors and refused.data["comment"].endswith("(nothing was run or stopped)")
    assert deployment.marker() is None and deployment.count("users") == 0

    delegated = deployment.call("mas_syn2mas.migrate", migration_in_progress=False)
    assert delegated.data["result"] is False
    assert delegated.data["errors"][0].startswith("mas:migration_in_progress is false")

    world.stopped()
    res, ret = deployment.migrated()
    assert res.returncode == 0 and ret["result"] is True, ret["comment"]
    assert ret["changes"] == {"phase": {"old": "legacy_auth", "new": "verified"}}
    assert "mas:migration_in_progress: false" in ret["comment"]
    rows = dict(deployment.pg.query(deployment.dbname, "SELECT username, can_request_admin FROM users"))
    assert rows == {"alice": True, "bob": False, "carol": False}
    assert deployment.pg.query(deployment.dbname, "SELECT email FROM user_emails") == [("bob@example.org",)]
    assert deployment.pg.query(deployment.dbname, "SELECT subject FROM upstream_oauth_links") == [(SUBJECT,)]
    marker = deployment.marker()
    assert marker["phase"] == "verified" and marker["last_run"]["exit_code"] == 0
    assert marker["synapse_configs"] == [str(world.server.config_path), str(world.fragment)]
    assert stat.S_IMODE(deployment.marker_path.stat().st_mode) == 0o600

    res, ret = deployment.migrated()
    assert res.returncode == 0 and ret["result"] is True and ret["changes"] == {}
    assert "already migrated" in ret["comment"]
    again = deployment.call("mas_syn2mas.migrate")
    assert again.returncode == 1 and again.data["result"] is False and again.data["exit_code"] is None
    assert "already migrated (phase verified" in again.data["errors"][0]
    assert "not empty" not in again.output, "the formula's guard refuses, not MAS"
    assert deployment.count("users") == 3


@mas_target.double_only
def test_interrupted_migration_is_retried_and_rolled_back(world, deployment, monkeypatch):
    world.stopped()
    monkeypatch.setenv("MAS_DOUBLE_FAULT", "migrate-exit1")
    res, ret = deployment.migrated()
    assert res.returncode == 2 and ret["result"] is False
    assert ret["changes"] == {"phase": {"old": "legacy_auth", "new": "migrating"}}
    assert "the phase stays migrating" in ret["comment"] and "injected fault" in ret["comment"]
    marker = deployment.marker()
    assert marker["phase"] == "migrating" and marker["last_run"]["exit_code"] == 1

    monkeypatch.delenv("MAS_DOUBLE_FAULT")
    res, ret = deployment.migrated()
    assert ret["result"] is True and ret["changes"] == {"phase": {"old": "migrating", "new": "verified"}}
    assert "Partial syn2mas migration has already been done; resetting." in deployment.marker()["last_run"]["summary"]
    assert deployment.count("users") == 3

    # rollback: the reset is refused while MAS's database still holds the migration, naming what to drop
    assert deployment.call("mas_syn2mas.reset").data["result"] is False
    refused = deployment.call("mas_syn2mas.reset", "confirm=True")
    assert refused.returncode == 1 and refused.data["result"] is False, refused.output
    assert refused.data["errors"][0].startswith(
        f"MAS's database {deployment.dbname} at 127.0.0.1:{deployment.pg.port} (mas:database) still holds the "
        "earlier migration: rows in users"
    )
    assert f'`DROP DATABASE "{deployment.dbname}";`' in refused.data["errors"][0]
    assert deployment.marker()["phase"] == "verified"
    deployment.recreate_database()
    reset = deployment.call("mas_syn2mas.reset", "confirm=True")
    assert reset.data["changes"] == {"phase": {"old": "verified", "new": "legacy_auth"}}
    res, ret = deployment.migrated()
    assert ret["result"] is True and ret["changes"] == {"phase": {"old": "legacy_auth", "new": "verified"}}
    assert [h["phase"] for h in deployment.marker()["history"]] == [
        "migrating",
        "verified",
        "legacy_auth",
        "migrating",
        "verified",
    ]
