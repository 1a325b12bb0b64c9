"""A populated Synapse on PostgreSQL for the syn2mas integration tests, run like a system service.

The Synapse is built through real Synapse 1.163 (its own schema, its admin
API): an admin with an email (``alice``), a user with an email and an OIDC link
to provider ``oidc-keycloak`` (``bob``; Synapse's admin API writes the
``user_external_ids`` row, no IdP needed), a user with a phone number
(``carol``, medium ``msisdn``), a deactivated user (``dave``) and a plain user
(``erin``), each with a device and an access token. ``password_config.pepper``
is set. The OIDC provider itself lives in a separate pre-MAS config fragment
handed to syn2mas with ``mas:syn2mas:synapse_config_files`` (the pre-MAS Synapse configuration).

systemd is not PID 1 here, so the formula's ``service.stop``/``start``/
``restart`` of ``mas:synapse:service`` reach this Synapse through the test
``service`` provider in ``salt_harness/harness_service.py``; the tests drive
it through the very same functions (:class:`SynapseService`).
"""

import importlib.util
import json
import stat
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from psycopg import sql

from harness import mas as mas_target
from harness.synapse import SYNAPSE_DB_PASSWORD, SYNAPSE_DB_ROLE
from harness.util import free_port
from pillars import PILLAR_SECRETS, deep_update, wired_pillar
from saltrun import REPO_ROOT, SaltMinion

SERVICE = "synapse-harness"
PEPPER = "syn2mas-formula-pepper-4711"
PASSWORD = "correct horse battery staple"
PROVIDER_ID = "01J9SYN2MASF0RMV1A000000PR"
SYNAPSE_IDP_ID = "oidc-keycloak"
ISSUER = "https://keycloak.invalid/realms/matrix"
SUBJECT = "kc-subject-bob"
OIDC_SECRET = "Synapse-Oidc-Client-Secret-31"
USERS = ("alice", "bob", "carol", "dave", "erin")
MIGRATED = ("users", "user_passwords", "user_emails", "upstream_oauth_links", "compat_sessions")
DROPIN = "matrix-authentication-service.yaml"

_SERVICE_MODULE = Path(__file__).with_name("salt_harness") / "harness_service.py"


