"""Several hosts (issue #19): one salt-master and three salt-minion daemons, each with its own root directory and
its own address on the loopback range, and `salt-run state.orchestrate mas.orch.deploy` deploying across them.

* ``mas-db`` (roles ``mas`` and ``database``): the real MAS and PostgreSQL on 127.0.0.2;
* ``synapse`` (role ``synapse``): a real Synapse on 127.0.0.3, restarted by the formula (a stand-in ``service`` on
  the minion's ``PATH`` stops and starts its process);
* ``proxy`` (role ``proxy``): a real nginx on 127.0.0.4, tested (``nginx -t``) and reloaded by the formula the same way.

Nothing listens on 127.0.0.1: an address the formula assumed (``localhost``) would reach nothing. The master serves
the MAS<->Synapse shared secret and the database password through the formula's ext_pillar (``mas_secrets``), and
Synapse's registration secret is given in pillar targeted to the MAS minion. Each minion gets only its files, the
drop-in points at the MAS minion's address, each secret reaches exactly the minions that need it (their pillar and
their disk), the doctor passes at the end of the run, and a second run changes nothing.

MAS runs under ``mas:service:manage: false`` (systemd is not PID 1 here): the test is its supervisor, starting it
once the MAS minion's config.yaml is written, as an operator's own supervisor would.
"""

import contextlib
import json
import os
import secrets
import shutil
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from harness import mas as mas_target
from harness import service_standin
from harness.postgres import PostgresCluster
from harness.synapse import SynapseServer, generate_config
from harness.util import free_port, require_root, tail, unavailable
from logins_world import unit_environment
from mas_demo import link_formula
from mas_double import run_server
from pillars import TEST_RATE_LIMITS, deep_update

pytestmark = pytest.mark.integration

HOSTS = {"mas-db": "127.0.0.2", "synapse": "127.0.0.3", "proxy": "127.0.0.4"}
ROLES = {"mas-db": ["mas", "database"], "synapse": ["synapse"], "proxy": ["proxy"]}
SYNAPSE_SERVICE = "hosts-synapse"
NGINX_SERVICE = "hosts-nginx"
SERVICE_HARNESS = Path(__file__).resolve().parent / "salt_harness" / "harness_service.py"


@pytest.fixture(scope="session")
def salt_factories_config():
    """Short paths: the daemons' unix sockets must fit in sun_path."""
    root = tempfile.mkdtemp(prefix="mas-sh-")
    yield {"root_dir": root}
    shutil.rmtree(root, ignore_errors=True)


def _control():
    sys.path.insert(0, str(SERVICE_HARNESS.parent))
    try:
        import harness_service  # pylint: disable=import-outside-toplevel
    finally:
        sys.path.pop(0)
    return harness_service.control


class Supervisor:
    """The MAS minion's own supervisor (mas:service:manage is false): starts MAS once its config.yaml is there (and
    ``ready()`` says so), with the environment of the formula's ``unit`` when given (``mas:ca_bundle``)."""

    def __init__(self, config, log, ready=None, unit=None):
        self.config, self.log, self.mas, self.error = config, log, None, None
        self.ready, self.unit = ready or (lambda: True), unit
        self._thread = threading.Thread(target=self._watch, name="mas-supervisor", daemon=True)
        self._stop = threading.Event()
        self._thread.start()

    def _watch(self):
        while not self._stop.is_set() and not (self.config.exists() and self.ready()):
            time.sleep(0.1)
        if self._stop.is_set():
            return
        try:
            env = unit_environment(self.unit) if self.unit else None
            self.mas = run_server([self.config], env=env, log_path=self.log, wait=True, timeout=60)
        except (RuntimeError, TimeoutError) as exc:  # MAS did not come up: the test says why
            self.error = exc

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=70)
        if self.mas is not None:
            self.mas.stop()


