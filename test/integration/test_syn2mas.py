"""``mas.syn2mas``: the guarded migration, with the real salt-call, the MAS
double's ``mas-cli syn2mas`` and a real Synapse on PostgreSQL.

One Synapse per module (``password_config.pepper`` set) holds an admin
(``alice``), a user with an email and an OIDC link (``bob``, provider
``oidc-keycloak``) and a plain user (``carol``). The OIDC provider lives in a
separate pre-MAS config fragment handed to syn2mas through
``mas:syn2mas:synapse_config_files`` (FACTS §4.2); MAS maps it with
``synapse_idp_id``. Each test deploys the formula (``state.apply mas`` with
``mas:migration_in_progress: true``, binary runtime = the double) into its own
directory with its own, empty MAS database. ``mas:syn2mas:stop_services`` is
false: the tests start and stop the harness Synapse themselves.

Every salt-call output, the minion log and the phase marker are checked for
secrets (pepper, shared secret, DB passwords, Synapse's own secrets).
"""

import json
import stat
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from harness import mas as mas_target
from harness.synapse import SYNAPSE_DB_PASSWORD
from harness.util import free_port
from mas_double import run_server
from pillars import PILLAR_SECRETS, deep_update, wired_pillar
from saltrun import REPO_ROOT, SaltMinion

pytestmark = pytest.mark.integration

PEPPER = "syn2mas-formula-pepper-4711"
PASSWORD = "correct horse battery staple"
PROVIDER_ID = "01J9SYN2MASF0RMV1A000000PR"
SYNAPSE_IDP_ID = "oidc-keycloak"
ISSUER = "https://keycloak.invalid/realms/matrix"
SUBJECT = "kc-subject-bob"
MIGRATED = ("users", "user_passwords", "user_emails", "upstream_oauth_links", "compat_sessions")


@dataclass
class World:
    """The populated Synapse and the pre-MAS config fragment with its OIDC provider."""

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
    fragment = tmp_path_factory.mktemp("pre-mas") / "oidc.yaml"
    fragment.write_text(
        yaml.safe_dump(
            {
                "oidc_providers": [
                    {
                        "idp_id": "keycloak",
                        "idp_name": "Keycloak",
                        "issuer": ISSUER,
                        "client_id": "synapse",
                        "client_secret": "Synapse-Oidc-Client-Secret-31",
                        "scopes": ["openid"],
                    }
                ]
            }
        )
    )
    secrets = [PEPPER, SYNAPSE_DB_PASSWORD, "Synapse-Oidc-Client-Secret-31", *PILLAR_SECRETS.values()]
    secrets += [server.config[key] for key in ("registration_shared_secret", "macaroon_secret_key", "form_secret")]
    yield World(server, fragment, secrets)
    server.stop()


@dataclass
class Deployment:
    """The formula applied into ``root`` with its own MAS database."""

    minion: SaltMinion
    pillar: dict
    pg: object
    dbname: str
    root: Path
    secrets: list
    outputs: list = field(default_factory=list)

    def _record(self, res):
        self.outputs.append(res.output)
        return res

    def call(self, *args, **pillar):
        """``salt-call <args>`` with the deployment's pillar updated by ``pillar``."""
        self.minion.set_pillar({"mas": deep_update(self.pillar, pillar)})
        return self._record(self.minion.run(*args))

    def state(self, *extra, **pillar):
        """``state.apply mas.syn2mas``; returns (salt result, the one state's return)."""
        res = self.call("state.apply", "mas.syn2mas", "--retcode-passthrough", *extra, **pillar)
        assert res.data, res.output
        return res, res.by_id("mas-syn2mas-migrate-mas_syn2mas-migrated")

    @property
    def marker_path(self):
        return self.root / "srv" / "formula" / "syn2mas.json"

    def marker(self):
        return json.loads(self.marker_path.read_text()) if self.marker_path.exists() else None

    def count(self, table):
        return self.pg.query(self.dbname, f"SELECT count(*) FROM {table}")[0][0]

    def recreate_database(self):
        self.pg.drop_database(self.dbname)
        self.pg.create_database(self.dbname)

    def assert_no_secret(self):
        texts = self.outputs + [
            (self.root / "minion.log").read_text(errors="replace") if (self.root / "minion.log").exists() else ""
        ]
        if self.marker_path.exists():
            texts.append(self.marker_path.read_text())
        for secret in self.secrets:
            for text in texts:
                assert secret not in text, "a secret leaked into an output"


