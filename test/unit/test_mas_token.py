"""Unit tests of MAS's tokens (``_modules/mas_token.py`` over ``mas_formula.tokens``): what a registration
token's change is, how a bot token's scope compares with MAS's introspection, the checks of a bot token's
arguments, and where ``renew_before`` comes from when it is not given."""

import os
import pwd

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

from formula_modules import MODULES, configure_loader_modules  # noqa: F401 (the loader fixture)
from mas_formula import tokens, users

mas_token = MODULES["mas_token"]


def test_registration_token_changes():
    found = {"attributes": {"usage_limit": 5, "expires_at": "2031-01-31T00:00:00Z", "revoked_at": None}}
    assert tokens.token_changes(found, 5, "2031-01-31T01:00:00+01:00", False) == {}
    assert tokens.token_changes(found, None, None, True) == {
        "usage_limit": {"old": 5, "new": None},
        "expires": {"old": "2031-01-31T00:00:00Z", "new": None},
        "revoked": {"old": False, "new": True},
    }
    assert tokens.token_changes(None, None, None, False) == {}, "no token yet: the wanted one is MAS's default"
    with pytest.raises(SaltInvocationError, match="RFC 3339"):
        tokens.check_token_args(None, "tomorrow")
    with pytest.raises(SaltInvocationError, match="usage_limit"):
        tokens.check_token_args(True, None)


def test_registration_token_file_names_are_checked():
    mas = {"paths": {"registration_tokens_dir": "/srv/mas/registration-tokens"}}
    assert tokens.token_path(mas, "friends.2030") == "/srv/mas/registration-tokens/friends.2030"
    for bad in ("../etc", "a/b", "", ".hidden", "x" * 65):
        with pytest.raises(SaltInvocationError, match="must be 1-64 letters"):
            tokens.token_path(mas, bad)


def test_bot_scope_compares_like_mas_introspection():
    # MAS's introspection answers every client API and device scope in both forms (stable and MSC2967's)
    asked = tokens.bot_scope("bot", "/run/bot.token", None, "BOTDEVICE1", True)
    assert asked == "urn:matrix:client:api:* urn:matrix:client:device:BOTDEVICE1 urn:synapse:admin:*"
    answered = (
        "urn:matrix:client:api:* urn:matrix:client:device:BOTDEVICE1 urn:matrix:org.matrix.msc2967.client:api:*"
        " urn:matrix:org.matrix.msc2967.client:device:BOTDEVICE1 urn:synapse:admin:*"
    )
    assert tokens.scope_key(answered) == tokens.scope_key(asked)
    assert tokens.scope_key(answered.replace("BOTDEVICE1", "OTHER")) != tokens.scope_key(asked)
    assert tokens.scope_key(answered.replace(" urn:synapse:admin:*", "")) != tokens.scope_key(asked)
    derived = tokens.bot_scope("bot", "/run/bot.token", None, None, False)
    assert derived == f"urn:matrix:client:api:* urn:matrix:client:device:{tokens.bot_device('bot', '/run/bot.token')}"
    assert tokens.bot_device("bot", "/run/bot.token") != tokens.bot_device("bot", "/run/other.token")


def test_bot_token_arguments_are_checked():
    assert tokens.bot_args("@bot:example.com", "/run/bot.token", "b a", None, None, 0, False) == (
        "bot",
        "/run/bot.token",
        "a b",
        0,
    )
    for path in ("relative/token", "/run/../etc/token", None):
        with pytest.raises(SaltInvocationError, match="must be an absolute file path"):
            tokens.bot_args("bot", path, None, None, None, 60, False)
    with pytest.raises(SaltInvocationError, match="expires_in"):
        tokens.bot_args("bot", "/run/bot.token", None, None, 59, 60, False)
    for renew_before in (None, -1, True, "soon"):
        with pytest.raises(SaltInvocationError, match="renew_before"):
            tokens.bot_args("bot", "/run/bot.token", None, None, None, renew_before, False)


def test_token_file_owner_and_mode(tmp_path):
    nobody = pwd.getpwnam("nobody")
    assert tokens.file_owner(None, None)[:3] == ("root", "root", 0)
    assert tokens.file_owner("nobody", None)[2] == nobody.pw_uid
    with pytest.raises(SaltInvocationError, match="does not exist on the minion"):
        tokens.file_owner("no-such-user-here", None)
    path = tmp_path / "token"
    assert not tokens.owner_ok(str(path), None, None)
    path.write_text("x")
    path.chmod(0o644)
    assert not tokens.owner_ok(str(path), None, None)
    path.chmod(0o600)
    assert tokens.owner_ok(str(path), None, None)
    assert not tokens.owner_ok(str(path), "nobody", None)
    os.symlink(path, tmp_path / "link")
    assert not tokens.owner_ok(str(tmp_path / "link"), None, None), "a link is not the token file"


def test_compatibility_token_from_mas_cli_output():
    mas = {"paths": {"mas_cli": "/srv/mas/bin/mas-cli"}}
    ran = []

    def run(argv):
        ran.append(argv)
        return {"retcode": 0, "stdout": "", "stderr": "INFO Compatibility token issued: mct_abc_123 for bot\n"}

    scope = "urn:matrix:client:api:* urn:matrix:client:device:BOTDEV urn:synapse:admin:*"
    assert tokens.compat_token(mas, "bot", scope, True, run, str) == "mct_abc_123"
    assert ran == [
        [
            "/srv/mas/bin/mas-cli",
            "manage",
            "issue-compatibility-token",
            "bot",
            "BOTDEV",
            "--yes-i-want-to-grant-synapse-admin-privileges",
        ]
    ]
    with pytest.raises(SaltInvocationError, match="a compatibility token carries only"):
        tokens.compat_token(mas, "bot", "urn:matrix:client:api:* urn:mas:admin", False, run, str)

    def failed(argv):
        return {"retcode": 1, "stdout": "", "stderr": "error: secret s3cr3t leaked"}

    with pytest.raises(CommandExecutionError, match=r"failed \(1\): error: secret \*\*\* leaked"):
        tokens.compat_token(mas, "bot", scope, False, failed, lambda text: text.replace("s3cr3t", "***"))


def test_renew_before_comes_from_the_map_when_not_given(pillar, tmp_path):
    pillar["mas"] = {"enabled": True, "server_name": "example.com", "base_path": str(tmp_path / "mas")}
    assert mas_token._renew_before(None) == 86400
    assert mas_token._renew_before(0) == 0
    mas_token.__context__.clear()  # the map is cached for the run
    pillar["mas"]["access_token_defaults"] = {"renew_before": 3600}
    assert mas_token._renew_before(None) == 3600
    assert mas_token._renew_before(120) == 120


def test_tokens_are_refused_while_synapse_is_authoritative(pillar, tmp_path):
    pillar["mas"] = {"enabled": True, "migration_in_progress": True, "server_name": "example.com"}
    pillar["mas"]["base_path"] = str(tmp_path / "mas")
    with pytest.raises(CommandExecutionError, match="registration tokens are MAS's and MAS is not authoritative"):
        mas_token.registration_token_plan("friends")
    with pytest.raises(CommandExecutionError, match=r"bot tokens are MAS's .*mas:migration_in_progress is true"):
        mas_token.bot_token_status("bot", str(tmp_path / "token"), batch=True)
    # refused before a session opens: the run's Synapse session (the user states') is not disturbed
    assert users.CONTEXT not in mas_token.__context__