class World:
    """The three hosts, their services and the master."""

    def __init__(self, root):
        self.root = root
        self.disk = {name: root / name for name in HOSTS}
        for disk in self.disk.values():
            disk.mkdir(parents=True)
        self.services = []

    def start_service(self, name, argv, url, cwd, bin_dir):
        spec = {
            "argv": argv,
            "cwd": str(cwd),
            "url": url,
            "pidfile": str(bin_dir / f"{name}.pid"),
            "log": str(bin_dir / f"{name}.log"),
            "events": str(bin_dir / f"{name}.events"),
            "fail": [],
        }
        spec_path = bin_dir / f"{name}.json"
        bin_dir.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(json.dumps(spec))
        self.services.append(spec)  # stopped at the end, also when it did not come up
        assert _control()(spec, "start", "test"), f"{name} did not start: {tail(Path(spec['log']))}"
        return spec_path, spec

    def stop(self):
        for spec in reversed(self.services):
            _control()(spec, "stop", "test")


def in_parallel(calls):
    """Call each of ``calls`` in a thread of its own (the daemons start and stop in seconds each); raise the first
    error."""
    errors = []

    def call(function):
        try:
            function()
        except Exception as exc:  # raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(function,)) for function in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def events(spec):
    path = Path(spec["events"])
    lines = path.read_text().splitlines() if path.exists() else []
    return [tuple(line.split()) for line in lines if line.split()[1] != "test"]


