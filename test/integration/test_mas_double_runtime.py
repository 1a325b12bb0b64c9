"""MAS's runtime rules, played by the double and pinned against upstream (test/mas_double/FIDELITY.md).

Every test here talks to ``harness.mas.cli()``: the double by default, the real
``mas-cli`` when ``MAS_REAL_CLI``/``MAS_REAL_SHARE`` are set, so the same
assertions hold for both.  Covered: ``config check`` refusing what MAS's
``validate()`` refuses (wording included), ``server`` refusing what it refuses
at start (a listener ``address`` that is not a socket address, a missing
policy, manifest, translations or templates), ``POST /users`` provisioning on
the homeserver synchronously, the admin API's 400/401, and that every config
the formula renders passes ``config check``.
"""

from __future__ import annotations

import copy
import json
import secrets
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import yaml

from formula_modules import DEFAULTS, MODULES, dunders
from harness import mas as mas_target
from harness.util import LOOPBACK, free_port
from mas_double import run_cli, run_server
from mas_double.runner import cli_env
from pillars import deep_update, wired_pillar
from saltrun import REPO_ROOT

pytestmark = pytest.mark.integration

ROLE = "mas_runtime"
PASSWORD = "mas-runtime-db-password"
SECRET = "runtime-shared-secret-0123456789"
ADMIN_ID = "01J0ADM1NC11ENT00000000000"
ADMIN_SECRET = "admin-client-secret"
OTHER_ID = "01J0THERC11ENT000000000000"


