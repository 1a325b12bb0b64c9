"""The databases a migration reads: Synapse's and MAS's, found from their configs, opened read-only, and the queries the guards share.

psycopg is imported where a database is read (:func:`pg`): the SLS files load
the syn2mas module on every run, and importing psycopg costs more than the rest
of those calls. A database that cannot be reached raises :class:`Unreachable`
with a scrubbed reason.
"""

import contextlib
import importlib.util
import logging
import os
import pathlib
import sqlite3
import uuid

from salt.exceptions import CommandExecutionError

from mas_formula import syn2mas_output

log = logging.getLogger(__name__)


HAS_PSYCOPG = importlib.util.find_spec("psycopg") is not None


def pg():
    """psycopg, imported where a database is read: the SLS files call this module on every run, and importing
    psycopg costs more than the rest of those calls (a module global would not do: Salt's loader inspects
    every global of a module it loads)."""
    import psycopg  # pylint: disable=import-outside-toplevel

    return psycopg


#: Crockford's base32 alphabet of ULIDs (MAS provider ids).
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


#: The MAS tables syn2mas fills; it needs them empty (upstream's MAS_TABLES_AFFECTED_BY_MIGRATION in
#: ``crates/syn2mas/src/mas_writer/mod.rs``, checked empty by ``mas_writer/checks.rs``).
MAS_MIGRATED_TABLES = (
    "users",
    "user_passwords",
    "user_emails",
    "user_unsupported_third_party_ids",
    "upstream_oauth_links",
    "compat_sessions",
    "compat_access_tokens",
    "compat_refresh_tokens",
)


#: What a database driver raises.
def db_errors():
    """What a database read may raise (evaluated when an exception is matched: psycopg stays unimported until used)."""
    return (sqlite3.Error, pg().Error) if HAS_PSYCOPG else (sqlite3.Error,)


class Unreachable(CommandExecutionError):
    """A database the formula must read cannot be reached (the reason says why, without secrets)."""


def ulid_uuid(ulid):
    """The UUID MAS stores for a ULID (``01HFVBY12TMNTYTBV8W921M5FA`` -> ``uuid.UUID``)."""
    value = 0
    for char in str(ulid).upper():
        value = value * 32 + CROCKFORD.index(char)
    return uuid.UUID(int=value)


def synapse_database(conf, opts, files):
    """Where Synapse's database is, from its config (or ``mas:syn2mas:synapse_database_uri``).

    Returns ``{"engine": "postgres", "connect": {...}, "label": ...}`` or
    ``{"engine": "sqlite", "path": ..., "label": ...}``; raises :class:`Unreachable`
    when the configuration does not say. ``label`` names the database without secrets.
    """
    if opts.get("synapse_database_uri"):
        params = pg().conninfo.conninfo_to_dict(opts["synapse_database_uri"]) if HAS_PSYCOPG else {}
        label = f"PostgreSQL database {params.get('dbname', '?')} at {params.get('host', 'localhost')}:" + str(
            params.get("port", 5432)
        )
        return {"engine": "postgres", "connect": {"conninfo": opts["synapse_database_uri"]}, "label": label}
    if not files:
        raise Unreachable(
            "no Synapse config file found (mas:synapse:config_files, mas:synapse:config_dir, "
            "mas:syn2mas:synapse_config_files), so the formula cannot tell which database Synapse uses"
        )
    database = conf.get("database") if isinstance(conf.get("database"), dict) else {}
    name = database.get("name", "sqlite3")
    args = database.get("args") if isinstance(database.get("args"), dict) else {}
    if name == "sqlite3":
        path = args.get("database")
        if not path or path == ":memory:" or not os.path.isabs(str(path)):
            raise Unreachable(
                f"Synapse's SQLite database path {path!r} (database.args.database in {', '.join(files)}) is not "
                "an absolute file path the formula can open"
            )
        return {"engine": "sqlite", "path": str(path), "label": f"SQLite database {path}"}
    if name not in ("psycopg2", "psycopg"):
        raise Unreachable(f"Synapse's database engine {name!r} (database.name in {', '.join(files)}) is unknown")
    connect = {"dbname": args.get("dbname", args.get("database"))}
    for key in ("host", "port", "user", "password", "sslmode"):
        if args.get(key) not in (None, ""):
            connect[key] = str(args[key])
    label = f"PostgreSQL database {connect.get('dbname')} at {connect.get('host', 'localhost')}:" + str(
        connect.get("port", 5432)
    )
    return {"engine": "postgres", "connect": connect, "label": label}