def files_under(path, skip=()):
    """The regular files under ``path`` (relative names), leaving out the directories in ``skip``."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) not in skip]
        found.update(str(Path(dirpath, f).relative_to(path)) for f in filenames)
    return found


def holding(path, secret):
    """The files under ``path`` (links not followed) that hold ``secret``."""
    needle, found = secret.encode(), []
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            file = Path(dirpath, name)
            if file.is_file() and not file.is_symlink() and needle in file.read_bytes():
                found.append(str(file))
    return found


def pillars(world):
    """The pillar SLS files on the master: what every minion gets, and what each gets of its own."""
    disk, ports = world.disk, world.ports
    mas_host = HOSTS["mas-db"]
    common = {
        "config": TEST_RATE_LIMITS,
        "enabled": True,
        "server_name": "example.com",
        "runtime": "binary",
        "binary": mas_target.binary_pillar(world.root),
        "user": "root",
        "group": "root",
        "service": {"manage": False},
        "http": {"web_bind": f"{mas_host}:{ports['web']}", "internal_bind": f"{mas_host}:{ports['internal']}"},
        "database": {
            "manage": True,
            "host": mas_host,
            "port": world.pg.port,
            "name": "mas",
            "user": "mas",
            "admin": {"user": "postgres", "host": mas_host, "port": world.pg.port, "runas": ""},
        },
        "synapse": {
            "endpoint": world.synapse.base_url + "/",
            "mas_endpoint": f"http://{mas_host}:{ports['web']}/auth/",
            "user": "root",
            "group": "root",
            "service": world.synapse_service,
            "restart": True,
        },
        "proxy": {"nginx": {"mas_upstream": f"http://{mas_host}:{ports['web']}", "service": NGINX_SERVICE}},
        "doctor": {"proxy_url": world.nginx_url, "wait": 90, "timeout": 10},
    }
    own = {
        name: {
            "roles": ROLES[name],
            "base_path": str(disk[name] / "mas"),
            "service": {"unit_dir": str(disk[name] / "systemd")},
            "synapse": {
                "config_files": [str(disk[name] / "no-synapse" / "homeserver.yaml")],
                "config_dir": str(disk[name] / "no-synapse" / "conf.d"),
            },
            "proxy": {
                "nginx": {
                    "snippet_path": str(disk[name] / "nginx" / "snippets" / "matrix-authentication-service.conf"),
                    "public_snippet_path": str(disk[name] / "nginx" / "public" / "matrix-authentication-service.conf"),
                }
            },
        }
        for name in HOSTS
    }
    own["synapse"]["synapse"] = {
        "config_files": [str(world.synapse.config_path)],
        "config_dir": str(world.synapse.conf_d),
    }
    # Synapse's own registration secret, for the users while Synapse is authoritative: to the MAS minion only
    own["mas-db"]["synapse"]["registration_shared_secret"] = world.synapse.registration_shared_secret
    # MAS and its database are on one minion: the password is no secret of two hosts; given to that minion only
    own["mas-db"]["database"] = {"password": world.database_password}
    extra = world.extra_pillar(world) if callable(world.extra_pillar) else world.extra_pillar
    common = deep_update(common, extra.get("common", {}))
    own = {name: deep_update(own[name], extra.get(name, {})) for name in HOSTS}
    files = {"common": {"mas": common}, **{name.replace("-", "_"): {"mas": own[name]} for name in HOSTS}}
    top = {"base": {"*": ["common"], **{name: [name.replace("-", "_")] for name in HOSTS}}}
    for name, data in files.items():
        (world.pillar_dir / f"{name}.sls").write_text(yaml.safe_dump(data))
    (world.pillar_dir / "top.sls").write_text(yaml.safe_dump(top))


@pytest.fixture(scope="module")
def world(salt_factories):
    require_real_mas()
    with contextlib.ExitStack() as cleanup:  # whatever started is stopped, also when a step fails
        w = hosts(salt_factories, cleanup)
        w.supervisor = Supervisor(w.disk["mas-db"] / "mas" / "config" / "config.yaml", w.root / "mas.log")
        cleanup.callback(w.supervisor.stop)
        before = time.monotonic()
        w.first = w.run.run("state.orchestrate", "mas.orch.deploy")
        w.timings["first run"] = time.monotonic() - before
        yield w


def require_real_mas():
    require_root()
    if not mas_target.real():
        unavailable("the deployment on several hosts runs the real MAS (MAS_REAL_CLI, MAS_REAL_SHARE)")


def plain_synapse(w):
    """A new Synapse on the Synapse minion's address, run as a service the formula restarts: ``(server, spec file,
    spec, service name)``."""
    synapse = SynapseServer(
        w.disk["synapse"] / "matrix-synapse",
        template_dir=generate_config(w.root / "synapse-template", "example.com").parent,
        host=HOSTS["synapse"],
    )
    spec_path, spec = w.start_service(
        SYNAPSE_SERVICE,
        [sys.executable, "-m", "synapse.app.homeserver", *synapse.config_args()],
        f"{synapse.base_url}/_matrix/client/versions",
        synapse.workdir,
        w.disk["synapse"] / "bin",
    )
    return synapse, spec_path, spec, SYNAPSE_SERVICE


def hosts(salt_factories, cleanup, synapse=plain_synapse, extra_pillar=None, master_overrides=None, tls=None):
    """The three hosts, their services, the master and its minions, synced, the pillar written; nothing applied.

    ``synapse(world)`` starts the Synapse the Synapse minion holds (:func:`plain_synapse` by default);
    ``extra_pillar`` (``{"common"|<minion>: {...}}``, or a function of the world giving it) is merged into the
    pillar files; ``master_overrides`` into the master's configuration. With ``tls`` (a ``harness.testca``
    certificate), the proxy's nginx also serves the same locations over TLS, as a public server block does, at
    ``world.public_url`` (for a browser's login; the doctor keeps the plain one)."""
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="mas-hosts-"))
    cleanup.callback(shutil.rmtree, root, ignore_errors=True)
    w = World(root)
    cleanup.callback(w.stop)
    w.timings = {}
    w.extra_pillar = extra_pillar or {}
    w.ports = {"web": free_port(HOSTS["mas-db"]), "internal": free_port(HOSTS["mas-db"])}
    w.database_password = secrets.token_urlsafe(24)
    # PostgreSQL on the MAS minion's address; MAS's role must log in with its password (the served one)
    w.pg = PostgresCluster(root / "pg", host=HOSTS["mas-db"])
    cleanup.callback(w.pg.stop)
    w.pg.start()
    w.pg.require_password("mas")
    # Synapse on its own address, run as a service the formula restarts
    synapse_bin = w.disk["synapse"] / "bin"
    w.synapse, synapse_spec_path, w.synapse_spec, w.synapse_service = synapse(w)
    synapse_env = service_standin.install(synapse_bin, {w.synapse_service: synapse_spec_path})
    # nginx on the proxy's address: the formula's snippets, then Synapse; `nginx -t` and the reload are its own
    from harness.nginx import NginxServer  # pylint: disable=import-outside-toplevel

    # the README's server block: the formula's snippet (none yet: a pattern), then /_matrix and /_synapse/client
    synapse_location = w.disk["proxy"] / "nginx-run" / "synapse-location.conf"
    synapse_location.parent.mkdir(parents=True)
    synapse_location.write_text(
        "location ~ ^(/_matrix|/_synapse/client) {\n"
        f"    proxy_pass {w.synapse.base_url};\n"
        "    proxy_set_header Host $host;\n"
        "    proxy_set_header X-Forwarded-For $remote_addr;\n"
        "}\n"
    )
    locations = [w.disk["proxy"] / "nginx" / "snippets" / "*.conf", synapse_location]
    public_server = []
    if tls is not None:
        port = free_port(HOSTS["proxy"])
        w.public_url = f"https://{HOSTS['proxy']}:{port}"
        public_server = [w.disk["proxy"] / "nginx-run" / "public-server.conf"]
        public_server[0].write_text(
            "server {\n"
            f"    listen {HOSTS['proxy']}:{port} ssl;\n"
            f"    ssl_certificate {tls.cert};\n"
            f"    ssl_certificate_key {tls.key};\n"
            "    server_name _;\n" + "".join(f"    include {path};\n" for path in locations) + "}\n"
        )
    nginx = NginxServer(
        w.disk["proxy"] / "nginx-run",
        synapse_upstream=None,
        include_files=locations,
        http_include_files=public_server,
        host=HOSTS["proxy"],
    )
    w.nginx_url = nginx.base_url
    proxy_bin = w.disk["proxy"] / "bin"
    cli = nginx._cli()  # pylint: disable=protected-access
    nginx_spec_path, w.nginx_spec = w.start_service(
        NGINX_SERVICE, [*cli, "-g", "daemon off;"], nginx.base_url + "/", nginx.workdir, proxy_bin
    )
    proxy_env = service_standin.install(proxy_bin, {NGINX_SERVICE: nginx_spec_path})
    (proxy_bin / "nginx").write_text("#!/bin/sh\nexec " + " ".join(cli) + ' "$@"\n')
    (proxy_bin / "nginx").chmod(0o755)
    w.timings["services"] = time.monotonic() - started

    # the master serves the formula and the pillar, and runs the formula's ext_pillar
    w.pillar_dir = root / "pillar"
    w.pillar_dir.mkdir()
    w.store = root / "master-secrets"
    formula = link_formula(root / "formula")
    master = salt_factories.salt_master_daemon(
        "hosts-master",
        overrides={
            "interface": "127.0.0.1",
            "file_roots": {"base": [str(formula)]},
            "pillar_roots": {"base": [str(w.pillar_dir)]},
            "ext_pillar": [{"mas_secrets": {"store": str(w.store)}}],
            **(master_overrides or {}),
        },
    )
    envs = {"mas-db": {}, "synapse": synapse_env, "proxy": proxy_env}
    # a grain naming the roles too: the second run targets by grains
    w.minions = {
        name: master.salt_minion_daemon(name, overrides={"master": "127.0.0.1", "grains": {"matrix": ROLES[name]}})
        for name in HOSTS
    }
    for name, minion in w.minions.items():
        # the stand-in `service` (and `nginx -t`) first on its PATH; a dict of its own (the factories share one)
        minion.environ = dict(minion.environ, **envs[name])
    pillars(w)
    w.master = master
    w.supervisor = None
    cleanup.enter_context(master.started())
    cleanup.callback(in_parallel, [minion.terminate for minion in w.minions.values()])
    in_parallel([minion.start for minion in w.minions.values()])
    w.timings["daemons"] = time.monotonic() - started - w.timings["services"]
    salt = master.salt_cli(timeout=300)
    w.salt, w.run = salt, master.salt_run_cli(timeout=600)
    before = time.monotonic()
    # the operator's sync: the master's (ext_pillar and helpers), then the minions'
    sync = w.run.run("saltutil.sync_all")
    assert sync.returncode == 0, sync
    assert "pillar.mas_secrets" in sync.data["pillar"] and "utils.mas_formula" in str(sync.data["utils"])
    for call in (["saltutil.sync_all"], ["saltutil.refresh_pillar", "wait=True"]):
        res = salt.run(*call, minion_tgt="*")
        assert res.returncode == 0 and sorted(res.data) == sorted(HOSTS), res
    w.timings["sync"] = time.monotonic() - before
    return w


