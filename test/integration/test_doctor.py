"""The doctor against a real deployment: ``salt-call mas_doctor.run`` / ``mas_doctor.report`` / ``state.apply
mas.doctor`` with a real Synapse, a real nginx in front (the README's server block: the formula's snippet, then
``/_matrix`` and ``/_synapse/client`` to Synapse), real PostgreSQL and the MAS double (binary runtime), all wired
by the formula. Every check is ok when everything is wired; then one fault at a time, each giving ``error`` in the
right named check with a message saying what to fix, never a secret.
"""

import re
import threading
import time

import pytest

from harness import mas as mas_target
from harness.util import free_port
from mas_double import run_server
from pillars import deep_update, wired_pillar

pytestmark = pytest.mark.integration

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
STEPS = tuple(
    f"mas_cli_doctor.{s}" for s in ("issuer", "well_known", "homeserver", "whoami", "synapse_mas_api", "legacy_login")
)
STATE_ID = "mas-doctor-mas_doctor-healthy"
#: Upstream doctor's step 2 asks https://example.com/.well-known/matrix/client, which no test can serve: the double
#: asks MAS_DOUBLE_WELL_KNOWN_BASE instead (a well-known naming the proxy), the real MAS warns and asks Synapse's
#: own address in step 6, which the formula reports skipped (test_upstream_without_a_client_well_known).
NO_WELL_KNOWN = {"mas_cli_doctor.well_known": "warning", "mas_cli_doctor.legacy_login": "skipped"}
UNREACHABLE_IN_TESTS = NO_WELL_KNOWN if mas_target.real() else {}
HEALTHY = "warning" if mas_target.real() else "ok"


class Deployment:
    """The wired deployment of this module and the levers the tests pull."""

    def __init__(self, root, minion, synapse, proxy, pillar, env):
        self.root = root
        self.minion = minion
        self.synapse = synapse
        self.proxy = proxy
        self.pillar = pillar
        self.env = env
        self.mas = None
        self.config = root / "mas" / "config" / "config.yaml"
        self.snippet = root / "nginx" / "mas.conf"
        self.dropin = synapse.conf_d / "matrix-authentication-service.yaml"
        self.secret = root / "mas" / "config" / "secrets" / "homeserver_secret"
        self.synapse_secret = root / "mas" / "synapse" / "homeserver_secret"
        self.binary = root / "bin" / "mas-cli"

    def start_mas(self, wait=True):
        self.mas = run_server([self.config], log_path=self.root / "mas.log", wait=wait)
        return self.mas

    def stop_mas(self):
        if self.mas is not None:
            self.mas.stop()
            self.mas = None

    def doctor(self, pillar=None, fun="mas_doctor.run"):
        """``salt-call mas_doctor.run`` with ``pillar`` (default: the wired one)."""
        return self.doctor_env(self.env, pillar, fun)

    def doctor_env(self, env, pillar=None, fun="mas_doctor.run"):
        """:meth:`doctor` with the environment ``env`` for ``salt-call`` (and so for ``mas-cli doctor``)."""
        self.minion.set_pillar({"mas": pillar or self.pillar})
        res = self.minion.run(fun, env=env)
        assert res.data is not None, res.output
        return res

    def gate(self, pillar=None, *args):
        self.minion.set_pillar({"mas": pillar or self.pillar})
        return self.minion.run("state.apply", "mas.doctor", "--retcode-passthrough", *args, env=self.env)

    def secrets(self):
        """Every secret value the deployment holds (MAS's files, Synapse's copy and Synapse's own)."""
        values = [p.read_text().strip() for p in self.secret.parent.iterdir() if p.is_file()]
        values += [self.synapse_secret.read_text().strip()]
        values += [self.synapse.config[key] for key in ("macaroon_secret_key", "form_secret")]
        return [v for v in values if len(v) >= 8]


def checks_of(res):
    return {check["name"]: check for check in res.data["checks"]}


def assert_no_secret(dep, res, *extra):
    for secret in dep.secrets() + list(extra):
        assert secret not in res.output


