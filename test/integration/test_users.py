"""Users while MAS is authoritative: `mas:users` (states), `salt-call mas_user.*`,
registration tokens and bot tokens against the MAS double (real MAS database)
and a real Synapse wired by the formula (issue 11; the Synapse phase is in
test_users_synapse.py).

Passwords go through MAS's admin API in request bodies: never in a process's
arguments or Salt's output; re-applying changes nothing; every state predicts
under test=True without touching anything.
"""

import json
import os
import subprocess
import threading
import time

import pytest
import requests

from harness.util import free_port
from pillars import deep_update

pytestmark = pytest.mark.integration

BOT_PASSWORD = "Bot-Passw0rd-In-Pillar-77"
ALICE_PASSWORD = "Alice-Passw0rd-From-File-31"
CAROL_PASSWORD = "Carol-Passw0rd-Number-One-42"
CAROL_NEW_PASSWORD = "Carol-Passw0rd-Number-Two-43"
WEAK_PASSWORD = "abcdefgh12"


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


def introspect(deployment, token):
    """MAS's introspection answer for ``token``, asked as the formula's admin client."""
    secret = (deployment["root"] / "mas" / "config" / "secrets" / "admin_client_secret").read_text().strip()
    resp = requests.post(
        deployment["mas"].url("oauth", "/oauth2/introspect"),
        auth=("00000000000000000SA1TADM1N", secret),
        data={"token": token},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


class CmdlineWatch:
    """Sample every process's argument list (``/proc/*/cmdline``) while a command runs."""

    def __init__(self, *needles):
        self.needles = [n.encode() for n in needles]
        self.found = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as handle:
                        cmdline = handle.read()
                except OSError:
                    continue
                if any(n in cmdline for n in self.needles):
                    self.found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
            self.samples += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


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
    state = predicted.by_id("mas-users-mas_user-present-bot")
    assert state["changes"] == {
        "user": {"old": None, "new": "bot"},
        "password": {"old": None, "new": "set"},
        "admin": {"old": False, "new": True},
        "emails": {"old": [], "new": ["bot@example.com"]},
    }
    assert state["comment"] == "User bot would be registered in MAS"
    assert rows(pg, "SELECT username FROM users WHERE username = 'bot'") == []

    with CmdlineWatch(BOT_PASSWORD) as watch:
        res = minion.apply(pillar, log_level="debug")
    assert res.returncode == 0, res.output
    assert watch.samples > 0 and watch.found == []
    assert BOT_PASSWORD not in res.output
    assert res.by_id("mas-users-mas_user-present-bot")["comment"] == "User bot registered in MAS"
    assert rows(pg, "SELECT can_request_admin FROM users WHERE username = %s", "bot") == [(True,)]
    assert rows(pg, "SELECT email FROM user_emails JOIN users USING (user_id) WHERE username = %s", "bot") == [
        ("bot@example.com",)
    ]
    # sso-only exists, without a password (a count of its passwords alone would hold for a user never created)
    assert rows(pg, "SELECT can_request_admin FROM users WHERE username = %s", "sso-only") == [(False,)]
    assert rows(
        pg, "SELECT count(*) FROM user_passwords JOIN users USING (user_id) WHERE username = %s", "sso-only"
    ) == [(0,)]
    login = compat_login(mas, "bot", BOT_PASSWORD)
    assert login.status_code == 200, login.text + mas.log()

    again = minion.apply(pillar)
    assert again.returncode == 0, again.output
    assert again.changed == []
    assert again.by_id("mas-users-mas_user-present-bot")["comment"] == "User bot is already as wanted in MAS"
    assert again.by_id("mas-users-mas_user-sessions_closed")["comment"] == "Closed the sessions with MAS"


def test_register_user_from_the_cli_is_idempotent(deployment, pg, tmp_path):
    minion, mas = deployment["minion"], deployment["mas"]
    minion.set_pillar({"mas": deployment["pillar"]})
    password_file = tmp_path / "alice.pw"
    password_file.write_text(ALICE_PASSWORD + "\n")
    password_file.chmod(0o600)
    with CmdlineWatch(ALICE_PASSWORD) as watch:
        res = minion.run(
            "mas_user.register",
            "@alice:example.com",
            f"password_file={password_file}",
            "emails=[alice@example.com]",
            log_level="debug",
        )
    assert res.returncode == 0, res.output
    assert watch.samples > 0 and watch.found == []
    assert res.data["created"] is True and res.data["username"] == "alice" and res.data["authority"] == "mas"
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
    assert info.data["authority"] == "mas"


def test_lifecycle_on_mas(deployment, pg, tmp_path):
    """set_password, lock/unlock, deactivate and add_email, each predicted under test=True first."""
    minion, mas = deployment["minion"], deployment["mas"]
    base = deep_update(deployment["pillar"], {"users": [{"username": "carol", "password": CAROL_PASSWORD}]})

    def apply(test=False, **carol):
        pillar = deep_update(base, {"users": [dict({"username": "carol", "password": CAROL_PASSWORD}, **carol)]})
        res = minion.apply(pillar, sls="mas.users", test=test)
        assert res.returncode == 0, res.output
        assert CAROL_PASSWORD not in res.output and CAROL_NEW_PASSWORD not in res.output
        return res

    def state(res):
        return res.by_id("mas-users-mas_user-present-carol")

    assert state(apply())["changes"]["user"] == {"old": None, "new": "carol"}
    assert compat_login(mas, "carol", CAROL_PASSWORD).status_code == 200

    # a new password from pillar with password_update: always
    new = {"password": CAROL_NEW_PASSWORD, "password_update": "always"}
    predicted = state(apply(test=True, **new))
    assert predicted["result"] is None and predicted["changes"] == {"password": {"old": "set", "new": "updated"}}
    assert compat_login(mas, "carol", CAROL_PASSWORD).status_code == 200
    assert state(apply(**new))["changes"] == {"password": {"old": "set", "new": "updated"}}
    assert compat_login(mas, "carol", CAROL_NEW_PASSWORD).status_code == 200
    assert compat_login(mas, "carol", CAROL_PASSWORD).status_code == 403
    assert state(apply(**new))["changes"] == {}, "the same password is not set again"

    # lock, then unlock
    predicted = state(apply(test=True, locked=True, **new))
    assert predicted["changes"] == {"locked": {"old": False, "new": True}}
    assert compat_login(mas, "carol", CAROL_NEW_PASSWORD).status_code == 200
    assert state(apply(locked=True, **new))["changes"] == {"locked": {"old": False, "new": True}}
    refused = compat_login(mas, "carol", CAROL_NEW_PASSWORD)
    assert refused.status_code == 401 and refused.json()["errcode"] == "M_USER_LOCKED"
    assert state(apply(locked=False, **new))["changes"] == {"locked": {"old": True, "new": False}}
    assert compat_login(mas, "carol", CAROL_NEW_PASSWORD).status_code == 200

    # the same from the CLI: mas_user.lock, unlock and set_admin, each seen in MAS's database
    locked = minion.run("mas_user.lock", "carol")
    assert locked.data["changes"] == {"locked": {"old": False, "new": True}}, locked.output
    assert rows(pg, "SELECT locked_at IS NOT NULL FROM users WHERE username = 'carol'") == [(True,)]
    assert minion.run("mas_user.lock", "carol").data["changes"] == {}
    unlocked = minion.run("mas_user.unlock", "carol")
    assert unlocked.data["changes"] == {"locked": {"old": True, "new": False}}, unlocked.output
    assert rows(pg, "SELECT locked_at IS NOT NULL FROM users WHERE username = 'carol'") == [(False,)]
    promoted = minion.run("mas_user.set_admin", "carol")
    assert promoted.data["changes"] == {"admin": {"old": False, "new": True}}, promoted.output
    assert rows(pg, "SELECT can_request_admin FROM users WHERE username = 'carol'") == [(True,)]
    demoted = minion.run("mas_user.set_admin", "carol", "admin=False")
    assert demoted.data["changes"] == {"admin": {"old": True, "new": False}}, demoted.output
    assert rows(pg, "SELECT can_request_admin FROM users WHERE username = 'carol'") == [(False,)]

    # add_email: a verified email (the seed's verify-email); test=True first
    predicted = minion.apply(deep_update(base, {}), sls="mas.users", test=True)
    assert state(predicted)["changes"] == {}
    email = {"emails": ["carol@example.com"], **new}
    assert state(apply(test=True, **email))["changes"] == {"emails": {"old": [], "new": ["carol@example.com"]}}
    assert rows(pg, "SELECT count(*) FROM user_emails JOIN users USING (user_id) WHERE username = 'carol'") == [(0,)]
    apply(**email)
    info = minion.run("mas_user.info", "carol").data
    assert info["emails"] == ["carol@example.com"]
    removed = minion.run("mas_user.remove_email", "carol", "carol@example.com")
    assert removed.data["changes"] == {"emails": {"old": ["carol@example.com"], "new": []}}
    added = minion.run("mas_user.add_email", "carol", "carol@example.com")
    assert added.data["changes"] == {"emails": {"old": [], "new": ["carol@example.com"]}}
    assert minion.run("mas_user.add_email", "carol", "carol@example.com").data["changes"] == {}

    # set_password from the CLI (file): never in argv
    password_file = tmp_path / "carol.pw"
    password_file.write_text(CAROL_PASSWORD + "\n")
    with CmdlineWatch(CAROL_PASSWORD) as watch:
        res = minion.run("mas_user.set_password", "carol", f"password_file={password_file}", log_level="debug")
    assert res.returncode == 0 and watch.found == [] and CAROL_PASSWORD not in res.output
    assert compat_login(mas, "carol", CAROL_PASSWORD).status_code == 200

    # deactivate (mas_user.absent): predicted, then done; MAS keeps the user
    gone = deep_update(base, {"users": [{"username": "carol", "absent": True}]})
    predicted = minion.apply(gone, sls="mas.users", test=True)
    ret = predicted.by_id("mas-users-mas_user-absent-carol")
    assert ret["result"] is None and ret["changes"] == {"deactivated": {"old": False, "new": True}}
    assert compat_login(mas, "carol", CAROL_PASSWORD).status_code == 200
    res = minion.apply(gone, sls="mas.users")
    ret = res.by_id("mas-users-mas_user-absent-carol")
    assert ret["changes"] == {"deactivated": {"old": False, "new": True}} and "the name stays taken" in ret["comment"]
    assert compat_login(mas, "carol", CAROL_PASSWORD).status_code == 403
    assert rows(pg, "SELECT deactivated_at IS NOT NULL FROM users WHERE username = 'carol'") == [(True,)]
    assert minion.apply(gone, sls="mas.users").changed == []


def test_registration_tokens_from_pillar(deployment, pg):
    minion = deployment["minion"]
    tokens_dir = deployment["root"] / "mas" / "registration-tokens"
    pillar = deep_update(
        deployment["pillar"],
        {
            "registration_tokens": {
                "friends": {"usage_limit": 5, "expires": "2031-01-31T00:00:00Z"},
                "open": None,
            }
        },
    )
    predicted = minion.apply(pillar, sls="mas.users", test=True)
    assert predicted.returncode == 0, predicted.output
    friends = predicted.by_id("mas-users-mas_user-registration_token-friends")
    assert friends["result"] is None and friends["changes"]["token"] == {"old": None, "new": "created"}
    assert not tokens_dir.exists()

    res = minion.apply(pillar, sls="mas.users")
    assert res.returncode == 0, res.output
    value = (tokens_dir / "friends").read_text().strip()
    assert oct(os.stat(tokens_dir / "friends").st_mode & 0o777) == "0o600"
    assert value not in res.output
    found = pg.query(
        deployment["db"],
        "SELECT usage_limit, expires_at, revoked_at FROM user_registration_tokens WHERE token = %s",
        (value,),
    )
    assert len(found) == 1 and found[0][0] == 5 and found[0][1].isoformat() == "2031-01-31T00:00:00+00:00"
    unlimited = (tokens_dir / "open").read_text().strip()
    # the formula's files: recorded, so that mas:clean:purge removes them (and no token file of anyone else's)
    record = json.loads((deployment["root"] / "mas" / "formula" / "secrets.json").read_text())["files"]
    assert {str(tokens_dir / "friends"), str(tokens_dir / "open")} <= set(record)
    assert pg.query(
        deployment["db"], "SELECT usage_limit FROM user_registration_tokens WHERE token = %s", (unlimited,)
    ) == [(None,)]

    again = minion.apply(pillar, sls="mas.users")
    assert again.returncode == 0 and again.changed == [], again.output

    changed = deep_update(pillar, {"registration_tokens": {"friends": {"usage_limit": 10, "revoked": True}}})
    res = minion.apply(changed, sls="mas.users")
    assert res.by_id("mas-users-mas_user-registration_token-friends")["changes"] == {
        "usage_limit": {"old": 5, "new": 10},
        "revoked": {"old": False, "new": True},
    }
    row = pg.query(
        deployment["db"],
        "SELECT usage_limit, revoked_at IS NOT NULL FROM user_registration_tokens WHERE token = %s",
        (value,),
    )
    assert row == [(10, True)]
    assert (tokens_dir / "friends").read_text().strip() == value, "the token keeps its value"


def test_bot_token_through_the_proxy(deployment, nginx_factory, pg, tmp_path):
    minion, synapse = deployment["minion"], deployment["synapse"]
    token_file = tmp_path / "bot-home" / "token"
    token_file.parent.mkdir()
    pillar = deep_update(
        deployment["pillar"],
        {
            "users": [
                {
                    "username": "alerts",
                    "access_token": {"path": str(token_file), "owner": "nobody", "expires_in": 7 * 86400},
                }
            ]
        },
    )
    predicted = minion.apply(pillar, sls="mas.users", test=True)
    ret = predicted.by_id("mas-users-mas_user-bot_token-alerts")
    assert ret["result"] is None and not token_file.exists(), ret

    res = minion.apply(pillar, sls="mas.users", log_level="debug")
    assert res.returncode == 0, res.output
    token = token_file.read_text().strip()
    assert token.startswith("mpt_") and token not in res.output
    info = os.stat(token_file)
    assert oct(info.st_mode & 0o777) == "0o600" and info.st_uid == 65534

    snippet = deployment["root"] / "nginx" / "mas.conf"
    proxy = nginx_factory(synapse_upstream=synapse.base_url, include_files=[snippet]).start()
    whoami = requests.get(
        proxy.base_url + "/_matrix/client/v3/account/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert whoami.status_code == 200, whoami.text
    assert whoami.json()["user_id"] == "@alerts:example.com" and whoami.json()["device_id"].startswith("SALT")
    device = whoami.json()["device_id"]

    again = minion.apply(pillar, sls="mas.users")
    assert again.returncode == 0 and again.changed == [], again.output
    assert token_file.read_text().strip() == token, "a valid token is kept"

    # mas_token.bot_token_status from the CLI, renew_before not given: the map's default (one day) ...
    args = ("mas_token.bot_token_status", "alerts", str(token_file), "owner=nobody", "expires_in=604800")
    minion.set_pillar({"mas": pillar})
    status = minion.run(*args)
    assert status.data == {"username": "alerts", "path": str(token_file), "action": "none", "reason": "valid"}
    # ... and the site's own (mas:access_token_defaults:renew_before, longer than the 7 days' lifetime)
    site_default = deep_update(pillar, {"access_token_defaults": {"renew_before": 8 * 86400}})
    minion.set_pillar({"mas": site_default})
    status = minion.run(*args)
    assert (status.data["action"], status.data["reason"]) == ("regenerate", "token expires soon"), status.output
    assert token_file.read_text().strip() == token, "a status changes nothing"

    # a token about to expire is regenerated in the same session: by the site's default, then by its own
    # renew_before (longer than its lifetime)
    res = minion.apply(site_default, sls="mas.users")
    assert res.by_id("mas-users-mas_user-bot_token-alerts")["changes"] == {
        "token": {"old": "token expires soon", "new": "regenerated"}
    }
    fresh = token_file.read_text().strip()
    assert fresh != token
    own = deep_update(pillar, {})
    own["users"][0]["access_token"]["renew_before"] = 8 * 86400
    res = minion.apply(own, sls="mas.users")
    assert res.by_id("mas-users-mas_user-bot_token-alerts")["changes"] == {
        "token": {"old": "token expires soon", "new": "regenerated"}
    }
    freshest = token_file.read_text().strip()
    assert freshest not in (token, fresh)
    # (Synapse caches introspection answers for two minutes: ask MAS itself)
    assert introspect(deployment, token)["active"] is False
    assert introspect(deployment, fresh)["active"] is False
    assert introspect(deployment, freshest)["active"] is True
    # one personal session for the bot all along, its three tokens in it, two of them revoked
    bot_sessions = "FROM personal_sessions s JOIN users u ON s.actor_user_id = u.user_id WHERE u.username = 'alerts'"
    assert rows(pg, f"SELECT count(*), count(s.revoked_at) {bot_sessions}") == [(1, 0)]
    assert rows(
        pg,
        "SELECT count(*), count(t.revoked_at) FROM personal_access_tokens t"
        " JOIN personal_sessions s USING (personal_session_id) JOIN users u ON s.actor_user_id = u.user_id"
        " WHERE u.username = 'alerts'",
    ) == [(3, 2)]
    whoami = requests.get(
        proxy.base_url + "/_matrix/client/v3/account/whoami",
        headers={"Authorization": f"Bearer {freshest}"},
        timeout=30,
    )
    assert whoami.status_code == 200, whoami.text
    assert whoami.json()["device_id"] == device, "the bot keeps its device"


def test_bad_input_is_refused_before_anything_is_created(deployment, pg):
    minion = deployment["minion"]
    minion.set_pillar({"mas": deployment["pillar"]})
    for username in ("Not A Localpart", "_hidden", "@al ice:example.com"):
        bad = minion.run("mas_user.register", f"username={username}")
        assert bad.returncode != 0 and "is not a valid Matrix localpart" in bad.output, bad.output
    empty = minion.run("mas_user.register", "username=")
    assert empty.returncode != 0 and "a Matrix localpart is required" in empty.output
    both = minion.run("mas_user.register", "carla", "password=x", "password_file=/nonexistent")
    assert both.returncode != 0 and "at most one of password, password_file, password_pillar_key" in both.output
    email = minion.run("mas_user.register", "dora", "emails=[not-an-email]")
    assert email.returncode != 0 and "'not-an-email' is not an email address" in email.output
    weak = minion.run("mas_user.register", "erin", f"password={WEAK_PASSWORD}")
    assert weak.returncode != 0 and "password: too weak" in weak.output and WEAK_PASSWORD not in weak.output
    assert rows(pg, "SELECT username FROM users WHERE username IN ('carla', 'dora', 'erin')") == []
    skipped = minion.run("mas_user.register", "erin", f"password={WEAK_PASSWORD}", "skip_password_check=True")
    assert skipped.returncode == 0 and skipped.data["created"] is True, skipped.output

    bad_pillar = deep_update(deployment["pillar"], {"users": [{"username": "frank", "emails": ["frank at example"]}]})
    res = minion.apply(bad_pillar, sls="mas.users")
    assert res.returncode != 0 and "mas:users:0:emails:0: 'frank at example' is not an email address" in res.output
    assert rows(pg, "SELECT username FROM users WHERE username = 'frank'") == []


def test_register_user_wrapper_goes_to_mas(deployment, pg):
    minion = deployment["minion"]
    minion.set_pillar({"mas": deployment["pillar"]})
    wrapper = str(deployment["root"] / "mas" / "bin" / "register-user")
    with CmdlineWatch("Gina-Passw0rd-Stdin-55") as watch:
        proc = subprocess.run(
            [wrapper, "gina", "-", "1"], input="Gina-Passw0rd-Stdin-55\n", capture_output=True, text=True, check=False
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert watch.found == []
    assert rows(pg, "SELECT can_request_admin FROM users WHERE username = 'gina'") == [(True,)]
    assert compat_login(deployment["mas"], "gina", "Gina-Passw0rd-Stdin-55").status_code == 200
    again = subprocess.run([wrapper, "gina", "weak", "1"], capture_output=True, text=True, check=False)
    assert again.returncode == 1 and "User already exists" in again.stderr, "the playbook's behaviour"
    bad = subprocess.run([wrapper, "gina", "-", "2"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "must be 0 (normal user) or 1 (admin)" in bad.stderr


def test_unreachable_mas_is_a_clear_failure(deployment):
    minion = deployment["minion"]
    pillar = deep_update(deployment["pillar"], {"http": {"web_bind": f"127.0.0.1:{free_port()}"}})
    minion.set_pillar({"mas": pillar})
    res = minion.run("mas_user.info", "bot")
    assert res.returncode != 0
    assert "MAS is not reachable at http://127.0.0.1:" in res.output
