"""Integration tests of the MAS test double (``test/mas_double``) against a real MAS schema.

The double must behave like ``mas-cli`` 1.23 for the surface the formula uses:
arguments, stdout/stderr, exit codes, rows in the real MAS tables, and admin
API responses valid against the upstream OpenAPI document.  A small fake
homeserver stands in for Synapse's ``/_synapse/mas`` API in most tests; one
test runs the double against a real Synapse with MAS enabled.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
import unicodedata
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import bcrypt
import jsonschema
import pytest
import requests
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from harness import mas as mas_target
from harness.util import LOOPBACK, free_port, require_upstream
from mas_double import MAS_CLI, run_cli, run_server, ulid
from mas_double.cli import parse_syn2mas
from mas_double.config import load_config
from mas_double.contract import AdminApiContract, ContractViolation

pytestmark = [pytest.mark.integration, pytest.mark.double]

MAS_ROLE = "mas_double"
MAS_PASSWORD = "mas-double-db-password"
MATRIX_SECRET = "test-shared-secret-0123456789abcdef"
PEPPER = "synapse-pepper"
ADMIN_CLIENT_ID = "01J0ADM1NC11ENT00000000000"
ADMIN_CLIENT_SECRET = "admin-client-secret"
OTHER_CLIENT_ID = "01J0THERC11ENT000000000000"
SERVER_NAME = "example.test"
STRONG_PASSWORD = "Correct-Horse-Battery-9"


# --------------------------------------------------------------------- helpers


class FakeHomeserver:
    """Synapse's MAS API (``/_synapse/mas/*``) plus the probes doctor makes.

    ``taken`` localparts answer 400 on ``is_localpart_available``; every request
    is recorded in ``calls`` as ``(method, path, json body or query)``.
    """

    def __init__(self, secret: str):
        self.secret = secret
        self.taken: set[str] = {"reserved"}
        self.calls: list[tuple[str, str, Any]] = []
        self.well_known: dict | None = None
        self._server = ThreadingHTTPServer((LOOPBACK, 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://{LOOPBACK}:{self.port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                return self.headers.get("Authorization") == f"Bearer {fake.secret}"

            def do_GET(self):
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                fake.calls.append(("GET", parts.path, query))
                if parts.path == "/_synapse/mas/is_localpart_available":
                    if not self._authorised():
                        error = "This endpoint must only be called by MAS"
                        return self._send(403, {"errcode": "M_FORBIDDEN", "error": error})
                    localpart = query.get("localpart", [None])[0]
                    if localpart is None:
                        return self._send(400, {"errcode": "M_MISSING_PARAM", "error": "Missing localpart"})
                    if localpart in fake.taken:
                        return self._send(400, {"errcode": "M_USER_IN_USE", "error": "User ID already taken."})
                    return self._send(200, {})
                if parts.path == "/_matrix/client/versions":
                    return self._send(200, {"versions": ["v1.11"]})
                if parts.path == "/_matrix/client/v3/account/whoami":
                    return self._send(401, {"errcode": "M_UNKNOWN_TOKEN", "error": "Token is not active"})
                if parts.path == "/.well-known/matrix/client" and fake.well_known is not None:
                    return self._send(200, fake.well_known)
                return self._send(404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.calls.append(("POST", self.path, body))
                if not self.path.startswith("/_synapse/mas/"):
                    return self._send(404, {"errcode": "M_UNRECOGNIZED"})
                if not self._authorised():
                    return self._send(403, {"errcode": "M_FORBIDDEN"})
                if self.path == "/_synapse/mas/provision_user":
                    fake.taken.add(body["localpart"])
                    return self._send(201, {})
                return self._send(200, {})

            def log_message(self, format, *args):
                """Quiet."""

        return Handler

    def posts(self, path: str) -> list[dict]:
        """JSON bodies POSTed to ``/_synapse/mas/<path>``."""
        return [body for method, p, body in self.calls if method == "POST" and p == f"/_synapse/mas/{path}"]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_config(
    dsn: str, endpoint: str, web_port: int, internal_port: int, share: Path, homeserver: str = SERVER_NAME
) -> dict:
    """A complete MAS config (valid against the upstream schema) for the double, MAS's ``share/`` at ``share``."""
    config = {
        **mas_target.share_config(share),
        "http": {
            "public_base": f"http://{LOOPBACK}:{web_port}/",
            "listeners": [
                {
                    "name": "web",
                    "resources": [{"name": n} for n in ("discovery", "human", "oauth", "compat", "adminapi")],
                    "binds": [{"address": f"{LOOPBACK}:{web_port}"}],
                },
                {
                    "name": "internal",
                    "resources": [{"name": "health"}],
                    "binds": [{"host": LOOPBACK, "port": internal_port}],
                },
            ],
        },
        "database": {"uri": dsn},
        "secrets": {"encryption": secrets.token_hex(32)},
        "matrix": {"kind": "synapse", "homeserver": homeserver, "secret": MATRIX_SECRET, "endpoint": endpoint},
        "passwords": {
            "enabled": True,
            "schemes": [
                {"version": 1, "algorithm": "bcrypt", "unicode_normalization": True, "secret": PEPPER},
                {"version": 2, "algorithm": "argon2id"},
            ],
        },
        "clients": [
            {
                "client_id": ADMIN_CLIENT_ID,
                "client_auth_method": "client_secret_basic",
                "client_secret": ADMIN_CLIENT_SECRET,
            },
            {
                "client_id": OTHER_CLIENT_ID,
                "client_auth_method": "client_secret_basic",
                "client_secret": "other-secret",
            },
        ],
    }
    config["policy"]["data"] = {"admin_clients": [ADMIN_CLIENT_ID]}
    # every test logs in from 127.0.0.1: MAS's default (3 password checks per minute per IP) would refuse
    # the fourth; test_password_login_rate_limited checks the limit itself
    config["rate_limiting"] = {"login": {"per_ip": {"burst": 1000, "per_second": 100}}}
    return config


def write_signing_keys(directory: Path) -> dict:
    """Write an RSA key (``keys_dir``) and a P-256 key (``key_file``); returns the ``secrets`` entries."""
    keys_dir = directory / "keys"
    keys_dir.mkdir()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pkcs8 = serialization.PrivateFormat.PKCS8
    for path, key in ((keys_dir / "rsa.pem", rsa_key), (directory / "p256.pem", ec_key)):
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption()))
        path.chmod(0o600)
    return {"keys_dir": str(keys_dir), "keys": [{"kid": "p256", "key_file": str(directory / "p256.pem")}]}


def fresh_database(pg, name: str) -> str:
    """(Re)create database ``name`` owned by the MAS role; returns its DSN (schema not loaded)."""
    pg.create_role(MAS_ROLE, password=MAS_PASSWORD)
    pg.drop_database(name)
    pg.create_database(name, owner=MAS_ROLE)
    return pg.dsn(name, MAS_ROLE, MAS_PASSWORD)


def log_lines(stderr: str, level: str) -> list[str]:
    """Tracing lines of ``level`` (``INFO``/``WARN``/``ERROR``) in ``stderr``."""
    return [line for line in stderr.splitlines() if f" {level} mas" in line or f"  {level} mas" in line]


# -------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def contract() -> AdminApiContract:
    spec = require_upstream("mas/admin-api-spec.json")
    return AdminApiContract(spec)


@pytest.fixture(scope="module")
def mas_db(pg, upstream_dir) -> Iterator[str]:
    """A fresh MAS database with the upstream schema; yields its name."""
    name = "mas_double_it"
    fresh_database(pg, name)
    mas_target.migrate(pg, name, user=MAS_ROLE)
    yield name
    pg.drop_database(name)


@pytest.fixture(scope="module")
def homeserver() -> Iterator[FakeHomeserver]:
    fake = FakeHomeserver(MATRIX_SECRET)
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def mas_config(tmp_path_factory, pg, mas_db, homeserver) -> Path:
    """``config.yaml`` of the module's double (ports chosen now, server not started)."""
    directory = tmp_path_factory.mktemp("mas-double")
    share = mas_target.share_dir(directory)
    config = make_config(pg.dsn(mas_db, MAS_ROLE, MAS_PASSWORD), homeserver.url, free_port(), free_port(), share)
    config["secrets"].update(write_signing_keys(directory))
    return write_yaml(directory / "config.yaml", config)


@pytest.fixture(scope="module")
def mas(mas_config, tmp_path_factory):
    """The module's running double."""
    server = run_server([mas_config], log_path=tmp_path_factory.mktemp("mas-log") / "mas.log")
    yield server
    server.stop()


@pytest.fixture
def cli(mas_config):
    """Run ``mas-cli -c <module config> ...``."""

    def call(*args: str, env: dict | None = None):
        return run_cli(list(args), [mas_config], env=env)

    return call