class Homeserver:
    """Synapse's ``/_synapse/mas`` API, enough for ``POST /users``; ``refuse`` makes provisioning fail."""

    def __init__(self):
        self.refuse = False
        self.provisioned: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                parts = urlsplit(self.path)
                if parts.path == "/_synapse/mas/is_localpart_available":
                    if "localpart" not in parse_qs(parts.query):
                        return self._send(400, {"errcode": "M_MISSING_PARAM", "error": "Missing localpart"})
                    return self._send(200, {})
                return self._send(404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if self.path == "/_synapse/mas/provision_user":
                    if fake.refuse:
                        return self._send(500, {"errcode": "M_UNKNOWN", "error": "Internal server error"})
                    fake.provisioned.append(body["localpart"])
                    return self._send(201, {})
                return self._send(200, {})

            def log_message(self, format, *args):
                """Quiet."""

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def homeserver() -> Iterator[Homeserver]:
    fake = Homeserver()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def database(pg) -> Iterator[str]:
    """A MAS database with MAS's schema, owned by the MAS role; yields its DSN."""
    name = "mas_runtime_rules"
    pg.create_role(ROLE, password=PASSWORD)
    pg.drop_database(name)
    pg.create_database(name, owner=ROLE)
    mas_target.migrate(pg, name, user=ROLE)
    yield pg.dsn(name, ROLE, PASSWORD)
    pg.drop_database(name)


@pytest.fixture(scope="module")
def share(tmp_path_factory) -> Path:
    return mas_target.share_dir(tmp_path_factory.mktemp("share"))


@pytest.fixture
def base(database, homeserver, share) -> dict:
    """A complete MAS config (the double's or real MAS's share/, the module's database and homeserver)."""
    return {
        **mas_target.share_config(share),
        "http": {
            "public_base": f"http://{LOOPBACK}:8080/",
            "listeners": [
                {
                    "name": "web",
                    "resources": [{"name": "oauth"}, {"name": "adminapi"}],
                    "binds": [{"address": f"{LOOPBACK}:{free_port()}"}],
                },
                {
                    "name": "internal",
                    "resources": [{"name": "health"}],
                    "binds": [{"host": LOOPBACK, "port": free_port()}],
                },
            ],
        },
        "database": {"uri": database},
        "secrets": {"encryption": secrets.token_hex(32), "keys_dir": str(_keys_dir(share))},
        "matrix": {"kind": "synapse", "homeserver": "example.test", "secret": SECRET, "endpoint": homeserver.url},
        "clients": [
            {"client_id": ADMIN_ID, "client_auth_method": "client_secret_basic", "client_secret": ADMIN_SECRET},
            {"client_id": OTHER_ID, "client_auth_method": "client_secret_basic", "client_secret": "other-secret"},
        ],
        "policy": {**mas_target.share_config(share)["policy"], "data": {"admin_clients": [ADMIN_ID]}},
    }


def _keys_dir(share: Path) -> Path:
    """One RSA signing key (MAS needs none to start, the formula always writes one)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    keys = share.parent / "keys"
    if not keys.is_dir():
        keys.mkdir()
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        (keys / "rsa.pem").write_bytes(pem)
    return keys


def write(tmp_path: Path, config: dict, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def check(tmp_path: Path, config: dict) -> subprocess.CompletedProcess:
    return run_cli(["config", "check"], [write(tmp_path, config)], cwd=tmp_path)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The ``Error: ...`` line of a failed command."""
    return next((line for line in result.stderr.splitlines() if line.startswith("Error: ")), result.stderr)


# ----------------------------------------------------------------- config check

SMTP = {"transport": "smtp", "mode": "starttls", "hostname": "smtp.example.com"}
F = "in config.yaml YAML file"
#: (change to the base config, the error ``config check`` prints: MAS's validate() wording)
CONFIG_RULES = [
    ({"email": {**SMTP, "mode": None}}, f'missing field `mode` for key "default.email.mode" {F}'),
    ({"email": {**SMTP, "hostname": None}}, f'missing field `hostname` for key "default.email.hostname" {F}'),
    ({"email": {**SMTP, "username": "mas"}}, f'missing field `password` for key "default.email.password" {F}'),
    ({"email": {**SMTP, "password": "x"}}, f'missing field `username` for key "default.email.username" {F}'),
    (
        {"email": {**SMTP, "username": "u", "password": "p", "password_file": "/f"}},
        f'duplicate field `password_file` for key "default.email.password" {F}',
    ),
    (
        {"email": {**SMTP, "command": "/usr/sbin/sendmail"}},
        "unknown field: found `command`, expected `one of `from`, `reply_to`, `transport`, `mode`, `hostname`,"
        f' `port`, `username`, `password`` for key "default.email.command" {F}',
    ),
    ({"email": {"transport": "sendmail"}}, f'missing field `command` for key "default.email.command" {F}'),
    (
        {"email": {"transport": "sendmail", "command": "/usr/sbin/sendmail", "hostname": "h"}},
        "unknown field: found `hostname`, expected `one of `from`, `reply_to`, `transport`, `command``"
        f' for key "default.email.hostname" {F}',
    ),
    (
        {"email": {**SMTP, "from": "Doe, John <j@example.com>"}},
        f'Invalid input for key "default.email.from" {F}',
    ),
    (
        {
            "upstream_oauth2": {
                "providers": [
                    {"id": "01HFVBY12TMNTYTBV8W921M5FA", "client_id": "c", "token_endpoint_auth_method": "none"}
                ]
            }
        },
        f'The `issuer` field is required when discovery is enabled for key "default.upstream_oauth2.providers.0" {F}',
    ),
    (
        {
            "upstream_oauth2": {
                "providers": [
                    {
                        "id": "01HFVBY12TMNTYTBV8W921M5FA",
                        "client_id": "c",
                        "issuer": "https://id.example.com/",
                        "token_endpoint_auth_method": "client_secret_post",
                    }
                ]
            }
        },
        f'missing field `client_secret` for key "default.upstream_oauth2.providers.0" {F}',
    ),
    (
        {
            "upstream_oauth2": {
                "providers": [
                    {
                        "id": "01HFVBY12TMNTYTBV8W921M5FA",
                        "client_id": "c",
                        "issuer": "https://id.example.com/",
                        "client_secret": "s",
                        "token_endpoint_auth_method": "none",
                    }
                ]
            }
        },
        "Unexpected field `client_secret` for the selected authentication method"
        f' for key "default.upstream_oauth2.providers.0" {F}',
    ),
    (
        {"clients": [{"client_id": OTHER_ID, "client_auth_method": "client_secret_post"}]},
        f'client_secret is required for client_secret_post for key "default.clients.2.client_auth_method" {F}',
    ),
    (
        {"database": {"uri": "postgresql://", "host": "db"}},
        "uri must not be specified if host, port, socket, username, password, password_file, or database are"
        f' specified for key "default.database" {F}',
    ),
    (
        {"passwords": {"enabled": True, "schemes": []}},
        f'Requires at least one password scheme in the config for key "default.passwords" {F}',
    ),
    (
        {"secrets": {"encryption": "0123"}},
        f'Can\'t convert a Byte Vector of length 2 to the output type. for key "default.secrets" {F}',
    ),
    (
        {"captcha": {"service": "recaptcha_v2", "site_key": "k"}},
        f'missing field `secret_key` for key "default.captcha.secret_key" {F}',
    ),
    (
        {"rate_limiting": {"login": {"per_ip": {"burst": 3, "per_second": 0}}}},
        "`per_second` must be a number that is more than zero and less than 1_000_000_000 (1e9)"
        f' for key "default.rate_limiting.login.per_ip" {F}',
    ),
    (
        {"experimental": {"session_limit": {"soft_limit": 5, "hard_limit": 3}}},
        "Session `hard_limit` must be greater than or equal to the user-facing `soft_limit`."
        f' for key "default.experimental.session_limit.hard_limit" {F}',
    ),
]


def _apply(config: dict, change: dict) -> dict:
    out = copy.deepcopy(config)
    for key, value in change.items():
        if key == "clients":
            out["clients"] = out["clients"] + value
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
        if isinstance(out[key], dict):
            out[key] = {k: v for k, v in out[key].items() if v is not None}
    return out


def test_config_check_passes_the_base_config(tmp_path, base):
    result = check(tmp_path, base)
    assert result.returncode == 0, result.stderr
    assert "Configuration file looks good" in result.stderr


@pytest.mark.parametrize(
    ("change", "message"), CONFIG_RULES, ids=[m.split(" for key")[0][:50] for _, m in CONFIG_RULES]
)
def test_config_check_refuses_what_mas_validate_refuses(tmp_path, base, change, message):
    result = check(tmp_path, _apply(base, change))
    assert result.returncode == 1, result.stderr
    assert error_line(result) == f"Error: {message}"


def test_telemetry_is_checked_before_any_command(tmp_path, base):
    result = check(tmp_path, {**base, "telemetry": {"tracing": {"sample_rate": 2.0}}})
    assert result.returncode == 1
    assert (
        "Error: Failed to load telemetry config\n\nCaused by:\n    Tracing sample rate must be between 0.0 and 1.0"
        in (result.stderr)
    )


def test_config_check_does_not_parse_listener_addresses(tmp_path, base):
    """`address: localhost:8081` passes config check (MAS parses it only at server start)."""
    config = copy.deepcopy(base)
    config["http"]["listeners"][1]["binds"] = [{"address": "localhost:8081"}]
    assert check(tmp_path, config).returncode == 0


# ----------------------------------------------------------------------- server


def test_server_refuses_a_host_name_as_listener_address(tmp_path, base):
    config = copy.deepcopy(base)
    config["http"]["listeners"][1]["binds"] = [{"address": "localhost:8081"}]
    server = run_server([write(tmp_path, config)], wait=False, log_path=tmp_path / "mas.log")
    try:
        assert server.proc.wait(timeout=60) == 1
    finally:
        server.stop()
    assert (
        "Error: could not parse listener address localhost:8081\n\nCaused by:\n    invalid socket address syntax"
        in (server.log())
    )


def test_server_binds_host_and_port_listeners(tmp_path, base):
    config = copy.deepcopy(base)
    port = free_port()
    config["http"]["listeners"][1]["binds"] = [{"host": "localhost", "port": port}]
    with run_server([write(tmp_path, config)], log_path=tmp_path / "mas.log") as mas:
        assert requests.get(f"http://localhost:{port}/health", timeout=10).status_code == 200
        assert mas.proc.poll() is None


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        (
            "policy.wasm",
            "Error: failed to open OPA WASM policy file\n\nCaused by:\n    No such file or directory (os error 2)",
        ),
        (
            "manifest.json",
            "Caused by:\n    0: failed to read the assets manifest\n    1: No such file or directory (os error 2)",
        ),
        ("translations", "    0: failed to load the translations\n    1: Failed to load translation directory"),
        ("templates", "Caused by:\n    No such file or directory (os error 2)"),
    ],
)
def test_server_refuses_a_missing_share_file(tmp_path, base, share, drop, message):
    """Share paths are absolute in the formula's config; here they are left to MAS's
    defaults (``./share/...`` of the working directory) with one part missing."""
    workdir = tmp_path / "work"
    (workdir / "share").mkdir(parents=True)
    for entry in share.iterdir():
        if entry.name != drop:
            (workdir / "share" / entry.name).symlink_to(entry)
    config = {k: v for k, v in base.items() if k != "templates"}
    config["policy"] = {"data": base["policy"]["data"]}
    path = write(tmp_path, config)
    proc = subprocess.run(
        [str(mas_target.cli()), "-c", str(path), "server"],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert message in proc.stderr
    if drop != "policy.wasm":
        assert "Error: Failed to load the templates at ./share/templates/" in proc.stderr


def test_duplicate_password_versions_fail_the_server_not_config_check(tmp_path, base):
    schemes = [{"version": 1, "algorithm": "bcrypt"}, {"version": 1, "algorithm": "argon2id"}]
    config = {**base, "passwords": {"enabled": True, "schemes": schemes}}
    assert check(tmp_path, config).returncode == 0
    server = run_server([write(tmp_path, config)], wait=False, log_path=tmp_path / "mas.log")
    try:
        assert server.proc.wait(timeout=60) == 1
    finally:
        server.stop()
    assert "Error: Multiple password schemes have the same versions" in server.log()


# -------------------------------------------------------------------- admin API


@pytest.fixture
def mas(tmp_path, base) -> Iterator:
    with run_server([write(tmp_path, base)], log_path=tmp_path / "mas.log") as server:
        yield server


def _token(mas, client_id: str, secret: str, scope: str) -> str:
    response = requests.post(
        mas.url("oauth", "/oauth2/token"),
        auth=(client_id, secret),
        data={"grant_type": "client_credentials", "scope": scope},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def test_admin_api_authentication_errors(mas):
    url = mas.url("adminapi", "/api/admin/v1/users")
    missing = requests.get(url, timeout=10)
    assert (missing.status_code, missing.json()) == (400, {"errors": [{"title": "Missing authorization header"}]})
    graphql_only = _token(mas, OTHER_ID, "other-secret", "urn:mas:graphql:*")
    denied = requests.get(url, headers={"Authorization": f"Bearer {graphql_only}"}, timeout=10)
    assert (denied.status_code, denied.json()) == (401, {"errors": [{"title": "Missing urn:mas:admin scope"}]})


def test_create_user_provisions_on_the_homeserver_synchronously(mas, homeserver, pg):
    headers = {"Authorization": f"Bearer {_token(mas, ADMIN_ID, ADMIN_SECRET, 'urn:mas:admin')}"}
    url = mas.url("adminapi", "/api/admin/v1/users")
    created = requests.post(url, json={"username": "provisioned"}, headers=headers, timeout=30)
    assert created.status_code == 201, created.text
    assert "provisioned" in homeserver.provisioned  # before the answer, not by a later job

    homeserver.refuse = True
    try:
        refused = requests.post(url, json={"username": "refused"}, headers=headers, timeout=30)
    finally:
        homeserver.refuse = False
    assert refused.status_code == 500, refused.text
    titles = [error["title"] for error in refused.json()["errors"]]
    assert titles[:2] == [
        "Unexpected HTTP response while provisioning user in Synapse",
        "M_UNKNOWN: Internal server error",
    ]
    assert titles[2].startswith("HTTP status server error (500 Internal Server Error) for url (")
    # the user was not saved
    lookup = requests.get(url + "/by-username/refused", headers=headers, timeout=10)
    assert lookup.status_code == 404


@mas_target.double_only
def test_provision_refused_fault_switch(tmp_path, base):
    env = {"MAS_DOUBLE_FAULT": "provision-refused"}
    with run_server([write(tmp_path, base)], env=env, log_path=tmp_path / "mas.log") as mas:
        headers = {"Authorization": f"Bearer {_token(mas, ADMIN_ID, ADMIN_SECRET, 'urn:mas:admin')}"}
        url = mas.url("adminapi", "/api/admin/v1/users")
        refused = requests.post(url, json={"username": "faulted"}, headers=headers, timeout=30)
        assert refused.status_code == 500
        assert refused.json()["errors"][0]["title"] == "Unexpected HTTP response while provisioning user in Synapse"
        assert requests.get(url + "/by-username/faulted", headers=headers, timeout=10).status_code == 404


# ---------------------------------------------------- what the formula renders


@pytest.fixture
def configure_loader_modules():
    """The formula's modules wired as Salt's loader would (for ``mas.settings``)."""
    return dunders({})


def _rendered(pillar: dict) -> dict:
    """config.yaml as the formula renders it for the merged ``pillar`` (``mas.settings``)."""
    return MODULES["mas"].settings(deep_update(DEFAULTS, pillar))["mas_config"]


def _example_pillar() -> dict:
    return yaml.safe_load((REPO_ROOT / "pillar.example").read_text())["mas"]


@pytest.mark.parametrize("variant", ["pillar.example", "minimal", "full", "wired"])
def test_every_rendered_config_passes_config_check(tmp_path, minimal_pillar, full_pillar, pg, variant):
    mas_target.require_double_contracts()
    share = mas_target.share_dir(tmp_path)
    synapse = SimpleNamespace(
        base_url="http://127.0.0.1:8008", config_path=tmp_path / "homeserver.yaml", conf_d=tmp_path / "conf.d"
    )
    pillars = {
        "pillar.example": _example_pillar(),
        "minimal": minimal_pillar,
        "full": full_pillar,
        "wired": wired_pillar(tmp_path, pg, "mas", synapse, 8080, 8081),
    }
    pillar = dict(pillars[variant], binary={"path": str(mas_target.cli()), "share_dir": str(share)}, runtime="binary")
    config = _rendered(pillar)
    result = check(tmp_path, config)
    assert result.returncode == 0, f"{variant}: {result.stderr}"


def test_trusting_no_proxy_is_written_and_passes_config_check(tmp_path, minimal_pillar):
    """Issue 21, 7: ``mas:http:trusted_proxies: []`` (trust none) lands in config.yaml as ``[]``, which
    MAS accepts; left out, MAS would trust its private and loopback defaults."""
    mas_target.require_double_contracts()
    share = mas_target.share_dir(tmp_path)
    binary = {"path": str(mas_target.cli()), "share_dir": str(share)}
    pillar = dict(minimal_pillar, binary=binary, runtime="binary", http={"trusted_proxies": []})
    config = _rendered(pillar)
    assert config["http"]["trusted_proxies"] == []
    assert "trusted_proxies: []" in write(tmp_path, config).read_text()
    result = check(tmp_path, config)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------- the formula side


def test_register_user_names_synapses_refusal_and_creates_nothing(
    pg, salt_minion, synapse_factory, homeserver, tmp_path
):
    """``mas_user.register`` against MAS whose homeserver refuses provisioning:
    a clear error naming Synapse's refusal, and no user in MAS afterwards."""
    name = "mas_register_refused"
    pg.drop_database(name)
    pg.create_database(name)
    mas_target.migrate(pg, name)
    synapse = synapse_factory(database="sqlite")  # its config files only; MAS talks to the fake
    pillar = wired_pillar(tmp_path, pg, name, synapse, free_port(), free_port())
    pillar["synapse"]["endpoint"] = homeserver.url
    res = salt_minion.apply(pillar)
    assert res.returncode == 0, res.output
    try:
        with run_server([tmp_path / "mas" / "config" / "config.yaml"], log_path=tmp_path / "mas.log"):
            homeserver.refuse = True
            try:
                refused = salt_minion.run("mas_user.register", "bob")
            finally:
                homeserver.refuse = False
            assert refused.returncode != 0
            assert "Synapse refused to provision the account of bob" in refused.output
            assert "nothing was created" in refused.output
            assert "Unexpected HTTP response while provisioning user in Synapse" in refused.output
            info = salt_minion.run("mas_user.info", "bob")
            assert info.returncode == 0 and info.data is None, info.output
    finally:
        pg.drop_database(name)


def test_mas_starts_after_an_interrupted_key_write(pg, salt_minion, synapse_factory, homeserver, tmp_path):
    """Issue 21, 6: MAS loads every regular file of ``secrets.keys_dir`` as a signing key, so the
    ``.tmp-`` file of an interrupted write there stops it ("could not import keys from config"). The
    formula stages the keys in secrets/ (MAS never lists it: a temporary file left there is harmless)
    and removes the writer's leftovers from keys/ and secrets/ before MAS starts."""
    name = "mas_interrupted_write"
    pg.drop_database(name)
    pg.create_database(name)
    mas_target.migrate(pg, name)
    synapse = synapse_factory(database="sqlite")  # its config files only; MAS talks to the fake
    pillar = wired_pillar(tmp_path, pg, name, synapse, free_port(), free_port())
    pillar["synapse"]["endpoint"] = homeserver.url
    assert salt_minion.apply(pillar).returncode == 0
    config = tmp_path / "mas" / "config"
    staged = config / "secrets" / ".tmp-st4g3d_1"  # the formula's writer, interrupted
    left = config / "keys" / ".tmp-k3ylst_2"  # an older formula's writer, interrupted
    try:
        for path in (staged, left):
            path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nMIIEvgIBADANBgkqhkiG9w0BAQEFAASC\n")
            path.chmod(0o600)
        left.rename(tmp_path / "aside")
        with run_server([config / "config.yaml"], log_path=tmp_path / "mas-staged.log") as mas:
            assert requests.get(mas.url("health", "/health"), timeout=10).status_code == 200
        (tmp_path / "aside").rename(left)
        with pytest.raises(RuntimeError, match="could not import keys from config"):
            run_server([config / "config.yaml"], log_path=tmp_path / "mas-stray.log").stop()

        res = salt_minion.apply(pillar)
        assert res.returncode == 0, res.output
        assert not left.exists() and not staged.exists()
        check = subprocess.run(
            [str(tmp_path / "mas" / "bin" / "mas-cli"), "config", "check"],
            capture_output=True,
            text=True,
            env=cli_env(),
            timeout=120,
            check=False,
        )
        assert check.returncode == 0, check.stderr
        with run_server([config / "config.yaml"], log_path=tmp_path / "mas.log") as mas:
            assert requests.get(mas.url("health", "/health"), timeout=10).status_code == 200
    finally:
        pg.drop_database(name)