def _service_module():
    spec = importlib.util.spec_from_file_location("harness_service", _SERVICE_MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness_service = _service_module()


class SynapseService:
    """The harness Synapse as a service: the spec file the test minion's ``service`` provider reads."""

    def __init__(self, server, pg, root):
        self.server = server
        self.conninfo = pg.dsn(server.dbname)
        self.spec_path = root / "service.json"
        self.events_path = root / "events.log"
        self.snapshots = root / "snapshots"
        self._seen = 0
        self.spec = {
            "argv": [*_python_synapse(), *server.config_args()],
            "cwd": str(server.workdir),
            "url": f"{server.base_url}/_matrix/client/versions",
            "pidfile": str(root / "synapse.pid"),
            "log": str(root / "synapse-service.log"),
            "events": str(self.events_path),
            "snapshot": {"conninfo": self.conninfo, "dir": str(self.snapshots)},
            "fail": [],
        }
        self.write()

    def write(self, **changes):
        self.spec.update(changes)
        self.spec_path.write_text(json.dumps(self.spec))

    def start(self):
        assert harness_service.control(self.spec, "start", "test"), "the harness Synapse did not start"

    def stop(self):
        assert harness_service.control(self.spec, "stop", "test")

    @property
    def running(self):
        return harness_service.running(self.spec) and harness_service._answers(self.spec["url"])

    def _lines(self):
        return self.events_path.read_text().splitlines() if self.events_path.exists() else []

    def mark(self):
        """Forget the events so far: :meth:`events` lists the later ones."""
        self._seen = len(self._lines())

    def events(self):
        """``[(action, name, ok)]`` of the formula's calls since :meth:`mark` (the tests' own are named ``test``)."""
        return [tuple(line.split()) for line in self._lines()[self._seen :] if line.split()[1] != "test"]

    def checksum(self):
        return harness_service.checksum(self.conninfo)

    def settle(self, timeout=300):
        """Wait until Synapse has no background update left (it writes its own tables until then)."""
        import psycopg  # pylint: disable=import-outside-toplevel

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with psycopg.connect(self.conninfo, autocommit=True) as conn:
                if not conn.execute("SELECT count(*) FROM background_updates").fetchone()[0]:
                    return
            time.sleep(1)
        raise AssertionError("Synapse's background updates did not finish")

    def window(self):
        """The checksums taken after the formula's last stop and before the next start (or None)."""
        files = sorted(self.snapshots.glob("*.json")) if self.snapshots.exists() else []
        stops = [f for f in files if f.name.endswith("after-stop.json")]
        if not stops:
            return None
        after = [f for f in files if f.name.endswith("before-start.json") and f.name > stops[-1].name]
        if not after:
            return None
        return json.loads(stops[-1].read_text()), json.loads(after[0].read_text())


def _python_synapse():
    import sys  # pylint: disable=import-outside-toplevel

    return [sys.executable, "-m", "synapse.app.homeserver"]


@dataclass
class World:
    """The populated Synapse, its service, the pre-MAS OIDC fragment and every secret to look for."""

    server: object
    service: SynapseService
    fragment: Path
    secrets: list
    tokens: dict


def oidc_fragment(path):
    """Write the pre-MAS Synapse config fragment with its OIDC provider (``keycloak``) to ``path``."""
    provider = {
        "idp_id": "keycloak",
        "idp_name": "Keycloak",
        "issuer": ISSUER,
        "client_id": "synapse",
        "client_secret": OIDC_SECRET,
        "scopes": ["openid"],
    }
    path.write_text(yaml.safe_dump({"oidc_providers": [provider]}))
    return path


def world_secrets(server):
    """Every secret of the world that must never reach an output: Synapse's, the fragment's, the pillar's."""
    secrets = [PEPPER, SYNAPSE_DB_PASSWORD, OIDC_SECRET, *PILLAR_SECRETS.values()]
    return secrets + [
        server.config[key] for key in ("registration_shared_secret", "macaroon_secret_key", "form_secret")
    ]


def world_fixture(label):
    """The module-scoped ``world`` fixture of a test file: built once under a directory named ``label``."""

    @pytest.fixture(scope="module")
    def world(synapse_factory, pg, tmp_path_factory):
        mas_target.require_double_contracts("mas/schema.sql", "mas/config.schema.json")
        built = build_world(synapse_factory, pg, tmp_path_factory.mktemp(label))
        yield built
        built.service.stop()

    return world


#: The first world built on a cluster, kept as a template database: later worlds are copies of it
#: (``CREATE DATABASE ... TEMPLATE``), so only the first waits for Synapse's background updates.
_TEMPLATES: dict[int, tuple[str, dict]] = {}


def build_world(synapse_factory, pg, root, **server):
    """Create, start and populate the Synapse (see the module docstring); later calls copy the first. ``server``:
    more of ``SynapseServer``'s arguments (e.g. ``host``, the address it listens on)."""
    # no pause between background update batches: a fresh database finishes them in seconds, not a minute
    extra_config = {
        "password_config": {"pepper": PEPPER},
        "background_updates": {"sleep_enabled": False, "background_update_duration_ms": 1000},
    }
    if id(pg) in _TEMPLATES:
        template, tokens = _TEMPLATES[id(pg)]
        dbname = f"synapse_world_{uuid.uuid4().hex[:8]}"
        pg.query(
            "postgres",
            sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
                sql.Identifier(dbname), sql.Identifier(template), sql.Identifier(SYNAPSE_DB_ROLE)
            ),
        )
        server = synapse_factory(database=pg, extra_config=extra_config, dbname=dbname, **server)
        service = SynapseService(server, pg, root)
        service.start()
    else:
        server = synapse_factory(database=pg, extra_config=extra_config, **server)
        service = SynapseService(server, pg, root)
        service.start()
        tokens = {}
        for name in USERS:
            tokens[name] = server.register_user(name, PASSWORD, admin=name == "alice")
        admin = tokens["alice"]["access_token"]
        server.add_threepid(admin, tokens["alice"]["user_id"], "email", "alice@example.org")
        server.add_threepid(admin, tokens["bob"]["user_id"], "email", "bob@example.org")
        server.add_external_id(admin, tokens["bob"]["user_id"], SYNAPSE_IDP_ID, SUBJECT)
        server.add_threepid(admin, tokens["carol"]["user_id"], "msisdn", "15555550123")
        deactivate = server.request(
            "POST", "/_synapse/admin/v1/deactivate/" + tokens["dave"]["user_id"], token=admin, json={"erase": False}
        )
        assert deactivate.status_code == 200, deactivate.text
        service.settle()
        service.stop()  # a template database has no session
        template = f"{server.dbname}_template"
        pg.query(
            "postgres",
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(template), sql.Identifier(server.dbname)),
        )
        _TEMPLATES[id(pg)] = (template, tokens)
        service.start()
    fragment = oidc_fragment(root / "pre-mas-oidc.yaml")
    secrets = world_secrets(server)
    return World(server, service, fragment, secrets, tokens)


