"""Users while Synapse is authoritative (issue 11): with MAS disabled, and while
``mas:migration_in_progress`` is true, registrations go to a real Synapse
through its shared-secret registration API and its admin API (as the formula's
own Synapse admin, logged out at the end); after a (double) syn2mas
migration the same pillar reports no change in MAS.
"""

import json
import subprocess

import pytest
import requests
from test_users import CmdlineWatch

from harness import mas as mas_target
from harness.util import free_port
from mas_double import run_server
from pillars import PILLAR_SECRETS, deep_update, wired_pillar
from saltrun import REPO_ROOT, SaltMinion

pytestmark = pytest.mark.integration

PEPPER = "users-synapse-pepper-1234"
ALICE_PASSWORD = "Alice-Synapse-Passw0rd-81"
BOB_PASSWORD = "Bob-Synapse-Passw0rd-82"
CARL_PASSWORD = "Carl-Migrated-Passw0rd-83"


@pytest.fixture(scope="module")
def homeserver(synapse_factory, pg):
    """A PostgreSQL-backed Synapse without MAS (syn2mas needs PostgreSQL), running."""
    server = synapse_factory(database=pg, start=True, extra_config={"password_config": {"pepper": PEPPER}})
    yield server
    server.stop()


def login(server, user, password):
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password}
    return server.request("POST", "/_matrix/client/v3/login", json=body)


def admin_get(server, token, user_id):
    return server.request("GET", f"/_synapse/admin/v2/users/{user_id}", token=token)


def secrets_of(server, root):
    """Every secret that must never appear in an output."""
    values = [server.config["registration_shared_secret"], server.config["macaroon_secret_key"], PEPPER]
    for password_file in root.glob("formula/synapse-admin.password"):
        values.append(password_file.read_text().strip())
    return values


