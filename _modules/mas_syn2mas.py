"""
syn2mas for the ``mas`` formula: move Synapse's users into MAS, once.

MAS's ``mas-cli syn2mas`` copies users, passwords, emails, upstream links and
sessions from Synapse's database into an *empty* MAS database. It can only
succeed once: a second run fails inside MAS ("The MAS database is not empty"),
a run against a live Synapse gives an inconsistent copy, and a run killed
half-way leaves a partial migration behind. This module wraps it with a
persisted **phase marker** (``<mas:base_path>/formula/syn2mas.json``,
root-owned, 0600, written atomically) and guards:

``legacy_auth``
    Synapse authenticates (``mas:migration_in_progress: true``, no drop-in).
    No marker file means this phase.
``migrating``
    Written just before a real ``migrate`` starts. It stays there when the run
    fails; the next run retries (syn2mas resets a partial migration itself).
``migrated``
    The migration succeeded. Another migration is refused by the formula,
    before MAS is asked.
``delegated``
    ``mas:migration_in_progress`` is false and Synapse's drop-in is live
    (:py:func:`mark_delegated`).

Public functions: :py:func:`options`, :py:func:`phase`, :py:func:`status`,
:py:func:`check`, :py:func:`migrate` (``dry_run``), :py:func:`reset`,
:py:func:`mark_delegated`. The last five return a dict automation can gate
on: ``{"result", "phase", "exit_code", "errors", "warnings", "comment",
...}``; a refusal is ``result: False`` with the reason in ``errors`` (and
``salt-call`` exits 1).

``mas-cli`` runs through the formula's ``bin/mas-cli`` wrapper with
``syn2mas --synapse-config <file>... check|migrate [--dry-run]``. Its output is
scrubbed of every secret the minion knows (MAS's secret files, the secrets in
Synapse's config and in pillar ``mas``, passwords in URLs) before it is parsed,
returned or recorded.

:depends: requests; the ``mas``, ``mas_secret`` and ``mas_synapse`` execution modules of this formula
"""

import contextlib
import datetime
import fcntl
import json
import logging
import os
import pathlib
import re
import sqlite3
import time
import urllib.parse
import uuid

import salt.utils.data
import salt.utils.files
from salt.exceptions import CommandExecutionError, SaltInvocationError

try:
    import requests

    HAS_REQUESTS = True
except ImportError:  # pragma: no cover - depends on the minion
    HAS_REQUESTS = False

try:
    import psycopg

    HAS_PSYCOPG = True
except ImportError:  # pragma: no cover - depends on the minion
    HAS_PSYCOPG = False

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