def failures(res):
    """What failed in an orchestration, as ``step: minion: state id: comment`` lines (or its raw output)."""
    if not isinstance(res.data, dict):
        return str(res)
    return "\n".join(_failures(steps(res)))


def _failures(ran):
    lines = []
    for step, ret in ran.items():
        if ret["result"] is not True:
            lines.append(f"{step}: {ret['comment']}")
        if "return" in (ret.get("changes") or {}):  # a nested orchestration
            lines += [f"{step}: {line}" for line in _failures(nested_steps(ret))]
            continue
        for minion, states in (ret.get("changes") or {}).get("ret", {}).items():
            if not isinstance(states, dict):
                lines.append(f"{step}: {minion}: {states}")
                continue
            for state in states.values():
                if isinstance(state, dict) and state.get("result") is False:
                    lines.append(f"{step}: {minion}: {state['__id__']}: {state['comment']}")
    return lines


def steps(res):
    """The orchestration's steps by ID, in the order they ran."""
    return _ordered(res.data.get("data", res.data))


def nested_steps(step):
    """The steps of a nested orchestration (a ``salt.runner state.orchestrate`` step), by ID."""
    returned = step["changes"]["return"]
    data = returned.get("data", returned) if isinstance(returned, dict) else returned
    return _ordered(data)