@pytest.fixture(scope="module")
def admin(mas, contract) -> requests.Session:
    """A session authenticated for the admin API with a client-credentials token."""
    response = requests.post(
        mas.url("oauth", "/oauth2/token"),
        auth=(ADMIN_CLIENT_ID, ADMIN_CLIENT_SECRET),
        data={"grant_type": "client_credentials", "scope": "urn:mas:admin"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
    return session


# ------------------------------------------------------------------- the binary


@mas_target.double_only
def test_binary_is_an_executable_shell_wrapper():
    assert os.access(MAS_CLI, os.X_OK)
    assert MAS_CLI.read_text().startswith("#!/bin/sh")


# ----------------------------------------------------------------- config check


def test_config_check_good(cli, mas_config, upstream_dir):
    schema = json.loads((upstream_dir / "mas" / "config.schema.json").read_text())
    jsonschema.validate(yaml.safe_load(mas_config.read_text()), schema)
    result = cli("config", "check")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    info = log_lines(result.stderr, "INFO")
    assert info and info[-1].endswith("Configuration file looks good")
    assert "mas_cli::commands::config" in info[-1]
    assert MATRIX_SECRET not in result.stderr


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c["matrix"].pop("secret"), "Missing `secret` or `secret_file`"),
        (lambda c: c["matrix"].update(secret_file="/nonexistent"), "Cannot specify both `secret` and `secret_file`"),
        (lambda c: c["secrets"].pop("encryption"), "Missing `encryption` or `encryption_file`"),
        (lambda c: c["http"].pop("public_base"), "missing field `public_base`"),
        (lambda c: c.pop("matrix"), "missing field `matrix`"),
        (lambda c: c["passwords"]["schemes"][0].update(algorithm="md5"), "Error: "),
        (lambda c: c["http"]["listeners"][0].update(resources=[]), "listener has no resources"),
    ],
    ids=["no-secret", "both-secrets", "no-encryption", "no-public-base", "no-matrix", "bad-algorithm", "no-resources"],
)
def test_config_check_bad(tmp_path, mas_config, mutate, message):
    config = yaml.safe_load(mas_config.read_text())
    mutate(config)
    path = write_yaml(tmp_path / "bad.yaml", config)
    result = run_cli(["config", "check"], [path])
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") or "\nError: " in result.stderr
    assert message in result.stderr
    assert "Configuration file looks good" not in result.stderr


def test_config_errors_never_show_secret_values(tmp_path, mas_config):
    config = yaml.safe_load(mas_config.read_text())
    config["secrets"]["encryption"] = "not-hex-but-a-secret-value"
    result = run_cli(["config", "check"], [write_yaml(tmp_path / "c.yaml", config)])
    assert result.returncode == 1
    # MAS decodes the hex itself (secrets.rs): the character and its position, not the value
    assert "Invalid character 'n' at position 0 for key \"default.secrets\"" in result.stderr
    assert "not-hex-but-a-secret-value" not in result.stderr


@mas_target.double_only
def test_slow_fault_delays_commands(cli):
    started = time.monotonic()
    result = cli("config", "check", env={"MAS_DOUBLE_FAULT": "slow", "MAS_DOUBLE_SLOW_SECONDS": "1.5"})
    assert result.returncode == 0
    assert time.monotonic() - started >= 1.5


def test_config_check_does_not_read_secret_files(tmp_path, mas_config):
    config = yaml.safe_load(mas_config.read_text())
    config["matrix"].pop("secret")
    config["matrix"]["secret_file"] = str(tmp_path / "missing-secret")
    config["secrets"].pop("encryption")
    config["secrets"]["encryption_file"] = str(tmp_path / "missing-encryption")
    result = run_cli(["config", "check"], [write_yaml(tmp_path / "files.yaml", config)])
    assert result.returncode == 0, result.stderr


@mas_target.double_only
def test_config_check_without_upstream_schema(cli, tmp_path):
    result = cli("config", "check", env={"MAS_DOUBLE_UPSTREAM_DIR": str(tmp_path / "nowhere")})
    assert result.returncode == 1
    assert "Error: cannot validate the configuration" in result.stderr
    assert "config.schema.json is missing" in result.stderr


def test_config_overlays_merge_in_order(tmp_path, mas_config):
    config = yaml.safe_load(mas_config.read_text())
    secret_file = tmp_path / "matrix.secret"
    secret_file.write_text(MATRIX_SECRET + "\n")
    overlay = {"matrix": {"secret_file": str(secret_file)}, "secrets": {"encryption": config["secrets"]["encryption"]}}
    config["matrix"].pop("secret")
    config["secrets"].pop("encryption")
    base = write_yaml(tmp_path / "base.yaml", config)
    extra = write_yaml(tmp_path / "secrets.yaml", overlay)
    assert run_cli(["config", "check"], [base]).returncode == 1
    assert run_cli(["config", "check"], [base, extra]).returncode == 0
    # -c after the subcommand works too, and MAS_CONFIG is the fallback
    assert run_cli(["config", "check", "-c", str(base), "-c", str(extra)]).returncode == 0
    env_result = run_cli(["config", "check"], env={"MAS_CONFIG": f"{base}:{extra}"})
    assert env_result.returncode == 0, env_result.stderr
    # the secret file is read (and trimmed) when a command needs it: the fake homeserver checks it
    registered = run_cli(["manage", "register-user", "olivia", "-y"], [base, extra])
    assert registered.returncode == 0, registered.stderr


def test_config_from_mas_environment_variables(tmp_path, mas_config):
    config = yaml.safe_load(mas_config.read_text())
    config["matrix"].pop("secret")
    path = write_yaml(tmp_path / "c.yaml", config)
    assert run_cli(["config", "check"], [path]).returncode == 1
    result = run_cli(["config", "check"], [path], env={"MAS_MATRIX_SECRET": MATRIX_SECRET})
    assert result.returncode == 0, result.stderr


