"""Unit tests of ``_modules/mas_doctor.py``: upstream doctor's output parsed into one check per step (markers,
quirks, both wordings of step 5), every message scrubbed, ``mas-cli`` that cannot start, the human rendering, the
TLS name sent to a proxy on loopback, the wait with backoff, and the ``mas:doctor`` pillar validation.

``cmd.run_all`` answers with recorded ``mas-cli doctor`` output; the parser, the scrubber (``mas_secret.scrub``)
and the map are the formula's own. Every HTTP probe goes to a loopback port that is bound but never listens, so
the HTTP checks fail fast ("connection refused") and the tests touch no other service.
"""

import datetime
import json
import os
import re
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from salt.exceptions import SaltInvocationError

from formula_modules import MODULES, configure_loader_modules  # noqa: F401 (the loader fixture)
from mas_formula import http
from pillars import deep_update

mas_doctor = MODULES["mas_doctor"]
mas_mod = MODULES["mas"]

SECRET = "THE-SHARED-SECRET-0123456789"
DB_PASSWORD = "Db-Password-Secret-0815"
NAMED = (
    "mas_health",
    "mas_discovery",
    "compat_login_route",
    "synapse_reaches_mas",
    "shared_secret",
    "issuer_consistency",
    "compat_routes",
    "synapse_version",
    "well_known_client",
    "dropin_present",
    "mas_cli_doctor",
)
STEPS = tuple(f"mas_cli_doctor.{step}" for step in mas_doctor.UPSTREAM_STEPS)

T = "2026-11-26T10:00:00.000001Z"
D = "mas_cli::commands::doctor"
# Recorded in the shape of crates/cli/src/commands/doctor.rs (MAS 1.22+): ANSI on the first line, a warning over
# several lines, the ❌ without a space, step 5 printing the secret, and step 6's error without emoji.
RECORDED = f"""\x1b[2m{T}\x1b[0m \x1b[32m INFO\x1b[0m {D}:33 💡 Running diagnostics, make sure that both MAS and Synapse are running, and that MAS is using the same configuration files as this tool.
{T}  WARN {D}:54 ⚠️ The issuer in the config (`http.issuer`/`http.public_base`) is not an HTTPS URL.
This means some clients will refuse to use it.
{T}  WARN {D}:69 ⚠️ Matrix client well-known replied with 404 Not Found, expected 2xx.
Make sure the homeserver is reachable and the well-known document is available at "https://example.com/.well-known/matrix/client"
{T}  INFO {D}:131 ✅ Homeserver is reachable at "http://synapse:8008/_matrix/client/versions"
{T}  INFO {D}:190 ✅ Homeserver at "http://synapse:8008/_matrix/client/v3/account/whoami" is reachable, and it correctly rejected an invalid token.
{T} ERROR {D}:247 ❌ A Synapse MAS API endpoint at "http://synapse:8008/_synapse/mas/is_localpart_available" replied with 403 Forbidden.
Make sure the homeserver is running, and that the MAS config has the correct `matrix.secret`.
It should match the `secret` set in the Synapse config.

  matrix_authentication_service:
    enabled: true
    endpoint: "http://matrix.example.com/auth/"
    # This must exactly match the secret in the MAS config:
    secret: "{SECRET}"

And in the MAS config:

  matrix:
    homeserver: "example.com"
    endpoint: "http://synapse:8008/"
    secret: "{SECRET}"

{T} ERROR {D}:330 The legacy login API at "https://matrix.example.com/_matrix/client/v3/login" replied with 404 Not Found.
This means legacy clients won't be able to login.
"""
# Step 3 failing (❌ without a space): upstream skips steps 4 and 5.
HOMESERVER_DOWN = f"""{T} ERROR {D}:140 ❌Can't reach the homeserver at "http://synapse:8008/_matrix/client/versions", got 502 Bad Gateway.
Make sure your homeserver is running.
{T}  WARN {D}:340 ⚠️ Can't reach the legacy login API at "http://synapse:8008/_matrix/client/v3/login".
"""
# The test double's older wording of step 5, and an all-good run.
ALL_GOOD = f"""{T}  INFO {D}:33 💡 Running diagnostics
{T}  INFO {D}:131 ✅ Homeserver is reachable at "http://synapse:8008/_matrix/client/versions"
{T}  INFO {D}:190 ✅ Homeserver at "http://synapse:8008/_matrix/client/v3/account/whoami" is reachable, and it correctly rejected an invalid token.
{T}  INFO {D}:240 ✅ The Synapse admin API is reachable with authentication at "http://synapse:8008/_synapse/mas/is_localpart_available".
{T}  INFO {D}:320 ✅ The legacy login API at "https://matrix.example.com/_matrix/client/v3/login" is reachable and is handled by MAS.
"""
CONFIG_ERROR = """Error: The homeserver host in the config (`matrix.homeserver`) is not a valid domain.
See https://element-hq.github.io/matrix-authentication-service/setup/homeserver.html

Caused by:
    invalid domain character
"""