def _ordered(data):
    ((_, states),) = data.items()
    if not isinstance(states, dict):  # the orchestration did not render: its errors
        raise AssertionError(states)
    ordered = sorted(states.values(), key=lambda s: s["__run_num__"])
    return {s["__id__"]: s for s in ordered}


def changed_minions(step):
    """The minions a step changed something on (a nested orchestration's: all of its steps')."""
    if "return" in (step.get("changes") or {}):
        return sorted({m for s in nested_steps(step).values() for m in changed_minions(s)})
    return sorted(step["changes"].get("ret", step["changes"]))


def test_deploy_applies_the_roles_in_dependency_order(world):
    res = world.first
    assert res.returncode == 0, "\n".join(
        [
            failures(res),
            f"--- Synapse: {events(world.synapse_spec)}",
            tail(Path(world.synapse_spec["log"]), 30),
            f"--- nginx: {events(world.nginx_spec)}",
            tail(Path(world.nginx_spec["log"]), 10),
            f"--- mas.log (supervisor: {world.supervisor.error}) ---",
            tail(world.root / "mas.log", 10),
        ]
    )
    ran = steps(res)
    assert list(ran) == [
        "mas-orch-deploy-salt-state-database",
        "mas-orch-deploy-salt-state-mas",
        "mas-orch-deploy-salt-runner-synapse",
        "mas-orch-deploy-salt-state-proxy",
        "mas-orch-deploy-salt-state-doctor",
    ]
    assert all(s["result"] is True for s in ran.values())
    # each role on its minions only; Synapse's side is mas.orch.delegate, nested: mas.synapse on the Synapse minion
    # with the MAS minion's phase (none recorded: a new homeserver), then the MAS minion's record (nothing to record)
    changed = {step.rsplit("-", 1)[1]: changed_minions(s) for step, s in ran.items()}
    assert changed["database"] == ["mas-db"] and changed["mas"] == ["mas-db"]
    assert changed["synapse"] == ["synapse"] and changed["proxy"] == ["proxy"]
    delegation = nested_steps(ran["mas-orch-deploy-salt-runner-synapse"])
    assert list(delegation) == ["mas-orch-delegate-salt-state-synapse", "mas-orch-delegate-salt-state-delegation"]
    guard = delegation["mas-orch-delegate-salt-state-synapse"]["changes"]["ret"]["synapse"]
    guard = next(s for s in guard.values() if s["__id__"] == "mas-synapse-file-mas_syn2mas-safe_to_delegate")
    assert guard["result"] is True and "no Synapse user to lock out" in guard["comment"], guard
    # the formula restarted Synapse and reloaded nginx, through their services on their own minions
    assert events(world.synapse_spec) == [("restart", SYNAPSE_SERVICE, "ok")]
    assert events(world.nginx_spec) == [("restart", NGINX_SERVICE, "ok")]
    print("timings:", {k: round(v, 1) for k, v in world.timings.items()})