@pytest.fixture(scope="module")
def dep(pg, module_salt_minion, synapse_factory, nginx_factory, echo_upstream, tmp_path_factory):
    root = tmp_path_factory.mktemp("doctor")
    dbname = "mas_test_doctor"
    pg.create_database(dbname)
    mas_target.migrate(pg, dbname)
    synapse = synapse_factory(database="sqlite")
    # the README's server block: the formula's snippet first, then Synapse's usual regex location
    synapse_location = root / "synapse-location.conf"
    synapse_location.write_text(
        "location ~ ^(/_matrix|/_synapse/client) {\n"
        f"    proxy_pass {synapse.base_url};\n"
        "    proxy_set_header Host $host;\n"
        "    proxy_set_header X-Forwarded-For $remote_addr;\n"
        "}\n"
    )
    proxy = nginx_factory(synapse_upstream=None, include_files=[root / "nginx" / "mas.conf", synapse_location])
    # mas:binary is a link to the double (or the real mas-cli), so that a test can take it away
    (root / "bin").mkdir()
    (root / "bin" / "mas-cli").symlink_to(mas_target.cli())
    pillar = deep_update(
        wired_pillar(root, pg, dbname, synapse, free_port(), free_port()),
        {
            "binary": {"path": str(root / "bin" / "mas-cli"), "share_dir": str(mas_target.share_dir(root))},
            "proxy": {"nginx": {"well_known": True}},
            "doctor": {"proxy_url": proxy.base_url, "wait": 30, "timeout": 10},
        },
    )
    res = module_salt_minion.apply(pillar)
    assert res.returncode == 0, res.output
    # upstream doctor's step 2 asks https://<server_name>/.well-known/matrix/client; the double asks this instead
    well_known = echo_upstream("doctor-well-known", reply={"m.homeserver": {"base_url": proxy.base_url}})
    env = {} if mas_target.real() else {"MAS_DOUBLE_WELL_KNOWN_BASE": well_known.url}
    d = Deployment(root, module_salt_minion, synapse, proxy, pillar, env)
    d.start_mas()
    synapse.start()
    proxy.start()
    try:
        yield d
    finally:
        d.stop_mas()
        proxy.stop()
        synapse.stop()


# ------------------------------------------------------------------ all wired


def test_all_wired_every_check_named_and_ok(dep):
    res = dep.doctor()
    assert res.returncode == 0, res.output
    report = res.data
    assert [c["name"] for c in report["checks"]] == list(NAMED) + list(STEPS)
    assert {c["name"]: c["status"] for c in report["checks"] if c["status"] != "ok"} == UNREACHABLE_IN_TESTS, report
    assert report["result"] == HEALTHY
    assert all(isinstance(c["seconds"], float) for c in report["checks"])
    assert report["duration"] < 10
    checks = checks_of(res)
    assert "https://matrix.example.com/auth/" in checks["issuer_consistency"]["message"]
    assert checks["compat_routes"]["message"].endswith("/_synapse/mas/* is not public")
    assert_no_secret(dep, res)


def test_report_prints_one_line_per_check(dep):
    res = dep.doctor(fun="mas_doctor.report")
    assert res.returncode == 0, res.output
    lines = res.data.splitlines()
    warnings, skipped = (1, 1) if UNREACHABLE_IN_TESTS else (0, 0)
    ok = len(NAMED) + len(STEPS) - warnings - skipped
    assert lines[0].startswith(f"doctor: {HEALTHY} (0 error, {warnings} warning, {ok} ok, {skipped} skipped)")
    assert len(lines) == 1 + len(NAMED) + len(STEPS)
    marks = {"ok": "✓ ", "warning": "! ", "skipped": "- "}
    for line, name in zip(lines[1:], NAMED + STEPS, strict=True):
        assert line.startswith(marks[UNREACHABLE_IN_TESTS.get(name, "ok")] + name), line


