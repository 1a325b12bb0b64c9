"""Unit tests of ``_modules/mas_user.py``: input rules, where a password comes
from, MAS's complexity rule, the phase routing, password fingerprints and the
plan of changes."""

import json

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

from formula_modules import DEFAULTS, MODULES, configure_loader_modules  # noqa: F401 (the loader fixture)

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
    mas_user._check_strength(mas, "Alice-Passw0rd-From-File-31", False)
    with pytest.raises(SaltInvocationError, match=r"too weak \(zxcvbn score 1, MAS requires 3") as err:
        mas_user._check_strength(mas, "abcdefgh12", False)
    assert "abcdefgh12" not in str(err.value)
    mas_user._check_strength(mas, "abcdefgh12", True)
    lenient = mapdata(tmp_path, config={"passwords": {"minimum_complexity": 1}})
    mas_user._check_strength(lenient, "abcdefgh12", False)
    off = mapdata(tmp_path, config={"passwords": {"enabled": False}})
    with pytest.raises(SaltInvocationError, match=r"passwords\.enabled: false"):
        mas_user._check_strength(off, "Alice-Passw0rd-From-File-31", True)


def test_authority_follows_the_map(tmp_path):
    assert mas_user._authority(mapdata(tmp_path)) == "mas"
    assert mas_user._authority(mapdata(tmp_path, migration_in_progress=True)) == "synapse"
    assert mas_user._authority(mapdata(tmp_path, enabled=False)) == "synapse"


def test_fingerprints(tmp_path):
    stored = mas_user._fingerprint("Secret-One-1")
    assert "Secret-One-1" not in stored and stored.startswith("scrypt$16384$8$1$")
    assert mas_user._fingerprint_matches(stored, "Secret-One-1")
    assert not mas_user._fingerprint_matches(stored, "Secret-One-2")
    assert not mas_user._fingerprint_matches("garbage", "Secret-One-1")
    mas = mapdata(tmp_path)
    (tmp_path / "mas").mkdir()
    assert mas_user._password_differs(mas, "bot", "Secret-One-1")
    mas_user._remember_password(mas, "bot", "Secret-One-1")
    path = tmp_path / "mas" / "formula" / "passwords.json"
    assert oct(path.stat().st_mode & 0o777) == "0o600" and "Secret-One-1" not in path.read_text()
    assert not mas_user._password_differs(mas, "bot", "Secret-One-1")
    assert mas_user._password_differs(mas, "bot", "Secret-One-2")


def test_plan_of_changes(tmp_path):
    mas = mapdata(tmp_path)
    new = mas_user._changes(mas, None, "bot", True, ["b@example.com"], True, "pw", "on_create")
    assert new == {
        "user": {"old": None, "new": "bot"},
        "password": {"old": None, "new": "set"},
        "admin": {"old": False, "new": True},
        "emails": {"old": [], "new": ["b@example.com"]},
        "locked": {"old": False, "new": True},
    }
    view = {"admin": True, "emails": ["B@example.com"], "locked": False, "deactivated": True}
    changes = mas_user._changes(mas, view, "bot", True, ["b@example.com"], None, "pw", "on_create")
    assert changes == {"deactivated": {"old": True, "new": False}}, "emails compare case-insensitively"


def test_registration_token_changes():
    found = {"attributes": {"usage_limit": 5, "expires_at": "2031-01-31T00:00:00Z", "revoked_at": None}}
    assert mas_user._token_changes(found, 5, "2031-01-31T01:00:00+01:00", False) == {}
    assert mas_user._token_changes(found, None, None, True) == {
        "usage_limit": {"old": 5, "new": None},
        "expires": {"old": "2031-01-31T00:00:00Z", "new": None},
        "revoked": {"old": False, "new": True},
    }
    with pytest.raises(SaltInvocationError, match="RFC 3339"):
        mas_user._check_token_args(None, "tomorrow")


def test_bot_scope_compares_like_mas_introspection():
    # MAS's introspection answers every client API and device scope in both forms (stable and MSC2967's)
    asked = mas_user._bot_scope("bot", "/run/bot.token", None, "BOTDEVICE1", True)
    assert asked == "urn:matrix:client:api:* urn:matrix:client:device:BOTDEVICE1 urn:synapse:admin:*"
    answered = (
        "urn:matrix:client:api:* urn:matrix:client:device:BOTDEVICE1 urn:matrix:org.matrix.msc2967.client:api:*"
        " urn:matrix:org.matrix.msc2967.client:device:BOTDEVICE1 urn:synapse:admin:*"
    )
    assert mas_user._scope_key(answered) == mas_user._scope_key(asked)
    assert mas_user._scope_key(answered.replace("BOTDEVICE1", "OTHER")) != mas_user._scope_key(asked)
    assert mas_user._scope_key(answered.replace(" urn:synapse:admin:*", "")) != mas_user._scope_key(asked)


def test_synapse_shared_secret_comes_from_synapse_config(tmp_path):
    hs = tmp_path / "homeserver.yaml"
    secret_file = tmp_path / "reg.secret"
    secret_file.write_text("from-a-file\n")
    mas = mapdata(tmp_path, enabled=False, synapse={"config_files": [str(hs)], "config_dir": str(tmp_path / "none")})
    hs.write_text("server_name: example.org\nregistration_shared_secret: inline-secret\n")
    assert mas_user._Synapse(mas)._shared_secret() == "inline-secret"
    assert mas_user._Synapse(mas).server_name == "example.org"
    hs.write_text(f"server_name: example.org\nregistration_shared_secret_path: {secret_file}\n")
    assert mas_user._Synapse(mas)._shared_secret() == "from-a-file"
    hs.write_text("server_name: example.org\n")
    with pytest.raises(CommandExecutionError, match="registration_shared_secret nor registration_shared_secret_path"):
        mas_user._Synapse(mas)._shared_secret()


def test_pillar_users_are_validated(tmp_path):
    users = [
        {"username": "ok", "password_update": "sometimes", "locked": "yes", "emails": ["x"]},
        {"username": "Bad"},
        {"username": "tok", "access_token": {"path": "relative", "expires_in": 5, "colour": 1}},
    ]
    with pytest.raises(SaltInvocationError) as err:
        mapdata(tmp_path, users=users, registration_tokens={"a b": {"usage_limit": -1, "expires": "soon"}})
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