@pytest.fixture
def closed_port():
    """A loopback port that is bound but never listens: connections are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def deployment(tmp_path, pillar, closed_port):
    """A pillar whose every endpoint is ``closed_port``, a fake mas-cli binary and wrapper, the secret files."""
    binary = tmp_path / "bin" / "mas-cli-binary"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    base = tmp_path / "mas"
    pillar["mas"] = {
        "enabled": True,
        "server_name": "example.com",
        "runtime": "binary",
        "binary": {"path": str(binary), "share_dir": str(tmp_path / "share")},
        "base_path": str(base),
        "http": {"web_bind": f"127.0.0.1:{closed_port}", "internal_bind": f"127.0.0.1:{closed_port}"},
        "database": {"password": DB_PASSWORD},
        "synapse": {
            "endpoint": f"http://127.0.0.1:{closed_port}/",
            "config_dir": str(tmp_path / "conf.d"),
            "config_files": [str(tmp_path / "homeserver.yaml")],
        },
        "proxy": {"nginx": {"snippet_path": str(tmp_path / "nginx" / "mas.conf")}},
        "doctor": {"proxy_url": f"http://127.0.0.1:{closed_port}"},
    }
    (base / "bin").mkdir(parents=True)
    (base / "bin" / "mas-cli").write_text("#!/bin/sh\n")
    secrets = base / "config" / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "homeserver_secret").write_text(SECRET)
    (secrets / "database_password").write_text(DB_PASSWORD)
    return {"base": base, "binary": binary, "port": closed_port}


def doctor_says(stderr, retcode=0, calls=None):
    """Make ``cmd.run_all`` answer like ``mas-cli doctor`` did."""

    def run_all(cmd, **kwargs):
        if calls is not None:
            calls.append((cmd, kwargs))
        return {"retcode": retcode, "stdout": "", "stderr": stderr}

    mas_doctor.__salt__["cmd.run_all"] = run_all


def by_name(report):
    return {check["name"]: check for check in report["checks"]}


def test_upstream_steps_from_recorded_output_one_check_each_and_scrubbed(deployment):
    calls = []
    doctor_says(RECORDED, calls=calls)
    report = mas_doctor.run(timeout=2)
    cmd, kwargs = calls[0]
    assert cmd == [str(deployment["base"] / "bin" / "mas-cli"), "doctor"]
    assert kwargs["python_shell"] is False and kwargs["output_loglevel"] == "quiet" and kwargs["timeout"] == 2
    checks = by_name(report)
    assert [c["name"] for c in report["checks"]] == list(NAMED) + list(STEPS)
    assert {name: checks[name]["status"] for name in STEPS} == {
        "mas_cli_doctor.issuer": "warning",
        "mas_cli_doctor.well_known": "warning",
        "mas_cli_doctor.homeserver": "ok",
        "mas_cli_doctor.whoami": "ok",
        "mas_cli_doctor.synapse_mas_api": "error",
        "mas_cli_doctor.legacy_login": "error",
    }
    assert checks["mas_cli_doctor"]["status"] == "ok"
    assert "This means some clients" in checks["mas_cli_doctor.issuer"]["message"]
    api = checks["mas_cli_doctor.synapse_mas_api"]
    assert api["url"] == "http://synapse:8008/_synapse/mas/is_localpart_available"
    assert "**********" in api["message"] and "homeserver_secret" in api["fix"]
    assert checks["mas_cli_doctor.legacy_login"]["message"].startswith("The legacy login API at")
    assert checks["mas_cli_doctor.legacy_login"]["url"] == "https://matrix.example.com/_matrix/client/v3/login"
    assert checks["mas_cli_doctor.homeserver"]["fix"] == ""
    # the secret MAS holds and the database password appear nowhere
    dumped = json.dumps(report, ensure_ascii=False)
    assert SECRET not in dumped and DB_PASSWORD not in dumped
    assert report["result"] == "error" and mas_doctor.__context__["retcode"] == 1


def test_both_wordings_of_step_5_and_an_all_good_run(deployment):
    doctor_says(ALL_GOOD)
    checks = by_name(mas_doctor.run(timeout=2))
    assert {name: checks[name]["status"] for name in STEPS} == {
        "mas_cli_doctor.issuer": "ok",
        "mas_cli_doctor.well_known": "ok",
        "mas_cli_doctor.homeserver": "ok",
        "mas_cli_doctor.whoami": "ok",
        "mas_cli_doctor.synapse_mas_api": "ok",
        "mas_cli_doctor.legacy_login": "ok",
    }
    upstream = RECORDED.replace("Synapse MAS API endpoint", "Synapse admin API endpoint")
    doctor_says(upstream)
    assert by_name(mas_doctor.run(timeout=2))["mas_cli_doctor.synapse_mas_api"]["status"] == "error"


WK = "https://example.com/.well-known/matrix/client"
HS = "http://synapse:8008"


@pytest.mark.parametrize(
    ("level", "message", "step", "status"),
    [
        (
            "WARN",
            f'⚠️ Invalid JSON for the well-known document at "{WK}".\nMake sure going to "{WK}" in a web browser',
            "well_known",
            "warning",
        ),
        (
            "WARN",
            f'⚠️ Failed to fetch well-known document at "{WK}".\nThis means that the homeserver is not reachable',
            "well_known",
            "warning",
        ),
        (
            "ERROR",
            f'❌ Can\'t reach the homeserver at "{HS}/_matrix/client/versions".\nThis may be due to a misconfiguration',
            "homeserver",
            "error",
        ),
        (
            "ERROR",
            f'❌ The homeserver at "{HS}/_matrix/client/v3/account/whoami" replied with 503 Service Unavailable.\nThis means probably means',
            "whoami",
            "error",
        ),
        (
            "ERROR",
            f'❌ The homeserver at "{HS}/_matrix/client/v3/account/whoami" replied with 200 OK.\nThis is *highly* unexpected',
            "whoami",
            "error",
        ),
        (
            "WARN",
            f'⚠️ The homeserver at "{HS}/_matrix/client/v3/account/whoami" replied with 404 Not Found.\nCheck that the homeserver is running.',
            "whoami",
            "warning",
        ),
        (
            "ERROR",
            f'❌ Can\'t reach the homeserver at "{HS}/_matrix/client/v3/account/whoami".\n\nError details: x',
            "whoami",
            "error",
        ),
        (
            "INFO",
            f'✅ The Synapse MAS API is reachable with authentication at "{HS}/_synapse/mas/is_localpart_available".',
            "synapse_mas_api",
            "ok",
        ),
        (
            "ERROR",
            f'❌ Can\'t reach the Synapse MAS API at "{HS}/_synapse/mas/is_localpart_available".\nMake sure',
            "synapse_mas_api",
            "error",
        ),
        (
            "WARN",
            '⚠️ The legacy login API at "https://m.example.com/_matrix/client/v3/login" is reachable, but it doesn\'t look to be handled by MAS.',
            "legacy_login",
            "warning",
        ),
        (
            "WARN",
            '⚠️ Can\'t reach the legacy login API at "https://m.example.com/_matrix/client/v3/login".\nThis means',
            "legacy_login",
            "warning",
        ),
    ],
)
def test_each_upstream_message_lands_on_its_step(deployment, level, message, step, status):
    doctor_says(f"{T} {level:>5} {D}:1 {message}\n")
    checks = by_name(mas_doctor.run(timeout=2))
    check = checks[f"mas_cli_doctor.{step}"]
    assert (check["status"], check["message"]) == (status, message.strip())
    assert check["url"] == re.search(r'"(http[^"]+)"', message).group(1)
    assert (check["fix"] == "") == (status == "ok")
    assert checks["mas_cli_doctor"]["status"] == "ok"
    if "503" in message:
        assert "mas:synapse:mas_endpoint" in check["fix"]


def test_homeserver_unreachable_skips_steps_4_and_5_like_upstream(deployment):
    doctor_says(HOMESERVER_DOWN)
    checks = by_name(mas_doctor.run(timeout=2))
    assert checks["mas_cli_doctor.homeserver"]["status"] == "error"
    assert checks["mas_cli_doctor.homeserver"]["message"].startswith("❌Can't reach the homeserver")
    assert checks["mas_cli_doctor.whoami"]["status"] == "skipped"
    assert checks["mas_cli_doctor.synapse_mas_api"]["status"] == "skipped"
    assert checks["mas_cli_doctor.legacy_login"]["status"] == "warning"


def test_login_probe_of_synapse_itself_after_no_well_known_is_skipped(deployment):
    """Without a client well-known upstream's step 6 asks matrix.endpoint (Synapse's own address), where Synapse
    serves no login under MAS: that 404 says nothing (compat_login_route checks the route through the proxy)."""
    synapse = f"http://127.0.0.1:{deployment['port']}"
    fallback = (
        f'{T}  WARN {D}:108 ⚠️ Failed to fetch well-known document at "{WK}".\n'
        f'{T}  INFO {D}:131 ✅ Homeserver is reachable at "{synapse}/_matrix/client/versions"\n'
        f'{T} ERROR {D}:330 The legacy login API at "{synapse}/_matrix/client/v3/login" replied with 404 Not Found.\n'
        "This means legacy clients won't be able to login.\n"
    )
    doctor_says(fallback)
    checks = by_name(mas_doctor.run(timeout=2))
    assert checks["mas_cli_doctor.well_known"]["status"] == "warning"
    login = checks["mas_cli_doctor.legacy_login"]
    assert login["status"] == "skipped" and login["url"] == f"{synapse}/_matrix/client/v3/login"
    assert login["message"].startswith("upstream found no client well-known (see mas_cli_doctor.well_known)")
    assert "(upstream: The legacy login API at" in login["message"]
    # with a well-known, the same answer is an error (the base_url it names is the public one)
    doctor_says(fallback.split("\n", 1)[1])
    assert by_name(mas_doctor.run(timeout=2))["mas_cli_doctor.legacy_login"]["status"] == "error"
    # without a well-known, a probe elsewhere than Synapse's own address stays what upstream says
    doctor_says(
        fallback.replace(f"{synapse}/_matrix/client/v3/login", "https://matrix.example.com/_matrix/client/v3/login")
    )
    assert by_name(mas_doctor.run(timeout=2))["mas_cli_doctor.legacy_login"]["status"] == "error"


def test_config_error_exit_1_is_the_run_check(deployment):
    doctor_says(CONFIG_ERROR, retcode=1)
    checks = by_name(mas_doctor.run(timeout=2))
    assert checks["mas_cli_doctor"]["status"] == "error"
    assert "matrix.homeserver" in checks["mas_cli_doctor"]["message"]
    assert all(checks[name]["status"] == "skipped" for name in STEPS)


def test_unknown_upstream_lines_and_log_context_prefix(deployment):
    """A line of a step this parser does not know is reported on ``mas_cli_doctor``; MAS's optional log
    context (``<tag>-<n> - ``) before the message does not hide the marker."""
    extra = f"{T} ERROR {D}:400 ❌ Something new went wrong.\n"
    prefixed = ALL_GOOD.replace(f"{D}:131 ✅", f"{D}:131 cli-0 - ✅")
    doctor_says(prefixed + extra)
    checks = by_name(mas_doctor.run(timeout=2))
    assert checks["mas_cli_doctor"]["status"] == "error"
    assert checks["mas_cli_doctor"]["message"] == "❌ Something new went wrong."
    assert checks["mas_cli_doctor.homeserver"]["status"] == "ok"
    assert checks["mas_cli_doctor.legacy_login"]["status"] == "ok"


def test_disabled_deployment_is_refused(deployment, pillar):
    pillar["mas"]["enabled"] = False
    with pytest.raises(mas_doctor.CommandExecutionError, match="mas:enabled is false"):
        mas_doctor.run()


def test_docker_runtime_without_docker_says_so_and_the_others_still_run(deployment, pillar, tmp_path):
    pillar["mas"].update(runtime="docker", service={"docker": {"command": str(tmp_path / "no" / "docker")}})
    calls = []
    doctor_says(ALL_GOOD, calls=calls)
    report = mas_doctor.run(timeout=2)
    checks = by_name(report)
    assert checks["mas_cli_doctor"] == {
        "name": "mas_cli_doctor",
        "status": "error",
        "message": f"mas:runtime is docker but {tmp_path / 'no' / 'docker'} is missing",
        "fix": "install Docker or set mas:runtime: binary",
        "url": None,
        "seconds": checks["mas_cli_doctor"]["seconds"],
    }
    assert calls == []
    assert all(checks[name]["status"] == "skipped" for name in STEPS)
    # every other check ran and says why it failed
    assert checks["mas_health"]["status"] == "error"
    assert "connection refused" in checks["mas_health"]["message"]
    assert all(checks[name]["message"] for name in NAMED)


def test_binary_runtime_with_the_binary_missing(deployment):
    deployment["binary"].unlink()
    doctor_says(ALL_GOOD)
    check = by_name(mas_doctor.run(timeout=2))["mas_cli_doctor"]
    assert check["status"] == "error"
    assert check["message"] == f"mas:runtime is binary but {deployment['binary']} is missing"


def test_wrapper_that_cannot_exec_says_why_in_one_line(deployment):
    doctor_says("/srv/mas/bin/mas-cli: 5: exec: /opt/mas-cli: not found\n", retcode=127)
    check = by_name(mas_doctor.run(timeout=2))["mas_cli_doctor"]
    assert (
        check["message"] == "mas-cli could not start (exit 127): /srv/mas/bin/mas-cli: 5: exec: /opt/mas-cli: not found"
    )


def test_migrating_skips_the_delegation_checks_and_upstream_steps(deployment, pillar):
    pillar["mas"]["migration_in_progress"] = True
    doctor_says(RECORDED)
    checks = by_name(mas_doctor.run(timeout=2))
    for name in mas_doctor.DELEGATION_CHECKS + ("dropin_present",):
        assert checks[name]["status"] == "skipped", name
        assert "migration_in_progress" in checks[name]["message"]
    for step in ("whoami", "synapse_mas_api", "legacy_login"):
        check = checks[f"mas_cli_doctor.{step}"]
        assert check["status"] == "skipped"
        assert "migration_in_progress" in check["message"]
    assert SECRET not in json.dumps(checks)
    assert checks["mas_health"]["status"] == "error"  # not a delegation check


def test_dropin_left_while_migrating_is_an_error(deployment, pillar, tmp_path):
    pillar["mas"]["migration_in_progress"] = True
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "matrix-authentication-service.yaml").write_text("x: 1\n")
    doctor_says(ALL_GOOD)
    check = by_name(mas_doctor.run(timeout=2))["dropin_present"]
    assert check["status"] == "error" and "migration_in_progress is true" in check["message"]


def test_on_a_mas_minion_synapses_files_are_left_to_its_own_minion(deployment, pillar, tmp_path):
    """mas:roles without synapse: the drop-in and Synapse's config are on another minion; the doctor judges
    Synapse by its answers, and a refused shared secret points at the Synapse minion's copy."""

    class Synapse(BaseHTTPRequestHandler):
        def do_GET(self):
            status, body = (
                (401, {"errcode": "M_UNKNOWN_TOKEN"})
                if self.path.startswith("/_synapse/mas/")
                else (200, {"server_version": "1.163.2"})
            )
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    # Synapse on an address of its own (an address naming this host is refused on a split minion)
    server = ThreadingHTTPServer(("127.0.0.3", 0), Synapse)
    closed = deployment["port"]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # what Synapse's config here would say is no business of this minion (it would be a conflict)
        (tmp_path / "homeserver.yaml").write_text("enable_registration: true\n")
        pillar["mas"] = deep_update(
            pillar["mas"],
            {
                "roles": ["mas", "database"],
                "secrets": {"homeserver_secret": SECRET},
                "synapse": {"endpoint": f"http://127.0.0.3:{server.server_address[1]}/"},
                "http": {"web_bind": f"127.0.0.2:{closed}", "internal_bind": f"127.0.0.2:{closed}"},
                "doctor": {"proxy_url": f"http://127.0.0.4:{closed}"},
            },
        )
        doctor_says(ALL_GOOD)
        checks = by_name(mas_doctor.run(timeout=2))
    finally:
        server.shutdown()
        server.server_close()
    assert checks["dropin_present"]["status"] == "skipped"
    assert "another minion" in checks["dropin_present"]["message"]
    assert checks["synapse_version"]["status"] == "ok", checks["synapse_version"]
    assert "checked on its own minion" in checks["synapse_version"]["message"]
    shared = checks["shared_secret"]
    assert shared["status"] == "error" and "on the Synapse minion differs" in shared["message"], shared
    assert "apply mas.synapse on the Synapse minion" in shared["fix"]
    assert SECRET not in json.dumps(checks)


