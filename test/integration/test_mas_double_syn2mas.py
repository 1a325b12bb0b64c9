"""``mas-cli syn2mas`` of the MAS test double against a real Synapse on PostgreSQL.

A module-scoped Synapse (PostgreSQL, ``password_config.pepper`` set) gets an
admin, a normal user with an email, a phone number, an OIDC link and a
refreshable login, a deactivated user, a guest and an application-service user;
then it is stopped (a real ``migrate`` needs Synapse down).  The OIDC provider
lives in a separate "pre-MAS" Synapse config fragment passed with a second
``--synapse-config``, as an operator does after enabling MAS (upstream's ``docs/reference/cli/syn2mas.md``).

Each test gets a fresh MAS database with the upstream schema and a MAS
``config.yaml`` (bcrypt v1 with the pepper, argon2id v2, a provider mapped with
``synapse_idp_id``).  The command runs in a subprocess through
``test/mas_double/bin/mas-cli`` (``python -m mas_double.cli`` until it exists).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from harness import mas as mas_target
from harness.postgres import PostgresCluster
from harness.synapse import SynapseServer
from mas_double import syn2mas, ulid

pytestmark = [pytest.mark.integration, pytest.mark.double]

SERVER_NAME = "example.com"
PEPPER = "pepper-of-the-synapse-tests"
PASSWORD = "correct horse battery staple"
#: The MAS upstream provider mapped to Synapse's ``oidc-keycloak``.
PROVIDER_ID = "01J9SYN2MAS0PR0V1DER000000"
IDP_ID = "keycloak"
SYNAPSE_IDP_ID = f"oidc-{IDP_ID}"
ISSUER = "https://keycloak.invalid/realms/matrix"
SUBJECT = "kc-subject-bob"
MAS_ROLE = "mas"
TEST_DIR = Path(__file__).resolve().parents[1]
MAS_DOUBLE_CLI = TEST_DIR / "mas_double" / "bin" / "mas-cli"

EMPTY_CHECK_OK = "Check completed successfully with no errors or warnings."
RESETTING = "Partial syn2mas migration has already been done; resetting."


# ------------------------------------------------------------------ fixtures


@dataclass
class SynapseWorld:
    """The populated (and stopped) Synapse plus what the tests compare against."""

    server: SynapseServer
    pg: PostgresCluster
    hs_yaml: Path
    oidc_fragment: Path
    tokens: dict[str, str]
    refresh_token: str
    clones: list[str] = field(default_factory=list)

    @property
    def dbname(self) -> str:
        return self.server.dbname

    def query(self, statement: str, params: Any = None) -> list:
        return self.pg.query(self.dbname, statement, params)

    def clone(self, *statements: str) -> str:
        """Copy the (stopped) Synapse database, run ``statements`` in the copy, return its DSN."""
        name = f"synclone_{secrets.token_hex(4)}"
        with self.pg.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.dbname}"')
        self.clones.append(name)
        for statement in statements:
            self.pg.query(name, statement)
        return self.pg.dsn(name, user="synapse")


@pytest.fixture(scope="module")
def world(synapse_factory, pg: PostgresCluster, tmp_path_factory) -> Iterator[SynapseWorld]:
    """A PostgreSQL Synapse populated with every kind of row syn2mas migrates, then stopped."""
    server = synapse_factory(
        server_name=SERVER_NAME, database=pg, start=True, extra_config={"password_config": {"pepper": PEPPER}}
    )
    tokens = {}
    alice = server.register_user("alice", PASSWORD, admin=True)
    tokens["alice"] = alice["access_token"]
    bob = server.register_user("bob", PASSWORD)
    tokens["bob"] = bob["access_token"]
    server.register_user("carol", PASSWORD)
    admin = tokens["alice"]
    server.add_threepid(admin, bob["user_id"], "email", "bob@example.org")
    server.add_threepid(admin, bob["user_id"], "msisdn", "15551234567")
    server.add_external_id(admin, bob["user_id"], SYNAPSE_IDP_ID, SUBJECT)
    server.admin_put_user(admin, server.user_id("carol"), {"deactivated": True})
    login = server.request(
        "POST",
        "/_matrix/client/v3/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "bob"},
            "password": PASSWORD,
            "refresh_token": True,
        },
    )
    assert login.status_code == 200, login.text
    assert "refresh_token" in login.json(), "Synapse did not issue a refresh token"
    tokens["bob-refreshable"] = login.json()["access_token"]
    server.stop()

    # Rows the HTTP APIs cannot create: a guest and an application-service user with a device.
    pg.query(
        server.dbname,
        "INSERT INTO users (name, creation_ts, is_guest) VALUES ('@12345:example.com', 1700000000, 1)",
    )
    pg.query(
        server.dbname,
        "INSERT INTO users (name, creation_ts, appservice_id) VALUES ('@bridge_x:example.com', 1700000000, 'bridge')",
    )
    pg.query(
        server.dbname,
        "INSERT INTO devices (user_id, device_id, hidden) VALUES ('@bridge_x:example.com', 'BRIDGEDEV', false)",
    )

    fragments = tmp_path_factory.mktemp("syn2mas-synapse")
    oidc_fragment = fragments / "pre-mas-oidc.yaml"
    oidc_fragment.write_text(
        yaml.safe_dump(
            {
                "oidc_providers": [
                    {
                        "idp_id": IDP_ID,
                        "idp_name": "Keycloak",
                        "issuer": ISSUER,
                        "client_id": "synapse",
                        "client_secret": "not-a-real-secret",
                        "scopes": ["openid", "profile"],
                    }
                ]
            }
        )
    )
    synapse_world = SynapseWorld(server, pg, server.config_path, oidc_fragment, tokens, login.json()["refresh_token"])
    try:
        yield synapse_world
    finally:
        for name in synapse_world.clones:
            pg.drop_database(name)


@dataclass
class MasSide:
    """One fresh MAS database and a config.yaml pointing at it."""

    pg: PostgresCluster
    dbname: str
    config_path: Path
    config: dict

    def write(self, **overrides: Any) -> Path:
        """Rewrite config.yaml with top-level ``overrides`` (a None value deletes the key)."""
        config = dict(self.config, **overrides)
        config = {key: value for key, value in config.items() if value is not None}
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return self.config_path

    def connect(self) -> psycopg.Connection:
        return self.pg.connect(self.dbname)

    def query(self, statement: str, params: Any = None) -> list:
        return self.pg.query(self.dbname, statement, params)

    def count(self, table: str) -> int:
        return self.query(f"SELECT count(*) FROM {table}")[0][0]

    def table_exists(self, table: str) -> bool:
        return self.query("SELECT to_regclass(%s) IS NOT NULL", (f"public.{table}",))[0][0]


def mas_config(pg: PostgresCluster, dbname: str) -> dict:
    """A valid MAS config for a Synapse-migrated deployment (passwords, providers)."""
    return {
        "database": {"uri": pg.dsn(dbname, user=MAS_ROLE)},
        "secrets": {"encryption": secrets.token_hex(32)},
        "matrix": {
            "homeserver": SERVER_NAME,
            "secret": secrets.token_urlsafe(24),
            "endpoint": "http://127.0.0.1:8008/",
        },
        "passwords": {
            "schemes": [
                {"version": 1, "algorithm": "bcrypt", "secret": PEPPER, "unicode_normalization": True},
                {"version": 2, "algorithm": "argon2id"},
            ]
        },
        "upstream_oauth2": {
            "providers": [
                {
                    "id": PROVIDER_ID,
                    "synapse_idp_id": SYNAPSE_IDP_ID,
                    "issuer": ISSUER,
                    "human_name": "Keycloak",
                    "client_id": "mas",
                    "client_secret": "not-a-real-secret",
                    "token_endpoint_auth_method": "client_secret_basic",
                    "scope": "openid profile",
                }
            ]
        },
    }


@pytest.fixture
def mas(pg: PostgresCluster, tmp_path: Path) -> Iterator[MasSide]:
    """A fresh MAS database (upstream schema loaded as its owner) and its config.yaml."""
    pg.create_role(MAS_ROLE, password="mas-test-password")
    dbname = f"mas_{secrets.token_hex(4)}"
    pg.create_database(dbname, owner=MAS_ROLE)
    mas_target.migrate(pg, dbname, user=MAS_ROLE)
    side = MasSide(pg, dbname, tmp_path / "config.yaml", mas_config(pg, dbname))
    side.write()
    try:
        yield side
    finally:
        pg.drop_database(dbname)


@dataclass
class Result:
    """Exit code and output of one ``mas-cli syn2mas`` run."""

    returncode: int
    stdout: str
    stderr: str


def mas_cli_command() -> list[str]:
    """The ``mas-cli`` of the suite (``harness.mas``): the real one, or the double's ``bin/mas-cli``."""
    if mas_target.real():
        return [str(mas_target.cli())]
    if os.access(MAS_DOUBLE_CLI, os.X_OK):
        return [str(MAS_DOUBLE_CLI)]
    return [sys.executable, "-m", "mas_double.cli"]


