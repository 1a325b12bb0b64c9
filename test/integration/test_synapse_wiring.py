"""The Synapse side of the integration against a real Synapse (issue 4).

* The drop-in written by ``mas.synapse`` (real ``salt-call``) is accepted by
  Synapse's own config loader, and a Synapse started with it delegates token
  checks to a MAS stand-in (introspection) and guards ``/_synapse/mas``.
* Every conflict is checked twice: the formula refuses it naming the key and
  its file, *and* Synapse's loader refuses the same config (the Synapse config
  plus the drop-in the formula would write), so the rules follow Synapse, not
  our own belief.
* While migrating there is no drop-in: Synapse keeps password login (and OIDC).
"""

import json
import os
import secrets
import shutil
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import salt.config
import salt.loader
import yaml

from harness.util import LOOPBACK, require_binary, unavailable
from pillars import PILLAR_SECRETS, deep_update

pytestmark = pytest.mark.integration

DROPIN = "matrix-authentication-service.yaml"
SECRET = PILLAR_SECRETS["homeserver_secret"]
OIDC_PROVIDER = {
    "idp_id": "kc",
    "idp_name": "Keycloak",
    "issuer": "https://id.example.com/",
    "client_id": "synapse",
    "client_secret": "oidc-client-secret",
    "discover": False,
    "authorization_endpoint": "https://id.example.com/authorize",
    "token_endpoint": "https://id.example.com/token",
    "userinfo_endpoint": "https://id.example.com/userinfo",
    "user_mapping_provider": {"config": {"localpart_template": "{{ user.preferred_username }}"}},
}

# Python modules standing in for third-party password auth providers, so that
# Synapse can load them (shared-secret-auth, rest-auth, LDAP in the seed).
STUB_MODULES = {
    "rest_auth_provider.py": '''
class RestAuthProvider:
    """Old-style password provider stand-in (rest-auth)."""

    def __init__(self, config, account_handler):
        self.config = config

    @staticmethod
    def parse_config(config):
        return config
''',
    "ldap_auth_provider.py": '''
class LdapAuthProvider:
    """Stand-in for matrix-synapse-ldap3 (legacy ldap_config)."""

    def __init__(self, config, api):
        self.config = config

    @staticmethod
    def parse_config(config):
        return config
''',
    "shared_secret_authenticator.py": '''
class SharedSecretAuthProvider:
    """Stand-in for shared-secret-auth: registers a password auth callback."""

    def __init__(self, config, api):
        api.register_password_auth_provider_callbacks(
            auth_checkers={("com.devture.shared_secret_auth", ("token",)): self.check}
        )

    @staticmethod
    def parse_config(config):
        return config

    async def check(self, username, login_type, login_dict):
        return None
''',
}