def test_upstream_without_a_client_well_known(dep):
    """Where MAS's host cannot fetch https://<server_name>/.well-known/matrix/client (here: always, for the real
    MAS too), upstream warns and then asks Synapse's own address (matrix.endpoint) for the legacy login API,
    where Synapse answers 404 once it delegates to MAS: the formula reports that step skipped, with the reason,
    and its own compat_login_route (through the proxy) is what tells whether logins reach MAS."""
    res = dep.doctor_env({})
    checks = checks_of(res)
    assert {name: checks[name]["status"] for name in NO_WELL_KNOWN} == NO_WELL_KNOWN, res.data
    login = checks["mas_cli_doctor.legacy_login"]
    assert login["url"] == f"{dep.synapse.base_url}/_matrix/client/v3/login"
    assert "asked Synapse directly" in login["message"] and "replied with 404 Not Found" in login["message"]
    assert checks["compat_login_route"]["status"] == "ok"
    assert res.data["result"] == "warning" and res.returncode == 0
    assert_no_secret(dep, res)


# ---------------------------------------------------------- one fault at a time


def test_mas_stopped(dep):
    dep.stop_mas()
    try:
        res = dep.doctor()
        assert res.returncode != 0 and res.data["result"] == "error"
        checks = checks_of(res)
        health = checks["mas_health"]
        assert health["status"] == "error"
        assert "MAS does not answer at" in health["message"] and "connection refused" in health["message"]
        assert health["fix"].startswith("start MAS")
        assert checks["mas_discovery"]["status"] == "error"
        assert checks["synapse_reaches_mas"]["status"] == "error"
        assert "MAS does not answer at" in checks["synapse_reaches_mas"]["message"]
        assert checks["compat_login_route"]["status"] == "error"
        assert_no_secret(dep, res)
    finally:
        dep.start_mas()


def test_synapse_stopped(dep):
    dep.synapse.stop()
    try:
        res = dep.doctor()
        assert res.data["result"] == "error"
        checks = checks_of(res)
        reach = checks["synapse_reaches_mas"]
        assert reach["status"] == "error"
        assert reach["message"].startswith(f"Synapse does not answer at {dep.synapse.base_url}/")
        assert reach["fix"].startswith("start Synapse")
        assert checks["shared_secret"]["status"] == "error"
        assert checks["mas_health"]["status"] == "ok"
        assert checks["mas_cli_doctor.homeserver"]["status"] == "error"
        # upstream skips its steps 4 and 5 then
        assert checks["mas_cli_doctor.whoami"]["status"] == "skipped"
        assert checks["mas_cli_doctor.synapse_mas_api"]["status"] == "skipped"
        assert_no_secret(dep, res)
    finally:
        dep.synapse.start()


def test_different_shared_secret_in_synapse_copy(dep):
    good = dep.synapse_secret.read_text()
    other = "another-shared-secret-9f8e7d6c5b4a"
    dep.synapse_secret.write_text(other)
    dep.synapse.restart()
    try:
        res = dep.doctor()
        assert res.data["result"] == "error"
        checks = checks_of(res)
        shared = checks["shared_secret"]
        assert shared["status"] == "error"
        assert "the two copies differ" in shared["message"]
        assert str(dep.secret) in shared["message"] and str(dep.synapse_secret) in shared["message"]
        assert "restart Synapse" in shared["fix"]
        # Synapse introspects tokens with its copy: MAS refuses it
        assert "so it refuses the shared secret Synapse sends" in checks["synapse_reaches_mas"]["message"]
        # upstream doctor prints matrix.secret here: scrubbed
        upstream = checks["mas_cli_doctor.synapse_mas_api"]
        assert upstream["status"] == "error" and "**********" in upstream["message"]
        assert_no_secret(dep, res, other)
    finally:
        dep.synapse_secret.write_text(good)
        dep.synapse.restart()


