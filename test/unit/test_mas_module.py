"""Unit tests of ``_modules/mas.py`` and ``_states/mas.py`` with the Salt loader.

The secret functions run for real against files under tmp; only what the
loader would inject (``__pillar__``, ``__opts__``, ``__salt__``) is given.
"""

import os
import stat

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

from formula_modules import DEFAULTS, load
from pillars import deep_update
from saltrun import REPO_ROOT

REPO_DEFAULTS = REPO_ROOT / "mas" / "parameters" / "defaults.yaml"

mas = load("_modules", "mas", "mas_exec_for_unit_tests")
mas_state = load("_states", "mas", "mas_state_for_unit_tests")

ME = __import__("pwd").getpwuid(os.geteuid()).pw_name
MY_GROUP = __import__("grp").getgrgid(os.getegid()).gr_name


@pytest.fixture
def pillar():
    return {}


@pytest.fixture
def configure_loader_modules(pillar):
    salt_funcs = {"mas.secret_status": mas.secret_status, "mas.write_secret": mas.write_secret}
    # (the doctor tests add cmd.run_all / cp.get_file_str stand-ins for mas-cli and the file server)
    return {
        mas: {"__pillar__": pillar, "__context__": {}, "__opts__": {"test": False}, "__salt__": salt_funcs},
        mas_state: {"__salt__": salt_funcs, "__opts__": {"test": False}},
    }


def settings(**overrides):
    data = deep_update(DEFAULTS, {"enabled": True, "server_name": "example.com", "base_path": "/srv/mas"})
    return mas.settings(deep_update(data, overrides))


def test_settings_derives_public_base_paths_and_redacts_secrets():
    result = settings(
        secrets={"encryption": "a" * 64},
        database={"password": "pw-secret"},
        upstream_oauth2_providers=[
            {"id": "01HFVBY12TMNTYTBV8W921M5FA", "client_id": "c", "client_secret": "cs-secret",
             "token_endpoint_auth_method": "client_secret_basic"}
        ],
    )
    assert result["hostname"] == "matrix.example.com"
    assert result["public_base"] == "https://matrix.example.com/auth/"
    assert result["paths"]["config_file"] == "/srv/mas/config/config.yaml"
    assert result["synapse"]["mas_endpoint"] == "http://localhost:8080/auth/"
    assert result["database"]["password_set"] is True and "password" not in result["database"]
    assert result["secrets"]["encryption_set"] is True and "encryption" not in result["secrets"]
    text = repr(result)
    for secret in ("a" * 64, "pw-secret", "cs-secret"):
        assert secret not in text
    provider = result["mas_config"]["upstream_oauth2"]["providers"][0]
    assert provider["client_secret_file"] == "/srv/mas/config/secrets/upstream-01HFVBY12TMNTYTBV8W921M5FA.secret"
    kinds = {entry["name"]: entry["kind"] for entry in result["secret_files"]}
    assert kinds["encryption"] == "hex32" and kinds["key-rsa"] == "rsa"
    assert kinds["database_password"] == "pillar" and kinds["provider-01HFVBY12TMNTYTBV8W921M5FA"] == "pillar"


def test_settings_collects_every_error_at_once():
    with pytest.raises(SaltInvocationError) as err:
        settings(hostname="bad_host!", path_prefix="auth", runtime="lxc")
    text = str(err.value)
    assert "mas:hostname" in text and "mas:path_prefix" in text and "mas:runtime" in text
    assert "nothing was changed" in text


def test_settings_root_prefix_and_mas_config_overrides():
    result = settings(path_prefix="/", hostname="auth.example.com",
                      config={"http": {"public_base": "https://other.example.com/"}})
    assert result["public_base"] == "https://auth.example.com/"
    assert result["synapse"]["mas_endpoint"] == "http://localhost:8080/"
    assert "prefix" not in result["mas_config"]["http"]["listeners"][0]
    # mas:config is merged last and wins
    assert result["mas_config"]["http"]["public_base"] == "https://other.example.com/"