def test_each_minion_gets_only_its_files(world):
    disk = world.disk
    mas_files = files_under(disk["mas-db"])
    for wanted in (
        "mas/config/config.yaml",
        "mas/config/secrets/homeserver_secret",
        "mas/config/secrets/database_password",
        "mas/config/keys/rsa.pem",
        "mas/bin/mas-cli",
        "mas/bin/register-user",
        "systemd/matrix-authentication-service.service",
    ):
        assert wanted in mas_files, sorted(mas_files)
    assert not any(f.startswith(("nginx/", "no-synapse/", "mas/synapse/")) for f in mas_files), sorted(mas_files)
    synapse_files = files_under(disk["synapse"], skip={disk["synapse"] / "bin"})
    synapse_own = {f for f in synapse_files if not f.startswith("matrix-synapse/") or "/conf.d/" in f}
    assert synapse_own == {
        "matrix-synapse/conf.d/matrix-authentication-service.yaml",
        "mas/synapse/homeserver_secret",
        # the formula's record on that minion: which secret files it wrote (the syn2mas phase is the MAS minion's)
        "mas/formula/secrets.json",
    }, sorted(synapse_files)
    proxy_files = files_under(disk["proxy"], skip={disk["proxy"] / "bin", disk["proxy"] / "nginx-run"})
    assert proxy_files == {"nginx/snippets/matrix-authentication-service.conf"}
    assert not (disk["proxy"] / "mas").exists() and not (disk["synapse"] / "mas" / "config").exists()


def test_the_dropin_points_at_the_mas_minion(world):
    dropin = world.synapse.conf_d / "matrix-authentication-service.yaml"
    section = yaml.safe_load(dropin.read_text())["matrix_authentication_service"]
    assert section["endpoint"] == f"http://{HOSTS['mas-db']}:{world.ports['web']}/auth/"
    assert section["secret_path"] == str(world.disk["synapse"] / "mas" / "synapse" / "homeserver_secret")
    # and Synapse, restarted by the formula, delegates to MAS there: the doctor's checks from the MAS minion
    res = world.salt.run("mas_doctor.run", minion_tgt="mas-db")
    checks = {check["name"]: check for check in res.data["checks"]}
    for name in ("synapse_reaches_mas", "shared_secret", "compat_login_route", "compat_routes", "mas_health"):
        assert checks[name]["status"] == "ok", checks[name]
    assert checks["dropin_present"]["status"] == "skipped" and "another minion" in checks["dropin_present"]["message"]
    # a login through the proxy reaches MAS (the compatibility layer on 127.0.0.4)
    flows = requests.get(world.nginx_url + "/_matrix/client/v3/login", timeout=10).json()["flows"]
    assert {"type": "m.login.password"} in flows or any(f["type"] == "m.login.sso" for f in flows)