def test_config_yaml_in_cwd_is_the_default(tmp_path, tmp_path_factory, mas_config):
    (tmp_path / "config.yaml").write_text(mas_config.read_text())
    result = run_cli(["config", "check"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    below = tmp_path / "sub" / "dir"
    below.mkdir(parents=True)
    assert run_cli(["config", "check"], cwd=below).returncode == 0  # figment also looks in parent directories
    missing = run_cli(["config", "check"], cwd=tmp_path_factory.mktemp("empty"))
    assert missing.returncode == 1
    assert "missing field `secrets`" in missing.stderr


def test_config_files_are_admerged(tmp_path):
    """Like figment's admerge: mappings merge, lists concatenate, later scalars win, files beat MAS_* variables."""
    first = {"matrix": {"homeserver": "a.test", "secret": "x"}, "clients": [{"client_id": "A"}]}
    second = {"matrix": {"homeserver": "b.test"}, "clients": [{"client_id": "B"}]}
    first, second = write_yaml(tmp_path / "a.yaml", first), write_yaml(tmp_path / "b.yaml", second)
    config = load_config([str(first), str(second)], environ={"MAS_MATRIX_SECRET": "from-env", "MAS_EMAIL_FROM": "f@x"})
    assert config.raw["matrix"] == {"homeserver": "b.test", "secret": "x"}
    assert [c["client_id"] for c in config.clients] == ["A", "B"]
    assert config.raw["email"] == {"from": "f@x"}


# ------------------------------------------ what MAS's serde refuses (issue 21.5)
# MAS deserialises config.yaml into typed structs before any validate() (crates/config/src/sections/*.rs):
# these pin its exact words (the double's serde layer, mas_double/serde.py) and what it accepts.

PROVIDER = {
    "id": "01HFVBY12TMNTYTBV8W921M5FA",
    "client_id": "c",
    "issuer": "https://id.example.com/",
    "token_endpoint_auth_method": "none",
}
THIRD_CLIENT_ID = "01HFVBY12TMNTYTBV8W921M5FA"


def provider(**fields: Any) -> dict:
    return {"upstream_oauth2": {"providers": [{**PROVIDER, **fields}]}}


def client(**fields: Any) -> dict:
    return {"clients": [{"client_id": THIRD_CLIENT_ID, "client_auth_method": "none", **fields}]}


def with_change(config: dict, change: dict) -> dict:
    """``config`` with ``change`` merged in: mappings merge (a None value deletes), ``clients`` are appended."""
    out = dict(config)
    for key, value in change.items():
        if key == "clients":
            out[key] = [*config.get("clients", []), *value]
        elif isinstance(value, dict) and isinstance(config.get(key), dict):
            merged = {**config[key], **value}
            out[key] = {k: v for k, v in merged.items() if v is not None}
        else:
            out[key] = value
    return out


def check_changed(tmp_path: Path, mas_config: Path, change: dict) -> Any:
    """``config check`` of the module's config with ``change``, as ``config.yaml`` in ``tmp_path``."""
    config = with_change(yaml.safe_load(mas_config.read_text()), change)
    return run_cli(["config", "check"], [write_yaml(tmp_path / "config.yaml", config)], cwd=tmp_path)


SL = "experimental.session_limit"
#: (change to the module's config, the ``Error:`` line of ``config check``: MAS's serde words, keyed by figment)
SERDE_REFUSALS = [
    ({"experimental": {"session_limit": {"soft_limit": 5}}}, f'missing field `hard_limit` for key "default.{SL}"'),
    ({"experimental": {"session_limit": {"hard_limit": 5}}}, f'missing field `soft_limit` for key "default.{SL}"'),
    (
        {"experimental": {"session_limit": {"soft_limit": 0, "hard_limit": 5}}},
        f'invalid value unsigned int `0`, expected a nonzero u64 for key "default.{SL}.soft_limit"',
    ),
    (
        {"experimental": {"session_limit": {"soft_limit": 1, "hard_limit": 0}}},
        f'invalid value unsigned int `0`, expected a nonzero u64 for key "default.{SL}.hard_limit"',
    ),
    (
        {"experimental": {"inactive_session_expiration": {"expire_compat_sessions": True}}},
        'missing field `ttl` for key "default.experimental.inactive_session_expiration"',
    ),
    (
        provider(pkce_method="S256"),
        "unknown variant: found `S256`, expected `one of `auto`, `always`, `never``"
        ' for key "default.upstream_oauth2.providers.0.pkce_method"',
    ),
    (
        provider(response_mode="fragment"),
        "unknown variant: found `fragment`, expected ``query` or `form_post``"
        ' for key "default.upstream_oauth2.providers.0.response_mode"',
    ),
    (
        provider(on_backchannel_logout="logout"),
        "unknown variant: found `logout`, expected `one of `do_nothing`, `logout_browser_only`, `logout_all``"
        ' for key "default.upstream_oauth2.providers.0.on_backchannel_logout"',
    ),
    (
        provider(claims_imports={"localpart": {"action": "force", "on_conflict": "merge"}}),
        "unknown variant: found `merge`, expected `one of `fail`, `add`, `replace`, `set``"
        ' for key "default.upstream_oauth2.providers.0.claims_imports.localpart.on_conflict"',
    ),
    (  # localpart.action defaults to ignore (ImportAction's #[default]), so on_conflict: add needs an action
        provider(claims_imports={"localpart": {"on_conflict": "add"}}),
        "The field `action` must be either `force` or `require` when `on_conflict` is set to `add`, `replace` or"
        ' `set` for key "default.upstream_oauth2.providers.0.claims_imports.localpart"',
    ),
    (
        client(redirect_uris=["/callback"]),
        'relative URL without a base: "/callback" for key "default.clients.2.redirect_uris.0"',
    ),
    (
        client(client_uri="example.com"),
        'relative URL without a base: "example.com" for key "default.clients.2.client_uri"',
    ),
    (
        client(client_auth_method="private_key_jwt", jwks_uri="keys.json"),
        'relative URL without a base: "keys.json" for key "default.clients.2.jwks_uri"',
    ),
    (
        {"clients": [{"client_id": THIRD_CLIENT_ID[:-1], "client_auth_method": "none"}]},
        'invalid length for key "default.clients.2.client_id"',
    ),
    (
        {"clients": [{"client_id": THIRD_CLIENT_ID[:-1] + "I", "client_auth_method": "none"}]},
        'invalid character for key "default.clients.2.client_id"',
    ),
    (
        {"database": {"connect_timeout": "30s"}},
        'invalid type: found string "30s", expected u64 for key "default.database.connect_timeout"',
    ),
    (
        {"database": {"idle_timeout": "5m"}},
        'invalid type: found string "5m", expected u64 for key "default.database.idle_timeout"',
    ),
    (
        {"database": {"max_lifetime": 1.5}},
        'invalid type: found float `1.5`, expected u64 for key "default.database.max_lifetime"',
    ),
    # an empty string is a value to MAS (Option<String> is Some("")), refused where the key is forbidden
    (
        {"matrix": {"secret": "", "secret_file": "/run/mas/secret"}},
        'Cannot specify both `secret` and `secret_file` for key "default.matrix"',
    ),
    (
        {"database": {"uri": "", "host": "localhost"}},
        "uri must not be specified if host, port, socket, username, password, password_file, or database are"
        ' specified for key "default.database"',
    ),
    (
        {"email": {"transport": "sendmail", "command": "/usr/sbin/sendmail", "username": ""}},
        "unknown field: found `username`, expected `one of `from`, `reply_to`, `transport`, `command``"
        ' for key "default.email.username"',
    ),
    (
        {"secrets": {"encryption": ""}},
        'Can\'t convert a Byte Vector of length 0 to the output type. for key "default.secrets"',
    ),
    (
        provider(token_endpoint_auth_signing_alg=""),
        "Unexpected field `token_endpoint_auth_signing_alg` for the selected authentication method"
        ' for key "default.upstream_oauth2.providers.0"',
    ),
]


@pytest.mark.parametrize(
    ("change", "message"), SERDE_REFUSALS, ids=[m.split(" for key")[0][:60] for _, m in SERDE_REFUSALS]
)
def test_config_check_refuses_what_mas_serde_refuses(tmp_path, mas_config, change, message):
    result = check_changed(tmp_path, mas_config, change)
    assert result.returncode == 1, result.stderr
    error = next((line for line in result.stderr.splitlines() if line.startswith("Error: ")), result.stderr)
    assert error == f"Error: {message} in config.yaml YAML file"


@pytest.mark.parametrize(
    ("telemetry", "cause"),
    [
        (
            {"tracing": {"exporter": "jaeger"}},
            "unknown variant: found `jaeger`, expected `one of `none`, `stdout`, `otlp``"
            ' for key "default.tracing.exporter.telemetry"',
        ),
        (
            {"metrics": {"exporter": "statsd"}},
            "unknown variant: found `statsd`, expected `one of `none`, `stdout`, `otlp`, `prometheus``"
            ' for key "default.metrics.exporter.telemetry"',
        ),
        (
            {"tracing": {"propagators": ["tracecontext", "b3"]}},
            "unknown variant: found `b3`, expected `one of `tracecontext`, `baggage`, `jaeger``"
            ' for key "default.tracing.propagators.1.telemetry"',
        ),
    ],
    ids=["tracing-exporter", "metrics-exporter", "propagator"],
)
def test_telemetry_types_fail_before_any_command(tmp_path, mas_config, telemetry, cause):
    """main.rs loads the telemetry section first; extract_inner keys its errors `default.<path>.telemetry`."""
    result = check_changed(tmp_path, mas_config, {"telemetry": telemetry})
    assert result.returncode == 1, result.stderr
    expected = f"Error: Failed to load telemetry config\n\nCaused by:\n    {cause} in config.yaml YAML file"
    assert expected in result.stderr


@pytest.mark.parametrize(
    ("dsn", "reason"),
    [
        ("not a dsn", "InvalidUrl"),
        ("https://sentry.example.com/1", "NoUsername"),
        ("https://key@sentry.example.com/", "NoProjectId"),
        ("ftp://key@sentry.example.com/1", "InvalidScheme"),
    ],
)
def test_a_sentry_dsn_sentry_cannot_parse_panics_every_command(tmp_path, mas_config, dsn, reason):
    """main.rs hands telemetry.sentry.dsn to sentry::init, which panics (exit 101) on a DSN it cannot parse."""
    config = with_change(yaml.safe_load(mas_config.read_text()), {"telemetry": {"sentry": {"dsn": dsn}}})
    path = write_yaml(tmp_path / "config.yaml", config)
    for command in (["config", "check"], ["manage", "list-admin-users"]):
        result = run_cli(command, [path], cwd=tmp_path)
        assert result.returncode == 101, (command, result.stderr)
        assert "thread 'main'" in result.stderr and " panicked at " in result.stderr
        assert f"\ninvalid value for DSN: {reason}\n" in result.stderr
        assert "Configuration file looks good" not in result.stderr


@pytest.mark.parametrize(
    "change",
    [
        {"clients": [{"client_id": THIRD_CLIENT_ID.lower(), "client_auth_method": "none"}]},
        provider(id=PROVIDER["id"].lower()),
        client(
            redirect_uris=["https://app.example.com/cb", "io.element.app:/callback"], client_uri="https://a.example/"
        ),
        {"telemetry": {"sentry": {"dsn": ""}}},
        {"telemetry": {"sentry": {"dsn": "https://key:secret@sentry.example.com:9000/a/b/1"}}},
        {
            "experimental": {
                "session_limit": {"soft_limit": 1, "hard_limit": 1},
                "inactive_session_expiration": {"ttl": 600},
            }
        },
        {"database": {"connect_timeout": 0, "idle_timeout": 60, "max_lifetime": 3600}},
        provider(claims_imports={"localpart": {"action": "require", "on_conflict": "set"}}, pkce_method="never"),
    ],
    ids=[
        "lowercase-client",
        "lowercase-provider",
        "redirect-uris",
        "empty-dsn",
        "dsn",
        "experimental",
        "timeouts",
        "enums",
    ],
)
def test_config_check_accepts_what_mas_reads(tmp_path, mas_config, change):
    result = check_changed(tmp_path, mas_config, change)
    assert result.returncode == 0, result.stderr
    assert "Configuration file looks good" in result.stderr


def test_a_lowercase_client_id_is_its_canonical_upper_case_id(tmp_path, mas_config):
    """MAS parses client IDs as ULIDs: a client written in lower case authenticates as its canonical
    upper-case ID, and that is the only form policy.data.admin_clients matches (authorization_grant.rego)."""
    lower, other = "01hfvby12tmntytbv8w921m5fa", "01hfvby12tmntytbv8w921m5fb"
    config = yaml.safe_load(with_fresh_ports(mas_config, tmp_path / "c.yaml").read_text())
    config["clients"] += [
        {"client_id": lower, "client_auth_method": "client_secret_basic", "client_secret": "lower-secret"},
        {"client_id": other, "client_auth_method": "client_secret_basic", "client_secret": "other-lower-secret"},
    ]
    config["policy"]["data"]["admin_clients"] = [ADMIN_CLIENT_ID, lower.upper(), other]
    form = {"grant_type": "client_credentials", "scope": "urn:mas:admin"}
    with run_server(
        [write_yaml(tmp_path / "lower.yaml", config)], args=["--no-worker"], log_path=tmp_path / "log"
    ) as mas:
        url = mas.url("oauth", "/oauth2/token")
        for client_id in (lower, lower.upper()):
            ok = requests.post(url, auth=(client_id, "lower-secret"), data=form, timeout=10)
            assert ok.status_code == 200, ok.text
        introspected = requests.post(
            mas.url("oauth", "/oauth2/introspect"),
            data={"token": ok.json()["access_token"]},
            headers={"Authorization": f"Bearer {MATRIX_SECRET}"},
            timeout=10,
        ).json()
        assert introspected["client_id"] == lower.upper()
        refused = requests.post(url, auth=(other, "other-lower-secret"), data=form, timeout=10)
        assert refused.status_code == 403 and refused.json()["error"] == "invalid_scope"


def test_server_reads_the_encryption_file_raw(tmp_path, mas_config):
    """secrets.rs decodes encryption_file's bytes as they are (hex::decode_to_slice): a trailing newline fails."""
    config = yaml.safe_load(with_fresh_ports(mas_config, tmp_path / "c.yaml").read_text())
    secret_file = tmp_path / "encryption"
    secret_file.write_text(config["secrets"].pop("encryption") + "\n")
    config["secrets"]["encryption_file"] = str(secret_file)
    path = write_yaml(tmp_path / "raw.yaml", config)
    assert run_cli(["config", "check"], [path]).returncode == 0  # config check reads no secret file
    server = run_server([path], args=["--no-worker"], wait=False, log_path=tmp_path / "newline.log")
    try:
        assert server.proc.wait(timeout=60) == 1
    finally:
        server.stop()
    assert (
        "Error: Content of `encryption_file` must contain hex characters encoding exactly 32 bytes\n\n"
        "Caused by:\n    Odd number of digits"
    ) in server.log()
    secret_file.write_text(secret_file.read_text().rstrip("\n"))
    with run_server([path], args=["--no-worker"], log_path=tmp_path / "exact.log"):
        pass


# -------------------------------------------------------------- database migrate


@mas_target.double_only
def test_database_migrate_loads_schema_once(pg, tmp_path, mas_config, upstream_dir):
    name = "mas_double_migrate"
    fresh_database(pg, name)
    try:
        config = yaml.safe_load(mas_config.read_text())
        config["database"] = {
            "host": LOOPBACK,
            "port": pg.port,
            "username": MAS_ROLE,
            "database": name,
            "password_file": str(tmp_path / "db.password"),
        }
        (tmp_path / "db.password").write_text(MAS_PASSWORD + "\n")
        path = write_yaml(tmp_path / "config.yaml", config)
        assert not pg.query(name, "SELECT 1 FROM pg_tables WHERE tablename = 'users'")
        first = run_cli(["database", "migrate"], [path])
        assert first.returncode == 0, first.stderr
        assert pg.query(name, "SELECT count(*) FROM users") == [(0,)]
        second = run_cli(["database", "migrate"], [path])
        assert second.returncode == 0, second.stderr
    finally:
        pg.drop_database(name)


@mas_target.double_only
def test_refuse_fault_fails_database_commands(cli):
    result = cli("manage", "add-email", "nobody", "x@example.test", env={"MAS_DOUBLE_FAULT": "refuse"})
    assert result.returncode == 1
    assert "Error: could not connect to the database" in result.stderr


# ---------------------------------------------------------------------- server


def test_health_and_discovery(mas):
    health = requests.get(mas.url("health", "/health"), timeout=10)
    assert (health.status_code, health.text) == (200, "ok")
    discovery = requests.get(mas.url("discovery", "/.well-known/openid-configuration"), timeout=10).json()
    base = mas.resources["discovery"] + "/"
    assert discovery["issuer"] == base
    assert discovery["account_management_uri"] == base + "account/"
    for key in ("token_endpoint", "introspection_endpoint", "authorization_endpoint", "jwks_uri"):
        assert discovery[key].startswith(base)
    # resources are only served on their listener
    assert requests.get(mas.url("health", "/.well-known/openid-configuration"), timeout=10).status_code == 404


@pytest.mark.parametrize("version", ["v3", "r0", "unstable"])
def test_login_flows_announce_mas(mas, version):
    body = requests.get(mas.url("compat", f"/_matrix/client/{version}/login"), timeout=10).json()
    types = [flow["type"] for flow in body["flows"]]
    sso = next(flow for flow in body["flows"] if flow["type"] == "m.login.sso")
    assert sso["oauth_aware_preferred"] is True
    assert sso["org.matrix.msc3824.delegated_oidc_compatibility"] is True
    assert "m.login.password" in types


def test_server_listener_prefix(tmp_path, mas_config):
    config = yaml.safe_load(mas_config.read_text())
    web, internal = free_port(), free_port()
    config["http"]["public_base"] = f"http://{LOOPBACK}:{web}/auth/"
    config["http"]["listeners"][0].update(prefix="/auth", binds=[{"address": f"{LOOPBACK}:{web}"}])
    config["http"]["listeners"][1]["binds"] = [{"host": LOOPBACK, "port": internal}]
    path = write_yaml(tmp_path / "prefix.yaml", config)
    with run_server([path], args=["--no-worker"], log_path=tmp_path / "log") as mas:
        assert mas.resources["compat"].endswith("/auth")
        assert requests.get(mas.url("compat", "/_matrix/client/v3/login"), timeout=10).status_code == 200
        root = f"http://{LOOPBACK}:{web}/_matrix/client/v3/login"
        assert requests.get(root, timeout=10).status_code == 404
        issuer = requests.get(mas.url("discovery", "/.well-known/openid-configuration"), timeout=10).json()["issuer"]
        assert issuer == f"http://{LOOPBACK}:{web}/auth/"


def test_sigterm_stops_the_server(tmp_path, mas_config):
    config = yaml.safe_load(mas_config.read_text())
    internal = free_port()
    health = {"name": "internal", "resources": [{"name": "health"}], "binds": [{"address": f"{LOOPBACK}:{internal}"}]}
    config["http"]["listeners"] = [health]
    server = run_server([write_yaml(tmp_path / "c.yaml", config)], log_path=tmp_path / "log")
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0
    assert server.stop() == 0


def with_fresh_ports(mas_config: Path, target: Path) -> Path:
    """Copy the module config to ``target`` with new listener ports (the module server holds the old ones)."""
    config = yaml.safe_load(mas_config.read_text())
    web, internal = free_port(), free_port()
    config["http"]["public_base"] = f"http://{LOOPBACK}:{web}/"
    config["http"]["listeners"][0]["binds"] = [{"address": f"{LOOPBACK}:{web}"}]
    config["http"]["listeners"][1]["binds"] = [{"host": LOOPBACK, "port": internal}]
    return write_yaml(target, config)


def test_server_refuses_unreadable_or_bad_keys(tmp_path, mas_config):
    config = yaml.safe_load(with_fresh_ports(mas_config, tmp_path / "c.yaml").read_text())
    config["secrets"]["keys"] = [{"kid": "gone", "key_file": str(tmp_path / "missing.pem")}]
    server = run_server([write_yaml(tmp_path / "missing.yaml", config)], wait=False, log_path=tmp_path / "missing.log")
    assert server.proc.wait(timeout=30) == 1
    # server.rs wraps the key store's error; the cause is the bare OS error or mas-keystore's LoadError
    cause = "Error: could not import keys from config\n\nCaused by:\n    {}"
    assert cause.format("No such file or directory (os error 2)") in server.log()
    (tmp_path / "junk.pem").write_text("not a key\n")
    config["secrets"]["keys"] = [{"kid": "junk", "key_file": str(tmp_path / "junk.pem")}]
    server = run_server([write_yaml(tmp_path / "junk.yaml", config)], wait=False, log_path=tmp_path / "junk.log")
    assert server.proc.wait(timeout=30) == 1
    assert cause.format("Unsupported format") in server.log()
    config["secrets"].update(keys=[], keys_dir=str(tmp_path / "no-such-dir"))
    server = run_server([write_yaml(tmp_path / "dir.yaml", config)], wait=False, log_path=tmp_path / "dir.log")
    assert server.proc.wait(timeout=30) == 1
    assert cause.format("No such file or directory (os error 2)") in server.log()


@mas_target.double_only
def test_refuse_fault_server_never_binds(tmp_path, mas_config):
    path = with_fresh_ports(mas_config, tmp_path / "c.yaml")
    server = run_server([path], env={"MAS_DOUBLE_FAULT": "refuse"}, wait=False, log_path=tmp_path / "log")
    try:
        assert server.proc.wait(timeout=30) == 1
    finally:
        server.stop()
    assert "Error: could not connect to the database" in server.log()
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url("health", "/health"), timeout=2)


@mas_target.double_only
def test_http500_fault(tmp_path, mas_config):
    path = with_fresh_ports(mas_config, tmp_path / "c.yaml")
    fault = {"MAS_DOUBLE_FAULT": "http500"}
    with run_server([path], env=fault, args=["--no-worker"], log_path=tmp_path / "log") as mas:
        assert requests.get(mas.url("health", "/health"), timeout=10).status_code == 500
        assert requests.get(mas.url("compat", "/_matrix/client/v3/login"), timeout=10).status_code == 500
        auth = (ADMIN_CLIENT_ID, ADMIN_CLIENT_SECRET)
        token = requests.post(mas.url("oauth", "/oauth2/token"), auth=auth, timeout=10)
        assert token.status_code == 500


# --------------------------------------------------------------- register-user


def test_register_user_happy_path(cli, pg, mas_db, homeserver):
    result = cli(
        "manage",
        "register-user",
        "@alice:example.test",
        "--yes",
        "-p",
        STRONG_PASSWORD,
        "-e",
        "alice@example.test",
        "-e",
        "alice2@example.test",
        "--admin",
        "-d",
        "Alice",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "User attributes"
    assert "         Username: alice" in lines
    assert "        Matrix ID: @alice:example.test" in lines
    assert "         Password: ********" in lines
    assert "Can request admin: true" in lines
    assert STRONG_PASSWORD not in result.stdout + result.stderr
    registered = [line for line in log_lines(result.stderr, "INFO") if "User registered" in line]
    assert len(registered) == 1
    user_ulid = registered[0].rsplit("user.id=", 1)[1]
    user_id = ulid.to_uuid(user_ulid)
    user = pg.query(mas_db, "SELECT username, can_request_admin FROM users WHERE user_id = %s", (user_id,))
    assert user == [("alice", True)]
    passwords = pg.query(mas_db, "SELECT version, hashed_password FROM user_passwords WHERE user_id = %s", (user_id,))
    assert len(passwords) == 1 and passwords[0][0] == 2
    assert passwords[0][1].startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    emails = pg.query(mas_db, "SELECT email FROM user_emails WHERE user_id = %s ORDER BY email", (user_id,))
    assert emails == [("alice2@example.test",), ("alice@example.test",)]
    jobs = pg.query(mas_db, "SELECT payload FROM queue_jobs WHERE queue_name = 'provision-user'")
    assert {"user_id": user_ulid, "set_display_name": "Alice"} in [row[0] for row in jobs]
    assert ("GET", "/_synapse/mas/is_localpart_available", {"localpart": ["alice"]}) in homeserver.calls


def test_register_user_already_exists(cli):
    first = cli("manage", "register-user", "bob", "-y", "-p", STRONG_PASSWORD)
    assert first.returncode == 0, first.stderr
    assert "No email address provided, user will need to add one" in first.stderr
    again = cli("manage", "register-user", "bob", "-y", "-p", STRONG_PASSWORD)
    assert again.returncode == 1
    assert "Error: User already exists" in again.stderr
    assert again.stdout == ""


def test_register_user_refusals(cli, pg, mas_db):
    weak = cli("manage", "register-user", "weakling", "-y", "-p", "password")
    assert weak.returncode == 1
    assert "ERROR mas_cli::commands::manage" in weak.stderr and "That password is too weak." in weak.stderr
    forced = cli("manage", "register-user", "weakling", "-y", "-p", "password", "--ignore-password-complexity", "-A")
    assert forced.returncode == 0, forced.stderr
    assert "Can request admin: false" in forced.stdout
    reserved = cli("manage", "register-user", "reserved", "-y")
    assert reserved.returncode == 1
    assert "Error: Username not available on homeserver" in reserved.stderr
    empty = cli("manage", "register-user", "@:example.test", "-y")
    assert empty.returncode == 1 and "Error: Username cannot be empty" in empty.stderr
    both = cli("manage", "register-user", "x", "-y", "-a", "-A")
    assert both.returncode == 2
    assert not pg.query(mas_db, "SELECT 1 FROM users WHERE username IN ('reserved', 'x', '')")


def test_register_user_homeserver_unreachable(tmp_path, mas_config):
    config = yaml.safe_load(mas_config.read_text())
    config["matrix"]["endpoint"] = f"http://{LOOPBACK}:{free_port()}/"
    result = run_cli(["manage", "register-user", "nohs", "-y"], [write_yaml(tmp_path / "c.yaml", config)])
    assert result.returncode == 1
    # modern.rs: the context, then reqwest's chain; logged at ERROR first (#[instrument(err(Debug))])
    url = f"{config['matrix']['endpoint']}_synapse/mas/is_localpart_available?localpart=nohs"
    chain = (
        "Failed to check localpart availability from Synapse\n\nCaused by:\n"
        f"    0: error sending request for url ({url})\n"
        "    1: client error (Connect)\n    2: tcp connect error\n    3: Connection refused (os error 111)\n"
    )
    assert f"\nError: {chain}" in result.stderr
    errors = log_lines(result.stderr, "ERROR")
    assert (
        errors
        and " mas_matrix_synapse::modern:" in errors[0]
        and errors[0].endswith(f"error={chain.split(chr(10))[0]}")
    )


def test_worker_provisions_registered_users(cli, mas, homeserver):
    result = cli("manage", "register-user", "carol", "-y", "-e", "carol@example.test", "-d", "Carol")
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        bodies = [b for b in homeserver.posts("provision_user") if b["localpart"] == "carol"]
        if bodies:
            break
        time.sleep(0.1)
    assert bodies and bodies[0]["set_emails"] == ["carol@example.test"]
    assert bodies[0]["set_displayname"] == "Carol"


# ------------------------------------------------------------- other manage


def test_add_email_is_idempotent(cli, pg, mas_db):
    assert cli("manage", "register-user", "dave", "-y").returncode == 0
    first = cli("manage", "add-email", "dave", "dave@example.test")
    assert first.returncode == 0, first.stderr
    assert "Email added" in first.stderr
    second = cli("manage", "add-email", "dave", "dave@example.test")
    assert second.returncode == 0
    assert "Email already exists, makring as verified" in second.stderr
    rows = pg.query(mas_db, "SELECT count(*) FROM user_emails JOIN users USING (user_id) WHERE username = 'dave'")
    assert rows == [(1,)]
    missing = cli("manage", "add-email", "nobody", "x@example.test")
    assert missing.returncode == 1 and "Error: User not found" in missing.stderr


def test_verify_email_is_a_deprecated_noop(cli):
    result = cli("manage", "verify-email", "dave", "other@example.test")
    assert result.returncode == 0
    assert "Use 'add-email' instead." in result.stderr and " WARN " in result.stderr


def test_promote_demote_and_list_admins(cli, pg, mas_db):
    assert cli("manage", "register-user", "erin", "-y").returncode == 0

    def flag():
        return pg.query(mas_db, "SELECT can_request_admin FROM users WHERE username = 'erin'")[0][0]

    assert flag() is False
    assert cli("manage", "promote-admin", "erin").returncode == 0
    assert flag() is True

    def admins() -> list[str]:
        # manage.rs: INFO lines on stderr, one per user (`user.id=<ULID> username=<name>`), nothing on stdout
        listed = cli("manage", "list-admin-users")
        assert listed.returncode == 0 and listed.stdout == "", listed.stderr
        info = log_lines(listed.stderr, "INFO")
        assert "The following users can request admin privileges (" in info[0]
        return [line.rsplit(" username=", 1)[1] for line in info[1:]]

    assert "erin" in admins()
    assert cli("manage", "promote-admin", "erin").returncode == 0
    assert cli("manage", "demote-admin", "erin").returncode == 0
    assert flag() is False
    assert "erin" not in admins()
    assert cli("manage", "promote-admin", "nobody").returncode == 1


def test_set_password_lock_unlock(cli, pg, mas_db):
    assert cli("manage", "register-user", "frank", "-y").returncode == 0
    weak = cli("manage", "set-password", "frank", "abc")
    assert weak.returncode == 1 and "That password is too weak." in weak.stderr
    assert cli("manage", "set-password", "frank", "abc", "--ignore-complexity").returncode == 0
    assert cli("manage", "set-password", "frank", STRONG_PASSWORD).returncode == 0
    count = pg.query(mas_db, "SELECT count(*) FROM user_passwords JOIN users USING (user_id) WHERE username = 'frank'")
    assert count == [(2,)]
    assert cli("manage", "lock-user", "frank").returncode == 0
    assert pg.query(mas_db, "SELECT locked_at IS NOT NULL FROM users WHERE username = 'frank'") == [(True,)]
    assert cli("manage", "unlock-user", "frank").returncode == 0
    assert pg.query(mas_db, "SELECT locked_at IS NULL FROM users WHERE username = 'frank'") == [(True,)]


# ------------------------------------------------------------ compat login


def test_password_login_and_introspection(cli, mas, pg, mas_db):
    assert cli("manage", "register-user", "grace", "-y", "-p", STRONG_PASSWORD).returncode == 0
    login_url = mas.url("compat", "/_matrix/client/v3/login")
    wrong = requests.post(login_url, json={"type": "m.login.password", "user": "grace", "password": "nope"}, timeout=10)
    assert wrong.status_code == 403 and wrong.json()["errcode"] == "M_FORBIDDEN"
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "@grace:example.test"},
        "password": STRONG_PASSWORD,
        "device_id": "GRACEDEV",
    }
    login = requests.post(login_url, json=body, timeout=10)
    assert login.status_code == 200, login.text
    token = login.json()["access_token"]
    assert login.json()["user_id"] == "@grace:example.test" and login.json()["device_id"] == "GRACEDEV"

    introspect_url = mas.url("oauth", "/oauth2/introspect")
    synapse_auth = {"Authorization": f"Bearer {MATRIX_SECRET}", "X-MAS-Supports-Device-Id": "1"}
    form = {"token": token, "token_type_hint": "access_token"}
    active = requests.post(introspect_url, data=form, headers=synapse_auth, timeout=10)
    assert active.status_code == 200
    info = active.json()
    assert info["active"] is True
    # introspection.rs: the stable and unstable (MSC2967) API scopes, sorted; with X-MAS-Supports-Device-Id
    # the device is only in device_id, without it also in the scope, in both forms
    api = ["urn:matrix:client:api:*", "urn:matrix:org.matrix.msc2967.client:api:*"]
    assert info["scope"].split() == api
    assert info["username"] == "grace" and info["device_id"] == "GRACEDEV" and info["client_id"] == "legacy"
    assert ulid.is_valid(info["sub"]) and "iss" not in info and "jti" not in info and "exp" not in info
    plain = requests.post(introspect_url, data=form, headers={"Authorization": f"Bearer {MATRIX_SECRET}"}, timeout=10)
    device = ["urn:matrix:client:device:GRACEDEV", "urn:matrix:org.matrix.msc2967.client:device:GRACEDEV"]
    assert plain.json()["scope"].split() == sorted(api + device)

    unknown = requests.post(introspect_url, data={"token": "mct_unknown"}, headers=synapse_auth, timeout=10)
    assert unknown.json() == {"active": False}
    denied = requests.post(introspect_url, data={"token": token}, headers={"Authorization": "Bearer wrong"}, timeout=10)
    assert denied.status_code == 401

    # a compat session flagged is_synapse_admin grants the Synapse admin scope
    pg.query(mas_db, "UPDATE compat_sessions SET is_synapse_admin = true WHERE device_id = 'GRACEDEV'")
    admin_info = requests.post(introspect_url, data={"token": token}, headers=synapse_auth, timeout=10).json()
    assert admin_info["scope"].split() == [*api, "urn:synapse:admin:*"]

    logout_url = mas.url("compat", "/_matrix/client/v3/logout")
    logout = requests.post(logout_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert logout.status_code == 200
    after = requests.post(introspect_url, data={"token": token}, headers=synapse_auth, timeout=10).json()
    assert after == {"active": False}


def test_login_with_synapse_bcrypt_hash_upgrades(mas, pg, mas_db):
    """A v1 hash made like Synapse's (NFKC + pepper) verifies and is re-hashed with v2."""
    password = "Ünïcödé-Pässwörd-1"
    peppered = (unicodedata.normalize("NFKC", password) + PEPPER).encode()
    hashed = bcrypt.hashpw(peppered, bcrypt.gensalt(rounds=4)).decode()
    user_id = ulid.new_uuid()
    pg.query(mas_db, "INSERT INTO users (user_id, username, created_at) VALUES (%s, 'heidi', now())", (user_id,))
    pg.query(
        mas_db,
        "INSERT INTO user_passwords (user_password_id, user_id, hashed_password, created_at, version)"
        " VALUES (%s, %s, %s, now() - interval '1 day', 1)",
        (ulid.new_uuid(), user_id, hashed),
    )
    decomposed = unicodedata.normalize("NFD", password)
    login = requests.post(
        mas.url("compat", "/_matrix/client/v3/login"),
        json={"type": "m.login.password", "user": "heidi", "password": decomposed},
        timeout=10,
    )
    assert login.status_code == 200, login.text
    rows = pg.query(
        mas_db,
        "SELECT version, upgraded_from_id IS NOT NULL FROM user_passwords WHERE user_id = %s ORDER BY created_at",
        (user_id,),
    )
    assert rows == [(1, False), (2, True)]


def test_refresh_token_rotation(cli, mas):
    assert cli("manage", "register-user", "ivan", "-y", "-p", STRONG_PASSWORD).returncode == 0
    login = requests.post(
        mas.url("compat", "/_matrix/client/v3/login"),
        json={"type": "m.login.password", "user": "ivan", "password": STRONG_PASSWORD, "refresh_token": True},
        timeout=10,
    ).json()
    assert login["expires_in_ms"] == 300_000 and "home_server" not in login  # login.rs ResponseBody
    refresh_url = mas.url("compat", "/_matrix/client/v3/refresh")
    refreshed = requests.post(refresh_url, json={"refresh_token": login["refresh_token"]}, timeout=10)
    assert refreshed.status_code == 200 and refreshed.json()["access_token"] != login["access_token"]
    assert refreshed.json()["expires_in_ms"] == 300_000
    replay = requests.post(refresh_url, json={"refresh_token": login["refresh_token"]}, timeout=10)
    assert (replay.status_code, replay.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    # refresh.rs expires the access token the refresh token came with
    introspect_url = mas.url("oauth", "/oauth2/introspect")
    synapse_auth = {"Authorization": f"Bearer {MATRIX_SECRET}"}
    old = requests.post(introspect_url, data={"token": login["access_token"]}, headers=synapse_auth, timeout=10)
    assert old.json() == {"active": False}
    new = requests.post(
        introspect_url, data={"token": refreshed.json()["access_token"]}, headers=synapse_auth, timeout=10
    )
    assert new.json()["active"] is True and new.json()["expires_in"] <= 300


def test_password_login_rate_limited(cli, tmp_path, mas_config):
    """rate_limit.rs: password checks per requester IP (the peer, or the last untrusted X-Forwarded-For),
    checked after the user is found, before the password; 429 M_LIMIT_EXCEEDED."""
    assert cli("manage", "register-user", "rita", "-y", "-p", STRONG_PASSWORD).returncode == 0
    config = yaml.safe_load(with_fresh_ports(mas_config, tmp_path / "c.yaml").read_text())
    config["rate_limiting"] = {"login": {"per_ip": {"burst": 2, "per_second": 0.001}}}
    with run_server(
        [write_yaml(tmp_path / "limited.yaml", config)], args=["--no-worker"], log_path=tmp_path / "log"
    ) as mas:
        url = mas.url("compat", "/_matrix/client/v3/login")

        def login(user: str, password: str, forwarded_for: str | None = None) -> tuple[int, str]:
            headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
            body = {"type": "m.login.password", "user": user, "password": password}
            answer = requests.post(url, json=body, headers=headers, timeout=10)
            return answer.status_code, answer.json()["errcode"] if answer.status_code != 200 else ""

        assert login("rita", "wrong") == (403, "M_FORBIDDEN")
        assert login("nobody", "wrong") == (403, "M_FORBIDDEN")  # an unknown user is not counted
        assert login("rita", STRONG_PASSWORD) == (200, "")
        assert login("rita", STRONG_PASSWORD) == (429, "M_LIMIT_EXCEEDED")
        assert login("rita", STRONG_PASSWORD, forwarded_for="10.1.2.3") == (429, "M_LIMIT_EXCEEDED")  # trusted
        assert login("rita", STRONG_PASSWORD, forwarded_for="203.0.113.7") == (200, "")  # another client


# ----------------------------------------------------------------- oauth2 token


def test_client_credentials_token(mas):
    url = mas.url("oauth", "/oauth2/token")
    form = {"grant_type": "client_credentials", "scope": "urn:mas:admin"}
    ok = requests.post(url, auth=(ADMIN_CLIENT_ID, ADMIN_CLIENT_SECRET), data=form, timeout=10)
    assert ok.status_code == 200
    assert ok.json()["token_type"] == "Bearer" and ok.json()["scope"] == "urn:mas:admin"
    assert ok.json()["access_token"].startswith("mat_")
    bad_secret = requests.post(url, auth=(ADMIN_CLIENT_ID, "wrong"), data=form, timeout=10)
    assert bad_secret.status_code == 401 and bad_secret.json()["error"] == "invalid_client"
    not_admin = requests.post(url, auth=(OTHER_CLIENT_ID, "other-secret"), data=form, timeout=10)
    # token.rs: a policy denial is 403 invalid_scope, the violations as the description
    assert not_admin.status_code == 403
    assert not_admin.json() == {"error": "invalid_scope", "error_description": "scope 'urn:mas:admin' not allowed"}
    api = {"grant_type": "client_credentials", "scope": "urn:mas:admin urn:matrix:client:api:*"}
    no_user = requests.post(url, auth=(ADMIN_CLIENT_ID, ADMIN_CLIENT_SECRET), data=api, timeout=10)
    assert (
        no_user.status_code == 403
        and no_user.json()["error_description"] == "scope 'urn:matrix:client:api:*' not allowed"
    )
    introspected = requests.post(
        mas.url("oauth", "/oauth2/introspect"),
        data={"token": ok.json()["access_token"]},
        headers={"Authorization": f"Bearer {MATRIX_SECRET}"},
        timeout=10,
    ).json()
    assert introspected["active"] is True and introspected["scope"] == "urn:mas:admin"
    assert introspected["client_id"] == ADMIN_CLIENT_ID and ulid.is_valid(introspected["jti"])
    assert "sub" not in introspected and "iss" not in introspected
    password_grant = {"grant_type": "password"}
    bad_grant = requests.post(url, auth=(ADMIN_CLIENT_ID, ADMIN_CLIENT_SECRET), data=password_grant, timeout=10)
    assert bad_grant.status_code == 400 and bad_grant.json()["error"] == "unsupported_grant_type"


def test_admin_api_requires_a_token(mas):
    url = mas.url("adminapi", "/api/admin/v1/users/by-username/alice")
    # admin/call_context.rs: no header is a bad request, a bad token unauthorized
    missing = requests.get(url, timeout=10)
    assert missing.status_code == 400 and missing.json() == {"errors": [{"title": "Missing authorization header"}]}
    assert requests.get(url, headers={"Authorization": "Bearer mat_forged"}, timeout=10).status_code == 401


# -------------------------------------------------------------------- admin API


@pytest.fixture
def admin_call(mas, admin, contract):
    """``call(method, path, expected, valid_request=True, **kw)``: an admin-API
    request whose status is asserted and whose answer (and request) is checked
    against the upstream OpenAPI document."""
    api = mas.url("adminapi", "/api/admin/v1")

    def call(method: str, path: str, expected: int, valid_request: bool = True, **kwargs) -> requests.Response:
        response = admin.request(method, api + path, timeout=10, **kwargs)
        assert response.status_code == expected, f"{method} {path}: {response.status_code} {response.text}"
        contract.validate(response, check_request=valid_request)
        return response

    return call


def test_admin_api_users(mas, admin_call, homeserver, pg, mas_db):
    call = admin_call

    created = call("POST", "/users", 201, json={"username": "judy"}).json()["data"]
    user_id = created["id"]
    assert ulid.is_valid(user_id) and created["attributes"]["username"] == "judy"
    assert created["links"]["self"] == f"/api/admin/v1/users/{user_id}"
    assert pg.query(mas_db, "SELECT username FROM users WHERE user_id = %s", (ulid.to_uuid(user_id),)) == [("judy",)]
    assert call("POST", "/users", 409, json={"username": "judy"}).json()["errors"][0]["title"] == "User already exists"
    invalid = call("POST", "/users", 400, json={"username": "Not Valid"})
    assert invalid.json()["errors"][0]["title"] == "Username is not valid"
    homeserver.taken.add("kept")
    reserved = call("POST", "/users", 409, json={"username": "kept"})
    assert reserved.json()["errors"][0]["title"] == "Username is reserved by the homeserver"
    call("POST", "/users", 201, json={"username": "kept", "skip_homeserver_check": True})

    by_name = call("GET", "/users/by-username/judy", 200).json()
    assert by_name["data"]["id"] == user_id and by_name["links"]["self"] == "/api/admin/v1/users/by-username/judy"
    unknown = call("GET", "/users/by-username/nobody", 404)
    assert unknown.json()["errors"][0]["title"] == 'User with username "nobody" not found'
    assert call("GET", f"/users/{user_id}", 200).json()["data"]["attributes"]["admin"] is False
    missing = ulid.encode(0)
    assert call("GET", f"/users/{missing}", 404).json()["errors"][0]["title"] == f"User ID {missing} not found"

    call("POST", f"/users/{user_id}/set-password", 204, json={"password": STRONG_PASSWORD})
    call("POST", f"/users/{user_id}/set-password", 400, json={"password": "short"})
    call("POST", f"/users/{user_id}/set-password", 204, json={"password": "short", "skip_password_check": True})
    call("POST", f"/users/{missing}/set-password", 404, json={"password": STRONG_PASSWORD})
    versions = pg.query(mas_db, "SELECT version FROM user_passwords WHERE user_id = %s", (ulid.to_uuid(user_id),))
    assert versions == [(2,), (2,)]

    promoted = call("POST", f"/users/{user_id}/set-admin", 200, json={"admin": True}).json()
    assert promoted["data"]["attributes"]["admin"] is True
    assert promoted["links"]["self"] == f"/api/admin/v1/users/{user_id}/set-admin"
    demoted = call("POST", f"/users/{user_id}/set-admin", 200, json={"admin": False})
    assert demoted.json()["data"]["attributes"]["admin"] is False
    call("POST", f"/users/{missing}/set-admin", 404, json={"admin": True})

    locked = call("POST", f"/users/{user_id}/lock", 200).json()["data"]["attributes"]
    assert locked["locked_at"] is not None
    assert call("POST", f"/users/{user_id}/unlock", 200).json()["data"]["attributes"]["locked_at"] is None
    call("POST", f"/users/{missing}/lock", 404)

    listing = call("GET", "/users", 200, params={"filter[search]": "jud", "page[first]": "5"}).json()
    assert [item["id"] for item in listing["data"]] == [user_id] and listing["meta"]["count"] == 1
    call("GET", "/users", 200, params={"count": "only"})
    call("GET", "/users", 200, params={"filter[admin]": "true", "page[last]": "2"})

    deactivated = call("POST", f"/users/{user_id}/deactivate", 200, json={"skip_erase": True}).json()["data"]
    # deactivate.rs: deactivated now, not locked (the job tells Synapse)
    assert deactivated["attributes"]["deactivated_at"] is not None and deactivated["attributes"]["locked_at"] is None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if {"localpart": "judy", "erase": False} in homeserver.posts("delete_user"):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the worker did not deactivate the user in the homeserver")


def test_admin_api_user_emails(mas, admin_call, pg, mas_db):
    call = admin_call

    user_id = call("POST", "/users", 201, json={"username": "ken"}).json()["data"]["id"]
    added = call("POST", "/user-emails", 201, json={"user_id": user_id, "email": "ken@example.test"}).json()["data"]
    assert added["type"] == "user-email" and added["attributes"] == {
        "created_at": added["attributes"]["created_at"],
        "user_id": user_id,
        "email": "ken@example.test",
    }
    conflict = call("POST", "/user-emails", 409, json={"user_id": user_id, "email": "ken@example.test"})
    assert conflict.json()["errors"][0]["title"] == 'User email "ken@example.test" already in use'
    invalid = call("POST", "/user-emails", 400, False, json={"user_id": user_id, "email": "not an email"})
    assert invalid.json()["errors"][0]["title"] == 'Email "not an email" is not valid'
    call("POST", "/user-emails", 404, json={"user_id": ulid.encode(0), "email": "x@example.test"})

    listed = call("GET", "/user-emails", 200, params={"filter[user]": user_id}).json()
    assert [item["attributes"]["email"] for item in listed["data"]] == ["ken@example.test"]
    assert listed["meta"]["count"] == 1
    assert listed["links"]["self"] == f"/api/admin/v1/user-emails?filter[user]={user_id}&page[first]=10"
    call("GET", "/user-emails", 404, params={"filter[user]": ulid.encode(0)})
    by_email = call("GET", "/user-emails", 200, params={"filter[email]": "ken@example.test"}).json()
    assert len(by_email["data"]) == 1

    email_id = added["id"]
    assert call("GET", f"/user-emails/{email_id}", 200).json()["data"]["id"] == email_id
    call("DELETE", f"/user-emails/{email_id}", 204)
    call("GET", f"/user-emails/{email_id}", 404)
    left = pg.query(mas_db, "SELECT count(*) FROM user_emails WHERE user_email_id = %s", (ulid.to_uuid(email_id),))
    assert left == [(0,)]


def test_contract_catches_a_wrong_body(mas, admin, contract):
    """The OpenAPI check itself (the test's own tool): a body with a wrong type fails it."""
    response = admin.get(mas.url("adminapi", "/api/admin/v1/users/by-username/alice"), timeout=10)
    contract.validate(response)
    body = response.json()
    body["data"]["attributes"]["admin"] = "yes"
    response._content = json.dumps(body).encode()
    with pytest.raises(ContractViolation, match="boolean"):
        contract.validate(response)


# ----------------------------------------------------------------------- doctor


def _doctor(config_path: Path, well_known_base: str) -> tuple[int, str, list[str]]:
    result = run_cli(["doctor"], [config_path], env={"MAS_DOUBLE_WELL_KNOWN_BASE": well_known_base})
    markers = [line for line in result.stderr.splitlines() if " mas_cli::commands::doctor:" in line]
    return result.returncode, result.stderr, markers


@mas_target.double_only
def test_doctor_all_good(mas, mas_config, homeserver):
    homeserver.well_known = {"m.homeserver": {"base_url": mas.resources["compat"] + "/"}}
    code, stderr, lines = _doctor(mas_config, homeserver.url)
    assert code == 0, stderr
    assert "💡 Running diagnostics" in lines[0]
    assert any(" WARN " in ln and "⚠️ The issuer in the config" in ln for ln in lines)
    ok = [ln for ln in lines if " INFO " in ln and "✅" in ln]
    assert len(ok) == 4, stderr
    assert not [ln for ln in lines if " ERROR " in ln]
    assert MATRIX_SECRET not in stderr


@mas_target.double_only
def test_doctor_failures(tmp_path, mas_config, homeserver):
    config = yaml.safe_load(mas_config.read_text())
    config["matrix"]["secret"] = "a-wrong-secret"
    wrong = write_yaml(tmp_path / "wrong.yaml", config)
    homeserver.well_known = None
    code, stderr, lines = _doctor(wrong, homeserver.url)
    assert code == 0
    assert any(" WARN " in ln and "Matrix client well-known replied with 404 Not Found" in ln for ln in lines)
    step5 = [ln for ln in lines if " ERROR " in ln and "❌ A Synapse MAS API endpoint" in ln]
    assert step5 and "403 Forbidden" in step5[0]
    assert 'secret: "a-wrong-secret"' in stderr  # upstream prints the secret; the formula scrubs it

    config["matrix"]["endpoint"] = f"http://{LOOPBACK}:{free_port()}/"
    down = write_yaml(tmp_path / "down.yaml", config)
    code, stderr, lines = _doctor(down, f"http://{LOOPBACK}:{free_port()}")
    assert code == 0
    assert any("⚠️ Failed to fetch well-known document" in ln for ln in lines)
    assert any(" ERROR " in ln and "❌ Can't reach the homeserver" in ln for ln in lines)
    assert any(" WARN " in ln and "⚠️ Can't reach the legacy login API" in ln for ln in lines)


@mas_target.double_only
def test_doctor_status_quirk_and_bare_host_abort(tmp_path, mas_config, homeserver):
    config = yaml.safe_load(mas_config.read_text())
    config["matrix"]["homeserver"] = "localhost:8008"
    code, stderr, _ = _doctor(write_yaml(tmp_path / "port.yaml", config), homeserver.url)
    assert code == 1
    assert "Error: The homeserver host in the config (`matrix.homeserver`) is not a valid domain." in stderr

    homeserver.well_known = None
    config = yaml.safe_load(mas_config.read_text())
    code, stderr, lines = _doctor(write_yaml(tmp_path / "hs.yaml", config), homeserver.url)
    # the fake homeserver answers 404 on /_matrix/client/v3/login: the emoji-less ERROR
    quirk = [ln for ln in lines if " ERROR " in ln and "The legacy login API at" in ln]
    assert quirk and "❌" not in quirk[0] and "replied with 404 Not Found" in quirk[0]


# ---------------------------------------------------------------------- syn2mas


def test_syn2mas_requires_synapse_config(cli, tmp_path):
    result = cli("syn2mas", "check")
    assert result.returncode == 1
    assert "Please specify the path to the Synapse configuration file(s)." in result.stderr
    # options before the subcommand reach syn2mas (which then fails on the missing file)
    missing = str(tmp_path / "missing-homeserver.yaml")
    early = cli("syn2mas", "--synapse-config", missing, "check")
    assert early.returncode == 1
    assert "Please specify" not in early.stderr and "Error: " in early.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--synapse-config", "a.yaml", "--synapse-config", "b.yaml", "migrate", "--dry-run"],
        ["migrate", "--synapse-config", "a.yaml", "--dry-run", "--synapse-config", "b.yaml"],
    ],
)
def test_syn2mas_options_anywhere(argv):
    ns = parse_syn2mas(argv)
    assert (ns.subcommand, ns.synapse_config, ns.dry_run) == ("migrate", ["a.yaml", "b.yaml"], True)
    assert ns.ignore_missing_auth_providers is False and ns.synapse_database_uri is None


