"""
syn2mas for the ``mas`` formula: move Synapse's users into MAS once: checked, backed up, verified, guarded.

MAS's ``mas-cli syn2mas`` copies users, passwords, emails, upstream links and
sessions from Synapse's database into an *empty* MAS database. It can only
succeed once: a second run fails inside MAS ("The MAS database is not empty"),
a run against a live Synapse gives an inconsistent copy, and a run killed
half-way leaves a partial migration behind. This module wraps it with a
persisted **phase marker** (``<mas:base_path>/formula/syn2mas.json``,
root-owned, 0600, written atomically) and guards:

``legacy_auth``
    Synapse authenticates (``mas:migration_in_progress: true``, no drop-in).
    No marker file means this phase (or ``delegated`` when Synapse's drop-in is
    on disk: a homeserver that needed no migration).
``migrating``
    Written just before a real ``migrate`` starts. It stays there when the run
    fails; the next run retries (syn2mas resets a partial migration itself).
``migrated_unverified``
    ``migrate`` succeeded but :py:func:`verify` found Synapse rows missing in
    MAS: Synapse must not delegate yet.
``verified``
    The migration succeeded and :py:func:`verify` passed (``migrated``: a run
    recorded by an earlier formula version). Another migration is refused by
    the formula, before MAS is asked.
``delegated``
    ``mas:migration_in_progress`` is false and Synapse's drop-in is live
    (:py:func:`mark_delegated`; ``migration: none`` when none was needed).
``rolled_back``
    Synapse was made authoritative again after delegating
    (:py:func:`mark_rolled_back`).

Public functions: :py:func:`options`, :py:func:`phase`, :py:func:`status`,
:py:func:`preflight` (native checks: no MAS needed), :py:func:`check`,
:py:func:`backup`, :py:func:`migrate` (``dry_run``), :py:func:`verify`,
:py:func:`reset`, :py:func:`mark_delegated`, :py:func:`mark_rolled_back`, and
the guards of ``state.apply mas``: :py:func:`lockout_check` and
:py:func:`rollback_check`. All but the first two return a dict automation can
gate on: ``{"result", "phase", "exit_code", "errors", "warnings", "comment",
...}``; a refusal is ``result: False`` with the reason in ``errors`` (and
``salt-call`` exits 1).

``mas-cli`` runs through the formula's ``bin/mas-cli`` wrapper with
``syn2mas --synapse-config <file>... check|migrate [--dry-run]``. Its output is
scrubbed of every secret the minion knows (MAS's secret files, the secrets in
Synapse's config and in pillar ``mas``, passwords in URLs) before it is parsed,
returned or recorded. Synapse's and MAS's databases are read with psycopg
(read-only transactions, set-based SQL); ``pg_dump`` gets its password from a
private 0600 PGPASSFILE.

:depends: requests, psycopg (3), PostgreSQL's client tools (pg_dump); the ``mas``, ``mas_secret`` and ``mas_synapse``
    execution modules of this formula
"""

import concurrent.futures
import contextlib
import datetime
import fcntl
import hashlib
import importlib.util
import itertools
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import sqlite3
import tempfile
import time
import urllib.parse
import uuid

import salt.utils.data
import salt.utils.files
from salt.exceptions import CommandExecutionError, SaltInvocationError

# requests is imported where it is used (the SLS files call this module on every run)
HAS_REQUESTS = importlib.util.find_spec("requests") is not None
HAS_PSYCOPG = importlib.util.find_spec("psycopg") is not None


def _pg():
    """psycopg, imported where a database is read: the SLS files call this module on every run, and importing
    psycopg costs more than the rest of those calls (a module global would not do: Salt's loader inspects
    every global of a module it loads)."""
    import psycopg  # pylint: disable=import-outside-toplevel

    return psycopg


log = logging.getLogger(__name__)

__virtualname__ = "mas_syn2mas"

PILLAR_ROOT = "mas"
MARKER_VERSION = 1

PHASES = ("legacy_auth", "migrating", "migrated_unverified", "migrated", "verified", "delegated", "rolled_back")
#: Phases after which Synapse may delegate to MAS (``migrated``: a run recorded before verification existed).
MIGRATED_PHASES = ("migrated", "verified")
#: Phases in which a (second) migration is refused by the formula.
DONE_PHASES = ("migrated_unverified", "migrated", "verified", "delegated", "rolled_back")

#: Exit codes of ``mas-cli syn2mas``.
EXIT_OK, EXIT_FATAL, EXIT_ERRORS, EXIT_WARNINGS = 0, 1, 10, 11

#: Options a call may override (the rest come from the map, validated there).
_BOOL_OPTIONS = ("dry_run", "accept_warnings", "ignore_missing_auth_providers", "stop_services", "start_synapse_after")

_HEADING = re.compile(r"^=+\s*(Errors|Warnings)\s*=+$")
_BULLET = "\u2022"
_SUMMARY_LINES = 40
_SUMMARY_CHARS = 6000

_ROLLBACK = (
    "To migrate again: set mas:migration_in_progress: true and apply `mas` (Synapse becomes authoritative again), "
    "drop and recreate MAS's database, run `salt-call mas_syn2mas.reset confirm=True`, then migrate. Sessions "
    "created in MAS since the migration are lost."
)


def __virtual__():
    if not HAS_REQUESTS:
        return (False, "The mas_syn2mas module needs the 'requests' Python package")
    return __virtualname__


# --------------------------------------------------------------------------
# The map and the options
# --------------------------------------------------------------------------


def _mapdata(mapdata=None):
    """The formula's map: ``mapdata`` as given (the SLS's), else ``mas.mapdata``
    (what the SLS work from)."""
    if mapdata is None:
        return __salt__["mas.mapdata"]()
    if not isinstance(mapdata, dict) or "paths" not in mapdata:
        raise SaltInvocationError("mapdata must be the formula's map (mas.mapdata)")
    return mapdata


def options(mapdata=None, **overrides):
    """
    The syn2mas options: pillar ``mas:syn2mas`` (merged over
    ``parameters/defaults.yaml`` and validated with the rest of the map), then
    the keyword arguments that are not None.

    Options: ``dry_run``, ``accept_warnings`` (run a real migration despite
    syn2mas warnings), ``ignore_missing_auth_providers``, ``stop_services``
    (stop Synapse and a managed MAS before a real migration),
    ``start_synapse_after`` (start Synapse again after a successful migration,
    still without delegation), ``synapse_config_files`` (the pre-MAS Synapse
    config files; empty: ``mas:synapse:config_files`` plus the ``*.yaml`` of
    ``mas:synapse:config_dir`` without the formula's drop-in),
    ``synapse_database_uri``, ``timeout`` and ``stop_timeout`` (seconds),
    ``backup`` and ``backup_dir`` (the pg_dump of a real run),
    ``assume_fresh`` and ``force_rollback`` (the guards' overrides),
    ``extra_arguments`` (the seed's, translated in the map) and
    ``deprecations`` (notices about them).

    mapdata
        The formula's map (default: computed from pillar).

    CLI Example:

    .. code-block:: bash

        salt-call mas_syn2mas.options
        salt-call mas_syn2mas.options accept_warnings=True
    """
    mas = _mapdata(mapdata)
    opts = dict(mas["syn2mas"])
    # kept out of the map (it may hold a password): read on the minion
    opts["synapse_database_uri"] = ""
    if opts.pop("synapse_database_uri_set", False):
        opts["synapse_database_uri"] = salt.utils.data.traverse_dict_and_list(
            __pillar__, f"{PILLAR_ROOT}:syn2mas:synapse_database_uri", ""
        )
    given = {key: value for key, value in overrides.items() if not key.startswith("__") and value is not None}
    errors = [
        f"{key}: unknown option (known: {', '.join(_BOOL_OPTIONS)})" for key in sorted(set(given) - set(_BOOL_OPTIONS))
    ]
    errors += [
        f"{key}: must be true or false, not {value!r}"
        for key, value in sorted(given.items())
        if key in _BOOL_OPTIONS and not isinstance(value, bool)
    ]
    if errors:
        raise SaltInvocationError("Invalid syn2mas options (nothing was run):\n- " + "\n- ".join(errors))
    opts.update(given)
    return opts


# --------------------------------------------------------------------------
# The phase marker
# --------------------------------------------------------------------------


def _now():
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _marker_path(mas):
    return mas["paths"]["syn2mas_marker"]


def _read_marker(mas):
    """The marker's content, or None when there is none (phase legacy_auth)."""
    path = _marker_path(mas)
    if not os.path.exists(path):
        return None
    try:
        with salt.utils.files.fopen(path, "r") as handle:
            marker = json.load(handle)
    except (OSError, ValueError) as exc:
        raise CommandExecutionError(
            f"the syn2mas phase marker {path} cannot be read ({exc}); repair it or run "
            "`salt-call mas_syn2mas.reset confirm=True` after checking MAS's database"
        ) from exc
    if not isinstance(marker, dict) or marker.get("phase") not in PHASES:
        raise CommandExecutionError(
            f"the syn2mas phase marker {path} holds no known phase ({', '.join(PHASES)}); repair it or run "
            "`salt-call mas_syn2mas.reset confirm=True` after checking MAS's database"
        )
    return marker


def _phase(marker):
    return marker["phase"] if marker else "legacy_auth"


def _write_marker(mas, marker):
    """Write the marker atomically (``mas_secret.atomic_write``), owned by root (the minion), mode 0600."""
    directory = mas["paths"]["state_dir"]
    if not os.path.isdir(directory):
        raise CommandExecutionError(f"the formula's state directory {directory} does not exist: apply `mas` first")
    __salt__["mas_secret.atomic_write"](_marker_path(mas), json.dumps(marker, indent=2, sort_keys=True) + "\n")


def _set_phase(mas, marker, phase, **fields):
    """Record ``phase`` (and ``fields``) in a copy of ``marker``; return it.
    ``history`` lists the phase transitions (the first write is one too)."""
    previous = _phase(marker)
    now = _now()
    history = list((marker or {}).get("history", []))
    if marker is None or phase != previous:
        history.append({"phase": phase, "at": now, "from": previous})
    marker = dict(marker or {})
    marker.update(fields, phase=phase, updated_at=now, version=MARKER_VERSION, history=history)
    _write_marker(mas, marker)
    log.info("mas_syn2mas: phase %s recorded in %s", phase, _marker_path(mas))
    return marker