def test_render_marks_each_check_and_gives_the_fix():
    report = {
        "result": "error",
        "duration": 0.5,
        "checks": [
            {"name": "mas_health", "status": "ok", "message": "MAS answers", "fix": "", "url": None, "seconds": 0.1},
            {"name": "shared_secret", "status": "error", "message": "differ\nmore", "fix": "apply mas", "url": None},
            {"name": "compat_routes", "status": "warning", "message": "public", "fix": "proxy less", "url": None},
            {"name": "dropin_present", "status": "skipped", "message": "migrating", "fix": "", "url": None},
        ],
    }
    assert mas_doctor.render(report).splitlines() == [
        "doctor: error (1 error, 1 warning, 1 ok, 1 skipped) in 0.50 s",
        "✓ mas_health      MAS answers",
        "✗ shared_secret   differ → fix: apply mas",
        "! compat_routes   public → fix: proxy less",
        "- dropin_present  migrating",
    ]
    with pytest.raises(SaltInvocationError):
        mas_doctor.render("not a report")


def test_run_refuses_a_bad_timeout(deployment):
    with pytest.raises(SaltInvocationError, match="timeout"):
        mas_doctor.run(timeout=0)


# ----------------------------------------------------------- TLS name on loopback


def _certificate(tmp_path, host):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_http_session_asks_a_proxy_on_loopback_for_the_public_name(tmp_path):
    """mas_formula.http.session: a TLS proxy reached on 127.0.0.1 is asked for matrix.example.com (SNI, Host and
    the certificate check), as the doctor probes it."""
    cert, key = _certificate(tmp_path, "matrix.example.com")
    seen = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen["host"] = self.headers["Host"]
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: seen.__setitem__("sni", name)
    server = HTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{server.server_address[1]}/.well-known/matrix/client"
    try:
        with http.session("matrix.example.com", verify=str(cert)) as session:
            assert session.get(url, timeout=5).status_code == 200
        assert seen == {"host": "matrix.example.com", "sni": "matrix.example.com"}
        # without the public name the certificate does not match 127.0.0.1
        with http.session(verify=str(cert)) as session, pytest.raises(requests.exceptions.SSLError):
            session.get(url, timeout=5)
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------- wait