def test_nginx_snippet_without_the_compatibility_routes(dep):
    good = dep.snippet.read_text()
    without, count = re.subn(r"location ~ [^\n]*\{\n.*?\n\}\n", "", good, count=1, flags=re.S)
    assert count == 1 and "login|logout|refresh" not in without
    dep.snippet.write_text(without)
    dep.proxy.reload()
    try:
        res = dep.doctor()
        assert res.data["result"] == "error"
        checks = checks_of(res)
        login = checks["compat_login_route"]
        assert login["status"] == "error"
        assert "logins do not reach MAS" in login["message"] and "M_UNRECOGNIZED" in login["message"]
        assert login["fix"].startswith(f"include {dep.snippet} in the nginx server block of matrix.example.com")
        routes = checks["compat_routes"]
        assert routes["status"] == "error"
        assert "POST /_matrix/client/v3/logout reaches Synapse" in routes["message"]
        assert "GET /_matrix/client/r0/login reaches Synapse" in routes["message"]
        assert checks["mas_cli_doctor.legacy_login"]["status"] == UNREACHABLE_IN_TESTS.get(
            "mas_cli_doctor.legacy_login", "error"
        )
        assert checks["mas_health"]["status"] == "ok"
        assert_no_secret(dep, res)
    finally:
        dep.snippet.write_text(good)
        dep.proxy.reload()


def test_issuer_mismatch(dep):
    """The mismatch operators hit most: the issuer without its trailing slash."""
    bad = deep_update(dep.pillar, {"config": {"http": {"issuer": "https://matrix.example.com/auth"}}})
    assert dep.minion.apply(bad, sls="mas.config").returncode == 0
    dep.stop_mas()
    dep.start_mas()
    dep.synapse.restart()  # Synapse caches MAS's metadata until it restarts
    try:
        res = dep.doctor(bad)
        assert res.data["result"] == "error"
        checks = checks_of(res)
        issuer = checks["issuer_consistency"]
        assert issuer["status"] == "error"
        assert issuer["message"].startswith("the issuers differ (trailing slash included)")
        assert "http.public_base 'https://matrix.example.com/auth/'" in issuer["message"]
        assert "MAS's discovery document 'https://matrix.example.com/auth'" in issuer["message"]
        assert "Synapse's auth_metadata 'https://matrix.example.com/auth'" in issuer["message"]
        assert "org.matrix.msc2965" in issuer["message"]
        assert "mas:config:http:issuer" in issuer["fix"]
        assert checks["mas_discovery"]["status"] == "ok"  # MAS serves what it is configured with
        assert_no_secret(dep, res)
    finally:
        assert dep.minion.apply(dep.pillar, sls="mas.config").returncode == 0
        dep.stop_mas()
        dep.start_mas()
        dep.synapse.restart()


def test_synapse_without_the_dropin(dep):
    good = dep.dropin.read_text()
    dep.dropin.unlink()
    dep.synapse.restart()
    try:
        res = dep.doctor()
        assert res.data["result"] == "error"
        checks = checks_of(res)
        dropin = checks["dropin_present"]
        assert dropin["status"] == "error"
        assert dropin["message"] == f"{dep.dropin} is missing: Synapse does not delegate to MAS"
        assert dropin["fix"].startswith("apply mas")
        assert checks["shared_secret"]["status"] == "error"
        assert "does not delegate to MAS" in checks["shared_secret"]["message"]
        assert_no_secret(dep, res)
    finally:
        dep.dropin.write_text(good)
        dep.synapse.restart()


def test_mas_cli_cannot_start_while_mas_http_answers(dep):
    dep.binary.unlink()
    try:
        res = dep.doctor()
        assert res.data["result"] == "error"
        checks = checks_of(res)
        cli = checks["mas_cli_doctor"]
        assert cli["status"] == "error"
        assert cli["message"] == f"mas:runtime is binary but {dep.binary} is missing"
        assert all(checks[step]["status"] == "skipped" for step in STEPS)
        assert {name: checks[name]["status"] for name in NAMED if name != "mas_cli_doctor"} == dict.fromkeys(
            NAMED[:-1], "ok"
        )
    finally:
        dep.binary.symlink_to(mas_target.cli())