def test_each_secret_reaches_exactly_the_minions_that_need_it(world):
    # the master generated the shared secret once, 0600 in a 0700 store; the database password is not a secret of
    # two minions here (MAS and its database share one): it comes from that minion's pillar
    store = world.store / "example.com"
    assert stat.S_IMODE(store.stat().st_mode) == 0o700 and stat.S_IMODE(world.store.stat().st_mode) == 0o700
    assert sorted(p.name for p in store.iterdir()) == ["homeserver_secret"]
    assert stat.S_IMODE((store / "homeserver_secret").stat().st_mode) == 0o600
    shared = (store / "homeserver_secret").read_text().strip()
    password = world.database_password
    registration = world.synapse.registration_shared_secret
    # MAS's and Synapse's copies of the shared secret are the served one; MAS logs in with the served password
    assert (world.disk["mas-db"] / "mas" / "config" / "secrets" / "homeserver_secret").read_text().strip() == shared
    assert (world.disk["synapse"] / "mas" / "synapse" / "homeserver_secret").read_text() == shared
    rows = world.pg.query("postgres", "SELECT rolpassword FROM pg_authid WHERE rolname = 'mas'")
    assert rows and rows[0][0].startswith("SCRAM-SHA-256$")
    wanted = {
        "shared secret": (shared, {"mas-db", "synapse"}, {"mas-db", "synapse"}),
        "database password": (password, {"mas-db"}, {"mas-db"}),
        # Synapse's own, in its config on the Synapse minion; in pillar of the MAS minion only
        "registration secret": (registration, {"mas-db"}, {"synapse"}),
    }
    # the disks first: `pillar.items unmask=True` below puts its answer in each minion's log (Salt logs job returns)
    for what, (value, _, on_disk) in wanted.items():
        for name, minion in world.minions.items():
            files = holding(world.disk[name], value) + holding(Path(minion.config["root_dir"]), value)
            assert bool(files) == (name in on_disk), f"{what} on the disk of {name}: {files}"
    items = world.salt.run("pillar.items", "unmask=True", minion_tgt="*")
    assert items.returncode == 0 and sorted(items.data) == sorted(HOSTS), items
    for name, pillar in items.data.items():
        for what, (value, in_pillar, _) in wanted.items():
            assert (value in json.dumps(pillar)) == (name in in_pillar), f"{what} in the pillar of {name}"
    # a request may add pillar (`pillar.items pillar=...`), which Salt merges before the ext_pillar runs: the proxy
    # claiming MAS's and Synapse's roles gets no secret (the master's own pillar tree decides what it is)
    claim = {"mas": {"enabled": True, "server_name": "example.com", "roles": ["mas"], "database": {"manage": True}}}
    asked = world.salt.run("pillar.items", f"pillar={json.dumps(claim)}", "unmask=True", minion_tgt="proxy")
    assert asked.returncode == 0 and asked.data["mas"]["roles"] == ["mas"], asked
    assert shared not in json.dumps(asked.data) and password not in json.dumps(asked.data)


def test_a_second_run_changes_nothing(world):
    """Targeted by grains this time (mas:orch:targets, given to the runner): the same minions, nothing changes."""
    targets = {role: f"G@matrix:{role}" for role in ("mas", "synapse", "database", "proxy")}
    before = time.monotonic()
    again = world.run.run(
        "state.orchestrate", "mas.orch.deploy", f"pillar={json.dumps({'mas': {'orch': {'targets': targets}}})}"
    )
    world.timings["second run"] = time.monotonic() - before
    assert again.returncode == 0, failures(again)
    ran = steps(again)
    ran.update(nested_steps(ran.pop("mas-orch-deploy-salt-runner-synapse")))
    assert {step: s["changes"] for step, s in ran.items()} == {step: {} for step in ran}
    assert all(s["result"] is True for s in ran.values())
    where = {
        "mas-orch-deploy-salt-state-database": "mas-db",
        "mas-orch-deploy-salt-state-mas": "mas-db",
        "mas-orch-delegate-salt-state-synapse": "synapse",
        "mas-orch-delegate-salt-state-delegation": "mas-db",
        "mas-orch-deploy-salt-state-proxy": "proxy",
        "mas-orch-deploy-salt-state-doctor": "mas-db",
    }
    for step, minion in where.items():
        assert f"No changes made to {minion}." in ran[step]["comment"], ran
    assert events(world.synapse_spec) == [("restart", SYNAPSE_SERVICE, "ok")]  # not restarted again
    assert events(world.nginx_spec) == [("restart", NGINX_SERVICE, "ok")]
    print("timings:", {k: round(v, 1) for k, v in world.timings.items()})