def test_mapdata_is_computed_once_per_pillar(pillar):
    pillar["mas"] = {"enabled": True, "server_name": "example.com"}
    mas.__salt__["cp.get_file_str"] = lambda url: REPO_DEFAULTS.read_text()
    first = mas.mapdata()
    first["hostname"] = "changed-by-caller"
    assert mas.mapdata()["hostname"] == "matrix.example.com"
    assert len(mas.__context__) == 1
    pillar["mas"]["server_name"] = "example.org"
    assert mas.mapdata()["hostname"] == "matrix.example.org"


@pytest.mark.parametrize("prefix,ok", [("/auth", True), ("/", True), ("/a/b", True), ("/auth/", False), ("auth", False), ("/a//b", False)])
def test_path_prefix_rules(prefix, ok):
    if ok:
        settings(path_prefix=prefix, hostname="auth.example.com")
    else:
        with pytest.raises(SaltInvocationError, match="mas:path_prefix"):
            settings(path_prefix=prefix, hostname="auth.example.com")


def test_root_prefix_needs_its_own_host():
    with pytest.raises(SaltInvocationError, match="'/' needs MAS on its own host name"):
        settings(path_prefix="/")
    settings(path_prefix="/", proxy={"type": "none"})


def test_write_secret_generates_once_with_mode_and_owner(tmp_path):
    path = str(tmp_path / "encryption")
    status = mas.write_secret(path, "hex32", "mas:secrets:encryption", ME, MY_GROUP)
    assert status == {"action": "create", "reason": "generated"}
    value = open(path).read()
    assert len(value) == 64 and int(value, 16) >= 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert mas.write_secret(path, "hex32", "mas:secrets:encryption", ME, MY_GROUP)["action"] == "none"
    assert open(path).read() == value
    os.chmod(path, 0o644)
    assert mas.write_secret(path, "hex32", None, ME, MY_GROUP)["action"] == "fix-mode"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert open(path).read() == value


def test_encryption_from_pillar_then_rotation_guard(tmp_path, pillar):
    path = str(tmp_path / "encryption")
    pillar["mas"] = {"secrets": {"encryption": "b" * 64}}
    assert mas.write_secret(path, "hex32", "mas:secrets:encryption", ME, MY_GROUP)["reason"] == "from pillar"
    assert open(path).read() == "b" * 64
    pillar["mas"]["secrets"]["encryption"] = "c" * 64
    with pytest.raises(CommandExecutionError, match="allow_encryption_rotation") as err:
        mas.secret_status(path, "hex32", "mas:secrets:encryption", ME, MY_GROUP)
    assert "c" * 64 not in str(err.value) and "b" * 64 not in str(err.value)
    assert mas.write_secret(path, "hex32", "mas:secrets:encryption", ME, MY_GROUP, allow_rotation=True)["action"] == "update"
    assert open(path).read() == "c" * 64


def test_pepper_is_written_without_newline_from_synapse_config(tmp_path):
    hs = tmp_path / "homeserver.yaml"
    hs.write_text("password_config:\n  pepper: 'Pepper With Spaces '\n")
    path = str(tmp_path / "pepper")
    mas.write_secret(path, "pepper", "mas:synapse:pepper", ME, MY_GROUP,
                     synapse={"config_files": [str(hs)], "config_dir": None})
    assert open(path, "rb").read() == b"Pepper With Spaces "


def test_copy_secret_and_missing_source(tmp_path):
    src = tmp_path / "src"
    with pytest.raises(CommandExecutionError, match="does not exist yet"):
        mas.write_secret(str(tmp_path / "dst"), "copy", source=str(src), user=ME, group=MY_GROUP)
    src.write_bytes(b"shared")
    mas.write_secret(str(tmp_path / "dst"), "copy", source=str(src), user=ME, group=MY_GROUP, mode="0640")
    assert (tmp_path / "dst").read_bytes() == b"shared"
    assert stat.S_IMODE((tmp_path / "dst").stat().st_mode) == 0o640


def test_unknown_kind_and_unknown_owner(tmp_path):
    with pytest.raises(SaltInvocationError, match="unknown secret kind"):
        mas.secret_status(str(tmp_path / "x"), "rot13")
    with pytest.raises(CommandExecutionError, match="the user 'no-such-user-4711' does not exist"):
        mas.write_secret(str(tmp_path / "x"), "token", user="no-such-user-4711", group=MY_GROUP)
    assert not (tmp_path / "x").exists()