@pytest.fixture
def deployment(world, pg, salt_extmods, tmp_path, upstream_dir, request):
    dbname = f"mas_s2m_{request.node.name[5:25].replace('[', '_').replace(']', '')}"
    pg.drop_database(dbname)
    pg.create_database(dbname)  # empty: syn2mas itself creates MAS's schema
    hs = world.server.config_path
    pillar = deep_update(
        wired_pillar(tmp_path, pg, dbname, world.server, free_port(), free_port()),
        {
            "migration_in_progress": True,
            "base_path": str(tmp_path / "srv"),
            "secrets": {key: PILLAR_SECRETS[key] for key in ("encryption", "homeserver_secret")},
            "synapse": {"mas_endpoint": None},
            "upstream_oauth2_providers": [
                {
                    "id": PROVIDER_ID,
                    "synapse_idp_id": SYNAPSE_IDP_ID,
                    "issuer": ISSUER,
                    "client_id": "mas",
                    "client_secret": PILLAR_SECRETS["client_secret"],
                    "token_endpoint_auth_method": "client_secret_post",
                    "scope": "openid",
                }
            ],
            "proxy": {"type": "none"},
            "syn2mas": {
                "stop_services": False,
                "synapse_config_files": [str(hs), str(world.fragment)],
                "backup_dir": str(tmp_path / "backups"),
            },
        },
    )
    minion = SaltMinion(tmp_path, REPO_ROOT, extmods=salt_extmods)
    dep = Deployment(minion, pillar, pg, dbname, tmp_path, world.secrets)
    res = dep.call("state.apply", "mas", "--retcode-passthrough")
    assert res.returncode == 0, res.output
    assert not (world.server.conf_d / "matrix-authentication-service.yaml").exists()
    yield dep
    dep.assert_no_secret()
    pg.drop_database(dbname)


def test_check_and_dry_run_leave_everything_as_is(world, deployment):
    world.running()
    check = deployment.call("mas_syn2mas.check")
    assert check.returncode == 0, check.output
    assert (check.data["result"], check.data["exit_code"], check.data["errors"]) == (True, 0, [])

    # the seed's dry run, as documented: a pillar override on the command line
    res, ret = deployment.state('pillar={"mas": {"syn2mas": {"dry_run": true}}}')
    assert res.returncode == 0 and ret["result"] is True, ret["comment"]
    assert ret["changes"] == {} and "phase unchanged" in ret["comment"]
    assert all(deployment.count(table) == 0 for table in MIGRATED)
    assert deployment.marker() is None

    # test=True runs nothing: it predicts the refusal (Synapse answers), or the run (the formula would stop it)
    res, ret = deployment.state("test=True")
    assert ret["result"] is False and "syn2mas would be refused" in ret["comment"]
    assert f"Synapse answers at {world.server.base_url}/_matrix/client/versions" in ret["comment"]
    res, ret = deployment.state("test=True", syn2mas={"stop_services": True})
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
    res, ret = deployment.state(syn2mas={"synapse_config_files": files})
    assert res.returncode == 2 and ret["result"] is False and ret["changes"] == {}
    assert "accept_warnings" in ret["comment"] and "registration enabled" in ret["comment"]
    assert deployment.marker() is None and deployment.count("users") == 0

    res, ret = deployment.state(syn2mas={"synapse_config_files": files, "dry_run": True, "accept_warnings": True})
    assert ret["result"] is True, ret["comment"]
    assert deployment.marker() is None and deployment.count("users") == 0


def test_guarded_migration_runs_once(world, deployment):
    world.running()
    config = deployment.root / "srv" / "config" / "config.yaml"
    with run_server([config], log_path=deployment.root / "mas.log"):
        refused = deployment.call("mas_syn2mas.migrate")
    assert refused.returncode == 1 and refused.data["result"] is False, refused.output
    errors = "\n".join(refused.data["errors"])
    assert f"Synapse still answers at {world.server.base_url}/_matrix/client/versions" in errors
    assert "MAS still answers at" in errors and "stop it yourself" in errors
    assert deployment.marker() is None and deployment.count("users") == 0

    delegated = deployment.call("mas_syn2mas.migrate", migration_in_progress=False)
    assert delegated.data["result"] is False
    assert delegated.data["errors"][0].startswith("mas:migration_in_progress is false")

    world.stopped()
    res, ret = deployment.state()
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

    res, ret = deployment.state()
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
    res, ret = deployment.state()
    assert res.returncode == 2 and ret["result"] is False
    assert ret["changes"] == {"phase": {"old": "legacy_auth", "new": "migrating"}}
    assert "the phase stays migrating" in ret["comment"] and "injected fault" in ret["comment"]
    marker = deployment.marker()
    assert marker["phase"] == "migrating" and marker["last_run"]["exit_code"] == 1

    monkeypatch.delenv("MAS_DOUBLE_FAULT")
    res, ret = deployment.state()
    assert ret["result"] is True and ret["changes"] == {"phase": {"old": "migrating", "new": "verified"}}
    assert "Partial syn2mas migration has already been done; resetting." in deployment.marker()["last_run"]["summary"]
    assert deployment.count("users") == 3

    # rollback: reset the marker; MAS refuses its non-empty database until it is recreated
    assert deployment.call("mas_syn2mas.reset").data["result"] is False
    reset = deployment.call("mas_syn2mas.reset", "confirm=True")
    assert reset.data["changes"] == {"phase": {"old": "verified", "new": "legacy_auth"}}
    res, ret = deployment.state()
    assert ret["result"] is False and "is not empty: rows in users" in ret["comment"]
    assert "drop and recreate it" in ret["comment"] and deployment.marker()["phase"] == "legacy_auth"
    deployment.recreate_database()
    res, ret = deployment.state()
    assert ret["result"] is True and ret["changes"] == {"phase": {"old": "legacy_auth", "new": "verified"}}
    assert [h["phase"] for h in deployment.marker()["history"]] == [
        "migrating",
        "verified",
        "legacy_auth",
        "migrating",
        "verified",
    ]