def test_syn2mas_dry_run_only_with_migrate():
    with pytest.raises(SystemExit) as excinfo:
        parse_syn2mas(["check", "--dry-run", "--synapse-config", "a.yaml"])
    assert excinfo.value.code == 2


# ------------------------------------------------------------ real Synapse


def test_against_real_synapse(synapse_factory, pg, tmp_path, upstream_dir):  # the double checks its config
    """register-user, provisioning, compat login and Synapse introspection end to end."""
    name = "mas_double_e2e"
    dsn = fresh_database(pg, name)
    try:
        web, internal = free_port(), free_port()
        homeserver = synapse_factory(
            server_name="example.com",
            extra_config={
                "matrix_authentication_service": {
                    "enabled": True,
                    "endpoint": f"http://{LOOPBACK}:{web}/",
                    "secret": MATRIX_SECRET,
                },
            },
        )
        share = mas_target.share_dir(tmp_path)
        config = make_config(dsn, homeserver.base_url + "/", web, internal, share, homeserver="example.com")
        path = write_yaml(tmp_path / "config.yaml", config)
        with run_server([path], log_path=tmp_path / "mas.log") as mas:
            homeserver.start()
            result = run_cli(["manage", "register-user", "mallory", "-y", "-p", STRONG_PASSWORD], [path])
            assert result.returncode == 0, result.stderr
            again = run_cli(["manage", "register-user", "mallory2", "-y"], [path])
            assert again.returncode == 0, again.stderr
            query = homeserver.request("GET", "/_synapse/mas/query_user?localpart=mallory", token=MATRIX_SECRET)
            deadline = time.monotonic() + 20
            while query.status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
                query = homeserver.request("GET", "/_synapse/mas/query_user?localpart=mallory", token=MATRIX_SECRET)
            assert query.status_code == 200, query.text
            login = requests.post(
                mas.url("compat", "/_matrix/client/v3/login"),
                json={"type": "m.login.password", "user": "mallory", "password": STRONG_PASSWORD},
                timeout=10,
            )
            assert login.status_code == 200, login.text + mas.log()
            whoami = homeserver.request("GET", "/_matrix/client/v3/account/whoami", token=login.json()["access_token"])
            assert whoami.status_code == 200, whoami.text
            assert whoami.json()["user_id"] == "@mallory:example.com"
            assert whoami.json()["device_id"] == login.json()["device_id"]
            bogus = homeserver.request("GET", "/_matrix/client/v3/account/whoami", token="mct_bogus")
            assert bogus.status_code == 401
            taken = run_cli(["manage", "register-user", "mallory", "-y"], [path])
            assert taken.returncode == 1 and "User already exists" in taken.stderr

            code, stderr, lines = _doctor(path, homeserver.base_url)
            assert code == 0
            assert [ln for ln in lines if "✅" in ln], stderr
            assert any("✅ The Synapse MAS API is reachable with authentication" in ln for ln in lines), stderr
            assert any("✅ Homeserver at" in ln and "correctly rejected an invalid token" in ln for ln in lines), stderr
    finally:
        pg.drop_database(name)