def test_wait_backs_off_until_mas_and_synapse_answer(tmp_path, pillar, closed_port):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pillar["mas"] = {
        "enabled": True,
        "server_name": "example.com",
        "base_path": str(tmp_path),
        "http": {"web_bind": f"127.0.0.1:{port}", "internal_bind": f"127.0.0.1:{port}"},
        "synapse": {"endpoint": f"http://127.0.0.1:{port}/"},
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    servers = []

    def start_late():
        time.sleep(1.0)
        servers.append(ThreadingHTTPServer(("127.0.0.1", port), Handler))
        servers[0].serve_forever()

    threading.Thread(target=start_late, daemon=True).start()
    try:
        waited = mas_doctor.wait(20)
        assert waited["ready"] is True and waited["waiting_for"] == []
        assert 1.0 <= waited["seconds"] < 8
    finally:
        if servers:
            servers[0].shutdown()
            servers[0].server_close()
    pillar["mas"] = deep_update(
        pillar["mas"],
        {
            "http": {"internal_bind": f"127.0.0.1:{closed_port}"},
            "synapse": {"endpoint": f"http://127.0.0.1:{closed_port}/"},
        },
    )
    started = time.monotonic()
    waited = mas_doctor.wait(1)
    assert waited["ready"] is False and 1 <= time.monotonic() - started < 4
    assert [w.split(" ", 1)[0] for w in waited["waiting_for"]] == ["MAS", "Synapse"]
    assert all("connection refused" in w for w in waited["waiting_for"])


# ------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("doctor", "key"),
    [
        ({"wait": 0}, "mas:doctor:wait"),
        ({"timeout": "ten"}, "mas:doctor:timeout"),
        ({"after_apply": "yes"}, "mas:doctor:after_apply"),
        ({"proxy_url": "https://127.0.0.1/matrix"}, "mas:doctor:proxy_url"),
        ({"proxy_url": "ftp://127.0.0.1"}, "mas:doctor:proxy_url"),
        ({"tls_verify": "relative/ca.pem"}, "mas:doctor:tls_verify"),
        ({"strcit": True}, "mas:doctor:strcit"),
    ],
)
def test_doctor_pillar_is_validated(pillar, tmp_path, doctor, key):
    pillar["mas"] = {"enabled": True, "server_name": "example.com", "base_path": str(tmp_path), "doctor": doctor}
    with pytest.raises(SaltInvocationError, match=key):
        mas_mod.mapdata()


def test_doctor_defaults_and_web_url(pillar, tmp_path):
    pillar["mas"] = {"enabled": True, "server_name": "example.com", "base_path": str(tmp_path)}
    mas = mas_mod.mapdata()
    assert mas["doctor"] == {
        "strict": False,
        "after_apply": False,
        "wait": 60,
        "timeout": 10,
        "proxy_url": "",
        "tls_verify": True,
    }
    assert mas["api"]["web_url"] == "http://127.0.0.1:8080/auth/"
    assert os.path.basename(mas["api"]["health_url"]) == "health"