def service_minion(root, extmods, service):
    """A test minion whose ``service.*`` functions drive ``service`` (``harness_service``)."""
    minion = SaltMinion(root, REPO_ROOT, extmods=extmods)
    config_path = minion.confdir / "minion"
    config = yaml.safe_load(config_path.read_text())
    config.update(
        module_dirs=[str(_SERVICE_MODULE.parent)],
        providers={"service": "harness_service"},
        harness_services={SERVICE: str(service.spec_path)},
    )
    config_path.write_text(yaml.safe_dump(config))
    return minion


@dataclass
class Deployment:
    """The formula applied into ``root`` with its own MAS database, next to the world's Synapse."""

    minion: SaltMinion
    pillar: dict
    pg: object
    dbname: str
    root: Path
    world: World
    outputs: list = field(default_factory=list)

    def call(self, *args, **pillar):
        """``salt-call <args>`` with the deployment's pillar deep-updated by ``pillar``."""
        self.minion.set_pillar({"mas": deep_update(self.pillar, pillar)})
        res = self.minion.run(*args)
        self.outputs.append(res.output)
        return res

    def state(self, sls="mas.syn2mas", *extra, **pillar):
        """``state.apply <sls>``; returns the salt result."""
        res = self.call("state.apply", sls, "--retcode-passthrough", *extra, **pillar)
        assert res.data, res.output
        return res

    def migrated(self, *extra, **pillar):
        """``state.apply mas.syn2mas``: (salt result, the one state's return)."""
        res = self.state("mas.syn2mas", *extra, **pillar)
        return res, res.by_id("mas-syn2mas-migrate-mas_syn2mas-migrated")

    @property
    def marker_path(self):
        return self.root / "srv" / "formula" / "syn2mas.json"

    def marker(self):
        return json.loads(self.marker_path.read_text()) if self.marker_path.exists() else None

    @property
    def dropin(self):
        return self.world.server.conf_d / DROPIN

    def count(self, table):
        return self.pg.query(self.dbname, f"SELECT count(*) FROM {table}")[0][0]

    def recreate_database(self):
        self.pg.drop_database(self.dbname)
        self.pg.create_database(self.dbname)

    def assert_no_secret(self):
        texts = list(self.outputs)
        log = self.root / "minion.log"
        if log.exists():
            texts.append(log.read_text(errors="replace"))
        if self.marker_path.exists():
            texts.append(self.marker_path.read_text())
        for secret in self.world.secrets:
            for text in texts:
                assert secret not in text, "a secret leaked into an output"
        if self.marker_path.exists():
            assert stat.S_IMODE(self.marker_path.stat().st_mode) == 0o600


def migration_pillar(root, pg, dbname, world):
    """The formula's pillar for a migration from the world's Synapse into ``dbname``: migration in
    progress, the double (or real MAS) as MAS, an OIDC provider mapping Synapse's ``oidc-keycloak``,
    Synapse stopped through its service for the migration."""
    server = world.server
    provider = {
        "id": PROVIDER_ID,
        "synapse_idp_id": SYNAPSE_IDP_ID,
        "issuer": ISSUER,
        "client_id": "mas",
        "client_secret": PILLAR_SECRETS["client_secret"],
        "token_endpoint_auth_method": "client_secret_post",
        "scope": "openid",
    }
    return deep_update(
        wired_pillar(root, pg, dbname, server, free_port(), free_port()),
        {
            "migration_in_progress": True,
            "base_path": str(root / "srv"),
            "secrets": {key: PILLAR_SECRETS[key] for key in ("encryption", "homeserver_secret")},
            "synapse": {"mas_endpoint": None, "service": SERVICE},
            "upstream_oauth2_providers": [provider],
            "proxy": {"type": "none"},
            "syn2mas": {
                "stop_services": True,
                "stop_timeout": 60,
                "backup_dir": str(root / "backups"),
                "synapse_config_files": [str(server.config_path), str(world.fragment)],
            },
        },
    )


def deploy(world, pg, extmods, root, dbname, **overrides):
    """Apply ``mas`` (migration in progress, the double as MAS) into ``root`` with an empty MAS database."""
    pg.drop_database(dbname)
    pg.create_database(dbname)  # empty: syn2mas itself creates MAS's schema
    pillar = deep_update(migration_pillar(root, pg, dbname, world), overrides)
    minion = service_minion(root, extmods, world.service)
    dep = Deployment(minion, pillar, pg, dbname, root, world)
    res = dep.state("mas")
    assert res.returncode == 0, res.output
    assert not dep.dropin.exists()
    return dep


