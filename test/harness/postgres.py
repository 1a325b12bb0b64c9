"""A throw-away PostgreSQL cluster on a loopback port for integration tests.

The cluster lives entirely inside ``basedir`` (data directory, unix socket
directory, server log).  PostgreSQL refuses to run as root, so when the tests
run as root every server-side command (``initdb``, ``pg_ctl``) is run as the
``postgres`` system user through ``runuser`` and ``basedir`` is handed to that
user.  Clients (``psql``, psycopg) connect over TCP to ``127.0.0.1`` with
``trust`` authentication, so any role name works without a password.

Example::

    cluster = PostgresCluster(tmp_path / "pg")
    cluster.start()
    cluster.create_role("mas", password="secret")
    cluster.create_database("mas", owner="mas")
    cluster.load_mas_schema("mas", user="mas")
    with cluster.connect("mas") as conn:
        conn.execute("SELECT count(*) FROM users").fetchone()
    cluster.stop()
"""

from __future__ import annotations

import os
import pwd
import re
import stat
import subprocess
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from harness.util import LOOPBACK, CommandError, free_port, require_binary, require_upstream, run, unavailable

#: Where Debian installs the server binaries, one directory per major version.
DEBIAN_BINDIR_GLOB = "/usr/lib/postgresql/*/bin"

#: Settings appended to the cluster configuration: loopback only, and fast
#: (durability is irrelevant for a cluster that is thrown away).
_SERVER_SETTINGS = {
    "listen_addresses": LOOPBACK,
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}


