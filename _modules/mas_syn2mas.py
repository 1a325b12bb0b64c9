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

import datetime
import importlib.util
import logging
import os
import re
import signal
import time
import urllib.parse

import salt.utils.data
import salt.utils.files
from salt.exceptions import CommandExecutionError, SaltInvocationError

import mas_formula

mas_formula.refresh()
from mas_formula import (  # noqa: E402  (after the refresh: a synced update is imported anew)
    secretfiles,
    syn2mas_backup,
    syn2mas_db,
    syn2mas_marker,
    syn2mas_output,
    syn2mas_preflight,
    syn2mas_verify,
)

# requests is imported where it is used (the SLS files call this module on every run)
HAS_REQUESTS = importlib.util.find_spec("requests") is not None


log = logging.getLogger(__name__)

__virtualname__ = "mas_syn2mas"

PILLAR_ROOT = "mas"


#: Exit codes of ``mas-cli syn2mas``.
EXIT_OK, EXIT_FATAL, EXIT_ERRORS, EXIT_WARNINGS = (
    syn2mas_output.EXIT_OK,
    syn2mas_output.EXIT_FATAL,
    syn2mas_output.EXIT_ERRORS,
    syn2mas_output.EXIT_WARNINGS,
)

#: Options a call may override (the rest come from the map, validated there).
_BOOL_OPTIONS = ("dry_run", "accept_warnings", "ignore_missing_auth_providers", "stop_services", "start_synapse_after")


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


# --------------------------------------------------------------------------
# Secrets and output
# --------------------------------------------------------------------------


def _known_secrets(mas, synapse_conf):
    """Every secret this run must hide (never returned): the deployment's secret files, pillar ``mas``'s secret
    values and those of the Synapse config read; what ``syn2mas_output.scrub`` takes."""
    pillar_mas = salt.utils.data.traverse_dict_and_list(__pillar__, [PILLAR_ROOT], {}) or {}
    return secretfiles.known_secrets(mas["paths"]["secrets_dir"], pillar_mas, synapse_conf or {})


# --------------------------------------------------------------------------
# Plan: files, command, probes
# --------------------------------------------------------------------------


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
            syn.get("config_files"), syn["config_dir"], {}, exclude=[syn2mas_marker.dropin(mas)], mask=False
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
        why = syn2mas_preflight.readable_by(path, mas["user"]) if os.path.exists(path) else None
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
    if os.path.exists(syn2mas_marker.dropin(mas)):
        real.append(
            f"Synapse's drop-in {syn2mas_marker.dropin(mas)} is present (Synapse delegates to MAS): apply `mas` with "
            "mas:migration_in_progress: true first"
        )
    if opts["backup"] and not opts.get("backup_dir"):
        real.append(
            "mas:syn2mas:backup_dir is not set: a real migration first takes a pg_dump of Synapse's database. Set "
            "it (e.g. /var/backups/matrix-synapse), or say mas:syn2mas:backup: false to migrate without one"
        )
    elif opts["backup"]:
        try:
            syn2mas_backup.pg_dump()
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


def _pillar_value(key):
    """The value of pillar ``mas:<key>`` (unmasked), or None."""
    return salt.utils.data.traverse_dict_and_list(__pillar__, f"{PILLAR_ROOT}:{key}", None)


def _preflight(mas, opts, marker, files, conf, secrets):
    """The native checks (mas_formula.syn2mas_preflight), with MAS's database and the pepper from pillar."""
    return syn2mas_preflight.preflight(
        mas, opts, marker, files, conf, secrets, _mas_database(mas), _pillar_value("synapse:pepper")
    )


def _verify(mas, opts, conf, files, secrets):
    """The set-wise comparison of MAS with Synapse (mas_formula.syn2mas_verify)."""
    return syn2mas_verify.verify(mas, opts, conf, files, secrets, _mas_database(mas))


