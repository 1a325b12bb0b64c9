"""Unit tests of the users (``_modules/mas_user.py`` over ``mas_formula.users`` and
``mas_formula.users_synapse``): input rules, where a password comes from, MAS's complexity rule, the
phase routing, password fingerprints, the plan of changes and the sessions a state run shares."""

import json

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

from formula_modules import DEFAULTS, MODULES, configure_loader_modules  # noqa: F401 (the loader fixture)
from mas_formula import users, users_synapse

mas_user = MODULES["mas_user"]


def mapdata(tmp_path, **mas):
    pillar = {"enabled": True, "server_name": "example.com", "base_path": str(tmp_path / "mas"), **mas}
    merged = json.loads(json.dumps(DEFAULTS))
    for key, value in pillar.items():
        if isinstance(value, dict):
            merged[key].update(value)
        else:
            merged[key] = value
    return MODULES["mas"].settings(merged)


@pytest.mark.parametrize(
    "given,expected",
    [("alice", "alice"), ("@alice:example.com", "alice"), ("bot.x_1=/+-", "bot.x_1=/+-"), (123, "123")],
)
def test_localpart_normalisation(given, expected):
    assert mas_user.check_username(given) == expected


@pytest.mark.parametrize("given", ["", "Alice", "al ice", "@:example.com", "_hidden", "a" * 256, None])
def test_localpart_refused(given):
    with pytest.raises(SaltInvocationError, match="username"):
        mas_user.check_username(given)


@pytest.mark.parametrize("given", ["a@example.com", "first.last+tag@sub.example.org", "x@localhost"])
def test_email_accepted(given):
    assert mas_user.check_email(given) == given


@pytest.mark.parametrize("given", ["", "no-at", "a@", "@example.com", "a b@example.com", "a@exa mple.com", "a@-x.com"])
def test_email_refused(given):
    with pytest.raises(SaltInvocationError, match="is not an email address"):
        mas_user.check_email(given)


def test_password_sources(tmp_path, pillar):
    (tmp_path / "pw").write_text("from-file\n")
    (tmp_path / "empty").write_text("\n")
    pillar["mas"] = {"users": [{"username": "a", "password": "from-pillar"}]}
    assert mas_user._password(None, str(tmp_path / "pw"), None) == "from-file"
    assert mas_user._password(None, None, "mas:users:0:password") == "from-pillar"
    assert mas_user._password("given", None, None) == "given"
    assert mas_user._password(None, None, None) is None
    with pytest.raises(SaltInvocationError, match="at most one"):
        mas_user._password("a", str(tmp_path / "pw"), None)
    with pytest.raises(SaltInvocationError, match="mas:users:1:password is not set"):
        mas_user._password(None, None, "mas:users:1:password")
    with pytest.raises(SaltInvocationError, match="is empty"):
        mas_user._password(None, str(tmp_path / "empty"), None)


def test_complexity_is_mas_rule(tmp_path):
    mas = mapdata(tmp_path)
    users.check_strength(mas, "Alice-Passw0rd-From-File-31", False)
    with pytest.raises(SaltInvocationError, match=r"too weak \(zxcvbn score 1, MAS requires 3") as err:
        users.check_strength(mas, "abcdefgh12", False)
    assert "abcdefgh12" not in str(err.value)
    users.check_strength(mas, "abcdefgh12", True)
    lenient = mapdata(tmp_path, config={"passwords": {"minimum_complexity": 1}})
    users.check_strength(lenient, "abcdefgh12", False)
    off = mapdata(tmp_path, config={"passwords": {"enabled": False}})
    with pytest.raises(SaltInvocationError, match=r"passwords\.enabled: false"):
        users.check_strength(off, "Alice-Passw0rd-From-File-31", True)


def test_authority_follows_the_map(tmp_path):
    assert users.authority(mapdata(tmp_path)) == "mas"
    assert users.authority(mapdata(tmp_path, migration_in_progress=True)) == "synapse"
    assert users.authority(mapdata(tmp_path, enabled=False)) == "synapse"