def test_migrating_skips_the_delegation_checks(dep):
    """mas:migration_in_progress applied for real: no drop-in, no compat routes, Synapse authenticates."""
    migrating = deep_update(dep.pillar, {"migration_in_progress": True})
    assert dep.minion.apply(migrating).returncode == 0
    assert not dep.dropin.exists()
    dep.proxy.reload()
    dep.synapse.restart()
    try:
        res = dep.doctor(migrating)
        assert res.data["result"] != "error", res.data
        assert res.returncode == 0
        checks = checks_of(res)
        for name in (
            "compat_login_route",
            "synapse_reaches_mas",
            "shared_secret",
            "issuer_consistency",
            "compat_routes",
            "well_known_client",
            "dropin_present",
            "mas_cli_doctor.whoami",
            "mas_cli_doctor.synapse_mas_api",
            "mas_cli_doctor.legacy_login",
        ):
            assert checks[name]["status"] == "skipped", checks[name]
            assert "migration_in_progress" in checks[name]["message"]
        for name in ("mas_health", "mas_discovery", "synapse_version", "mas_cli_doctor.homeserver"):
            assert checks[name]["status"] == "ok", checks[name]
    finally:
        assert dep.minion.apply(dep.pillar).returncode == 0
        dep.proxy.reload()
        dep.synapse.restart()


# -------------------------------------------------------------------- the state


def test_state_fails_on_an_error_and_predicts_under_test(dep):
    quick = deep_update(dep.pillar, {"doctor": {"wait": 1}})
    dep.stop_mas()
    try:
        res = dep.gate(quick)
        assert res.returncode != 0
        state = res.by_id(STATE_ID)
        assert state["result"] is False and state["changes"] == {}
        assert "Still not answering after" in state["comment"]
        assert re.search(r"^✗ mas_health +MAS does not answer at .* → fix: start MAS", state["comment"], re.M)
        predicted = dep.gate(quick, "test=True").by_id(STATE_ID)
        assert predicted["result"] is None and "would wait up to 1 s" in predicted["comment"]
    finally:
        dep.start_mas()


def test_state_passes_on_warnings_unless_strict(dep):
    """nginx passing everything to Synapse (``location /``) makes /_synapse/mas public: a warning."""
    dep.proxy.synapse_upstream = dep.synapse.base_url
    dep.proxy.reload()
    try:
        res = dep.gate()
        state = res.by_id(STATE_ID)
        assert res.returncode == 0 and state["result"] is True, state["comment"]
        assert "Warnings do not fail this state" in state["comment"]
        assert re.search(r"^! compat_routes .*/_synapse/mas/is_localpart_available is public", state["comment"], re.M)
        strict = dep.gate(deep_update(dep.pillar, {"doctor": {"strict": True}}))
        assert strict.returncode != 0 and strict.by_id(STATE_ID)["result"] is False
        assert "fail this state (mas:doctor:strict)" in strict.by_id(STATE_ID)["comment"]
    finally:
        dep.proxy.synapse_upstream = None
        dep.proxy.reload()


def test_state_waits_for_a_mas_that_comes_up_late(dep):
    dep.stop_mas()
    starter = threading.Timer(6, dep.start_mas, kwargs={"wait": False})
    started = time.monotonic()
    starter.start()
    try:
        res = dep.gate()
        state = res.by_id(STATE_ID)
        assert res.returncode == 0 and state["result"] is True, state["comment"]
        waited = float(re.search(r"answered after ([0-9.]+) s", state["comment"]).group(1))
        assert waited >= 1  # salt-call itself takes a few seconds to start
        assert time.monotonic() - started < 40
    finally:
        starter.join()
        if dep.mas is None:
            dep.start_mas()


def test_after_apply_ends_state_apply_mas_with_the_doctor(dep):
    pillar = deep_update(dep.pillar, {"doctor": {"after_apply": True}})
    dep.minion.set_pillar({"mas": pillar})
    res = dep.minion.run("state.apply", "mas", "--retcode-passthrough", env=dep.env)
    assert res.returncode == 0, res.output
    state = res.by_id(STATE_ID)
    assert state["result"] is True and f"doctor: {HEALTHY}" in state["comment"]
    assert state["__run_num__"] == max(s["__run_num__"] for s in res.states.values())
    assert res.changed == []
    # without the flag the doctor is not part of `mas`
    plain = dep.minion.apply(dep.pillar)
    assert plain.returncode == 0
    assert STATE_ID not in {s["__id__"] for s in plain.states.values()}