def _backup(mas, opts, database, plan, secrets):
    """``pg_dump`` of Synapse's database (mas_formula.syn2mas_backup), run through Salt's ``cmd.run_all``."""
    return syn2mas_backup.backup(mas, opts, database, plan, secrets, __salt__["cmd.run_all"])


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
    stdout, stderr = (
        syn2mas_output.scrub(res.get("stdout", ""), secrets),
        syn2mas_output.scrub(res.get("stderr", ""), secrets),
    )
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
    errors, warnings, fatal = syn2mas_output.parse_output(stdout, stderr)
    if fatal:
        errors.append(fatal)
    elif res["retcode"] not in (EXIT_OK, EXIT_ERRORS, EXIT_WARNINGS) and not errors:
        last = syn2mas_output.last_error_line(stderr + "\n" + stdout)
        said = f"its last error line: {last[-500:]}" if last else "it logged no error"
        if syn2mas_output.signal_name(res["retcode"]) == signal.SIGKILL:
            said += (
                ". SIGKILL comes from outside mas-cli (`kill -9`, a supervisor, the kernel's out-of-memory killer: "
                "see `journalctl -k`)"
            )
        errors.append(f"{syn2mas_output.ended_as(res['retcode'])}: {said}")
    return {
        "exit_code": res["retcode"],
        "errors": errors,
        "warnings": warnings,
        "summary": syn2mas_output.summary_of(stderr + "\n" + stdout),
    }


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
    marker = syn2mas_marker.read_marker(mas)
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


# --------------------------------------------------------------------------
# Preflight: what will fail, and how big the job is (no MAS binary needed)
# --------------------------------------------------------------------------


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
        syn2mas_marker.phase_of(ctx["marker"]),
        comment,
        errors=errors,
        warnings=found.pop("warnings"),
        seconds=seconds,
        **found,
    )


# --------------------------------------------------------------------------
# Backup: pg_dump -Fc of Synapse's database before the point of no return
# --------------------------------------------------------------------------


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
    phase = syn2mas_marker.phase_of(ctx["marker"])
    try:
        database = syn2mas_db.synapse_database(ctx["conf"], opts, ctx["files"])
        plan, problems = syn2mas_backup.backup_plan(mas, opts, database, ctx["secrets"])
        if problems:
            return _result(False, phase, "backup refused", errors=problems)
        taken = _backup(mas, opts, database, plan, ctx["secrets"])
    except CommandExecutionError as exc:
        return _result(False, phase, "backup failed", errors=[str(exc)])
    return _result(
        True,
        phase,
        f"backup of Synapse's {taken['database']} written to {taken['path']} ({syn2mas_backup.human_size(taken['size'])}, "
        f"sha256 {taken['sha256']})",
        backup=taken,
    )


