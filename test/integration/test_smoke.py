"""The full cast together (issue: Integration harness, "Done when").

PostgreSQL is up; the real Synapse registers an admin and a normal user and
logs them in; the formula, applied with the real salt-call, renders a MAS
config that the MAS double accepts (`bin/mas-cli config check`) and serves;
the real nginx, with the formula's snippet, sends `/_matrix/client/v3/login`
to the double and `/_matrix/client/v3/versions` to Synapse.
"""

import subprocess

import pytest
import requests

from harness.util import free_port
from mas_double import MAS_CLI, run_server
from mas_double.runner import cli_env
from pillars import deep_update, wired_pillar

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mas_db(pg):
    pg.create_database("mas_smoke")
    pg.load_mas_schema("mas_smoke")
    yield "mas_smoke"
    pg.drop_database("mas_smoke")


def test_full_cast(pg, mas_db, synapse, salt_minion, minimal_pillar, nginx_factory, tmp_path):
    # Synapse (PostgreSQL-backed) registers an admin and a normal user; both log in
    suffix = tmp_path.name[-6:].replace("_", "").lower()
    admin = synapse.register_user(f"smokeadmin{suffix}", "Admin-Passw0rd!", admin=True)
    user = synapse.register_user(f"smokeuser{suffix}", "User-Passw0rd!")
    for who, password in ((admin, "Admin-Passw0rd!"), (user, "User-Passw0rd!")):
        token = synapse.login(who["user_id"].split(":")[0][1:], password)
        assert synapse.whoami(token)["user_id"] == who["user_id"]

    # the formula renders MAS's config (binary runtime = the double's mas-cli)
    web, internal = free_port(), free_port()
    pillar = deep_update(
        minimal_pillar,
        {
            "user": "root",
            "group": "root",
            "binary": str(MAS_CLI),
            "http": {"web_bind": f"127.0.0.1:{web}", "internal_bind": f"127.0.0.1:{internal}"},
            "database": {"host": "127.0.0.1", "port": pg.port, "name": mas_db, "user": pg.superuser},
            "synapse": {"endpoint": synapse.base_url + "/"},
            "proxy": {"nginx": {"mas_upstream": f"http://127.0.0.1:{web}"}},
        },
    )
    res = salt_minion.apply(pillar)
    assert res.returncode == 0, res.output
    base = tmp_path / "srv" / "mas"
    config_file = base / "config" / "config.yaml"

    # the double answers `mas-cli config check` through the formula's wrapper
    check = subprocess.run(
        [str(base / "bin" / "mas-cli"), "config", "check"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    assert "Configuration file looks good" in check.stderr

    # nginx with the formula's snippet in front of Synapse and the double
    snippet = tmp_path / "nginx" / "mas.conf"
    with run_server([config_file], log_path=tmp_path / "mas.log") as mas:
        assert requests.get(mas.url("health", "/health"), timeout=10).text == "ok"
        proxy = nginx_factory(synapse_upstream=synapse.base_url, include_files=[snippet])
        ok, output = proxy.test_config()
        assert ok, output
        proxy.start()
        try:
            login = requests.get(proxy.base_url + "/_matrix/client/v3/login", timeout=10)
            assert login.status_code == 200, login.text
            flows = login.json()["flows"]
            assert any(f["type"] == "m.login.sso" and f.get("oauth_aware_preferred") for f in flows), flows
            # /_matrix/client/v3/versions lands on Synapse: the same answer as Synapse's own
            for path in ("/_matrix/client/v3/versions", "/_matrix/client/versions"):
                via_proxy = requests.get(proxy.base_url + path, timeout=10)
                direct = requests.get(synapse.base_url + path, timeout=10)
                assert (via_proxy.status_code, via_proxy.json()) == (direct.status_code, direct.json())
                assert requests.get(mas.url("compat", path), timeout=10).status_code != direct.status_code or (
                    path != "/_matrix/client/versions"
                )
            assert "v1.1" in requests.get(proxy.base_url + "/_matrix/client/versions", timeout=10).json()["versions"]
        finally:
            proxy.stop()


def test_register_user_wrapper_end_to_end(pg, salt_minion, synapse_factory, nginx_factory, tmp_path):
    """The seed's `bin/register-user <user> <password> <0|1>` on a deployment
        the formula wired: the user exists in MAS (admin flag set, as the formula's
    own `mas_user.info` reads it through the admin API), the
        double's worker provisions it in the real Synapse, and a password login
        through nginx (compat route -> MAS) gives a token that Synapse accepts
        (introspection -> MAS)."""
    pg.create_database("mas_e2e")
    pg.load_mas_schema("mas_e2e")
    synapse = synapse_factory(database="sqlite")
    pillar = wired_pillar(tmp_path, pg, "mas_e2e", synapse, free_port(), free_port())
    res = salt_minion.apply(pillar)
    assert res.returncode == 0, res.output
    base = tmp_path / "mas"
    assert (synapse.conf_d / "matrix-authentication-service.yaml").is_file()
    try:
        with run_server([base / "config" / "config.yaml"], log_path=tmp_path / "mas.log") as mas:
            synapse.start()
            reg = subprocess.run(
                [str(base / "bin" / "register-user"), "alice", "Alice-Passw0rd-42", "1"],
                capture_output=True,
                text=True,
                env=cli_env(),
                timeout=120,
                check=False,
            )
            assert reg.returncode == 0, reg.stderr + mas.log()
            info = salt_minion.run("mas_user.info", "alice")
            assert info.returncode == 0 and info.data["admin"] is True, info.output
            again = subprocess.run(
                [str(base / "bin" / "register-user"), "alice", "Alice-Passw0rd-42", "1"],
                capture_output=True,
                text=True,
                env=cli_env(),
                timeout=120,
                check=False,
            )
            assert again.returncode == 1 and "User already exists" in again.stderr

            proxy = nginx_factory(synapse_upstream=synapse.base_url, include_files=[tmp_path / "nginx" / "mas.conf"])
            proxy.start()
            try:
                login = requests.post(
                    proxy.base_url + "/_matrix/client/v3/login",
                    timeout=30,
                    json={
                        "type": "m.login.password",
                        "identifier": {"type": "m.id.user", "user": "alice"},
                        "password": "Alice-Passw0rd-42",
                    },
                )
                assert login.status_code == 200, login.text + mas.log()
                token = login.json()["access_token"]
                whoami = requests.get(
                    proxy.base_url + "/_matrix/client/v3/account/whoami",
                    timeout=30,
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert whoami.status_code == 200, whoami.text + mas.log()
                assert whoami.json()["user_id"] == "@alice:example.com"
            finally:
                proxy.stop()
    finally:
        synapse.stop()