@pytest.fixture
def syn2mas_cli(world: SynapseWorld) -> Callable[..., Result]:
    """Run ``mas-cli -c CONFIG syn2mas --synapse-config ... ARGS`` in a subprocess.

    ``synapse_configs`` defaults to hs.yaml + the OIDC fragment; ``fault`` sets
    ``MAS_DOUBLE_FAULT``.  The syn2mas options follow ``ARGS`` (upstream takes
    them on either side); ``options_first`` puts them before.
    """

    def invoke(
        config: Path,
        *args: str,
        synapse_configs: list[Path] | None = None,
        fault: str | None = None,
        database_uri: str | None = None,
        ignore_missing: bool = False,
        options_first: bool = False,
    ) -> Result:
        configs = [world.hs_yaml, world.oidc_fragment] if synapse_configs is None else synapse_configs
        options = [arg for path in configs for arg in ("--synapse-config", str(path))]
        if database_uri:
            options += ["--synapse-database-uri", database_uri]
        if ignore_missing:
            options.append("--ignore-missing-auth-providers")
        # no fault from the outside; where the upstream contracts are stays (harness.util.upstream_dir)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAS_") or k == "MAS_DOUBLE_UPSTREAM_DIR"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TEST_DIR), os.environ.get("PYTHONPATH")]))
        if fault:
            env["MAS_DOUBLE_FAULT"] = fault
        proc = subprocess.run(
            [
                *mas_cli_command(),
                "-c",
                str(config),
                "syn2mas",
                *([*options, *args] if options_first else [*args, *options]),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return invoke


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# --------------------------------------------------------------------- check


def test_check_succeeds_on_a_clean_setup(world, mas, syn2mas_cli):
    """No guest and no phone number: exit 0 and the success line on stdout (DB from --synapse-database-uri)."""
    clean = world.clone("DELETE FROM user_threepids WHERE medium <> 'email'", "DELETE FROM users WHERE is_guest <> 0")
    result = syn2mas_cli(mas.config_path, "check", database_uri=clean)
    assert result.returncode == syn2mas.EXIT_SUCCESS, result.stderr
    assert result.stdout.strip() == EMPTY_CHECK_OK
    assert "=====" not in result.stderr


def test_options_may_precede_the_subcommand(world, mas, syn2mas_cli):
    """The documented order ``syn2mas --synapse-config F ... check`` works too (upstream's ``docs/reference/cli/syn2mas.md``)."""
    clean = world.clone("DELETE FROM user_threepids WHERE medium <> 'email'", "DELETE FROM users WHERE is_guest <> 0")
    result = syn2mas_cli(mas.config_path, "check", database_uri=clean, options_first=True)
    assert result.returncode == syn2mas.EXIT_SUCCESS, result.stderr
    assert result.stdout.strip() == EMPTY_CHECK_OK


def test_check_loads_the_mas_schema_first(world, mas, syn2mas_cli, pg):
    """Both subcommands run the MAS migrations first: an empty database gets the schema."""
    pg.drop_database(mas.dbname)
    pg.create_database(mas.dbname, owner=MAS_ROLE)
    assert not mas.table_exists("users")
    clean = world.clone("DELETE FROM user_threepids WHERE medium <> 'email'", "DELETE FROM users WHERE is_guest <> 0")
    result = syn2mas_cli(mas.config_path, "check", database_uri=clean)
    assert result.returncode == syn2mas.EXIT_SUCCESS, result.stderr
    assert mas.table_exists("users") and mas.count("users") == 0


def test_check_warns_about_guests_and_phone_numbers(mas, syn2mas_cli):
    """Warnings only: exit 11 from ``check``, listed under the Warnings heading."""
    result = syn2mas_cli(mas.config_path, "check")
    assert result.returncode == syn2mas.EXIT_CHECK_WARNINGS, result.stderr
    assert "===== Errors =====" not in result.stderr
    assert "===== Warnings =====" in result.stderr
    assert (
        "• Synapse database contains 1 guests which will be migrated are not supported by MAS. See "
        "https://github.com/element-hq/matrix-authentication-service/issues/1445"
    ) in result.stderr
    assert (
        "• Synapse database contains 1 non-email 3PIDs (probably phone numbers), which will be migrated but are not "
        "supported by MAS."
    ) in result.stderr
    assert EMPTY_CHECK_OK not in result.stdout


WARNING_CASES = {
    "registration": (
        {"enable_registration": True},
        "Synapse config has registration enabled. This must be disabled after migration before bringing Synapse "
        "back online.",
    ),
    "user_consent": (
        {"user_consent": {"version": "1.0", "template_dir": "/nonexistent"}},
        "Synapse config has `user_consent` enabled. This should be disabled after migration.",
    ),
    "user_consent_without_tos": (
        {"user_consent": {"version": "1.0"}},
        "Synapse config has `user_consent` enabled but MAS has not been configured with terms of service.",
    ),
    "captcha": (
        {"enable_registration_captcha": True},
        "Synapse config has a registration CAPTCHA enabled, but no CAPTCHA has been configured in MAS.",
    ),
    "cas": ({"cas_config": {"enabled": True}}, "Synapse config contains CAS auth configuration which will need"),
    "saml2": ({"saml2_config": {"enabled": True}}, "Synapse config contains SAML2 auth configuration"),
    "jwt": ({"jwt_config": {"enabled": True}}, "Synapse config contains JWT auth configuration"),
    "password_provider": (
        {"password_config": {"localdb_enabled": False}},
        "Synapse config contains non-standard password provider plugin auth configuration",
    ),
}


@pytest.mark.parametrize("case", sorted(WARNING_CASES))
def test_check_config_warnings(case, world, mas, syn2mas_cli, tmp_path):
    """Each Synapse setting that only needs attention after the migration is a warning (exit 11)."""
    overlay, text = WARNING_CASES[case]
    extra = write_yaml(tmp_path / "overlay.yaml", overlay)
    result = syn2mas_cli(mas.config_path, "check", synapse_configs=[world.hs_yaml, world.oidc_fragment, extra])
    assert result.returncode == syn2mas.EXIT_CHECK_WARNINGS, result.stderr
    assert "===== Errors =====" not in result.stderr
    assert f"• {text}" in result.stderr


def _bcrypt_v1(**changes: Any) -> dict:
    return {
        "schemes": [
            dict({"version": 1, "algorithm": "bcrypt", "secret": PEPPER}, **changes),
            {"version": 2, "algorithm": "argon2id"},
        ]
    }


#: case -> (MAS top-level overrides, Synapse overlay, expected error text)
ERROR_CASES: dict[str, tuple[dict, dict, str]] = {
    "missing_v1_scheme": (
        {"passwords": {"schemes": [{"version": 2, "algorithm": "argon2id"}]}},
        {},
        "MAS config is missing a password hashing scheme with version '1'",
    ),
    "v1_not_bcrypt": (
        {"passwords": _bcrypt_v1(algorithm="argon2id")},
        {},
        "Password scheme version '1' in the MAS config must use the Bcrypt algorithm, so that Synapse passwords can "
        "be imported and will be compatible.",
    ),
    "wrong_pepper": (
        {"passwords": _bcrypt_v1(secret="another pepper")},
        {},
        "Password scheme version '1' in the MAS config must have the same secret as the `pepper` value from Synapse, "
        "so that Synapse passwords can be imported and will be compatible.",
    ),
    "guest_access": (
        {},
        {"allow_guest_access": True},
        "Guest support is enabled in the Synapse configuration. Guests aren't supported by MAS, but if you don't have "
        "any then you could disable the option. See https://github.com/element-hq/matrix-authentication-service/"
        "issues/1445",
    ),
    "3pid_changes": (
        {},
        {"enable_3pid_changes": True},
        "Synapse config has `enable_3pid_changes` explicitly enabled, which must be disabled or removed.",
    ),
    "login_via_existing_session": (
        {},
        {"login_via_existing_session": {"enabled": True}},
        "Synapse config has `login_via_existing_session.enabled` set to true, which must be disabled.",
    ),
    "homeserver_mismatch": (
        {"matrix": {"homeserver": "matrix.example.com", "secret": "s3cr3t", "endpoint": "http://127.0.0.1:8008/"}},
        {},
        'MAS configuration has the wrong `matrix.homeserver` set ("matrix.example.com"), it should match Synapse\'s '
        '`server_name` ("example.com")',
    ),
    "mas_missing_provider": (
        {
            "upstream_oauth2": {
                "providers": [
                    {"id": PROVIDER_ID, "client_id": "mas", "token_endpoint_auth_method": "none", "issuer": ISSUER}
                ]
            }
        },
        {},
        f"Synapse config contains an OpenID Connect or OAuth2 provider '{SYNAPSE_IDP_ID}' (issuer: \"{ISSUER}\") used "
        "by 1 users which must also be configured in the MAS configuration as an upstream provider.",
    ),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_check_errors(case, world, mas, syn2mas_cli, tmp_path):
    """Each blocking condition of upstream's ``synapse_reader/checks.rs`` is an error: exit 10, listed under the Errors heading."""
    overrides, overlay, text = ERROR_CASES[case]
    config = mas.write(**overrides)
    configs = [world.hs_yaml, world.oidc_fragment]
    if overlay:
        configs.append(write_yaml(tmp_path / "overlay.yaml", overlay))
    result = syn2mas_cli(config, "check", synapse_configs=configs)
    assert result.returncode == syn2mas.EXIT_CHECK_ERRORS, result.stderr
    assert "===== Errors =====\nThese issues prevent migrating from Synapse to MAS right now:\n" in result.stderr
    assert f"• {text}\n" in result.stderr
    assert EMPTY_CHECK_OK not in result.stdout


def test_check_pepper_file_is_compared_untrimmed(mas, syn2mas_cli, tmp_path):
    """A v1 ``secret_file`` is read verbatim: a trailing newline makes it differ from the pepper."""
    pepper_file = tmp_path / "pepper"
    pepper_file.write_text(PEPPER + "\n")
    config = mas.write(
        passwords={
            "schemes": [
                {"version": 1, "algorithm": "bcrypt", "secret_file": str(pepper_file)},
                {"version": 2, "algorithm": "argon2id"},
            ]
        }
    )
    result = syn2mas_cli(config, "check")
    assert result.returncode == syn2mas.EXIT_CHECK_ERRORS, result.stderr
    assert "must have the same secret as the `pepper` value from Synapse" in result.stderr

    pepper_file.write_text(PEPPER)
    assert syn2mas_cli(config, "check").returncode == syn2mas.EXIT_CHECK_WARNINGS


def test_check_provider_missing_from_synapse_config(world, mas, syn2mas_cli):
    """Links to a provider absent from the Synapse config: error, a warning with --ignore-missing-auth-providers."""
    text = (
        f"• Synapse database contains 1 users associated to the OpenID Connect or OAuth2 provider '{SYNAPSE_IDP_ID}' "
        "but the Synapse configuration does not contain this provider."
    )
    result = syn2mas_cli(mas.config_path, "check", synapse_configs=[world.hs_yaml])
    assert result.returncode == syn2mas.EXIT_CHECK_ERRORS, result.stderr
    assert text in result.stderr.split("===== Warnings =====")[0]

    result = syn2mas_cli(mas.config_path, "check", synapse_configs=[world.hs_yaml], ignore_missing=True)
    assert result.returncode == syn2mas.EXIT_CHECK_WARNINGS, result.stderr
    assert "===== Errors =====" not in result.stderr
    assert text in result.stderr.split("===== Warnings =====")[1]


def test_check_leftover_oauth_delegated_links(world, mas, syn2mas_cli):
    """``oauth-delegated`` rows from a previously configured MAS block the migration."""
    dsn = world.clone(
        "INSERT INTO user_external_ids (auth_provider, external_id, user_id) "
        "VALUES ('oauth-delegated', '01HXXXXXXXXXXXXXXXXXXXXXXX', '@alice:example.com')"
    )
    result = syn2mas_cli(mas.config_path, "check", database_uri=dsn)
    assert result.returncode == syn2mas.EXIT_CHECK_ERRORS, result.stderr
    assert (
        "• Synapse database has 1 mapping entries from a previously-configured MAS instance. If this is from a "
        "previous migration attempt, run the following SQL query against the Synapse database: `DELETE FROM "
        "user_external_ids WHERE auth_provider = 'oauth-delegated';` and then run the migration again."
    ) in result.stderr


def test_migrate_stops_on_check_errors(world, mas, syn2mas_cli, tmp_path):
    """``migrate`` runs the same checks: errors exit 10 and nothing is written."""
    extra = write_yaml(tmp_path / "guests.yaml", {"allow_guest_access": True})
    result = syn2mas_cli(mas.config_path, "migrate", synapse_configs=[world.hs_yaml, world.oidc_fragment, extra])
    assert result.returncode == syn2mas.EXIT_CHECK_ERRORS, result.stderr
    assert mas.count("users") == 0
    assert not mas.table_exists("syn2mas_restore_constraints")


def test_missing_synapse_config(mas, syn2mas_cli):
    """``--synapse-config`` is required."""
    result = syn2mas_cli(mas.config_path, "check", synapse_configs=[])
    assert result.returncode == syn2mas.EXIT_FAILURE
    assert "Please specify the path to the Synapse configuration file(s)." in result.stderr


def test_sqlite_synapse_is_unsupported(world, mas, syn2mas_cli, tmp_path):
    """Only the psycopg2 driver is supported."""
    extra = write_yaml(tmp_path / "sqlite.yaml", {"database": {"name": "sqlite3", "args": {"database": "/x.db"}}})
    result = syn2mas_cli(mas.config_path, "check", synapse_configs=[world.hs_yaml, extra])
    assert result.returncode == syn2mas.EXIT_FAILURE
    assert "Error: Synapse database configuration is invalid, cannot migrate." in result.stderr
    assert "syn2mas does not support the sqlite3 database driver" in result.stderr


def test_second_instance_is_refused(mas, syn2mas_cli):
    """The ``syn2mas-maswriter`` advisory lock lets one instance run at a time."""
    with mas.connect() as holder:
        assert holder.execute("SELECT pg_try_advisory_lock(%s)", (syn2mas.advisory_lock_key(),)).fetchone()[0]
        result = syn2mas_cli(mas.config_path, "check")
    assert result.returncode == syn2mas.EXIT_FAILURE
    assert "Failed to acquire syn2mas lock on the database." in result.stderr
    assert "This likely means that another syn2mas instance is already running!" in result.stderr


# ------------------------------------------------------------------- migrate

MIGRATED_TABLES = syn2mas.MAS_TABLES_AFFECTED_BY_MIGRATION


def assert_not_in_progress(mas: MasSide) -> None:
    for table in syn2mas.RESTORE_TABLES:
        assert not mas.table_exists(table), f"{table} left behind"
    for table in MIGRATED_TABLES:
        assert mas.table_exists(table), f"{table} is missing (still renamed?)"


def test_dry_run_leaves_the_mas_tables_empty_and_is_repeatable(mas, syn2mas_cli):
    """``--dry-run`` migrates everything, then empties the tables again; providers stay synced."""
    for _ in range(2):
        result = syn2mas_cli(mas.config_path, "migrate", "--dry-run")
        assert result.returncode == syn2mas.EXIT_SUCCESS, result.stderr
        assert_not_in_progress(mas)
        assert {table: mas.count(table) for table in MIGRATED_TABLES} == dict.fromkeys(MIGRATED_TABLES, 0)
    providers = mas.query("SELECT upstream_oauth_provider_id FROM upstream_oauth_providers")
    assert providers == [(ulid.to_uuid(PROVIDER_ID),)]


def test_dry_run_is_safe_while_synapse_runs(world, mas, syn2mas_cli):
    """A dry run only takes ACCESS SHARE locks, so it works next to a running Synapse."""
    world.server.start()
    try:
        result = syn2mas_cli(mas.config_path, "migrate", "--dry-run")
    finally:
        world.server.stop()
    assert result.returncode == syn2mas.EXIT_SUCCESS, result.stderr
    assert mas.count("users") == 0


def test_migrate_refuses_a_locked_synapse_table(world, mas, syn2mas_cli):
    """A real run locks the Synapse tables EXCLUSIVE NOWAIT: a writer holding a lock makes it fail at once.

    An idle Synapse holds no table locks, so only a Synapse caught mid-write
    trips this; stopping Synapse is still required for a consistent copy.
    """
    with world.pg.connect(world.dbname) as writer, writer.transaction():
        writer.execute("LOCK TABLE devices IN ROW EXCLUSIVE MODE")
        dry = syn2mas_cli(mas.config_path, "migrate", "--dry-run")
        real = syn2mas_cli(mas.config_path, "migrate")
    assert dry.returncode == syn2mas.EXIT_SUCCESS, dry.stderr
    assert real.returncode == syn2mas.EXIT_FAILURE
    assert "Error: database error whilst locking Synapse table `devices`" in real.stderr
    assert 'could not obtain lock on relation "devices"' in real.stderr
    assert mas.count("users") == 0


def _synapse_users(world: SynapseWorld) -> dict[str, tuple]:
    rows = world.query("SELECT name, password_hash, admin FROM users")
    return {name: (password_hash, admin) for name, password_hash, admin in rows}


def assert_fully_migrated(world: SynapseWorld, mas: MasSide) -> None:
    """Compare the MAS rows with the Synapse snapshot (upstream's ``crates/syn2mas``)."""
    assert_not_in_progress(mas)
    users = {
        row[0]: row[1:]
        for row in mas.query(
            "SELECT username, user_id, can_request_admin, is_guest, locked_at, deactivated_at, created_at FROM users"
        )
    }
    assert set(users) == {"alice", "bob", "carol", "12345"}, "appservice users are skipped"
    assert users["alice"][1] is True and users["bob"][1] is False
    assert users["12345"][2] is True
    assert users["carol"][4] is not None and users["carol"][4] == users["carol"][5], "deactivated at creation time"
    assert users["bob"][4] is None and users["bob"][3] is None
    for _, (user_id, *_rest, created_at) in users.items():
        assert ulid.from_uuid(user_id)[:10] == ulid.encode(int(created_at.timestamp() * 1000) << 80)[:10]

    synapse_users = _synapse_users(world)
    passwords = mas.query(
        "SELECT u.username, p.hashed_password, p.version FROM user_passwords p JOIN users u USING (user_id)"
    )
    by_user = {username: (hashed, version) for username, hashed, version in passwords}
    assert by_user["alice"] == (synapse_users["@alice:example.com"][0], 1), "hash copied verbatim as version 1"
    assert by_user["bob"] == (synapse_users["@bob:example.com"][0], 1)
    assert by_user["alice"][0].startswith("$2")

    assert mas.query("SELECT u.username, e.email FROM user_emails e JOIN users u USING (user_id)") == [
        ("bob", "bob@example.org")
    ]
    assert mas.query(
        "SELECT u.username, t.medium, t.address FROM user_unsupported_third_party_ids t JOIN users u USING (user_id)"
    ) == [("bob", "msisdn", "15551234567")]
    assert mas.query(
        "SELECT u.username, l.subject, l.upstream_oauth_provider_id FROM upstream_oauth_links l "
        "JOIN users u USING (user_id)"
    ) == [("bob", SUBJECT, ulid.to_uuid(PROVIDER_ID))]

    sessions = mas.query(
        "SELECT u.username, s.device_id, s.is_synapse_admin FROM compat_sessions s JOIN users u USING (user_id) "
        "ORDER BY 1, 2"
    )
    devices = world.query(
        "SELECT user_id, device_id FROM devices WHERE NOT hidden AND user_id IN ('@alice:example.com', "
        "'@bob:example.com') ORDER BY 1, 2"
    )
    assert [(username, device) for username, device, _ in sessions] == [
        (user_id[1:].split(":")[0], device) for user_id, device in devices
    ]
    assert all(admin == (username == "alice") for username, _, admin in sessions)

    tokens = dict(
        mas.query(
            "SELECT t.access_token, u.username FROM compat_access_tokens t JOIN compat_sessions s "
            "USING (compat_session_id) JOIN users u USING (user_id)"
        )
    )
    assert tokens[world.tokens["alice"]] == "alice"
    assert tokens[world.tokens["bob"]] == "bob"
    assert tokens[world.tokens["bob-refreshable"]] == "bob"
    expiring = mas.query(
        "SELECT expires_at FROM compat_access_tokens WHERE access_token = %s", (world.tokens["bob-refreshable"],)
    )
    assert expiring[0][0] is not None, "expires_at comes from valid_until_ms"
    refresh = mas.query(
        "SELECT a.access_token FROM compat_refresh_tokens r JOIN compat_access_tokens a USING (compat_access_token_id) "
        "WHERE r.refresh_token = %s",
        (world.refresh_token,),
    )
    assert refresh == [(world.tokens["bob-refreshable"],)]


def test_migrate_copies_the_synapse_data(world, mas, syn2mas_cli):
    """A real migration writes every kind of row, then a second run refuses the non-empty database."""
    result = syn2mas_cli(mas.config_path, "migrate")
    assert result.returncode == syn2mas.EXIT_SUCCESS, result.stderr
    assert "Starting new syn2mas migration" in result.stderr
    assert_fully_migrated(world, mas)

    again = syn2mas_cli(mas.config_path, "migrate")
    assert again.returncode == syn2mas.EXIT_FAILURE
    assert (
        "The MAS database is not empty: rows found in at least `users`. Please drop and recreate the database, "
        "then try again."
    ) in again.stderr
    assert mas.count("users") == 4


def test_migrate_skips_links_of_unknown_providers_when_told_to(world, mas, syn2mas_cli):
    """With --ignore-missing-auth-providers, links to a provider neither config knows are dropped.

    The migration proceeds despite the warnings.  (A provider still mapped in
    MAS through ``synapse_idp_id`` keeps its links: the mapping comes from MAS.)
    """
    config = mas.write(upstream_oauth2={"providers": []})
    result = syn2mas_cli(config, "migrate", synapse_configs=[world.hs_yaml], ignore_missing=True)
    assert result.returncode == syn2mas.EXIT_SUCCESS, result.stderr
    assert "===== Warnings =====" in result.stderr
    assert mas.count("users") == 4
    assert mas.count("upstream_oauth_links") == 0

    kept = mas_config(mas.pg, mas.dbname)
    mas.query("TRUNCATE " + ", ".join(MIGRATED_TABLES) + " CASCADE")
    result = syn2mas_cli(mas.write(**kept), "migrate", synapse_configs=[world.hs_yaml], ignore_missing=True)
    assert result.returncode == syn2mas.EXIT_SUCCESS, result.stderr
    assert mas.count("upstream_oauth_links") == 1


@mas_target.double_only
def test_interrupted_migration_is_reset_by_the_next_run(world, mas, syn2mas_cli):
    """A run that dies half-way leaves the marker tables; the next run resets and completes."""
    failed = syn2mas_cli(mas.config_path, "migrate", fault=syn2mas.FAULT_MIGRATE_EXIT1)
    assert failed.returncode == syn2mas.EXIT_FAILURE
    assert "Error: " in failed.stderr
    assert mas.table_exists("syn2mas_restore_constraints") and mas.table_exists("syn2mas_restore_indices")
    assert not mas.table_exists("users"), "the target tables stay renamed while the migration is unfinished"
    assert mas.count("syn2mas__users") == 4

    resumed = syn2mas_cli(mas.config_path, "migrate")
    assert resumed.returncode == syn2mas.EXIT_SUCCESS, resumed.stderr
    assert RESETTING in resumed.stderr
    assert_fully_migrated(world, mas)