def test_state_predicts_under_test_mode_without_writing(tmp_path):
    mas_state.__opts__["test"] = True
    ret = mas_state.secret(str(tmp_path / "k.pem"), "ec-p256", user=ME, group=MY_GROUP)
    assert ret["result"] is None
    assert ret["changes"] == {"secret": {"old": "absent", "new": "generated"}}
    assert not (tmp_path / "k.pem").exists()
    mas_state.__opts__["test"] = False
    ret = mas_state.secret(str(tmp_path / "k.pem"), "ec-p256", user=ME, group=MY_GROUP)
    assert ret["result"] is True and ret["changes"]
    assert b"BEGIN PRIVATE KEY" in (tmp_path / "k.pem").read_bytes()
    again = mas_state.secret(str(tmp_path / "k.pem"), "ec-p256", user=ME, group=MY_GROUP)
    assert again["changes"] == {} and "already in place" in again["comment"]


def test_state_failure_is_reported_not_raised(tmp_path, pillar):
    pillar["mas"] = {"database": {}}
    ret = mas_state.secret(str(tmp_path / "db"), "pillar", "mas:database:password", user=ME, group=MY_GROUP)
    assert ret["result"] is False
    assert "mas:database:password is not set" in ret["comment"]
    assert ret["changes"] == {}


def test_scram_verifier_round_trip():
    verifier = mas._scram_verifier("s3cret")
    assert verifier.startswith("SCRAM-SHA-256$4096:")
    assert "s3cret" not in verifier
    assert mas._scram_matches(verifier, "s3cret")
    assert not mas._scram_matches(verifier, "other")
    assert not mas._scram_matches("md5abc", "s3cret")


@pytest.mark.parametrize("given,expected", [("alice", "alice"), ("@alice:example.com", "alice"), ("bot.x_1=/+-", "bot.x_1=/+-")])
def test_localpart_normalisation(given, expected):
    assert mas._localpart(given) == expected


@pytest.mark.parametrize("given", ["", "Alice", "al ice", "@:example.com"])
def test_localpart_refused(given):
    with pytest.raises(SaltInvocationError, match="username"):
        mas._localpart(given)


def test_password_sources(tmp_path, pillar):
    (tmp_path / "pw").write_text("from-file\n")
    pillar["mas"] = {"users": [{"username": "a", "password": "from-pillar"}]}
    assert mas._password(None, str(tmp_path / "pw"), None) == "from-file"
    assert mas._password(None, None, "mas:users:0:password") == "from-pillar"
    assert mas._password("given", None, None) == "given"
    assert mas._password(None, None, None) is None
    with pytest.raises(SaltInvocationError, match="at most one"):
        mas._password("a", str(tmp_path / "pw"), None)
    with pytest.raises(SaltInvocationError, match="mas:users:1:password is not set"):
        mas._password(None, None, "mas:users:1:password")


def test_mapdata_merges_lookup_then_pillar_and_redacts_user_passwords(pillar):
    pillar["mas"] = {
        "lookup": {"user": "from-lookup", "group": "from-lookup"},
        "enabled": True, "server_name": "example.com", "group": "from-pillar",
        "users": [{"username": "bot", "password": "Bot-Secret-1", "admin": True}],
    }
    result = mas.mapdata(DEFAULTS)
    assert (result["user"], result["group"]) == ("from-lookup", "from-pillar")
    assert result["users"] == [{"username": "bot", "admin": True, "emails": [],
                                "password_pillar_key": "mas:users:0:password"}]
    assert "Bot-Secret-1" not in repr(result)
    assert result["api"]["token_url"] == "http://127.0.0.1:8080/auth/oauth2/token"
    assert result["api"]["admin_url"] == "http://localhost:8081/api/admin/v1"