class MasStandIn:
    """The part of MAS that Synapse talks to: token introspection.

    ``POST <prefix>/oauth2/introspect`` answers ``{"active": false}`` (every
    token is unknown) and records the request; everything else is 404.
    """

    def __init__(self, prefix="/auth"):
        self.prefix = prefix
        self.introspections = []
        self._server = ThreadingHTTPServer((LOOPBACK, 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="mas-stand-in", daemon=True)
        self._thread.start()

    def _handler(self):
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                if self.path != f"{stand_in.prefix}/oauth2/introspect":
                    self._send(404, {"error": "not found"})
                    return
                stand_in.introspections.append(
                    {"authorization": self.headers.get("Authorization"), "form": urllib.parse.parse_qs(body)}
                )
                self._send(200, {"active": False})

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format, *args):
                """Stay quiet."""

        return Handler

    def stop(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def wiring_pillar(root, server, migrating=False, **extra):
    """An enabled pillar writing under ``root`` and wiring the Synapse ``server``."""
    pillar = {
        "enabled": True,
        "server_name": "example.com",
        "migration_in_progress": migrating,
        "runtime": "binary",
        "binary": {"path": "/usr/local/bin/mas-cli", "share_dir": "/usr/local/share/mas-cli"},
        "base_path": str(root / "mas"),
        "service": {"manage": False, "unit_dir": str(root / "units")},
        "secrets": {"homeserver_secret": SECRET},
        "synapse": {
            "restart": False,
            "user": "root",
            "group": "root",
            "config_files": [str(server.config_path)],
            "config_dir": str(server.conf_d),
        },
        "proxy": {"type": "none", "reload": False},
    }
    return deep_update(pillar, extra)


def dropin_state(res):
    return res.by_id("mas-synapse-file-mas_synapse-dropin")


def require_extra(module, what):
    """Skip (fail under CI=true) when Synapse's optional dependency is missing."""
    try:
        __import__(module)
    except ImportError:
        unavailable(f"{what} needs the Python package {module!r} (matrix-synapse extras oidc/jwt/saml2)")


@pytest.fixture(scope="module")
def minion(module_salt_minion):
    return module_salt_minion


@pytest.fixture(scope="module")
def mas_stand_in():
    server = MasStandIn()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def wired(minion, synapse_factory, mas_stand_in, tmp_path_factory):
    """A Synapse wired by ``mas.synapse`` to the MAS stand-in, started."""
    synapse = synapse_factory()
    root = tmp_path_factory.mktemp("wired")
    pillar = wiring_pillar(root, synapse, synapse={"mas_endpoint": f"{mas_stand_in.url}/auth/"})
    res = minion.apply(pillar, sls="mas.synapse")
    assert res.returncode == 0, res.output
    synapse.start()
    return {"synapse": synapse, "root": root, "pillar": pillar, "first": res}


# ------------------------------------------------------------ delegated mode


def test_dropin_is_written_and_accepted_by_synapse(wired, mas_stand_in):
    synapse = wired["synapse"]
    dropin = synapse.conf_d / DROPIN
    assert wired["first"].by_id("mas-synapse-file-mas_synapse-dropin")["changes"]
    content = yaml.safe_load(dropin.read_text())
    secret_path = wired["root"] / "mas" / "synapse" / "homeserver_secret"
    assert content == {
        "matrix_authentication_service": {
            "enabled": True,
            "endpoint": f"{mas_stand_in.url}/auth/",
            "secret_path": str(secret_path),
        },
        "experimental_features": {"msc4108_enabled": True},
    }
    assert "enabled: true\n" in dropin.read_text()
    assert secret_path.read_text() == SECRET
    assert oct(secret_path.stat().st_mode & 0o777) == "0o600"
    assert synapse.check_config() == (True, "Config parses OK!")


def test_reapply_changes_nothing(wired, minion):
    res = minion.apply(wired["pillar"], sls="mas.synapse")
    assert res.returncode == 0, res.output
    assert res.changed == []


def test_test_mode_predicts_without_writing(minion, synapse_factory, wired, mas_stand_in, tmp_path_factory):
    """test=True on a fresh tree writes nothing; on the wired tree a changed
    endpoint is predicted with its diff, and so is the restart it triggers --
    which is not predicted when nothing changes."""
    fresh = synapse_factory()
    root = tmp_path_factory.mktemp("test-mode")
    res = minion.apply(wiring_pillar(root, fresh), sls="mas.synapse", test=True)
    assert res.returncode == 0, res.output
    assert dropin_state(res)["result"] is None
    assert not (fresh.conf_d / DROPIN).exists() and not (root / "mas").exists()

    dropin = wired["synapse"].conf_d / DROPIN
    before = dropin.read_text()
    moved = deep_update(wired["pillar"], {"synapse": {"mas_endpoint": "http://127.0.0.1:9/auth/", "restart": True}})
    res = minion.apply(moved, sls="mas.synapse", test=True)
    state = dropin_state(res)
    assert state["result"] is None and "http://127.0.0.1:9/auth/" in state["changes"]["diff"]
    assert res.by_id("mas-synapse-restart-mas_synapse-restarted")["result"] is None
    assert dropin.read_text() == before

    same = deep_update(wired["pillar"], {"synapse": {"restart": True}})
    res = minion.apply(same, sls="mas.synapse", test=True)
    assert res.returncode == 0, res.output
    assert "none of the onchanges reqs changed" in res.by_id("mas-synapse-restart-mas_synapse-restarted")["comment"]


def test_synapse_introspects_tokens_at_mas(wired, mas_stand_in):
    synapse = wired["synapse"]
    token = "mat_" + secrets.token_hex(8)
    before = len(mas_stand_in.introspections)
    resp = synapse.request("GET", "/_matrix/client/v3/account/whoami", token=token)
    assert resp.status_code == 401, resp.text
    seen = mas_stand_in.introspections[before:]
    assert seen and seen[-1]["authorization"] == f"Bearer {SECRET}"
    assert seen[-1]["form"]["token"] == [token]


def test_mas_endpoints_need_the_shared_secret(wired):
    synapse = wired["synapse"]
    path = "/_synapse/mas/is_localpart_available"
    assert synapse.request("GET", path, token=SECRET).status_code == 400
    assert synapse.request("GET", path).status_code == 401
    assert synapse.request("GET", path, token="not-the-secret").status_code == 403


def test_synapse_no_longer_serves_login(wired):
    """Logins must reach MAS through the compatibility layer (mas.proxy)."""
    resp = wired["synapse"].request("GET", "/_matrix/client/v3/login")
    assert resp.status_code == 404 and resp.json()["errcode"] == "M_UNRECOGNIZED"


def test_conflict_is_refused_before_anything_is_written(minion, synapse_factory, tmp_path_factory):
    synapse = synapse_factory(extra_config={"enable_registration": True, "session_lifetime": "24h"})
    extra = synapse.conf_d / "10-lifetimes.yaml"
    extra.write_text(yaml.safe_dump({"refresh_token_lifetime": "1h"}))
    root = tmp_path_factory.mktemp("refused")
    res = minion.apply(wiring_pillar(root, synapse), sls="mas.synapse")
    assert res.returncode != 0
    state = dropin_state(res)
    assert state["result"] is False and state["changes"] == {}
    for key, path in (
        ("enable_registration", synapse.config_path),
        ("session_lifetime", synapse.config_path),
        ("refresh_token_lifetime", extra),
    ):
        assert f"- {key} in {path}: " in state["comment"]
    assert "Nothing was changed" in state["comment"]
    assert not (synapse.conf_d / DROPIN).exists()
    assert SECRET not in res.output


# ------------------------------------------------------------ conflict matrix


@pytest.fixture(scope="module")
def formula_modules(repo_root, tmp_path_factory):
    """The formula's execution modules through Salt's real loader."""
    opts = salt.config.minion_config(None)
    opts.update(
        file_client="local",
        module_dirs=[str(repo_root / "_modules")],
        cachedir=str(tmp_path_factory.mktemp("loader-cache")),
        pillar={},
        grains={},
    )
    return salt.loader.minion_mods(opts)


@pytest.fixture(scope="module")
def stub_modules(tmp_path_factory):
    """A directory of password-provider stand-ins, put on PYTHONPATH."""
    directory = tmp_path_factory.mktemp("stub-modules")
    for name, text in STUB_MODULES.items():
        (directory / name).write_text(text)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")])))
        yield directory


# (id, Synapse setting, key the formula names, Synapse's message, optional dependency)
DELEGATED_CONFLICTS = [
    (
        "registration",
        {"enable_registration": True},
        "enable_registration",
        "Registration cannot be enabled when OAuth delegation is enabled",
        None,
    ),
    (
        "disable-registration",
        {"disable_registration": False},
        "disable_registration",
        "Registration cannot be enabled when OAuth delegation is enabled",
        None,
    ),
    (
        "captcha",
        {"enable_registration_captcha": True},
        "enable_registration_captcha",
        "CAPTCHA cannot be enabled when OAuth delegation is enabled",
        None,
    ),
    (
        "consent",
        {"user_consent": {"version": "1.0", "template_dir": "@consent@"}},
        "user_consent",
        "User consent cannot be enabled when OAuth delegation is enabled",
        None,
    ),
    (
        "oidc-providers",
        {"oidc_providers": [OIDC_PROVIDER]},
        "oidc_providers",
        "SSO cannot be enabled when OAuth delegation is enabled",
        "authlib",
    ),
    (
        "oidc-config",
        {"oidc_config": dict(OIDC_PROVIDER, enabled=True)},
        "oidc_config",
        "SSO cannot be enabled when OAuth delegation is enabled",
        "authlib",
    ),
    (
        "saml2",
        {"saml2_config": {"sp_config": {"metadata": {}}}},
        "saml2_config",
        "SSO cannot be enabled when OAuth delegation is enabled",
        "saml2",
    ),
    (
        "cas",
        {"cas_config": {"enabled": True, "server_url": "https://cas.example.com"}},
        "cas_config",
        "SSO cannot be enabled when OAuth delegation is enabled",
        None,
    ),
    (
        "jwt",
        {"jwt_config": {"enabled": True, "secret": "jwt-secret", "algorithm": "HS256"}},
        "jwt_config",
        "SSO cannot be enabled when OAuth delegation is enabled",
        "authlib",
    ),
    (
        "password-providers",
        {
            "password_providers": [
                {"module": "rest_auth_provider.RestAuthProvider", "config": {"endpoint": "http://127.0.0.1:9"}}
            ]
        },
        "password_providers",
        "Password auth providers cannot be enabled when OAuth delegation is enabled",
        None,
    ),
    (
        "ldap-config",
        {"ldap_config": {"enabled": True, "uri": "ldap://127.0.0.1"}},
        "ldap_config",
        "Password auth providers cannot be enabled when OAuth delegation is enabled",
        None,
    ),
    (
        "password-login",
        {"password_config": {"enabled": True}},
        "password_config.enabled",
        "Password auth cannot be enabled when OAuth delegation is enabled",
        None,
    ),
    (
        "password-reauth",
        {"password_config": {"enabled": "only_for_reauth"}},
        "password_config.enabled",
        "Password auth cannot be enabled when OAuth delegation is enabled",
        None,
    ),
    (
        "existing-session",
        {"login_via_existing_session": {"enabled": True}},
        "login_via_existing_session.enabled",
        "Login via existing session cannot be enabled when OAuth delegation is enabled",
        None,
    ),
    (
        "3pid-changes",
        {"enable_3pid_changes": True},
        "enable_3pid_changes",
        "enable_3pid_changes cannot be enabled when OAuth delegation is enabled",
        None,
    ),
    (
        "refresh-token-lifetime",
        {"refresh_token_lifetime": "1h"},
        "refresh_token_lifetime",
        "refresh_token_lifetime cannot be set when OAuth delegation is enabled",
        None,
    ),
    (
        "nonrefreshable-lifetime",
        {"nonrefreshable_access_token_lifetime": "1h"},
        "nonrefreshable_access_token_lifetime",
        "nonrefreshable_access_token_lifetime cannot be set when OAuth delegation is enabled",
        None,
    ),
    (
        "session-lifetime",
        {"session_lifetime": "1h"},
        "session_lifetime",
        "session_lifetime cannot be set when OAuth delegation is enabled",
        None,
    ),
    (
        "msc3861",
        {"experimental_features": {"msc3861": {"enabled": True}}},
        "experimental_features.msc3861",
        "experimental_features.msc3861 was removed",
        None,
    ),
    (
        "msc4108-delegation",
        {"experimental_features": {"msc4108_delegation_endpoint": "https://qr.example.com/"}},
        "experimental_features.msc4108_delegation_endpoint",
        "You cannot have MSC4108 both enabled and delegated at the same time",
        None,
    ),
]

# Refused while migrating: Synapse rejects them without MAS (no drop-in).
MIGRATING_CONFLICTS = [
    (
        "msc4108-enabled",
        {"experimental_features": {"msc4108_enabled": True}},
        "experimental_features.msc4108_enabled",
        "MSC4108 requires matrix_authentication_service to be enabled",
    ),
    (
        "msc4108-delegation",
        {"experimental_features": {"msc4108_delegation_endpoint": "https://qr.example.com/"}},
        "experimental_features.msc4108_delegation_endpoint",
        "MSC4108 requires matrix_authentication_service to be enabled",
    ),
    (
        "msc4388",
        {"experimental_features": {"msc4388_mode": "open"}},
        "experimental_features.msc4388_mode",
        "MSC4388 requires matrix_authentication_service to be enabled",
    ),
]

OPTIONAL = {"authlib": ("authlib", "OIDC/JWT in Synapse"), "saml2": ("saml2", "SAML2 in Synapse")}


@pytest.fixture(scope="module")
def matrix(synapse_factory, formula_modules, stub_modules, tmp_path_factory):
    """Both verdicts for every case: the formula's conflicts and Synapse's loader.

    Synapse loads ``hs.yaml``, the conflicting setting (as the operator's own
    file) and the drop-in the formula would write for that config (with the
    operator's experimental_features carried over). Migration cases load no
    drop-in. All configs are loaded in one process (about 0.2 s each).
    """
    synapse = synapse_factory()
    cases = tmp_path_factory.mktemp("conflicts")
    consent = cases / "consent-templates"
    consent.mkdir()
    secret_file = cases / "secret"
    secret_file.write_text(SECRET)
    conflicts = formula_modules["mas_synapse.conflicts"]
    dropin_content = formula_modules["mas_synapse.dropin_content"]
    formula, variants, keys = {}, [], []

    def add(mode, name, setting, migrating, with_dropin):
        text = yaml.safe_dump(setting).replace("@consent@", str(consent))
        own = cases / f"{mode}-{name}.yaml"
        own.write_text(text)
        setting = yaml.safe_load(text)
        dropin = cases / f"{mode}-{name}.d" / DROPIN
        formula[(mode, name)] = conflicts(
            [str(synapse.config_path), str(own)],
            str(dropin.parent),
            dropin=str(dropin),
            migrating=migrating,
            extra_config={},
        )
        paths = [own]
        if with_dropin:
            dropin.parent.mkdir()
            content = dropin_content("http://127.0.0.1:9/auth/", str(secret_file), setting.get("experimental_features"))
            dropin.write_text(yaml.safe_dump(content))
            paths.append(dropin)
        variants.append(paths)
        keys.append((mode, name))

    for name, setting, *_ in DELEGATED_CONFLICTS:
        add("delegated", name, setting, migrating=False, with_dropin=True)
        add("migrating", name, setting, migrating=True, with_dropin=False)
    for name, setting, *_ in MIGRATING_CONFLICTS:
        add("migrating-only", name, setting, migrating=True, with_dropin=False)
    add("delegated", "baseline", {"public_baseurl": "https://matrix.example.com/"}, migrating=False, with_dropin=True)
    kept = {"oidc_providers": [OIDC_PROVIDER], "password_config": {"enabled": True}}
    add("migrating", "kept", kept, migrating=True, with_dropin=False)
    synapse_verdicts = dict(zip(keys, synapse.check_configs(variants), strict=True))
    return {"formula": formula, "synapse": synapse_verdicts}


def test_baseline_dropin_is_accepted(matrix):
    assert matrix["formula"][("delegated", "baseline")] == []
    assert matrix["synapse"][("delegated", "baseline")] == (True, "Config parses OK!")


@pytest.mark.parametrize(
    ("name", "key", "message", "needs"),
    [(name, key, message, needs) for name, _, key, message, needs in DELEGATED_CONFLICTS],
    ids=[case[0] for case in DELEGATED_CONFLICTS],
)
def test_conflict_refused_by_formula_and_synapse(matrix, name, key, message, needs):
    found = matrix["formula"][("delegated", name)]
    assert [item["key"] for item in found] == [key]
    assert found[0]["file"].endswith(f"delegated-{name}.yaml")
    if needs:
        require_extra(*OPTIONAL[needs])
        if needs == "saml2":
            require_binary("xmlsec1")
    ok, output = matrix["synapse"][("delegated", name)]
    assert not ok and message in output, output


@pytest.mark.parametrize(
    ("name", "key", "message", "needs"),
    [(name, key, message, needs) for name, _, key, message, needs in DELEGATED_CONFLICTS],
    ids=[case[0] for case in DELEGATED_CONFLICTS],
)
def test_migration_keeps_only_oidc_and_password_login(matrix, name, key, message, needs):
    """While migrating, the same rules apply except OIDC and password login."""
    found = [item["key"] for item in matrix["formula"][("migrating", name)]]
    kept = key in ("oidc_providers", "oidc_config", "password_config.enabled")
    assert found == ([] if kept else [key])


@pytest.mark.parametrize(
    ("name", "key", "message"),
    [(name, key, message) for name, _, key, message in MIGRATING_CONFLICTS],
    ids=[case[0] for case in MIGRATING_CONFLICTS],
)
def test_migration_refuses_what_synapse_refuses_without_mas(matrix, name, key, message):
    assert [item["key"] for item in matrix["formula"][("migrating-only", name)]] == [key]
    ok, output = matrix["synapse"][("migrating-only", name)]
    assert not ok and message in output, output


def test_migration_accepts_oidc_and_password_login(matrix):
    require_extra(*OPTIONAL["authlib"])
    assert matrix["formula"][("migrating", "kept")] == []
    assert matrix["synapse"][("migrating", "kept")] == (True, "Config parses OK!")


def test_password_auth_module_fails_synapse_start(synapse_factory, formula_modules, stub_modules, tmp_path):
    """Modules are refused at start-up, not by the loader: start Synapse to prove the rule."""
    module = {"module": "shared_secret_authenticator.SharedSecretAuthProvider", "config": {}}
    synapse = synapse_factory(extra_config={"modules": [module]})
    found = formula_modules["mas_synapse.conflicts"](
        [str(synapse.config_path)], str(synapse.conf_d), dropin=str(synapse.conf_d / DROPIN), extra_config={}
    )
    assert [(item["key"], item["file"]) for item in found] == [("modules", str(synapse.config_path))]
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    content = formula_modules["mas_synapse.dropin_content"]("http://127.0.0.1:9/auth/", str(secret_file))
    (synapse.conf_d / DROPIN).write_text(yaml.safe_dump(content))
    with pytest.raises(RuntimeError) as failure:
        synapse.start()
    assert "Cannot use password auth provider callbacks when OAuth delegation is enabled" in str(failure.value)


# ------------------------------------------------------------- migration mode


def test_migration_keeps_synapse_authoritative(minion, synapse_factory, wired, tmp_path_factory):
    """An existing Synapse with OIDC and password login, marked for migration:
    the formula removes its drop-in (left from an earlier run), Synapse keeps
    password login; turning the migration flag off is then refused, naming
    what has to move to MAS first."""
    require_extra(*OPTIONAL["authlib"])
    synapse = synapse_factory(extra_config={"oidc_providers": [OIDC_PROVIDER], "password_config": {"enabled": True}})
    shutil.copy(wired["synapse"].conf_d / DROPIN, synapse.conf_d / DROPIN)
    root = tmp_path_factory.mktemp("migrating")

    # no MAS database in these tests: the rollback guard cannot count MAS-only users, so force it
    res = minion.apply(
        wiring_pillar(root, synapse, migrating=True, syn2mas={"force_rollback": True}), sls="mas.synapse"
    )
    assert res.returncode == 0, res.output
    state = dropin_state(res)
    assert state["result"] is True and state["changes"] == {"removed": str(synapse.conf_d / DROPIN)}
    assert "removed while mas:migration_in_progress is true" in state["comment"]
    assert not (synapse.conf_d / DROPIN).exists()
    assert (root / "mas" / "synapse" / "homeserver_secret").read_text() == SECRET

    synapse.start()
    localpart = "alice_" + secrets.token_hex(3)
    user = synapse.register_user(localpart, "alice-password")
    token = synapse.login(localpart, "alice-password")
    assert synapse.whoami(token)["user_id"] == user["user_id"]
    flows = [flow["type"] for flow in synapse.request("GET", "/_matrix/client/v3/login").json()["flows"]]
    assert "m.login.password" in flows and "m.login.sso" in flows

    res = minion.apply(wiring_pillar(root, synapse), sls="mas.synapse")
    assert res.returncode != 0
    # the syn2mas lock-out guard refuses first: alice logs in with a password and no migration is recorded
    guard = res.by_id("mas-synapse-file-mas_syn2mas-safe_to_delegate")
    assert guard["result"] is False and "lock every one of them out" in guard["comment"]
    assert not (synapse.conf_d / DROPIN).exists()
    # with the migration recorded (as mas.syn2mas would), the conflict check names what has to move to MAS
    marker = {"version": 1, "phase": "verified", "history": [{"phase": "verified", "at": "2026-01-01T00:00:00+00:00"}]}
    (root / "mas" / "formula" / "syn2mas.json").write_text(json.dumps(marker))
    res = minion.apply(wiring_pillar(root, synapse), sls="mas.synapse")
    assert res.returncode != 0
    comment = dropin_state(res)["comment"]
    assert f"- oidc_providers in {synapse.config_path}: " in comment
    assert f"- password_config.enabled in {synapse.config_path}: " in comment
    assert not (synapse.conf_d / DROPIN).exists()