@contextlib.contextmanager
def _exclusive(mas):
    """One formula-driven syn2mas run (or reset) at a time on this minion."""
    directory = mas["paths"]["state_dir"]
    if not os.path.isdir(directory):
        raise CommandExecutionError(f"the formula's state directory {directory} does not exist: apply `mas` first")
    fd = os.open(mas["paths"]["syn2mas_lock"], os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise CommandExecutionError("another syn2mas run of the formula is in progress on this minion") from exc
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# Secrets and output
# --------------------------------------------------------------------------


def _known_secrets(mas, synapse_conf):
    """What ``mas_secret.scrub`` needs to hide this run's secrets: the deployment's
    secrets directory and the Synapse config read (its secret-looking values)."""
    return {"secrets_dir": mas["paths"]["secrets_dir"], "synapse_conf": synapse_conf or {}}


def _scrub(text, secrets):
    """``text`` without ANSI colours, secrets or passwords in URLs (``mas_secret.scrub``)."""
    return __salt__["mas_secret.scrub"](text, **secrets)


def _parse(stdout, stderr):
    """Split syn2mas output into ``(errors, warnings, fatal)``.

    ``errors``/``warnings`` are the ``• `` bullets under the ``===== Errors
    =====`` / ``===== Warnings =====`` headings (a bullet may span lines up to
    a blank line); ``fatal`` is the ``Error: ...`` report of an unhandled
    error with its ``Caused by:`` lines (without the ``Stack backtrace:`` that
    ``RUST_BACKTRACE`` adds), or None.
    """
    sections = {"Errors": [], "Warnings": []}
    current, bullet, fatal = None, None, None
    lines = (stderr or "").splitlines() + (stdout or "").splitlines()
    for index, raw in enumerate(lines):
        line = raw.strip()
        heading = _HEADING.match(line)
        if heading:
            current, bullet = heading.group(1), None
            continue
        if line.startswith("Error: ") and fatal is None:
            report = itertools.takewhile(lambda rest: rest.strip() != "Stack backtrace:", lines[index:])
            fatal = "\n".join(rest.rstrip() for rest in report if rest.strip()).strip()
            current = bullet = None
            continue
        if current is None or fatal is not None:
            continue
        if line.startswith(_BULLET):
            bullet = line[len(_BULLET) :].strip()
            sections[current].append(bullet)
        elif not line or re.match(r"^\d{4}-\d\d-\d\dT", line):
            bullet = None
            if line:
                current = None  # a log line ends the section
        elif bullet is not None:
            bullet = f"{bullet} {line}"
            sections[current][-1] = bullet
    return sections["Errors"], sections["Warnings"], fatal


def _summary(text):
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    summary = "\n".join(lines[-_SUMMARY_LINES:])
    return summary[-_SUMMARY_CHARS:]


#: A line mas-cli reports an error on: a log line at ERROR level, or an ``Error:`` report.
_ERROR_LINE = re.compile(r"^(?:\d{4}-\d\d-\d\dT\S+\s+ERROR\s|Error:|error:)")


def _last_error_line(text):
    """The last line of ``text`` at ERROR level (never an INFO/WARN line), or None."""
    return next((line.strip() for line in reversed(text.splitlines()) if _ERROR_LINE.match(line.strip())), None)


def _signal(code):
    """The signal that killed mas-cli (a negative exit code; 128 + N from a shell or a container runtime), or None."""
    if isinstance(code, int) and code < 0:
        return -code
    return code - 128 if isinstance(code, int) and 128 < code < 160 else None


def _ended(code):
    """How mas-cli ended: ``mas-cli exited with 1``, ``mas-cli was killed by signal 9 (SIGKILL)``."""
    number = _signal(code)
    if number is None:
        return f"mas-cli exited with {code}"
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = "unknown signal"
    return f"mas-cli was killed by signal {number} ({name}{'' if code < 0 else f'; exit code {code}'})"


# --------------------------------------------------------------------------
# Plan: files, command, probes
# --------------------------------------------------------------------------


def _dropin(mas):
    return mas["paths"]["synapse_dropin"]


def _synapse_files(mas, opts):
    """(pre-MAS Synapse config files, their merged content, problems)."""
    syn = mas["synapse"]
    problems = []
    if opts["synapse_config_files"]:
        files = list(opts["synapse_config_files"])
        present = [f for f in files if os.path.isfile(f)]
        problems += [
            f"the Synapse config file {f} (mas:syn2mas:synapse_config_files) does not exist"
            for f in files
            if f not in present
        ]
        conf = __salt__["mas_synapse.config"](present, None, {}, mask=False)["config"] if present else {}
    else:
        read = __salt__["mas_synapse.config"](
            syn.get("config_files"), syn["config_dir"], {}, exclude=[_dropin(mas)], mask=False
        )
        files, conf = read["files"], read["config"]
        if not files:
            problems.append(
                "no Synapse config file found (mas:synapse:config_files, mas:synapse:config_dir); "
                "set mas:syn2mas:synapse_config_files"
            )
    return files, conf, problems


def _argv(mas, opts, files, action, dry_run=False):
    argv = [mas["paths"]["mas_cli"], "syn2mas"]
    for path in files:
        argv += ["--synapse-config", path]
    if opts["synapse_database_uri"]:
        argv += ["--synapse-database-uri", opts["synapse_database_uri"]]
    if opts["ignore_missing_auth_providers"]:
        argv.append("--ignore-missing-auth-providers")
    argv.append(action)
    if dry_run:
        argv.append("--dry-run")
    return argv


def _readable_by(path, user):
    """None when ``user`` can read ``path``, else why not."""
    import grp  # pylint: disable=import-outside-toplevel
    import pwd  # pylint: disable=import-outside-toplevel

    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return f"the user {user!r} does not exist"
    if account.pw_uid == 0:
        return None
    info = os.stat(path)
    groups = {account.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    if info.st_uid == account.pw_uid:
        allowed = info.st_mode & 0o400
    elif info.st_gid in groups:
        allowed = info.st_mode & 0o040
    else:
        allowed = info.st_mode & 0o004
    if allowed:
        return None
    return f"mode {oct(info.st_mode & 0o777)[2:]}, owner {info.st_uid}:{info.st_gid}"


def _static_problems(mas, opts, files):
    """What stops syn2mas before it runs: ``(any run, a real migration only)``."""
    problems = []
    if not mas.get("enabled"):
        problems.append("mas:enabled is false: deploy MAS with `state.apply mas` first")
    if not os.access(mas["paths"]["mas_cli"], os.X_OK):
        problems.append(f"{mas['paths']['mas_cli']} is missing: apply `mas` first")
    runtime = __salt__["mas.runtime_problem"](mas)
    if runtime:
        problems.append(runtime)
    for path in files:
        if mas.get("runtime") == "docker" and re.search(r"[\s:,]", path):
            problems.append(
                f"the Synapse config file {path} cannot be mounted into the MAS container (its path has "
                "a space, ':' or ','): copy it elsewhere and list it in mas:syn2mas:synapse_config_files"
            )
        why = _readable_by(path, mas["user"]) if os.path.exists(path) else None
        if why:
            problems.append(
                f"the Synapse config file {path} is not readable by the MAS user {mas['user']!r} ({why}), which "
                "runs mas-cli: let it read the file (e.g. add it to Synapse's group)"
            )
    real = []
    if not mas.get("migration_in_progress"):
        real.append(
            "mas:migration_in_progress is false: syn2mas must run while Synapse is still authoritative. Set "
            "mas:migration_in_progress: true and apply `mas` (this removes Synapse's drop-in), then migrate"
        )
    if os.path.exists(_dropin(mas)):
        real.append(
            f"Synapse's drop-in {_dropin(mas)} is present (Synapse delegates to MAS): apply `mas` with "
            "mas:migration_in_progress: true first"
        )
    if opts["backup"] and not opts.get("backup_dir"):
        real.append(
            "mas:syn2mas:backup_dir is not set: a real migration first takes a pg_dump of Synapse's database. Set "
            "it (e.g. /var/backups/matrix-synapse), or say mas:syn2mas:backup: false to migrate without one"
        )
    elif opts["backup"]:
        try:
            _pg_dump()
        except CommandExecutionError as exc:
            real.append(str(exc))
    return problems, real


def _answers(url, timeout=3):
    """True when something answers HTTP at ``url`` (any status code)."""
    import requests  # pylint: disable=import-outside-toplevel

    session = requests.Session()
    session.trust_env = False  # never through an http(s)_proxy from the environment: these are local services
    try:
        session.get(url, timeout=timeout)
        return True
    except requests.RequestException:
        return False
    finally:
        session.close()


def _synapse_url(mas):
    endpoint = mas["synapse"]["endpoint"]
    return urllib.parse.urljoin(endpoint if endpoint.endswith("/") else endpoint + "/", "_matrix/client/versions")


def _mas_url(mas):
    return mas["api"]["health_url"]


# --------------------------------------------------------------------------
# The databases: Synapse's (read only) and MAS's
# --------------------------------------------------------------------------

#: Crockford's base32 alphabet of ULIDs (MAS provider ids).
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

#: The MAS tables syn2mas fills; it needs them empty (FACTS §3.5).
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
def _db_errors():
    """What a database read may raise (evaluated when an exception is matched: psycopg stays unimported until used)."""
    return (sqlite3.Error, _pg().Error) if HAS_PSYCOPG else (sqlite3.Error,)


class Unreachable(CommandExecutionError):
    """A database the formula must read cannot be reached (the reason says why, without secrets)."""


def _ulid_uuid(ulid):
    """The UUID MAS stores for a ULID (``01HFVBY12TMNTYTBV8W921M5FA`` -> ``uuid.UUID``)."""
    value = 0
    for char in str(ulid).upper():
        value = value * 32 + _CROCKFORD.index(char)
    return uuid.UUID(int=value)


def _synapse_database(conf, opts, files):
    """Where Synapse's database is, from its config (or ``mas:syn2mas:synapse_database_uri``).

    Returns ``{"engine": "postgres", "connect": {...}, "label": ...}`` or
    ``{"engine": "sqlite", "path": ..., "label": ...}``; raises :class:`Unreachable`
    when the configuration does not say. ``label`` names the database without secrets.
    """
    if opts.get("synapse_database_uri"):
        params = _pg().conninfo.conninfo_to_dict(opts["synapse_database_uri"]) if HAS_PSYCOPG else {}
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


def _mas_database(mas):
    """MAS's database connection (from the map; the password from pillar or its secret file)."""
    db = mas["database"]
    connect = {"host": db["host"], "port": str(db["port"]), "dbname": db["name"], "user": db["user"]}
    if db.get("ssl_mode"):
        connect["sslmode"] = db["ssl_mode"]
    if db.get("password_set"):
        password = salt.utils.data.traverse_dict_and_list(__pillar__, f"{PILLAR_ROOT}:database:password", None)
        path = mas["paths"]["database_password"]
        if password in (None, "") and os.path.isfile(path):
            with salt.utils.files.fopen(path, "r") as handle:
                password = handle.read().strip()
        if password not in (None, ""):
            connect["password"] = str(password)
    label = f"MAS's database {db['name']} at {db['host']}:{db['port']} (mas:database)"
    return {"engine": "postgres", "connect": connect, "label": label}


@contextlib.contextmanager
def _connect(database, secrets=None):
    """A read-only connection to ``database`` (from :func:`_synapse_database` / :func:`_mas_database`).

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
        conn = _pg().connect(conninfo, connect_timeout=10, application_name="mas-formula", **params)
    except _pg().Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if secrets:
            reason = _scrub(reason, secrets)
        raise Unreachable(f"{database['label']} is unreachable: {reason}") from exc
    try:
        conn.read_only = True
        yield "postgres", conn
    finally:
        conn.close()


def _missing_table(exc):
    """True when ``exc`` says a table does not exist (a database nobody has set up yet)."""
    if HAS_PSYCOPG and isinstance(exc, _pg().errors.UndefinedTable):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc)


def _rows(conn, statement, params=None):
    """All rows of ``statement`` (``%s`` placeholders; ``?`` for SQLite)."""
    if isinstance(conn, sqlite3.Connection):
        return conn.execute(statement.replace("%s", "?"), params or ()).fetchall()
    with conn.cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchall() if cur.description else []


# Local users who log in with a password or through an upstream provider:
# the users a drop-in without a migration locks out. Application-service,
# guest and deactivated users log in neither way.
_LOGIN_USERS_SQL = (
    "SELECT count(*) FILTER (WHERE u.password_hash IS NOT NULL AND u.password_hash <> ''), "
    "count(*) FILTER (WHERE EXISTS (SELECT 1 FROM user_external_ids e WHERE e.user_id = u.name)), "
    "count(*) FILTER (WHERE (u.password_hash IS NOT NULL AND u.password_hash <> '') "
    "OR EXISTS (SELECT 1 FROM user_external_ids e WHERE e.user_id = u.name)) "
    "FROM users u WHERE u.appservice_id IS NULL AND u.deactivated = 0 AND u.is_guest = 0"
)


def _login_users(database, secrets):
    """``{"with_password", "with_external_id", "total"}`` of Synapse's users who can log in."""
    with _connect(database, secrets) as (_, conn):
        if conn is None:
            return {"with_password": 0, "with_external_id": 0, "total": 0}
        try:
            passwords, external, total = _rows(conn, _LOGIN_USERS_SQL)[0]
        except _db_errors() as exc:
            if _missing_table(exc):
                return {"with_password": 0, "with_external_id": 0, "total": 0}
            raise Unreachable(f"{database['label']} cannot be queried: {str(exc).strip().splitlines()[0]}") from exc
    return {"with_password": passwords, "with_external_id": external, "total": total}


def _mas_created_since(database, since, secrets):
    """Users and active sessions MAS holds that were created after ``since`` (None: ever)."""
    since = since or "-infinity"
    counts = {}
    with _connect(database, secrets) as (_, conn):
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
                counts[key] = _rows(conn, statement, (since,))[0][0]
            except _db_errors() as exc:
                if not _missing_table(exc):
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


def _run(mas, argv, opts, files, secrets):
    """Run ``argv`` (never logged: it may carry a database URI) and parse it.

    With the docker runtime, ``MAS_CLI_READONLY_MOUNTS`` asks the wrapper to
    mount Synapse's config ``files`` read-only at the same paths.
    """
    env = {"MAS_CLI_READONLY_MOUNTS": ":".join(files)} if mas.get("runtime") == "docker" else None
    res = __salt__["cmd.run_all"](
        argv,
        python_shell=False,
        output_loglevel="quiet",
        ignore_retcode=True,
        timeout=opts["timeout"],
        env=env,
    )
    stdout, stderr = _scrub(res.get("stdout", ""), secrets), _scrub(res.get("stderr", ""), secrets)
    if res["retcode"] == 1 and not stderr and re.search(r" : Timed out after \d+ seconds$", stdout):
        # Salt killed it (SIGKILL) after mas:syn2mas:timeout and says "exit 1" with the command as its output
        return {
            "exit_code": -signal.SIGKILL,
            "errors": [
                f"mas-cli did not finish within {opts['timeout']} s (mas:syn2mas:timeout), so Salt killed it: "
                "raise mas:syn2mas:timeout for a homeserver this big, then run again"
            ],
            "warnings": [],
            "summary": "",
        }
    errors, warnings, fatal = _parse(stdout, stderr)
    if fatal:
        errors.append(fatal)
    elif res["retcode"] not in (EXIT_OK, EXIT_ERRORS, EXIT_WARNINGS) and not errors:
        last = _last_error_line(stderr + "\n" + stdout)
        said = f"its last error line: {last[-500:]}" if last else "it logged no error"
        if _signal(res["retcode"]) == signal.SIGKILL:
            said += (
                ". SIGKILL comes from outside mas-cli (`kill -9`, a supervisor, the kernel's out-of-memory killer: "
                "see `journalctl -k`)"
            )
        errors.append(f"{_ended(res['retcode'])}: {said}")
    return {
        "exit_code": res["retcode"],
        "errors": errors,
        "warnings": warnings,
        "summary": _summary(stderr + "\n" + stdout),
    }


def _display(argv, secrets):
    return _scrub(" ".join(argv), secrets)


def _hint(errors, phase):
    """An operator hint for well-known failures."""
    text = "\n".join(errors)
    if "MAS database is not empty" in text and phase not in DONE_PHASES:
        return (
            "MAS's database already holds users (created in MAS, or syn2mas ran outside the formula). syn2mas "
            "needs an empty MAS database: drop and recreate it (mas:database), then run again."
        )
    if "another syn2mas instance is already running" in text:
        return "Another syn2mas holds MAS's database lock: wait for it to finish."
    return None


def _result(result, phase, comment, exit_code=None, errors=None, warnings=None, **extra):
    ret = {
        "result": result,
        "phase": phase,
        "exit_code": exit_code,
        "errors": list(errors or []),
        "warnings": list(warnings or []),
        "comment": comment,
    }
    ret.update(extra)
    if not result:
        __context__["retcode"] = 1
    return ret


def _prepare(mapdata, overrides):
    """What every public function starts from: the map, options, marker, Synapse's config and the problems.

    ``file_problems``: Synapse config files missing; ``common``: what stops
    any mas-cli run (with the file problems); ``real``: what stops a real
    migration only.
    """
    mas = _mapdata(mapdata)
    opts = options(mas, **overrides)
    marker = _read_marker(mas)
    files, conf, file_problems = _synapse_files(mas, opts)
    common, real = _static_problems(mas, opts, files)
    return {
        "mas": mas,
        "opts": opts,
        "marker": marker,
        "files": files,
        "conf": conf,
        "file_problems": file_problems,
        "common": file_problems + common,
        "real": real,
        "secrets": _known_secrets(mas, conf),
    }


class _Steps(list):
    """The steps of a real run with their durations: logged at info level, listed in the comment and marker."""

    def run(self, name, func, *args, ok=None, **kwargs):
        """Run ``func`` as step ``name``; ``ok(value)`` tells whether it succeeded (default: no exception)."""
        started = time.monotonic()
        try:
            value = func(*args, **kwargs)
        except Exception:
            self._done(name, started, "failed")
            raise
        self._done(name, started, "ok" if ok is None or ok(value) else "failed")
        return value

    def skip(self, name, why):
        self.append({"step": name, "result": "skipped", "seconds": 0.0, "why": why})
        log.info("mas_syn2mas: step %s skipped: %s", name, why)

    def _done(self, name, started, result):
        seconds = round(time.monotonic() - started, 3)
        self.append({"step": name, "result": result, "seconds": seconds})
        log.info("mas_syn2mas: step %s %s in %.3f s", name, result, seconds)

    def text(self):
        return "Steps: " + "; ".join(
            f"{s['step']} {s['result']}" + (f" ({s['seconds']:.1f} s)" if s["result"] != "skipped" else "")
            for s in self
        )


def _merge_check(pre, run, accept_warnings, phase):
    """Preflight and upstream's ``check`` in one shape: ``(result, errors, warnings, comment)``."""
    errors = list(pre["errors"]) + [e for e in run["errors"] if e not in pre["errors"]] if run else list(pre["errors"])
    warnings = list(pre["warnings"]) + [w for w in (run or {}).get("warnings", []) if w not in pre["warnings"]]
    code = (run or {}).get("exit_code")
    ok = not errors and code in (EXIT_OK, EXIT_WARNINGS, None)
    if ok and warnings and not accept_warnings:
        ok = False
        errors.append(
            f"{len(warnings)} warning(s): read them, then accept them with accept_warnings=True "
            "(pillar mas:syn2mas:accept_warnings: true)"
        )
    hint = _hint(errors, phase)
    if hint:
        errors.append(hint)
    comment = {
        EXIT_OK: "syn2mas check passed",
        EXIT_WARNINGS: "syn2mas check passed with warnings",
        EXIT_ERRORS: "syn2mas check found blocking errors",
        None: "syn2mas preflight found blocking errors",
    }.get(code, f"syn2mas check failed ({_ended(code)})")
    if pre["errors"] and code in (EXIT_OK, EXIT_WARNINGS):
        comment = "syn2mas check passed upstream but the preflight found blocking errors"
    return ok, errors, warnings, comment


# --------------------------------------------------------------------------
# Preflight: what will fail, and how big the job is (no MAS binary needed)
# --------------------------------------------------------------------------

#: ``user_external_ids.auth_provider`` rows a previously configured MAS left behind.
_OAUTH_DELEGATED = "oauth-delegated"

#: Synapse's auth systems MAS cannot take over by itself: (config key, name).
_EXTERNAL_AUTH = (("cas_config", "CAS"), ("saml2_config", "SAML2"), ("jwt_config", "JWT"))


def _enabled(section):
    return isinstance(section, dict) and bool(section.get("enabled", False))


def _synapse_oidc_providers(conf):
    """The ``auth_provider`` ids Synapse stores for its OIDC providers (upstream's rules)."""
    ids = set()
    legacy = conf.get("oidc_config") if isinstance(conf.get("oidc_config"), dict) else {}
    if legacy.get("issuer") is not None and legacy.get("client_id") is not None:
        ids.add(str(legacy.get("idp_id") or "oidc"))
    for provider in conf.get("oidc_providers") or []:
        if isinstance(provider, dict):
            idp_id = provider.get("idp_id")
            ids.add("oidc" if idp_id in (None, "oidc") else f"oidc-{idp_id}")
    return ids


def _mas_providers(mas):
    """``{synapse_idp_id: MAS provider id}`` of the providers in MAS's config."""
    providers = ((mas.get("mas_config") or {}).get("upstream_oauth2") or {}).get("providers") or []
    return {str(p["synapse_idp_id"]): str(p.get("id")) for p in providers if p.get("synapse_idp_id")}


def _mas_bcrypt_secret(mas):
    """``(scheme, secret bytes or None, where)`` of MAS's password scheme version 1 (``scheme`` None: none).

    A ``secret_file`` is read raw (MAS compares it untrimmed); the formula's own
    pepper file not written yet counts as the value the formula will write.
    """
    passwords = (mas.get("mas_config") or {}).get("passwords") or {}
    if passwords.get("enabled", True) is False:
        return None, None, "passwords.enabled is false in MAS's config"
    scheme = next((s for s in passwords.get("schemes") or [] if isinstance(s, dict) and s.get("version") == 1), None)
    if scheme is None:
        return None, None, "MAS's config has no password scheme version 1"
    if scheme.get("secret") is not None:
        return scheme, str(scheme["secret"]).encode(), "passwords.schemes[version 1].secret (mas:config)"
    path = scheme.get("secret_file")
    if not path:
        return scheme, None, "passwords.schemes[version 1] has no secret"
    if os.path.isfile(path):
        with salt.utils.files.fopen(path, "rb") as handle:
            return scheme, handle.read(), f"{path} (MAS's bcrypt secret_file)"
    if path == mas["paths"]["synapse_pepper"]:
        if mas["synapse"].get("pepper_source") == "pillar":
            value = salt.utils.data.traverse_dict_and_list(__pillar__, f"{PILLAR_ROOT}:synapse:pepper", None)
            return scheme, str(value).encode(), "mas:synapse:pepper (written to the pepper file by `mas`)"
        syn = mas["synapse"]
        conf = __salt__["mas_synapse.config"](
            syn.get("config_files"), syn["config_dir"], {}, exclude=[_dropin(mas)], mask=False
        )["config"]
        pepper = (conf.get("password_config") or {}).get("pepper")
        where = "Synapse's pepper from mas:synapse:config_files (written to the pepper file by `mas`)"
        return scheme, None if pepper in (None, "") else str(pepper).encode(), where
    return scheme, None, f"{path} (MAS's bcrypt secret_file) does not exist"


def _column_list(conn, table):
    return {
        row[0]
        for row in _rows(conn, "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,))
    }


def _synapse_counts(conn, server_name):
    """Synapse's numbers, set-based (one aggregate query per table)."""
    columns = _column_list(conn, "users")
    optional = {
        name: (f"count(*) FILTER (WHERE {name})" if name in columns else "0")
        for name in ("locked", "shadow_banned", "suspended")
    }
    suffix = f":{server_name}"
    (
        total,
        admins,
        guests,
        deactivated,
        appservice,
        with_password,
        bcrypt,
        foreign,
        locked,
        shadow_banned,
        suspended,
    ) = _rows(
        conn,
        "SELECT count(*), count(*) FILTER (WHERE admin <> 0), count(*) FILTER (WHERE is_guest <> 0), "  # noqa: S608
        "count(*) FILTER (WHERE deactivated <> 0), count(*) FILTER (WHERE appservice_id IS NOT NULL), "
        "count(*) FILTER (WHERE password_hash IS NOT NULL AND password_hash <> ''), "
        "count(*) FILTER (WHERE password_hash LIKE '$2%%'), "
        "count(*) FILTER (WHERE appservice_id IS NULL AND right(name, %s) <> %s), "
        f"{optional['locked']}, {optional['shadow_banned']}, {optional['suspended']} FROM users",
        (len(suffix), suffix),
    )[0]
    threepids = dict(_rows(conn, "SELECT medium, count(*) FROM user_threepids GROUP BY medium ORDER BY medium"))
    external = dict(
        _rows(conn, "SELECT auth_provider, count(*) FROM user_external_ids GROUP BY auth_provider ORDER BY 1")
    )
    devices, visible = _rows(
        conn,
        "SELECT count(*), count(*) FILTER (WHERE NOT coalesce(hidden, false) AND device_id <> 'guest_device') "
        "FROM devices",
    )[0]
    (access,) = _rows(conn, "SELECT count(*) FROM access_tokens")[0]
    (refresh,) = _rows(conn, "SELECT count(*) FROM refresh_tokens")[0]
    return {
        "users": {
            "total": total,
            "local": total - appservice,
            "admins": admins,
            "guests": guests,
            "deactivated": deactivated,
            "locked": locked,
            "shadow_banned": shadow_banned,
            "suspended": suspended,
            "appservice": appservice,
            "with_password": with_password,
            "bcrypt_hashes": bcrypt,
            "foreign_ids": foreign,
        },
        "threepids": {
            "email": threepids.get("email", 0),
            "non_email": sum(n for medium, n in threepids.items() if medium != "email"),
            "by_medium": threepids,
        },
        "external_ids": external,
        "devices": devices,
        "devices_migrated": visible,
        "access_tokens": access,
        "refresh_tokens": refresh,
    }


def _mas_contents(conn):
    """Which of syn2mas's tables hold rows in MAS's database, and whether a partial migration is there."""
    present = {
        table
        for table, exists in _rows(
            conn,
            "SELECT t, to_regclass('public.' || t) IS NOT NULL FROM unnest(%s::text[]) AS t",
            (list(MAS_MIGRATED_TABLES) + ["syn2mas_restore_indices", "syn2mas__users"],),
        )
        if exists
    }
    filled = [
        table
        for table in MAS_MIGRATED_TABLES
        if table in present and _rows(conn, f"SELECT EXISTS (SELECT 1 FROM {table})")[0][0]  # noqa: S608
    ]
    users = _rows(conn, "SELECT count(*) FROM users")[0][0] if "users" in filled else 0
    return {
        "schema": "users" in present,
        "filled": filled,
        "users": users,
        "partial": "syn2mas_restore_indices" in present,
    }


def _preflight(mas, opts, marker, files, conf, secrets):
    """The native checks (see :py:func:`preflight`): ``{errors, warnings, notes, counts, ...}``."""
    errors, warnings, notes = [], [], list(mas["syn2mas"].get("deprecations") or [])
    origin = __salt__["mas_synapse.config"](files, None, {}, mask=True)["origins"] if files else {}

    def where(key):
        return f"{key} in {origin.get(key, 'the Synapse config')}"

    phase = _phase(marker)
    if phase in DONE_PHASES:
        errors.append(_already(mas, marker))
    if not files:
        errors.append(
            "no Synapse config file found (mas:synapse:config_files, mas:synapse:config_dir): list the pre-MAS "
            "Synapse config in mas:syn2mas:synapse_config_files"
        )
    server_name = conf.get("server_name")
    if files and server_name != mas.get("server_name"):
        errors.append(
            f"Synapse's server_name is {server_name!r} ({where('server_name')}) but mas:server_name is "
            f"{mas.get('server_name')!r}: MAS's matrix.homeserver must equal it; set mas:server_name: {server_name}"
        )
    if conf.get("allow_guest_access"):
        errors.append(
            f"guest access is on ({where('allow_guest_access')}): MAS has no guests (MAS#1445); set "
            "allow_guest_access: false in Synapse's config"
        )
    if conf.get("enable_3pid_changes") is True:
        errors.append(f"{where('enable_3pid_changes')} is true: remove it or set it to false (MAS manages emails)")
    if _enabled(conf.get("login_via_existing_session")):
        errors.append(
            f"login_via_existing_session.enabled is true ({where('login_via_existing_session')}): set it to false"
        )
    if conf.get("enable_registration"):
        warnings.append(
            f"Synapse has registration enabled ({where('enable_registration')}): turn it off before Synapse comes "
            "back (the formula refuses it once Synapse delegates; users then register in MAS)"
        )
    for key, name in _EXTERNAL_AUTH:
        if _enabled(conf.get(key)):
            warnings.append(
                f"Synapse signs users in with {name} ({where(key)}): MAS cannot take {name} over; its users need "
                "an upstream OAuth 2.0 provider mapped by hand (mas:upstream_oauth2_providers)"
            )
    password_config = conf.get("password_config") if isinstance(conf.get("password_config"), dict) else {}
    if password_config.get("localdb_enabled") is False or conf.get("password_providers"):
        warnings.append(
            "Synapse checks passwords with a password provider (password_config.localdb_enabled: false or "
            "password_providers): those users have no password MAS can check; give them an upstream provider"
        )
    if conf.get("user_consent") is not None:
        warnings.append(
            f"Synapse has user_consent ({where('user_consent')}): disable it after the migration; MAS links terms "
            "of service with mas:config:branding:tos_uri"
        )

    counts, synapse_label = {}, None
    try:
        database = _synapse_database(conf, opts, files)
        synapse_label = database["label"]
        if database["engine"] == "sqlite":
            raise Unreachable(
                "Synapse database configuration is invalid, cannot migrate: syn2mas does not support the sqlite3 "
                f"database driver ({database['label']}). Port Synapse to PostgreSQL first (synapse_port_db), "
                "then migrate"
            )
        with _connect(database, secrets) as (_, conn):
            counts = _synapse_counts(conn, server_name or mas.get("server_name"))
            conn.rollback()
    except Unreachable as exc:
        errors.append(str(exc))
    except _db_errors() as exc:
        errors.append(
            f"Synapse's {synapse_label} cannot be read as a Synapse database: {_scrub(str(exc).strip(), secrets)}"
        )

    scheme, secret, source = _mas_bcrypt_secret(mas)
    pepper = password_config.get("pepper")
    bcrypt_users = (counts.get("users") or {}).get("bcrypt_hashes", 0)
    if scheme is None or scheme.get("algorithm") != "bcrypt":
        if bcrypt_users:
            errors.append(
                f"{bcrypt_users} Synapse users have bcrypt password hashes but MAS has no bcrypt password scheme "
                f"version 1 ({source}): keep the formula's passwords.schemes (do not override them in mas:config)"
            )
    elif files and secret != (None if pepper in (None, "") else str(pepper).encode()):
        pepper_where = f"password_config.pepper in {origin.get('password_config', '?')}" if pepper else "none set"
        errors.append(
            f"Synapse's pepper ({pepper_where}) "
            f"differs from the secret of MAS's bcrypt scheme ({source}): migrated passwords would not work. Set "
            "mas:synapse:pepper to Synapse's pepper, or leave it unset to let the formula read it from Synapse's config"
        )

    if counts:
        users = counts["users"]
        if users["foreign_ids"]:
            errors.append(
                f"{users['foreign_ids']} Synapse users have an ID not ending in :{server_name}: syn2mas stops on "
                "them (check server_name)"
            )
        if users["guests"]:
            warnings.append(
                f"{users['guests']} guest users will be migrated, but MAS does not support guests (MAS#1445)"
            )
        if counts["threepids"]["non_email"]:
            media = ", ".join(
                f"{medium}: {n}" for medium, n in counts["threepids"]["by_medium"].items() if medium != "email"
            )
            warnings.append(
                f"{counts['threepids']['non_email']} non-email 3PIDs ({media}) are copied to MAS's "
                "user_unsupported_third_party_ids: MAS cannot use them to sign in or to reset a password"
            )
        known = _synapse_oidc_providers(conf)
        mapped = _mas_providers(mas)
        for provider, n in sorted(counts["external_ids"].items()):
            if provider == _OAUTH_DELEGATED:
                errors.append(
                    f"Synapse's database has {n} user_external_ids rows of provider {_OAUTH_DELEGATED} left by a "  # noqa: S608
                    "previously configured MAS: if they are from an earlier migration attempt, run `DELETE FROM "
                    f"user_external_ids WHERE auth_provider = '{_OAUTH_DELEGATED}';` on Synapse's database"
                )
                continue
            if provider in mapped and provider in known:
                continue
            if provider in mapped or provider not in known:
                text = (
                    f"{n} Synapse users are linked to provider {provider}, which the Synapse config syn2mas reads "
                    f"does not define ({', '.join(files) or 'no file'})"
                )
                if opts["ignore_missing_auth_providers"]:
                    warnings.append(f"{text}: their links are dropped (mas:syn2mas:ignore_missing_auth_providers)")
                    continue
                if provider in mapped:
                    errors.append(
                        f"{text}: syn2mas refuses that. List the pre-MAS config file that defines it in "
                        "mas:syn2mas:synapse_config_files, or set mas:syn2mas:ignore_missing_auth_providers: true "
                        "to drop these links"
                    )
                    continue
            if not provider.startswith("oidc"):
                errors.append(
                    f"Unknown upstream provider {provider}: {n} Synapse users signed in with it, and it is no "
                    "OpenID Connect provider MAS can map (CAS/SAML?): give those users another way in, or set "
                    "mas:syn2mas:ignore_missing_auth_providers: true to drop their links"
                )
                continue
            errors.append(
                f"Unknown upstream provider {provider}: {n} Synapse users are linked to it and no MAS provider maps "
                f"it. Add `synapse_idp_id: {provider}` to its entry in mas:upstream_oauth2_providers (or the seed's "
                f"`--upstreamProviderMapping {provider}:<MAS provider id>` in mas:syn2mas:extra_arguments)"
            )

    mas_database = _mas_database(mas)
    if phase not in DONE_PHASES:
        try:
            with _connect(mas_database, secrets) as (_, conn):
                contents = _mas_contents(conn)
                conn.rollback()
        except Unreachable as exc:
            errors.append(f"{exc}: syn2mas writes there (create it: mas:database:manage, or by hand)")
        except _db_errors() as exc:
            errors.append(f"{mas_database['label']} cannot be read: {_scrub(str(exc).strip(), secrets)}")
        else:
            if contents["partial"]:
                notes.append("a partial syn2mas migration is in MAS's database: the next run resets it first")
            elif contents["filled"]:
                errors.append(
                    f"{mas_database['label']} is not empty: rows in {', '.join(contents['filled'])} "
                    f"({contents['users']} users). syn2mas needs it empty: drop and recreate it (mas:database), "
                    "then run again"
                )
    return {
        "errors": errors,
        "warnings": warnings,
        "notes": notes,
        "counts": counts,
        "synapse_database": synapse_label,
        "mas_database": mas_database["label"],
        "synapse_configs": files,
    }


def preflight(mapdata=None, ignore_missing_auth_providers=None):
    """
    Native checks before syn2mas, fast on a million users and needing no MAS
    binary and no MAS service: Synapse's config files (``mas:syn2mas:
    synapse_config_files``, else ``mas:synapse:config_files`` and
    ``config_dir``) and Synapse's PostgreSQL database, read with set-based SQL
    (one aggregate query per table, one read-only snapshot), and MAS's
    database (``mas:database``).

    Errors (each says what to change): a provider in ``user_external_ids``
    that no MAS provider maps with ``synapse_idp_id`` (named, with its user
    count); ``server_name`` different from ``mas:server_name``; a pepper that
    is not the secret of MAS's bcrypt scheme (or no bcrypt scheme while users
    have bcrypt hashes); MAS's database unreachable or not empty; guest access
    on; ``enable_3pid_changes``; ``login_via_existing_session``; user IDs of
    another server; a SQLite Synapse (upstream's reason). Warnings: guests,
    non-email 3PIDs (by medium), registration on, CAS/SAML/JWT/password
    providers, ``user_consent``.

    Returns ``{"result", "phase", "errors", "warnings", "notes", "counts":
    {"users": {total, local, admins, guests, deactivated, locked,
    shadow_banned, suspended, appservice, with_password, bcrypt_hashes,
    foreign_ids}, "threepids": {email, non_email, by_medium}, "external_ids":
    {provider: n}, "devices", "devices_migrated", "access_tokens",
    "refresh_tokens"}, "synapse_database", "mas_database", "comment"}``.

    mapdata
        The formula's map (default: computed from pillar).
    ignore_missing_auth_providers
        Links to providers missing from Synapse's config become warnings
        (default ``mas:syn2mas:ignore_missing_auth_providers``).

    CLI Example:

    .. code-block:: bash

        salt-call mas_syn2mas.preflight
    """
    ctx = _prepare(mapdata, {"ignore_missing_auth_providers": ignore_missing_auth_providers})
    started = time.monotonic()
    found = _preflight(ctx["mas"], ctx["opts"], ctx["marker"], ctx["files"], ctx["conf"], ctx["secrets"])
    errors = ctx["file_problems"] + found.pop("errors")
    seconds = round(time.monotonic() - started, 3)
    users = (found["counts"].get("users") or {}).get("local")
    comment = f"syn2mas preflight {'passed' if not errors else 'failed'} in {seconds} s"
    if users is not None:
        comment += f" ({users} local users)"
    return _result(
        not errors,
        _phase(ctx["marker"]),
        comment,
        errors=errors,
        warnings=found.pop("warnings"),
        seconds=seconds,
        **found,
    )


# --------------------------------------------------------------------------
# Backup: pg_dump -Fc of Synapse's database before the point of no return
# --------------------------------------------------------------------------

#: Kept free on top of the estimated size of a backup.
_BACKUP_MARGIN = 16 * 1024 * 1024


def _human(size):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"  # pragma: no cover


def _pg_dump():
    """The ``pg_dump`` binary (PATH, else the newest of Debian's versioned ones)."""
    found = shutil.which("pg_dump")
    if found:
        return found
    for candidate in sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin/pg_dump"), reverse=True):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise CommandExecutionError(
        "pg_dump is not installed: install PostgreSQL's client tools (postgresql-client), or set "
        "mas:syn2mas:backup: false and take the backup yourself"
    )


def _backup_plan(mas, opts, database, secrets):
    """Check the backup directory and its free space before anything stops: ``(plan, problems)``."""
    directory = opts.get("backup_dir")
    if not directory:
        return None, [
            "mas:syn2mas:backup_dir is not set: a real migration first takes a pg_dump of Synapse's database. Set "
            "it (e.g. /var/backups/matrix-synapse), or say mas:syn2mas:backup: false to migrate without one"
        ]
    if database["engine"] != "postgres":
        return None, [f"Synapse's {database['label']} is not PostgreSQL: nothing pg_dump can back up"]
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".mas-formula-probe-", dir=directory)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        return None, [
            f"the backup directory {directory} (mas:syn2mas:backup_dir) is not writable: {exc.strerror}. Choose "
            "another one, or say mas:syn2mas:backup: false"
        ]
    try:
        with _connect(database, secrets) as (_, conn):
            (estimate,) = _rows(
                conn,
                "SELECT coalesce(sum(pg_table_size(c.oid)), 0)::bigint FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'm') "
                "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'",
            )[0]
            conn.rollback()
    except (Unreachable, *_db_errors()) as exc:
        return None, [f"the size of Synapse's database cannot be read before its backup: {exc}"]
    stats = os.statvfs(directory)
    free = stats.f_bavail * stats.f_frsize
    need = int(estimate) + _BACKUP_MARGIN
    if free < need:
        return None, [
            f"the backup directory {directory} (mas:syn2mas:backup_dir) has {_human(free)} free; the backup of "
            f"Synapse's {database['label']} needs up to {_human(need)} (its tables, uncompressed). Free space or "
            "choose another directory"
        ]
    return {"dir": directory, "estimate": int(estimate), "free": free}, []


def _dump_target(database):
    """``(conninfo without password, password or None, database name)`` for pg_dump."""
    params = dict(database["connect"])
    if "conninfo" in params:
        params = dict(_pg().conninfo.conninfo_to_dict(params.pop("conninfo")), **params)
    password = params.pop("password", None)
    params = {key: str(value) for key, value in params.items() if value not in (None, "")}
    return _pg().conninfo.make_conninfo(**params), password, params.get("dbname", "synapse")


def _passfile_line(password):
    escaped = str(password).replace("\\", "\\\\").replace(":", "\\:")
    return f"*:*:*:*:{escaped}\n"


def _backup(mas, opts, database, plan, secrets):
    """Write ``pg_dump -Fc`` of Synapse's database into the backup directory (0600, root), atomically.

    The password reaches pg_dump through a 0600 PGPASSFILE, never argv or the
    environment. Returns ``{path, sha256, size, database, at, seconds}``.
    """
    conninfo, password, dbname = _dump_target(database)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", dbname)
    path = os.path.join(plan["dir"], f"synapse-{name}-{stamp}.dump")
    partial = path + ".partial"
    started = time.monotonic()
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    private = tempfile.mkdtemp(prefix="mas-formula-pgpass-")
    try:
        env = {"PGAPPNAME": "mas-formula-backup"}
        if password is not None:
            passfile = os.path.join(private, "pgpass")
            descriptor = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(_passfile_line(password))
            env["PGPASSFILE"] = passfile
        argv = [_pg_dump(), "--format=custom", "--no-password", "--file", partial, "--dbname", conninfo]
        res = __salt__["cmd.run_all"](
            argv,
            python_shell=False,
            output_loglevel="quiet",
            ignore_retcode=True,
            timeout=opts["timeout"],
            env=env,
        )
        if res["retcode"] != 0:
            reason = _summary(_scrub(res.get("stderr") or res.get("stdout") or "", secrets))[-800:]
            raise CommandExecutionError(
                f"pg_dump of Synapse's {database['label']} failed (exit {res['retcode']}): {reason}"
            )
        digest = hashlib.sha256()
        with salt.utils.files.fopen(partial, "rb") as handle:
            for block in iter(lambda: handle.read(1024 * 1024), b""):
                digest.update(block)
            os.fsync(handle.fileno())
        os.chmod(partial, 0o600)
        os.rename(partial, path)
        dir_fd = os.open(plan["dir"], os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    finally:
        shutil.rmtree(private, ignore_errors=True)
    size = os.path.getsize(path)
    return {
        "path": path,
        "sha256": digest.hexdigest(),
        "size": size,
        "database": database["label"],
        "at": _now(),
        "seconds": round(time.monotonic() - started, 3),
    }


def backup(mapdata=None):
    """
    Take a backup of Synapse's database now: ``pg_dump -Fc`` into
    ``mas:syn2mas:backup_dir`` (free space checked first; the file is written
    0600 under a ``.partial`` name, then renamed), connecting like syn2mas
    (Synapse's config, or ``mas:syn2mas:synapse_database_uri``; the password
    through a private PGPASSFILE). A real migration does this by itself after
    Synapse is stopped; this is the same on its own (Synapse may run: pg_dump
    reads one consistent snapshot). The phase marker is not changed.

    Returns ``{"result", "phase", "errors", "backup": {path, sha256, size,
    database, at, seconds}, "comment"}``.

    mapdata
        The formula's map (default: computed from pillar).

    CLI Example:

    .. code-block:: bash

        salt-call mas_syn2mas.backup
    """
    ctx = _prepare(mapdata, {})
    mas, opts = ctx["mas"], dict(ctx["opts"])
    phase = _phase(ctx["marker"])
    try:
        database = _synapse_database(ctx["conf"], opts, ctx["files"])
        plan, problems = _backup_plan(mas, opts, database, ctx["secrets"])
        if problems:
            return _result(False, phase, "backup refused", errors=problems)
        taken = _backup(mas, opts, database, plan, ctx["secrets"])
    except CommandExecutionError as exc:
        return _result(False, phase, "backup failed", errors=[str(exc)])
    return _result(
        True,
        phase,
        f"backup of Synapse's {taken['database']} written to {taken['path']} ({_human(taken['size'])}, "
        f"sha256 {taken['sha256']})",
        backup=taken,
    )


# --------------------------------------------------------------------------
# Verification: what was in Synapse is in MAS (set-wise)
# --------------------------------------------------------------------------

#: Shown per kind of difference before "... and N more".
_SHOWN = 20

#: Each set is split into 1024 buckets by a 64-bit hash of its text keys; a bucket is (count, sum of another
#: 64-bit hash), computed in each database. Equal buckets are equal sets (up to a 64-bit collision); only the
#: differing ones are fetched and compared key by key, so a hash that differed between two servers would only cost
#: time, never hide a difference.
_BUCKETS = (
    "SELECT (hashtextextended(k, 1) & 1023)::int, count(*), sum(hashtextextended(k, 0)) "
    "FROM ({query}) AS s(k) GROUP BY 1"
)
_BUCKET_KEYS = "SELECT k FROM ({query}) AS s(k) WHERE (hashtextextended(k, 1) & 1023)::int = ANY(%(buckets)s)"


def _verify_queries(synapse_columns):
    """The sets compared: ``{kind: (synapse query, mas query)}``, one text key per row."""
    localpart = "substr(u.name, 2, length(u.name) - 1 - %(slen)s)"
    eligible = "u.appservice_id IS NULL AND right(u.name, %(slen)s) = %(suffix)s"
    locked = "u.locked::int" if "locked" in synapse_columns else "0"
    return {
        "users": (
            f"SELECT {localpart} || '|' || (u.admin <> 0)::int || (u.deactivated <> 0)::int || {locked} "  # noqa: S608
            f"|| (u.is_guest <> 0)::int FROM users u WHERE {eligible}",
            "SELECT username || '|' || can_request_admin::int || (deactivated_at IS NOT NULL)::int "
            "|| (locked_at IS NOT NULL)::int || is_guest::int FROM users",
        ),
        "emails": (
            f"SELECT {localpart} || '|' || t.address FROM user_threepids t JOIN users u ON u.name = t.user_id "  # noqa: S608
            f"WHERE t.medium = 'email' AND {eligible}",
            "SELECT u.username || '|' || e.email FROM user_emails e JOIN users u USING (user_id)",
        ),
        "external_ids": (
            f"SELECT {localpart} || '|' || x.auth_provider || '|' || x.external_id FROM user_external_ids x "  # noqa: S608
            f"JOIN users u ON u.name = x.user_id WHERE {eligible} AND x.auth_provider = ANY(%(mapped)s)",
            "SELECT u.username || '|' || m.idp || '|' || l.subject FROM upstream_oauth_links l "
            "JOIN users u USING (user_id) "
            "JOIN unnest(%(pids)s::uuid[], %(idps)s::text[]) AS m(pid, idp) ON m.pid = l.upstream_oauth_provider_id",
        ),
        "devices": (
            f"SELECT {localpart} || '|' || d.device_id FROM devices d JOIN users u ON u.name = d.user_id "  # noqa: S608
            f"WHERE {eligible} AND u.deactivated = 0 AND u.is_guest = 0 AND NOT coalesce(d.hidden, false) "
            "AND d.device_id <> 'guest_device'",
            "SELECT u.username || '|' || cs.device_id FROM compat_sessions cs JOIN users u USING (user_id) "
            "WHERE cs.device_id IS NOT NULL",
        ),
    }


def _buckets(conn, query, params):
    return {bucket: (n, total) for bucket, n, total in _rows(conn, _BUCKETS.format(query=query), params)}


def _keys(conn, query, params, buckets):
    return {row[0] for row in _rows(conn, _BUCKET_KEYS.format(query=query), dict(params, buckets=buckets))}


def _missing(kind, keys, mas_keys):
    """Errors naming what Synapse has and MAS lacks (first ``_SHOWN`` and a count)."""

    def shown(items):
        items = sorted(items)
        more = f" ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
        return ", ".join(items[:_SHOWN]) + more

    if not keys:
        return []
    if kind == "users":
        present = {key.split("|", 1)[0] for key in mas_keys}
        absent = sorted(key.split("|", 1)[0] for key in keys if key.split("|", 1)[0] not in present)
        differ = sorted(key.split("|", 1)[0] for key in keys if key.split("|", 1)[0] in present)
        errors = []
        if absent:
            errors.append(f"{len(absent)} Synapse users are missing in MAS: {shown(absent)}")
        if differ:
            errors.append(
                f"{len(differ)} users have another admin/deactivated/locked/guest state in MAS than in Synapse: "
                f"{shown(differ)}"
            )
        return errors
    labels = {
        "emails": ("email addresses of Synapse are missing in MAS", lambda k: ": ".join(k.split("|", 1))),
        "external_ids": (
            "upstream links of Synapse are missing in MAS",
            lambda k: "{} ({})".format(*k.split("|", 2)[:2]),
        ),
        "devices": (
            "Synapse devices have no compatibility session in MAS",
            lambda k: ": ".join(k.split("|", 1)),
        ),
    }
    text, render = labels[kind]
    return [f"{len(keys)} {text}: {shown(render(k) for k in keys)}"]


def _verify(mas, opts, conf, files, secrets):
    """Compare Synapse with MAS set-wise: ``{errors, counts, missing}`` (raises :class:`Unreachable`)."""
    server_name = conf.get("server_name") or mas.get("server_name")
    suffix = f":{server_name}"
    mapped = _mas_providers(mas)
    params = {
        "slen": len(suffix),
        "suffix": suffix,
        "mapped": sorted(mapped),
        "pids": [_ulid_uuid(pid) for pid in mapped.values()],
        "idps": list(mapped),
    }
    database = _synapse_database(conf, opts, files)
    if database["engine"] != "postgres":
        raise Unreachable(f"Synapse's {database['label']} is not PostgreSQL: syn2mas cannot have migrated it")
    errors, counts, missing = [], {"synapse": {}, "mas": {}}, {}
    with _connect(database, secrets) as (_, syn), _connect(_mas_database(mas), secrets) as (_, mas_conn):
        syn.isolation_level = _pg().IsolationLevel.REPEATABLE_READ
        mas_conn.isolation_level = _pg().IsolationLevel.REPEATABLE_READ
        queries = _verify_queries(_column_list(syn, "users"))
        # each side in its own thread (its own connection): the two databases hash at the same time
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            sides = (
                pool.submit(lambda: {kind: _buckets(syn, q[0], params) for kind, q in queries.items()}),
                pool.submit(lambda: {kind: _buckets(mas_conn, q[1], params) for kind, q in queries.items()}),
            )
            lefts, rights = sides[0].result(), sides[1].result()
        for kind, (syn_query, mas_query) in queries.items():
            left, right = lefts[kind], rights[kind]
            counts["synapse"][kind] = sum(n for n, _ in left.values())
            counts["mas"][kind] = sum(n for n, _ in right.values())
            differing = sorted(bucket for bucket in left if left[bucket] != right.get(bucket))
            if not differing:
                continue
            keys = _keys(syn, syn_query, params, differing)
            mas_keys = _keys(mas_conn, mas_query, params, differing)
            lacking = keys - mas_keys
            if lacking:
                missing[kind] = len(lacking)
                errors += _missing(kind, lacking, mas_keys)
        for table in ("access_tokens", "refresh_tokens"):
            counts["synapse"][table] = _rows(syn, f"SELECT count(*) FROM {table}")[0][0]  # noqa: S608
        for table in ("compat_sessions", "compat_access_tokens", "compat_refresh_tokens"):
            counts["mas"][table] = _rows(mas_conn, f"SELECT count(*) FROM {table}")[0][0]  # noqa: S608
        syn.rollback()
        mas_conn.rollback()
    return {"errors": errors, "counts": counts, "missing": missing}


def verify(mapdata=None, record=False):
    """
    Compare MAS with Synapse, set-wise, after a migration: every local user of
    Synapse (application-service users aside) in MAS with the same admin
    (``can_request_admin``), deactivated, locked and guest state; every email
    3PID as a MAS email; every external id of a mapped provider as an upstream
    link to that provider; every device syn2mas migrates (not hidden, of an
    active user) as a compatibility session. Users, emails, links and sessions
    created in MAS since are not differences. Each set is compared by hashed
    buckets computed in each database (no per-user round trip); only the
    buckets that differ are fetched, to name what is missing (the first 20
    and a count). Token counts are reported.

    With ``record=True`` a passing verification records the phase
    ``verified`` (after ``migrated``/``migrated_unverified``, or to record a
    migration made outside the formula), and a failing one after ``migrated``
    records ``migrated_unverified``.

    Returns ``{"result", "phase", "errors", "counts": {"synapse": {...},
    "mas": {...}}, "missing": {kind: n}, "seconds", "comment"}``.

    mapdata
        The formula's map (default: computed from pillar).
    record
        Record the outcome in the phase marker.

    CLI Example:

    .. code-block:: bash

        salt-call mas_syn2mas.verify
        salt-call mas_syn2mas.verify record=True
    """
    ctx = _prepare(mapdata, {})
    mas, marker = ctx["mas"], ctx["marker"]
    phase = _phase(marker)
    started = time.monotonic()
    try:
        found = _verify(mas, ctx["opts"], ctx["conf"], ctx["files"], ctx["secrets"])
    except (Unreachable, *_db_errors()) as exc:
        return _result(False, phase, "syn2mas verification failed", errors=[_scrub(str(exc), ctx["secrets"])])
    seconds = round(time.monotonic() - started, 3)
    ok = not found["errors"]
    changes = {}
    if record is True:
        new = None
        if ok and phase in ("legacy_auth", "migrated", "migrated_unverified"):
            new = "verified"
        elif not ok and phase == "migrated":
            new = "migrated_unverified"
        if new:
            with _exclusive(mas):
                _set_phase(mas, marker, new, verification=dict(found, at=_now(), result=ok))
            changes = {"phase": {"old": phase if marker else None, "new": new}}
            phase = new
    counts = found["counts"]
    comment = (
        f"syn2mas verification {'passed' if ok else 'FAILED'} in {seconds} s: "
        f"{counts['mas'].get('users', 0)} MAS users for {counts['synapse'].get('users', 0)} Synapse users"
    )
    return _result(
        ok,
        phase,
        comment,
        errors=found["errors"],
        counts=counts,
        missing=found["missing"],
        seconds=seconds,
        changes=changes,
    )


# --------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------


def _effective_phase(mas, marker):
    """The recorded phase; without a marker ``delegated`` when Synapse's drop-in is on disk, else ``legacy_auth``."""
    if marker is not None:
        return marker["phase"]
    return "delegated" if os.path.exists(_dropin(mas)) else "legacy_auth"


def _already(mas, marker):
    """Why a (second) migration is refused in a done phase, with the way back."""
    phase = _effective_phase(mas, marker)
    if phase == "delegated" and (marker is None or marker.get("migration") == "none"):
        return (
            "no migration is needed: Synapse already delegates to MAS "
            f"({'no syn2mas migration was ever recorded' if marker is None else 'none was needed'})"
        )
    if phase == "rolled_back":
        return f"rolled back after a migration (phase rolled_back). {_ROLLBACK}"
    done = (marker or {}).get("finished_at") or (marker or {}).get("updated_at")
    return f"already migrated (phase {phase} since {done}). {_ROLLBACK}"


def _next_step(mas, marker, phase):
    """What the operator does next in ``phase`` (status and the state comments)."""
    if phase == "delegated" and marker is None:
        return (
            f"nothing: Synapse already delegates to MAS (its drop-in {_dropin(mas)} is in place) and no "
            "syn2mas migration was ever recorded on this minion"
        )
    if phase == "delegated" and marker.get("migration") == "none":
        return "nothing: Synapse delegates to MAS; no migration was needed (Synapse had no user to migrate)"
    if phase == "rolled_back" and (marker or {}).get("migration") == "none":
        return "nothing to migrate: Synapse authenticates again (MAS was authoritative without a migration)"
    return {
        "legacy_auth": "check (mas_syn2mas.check), dry run, then migrate (state.apply mas.syn2mas)",
        "migrating": "the last migration did not finish: fix the errors and migrate again (it resumes safely)",
        "migrated_unverified": (
            "the verification found differences (`salt-call mas_syn2mas.verify`): fix MAS, then "
            "`salt-call mas_syn2mas.verify record=True`; or roll back"
        ),
        "migrated": (
            "set mas:migration_in_progress: false and apply `mas` (Synapse delegates to MAS, MAS starts); "
            "`salt-call mas_syn2mas.verify` first compares MAS with Synapse"
        ),
        "verified": "set mas:migration_in_progress: false and apply `mas` (Synapse delegates to MAS, MAS starts)",
        "delegated": "nothing: Synapse delegates to MAS",
        "rolled_back": (
            "Synapse authenticates again. To migrate again: drop and recreate MAS's database, "
            "`salt-call mas_syn2mas.reset confirm=True`, then `salt-call state.apply mas.syn2mas`"
        ),
    }[phase]


def phase(mapdata=None):
    """
    The syn2mas phase recorded on the minion: ``legacy_auth`` (also when no
    migration was ever recorded), ``migrating``, ``migrated`` or ``delegated``.
    Cheap (reads the marker only: no HTTP, no subprocess), for guards in SLS
    files, e.g. not delegating while a migration is unfinished.

    mapdata
        The formula's map (default: computed from pillar).

    CLI Example:

    .. code-block:: bash

        salt-call mas_syn2mas.phase
    """
    return _phase(_read_marker(_mapdata(mapdata)))


def status(mapdata=None, ignore_missing_auth_providers=None, stop_services=None):
    """
    The syn2mas phase and what a real migration would do now, without
    changing anything (no mas-cli is run; Synapse and MAS are probed over
    HTTP).

    Returns ``{"result": True, "phase", "recorded" (a marker exists),
    "marker", "exit_code", "errors", "warnings" (of the last real run),
    "last_run", "history", "migration_in_progress", "synapse_answers",
    "mas_answers", "blockers" (why a real migration would be refused now, before
    its ``check``), "dry_run_blockers" (the same for a dry run), "commands"
    ({check, dry_run, migrate}), "next_step", "comment"}``.

    mapdata
        The formula's map (default: computed from pillar).
    ignore_missing_auth_providers, stop_services
        Override ``mas:syn2mas:*`` for the prediction.

    CLI Example:

    .. code-block:: bash

        salt-call mas_syn2mas.status
    """
    ctx = _prepare(
        mapdata, {"ignore_missing_auth_providers": ignore_missing_auth_providers, "stop_services": stop_services}
    )
    mas, opts, marker, files, secrets = ctx["mas"], ctx["opts"], ctx["marker"], ctx["files"], ctx["secrets"]
    common, real = ctx["common"], ctx["real"]
    phase = _effective_phase(mas, marker)
    synapse_up, mas_up = _answers(_synapse_url(mas)), _answers(_mas_url(mas))
    dry_run_blockers = list(common)
    if phase in DONE_PHASES:
        dry_run_blockers.insert(0, _already(mas, marker))
    blockers = dry_run_blockers + real + _unstoppable(mas, opts, synapse_up, mas_up)
    last = (marker or {}).get("last_run") or {}
    next_step = _next_step(mas, marker, phase)
    return _result(
        True,
        phase,
        f"syn2mas phase {phase}; next: {next_step}",
        backup=(marker or {}).get("backup"),
        verification=(marker or {}).get("verification"),
        steps=(marker or {}).get("steps"),
        deprecations=mas["syn2mas"].get("deprecations", []),
        exit_code=last.get("exit_code"),
        errors=last.get("errors"),
        warnings=last.get("warnings"),
        recorded=marker is not None,
        marker=_marker_path(mas),
        last_run=last or None,
        history=(marker or {}).get("history", []),
        migration_in_progress=bool(mas.get("migration_in_progress")),
        synapse_answers=synapse_up,
        mas_answers=mas_up,
        blockers=blockers,
        dry_run_blockers=dry_run_blockers,
        next_step=next_step,
        commands={
            "check": _display(_argv(mas, opts, files, "check"), secrets),
            "dry_run": _display(_argv(mas, opts, files, "migrate", dry_run=True), secrets),
            "migrate": _display(_argv(mas, opts, files, "migrate"), secrets),
        },
    )


def ensure_synapse(start_synapse_after=None, test=False, mapdata=None):
    """
    Whether Synapse answers (``mas:synapse:endpoint``), and start it
    (``service.start`` of ``mas:synapse:service``) when it does not while it is
    still authoritative after a migration (phase ``migrated``, ``verified`` or
    ``migrated_unverified``, no drop-in) and ``start_synapse_after`` asks for
    it. ``state.apply mas.syn2mas`` calls it on every run that does not
    migrate, so that a Synapse left down is never passed over in silence.

    Returns ``{"result", "phase", "answers", "comment", "errors", "changes",
    ...}``; ``result`` is False when the start failed (``errors`` say how to
    start Synapse).

    start_synapse_after
        Start a Synapse that does not answer (default
        ``mas:syn2mas:start_synapse_after``).
    test
        Only say what would be done.
    mapdata
        The formula's map (default: computed from pillar).

    CLI Example:

    .. code-block:: bash

        salt-call mas_syn2mas.ensure_synapse
        salt-call mas_syn2mas.ensure_synapse start_synapse_after=True
    """
    mas = _mapdata(mapdata)
    opts = options(mas, start_synapse_after=start_synapse_after)
    phase = _effective_phase(mas, _read_marker(mas))
    url, name = _synapse_url(mas), mas["synapse"]["service"]
    if _answers(url):
        return _result(True, phase, f"Synapse answers at {url}", answers=True, changes={})
    down = f"Synapse does not answer at {url}"
    if phase not in ("migrated", "verified", "migrated_unverified") or os.path.exists(_dropin(mas)):
        return _result(
            True, phase, f"{down}: start it with `salt-call service.start {name}`", answers=False, changes={}
        )
    if not opts["start_synapse_after"]:
        why = f"it is still authoritative; start it with `salt-call service.start {name}`"
        if phase in MIGRATED_PHASES:
            why = (
                "it stays stopped until it delegates to MAS (mas:syn2mas:start_synapse_after is false; "
                f"`salt-call service.start {name}` starts it meanwhile, without delegation)"
            )
        return _result(True, phase, f"{down}: {why}", answers=False, changes={})
    changes = {"synapse": {"old": "not answering", "new": f"started ({name})"}}
    if test:
        return _result(
            True,
            phase,
            f"{down}: it would be started (mas:syn2mas:start_synapse_after)",
            answers=False,
            changes=changes,
        )
    if not _start([("synapse", name)], "synapse")[0]:
        return _result(
            False, phase, f"{down} and could not be started", errors=_synapse_down([name]), answers=False, changes={}
        )
    return _result(
        True,
        phase,
        f"Synapse did not answer at {url}: it was started again (service.start {name}, as "
        "mas:syn2mas:start_synapse_after asks; still without delegation)",
        answers=True,
        changes=changes,
    )


def check(mapdata=None, accept_warnings=None, ignore_missing_auth_providers=None):
    """
    :py:func:`preflight` first, then ``mas-cli syn2mas check`` (safe while
    Synapse runs; it creates MAS's schema when missing), merged into one
    report: ``errors`` and ``warnings`` of both (the preflight's first),
    ``counts`` of the preflight, ``exit_code`` of upstream.

    ``result`` is True when neither found an error and the warnings (if any)
    are accepted. Refused (nothing run) once the phase is ``migrated``,
    ``verified`` or ``delegated``. Without ``bin/mas-cli`` (MAS not applied
    yet) the preflight alone answers, with that as an error.

    mapdata
        The formula's map (default: computed from pillar).
    accept_warnings
        Count warnings as acceptable (default ``mas:syn2mas:accept_warnings``).
    ignore_missing_auth_providers
        Pass ``--ignore-missing-auth-providers`` (default from pillar).

    CLI Example:

    .. code-block:: bash

        salt-call mas_syn2mas.check
        salt-call mas_syn2mas.check accept_warnings=True
    """
    ctx = _prepare(
        mapdata, {"accept_warnings": accept_warnings, "ignore_missing_auth_providers": ignore_missing_auth_providers}
    )
    mas, opts, marker = ctx["mas"], ctx["opts"], ctx["marker"]
    phase = _phase(marker)
    if phase in DONE_PHASES:
        return _result(False, phase, "syn2mas check refused", errors=[_already(mas, marker)])
    pre = _preflight(mas, opts, marker, ctx["files"], ctx["conf"], ctx["secrets"])
    pre["errors"] = ctx["file_problems"] + pre["errors"]
    extra = {"counts": pre["counts"], "notes": pre["notes"]}
    if ctx["common"][len(ctx["file_problems"]) :]:
        errors = pre["errors"] + ctx["common"][len(ctx["file_problems"]) :]
        return _result(False, phase, "syn2mas check refused", errors=errors, warnings=pre["warnings"], **extra)
    argv = _argv(mas, opts, ctx["files"], "check")
    run = _run(mas, argv, opts, ctx["files"], ctx["secrets"])
    ok, errors, warnings, comment = _merge_check(pre, run, opts["accept_warnings"], phase)
    return _result(
        ok,
        phase,
        comment,
        exit_code=run["exit_code"],
        errors=errors,
        warnings=warnings,
        summary=run["summary"],
        command=_display(argv, ctx["secrets"]),
        **extra,
    )


def migrate(
    dry_run=None,
    accept_warnings=None,
    ignore_missing_auth_providers=None,
    stop_services=None,
    start_synapse_after=None,
    mapdata=None,
):
    """
    Migrate Synapse's users into MAS with ``mas-cli syn2mas migrate``, once,
    with a backup before and a verification after.

    **Dry run** (``dry_run=True``): :py:func:`preflight`, then ``migrate
    --dry-run`` (safe while Synapse runs: MAS's tables are emptied again);
    the phase never changes. ``result`` is True when it completed and its
    warnings (if any) are accepted.

    **Real migration**, refused (``result: False``, nothing touched) unless:
    the phase is ``legacy_auth`` or ``migrating`` (a finished migration is
    never run again: see the rollback in ``errors``),
    ``mas:migration_in_progress`` is true and Synapse's drop-in is absent, a
    backup directory is set (``mas:syn2mas:backup_dir``, or
    ``mas:syn2mas:backup: false``), and the preflight and ``syn2mas check``
    pass (run first, while Synapse still serves; warnings need
    ``accept_warnings``) and the backup directory is writable with room for the
    backup. Then, step by step (each logged with its duration and listed in
    ``steps``): **stop** Synapse (``mas:synapse:service``) and a managed MAS
    (``mas:service:name``) with ``service.stop`` (``stop_services``; without it
    they must already be down, and so must a MAS the formula does not manage,
    ``mas:service:manage: false``: refused before anything runs while it
    answers; neither may answer over HTTP after the stop), **backup**
    (``pg_dump -Fc``, its sha256 and size recorded in the marker; a failed
    backup starts Synapse again and changes nothing), **migrate** (the phase is
    ``migrating`` while it runs), **verify** (:py:func:`verify`: the phase
    becomes ``verified``, or ``migrated_unverified`` with the differences),
    **start**. After a verified migration Synapse stays stopped unless
    ``start_synapse_after``: the next step is ``mas:migration_in_progress:
    false`` and ``state.apply mas``. Whenever the run fails after the stop,
    Synapse (still authoritative) is started again, or ``errors`` say that it
    is down and how to start it; MAS stays stopped. A Synapse this run did not
    stop and that does not answer is named in the comment (and started after a
    verified migration with ``start_synapse_after``). A failed migrate keeps
    the phase ``migrating``; the next run retries (syn2mas resets the partial
    migration).

    Every argument defaults to pillar ``mas:syn2mas:<name>``.

    dry_run
        Run ``migrate --dry-run`` instead.
    accept_warnings
        Migrate despite warnings (preflight, and exit 11 of ``check``).
    ignore_missing_auth_providers
        Pass ``--ignore-missing-auth-providers`` (links of providers absent
        from Synapse's config are dropped).
    stop_services
        Stop Synapse and a managed MAS before a real migration.
    start_synapse_after
        Start Synapse again after a successful migration (still without
        delegation: logins made then are not in MAS).
    mapdata
        The formula's map (default: computed from pillar).

    CLI Example:

    .. code-block:: bash

        salt-call mas_syn2mas.migrate dry_run=True
        salt-call mas_syn2mas.migrate
        salt-call mas_syn2mas.migrate accept_warnings=True
    """
    overrides = {
        "dry_run": dry_run,
        "accept_warnings": accept_warnings,
        "stop_services": stop_services,
        "ignore_missing_auth_providers": ignore_missing_auth_providers,
        "start_synapse_after": start_synapse_after,
    }
    ctx = _prepare(mapdata, overrides)
    mas, marker = ctx["mas"], ctx["marker"]
    phase = _phase(marker)
    if ctx["opts"]["dry_run"]:
        return _dry_run(ctx)
    if phase in DONE_PHASES:
        return _result(False, phase, "syn2mas migration refused: already migrated", errors=[_already(mas, marker)])
    opts = ctx["opts"]
    refusals = ctx["common"] + ctx["real"]
    refusals += _unstoppable(
        mas, opts, not opts["stop_services"] and _answers(_synapse_url(mas)), _answers(_mas_url(mas))
    )
    if refusals:
        return _result(False, phase, "syn2mas migration refused (nothing was run or stopped)", errors=refusals)
    with _exclusive(mas):
        return _migrate(ctx)


def _dry_run(ctx):
    mas, opts, marker, files, secrets = ctx["mas"], ctx["opts"], ctx["marker"], ctx["files"], ctx["secrets"]
    phase = _phase(marker)
    if phase in DONE_PHASES:
        return _result(False, phase, "syn2mas dry run refused", errors=[_already(mas, marker)], dry_run=True)
    if ctx["common"]:
        return _result(False, phase, "syn2mas dry run refused", errors=ctx["common"], dry_run=True)
    pre = _preflight(mas, opts, marker, files, ctx["conf"], secrets)
    if pre["errors"]:
        return _result(
            False,
            phase,
            "syn2mas dry run refused: the preflight found blocking errors",
            errors=pre["errors"],
            warnings=pre["warnings"],
            counts=pre["counts"],
            dry_run=True,
        )
    argv = _argv(mas, opts, files, "migrate", dry_run=True)
    run = _run(mas, argv, opts, files, secrets)
    errors = list(run["errors"])
    warnings = pre["warnings"] + [w for w in run["warnings"] if w not in pre["warnings"]]
    ok = run["exit_code"] == EXIT_OK
    if ok and warnings and not opts["accept_warnings"]:
        errors.append(
            f"the dry run completed with {len(warnings)} warning(s): a real migration is refused until "
            "they are accepted (accept_warnings=True, pillar mas:syn2mas:accept_warnings: true)"
        )
    hint = _hint(errors, phase)
    if hint:
        errors.append(hint)
    comment = "syn2mas dry run completed (phase unchanged)"
    if not ok:
        comment = f"syn2mas dry run failed ({_ended(run['exit_code'])})"
    return _result(
        ok and not errors,
        phase,
        comment,
        exit_code=run["exit_code"],
        errors=errors,
        warnings=warnings,
        summary=run["summary"],
        counts=pre["counts"],
        dry_run=True,
        command=_display(argv, secrets),
    )


def _stop(mas, opts):
    """Stop Synapse and a managed MAS (when they run): ``(stopped, problems)``."""
    stopped, problems = [], []
    if not opts["stop_services"]:
        return stopped, problems
    targets = [("synapse", mas["synapse"]["service"], _synapse_url(mas), "mas:synapse:service")]
    if mas["service"]["manage"]:
        targets.append(("mas", mas["service"]["name"], _mas_url(mas), "mas:service:name"))
    for kind, name, url, key in targets:
        if __salt__["service.status"](name) or _answers(url):
            if __salt__["service.stop"](name):
                stopped.append((kind, name))
            else:
                problems.append(
                    f"service.stop {name} failed: {'Synapse' if kind == 'synapse' else 'MAS'} could not be stopped. "
                    f"Is {key} ({name!r}) the right service? Or stop it yourself and set "
                    "mas:syn2mas:stop_services: false"
                )
    return stopped, problems


def _unstoppable(mas, opts, synapse_up, mas_up):
    """Synapse or MAS answering that a real run would not stop: refused before anything runs or stops."""
    problems = []
    if synapse_up and not opts["stop_services"]:
        problems.append(
            f"Synapse answers at {_synapse_url(mas)}: stop it yourself first (mas:syn2mas:stop_services is false)"
        )
    if mas_up and not opts["stop_services"]:
        problems.append(f"MAS answers at {_mas_url(mas)}: stop it yourself first (mas:syn2mas:stop_services is false)")
    elif mas_up and not mas["service"]["manage"]:
        problems.append(
            f"MAS answers at {_mas_url(mas)} and the formula does not manage its service (mas:service:manage is "
            "false), so it will not stop it: stop MAS yourself, then migrate (syn2mas needs MAS stopped: it renames "
            "and fills MAS's tables)"
        )
    return problems


def _still_answering(mas, opts, stopped):
    """Problems: Synapse or MAS still answering (after waiting for a stop)."""
    deadline = time.monotonic() + (opts["stop_timeout"] if stopped else 0)
    while True:
        up = [(what, url) for what, url in (("Synapse", _synapse_url(mas)), ("MAS", _mas_url(mas))) if _answers(url)]
        if not up or time.monotonic() >= deadline:
            break
        time.sleep(1)
    ours = {kind for kind, _ in stopped}
    problems = []
    for what, url in up:
        if what.lower() in ours:
            how = "after service.stop"
        elif not opts["stop_services"]:
            how = "(mas:syn2mas:stop_services is false: stop it yourself)"
        elif what == "MAS" and not mas["service"]["manage"]:
            how = "(mas:service:manage is false: stop it yourself)"
        else:
            how = "(it started while this run stopped the services: stop it)"
        problems.append(
            f"{what} still answers at {url} {how}; a real migration needs it stopped (Synapse: a consistent copy; "
            "MAS: an untouched database)"
        )
    return problems


def _start(stopped, kind):
    """Start the services of ``kind`` in ``stopped``: ``(started, still_down)``."""
    started, down = [], []
    for what, name in stopped:
        if what == kind:
            if __salt__["service.start"](name):
                started.append(name)
            else:
                log.warning("mas_syn2mas: service.start %s failed", name)
                down.append(name)
    return started, down


def _synapse_down(names):
    """The error saying Synapse stayed down, and how to start it."""
    return [
        f"Synapse is DOWN: service.start {name} failed. It is still authoritative (no drop-in): start it with "
        f"`salt-call service.start {name}` (systemctl start {name}) and read its log"
        for name in names
    ]


def _synapse_not_running(mas):
    """The sentence saying that Synapse does not answer though this run did not stop it."""
    name = mas["synapse"]["service"]
    return (
        f" Synapse does not answer at {_synapse_url(mas)} (this run did not stop it): it is still authoritative; "
        f"start it with `salt-call service.start {name}`."
    )


def _verification(mas, opts, conf, files, secrets):
    """:py:func:`_verify`, with an unreadable database as an error of the verification."""
    try:
        return _verify(mas, opts, conf, files, secrets)
    except (Unreachable, *_db_errors()) as exc:
        return {"errors": [f"the verification could not run: {_scrub(str(exc), secrets)}"], "counts": {}, "missing": {}}


def _migrate(ctx):
    mas, opts, marker, files, conf, secrets = (
        ctx["mas"],
        ctx["opts"],
        ctx["marker"],
        ctx["files"],
        ctx["conf"],
        ctx["secrets"],
    )
    phase_before = _phase(marker)
    steps = _Steps()
    services = {"stopped": [], "started": [], "down": []}
    stopped = []

    def synapse_after(asked=False):
        """Start the Synapse this run stopped (``asked``: also one found down, for start_synapse_after) and say
        where Synapse stands: a sentence for the comment ("" when it answers and nothing happened to it)."""
        targets = [entry for entry in stopped if entry[0] == "synapse"]
        if not targets and asked and not _answers(_synapse_url(mas)):
            targets = [("synapse", mas["synapse"]["service"])]
        if targets:
            services["started"], services["down"] = steps.run(
                "start", _start, targets, "synapse", ok=lambda started: not started[1]
            )
        if services["down"]:
            return f" Synapse is DOWN: service.start {services['down'][0]} failed."
        if services["started"]:
            return " Synapse (still authoritative) was started again."
        return "" if _answers(_synapse_url(mas)) else _synapse_not_running(mas)

    def refused(comment, errors, warnings=(), **extra):
        after = synapse_after()
        return _result(
            False,
            phase_before,
            f"syn2mas migration refused: {comment}.{after} {steps.text()}",
            errors=list(errors) + _synapse_down(services["down"]),
            warnings=warnings,
            steps=steps,
            phase_before=phase_before,
            services=services,
            **extra,
        )

    pre = steps.run(
        "preflight", _preflight, mas, opts, marker, files, conf, secrets, ok=lambda found: not found["errors"]
    )
    if pre["errors"]:
        return refused("the preflight found blocking errors", pre["errors"], pre["warnings"], counts=pre["counts"])
    check_run = steps.run(
        "check",
        _run,
        mas,
        _argv(mas, opts, files, "check"),
        opts,
        files,
        secrets,
        ok=lambda run: run["exit_code"] in (EXIT_OK, EXIT_WARNINGS),
    )
    ok, errors, warnings, comment = _merge_check(pre, check_run, opts["accept_warnings"], phase_before)
    if not ok:
        return refused(comment, errors, warnings, exit_code=check_run["exit_code"], summary=check_run["summary"])
    database = _synapse_database(conf, opts, files)
    plan = None
    if opts["backup"]:
        plan, problems = steps.run(
            "backup check", _backup_plan, mas, opts, database, secrets, ok=lambda planned: not planned[1]
        )
        if problems:
            return refused("no room for the backup (nothing was stopped)", problems, warnings)
    stopped, running = steps.run("stop", _stop, mas, opts, ok=lambda done: not done[1])
    services["stopped"] = [name for _, name in stopped]
    running += _still_answering(mas, opts, stopped)
    if running:
        refusal = refused("services still running", running, warnings)
        services["started"] += _start(stopped, "mas")[0]
        return refusal
    taken = None
    if plan is not None:
        try:
            taken = steps.run("backup", _backup, mas, opts, database, plan, secrets)
        except CommandExecutionError as exc:
            return refused("the backup failed, nothing was migrated", [str(exc)], warnings)
    else:
        steps.skip("backup", "mas:syn2mas:backup is false")
    argv = _argv(mas, opts, files, "migrate")
    record = {
        "mas_config": mas["paths"]["config_file"],
        "synapse_configs": files,
        "command": _display(argv, secrets),
        "accepted_warnings": warnings,
        "backup": taken,
        "preflight_counts": pre["counts"],
    }
    marker = _set_phase(mas, marker, "migrating", started_at=_now(), finished_at=None, **record)
    run = steps.run("migrate", _run, mas, argv, opts, files, secrets, ok=lambda done: done["exit_code"] == EXIT_OK)
    last = {
        "at": _now(),
        "exit_code": run["exit_code"],
        "result": run["exit_code"] == EXIT_OK,
        "errors": run["errors"],
        "warnings": run["warnings"],
        "summary": run["summary"],
    }
    common = {
        "exit_code": run["exit_code"],
        "summary": run["summary"],
        "phase_before": phase_before,
        "services": services,
        "steps": steps,
        "command": record["command"],
        "backup": taken,
    }
    if run["exit_code"] != EXIT_OK:
        marker = _set_phase(mas, marker, "migrating", last_run=last)
        errors = list(run["errors"]) or [_ended(run["exit_code"])]
        hint = _hint(errors, "migrating")
        if hint:
            errors.append(hint)
        after = synapse_after()
        _set_phase(mas, marker, "migrating", steps=list(steps))
        return _result(
            False,
            "migrating",
            f"syn2mas migration failed: {_ended(run['exit_code'])}; the phase stays migrating and the next run "
            f"retries (syn2mas resets the partial migration).{after} MAS stays stopped. {steps.text()}",
            errors=errors + _synapse_down(services["down"]),
            warnings=run["warnings"],
            **common,
        )
    verification = steps.run(
        "verify", _verification, mas, opts, conf, files, secrets, ok=lambda found: not found["errors"]
    )
    verified = not verification["errors"]
    phase = "verified" if verified else "migrated_unverified"
    marker = _set_phase(
        mas, marker, phase, finished_at=last["at"], last_run=last, verification=dict(verification, at=_now())
    )
    if not verified:
        after = synapse_after()
        _set_phase(mas, marker, phase, steps=list(steps))
        return _result(
            False,
            phase,
            "syn2mas migration completed but its verification FAILED: MAS lacks what Synapse has (phase "
            f"migrated_unverified; Synapse must not delegate yet).{after} MAS stays stopped. Next: "
            f"{_next_step(mas, marker, phase)}. {steps.text()}",
            errors=verification["errors"] + _synapse_down(services["down"]),
            warnings=run["warnings"],
            verification=verification,
            **common,
        )
    next_step = "set mas:migration_in_progress: false and apply `mas` (Synapse delegates to MAS, MAS starts)"
    after = ""
    if opts["start_synapse_after"]:
        after = synapse_after(asked=True)
    else:
        steps.skip("start", "Synapse stays stopped until it delegates to MAS (mas:syn2mas:start_synapse_after)")
        if not _answers(_synapse_url(mas)):
            next_step += "; Synapse stays stopped until then"
    _set_phase(mas, marker, phase, steps=list(steps))
    where = f" Backup: {taken['path']} ({_human(taken['size'])})." if taken else " No backup (mas:syn2mas:backup)."
    return _result(
        not services["down"],
        phase,
        f"syn2mas migration completed and verified.{where} Next: {next_step}.{after} {steps.text()}",
        errors=_synapse_down(services["down"]),
        warnings=run["warnings"],
        verification=verification,
        **common,
    )


# --------------------------------------------------------------------------
# Guards of `state.apply mas`: no lock-out, no silent rollback
# --------------------------------------------------------------------------

_MIGRATE_FIRST = (
    "Migrate first: set mas:migration_in_progress: true and apply `mas`, then check, back up and migrate "
    "(`salt-call state.apply mas.syn2mas`; README, 'Migrating an existing Synapse')"
)

_NOT_DELEGABLE = {
    "legacy_auth": (
        "the syn2mas phase was reset to legacy_auth (mas_syn2mas.reset): Synapse's users are not in MAS. "
        + _MIGRATE_FIRST
    ),
    "migrating": (
        "the last syn2mas migration did not finish (phase migrating; `salt-call mas_syn2mas.status` shows its "
        "errors): Synapse must not delegate to MAS yet. Set mas:migration_in_progress: true, apply `mas`, then run "
        "`salt-call state.apply mas.syn2mas` again"
    ),
    "migrated_unverified": (
        "the migration finished but its verification found Synapse users, emails, links or devices missing in MAS "
        "(phase migrated_unverified; `salt-call mas_syn2mas.verify` lists them): delegating now would lock them "
        "out. Fix MAS, then `salt-call mas_syn2mas.verify record=True` records `verified`; or roll back (README)"
    ),
    "rolled_back": (
        "Synapse was made authoritative again after the migration (phase rolled_back): users and sessions created "
        "in Synapse since are not in MAS. Migrate again: drop and recreate MAS's database, "
        "`salt-call mas_syn2mas.reset confirm=True`, then `salt-call state.apply mas.syn2mas`"
    ),
}


def _probe_login_users(mas, opts):
    """Synapse's users who can log in (``_login_users``) and the database label; raises :class:`Unreachable`."""
    files, conf, _ = _synapse_files(mas, opts)
    secrets = _known_secrets(mas, conf)
    database = _synapse_database(conf, opts, files)
    return _login_users(database, secrets), database["label"]


def _lockout(mas, opts, marker):
    """The lock-out guard's verdict: ``(ok, message, probe)``; ``probe`` is what was found in Synapse."""
    phase = _phase(marker)
    fresh_again = phase == "rolled_back" and (marker or {}).get("migration") == "none"
    if marker is not None and not fresh_again:
        if phase in MIGRATED_PHASES + ("delegated",):
            return True, f"Synapse's users are in MAS (syn2mas phase {phase})", None
        return False, _NOT_DELEGABLE[phase], None
    try:
        users, label = _probe_login_users(mas, opts)
    except Unreachable as exc:
        if opts["assume_fresh"]:
            return (
                True,
                f"Synapse's database was not checked ({exc}); mas:syn2mas:assume_fresh is true",
                {"assumed_fresh": True},
            )
        return (
            False,
            f"{exc}: the formula cannot tell whether delegating to MAS would lock Synapse's users out. Fix that "
            "and apply again; on a new homeserver without users, set mas:syn2mas:assume_fresh: true",
            None,
        )
    if users["total"]:
        return (
            False,
            f"Synapse's {label} holds {users['total']} users who log in with a password ({users['with_password']}) "
            f"or through an upstream provider ({users['with_external_id']}), and no syn2mas migration is recorded on "
            "this minion: delegating to MAS now would lock every one of them out (MAS does not know them). "
            f"{_MIGRATE_FIRST}. Migrated them outside the formula? `salt-call mas_syn2mas.verify record=True` "
            "records it once MAS holds them all",
            {"login_users": users, "database": label},
        )
    return (
        True,
        f"no Synapse user to lock out ({label}: no user with a password or an external id)",
        {
            "login_users": users,
            "database": label,
        },
    )


def lockout_check(mapdata=None):
    """
    The lock-out guard of ``state.apply mas`` (``mas_syn2mas.safe_to_delegate``):
    may Synapse delegate authentication to MAS now without locking its users out?

    Yes when the syn2mas phase is ``migrated``, ``verified`` or ``delegated``.
    No while a migration is unfinished, unverified, reset or rolled back. With
    no migration recorded, Synapse's database (read from its config files, or
    ``mas:syn2mas:synapse_database_uri``) is asked: any local user with a
    password or an external id (application-service, guest and deactivated
    users aside) refuses, and so does a database the formula cannot read,
    unless ``mas:syn2mas:assume_fresh`` is true. Reads only.

    Returns ``{"result", "phase", "errors", "warnings", "comment", "probe"}``.

    mapdata
        The formula's map (default: computed from pillar).

    CLI Example:

    .. code-block:: bash

        salt-call mas_syn2mas.lockout_check
    """
    mas = _mapdata(mapdata)
    opts = options(mas)
    marker = _read_marker(mas)
    ok, message, probe = _lockout(mas, opts, marker)
    warnings = [message] if ok and (probe or {}).get("assumed_fresh") else []
    return _result(
        ok,
        _phase(marker),
        message if ok else "delegating to MAS refused: it would lock Synapse's users out",
        errors=[] if ok else [message],
        warnings=warnings,
        probe=probe,
    )


def _rollback_target(mas, marker):
    """``(delegated, since)``: whether Synapse delegates (recorded or on disk) and since when MAS is authoritative."""
    dropin = os.path.exists(_dropin(mas))
    phase = _phase(marker)
    if marker is not None and phase == "delegated":
        since = None if marker.get("migration") == "none" else marker.get("finished_at")
        return dropin, since
    if marker is not None and phase in MIGRATED_PHASES and dropin:  # delegating, the record missed
        return True, marker.get("finished_at")
    if marker is None and dropin:  # delegated before the formula kept a marker: since the drop-in was written
        written = datetime.datetime.fromtimestamp(os.path.getmtime(_dropin(mas)), datetime.UTC)
        return True, written.isoformat(timespec="seconds")
    return False, None


def rollback_check(mapdata=None):
    """
    The silent-rollback guard of ``state.apply mas`` (``mas_syn2mas.safe_to_roll_back``):
    may Synapse become authoritative again (``mas:migration_in_progress:
    true`` or ``mas:enabled: false``) without breaking what MAS alone knows?

    Only asked while Synapse delegates to MAS (phase ``delegated``, or its
    drop-in with no marker). MAS's database is counted: users created since
    the migration (all of them when none was needed; without a marker: since
    the drop-in was last written) and active sessions (compatibility and
    OAuth 2.0) created since then. Any of them refuses,
    naming the numbers, unless ``mas:syn2mas:force_rollback`` is true; so does
    a MAS database the formula cannot read. Reads only.

    Returns ``{"result", "phase", "errors", "warnings", "comment", "counts"}``.

    mapdata
        The formula's map (default: computed from pillar).

    CLI Example:

    .. code-block:: bash

        salt-call mas_syn2mas.rollback_check
    """
    mas = _mapdata(mapdata)
    opts = options(mas)
    marker = _read_marker(mas)
    phase = _phase(marker)
    delegating, since = _rollback_target(mas, marker)
    if not delegating:
        return _result(True, phase, f"Synapse does not delegate to MAS (syn2mas phase {phase}): nothing to roll back")
    why = "mas:enabled is false" if not mas.get("enabled") else "mas:migration_in_progress is true"
    when = "since MAS became authoritative"
    if since and marker is None:
        when = f"since Synapse's drop-in was written ({since})"
    elif since:
        when = f"since the migration ({since})"
    force = "set mas:syn2mas:force_rollback: true to roll back anyway"
    try:
        counts = _mas_created_since(_mas_database(mas), since, _known_secrets(mas, {}))
    except Unreachable as exc:
        message = (
            f"{why}, so Synapse would become authoritative again, but {exc}: the formula cannot count the users "
            f"and sessions that exist only in MAS. Fix that and apply again, or {force}"
        )
        if opts["force_rollback"]:
            return _result(True, phase, f"rollback forced (mas:syn2mas:force_rollback): {message}", warnings=[message])
        return _result(False, phase, "rollback refused", errors=[message])
    broken = counts["users"] or counts["sessions"]
    message = (
        f"{why}: Synapse would become authoritative again and {counts['users']} users and {counts['sessions']} "
        f"sessions created in MAS {when} would break (they exist only in MAS: the seed's reversibility warning)"
    )
    if broken and not opts["force_rollback"]:
        return _result(
            False,
            phase,
            "rollback refused",
            errors=[f"{message}. Keep MAS authoritative, or {force}"],
            counts=counts,
        )
    if broken:
        return _result(
            True, phase, f"rollback forced (mas:syn2mas:force_rollback): {message}", warnings=[message], counts=counts
        )
    return _result(True, phase, f"{why}: MAS holds no user or session created {when}; nothing breaks", counts=counts)


def mark_rolled_back(mapdata=None):
    """
    Record the ``rolled_back`` phase once Synapse is authoritative again
    after a delegation (its drop-in removed), so that
    :py:func:`status` tells the truth. Nothing to do otherwise.

    mapdata
        The formula's map (default: computed from pillar).

    CLI Example:

    .. code-block:: bash

        salt-call mas_syn2mas.mark_rolled_back
    """
    mas = _mapdata(mapdata)
    marker = _read_marker(mas)
    phase = _phase(marker)
    if phase != "delegated" or os.path.exists(_dropin(mas)):
        return _result(True, phase, f"nothing to record (syn2mas phase {phase})", changes={})
    opts = options(mas)
    why = "mas:enabled: false" if not mas.get("enabled") else "mas:migration_in_progress: true"
    with _exclusive(mas):
        _set_phase(mas, marker, "rolled_back", rolled_back_at=_now(), rolled_back_by=why, forced=opts["force_rollback"])
    return _result(
        True,
        "rolled_back",
        f"syn2mas phase rolled_back recorded ({why}): Synapse authenticates again",
        changes={"phase": {"old": phase, "new": "rolled_back"}},
    )


def _mas_leftovers(mas):
    """Why MAS's database cannot take another migration (the earlier one is still there), or None."""
    database = _mas_database(mas)
    db = mas["database"]
    recreate = (
        f'Drop and recreate that database first (as PostgreSQL\'s superuser: `DROP DATABASE "{db["name"]}";` then '
        f'`CREATE DATABASE "{db["name"]}" OWNER "{db["user"]}";`, or apply `mas` with mas:database:manage: '
        "true after the DROP), then run the reset again"
    )
    secrets = _known_secrets(mas, None)
    try:
        with _connect(database, secrets) as (_, conn):
            contents = _mas_contents(conn)
            conn.rollback()
    except (Unreachable, *_db_errors()) as exc:
        reason = _scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, secrets)
        return (
            f"{reason}: the reset must see MAS's database empty first. Make it reachable (recreated, empty, if it "
            "was dropped), then run the reset again"
        )
    if not contents["filled"] and not contents["partial"]:
        return None
    held = f"rows in {', '.join(contents['filled'])} ({contents['users']} users)" if contents["filled"] else ""
    if contents["partial"]:
        held += ("; " if held else "") + "a partial syn2mas migration (its syn2mas_restore_* and syn2mas__* tables)"
    return (
        f"{database['label']} still holds the earlier migration: {held}. syn2mas refuses to migrate into it. {recreate}"
    )


def reset(confirm=False, mapdata=None):
    """
    Set the phase back to ``legacy_auth`` so that syn2mas can run again (the
    history is kept). Only for a rollback: first make Synapse authoritative
    again (``mas:migration_in_progress: true``, apply ``mas``), then drop and
    recreate MAS's database. Refused without ``confirm=True``, while
    ``mas:migration_in_progress`` is false, and while MAS's database still
    holds the earlier migration (or cannot be read): the refusal names the
    database to drop.

    confirm
        Must be True.
    mapdata
        The formula's map (default: computed from pillar).

    CLI Example:

    .. code-block:: bash

        salt-call mas_syn2mas.reset confirm=True
    """
    mas = _mapdata(mapdata)
    try:
        marker = _read_marker(mas)
        phase = _phase(marker)
    except CommandExecutionError:
        marker, phase = {"version": MARKER_VERSION, "history": [], "phase": "legacy_auth"}, "unreadable"
    if confirm is not True:
        return _result(
            False,
            phase,
            "syn2mas reset refused",
            errors=[
                "resetting the phase lets syn2mas run again: pass confirm=True once MAS's database "
                "has been dropped and recreated"
            ],
        )
    if not mas.get("migration_in_progress"):
        return _result(
            False,
            phase,
            "syn2mas reset refused",
            errors=[
                "mas:migration_in_progress is false (Synapse delegates to MAS): set it to true and apply `mas` first"
            ],
        )
    if marker is None or phase == "legacy_auth":
        return _result(True, "legacy_auth", "syn2mas phase is already legacy_auth", changes={})
    leftover = _mas_leftovers(mas)
    if leftover:
        return _result(False, phase, "syn2mas reset refused (the phase is unchanged)", errors=[leftover])
    with _exclusive(mas):
        _set_phase(mas, marker, "legacy_auth", reset_at=_now(), reset_from=phase)
    return _result(
        True,
        "legacy_auth",
        f"syn2mas phase reset from {phase} to legacy_auth",
        changes={"phase": {"old": phase, "new": "legacy_auth"}},
    )


def mark_delegated(mapdata=None):
    """
    Record the ``delegated`` phase once ``mas:migration_in_progress`` is false
    and Synapse's drop-in is live: after a migration (phase ``migrated`` or
    ``verified``), or on a homeserver that needed none (no marker, and the
    lock-out guard finds no Synapse user who could log in: recorded with
    ``migration: none``). Later rollbacks are guarded from this record on.

    Returns ``result: True`` without change when already ``delegated``, and
    ``result: False`` when delegation would skip or outrun syn2mas (phase
    ``migrating``, ``migrated_unverified``, ``rolled_back`` or a reset
    ``legacy_auth``, or Synapse users but no migration).

    mapdata
        The formula's map (default: computed from pillar).

    CLI Example:

    .. code-block:: bash

        salt-call mas_syn2mas.mark_delegated
    """
    mas = _mapdata(mapdata)
    marker = _read_marker(mas)
    phase = _phase(marker)
    if phase == "delegated":
        return _result(True, phase, "syn2mas phase is already delegated", changes={})
    if mas.get("migration_in_progress"):
        return _result(False, phase, "delegated refused", errors=["mas:migration_in_progress is still true"])
    if not os.path.exists(_dropin(mas)):
        return _result(
            False,
            phase,
            "delegated refused",
            errors=[f"Synapse's drop-in {_dropin(mas)} is not there yet: apply `mas`"],
        )
    ok, message, probe = _lockout(mas, options(mas), marker)
    if not ok:
        return _result(False, phase, "delegated refused", errors=[message])
    fields = {"delegated_at": _now()}
    if probe is not None:  # no migration was needed (a new homeserver)
        fields.update(migration="none", finished_at=None, fresh_check=probe)
    old = phase if marker is not None else None
    with _exclusive(mas):
        _set_phase(mas, marker, "delegated", **fields)
    comment = "syn2mas phase delegated recorded"
    if probe is not None:
        comment += f" (no migration needed: {message})"
    return _result(True, "delegated", comment, changes={"phase": {"old": old, "new": "delegated"}})
