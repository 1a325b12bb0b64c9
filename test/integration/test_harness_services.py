"""Smoke tests of the integration harness itself: PostgreSQL, Synapse, nginx.

They prove that the services the formula's integration tests rely on start,
answer and clean up; the session-scoped fixtures keep the whole file fast.
"""

import secrets

import pytest
import requests

from harness.synapse import SynapseAPIError

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------- PostgreSQL


def test_postgres_answers_queries(pg):
    """The cluster listens on loopback and runs SQL through psycopg and psql."""
    assert pg.host == "127.0.0.1"
    assert pg.query("postgres", "SELECT 1 + 1") == [(2,)]
    assert pg.psql("postgres", "SELECT 'psql-ok'").stdout.count("psql-ok") == 1


def test_postgres_roles_and_databases(pg):
    """Roles are idempotent; a Synapse-style database gets the C collation."""
    pg.create_role("harness_probe", password="first")
    pg.create_role("harness_probe", password="second")
    pg.create_database("harness_probe_db", owner="harness_probe", synapse=True)
    try:
        with pg.connect("harness_probe_db", user="harness_probe") as conn:
            row = conn.execute("SELECT current_user, current_setting('lc_collate')").fetchone()
        assert row == ("harness_probe", "C")
        assert pg.dsn("harness_probe_db", "harness_probe", "p@ss word").endswith(
            f"harness_probe:p%40ss%20word@127.0.0.1:{pg.port}/harness_probe_db"
        )
    finally:
        pg.drop_database("harness_probe_db")
    assert not pg.database_exists("harness_probe_db")


def test_load_mas_schema_creates_users_table(pg):
    """The upstream MAS schema loads into a fresh database owned by a plain role."""
    pg.create_role("mas_probe", password="mas")
    pg.create_database("mas_schema_probe", owner="mas_probe")
    try:
        pg.load_mas_schema("mas_schema_probe", user="mas_probe")
        rows = pg.query(
            "mas_schema_probe",
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name = 'users' AND column_name = 'can_request_admin'",
        )
        assert rows == [("can_request_admin",)]
    finally:
        pg.drop_database("mas_schema_probe")


# ------------------------------------------------------------------- Synapse


@pytest.fixture(scope="module")
def synapse_users(synapse):
    """An admin and a normal user registered once through the shared-secret API."""
    suffix = secrets.token_hex(3)
    admin = synapse.register_user(f"admin_{suffix}", "admin-pass", admin=True)
    alice = synapse.register_user(f"alice_{suffix}", "alice-pass")
    return {"admin": (admin, "admin-pass"), "alice": (alice, "alice-pass")}


def test_synapse_registers_and_logs_in(synapse, synapse_users):
    """Both users log in with their password and the tokens pass whoami."""
    for info, password in synapse_users.values():
        localpart = info["user_id"][1:].split(":", 1)[0]
        token = synapse.login(localpart, password)
        assert synapse.whoami(token)["user_id"] == info["user_id"]
        assert synapse.whoami(info["access_token"])["user_id"] == info["user_id"]
    admin = synapse_users["admin"][0]
    assert synapse.admin_get_user(admin["access_token"], admin["user_id"])["admin"] is True


def test_synapse_register_twice_is_user_in_use(synapse, synapse_users):
    """Shared-secret registration of an existing localpart answers M_USER_IN_USE."""
    localpart = synapse_users["alice"][0]["user_id"][1:].split(":", 1)[0]
    with pytest.raises(SynapseAPIError) as excinfo:
        synapse.register_user(localpart, "other-pass")
    assert (excinfo.value.status, excinfo.value.errcode) == (400, "M_USER_IN_USE")


def test_synapse_admin_threepids_and_external_ids(synapse, synapse_users):
    """Threepids and external IDs added as admin are kept (lists are merged)."""
    token = synapse_users["admin"][0]["access_token"]
    user_id = synapse_users["alice"][0]["user_id"]
    synapse.add_threepid(token, user_id, "email", "alice@example.org")
    synapse.add_external_id(token, user_id, "oidc-one", "sub-1")
    synapse.add_external_id(token, user_id, "oidc-two", "sub-2")
    user = synapse.admin_get_user(token, user_id)
    assert [(t["medium"], t["address"]) for t in user["threepids"]] == [("email", "alice@example.org")]
    assert sorted((e["auth_provider"], e["external_id"]) for e in user["external_ids"]) == [
        ("oidc-one", "sub-1"),
        ("oidc-two", "sub-2"),
    ]


def test_synapse_check_config_reports_causes(synapse_factory):
    """check_config passes a clean config and shows the pydantic cause of a bad drop-in."""
    server = synapse_factory()
    assert server.check_config() == (True, "Config parses OK!")
    (server.conf_d / "50-mas.yaml").write_text(
        "matrix_authentication_service:\n  enabled: 'true'\n  secret: some-secret\n"
    )
    ok, output = server.check_config()
    assert not ok
    assert "Could not validate Matrix Authentication Service configuration" in output
    assert "Input should be a valid boolean" in output


# --------------------------------------------------------------------- nginx


def test_nginx_routes_to_upstreams(nginx_factory, echo_upstream, tmp_path):
    """nginx -t passes; / goes to the Synapse upstream, an included location elsewhere."""
    synapse_up = echo_upstream("synapse")
    other_up = echo_upstream("mas")
    snippet = tmp_path / "mas-routes.conf"
    snippet.write_text(
        f"location ~ ^/_matrix/client/[^/]+/(login|logout|refresh) {{\n    proxy_pass {other_up.url};\n}}\n"
    )
    nginx = nginx_factory(synapse_upstream=synapse_up.url, include_files=[snippet])
    ok, output = nginx.test_config()
    assert ok, output
    assert "test is successful" in output
    nginx.start()

    got = requests.get(f"{nginx.base_url}/_matrix/client/versions?x=1", timeout=10).json()
    assert got["upstream"] == "synapse"
    assert got["path"] == "/_matrix/client/versions?x=1"
    assert got["method"] == "GET"
    assert got["headers"]["X-Forwarded-For"] == "127.0.0.1"

    got = requests.post(f"{nginx.base_url}/_matrix/client/v3/login", json={}, timeout=10).json()
    assert (got["upstream"], got["path"], got["method"]) == ("mas", "/_matrix/client/v3/login", "POST")

    snippet.write_text("")
    nginx.reload()
    got = requests.post(f"{nginx.base_url}/_matrix/client/v3/login", json={}, timeout=10).json()
    assert got["upstream"] == "synapse"
    nginx.stop()
    assert not nginx.running


def test_nginx_test_config_reports_errors(nginx_factory, tmp_path):
    """A broken include makes nginx -t fail with nginx's own message."""
    snippet = tmp_path / "broken.conf"
    snippet.write_text("location / {\n")
    ok, output = nginx_factory(include_files=[snippet]).test_config()
    assert not ok
    assert "unexpected end of file" in output
