"""Users: `mas:users` (state) and `salt-call mas_user.register` against the
MAS double (real MAS database) and a real Synapse wired by the formula.

Passwords go through MAS's admin API in request bodies: never in a process's
arguments or Salt's output; re-applying changes nothing; registration is
refused while migrating (syn2mas needs an empty MAS database).
"""

import time

import pytest
import requests

from harness.util import free_port
from pillars import deep_update

pytestmark = pytest.mark.integration

BOT_PASSWORD = "Bot-Passw0rd-In-Pillar-77"
ALICE_PASSWORD = "Alice-Passw0rd-From-File-31"


def rows(pg, sql, *params):
    return pg.query("mas_test_users", sql, params or None)


def compat_login(mas, username, password, attempts=20):
    """A password login on MAS's compatibility API. MAS provisions a new user
    in Synapse from its job queue, so the first seconds may fail."""
    for _ in range(attempts):
        resp = requests.post(
            mas.url("compat", "/_matrix/client/v3/login"),
            timeout=30,
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": username},
                "password": password,
            },
        )
        if resp.status_code != 500:
            return resp
        time.sleep(0.5)
    return resp


def test_users_from_pillar_are_registered_once(deployment, pg):
    minion, mas = deployment["minion"], deployment["mas"]
    pillar = deep_update(
        deployment["pillar"],
        {
            "users": [
                {"username": "bot", "password": BOT_PASSWORD, "admin": True, "emails": ["bot@example.com"]},
                {"username": "sso-only"},
            ]
        },
    )
    predicted = minion.apply(pillar, test=True)
    assert predicted.returncode == 0, predicted.output
    assert predicted.by_id("mas-users-mas_user-present-bot")["changes"] == {
        "user": {"old": None, "new": "bot"},
        "password": {"old": None, "new": "set"},
        "admin": {"old": False, "new": True},
        "emails": {"old": [], "new": ["bot@example.com"]},
    }
    assert rows(pg, "SELECT username FROM users WHERE username = 'bot'") == []

    res = minion.apply(pillar, log_level="debug")
    assert res.returncode == 0, res.output
    assert BOT_PASSWORD not in res.output
    assert rows(pg, "SELECT can_request_admin FROM users WHERE username = %s", "bot") == [(True,)]
    assert rows(pg, "SELECT email FROM user_emails JOIN users USING (user_id) WHERE username = %s", "bot") == [
        ("bot@example.com",)
    ]
    assert rows(
        pg, "SELECT count(*) FROM user_passwords JOIN users USING (user_id) WHERE username = %s", "sso-only"
    ) == [(0,)]
    login = compat_login(mas, "bot", BOT_PASSWORD)
    assert login.status_code == 200, login.text + mas.log()

    again = minion.apply(pillar)
    assert again.returncode == 0, again.output
    assert again.changed == []


def test_register_user_from_the_cli_is_idempotent(deployment, pg, tmp_path):
    minion, mas = deployment["minion"], deployment["mas"]
    minion.set_pillar({"mas": deployment["pillar"]})
    password_file = tmp_path / "alice.pw"
    password_file.write_text(ALICE_PASSWORD + "\n")
    password_file.chmod(0o600)
    res = minion.run(
        "mas_user.register",
        "@alice:example.com",
        f"password_file={password_file}",
        "emails=[alice@example.com]",
        log_level="debug",
    )
    assert res.returncode == 0, res.output
    assert res.data["created"] is True and res.data["username"] == "alice"
    assert ALICE_PASSWORD not in res.output
    assert compat_login(mas, "alice", ALICE_PASSWORD).status_code == 200

    again = minion.run("mas_user.register", "alice", f"password_file={password_file}", "emails=[alice@example.com]")
    assert again.returncode == 0, again.output
    assert again.data["created"] is False and again.data["changes"] == {}

    promoted = minion.run("mas_user.register", "alice", "admin=True")
    assert promoted.data["changes"] == {"admin": {"old": False, "new": True}}
    assert rows(pg, "SELECT can_request_admin FROM users WHERE username = %s", "alice") == [(True,)]
    info = minion.run("mas_user.info", "alice")
    assert info.data["admin"] is True and info.data["emails"] == ["alice@example.com"]


def test_bad_arguments_and_migration_guard(deployment, pg):
    minion = deployment["minion"]
    minion.set_pillar({"mas": deployment["pillar"]})
    bad = minion.run("mas_user.register", "Not A Localpart")
    assert bad.returncode != 0 and "is not a valid Matrix localpart" in bad.output
    both = minion.run("mas_user.register", "carol", "password=x", "password_file=/nonexistent")
    assert both.returncode != 0 and "at most one of password, password_file, password_pillar_key" in both.output

    migrating = deep_update(
        deployment["pillar"],
        {"migration_in_progress": True, "users": [{"username": "dave", "password": "Dave-Passw0rd-1"}]},
    )
    minion.set_pillar({"mas": migrating})
    refused = minion.run("mas_user.register", "carol")
    assert refused.returncode != 0 and "mas:migration_in_progress is true" in refused.output
    res = minion.apply(migrating, sls="mas.users")
    assert res.returncode == 0, res.output
    assert "not registered while mas:migration_in_progress" in res.by_id("mas-users-test-nop")["name"]
    assert rows(pg, "SELECT username FROM users WHERE username IN ('carol', 'dave')") == []


def test_unreachable_mas_is_a_clear_failure(deployment):
    minion = deployment["minion"]
    pillar = deep_update(deployment["pillar"], {"http": {"web_bind": f"127.0.0.1:{free_port()}"}})
    minion.set_pillar({"mas": pillar})
    res = minion.run("mas_user.info", "bot")
    assert res.returncode != 0
    assert "MAS is not reachable at http://127.0.0.1:" in res.output