MASK = "**********"
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
    (what ``mas/map.jinja`` gives the SLS)."""
    if mapdata is None:
        return __salt__["mas.mapdata"]()
    if not isinstance(mapdata, dict) or "paths" not in mapdata:
        raise SaltInvocationError("mapdata must be the formula's map (mas/map.jinja's mapdata)")
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
    ``synapse_database_uri``, ``timeout`` and ``stop_timeout`` (seconds).

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
    error with its ``Caused by:`` lines, or None.
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
            fatal = "\n".join(rest.rstrip() for rest in lines[index:] if rest.strip()).strip()
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


def _static_problems(mas, files):
    """What stops syn2mas before it runs: ``(any run, a real migration only)``."""
    problems = []
    if not mas.get("enabled"):
        problems.append("mas:enabled is false: deploy MAS with `state.apply mas` first")
    if not os.access(mas["paths"]["mas_cli"], os.X_OK):
        problems.append(f"{mas['paths']['mas_cli']} is missing: apply `mas` first")
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
    return problems, real


def _answers(url, timeout=3):
    """True when something answers HTTP at ``url`` (any status code)."""
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
_DB_ERRORS = (sqlite3.Error, psycopg.Error) if HAS_PSYCOPG else (sqlite3.Error,)


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
        params = psycopg.conninfo.conninfo_to_dict(opts["synapse_database_uri"]) if HAS_PSYCOPG else {}
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
        conn = psycopg.connect(conninfo, connect_timeout=10, application_name="mas-formula", **params)
    except psycopg.Error as exc:
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
    if HAS_PSYCOPG and isinstance(exc, psycopg.errors.UndefinedTable):
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
        except _DB_ERRORS as exc:
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
            except _DB_ERRORS as exc:
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
    errors, warnings, fatal = _parse(stdout, stderr)
    if fatal:
        errors.append(fatal)
    elif res["retcode"] not in (EXIT_OK, EXIT_ERRORS, EXIT_WARNINGS) and not errors:
        errors.append(f"mas-cli syn2mas exited with {res['retcode']}: {_summary(stderr or stdout)[-500:]}")
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
    """The map, options, marker, Synapse files, problems and secrets of a call.

    ``problems`` is ``(for any run, for a real migration only)``.
    """
    mas = _mapdata(mapdata)
    opts = options(mas, **overrides)
    marker = _read_marker(mas)
    files, conf, problems = _synapse_files(mas, opts)
    common, real = _static_problems(mas, files)
    secrets = _known_secrets(mas, conf)
    return mas, opts, marker, files, (problems + common, real), secrets


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
    mas, opts, marker, files, (common, real), secrets = _prepare(
        mapdata, {"ignore_missing_auth_providers": ignore_missing_auth_providers, "stop_services": stop_services}
    )
    phase = _effective_phase(mas, marker)
    synapse_up, mas_up = _answers(_synapse_url(mas)), _answers(_mas_url(mas))
    dry_run_blockers = list(common)
    if phase in DONE_PHASES:
        dry_run_blockers.insert(0, _already(mas, marker))
    blockers = dry_run_blockers + real
    if not opts["stop_services"]:
        if synapse_up:
            blockers.append(f"Synapse answers at {_synapse_url(mas)}: stop it (mas:syn2mas:stop_services is false)")
        if mas_up:
            blockers.append(f"MAS answers at {_mas_url(mas)}: stop it (mas:syn2mas:stop_services is false)")
    last = (marker or {}).get("last_run") or {}
    next_step = _next_step(mas, marker, phase)
    return _result(
        True,
        phase,
        f"syn2mas phase {phase}; next: {next_step}",
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


def check(mapdata=None, accept_warnings=None, ignore_missing_auth_providers=None):
    """
    Run ``mas-cli syn2mas check`` (safe while Synapse runs; it creates MAS's
    schema when missing) and report its errors and warnings.

    ``result`` is True with exit code 0, or 11 (warnings only) when warnings
    are accepted. Refused (nothing run) once the phase is ``migrated`` or
    ``delegated``.

    mapdata
        The formula's map (default: computed from pillar).
    accept_warnings
        Count syn2mas warnings as acceptable (default ``mas:syn2mas:accept_warnings``).
    ignore_missing_auth_providers
        Pass ``--ignore-missing-auth-providers`` (default from pillar).

    CLI Example:

    .. code-block:: bash

        salt-call mas_syn2mas.check
        salt-call mas_syn2mas.check accept_warnings=True
    """
    mas, opts, marker, files, (problems, _), secrets = _prepare(
        mapdata, {"accept_warnings": accept_warnings, "ignore_missing_auth_providers": ignore_missing_auth_providers}
    )
    phase = _phase(marker)
    if phase in DONE_PHASES:
        return _result(False, phase, "syn2mas check refused", errors=[_already(mas, marker)])
    if problems:
        return _result(False, phase, "syn2mas check refused", errors=problems)
    argv = _argv(mas, opts, files, "check")
    run = _run(mas, argv, opts, files, secrets)
    return _checked(run, phase, opts["accept_warnings"], command=_display(argv, secrets))


def _checked(run, phase, accept_warnings, **extra):
    code, errors, warnings = run["exit_code"], list(run["errors"]), run["warnings"]
    result = code == EXIT_OK or (code == EXIT_WARNINGS and accept_warnings)
    if code == EXIT_WARNINGS and not accept_warnings:
        errors.append(
            f"syn2mas reported {len(warnings)} warning(s): read them, then accept them with accept_warnings=True "
            "(pillar mas:syn2mas:accept_warnings: true)"
        )
    hint = _hint(errors, phase)
    if hint:
        errors.append(hint)
    comment = {
        EXIT_OK: "syn2mas check passed",
        EXIT_WARNINGS: "syn2mas check passed with warnings",
        EXIT_ERRORS: "syn2mas check found blocking errors",
    }.get(code, f"syn2mas check failed (exit {code})")
    return _result(
        result, phase, comment, exit_code=code, errors=errors, warnings=warnings, summary=run["summary"], **extra
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
    Migrate Synapse's users into MAS with ``mas-cli syn2mas migrate``, once.

    **Dry run** (``dry_run=True``): ``migrate --dry-run`` (safe while Synapse
    runs: MAS's tables are emptied again); the phase never changes. ``result``
    is True when it completed and its warnings (if any) are accepted.

    **Real migration**, refused (``result: False``, nothing touched) unless:
    the phase is ``legacy_auth`` or ``migrating`` (a finished migration is never
    run again: see the rollback in ``errors``), ``mas:migration_in_progress`` is
    true and Synapse's drop-in is absent, and ``syn2mas check`` passes (run
    first, while Synapse still serves; warnings need ``accept_warnings``).
    Then, with ``stop_services`` (default), Synapse (``mas:synapse:service``)
    and a managed MAS (``mas:service:name``) are stopped with
    ``service.stop``; without it they must already be down. Synapse
    (``mas:synapse:endpoint``) and MAS (its health URL) must not answer.
    The phase becomes ``migrating``, then ``migrated`` on success. On failure
    it stays ``migrating`` with the errors recorded and a Synapse stopped here
    is started again (it is still authoritative); the next run retries and
    syn2mas resets the partial migration. After success, Synapse stays stopped
    unless ``start_synapse_after``: the next step is
    ``mas:migration_in_progress: false`` and ``state.apply mas``.

    Every argument defaults to pillar ``mas:syn2mas:<name>``.

    dry_run
        Run ``migrate --dry-run`` instead.
    accept_warnings
        Migrate despite syn2mas warnings (exit 11 of ``check``).
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
    mas, opts, marker, files, (common, real), secrets = _prepare(mapdata, overrides)
    phase = _phase(marker)
    if opts["dry_run"]:
        return _dry_run(mas, opts, marker, files, common, secrets)
    if phase in DONE_PHASES:
        return _result(False, phase, "syn2mas migration refused: already migrated", errors=[_already(mas, marker)])
    if common or real:
        return _result(False, phase, "syn2mas migration refused", errors=common + real)
    with _exclusive(mas):
        return _migrate(mas, opts, marker, files, secrets)


def _dry_run(mas, opts, marker, files, problems, secrets):
    phase = _phase(marker)
    if phase in DONE_PHASES:
        return _result(False, phase, "syn2mas dry run refused", errors=[_already(mas, marker)], dry_run=True)
    if problems:
        return _result(False, phase, "syn2mas dry run refused", errors=problems, dry_run=True)
    argv = _argv(mas, opts, files, "migrate", dry_run=True)
    run = _run(mas, argv, opts, files, secrets)
    errors = list(run["errors"])
    ok = run["exit_code"] == EXIT_OK
    if ok and run["warnings"] and not opts["accept_warnings"]:
        errors.append(
            f"the dry run completed with {len(run['warnings'])} warning(s): a real migration is refused until "
            "they are accepted (accept_warnings=True, pillar mas:syn2mas:accept_warnings: true)"
        )
    hint = _hint(errors, phase)
    if hint:
        errors.append(hint)
    comment = "syn2mas dry run completed (phase unchanged)"
    if not ok:
        comment = f"syn2mas dry run failed (exit {run['exit_code']})"
    return _result(
        ok and not errors,
        phase,
        comment,
        exit_code=run["exit_code"],
        errors=errors,
        warnings=run["warnings"],
        summary=run["summary"],
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


def _still_answering(mas, opts, stopped):
    """Problems: Synapse or MAS still answering (after waiting for a stop)."""
    deadline = time.monotonic() + (opts["stop_timeout"] if stopped else 0)
    while True:
        up = [(what, url) for what, url in (("Synapse", _synapse_url(mas)), ("MAS", _mas_url(mas))) if _answers(url)]
        if not up or time.monotonic() >= deadline:
            break
        time.sleep(1)
    how = "after service.stop" if opts["stop_services"] else "(mas:syn2mas:stop_services is false: stop it yourself)"
    return [
        f"{what} still answers at {url} {how}; a real migration needs it stopped (Synapse: a consistent copy; "
        "MAS: an untouched database)"
        for what, url in up
    ]


def _start(stopped, kind):
    """Start the services of ``kind`` this run stopped: ``(started, still_down)``."""
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
        f"Synapse is DOWN: service.start {name} failed after the formula stopped it. It is still authoritative "
        f"(no drop-in): start it with `salt-call service.start {name}` (systemctl start {name}) and read its log"
        for name in names
    ]


def _migrate(mas, opts, marker, files, secrets):
    phase_before = _phase(marker)
    check_run = _run(mas, _argv(mas, opts, files, "check"), opts, files, secrets)
    checked = _checked(check_run, phase_before, opts["accept_warnings"])
    if not checked["result"]:
        checked["comment"] = "syn2mas migration refused: " + checked["comment"]
        return checked
    stopped, running = _stop(mas, opts)
    running += _still_answering(mas, opts, stopped)
    if running:
        started, down = _start(stopped, "synapse")
        started += _start(stopped, "mas")[0]
        return _result(
            False,
            phase_before,
            "syn2mas migration refused: services still running" + (" (and Synapse is DOWN)" if down else ""),
            errors=running + _synapse_down(down),
            warnings=check_run["warnings"],
            services={"stopped": [n for _, n in stopped], "started": started, "down": down},
        )
    argv = _argv(mas, opts, files, "migrate")
    record = {
        "mas_config": mas["paths"]["config_file"],
        "synapse_configs": files,
        "command": _display(argv, secrets),
        "accepted_warnings": check_run["warnings"],
    }
    marker = _set_phase(mas, marker, "migrating", started_at=_now(), finished_at=None, **record)
    run = _run(mas, argv, opts, files, secrets)
    last = {
        "at": _now(),
        "exit_code": run["exit_code"],
        "result": run["exit_code"] == EXIT_OK,
        "errors": run["errors"],
        "warnings": run["warnings"],
        "summary": run["summary"],
    }
    services = {"stopped": [name for _, name in stopped], "started": [], "down": []}
    if run["exit_code"] == EXIT_OK:
        _set_phase(mas, marker, "migrated", finished_at=last["at"], last_run=last)
        if opts["start_synapse_after"]:
            services["started"], services["down"] = _start(stopped, "synapse")
        next_step = "set mas:migration_in_progress: false and apply `mas` (Synapse delegates to MAS, MAS starts)"
        if stopped and not services["started"]:
            next_step += "; Synapse stays stopped until then"
        return _result(
            not services["down"],
            "migrated",
            f"syn2mas migration completed. Next: {next_step}"
            + (". Synapse did not start again: it is DOWN" if services["down"] else ""),
            errors=_synapse_down(services["down"]),
            exit_code=EXIT_OK,
            warnings=run["warnings"],
            summary=run["summary"],
            phase_before=phase_before,
            services=services,
            command=record["command"],
        )
    _set_phase(mas, marker, "migrating", last_run=last)
    services["started"], services["down"] = _start(stopped, "synapse")
    errors = list(run["errors"]) or [f"mas-cli syn2mas migrate exited with {run['exit_code']}"]
    hint = _hint(errors, "migrating")
    if hint:
        errors.append(hint)
    errors += _synapse_down(services["down"])
    restarted = " Synapse (still authoritative) was started again." if services["started"] else ""
    if services["down"]:
        restarted = f" Synapse is DOWN: service.start {services['down'][0]} failed."
    return _result(
        False,
        "migrating",
        f"syn2mas migration failed (exit {run['exit_code']}); the phase stays migrating and the next run "
        f"retries (syn2mas resets the partial migration).{restarted} MAS stays stopped.",
        exit_code=run["exit_code"],
        errors=errors,
        warnings=run["warnings"],
        summary=run["summary"],
        phase_before=phase_before,
        services=services,
        command=record["command"],
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
    return (marker is None and dropin), None


def rollback_check(mapdata=None):
    """
    The silent-rollback guard of ``state.apply mas`` (``mas_syn2mas.safe_to_roll_back``):
    may Synapse become authoritative again (``mas:migration_in_progress:
    true`` or ``mas:enabled: false``) without breaking what MAS alone knows?

    Only asked while Synapse delegates to MAS (phase ``delegated``, or its
    drop-in with no marker). MAS's database is counted: users created since
    the migration (all of them when none was needed) and active sessions
    (compatibility and OAuth 2.0) created since then. Any of them refuses,
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
    when = f"since the migration ({since})" if since else "since MAS became authoritative"
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


def reset(confirm=False, mapdata=None):
    """
    Set the phase back to ``legacy_auth`` so that syn2mas can run again (the
    history is kept). Only for a rollback: first make Synapse authoritative
    again (``mas:migration_in_progress: true``, apply ``mas``), then drop and
    recreate MAS's database. Refused without ``confirm=True`` and while
    ``mas:migration_in_progress`` is false.

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