def test_fingerprints(tmp_path):
    stored = users.fingerprint("Secret-One-1")
    assert "Secret-One-1" not in stored and stored.startswith("scrypt$16384$8$1$")
    assert users.fingerprint_matches(stored, "Secret-One-1")
    assert not users.fingerprint_matches(stored, "Secret-One-2")
    assert not users.fingerprint_matches("garbage", "Secret-One-1")
    mas = mapdata(tmp_path)
    (tmp_path / "mas").mkdir()
    assert users.password_differs(mas, "bot", "Secret-One-1")
    users.remember_password(mas, "bot", "Secret-One-1")
    path = tmp_path / "mas" / "formula" / "passwords.json"
    assert oct(path.stat().st_mode & 0o777) == "0o600" and "Secret-One-1" not in path.read_text()
    assert not users.password_differs(mas, "bot", "Secret-One-1")
    assert users.password_differs(mas, "bot", "Secret-One-2")


def test_plan_of_changes(tmp_path):
    mas = mapdata(tmp_path)
    new = users.changes(mas, None, "bot", True, ["b@example.com"], True, "pw", "on_create")
    assert new == {
        "user": {"old": None, "new": "bot"},
        "password": {"old": None, "new": "set"},
        "admin": {"old": False, "new": True},
        "emails": {"old": [], "new": ["b@example.com"]},
        "locked": {"old": False, "new": True},
    }
    view = {"admin": True, "emails": ["B@example.com"], "locked": False, "deactivated": True}
    changes = users.changes(mas, view, "bot", True, ["b@example.com"], None, "pw", "on_create")
    assert changes == {"deactivated": {"old": True, "new": False}}, "emails compare case-insensitively"


def test_synapse_shared_secret_comes_from_synapse_config(tmp_path):
    hs = tmp_path / "homeserver.yaml"
    secret_file = tmp_path / "reg.secret"
    secret_file.write_text("from-a-file\n")
    mas = mapdata(tmp_path, enabled=False, synapse={"config_files": [str(hs)], "config_dir": str(tmp_path / "none")})
    hs.write_text("server_name: example.org\nregistration_shared_secret: inline-secret\n")
    assert isinstance(mas_user._connect(mas), users_synapse.Backend), "MAS disabled: Synapse is authoritative"
    assert mas_user._connect(mas).shared_secret() == "inline-secret"
    assert mas_user._connect(mas).server_name == "example.org"
    hs.write_text(f"server_name: example.org\nregistration_shared_secret_path: {secret_file}\n")
    assert mas_user._connect(mas).shared_secret() == "from-a-file"
    hs.write_text("server_name: example.org\n")
    with pytest.raises(CommandExecutionError, match="registration_shared_secret nor registration_shared_secret_path"):
        mas_user._connect(mas).shared_secret()


def test_pillar_users_are_validated(tmp_path):
    entries = [
        {"username": "ok", "password_update": "sometimes", "locked": "yes", "emails": ["x"]},
        {"username": "Bad"},
        {"username": "tok", "access_token": {"path": "relative", "expires_in": 5, "colour": 1}},
    ]
    with pytest.raises(SaltInvocationError) as err:
        mapdata(tmp_path, users=entries, registration_tokens={"a b": {"usage_limit": -1, "expires": "soon"}})
    text = str(err.value)
    for expected in (
        "mas:users:0:password_update: must be on_create or always",
        "mas:users:0:locked: must be true, false or unset",
        "mas:users:0:emails:0: 'x' is not an email address",
        "mas:users:1:username: must be a Matrix localpart",
        "mas:users:2:access_token:path: must be an absolute file path",
        "mas:users:2:access_token:expires_in: must be a number of seconds >= 60",
        "mas:users:2:access_token: unknown keys colour",
        "mas:registration_tokens:a b: the name must be",
        "mas:registration_tokens:a b:usage_limit: must be a number of uses",
        "mas:registration_tokens:a b:expires: must be an RFC 3339 time",
    ):
        assert expected in text