# --------------------------------------------------------------------------
# Verification: what was in Synapse is in MAS (set-wise)
# --------------------------------------------------------------------------


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
    phase = syn2mas_marker.phase_of(marker)
    started = time.monotonic()
    try:
        found = _verify(mas, ctx["opts"], ctx["conf"], ctx["files"], ctx["secrets"])
    except (syn2mas_db.Unreachable, *syn2mas_db.db_errors()) as exc:
        return _result(
            False, phase, "syn2mas verification failed", errors=[syn2mas_output.scrub(str(exc), ctx["secrets"])]
        )
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
            with syn2mas_marker.exclusive(mas):
                syn2mas_marker.set_phase(
                    mas, marker, new, verification=dict(found, at=syn2mas_marker.utc_now(), result=ok)
                )
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
    return syn2mas_marker.phase_of(syn2mas_marker.read_marker(_mapdata(mapdata)))


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
    phase = syn2mas_marker.effective_phase(mas, marker)
    synapse_up, mas_up = _answers(_synapse_url(mas)), _answers(_mas_url(mas))
    dry_run_blockers = list(common)
    if phase in syn2mas_marker.DONE_PHASES:
        dry_run_blockers.insert(0, syn2mas_marker.already(mas, marker))
    blockers = dry_run_blockers + real + _unstoppable(mas, opts, synapse_up, mas_up)
    last = (marker or {}).get("last_run") or {}
    next_step = syn2mas_marker.next_step(mas, marker, phase)
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
        marker=syn2mas_marker.marker_path(mas),
        last_run=last or None,
        history=(marker or {}).get("history", []),
        migration_in_progress=bool(mas.get("migration_in_progress")),
        synapse_answers=synapse_up,
        mas_answers=mas_up,
        blockers=blockers,
        dry_run_blockers=dry_run_blockers,
        next_step=next_step,
        commands={
            "check": syn2mas_output.displayed(_argv(mas, opts, files, "check"), secrets),
            "dry_run": syn2mas_output.displayed(_argv(mas, opts, files, "migrate", dry_run=True), secrets),
            "migrate": syn2mas_output.displayed(_argv(mas, opts, files, "migrate"), secrets),
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
    phase = syn2mas_marker.effective_phase(mas, syn2mas_marker.read_marker(mas))
    url, name = _synapse_url(mas), mas["synapse"]["service"]
    if _answers(url):
        return _result(True, phase, f"Synapse answers at {url}", answers=True, changes={})
    down = f"Synapse does not answer at {url}"
    if phase not in ("migrated", "verified", "migrated_unverified") or os.path.exists(syn2mas_marker.dropin(mas)):
        return _result(
            True, phase, f"{down}: start it with `salt-call service.start {name}`", answers=False, changes={}
        )
    if not opts["start_synapse_after"]:
        why = f"it is still authoritative; start it with `salt-call service.start {name}`"
        if phase in syn2mas_marker.MIGRATED_PHASES:
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
    phase = syn2mas_marker.phase_of(marker)
    if phase in syn2mas_marker.DONE_PHASES:
        return _result(False, phase, "syn2mas check refused", errors=[syn2mas_marker.already(mas, marker)])
    pre = _preflight(mas, opts, marker, ctx["files"], ctx["conf"], ctx["secrets"])
    pre["errors"] = ctx["file_problems"] + pre["errors"]
    extra = {"counts": pre["counts"], "notes": pre["notes"]}
    if ctx["common"][len(ctx["file_problems"]) :]:
        errors = pre["errors"] + ctx["common"][len(ctx["file_problems"]) :]
        return _result(False, phase, "syn2mas check refused", errors=errors, warnings=pre["warnings"], **extra)
    argv = _argv(mas, opts, ctx["files"], "check")
    run = _run(mas, argv, opts, ctx["files"], ctx["secrets"])
    ok, errors, warnings, comment = syn2mas_output.merge_check(pre, run, opts["accept_warnings"], phase)
    return _result(
        ok,
        phase,
        comment,
        exit_code=run["exit_code"],
        errors=errors,
        warnings=warnings,
        summary=run["summary"],
        command=syn2mas_output.displayed(argv, ctx["secrets"]),
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
    phase = syn2mas_marker.phase_of(marker)
    if ctx["opts"]["dry_run"]:
        return _dry_run(ctx)
    if phase in syn2mas_marker.DONE_PHASES:
        return _result(
            False, phase, "syn2mas migration refused: already migrated", errors=[syn2mas_marker.already(mas, marker)]
        )
    opts = ctx["opts"]
    refusals = ctx["common"] + ctx["real"]
    refusals += _unstoppable(
        mas, opts, not opts["stop_services"] and _answers(_synapse_url(mas)), _answers(_mas_url(mas))
    )
    if refusals:
        return _result(False, phase, "syn2mas migration refused (nothing was run or stopped)", errors=refusals)
    with syn2mas_marker.exclusive(mas):
        return _migrate(ctx)


def _dry_run(ctx):
    mas, opts, marker, files, secrets = ctx["mas"], ctx["opts"], ctx["marker"], ctx["files"], ctx["secrets"]
    phase = syn2mas_marker.phase_of(marker)
    if phase in syn2mas_marker.DONE_PHASES:
        return _result(
            False, phase, "syn2mas dry run refused", errors=[syn2mas_marker.already(mas, marker)], dry_run=True
        )
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
    hint = syn2mas_output.hint_for(errors, phase)
    if hint:
        errors.append(hint)
    comment = "syn2mas dry run completed (phase unchanged)"
    if not ok:
        comment = f"syn2mas dry run failed ({syn2mas_output.ended_as(run['exit_code'])})"
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
        command=syn2mas_output.displayed(argv, secrets),
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
    """:py:func:`syn2mas_verify.verify`, with an unreadable database as an error of the verification."""
    try:
        return _verify(mas, opts, conf, files, secrets)
    except (syn2mas_db.Unreachable, *syn2mas_db.db_errors()) as exc:
        return {
            "errors": [f"the verification could not run: {syn2mas_output.scrub(str(exc), secrets)}"],
            "counts": {},
            "missing": {},
        }


def _migrate(ctx):
    mas, opts, marker, files, conf, secrets = (
        ctx["mas"],
        ctx["opts"],
        ctx["marker"],
        ctx["files"],
        ctx["conf"],
        ctx["secrets"],
    )
    phase_before = syn2mas_marker.phase_of(marker)
    steps = syn2mas_output.Steps()
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
    ok, errors, warnings, comment = syn2mas_output.merge_check(pre, check_run, opts["accept_warnings"], phase_before)
    if not ok:
        return refused(comment, errors, warnings, exit_code=check_run["exit_code"], summary=check_run["summary"])
    database = syn2mas_db.synapse_database(conf, opts, files)
    plan = None
    if opts["backup"]:
        plan, problems = steps.run(
            "backup check", syn2mas_backup.backup_plan, mas, opts, database, secrets, ok=lambda planned: not planned[1]
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
        "command": syn2mas_output.displayed(argv, secrets),
        "accepted_warnings": warnings,
        "backup": taken,
        "preflight_counts": pre["counts"],
    }
    marker = syn2mas_marker.set_phase(
        mas, marker, "migrating", started_at=syn2mas_marker.utc_now(), finished_at=None, **record
    )
    run = steps.run("migrate", _run, mas, argv, opts, files, secrets, ok=lambda done: done["exit_code"] == EXIT_OK)
    last = {
        "at": syn2mas_marker.utc_now(),
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
        marker = syn2mas_marker.set_phase(mas, marker, "migrating", last_run=last)
        errors = list(run["errors"]) or [syn2mas_output.ended_as(run["exit_code"])]
        hint = syn2mas_output.hint_for(errors, "migrating")
        if hint:
            errors.append(hint)
        after = synapse_after()
        syn2mas_marker.set_phase(mas, marker, "migrating", steps=list(steps))
        return _result(
            False,
            "migrating",
            f"syn2mas migration failed: {syn2mas_output.ended_as(run['exit_code'])}; the phase stays migrating and the next run "
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
    marker = syn2mas_marker.set_phase(
        mas,
        marker,
        phase,
        finished_at=last["at"],
        last_run=last,
        verification=dict(verification, at=syn2mas_marker.utc_now()),
    )
    if not verified:
        after = synapse_after()
        syn2mas_marker.set_phase(mas, marker, phase, steps=list(steps))
        return _result(
            False,
            phase,
            "syn2mas migration completed but its verification FAILED: MAS lacks what Synapse has (phase "
            f"migrated_unverified; Synapse must not delegate yet).{after} MAS stays stopped. Next: "
            f"{syn2mas_marker.next_step(mas, marker, phase)}. {steps.text()}",
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
    syn2mas_marker.set_phase(mas, marker, phase, steps=list(steps))
    where = (
        f" Backup: {taken['path']} ({syn2mas_backup.human_size(taken['size'])})."
        if taken
        else " No backup (mas:syn2mas:backup)."
    )
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
    """Synapse's users who can log in (``syn2mas_db.login_users``) and the database label; raises :class:`syn2mas_db.Unreachable`."""
    files, conf, _ = _synapse_files(mas, opts)
    secrets = _known_secrets(mas, conf)
    database = syn2mas_db.synapse_database(conf, opts, files)
    return syn2mas_db.login_users(database, secrets), database["label"]


def _lockout(mas, opts, marker):
    """The lock-out guard's verdict: ``(ok, message, probe)``; ``probe`` is what was found in Synapse."""
    phase = syn2mas_marker.phase_of(marker)
    fresh_again = phase == "rolled_back" and (marker or {}).get("migration") == "none"
    if marker is not None and not fresh_again:
        if phase in syn2mas_marker.MIGRATED_PHASES + ("delegated",):
            return True, f"Synapse's users are in MAS (syn2mas phase {phase})", None
        return False, _NOT_DELEGABLE[phase], None
    try:
        users, label = _probe_login_users(mas, opts)
    except syn2mas_db.Unreachable as exc:
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
    marker = syn2mas_marker.read_marker(mas)
    ok, message, probe = _lockout(mas, opts, marker)
    warnings = [message] if ok and (probe or {}).get("assumed_fresh") else []
    return _result(
        ok,
        syn2mas_marker.phase_of(marker),
        message if ok else "delegating to MAS refused: it would lock Synapse's users out",
        errors=[] if ok else [message],
        warnings=warnings,
        probe=probe,
    )


def _rollback_target(mas, marker):
    """``(delegated, since)``: whether Synapse delegates (recorded or on disk) and since when MAS is authoritative."""
    dropin = os.path.exists(syn2mas_marker.dropin(mas))
    phase = syn2mas_marker.phase_of(marker)
    if marker is not None and phase == "delegated":
        since = None if marker.get("migration") == "none" else marker.get("finished_at")
        return dropin, since
    if marker is not None and phase in syn2mas_marker.MIGRATED_PHASES and dropin:  # delegating, the record missed
        return True, marker.get("finished_at")
    if marker is None and dropin:  # delegated before the formula kept a marker: since the drop-in was written
        written = datetime.datetime.fromtimestamp(os.path.getmtime(syn2mas_marker.dropin(mas)), datetime.UTC)
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
    marker = syn2mas_marker.read_marker(mas)
    phase = syn2mas_marker.phase_of(marker)
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
        counts = syn2mas_db.mas_created_since(_mas_database(mas), since, _known_secrets(mas, {}))
    except syn2mas_db.Unreachable as exc:
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
    marker = syn2mas_marker.read_marker(mas)
    phase = syn2mas_marker.phase_of(marker)
    if phase != "delegated" or os.path.exists(syn2mas_marker.dropin(mas)):
        return _result(True, phase, f"nothing to record (syn2mas phase {phase})", changes={})
    opts = options(mas)
    why = "mas:enabled: false" if not mas.get("enabled") else "mas:migration_in_progress: true"
    with syn2mas_marker.exclusive(mas):
        syn2mas_marker.set_phase(
            mas,
            marker,
            "rolled_back",
            rolled_back_at=syn2mas_marker.utc_now(),
            rolled_back_by=why,
            forced=opts["force_rollback"],
        )
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
        with syn2mas_db.connected(database, secrets) as (_, conn):
            contents = syn2mas_preflight.mas_contents(conn)
            conn.rollback()
    except (syn2mas_db.Unreachable, *syn2mas_db.db_errors()) as exc:
        reason = syn2mas_output.scrub(
            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, secrets
        )
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
        marker = syn2mas_marker.read_marker(mas)
        phase = syn2mas_marker.phase_of(marker)
    except CommandExecutionError:
        marker, phase = {"version": syn2mas_marker.MARKER_VERSION, "history": [], "phase": "legacy_auth"}, "unreadable"
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
    with syn2mas_marker.exclusive(mas):
        syn2mas_marker.set_phase(mas, marker, "legacy_auth", reset_at=syn2mas_marker.utc_now(), reset_from=phase)
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
    marker = syn2mas_marker.read_marker(mas)
    phase = syn2mas_marker.phase_of(marker)
    if phase == "delegated":
        return _result(True, phase, "syn2mas phase is already delegated", changes={})
    if mas.get("migration_in_progress"):
        return _result(False, phase, "delegated refused", errors=["mas:migration_in_progress is still true"])
    if not os.path.exists(syn2mas_marker.dropin(mas)):
        return _result(
            False,
            phase,
            "delegated refused",
            errors=[f"Synapse's drop-in {syn2mas_marker.dropin(mas)} is not there yet: apply `mas`"],
        )
    ok, message, probe = _lockout(mas, options(mas), marker)
    if not ok:
        return _result(False, phase, "delegated refused", errors=[message])
    fields = {"delegated_at": syn2mas_marker.utc_now()}
    if probe is not None:  # no migration was needed (a new homeserver)
        fields.update(migration="none", finished_at=None, fresh_check=probe)
    old = phase if marker is not None else None
    with syn2mas_marker.exclusive(mas):
        syn2mas_marker.set_phase(mas, marker, "delegated", **fields)
    comment = "syn2mas phase delegated recorded"
    if probe is not None:
        comment += f" (no migration needed: {message})"
    return _result(True, "delegated", comment, changes={"phase": {"old": old, "new": "delegated"}})