@contextlib.contextmanager
def connected(database, secrets=None):
    """A read-only connection to ``database`` (from :func:`synapse_database` / :func:`_mas_database`).

    Yields ``(engine, connection)``. A connection failure raises
    :class:`Unreachable` naming the database (the driver's message scrubbed).
    """
    if database["engine"] == "sqlite":
        path = database["path"]
        if not os.path.exists(path):
            yield "sqlite", None  # Synapse never started: no database yet
            return
        try:
            conn = sqlite3.connect(pathlib.Path(path).as_uri() + "?mode=ro", uri=True, timeout=10)
            conn.execute("SELECT 1").fetchone()
        except sqlite3.Error as exc:
            raise Unreachable(f"{database['label']} cannot be read: {exc}") from exc
        try:
            yield "sqlite", conn
        finally:
            conn.close()
        return
    if not HAS_PSYCOPG:
        raise Unreachable(f"{database['label']} cannot be read: the Python package psycopg (3) is not installed")
    params = dict(database["connect"])
    conninfo = params.pop("conninfo", "")
    try:
        conn = pg().connect(conninfo, connect_timeout=10, application_name="mas-formula", **params)
    except pg().Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if secrets:
            reason = syn2mas_output.scrub(reason, secrets)
        raise Unreachable(f"{database['label']} is unreachable: {reason}") from exc
    try:
        conn.read_only = True
        yield "postgres", conn
    finally:
        conn.close()


def missing_table(exc):
    """True when ``exc`` says a table does not exist (a database nobody has set up yet)."""
    if HAS_PSYCOPG and isinstance(exc, pg().errors.UndefinedTable):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc)


def fetch(conn, statement, params=None):
    """All rows of ``statement`` (``%s`` placeholders; ``?`` for SQLite)."""
    if isinstance(conn, sqlite3.Connection):
        return conn.execute(statement.replace("%s", "?"), params or ()).fetchall()
    with conn.cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchall() if cur.description else []


# Local users who log in with a password or through an upstream provider:
# the users a drop-in without a migration locks out. Application-service,
# guest and deactivated users log in neither way.
LOGIN_USERS_SQL = (
    "SELECT count(*) FILTER (WHERE u.password_hash IS NOT NULL AND u.password_hash <> ''), "
    "count(*) FILTER (WHERE EXISTS (SELECT 1 FROM user_external_ids e WHERE e.user_id = u.name)), "
    "count(*) FILTER (WHERE (u.password_hash IS NOT NULL AND u.password_hash <> '') "
    "OR EXISTS (SELECT 1 FROM user_external_ids e WHERE e.user_id = u.name)) "
    "FROM users u WHERE u.appservice_id IS NULL AND u.deactivated = 0 AND u.is_guest = 0"
)


def login_users(database, secrets):
    """``{"with_password", "with_external_id", "total"}`` of Synapse's users who can log in."""
    with connected(database, secrets) as (_, conn):
        if conn is None:
            return {"with_password": 0, "with_external_id": 0, "total": 0}
        try:
            passwords, external, total = fetch(conn, LOGIN_USERS_SQL)[0]
        except db_errors() as exc:
            if missing_table(exc):
                return {"with_password": 0, "with_external_id": 0, "total": 0}
            raise Unreachable(f"{database['label']} cannot be queried: {str(exc).strip().splitlines()[0]}") from exc
    return {"with_password": passwords, "with_external_id": external, "total": total}


def mas_created_since(database, since, secrets):
    """Users and active sessions MAS holds that were created after ``since`` (None: ever)."""
    since = since or "-infinity"
    counts = {}
    with connected(database, secrets) as (_, conn):
        for key, statement in (
            ("users", "SELECT count(*) FROM users WHERE created_at > %s::timestamptz"),
            (
                "compat_sessions",
                "SELECT count(*) FROM compat_sessions WHERE created_at > %s::timestamptz AND finished_at IS NULL",
            ),
            (
                "oauth2_sessions",
                "SELECT count(*) FROM oauth2_sessions WHERE created_at > %s::timestamptz AND finished_at IS NULL",
            ),
        ):
            try:
                counts[key] = fetch(conn, statement, (since,))[0][0]
            except db_errors() as exc:
                if not missing_table(exc):
                    raise Unreachable(
                        f"{database['label']} cannot be queried: {str(exc).strip().splitlines()[0]}"
                    ) from exc
                conn.rollback()
                counts[key] = 0
    return {
        "users": counts["users"],
        "sessions": counts["compat_sessions"] + counts["oauth2_sessions"],
        "compat_sessions": counts["compat_sessions"],
        "oauth2_sessions": counts["oauth2_sessions"],
    }


def column_list(conn, table):
    return {
        row[0]
        for row in fetch(conn, "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,))
    }