PHASES = {
    "disabled": {"enabled": False},
    "migrating": {
        "enabled": True,
        "migration_in_progress": True,
        "server_name": "example.com",
        "runtime": "binary",
        "service": {"manage": False},
    },
}


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_registration_goes_to_synapse(phase, homeserver, salt_minion, tmp_path):
    """MAS disabled, and separately migrating: Synapse receives the registration."""
    root = tmp_path / "srv"
    pillar = deep_update(
        PHASES[phase],
        {
            "base_path": str(root),
            **({"binary": mas_target.binary_pillar(tmp_path)} if PHASES[phase]["enabled"] else {}),
            "synapse": {
                "endpoint": homeserver.base_url + "/",
                "config_files": [str(homeserver.config_path)],
                "config_dir": str(homeserver.conf_d),
                "restart": False,
                "formula_admin": f"mas-formula-{phase}",
            },
        },
    )
    alice, bob, carol = (f"{name}-{phase}" for name in ("alice", "bob", "carol"))
    salt_minion.set_pillar({"mas": pillar})
    password_file = tmp_path / "alice.pw"
    password_file.write_text(ALICE_PASSWORD + "\n")
    outputs = []

    with CmdlineWatch(ALICE_PASSWORD) as watch:
        res = salt_minion.run(
            "mas_user.register", alice, f"password_file={password_file}", "admin=True", log_level="debug"
        )
    outputs.append(res.output)
    assert res.returncode == 0, res.output
    assert watch.samples > 0 and watch.found == []
    assert res.data["authority"] == "synapse" and res.data["created"] is True
    assert res.data["user_id"] == f"@{alice}:example.com"

    # alice logs in with that password on Synapse and is a Synapse admin
    logged_in = login(homeserver, alice, ALICE_PASSWORD)
    assert logged_in.status_code == 200, logged_in.text
    alice_token = logged_in.json()["access_token"]
    assert admin_get(homeserver, alice_token, f"@{alice}:example.com").json()["admin"] is True

    # the formula's own admin: password 0600 root, no session left behind
    admin_password = root / "formula" / "synapse-admin.password"
    assert oct(admin_password.stat().st_mode & 0o777) == "0o600" and admin_password.stat().st_uid == 0
    devices = homeserver.request(
        "GET", f"/_synapse/admin/v2/users/@mas-formula-{phase}:example.com/devices", token=alice_token
    )
    assert devices.status_code == 200 and devices.json()["devices"] == [], "the formula logged out"

    again = salt_minion.run("mas_user.register", alice, f"password_file={password_file}", "admin=True")
    outputs.append(again.output)
    assert again.returncode == 0 and again.data["changes"] == {} and again.data["created"] is False, again.output

    # bob, not an admin, is refused by Synapse's admin API
    (tmp_path / "bob.pw").write_text(BOB_PASSWORD)
    made = salt_minion.run("mas_user.register", bob, f"password_file={tmp_path / 'bob.pw'}", "admin=False")
    outputs.append(made.output)
    assert made.returncode == 0 and made.data["created"] is True, made.output
    bob_token = login(homeserver, bob, BOB_PASSWORD).json()["access_token"]
    assert admin_get(homeserver, bob_token, f"@{bob}:example.com").status_code == 403

    # lifecycle on Synapse: admin flag, email, lock, deactivate
    promoted = salt_minion.run("mas_user.set_admin", bob, "admin=True")
    assert promoted.data["changes"] == {"admin": {"old": False, "new": True}}, promoted.output
    assert admin_get(homeserver, alice_token, f"@{bob}:example.com").json()["admin"] is True
    email = salt_minion.run("mas_user.add_email", bob, f"{bob}@example.com")
    assert email.data["changes"] == {"emails": {"old": [], "new": [f"{bob}@example.com"]}}, email.output
    locked = salt_minion.run("mas_user.lock", bob)
    assert locked.data["changes"] == {"locked": {"old": False, "new": True}}, locked.output
    assert admin_get(homeserver, alice_token, f"@{bob}:example.com").json()["locked"] is True
    unlocked = salt_minion.run("mas_user.unlock", bob)
    assert unlocked.data["changes"] == {"locked": {"old": True, "new": False}}, unlocked.output
    assert admin_get(homeserver, alice_token, f"@{bob}:example.com").json()["locked"] is False
    gone = salt_minion.run("mas_user.deactivate", bob)
    assert gone.data["changes"] == {"deactivated": {"old": False, "new": True}}, gone.output
    assert admin_get(homeserver, alice_token, f"@{bob}:example.com").json()["deactivated"] is True

    # bad input: nothing is created in Synapse
    weak = salt_minion.run("mas_user.register", carol, "password=abcdefgh12")
    assert weak.returncode != 0 and "password: too weak" in weak.output
    bad_email = salt_minion.run("mas_user.register", carol, "emails=[carol]")
    assert bad_email.returncode != 0 and "is not an email address" in bad_email.output
    assert admin_get(homeserver, alice_token, f"@{carol}:example.com").status_code == 404

    # without a registration shared secret in Synapse's config: a clear refusal naming both keys
    bare = tmp_path / "bare.yaml"
    bare.write_text(json.dumps({"server_name": "example.com"}))
    salt_minion.set_pillar({"mas": deep_update(pillar, {"synapse": {"config_files": [str(bare)]}})})
    refused = salt_minion.run("mas_user.register", "dave")
    assert refused.returncode != 0
    assert "registration_shared_secret nor registration_shared_secret_path" in refused.output
    for text in outputs:
        for secret in [*secrets_of(homeserver, root), ALICE_PASSWORD, BOB_PASSWORD]:
            assert secret not in text