class PostgresCluster:
    """A private PostgreSQL cluster rooted at ``basedir``.

    Attributes:
        basedir: the directory holding everything of the cluster.
        datadir: the data directory (``basedir/data``).
        sockdir: the unix socket directory (``basedir/sock``).
        logfile: the server log (``basedir/postgres.log``).
        bindir: the directory with ``initdb``, ``pg_ctl``, ``psql``.
        host: the address it listens on (default ``127.0.0.1``).
        port: the TCP port, chosen on the first :meth:`start` (``None`` before).
        superuser: the bootstrap superuser role, ``postgres``.
    """

    superuser = "postgres"
    host = LOOPBACK
    #: The OS user that runs the server when the tests run as root.
    os_user = "postgres"

    def __init__(self, basedir: Path, bindir: Path | None = None, host: str = LOOPBACK):
        #: the address it listens on (another loopback address stands for another host)
        self.host = host
        self.basedir = Path(basedir)
        self.datadir = self.basedir / "data"
        self.sockdir = self.basedir / "sock"
        self.logfile = self.basedir / "postgres.log"
        self.bindir = Path(bindir) if bindir else self.find_bindir()
        self.port: int | None = None

    # ------------------------------------------------------------------ binaries

    @classmethod
    def find_bindir(cls) -> Path:
        """Return the server binary directory of the highest installed PostgreSQL.

        Looks at ``/usr/lib/postgresql/<major>/bin`` (Debian), then at ``initdb``
        on ``$PATH``.  Skips the test (fails under ``CI=true``) when none is found.
        """
        versions = []
        for candidate in Path("/").glob(DEBIAN_BINDIR_GLOB.lstrip("/")):
            major = candidate.parent.name
            if re.fullmatch(r"\d+", major) and (candidate / "initdb").exists():
                versions.append((int(major), candidate))
        if versions:
            return max(versions)[1]
        return Path(require_binary("initdb")).parent

    def _bin(self, name: str) -> str:
        return str(self.bindir / name)

    # ------------------------------------------------------------ server control

    @staticmethod
    def _is_root() -> bool:
        return os.geteuid() == 0

    def _server_cmd(self, *args: str) -> list[str]:
        """Wrap a server-side command so that it runs as the ``postgres`` OS user."""
        if self._is_root():
            return ["runuser", "-u", self.os_user, "--", *args]
        return list(args)

    def _run_server_cmd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        self._prepare_dirs()
        return run(self._server_cmd(*args), check=check, cwd=self.basedir)

    def _prepare_dirs(self) -> None:
        """Create ``basedir`` and, as root, make it usable by the ``postgres`` user.

        As root this hands ``basedir`` to that user and adds search permission
        (``o+x``, never read) to root-owned ancestors that lack it, such as
        pytest's ``/tmp/pytest-of-root`` (mode 0700).  pytest resets that mode
        when a new session starts, so this runs before every server command.
        """
        self.sockdir.mkdir(parents=True, exist_ok=True)
        if not self._is_root():
            return
        for ancestor in self.basedir.resolve().parents:
            mode = ancestor.stat()
            if mode.st_uid == 0 and not mode.st_mode & stat.S_IXOTH:
                ancestor.chmod(stat.S_IMODE(mode.st_mode) | stat.S_IXOTH)
        self._give_to_server_user(self.basedir, self.sockdir)

    def _give_to_server_user(self, *paths: Path) -> None:
        """As root, chown files the harness creates to the server's OS user."""
        if not self._is_root():
            return
        try:
            owner = pwd.getpwnam(self.os_user)
        except KeyError:
            unavailable(f"system user {self.os_user!r} needed to run PostgreSQL as root is missing")
        for path in paths:
            if path.stat().st_uid != owner.pw_uid:
                os.chown(path, owner.pw_uid, owner.pw_gid)

    def _initdb(self) -> None:
        self._run_server_cmd(
            self._bin("initdb"),
            "--pgdata",
            str(self.datadir),
            "--username",
            self.superuser,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        conf = self.datadir / "postgresql.conf"
        with conf.open("a") as fh:
            fh.write("\n# added by the mas-formula test harness\ninclude_if_exists = 'harness.conf'\n")

    def _write_runtime_conf(self) -> None:
        settings = dict(
            _SERVER_SETTINGS, listen_addresses=self.host, port=str(self.port), unix_socket_directories=str(self.sockdir)
        )
        lines = [f"{key} = '{value}'" for key, value in settings.items()]
        conf = self.datadir / "harness.conf"
        conf.write_text("\n".join(lines) + "\n")
        self._give_to_server_user(conf)

    def start(self, timeout: int = 30) -> PostgresCluster:
        """Initialise the cluster (first call only) and start the server.

        The port is chosen on the first start and kept across restarts.
        Returns ``self`` so that ``PostgresCluster(d).start()`` can be chained.
        """
        self._prepare_dirs()
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb()
        if self.port is None:
            self.port = free_port(self.host)
        self._write_runtime_conf()
        try:
            self._run_server_cmd(
                self._bin("pg_ctl"),
                "--pgdata",
                str(self.datadir),
                "--log",
                str(self.logfile),
                "--wait",
                "--timeout",
                str(timeout),
                "start",
            )
        except CommandError as exc:
            log = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
            raise RuntimeError(f"PostgreSQL failed to start: {exc}\n--- server log ---\n{log[-4000:]}") from exc
        return self

    def require_password(self, role: str) -> None:
        """Make TCP logins of ``role`` check its password (SCRAM); every other
        login stays ``trust``. Used to prove a password the formula set."""
        hba = self.datadir / "pg_hba.conf"
        line = f"host all {role} 127.0.0.0/8 scram-sha-256\n"
        content = hba.read_text()
        if line not in content:
            hba.write_text(line + content)
        self._run_server_cmd(self._bin("pg_ctl"), "--pgdata", str(self.datadir), "reload")

    @property
    def running(self) -> bool:
        """True while the server of this cluster is up (``pg_ctl status``)."""
        if not (self.datadir / "PG_VERSION").exists():
            return False
        status = self._run_server_cmd(self._bin("pg_ctl"), "--pgdata", str(self.datadir), "status", check=False)
        return status.returncode == 0

    def stop(self) -> None:
        """Stop the server (fast shutdown); a no-op when it is not running."""
        if self.running:
            self._run_server_cmd(self._bin("pg_ctl"), "--pgdata", str(self.datadir), "--mode", "fast", "--wait", "stop")

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ------------------------------------------------------------------- clients

    def dsn(self, dbname: str, user: str | None = None, password: str | None = None) -> str:
        """Return ``postgresql://user[:password]@127.0.0.1:port/dbname``."""
        auth = quote(user or self.superuser, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def connect(self, dbname: str = "postgres", user: str | None = None, **kwargs) -> psycopg.Connection:
        """Open a psycopg (v3) connection in autocommit mode (use it as a context manager)."""
        kwargs.setdefault("autocommit", True)
        return psycopg.connect(host=self.host, port=self.port, user=user or self.superuser, dbname=dbname, **kwargs)

    def query(self, dbname: str, statement: str | sql.Composable, params=None, user: str | None = None) -> list:
        """Run one statement and return all rows (empty list when it returns none)."""
        with self.connect(dbname, user=user) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def psql(
        self, dbname: str, sql_or_file: str | Path, user: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        """Run ``psql -v ON_ERROR_STOP=1`` on ``dbname``.

        A :class:`~pathlib.Path` is run as a script (``-f``), a ``str`` as SQL
        (``-c``).  With ``check`` a failure raises :class:`harness.util.CommandError`.
        """
        source = ["-f", str(sql_or_file)] if isinstance(sql_or_file, Path) else ["-c", sql_or_file]
        args = [
            self._bin("psql"),
            "--no-psqlrc",
            "--quiet",
            "-v",
            "ON_ERROR_STOP=1",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--username",
            user or self.superuser,
            "--dbname",
            dbname,
            *source,
        ]
        return run(args, check=check)

    # -------------------------------------------------------------- roles & DBs

    def create_role(self, name: str, password: str | None = None, superuser: bool = False, login: bool = True) -> None:
        """Create role ``name``, or bring an existing one to the given attributes.

        With ``password=None`` an existing role keeps its password.
        """
        options = [sql.SQL("SUPERUSER" if superuser else "NOSUPERUSER"), sql.SQL("LOGIN" if login else "NOLOGIN")]
        if password is not None:
            options.append(sql.SQL("PASSWORD {}").format(sql.Literal(password)))
        with self.connect() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            verb = sql.SQL("ALTER ROLE" if exists else "CREATE ROLE")
            conn.execute(sql.SQL("{} {} WITH {}").format(verb, sql.Identifier(name), sql.SQL(" ").join(options)))

    def database_exists(self, name: str) -> bool:
        """True when database ``name`` exists."""
        return bool(self.query("postgres", "SELECT 1 FROM pg_database WHERE datname = %s", (name,)))

    def create_database(
        self, name: str, owner: str | None = None, synapse: bool = False, exist_ok: bool = False
    ) -> None:
        """Create database ``name`` (owned by ``owner``, default the superuser).

        ``synapse=True`` uses the settings Synapse insists on:
        ``ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0``.
        With ``exist_ok`` an existing database is left alone.
        """
        if exist_ok and self.database_exists(name):
            return
        statement = sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(name), sql.Identifier(owner or self.superuser)
        )
        if synapse:
            statement += sql.SQL(" ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
        with self.connect() as conn:
            conn.execute(statement)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting its sessions (``WITH (FORCE)``)."""
        with self.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def load_mas_schema(self, dbname: str, user: str | None = None) -> None:
        """Load the upstream MAS schema dump into ``dbname`` with ``psql -f``.

        ``user`` (default the superuser) runs the script and so owns the tables;
        pass the database owner to get a schema that role fully owns (``pg_trgm``
        is a trusted extension, so a database owner may create it).  The dump
        is upstream's ``mas/schema.sql`` (``pg_dump --schema-only`` after all MAS
        migrations); skips the test (fails under CI) when it is absent.
        """
        self.psql(dbname, require_upstream("mas/schema.sql"), user=user)

    def __repr__(self) -> str:
        return f"PostgresCluster(basedir={str(self.basedir)!r}, port={self.port})"