def test_every_access_token_gets_renew_before_from_the_defaults_file(tmp_path):
    """``renew_before``'s one home is mas/parameters/defaults.yaml (``access_token_defaults``), read through the map."""
    entries = [
        {"username": "plain", "access_token": {"path": "/run/plain.token"}},
        {"username": "unset", "access_token": {"path": "/run/unset.token", "renew_before": None}},
        {"username": "own", "access_token": {"path": "/run/own.token", "renew_before": 10}},
        {"username": "none"},
    ]
    default = DEFAULTS["access_token_defaults"]["renew_before"]
    assert isinstance(default, int) and default > 0
    mas = mapdata(tmp_path, users=entries)
    assert mas["access_token_defaults"] == {"renew_before": default}
    found = {u["username"]: u["access_token"] for u in mas["users"]}
    assert found["plain"] == {"path": "/run/plain.token", "renew_before": default}
    assert found["unset"]["renew_before"] == default
    assert found["own"]["renew_before"] == 10
    assert found["none"] is None
    site = mapdata(tmp_path, users=entries, access_token_defaults={"renew_before": 3600})
    assert [u["access_token"] and u["access_token"]["renew_before"] for u in site["users"]] == [3600, 3600, 10, None]
    with pytest.raises(SaltInvocationError) as err:
        mapdata(tmp_path, access_token_defaults={"renew_before": -1, "colour": 1})
    assert "mas:access_token_defaults:renew_before: must be a number of seconds >= 0, not -1" in str(err.value)
    assert "mas:access_token_defaults: unknown keys colour" in str(err.value)


class Standin:
    """A service's backend for the session tests: what was done to it."""

    def __init__(self, authority):
        self.authority = authority
        self.prefetched = self.closed = 0

    def prefetch(self):
        self.prefetched += 1

    def close(self):
        self.closed += 1


def test_a_state_run_shares_one_session_per_service_and_closes_it(tmp_path):
    mas_map, synapse_map = mapdata(tmp_path), mapdata(tmp_path, enabled=False)
    made = []

    def connect(mas, wait):
        made.append(Standin(users.authority(mas)))
        return made[-1]

    context = {}
    with users.opened(context, lambda: mas_map, connect, batch=True) as (mas, first):
        assert mas is mas_map and first.authority == "mas"
    with users.opened(context, lambda: pytest.fail("the run's map is read once"), connect, batch=True) as (_, again):
        assert again is first
    assert made == [first] and first.prefetched == 1 and first.closed == 0, "MAS's users are read once per run"
    assert users.close(context) == ["mas"] and first.closed == 1
    assert users.close(context) == [], "nothing is left open"

    # one call, not a run: its own session, closed at its end, MAS's users read on demand
    with users.opened(context, lambda: synapse_map, connect) as (_, single):
        assert single.authority == "synapse"
    assert single.closed == 1 and single.prefetched == 0 and context == {}

    # a connection that failed fails every later state of the run at once
    def refused(mas, wait):
        made.append("tried")
        raise CommandExecutionError("MAS is not reachable")

    for _ in range(2):
        with pytest.raises(CommandExecutionError, match="not reachable"):
            users.session(context, lambda: mas_map, refused, batch=True)
    assert made.count("tried") == 1
    assert users.close(context) == []


def test_sessions_closed_says_which_services_it_closed(tmp_path):
    from formula_modules import STATES  # pylint: disable=import-outside-toplevel

    context = mas_user.__context__
    closed = []
    for mas in (mapdata(tmp_path), mapdata(tmp_path, enabled=False)):
        users.session(context, lambda mas=mas: mas, lambda mas, wait: closed.append(Standin("x")) or closed[-1], True)
        context[users.CONTEXT].pop("map")
    ret = STATES["mas_user"].sessions_closed("mas users")
    assert ret == {
        "name": "mas users",
        "result": True,
        "comment": "Closed the sessions with MAS, Synapse",
        "changes": {},
    }
    assert [b.closed for b in closed] == [1, 1]
    assert STATES["mas_user"].sessions_closed("mas users")["comment"] == "No session open"