def test_migrating_then_mas(homeserver, pg, salt_extmods, tmp_path, upstream_dir):
    """mas:users while migrating land in Synapse; after syn2mas, MAS has them and re-applying changes nothing."""
    dbname = "mas_users_migrating"
    pg.drop_database(dbname)
    pg.create_database(dbname)
    root = tmp_path / "srv"
    pillar = deep_update(
        wired_pillar(tmp_path, pg, dbname, homeserver, free_port(), free_port()),
        {
            "migration_in_progress": True,
            "base_path": str(root),
            "secrets": {key: PILLAR_SECRETS[key] for key in ("encryption", "homeserver_secret")},
            "proxy": {"type": "none"},
            # the first test's formula admin (another base_path) owns the default name on this Synapse
            "synapse": {"formula_admin": "salt-admin"},
            "syn2mas": {
                "stop_services": False,
                "synapse_config_files": [str(homeserver.config_path)],
                "backup_dir": str(tmp_path / "backups"),
            },
            "users": [
                {"username": "carl", "password": CARL_PASSWORD, "admin": True, "emails": ["carl@example.com"]},
                {"username": "dora", "emails": ["dora@example.com"]},
            ],
        },
    )
    minion = SaltMinion(tmp_path, REPO_ROOT, extmods=salt_extmods)
    predicted = minion.apply(pillar, test=True)
    carl = predicted.by_id("mas-users-mas_user-present-carl")
    assert carl["result"] is None and "would be registered in Synapse" in carl["comment"], carl

    with CmdlineWatch(CARL_PASSWORD) as watch:
        res = minion.apply(pillar, log_level="debug")
    assert res.returncode == 0, res.output
    assert watch.found == [] and CARL_PASSWORD not in res.output
    carl = res.by_id("mas-users-mas_user-present-carl")
    assert carl["comment"].startswith("User carl registered in Synapse (authoritative while"), carl["comment"]
    assert not pg.query(dbname, "SELECT to_regclass('users') IS NOT NULL")[0][0] or pg.query(
        dbname, "SELECT count(*) FROM users"
    ) == [(0,)], "nothing in MAS while migrating"
    token = login(homeserver, "carl", CARL_PASSWORD).json()["access_token"]
    user = admin_get(homeserver, token, "@carl:example.com").json()
    assert user["admin"] is True and [t["address"] for t in user["threepids"]] == ["carl@example.com"]

    again = minion.apply(pillar)
    assert again.returncode == 0 and again.changed == [], again.output

    # bin/register-user follows the phase too
    wrapper = str(root / "bin" / "register-user")
    proc = subprocess.run(
        [wrapper, "erik", "-", "0"], input="Erik-Wrapper-Passw0rd-84\n", capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert login(homeserver, "erik", "Erik-Wrapper-Passw0rd-84").status_code == 200

    # the migration (syn2mas of the MAS under test), then MAS is authoritative
    homeserver.stop()
    minion.set_pillar({"mas": pillar})
    migrated = minion.run("state.apply", "mas.syn2mas", "--retcode-passthrough")
    assert migrated.returncode == 0, migrated.output
    users = dict(pg.query(dbname, "SELECT username, can_request_admin FROM users"))
    assert users["carl"] is True and users["dora"] is False and "erik" in users

    after = deep_update(pillar, {"migration_in_progress": False})
    config = root / "config" / "config.yaml"
    with run_server([config], log_path=tmp_path / "mas.log") as mas:
        homeserver.start()
        res = minion.apply(after)
        assert res.returncode == 0, res.output
        for name in ("carl", "dora"):
            state = res.by_id(f"mas-users-mas_user-present-{name}")
            assert state["changes"] == {} and state["comment"] == f"User {name} is already as wanted in MAS", state
        homeserver.restart()  # with the drop-in the apply wrote (mas:synapse:restart is false here)
        login_carl = requests.post(
            mas.url("compat", "/_matrix/client/v3/login"),
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "carl"},
                "password": CARL_PASSWORD,
            },
            timeout=30,
        )
        assert login_carl.status_code == 200, login_carl.text
    homeserver.conf_d.joinpath("matrix-authentication-service.yaml").unlink(missing_ok=True)
    homeserver.restart()