DOCTOR_STDERR = """\x1b[2m2026-11-26T10:00:00.000001Z\x1b[0m \x1b[32m INFO\x1b[0m mas_cli::commands::doctor:40 💡 Running diagnostics, make sure that both MAS and Synapse are running.
2026-11-26T10:00:00.000002Z  WARN mas_cli::commands::doctor:60 ⚠️ The issuer in the config (`http.issuer`/`http.public_base`) is not an HTTPS URL.
This means some clients will refuse to use it.
2026-11-26T10:00:00.000003Z  INFO mas_cli::commands::doctor:80 ✅ Homeserver is reachable at "http://synapse:8008/_matrix/client/versions"
2026-11-26T10:00:00.000004Z ERROR mas_cli::commands::doctor:90 ❌Can't reach the homeserver admin API at "http://synapse:8008/_synapse/mas/is_localpart_available".
matrix:
  kind: synapse
  homeserver: example.com
  secret: "THE-SHARED-SECRET"
2026-11-26T10:00:00.000005Z ERROR mas_cli::commands::doctor:99 The legacy login API at "https://matrix.example.com/_matrix/client/v3/login" replied with 404 Not Found.
"""


def test_doctor_parsing_markers_quirks_and_scrubbing(tmp_path, pillar):
    pillar["mas"] = {"enabled": True, "server_name": "example.com", "base_path": str(tmp_path),
                     "secrets": {"homeserver_secret": "THE-SHARED-SECRET"}}
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "mas-cli").write_text("#!/bin/sh\n")
    (tmp_path / "config" / "secrets").mkdir(parents=True)
    (tmp_path / "config" / "secrets" / "homeserver_secret").write_text("THE-SHARED-SECRET")
    calls = []

    def run_all(cmd, **kwargs):
        calls.append((cmd, kwargs))
        return {"retcode": 0, "stdout": "", "stderr": DOCTOR_STDERR}

    mas.__salt__["cmd.run_all"] = run_all
    mas.__salt__["cp.get_file_str"] = lambda url: (REPO_DEFAULTS.read_text())
    report = mas.doctor()
    assert calls[0][0] == [str(tmp_path / "bin" / "mas-cli"), "doctor"]
    assert calls[0][1]["output_loglevel"] == "quiet" and calls[0][1]["python_shell"] is False
    assert report["ok"] == ['✅ Homeserver is reachable at "http://synapse:8008/_matrix/client/versions"']
    assert len(report["warnings"]) == 1 and "This means some clients" in report["warnings"][0]
    assert len(report["errors"]) == 2
    assert report["errors"][0].startswith("❌Can't reach the homeserver admin API")
    assert "THE-SHARED-SECRET" not in repr(report) and "**********" in report["errors"][0]
    assert report["errors"][1].startswith("The legacy login API")
    assert report["result"] is False and mas.__context__["retcode"] == 1


def test_doctor_strict_fails_on_warnings_only(tmp_path, pillar):
    pillar["mas"] = {"enabled": True, "server_name": "example.com", "base_path": str(tmp_path)}
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "mas-cli").write_text("#!/bin/sh\n")
    warn_only = "\n".join(line for line in DOCTOR_STDERR.splitlines()[:4])
    mas.__salt__["cmd.run_all"] = lambda cmd, **kw: {"retcode": 0, "stdout": "", "stderr": warn_only}
    mas.__salt__["cp.get_file_str"] = lambda url: (REPO_DEFAULTS.read_text())
    assert mas.doctor()["result"] is True
    assert "retcode" not in mas.__context__
    assert mas.doctor(strict=True)["result"] is False


def test_a_symlink_in_place_of_a_secret_is_refused(tmp_path):
    """Root must never read, chown or chmod what a planted link points at."""
    target = tmp_path / "victim"
    target.write_text("not yours")
    target.chmod(0o644)
    link = tmp_path / "homeserver_secret"
    link.symlink_to(target)
    with pytest.raises(CommandExecutionError, match="symlink is refused"):
        mas.write_secret(str(link), "token", None, ME, MY_GROUP)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644 and target.read_text() == "not yours"


def test_secrets_under_lookup_are_refused(pillar):
    pillar["mas"] = {"enabled": True, "server_name": "example.com",
                     "lookup": {"secrets": {"encryption": "a" * 64}, "database": {"password": "x"}}}
    with pytest.raises(SaltInvocationError) as err:
        mas.mapdata(DEFAULTS)
    assert "mas:lookup:secrets:encryption: secrets belong under mas:secrets:encryption" in str(err.value)
    assert "mas:lookup:database:password" in str(err.value)
    assert "a" * 64 not in str(err.value)