#: Test scaffolding, never shipped: the ``mas:binary:path`` of a deployment whose faults a test injects (:class:`Faulty`).
#: It execs the real mas-cli (or the double); armed (a file naming the fault), it injects that fault into the next
#: real ``syn2mas migrate`` only, then disarms itself.
FAULT_WRAPPER = """#!/bin/sh
armed={dir}/armed
case " $* " in *" syn2mas "*" migrate "*)
  case " $* " in *" --dry-run "*) ;; *)
    if [ -f "$armed" ]; then
      fault=$(cat "$armed")
      rm -f "$armed"
      case "$fault" in
        kill)
          # killed by SIGKILL once it waits for Synapse's snapshot (real MAS: after its first commit)
          {python} {dir}/fault.py kill $$ >>{dir}/fault.log 2>&1 &
          n=0
          while [ ! -f {dir}/ready ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n + 1)); done
          ;;
        nologin)
          # Synapse's database refuses syn2mas's login (role NOLOGIN) while mas-cli runs
          {python} {dir}/fault.py nologin >>{dir}/fault.log 2>&1
          {cli} "$@"
          rc=$?
          {python} {dir}/fault.py login >>{dir}/fault.log 2>&1
          exit $rc
          ;;
        unverified)
          # the migration succeeds, then a row of MAS differs from Synapse's: alice is no admin there any more
          {cli} "$@"
          rc=$?
          if [ $rc -eq 0 ]; then {python} {dir}/fault.py unverified >>{dir}/fault.log 2>&1; fi
          exit $rc
          ;;
      esac
    fi ;;
  esac ;;
esac
exec {cli} "$@"
"""

#: The wrapper's helper: ``kill <pid>`` holds a SERIALIZABLE transaction open on Synapse's database, so that
#: syn2mas's ``SERIALIZABLE READ ONLY DEFERRABLE`` read waits for a safe snapshot, and SIGKILLs mas-cli once
#: it waits; ``nologin``/``login`` flip Synapse's role; ``unverified`` takes alice's admin flag in MAS away.
FAULT_HELPER = """import os, signal, sys, time
import psycopg

SYNAPSE, ROLE, READY, MAS = {synapse!r}, {role!r}, {ready!r}, {mas!r}
if sys.argv[1] == "kill":
    pid = int(sys.argv[2])
    with psycopg.connect(SYNAPSE) as held, psycopg.connect(SYNAPSE, autocommit=True) as watch:
        held.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        held.execute("SELECT 1")
        open(READY, "w").close()
        deadline = time.monotonic() + 120
        query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SafeSnapshot'"
        while not watch.execute(query).fetchone()[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        held.rollback()
elif sys.argv[1] == "unverified":
    with psycopg.connect(MAS, autocommit=True) as conn:
        conn.execute("UPDATE users SET can_request_admin = false WHERE username = 'alice'")
else:
    with psycopg.connect(SYNAPSE, dbname="postgres", autocommit=True) as conn:
        conn.execute(f'ALTER ROLE "{{ROLE}}" {{"LOGIN" if sys.argv[1] == "login" else "NOLOGIN"}}')
"""


class Faulty:
    """The fault wrapper (:data:`FAULT_WRAPPER`) in ``directory``, and its switch: ``wrapper`` is the path to give as
    ``mas:binary:path``, :meth:`helper` writes its helper once the databases are known, :meth:`arm` arms a fault
    (``kill``, ``nologin``, ``unverified``) for the next real ``syn2mas migrate``."""

    def __init__(self, directory):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.wrapper = directory / "mas-cli"
        values = {"dir": directory, "python": sys.executable, "cli": mas_target.cli()}
        self.wrapper.write_text(FAULT_WRAPPER.format(**values))
        self.wrapper.chmod(0o755)

    def helper(self, synapse, role=SYNAPSE_DB_ROLE, mas=None):
        """Write the helper: ``synapse`` and ``mas`` are the databases' superuser conninfos, ``role`` Synapse's."""
        values = {"synapse": synapse, "role": role, "ready": str(self.directory / "ready"), "mas": mas}
        (self.directory / "fault.py").write_text(FAULT_HELPER.format(**values))

    def arm(self, fault):
        (self.directory / "ready").unlink(missing_ok=True)
        (self.directory / "armed").write_text(fault)

    @property
    def armed(self):
        return (self.directory / "armed").exists()
