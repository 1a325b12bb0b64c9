"""
The syn2mas migration of the ``mas`` formula: Synapse's users moved into MAS once (checked, backed up, verified), the phase it stands in, and the guards that keep Synapse from delegating or rolling back at the wrong moment.

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
:py:func:`reset`, :py:func:`mark_delegated`, :py:func:`mark_rolled_back`,
:py:func:`ensure_synapse`, and the guards of ``state.apply mas``:
:py:func:`lockout_check` and :py:func:`rollback_check`. All but the first two
return a dict automation can gate on: ``{"result", "phase", "exit_code",
"errors", "warnings", "comment", ...}``; a refusal is ``result: False`` with
the reason in ``errors`` (and ``salt-call`` exits 1).

``mas-cli`` runs through the formula's ``bin/mas-cli`` wrapper with
``syn2mas --synapse-config <file>... check|migrate [--dry-run]``. Its output is
scrubbed of every secret the minion knows (MAS's secret files, the secrets in
Synapse's config and in pillar ``mas``, passwords in URLs) before it is parsed,
returned or recorded. Synapse's and MAS's databases are read with psycopg
(read-only transactions, set-based SQL); ``pg_dump`` gets its password from a
private 0600 PGPASSFILE.

The machinery lives in the helpers ``mas_formula.syn2mas_*`` (the marker, the
output, the databases, the preflight, the backup, the verification, the run
and the guards). This module reads the map, pillar and Synapse's config, hands
them and Salt's functions to the helpers (:func:`_prepare`, :func:`_host`), and
makes ``salt-call`` exit 1 on a refusal.

:depends: requests, psycopg (3), PostgreSQL's client tools (pg_dump); the ``mas`` and ``mas_synapse`` execution
    modules of this formula
"""

import importlib.util
import logging
import os
import time

import salt.utils.data
import salt.utils.files
from salt.exceptions import CommandExecutionError, SaltInvocationError

import mas_formula

mas_formula.refresh()
from mas_formula import (  # noqa: E402  (after the refresh: a synced update is imported anew)
    http,
    roles,
    secretfiles,
    syn2mas_backup,
    syn2mas_db,
    syn2mas_guards,
    syn2mas_marker,
    syn2mas_output,
    syn2mas_preflight,
    syn2mas_run,
    syn2mas_verify,
)

# requests is imported where it is used (the SLS files call this module on every run)
HAS_REQUESTS = importlib.util.find_spec("requests") is not None


log = logging.getLogger(__name__)

__virtualname__ = "mas_syn2mas"

PILLAR_ROOT = "mas"


#: Options a call may override (the rest come from the map, validated there).
_BOOL_OPTIONS = ("dry_run", "accept_warnings", "ignore_missing_auth_providers", "stop_services", "start_synapse_after")


def __virtual__():
    if not HAS_REQUESTS:
        return (False, "The mas_syn2mas module needs the 'requests' Python package")
    return __virtualname__


# --------------------------------------------------------------------------
# What the helpers get from Salt: the map, pillar, Synapse's config, Salt's functions
# --------------------------------------------------------------------------


def _mapdata(mapdata=None):
    """The formula's map: ``mapdata`` as given (the SLS's), else ``mas.mapdata``
    (what the SLS work from)."""
    if mapdata is None:
        return __salt__["mas.mapdata"]()
    if not isinstance(mapdata, dict) or "paths" not in mapdata:
        raise SaltInvocationError("mapdata must be the formula's map (mas.mapdata)")
    return mapdata


def _pillar_value(key):
    """The value of pillar ``mas:<key>`` (unmasked), or None."""
    return salt.utils.data.traverse_dict_and_list(__pillar__, f"{PILLAR_ROOT}:{key}", None)


def _known_secrets(mas, synapse_conf):
    """Every secret this run must hide (never returned): the deployment's secret files, pillar ``mas``'s secret
    values and those of the Synapse config read; what ``syn2mas_output.scrub`` takes."""
    pillar_mas = salt.utils.data.traverse_dict_and_list(__pillar__, [PILLAR_ROOT], {}) or {}
    return secretfiles.known_secrets(mas["paths"]["secrets_dir"], pillar_mas, synapse_conf or {})


def _mas_database(mas):
    """MAS's database connection (from the map; the password from pillar or its secret file)."""
    db = mas["database"]
    connect = {"host": db["host"], "port": str(db["port"]), "dbname": db["name"], "user": db["user"]}
    if db.get("ssl_mode"):
        connect["sslmode"] = db["ssl_mode"]
    if db.get("password_set"):
        password = _pillar_value("database:password")
        path = mas["paths"]["database_password"]
        if password in (None, "") and os.path.isfile(path):
            with salt.utils.files.fopen(path, "r") as handle:
                password = handle.read().strip()
        if password not in (None, ""):
            connect["password"] = str(password)
    label = f"MAS's database {db['name']} at {db['host']}:{db['port']} (mas:database)"
    return {"engine": "postgres", "connect": connect, "label": label}


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
        if not files and not mas["role"]["synapse"]:
            problems.append(
                f"Synapse is on another minion (mas:roles here: {', '.join(mas['roles'])}), so its config files are"
                " not here: set mas:synapse:database (Synapse's PostgreSQL database as this minion reaches it) and,"
                " if Synapse has one, mas:synapse:pepper in this minion's pillar; `state.apply mas` then writes"
                " Synapse's config for syn2mas from them (docs/several-hosts.md)"
            )
        elif not files:
            problems.append(
                "no Synapse config file found (mas:synapse:config_files, mas:synapse:config_dir); "
                "set mas:syn2mas:synapse_config_files"
            )
    return files, conf, problems


def _host():
    """What the run asks of the minion (``syn2mas_run.Host``): Salt's ``service.status``/``stop``/``start`` and
    ``cmd.run_all``, looked up when called, and the formula's one HTTP client's probe."""
    return syn2mas_run.Host(
        service_status=lambda name: __salt__["service.status"](name),
        service_stop=lambda name: __salt__["service.stop"](name),
        service_start=lambda name: __salt__["service.start"](name),
        run_all=lambda *args, **kwargs: __salt__["cmd.run_all"](*args, **kwargs),
        answers=lambda url: http.answers(url),
    )


def _prepare(mapdata, overrides):
    """The run's context (see ``syn2mas_run``): the map, options, marker, Synapse's config, the problems, the
    secrets, MAS's database and the pepper from pillar.

    ``file_problems``: Synapse config files missing; ``common``: what stops
    any mas-cli run (with the file problems); ``real``: what stops a real
    migration only.
    """
    mas = _mapdata(mapdata)
    opts = options(mas, **overrides)
    marker = syn2mas_guards.marker_for(mas, opts)
    files, conf, file_problems = _synapse_files(mas, opts)
    common, real = syn2mas_guards.run_problems(mas, opts, files, __salt__["mas.runtime_problem"](mas))
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
        "mas_database": _mas_database(mas),
        "pepper": _pillar_value("synapse:pepper"),
    }


def _elsewhere(mas, phase, comment):
    """The refusal of a change of phase on a minion without MAS: the phase is the MAS minion's."""
    return _result(
        False,
        phase,
        comment,
        errors=[
            f"the syn2mas phase is kept on the MAS minion (mas:roles here: {', '.join(mas['roles'])}): run this there"
        ],
    )


def _answer(ret):
    """``ret`` as the module returns it: a refusal makes ``salt-call`` exit 1."""
    if not ret["result"]:
        __context__["retcode"] = 1
    return ret


def _result(result, phase, comment, **fields):
    """A result (``syn2mas_output.result``) returned by this module."""
    return _answer(syn2mas_output.result(result, phase, comment, **fields))


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
        opts["synapse_database_uri"] = _pillar_value("syn2mas:synapse_database_uri") or ""
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
# Preflight, backup and verification on their own
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
    found = syn2mas_run.preflight(ctx)
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


def backup(mapdata=None):
    """
    Take a backup of Synapse's database now: ``pg_dump -Fd -j<cores>`` into
    ``mas:syn2mas:backup_dir`` (free space checked first; a 0700 directory of
    0600 files written under a ``.partial`` name, then renamed), connecting like syn2mas
    (Synapse's config, or ``mas:syn2mas:synapse_database_uri``; the password
    through a private PGPASSFILE). A real migration does this by itself after
    Synapse is stopped; this is the same on its own (Synapse may run: pg_dump
    reads one consistent snapshot). The phase marker is not changed.

    Returns ``{"result", "phase", "errors", "backup": {path, sha256, size,
    format, database, at, seconds}, "comment"}`` (``sha256``: what ``cd <path> && sha256sum * | sha256sum``
    prints).

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
        taken = syn2mas_backup.backup(mas, opts, database, plan, ctx["secrets"], _host().run_all)
    except CommandExecutionError as exc:
        return _result(False, phase, "backup failed", errors=[str(exc)])
    return _result(
        True,
        phase,
        f"backup of Synapse's {taken['database']} written to {taken['path']} "
        f"({syn2mas_backup.human_size(taken['size'])}, sha256 {taken['sha256']})",
        backup=taken,
    )


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
    mas = ctx["mas"]
    phase = syn2mas_marker.phase_of(ctx["marker"])
    if record is True and not mas["role"]["mas"]:
        return _elsewhere(mas, phase, "syn2mas verification not recorded")
    started = time.monotonic()
    try:
        found = syn2mas_verify.verify(mas, ctx["opts"], ctx["conf"], ctx["files"], ctx["secrets"], ctx["mas_database"])
    except (syn2mas_db.Unreachable, *syn2mas_db.db_errors()) as exc:
        return _result(
            False, phase, "syn2mas verification failed", errors=[syn2mas_output.scrub(str(exc), ctx["secrets"])]
        )
    seconds = round(time.monotonic() - started, 3)
    ok = not found["errors"]
    changes = {}
    if record is True:
        with syn2mas_marker.exclusive(mas):
            marker = syn2mas_marker.read_marker(mas)  # what is recorded follows the marker as it is under the lock
            phase = syn2mas_marker.phase_of(marker)
            new = None
            if ok and phase in ("legacy_auth", "migrated", "migrated_unverified"):
                new = "verified"
            elif not ok and phase == "migrated":
                new = "migrated_unverified"
            if new:
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
# Where the migration stands, the check and the migration
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
    mas = _mapdata(mapdata)
    return syn2mas_marker.phase_of(syn2mas_guards.marker_for(mas, options(mas)))


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
    host = _host()
    phase = syn2mas_marker.effective_phase(mas, marker)
    synapse_up, mas_up = host.answers(syn2mas_run.synapse_url(mas)), host.answers(syn2mas_run.mas_url(mas))
    dry_run_blockers = list(ctx["common"])
    if phase in syn2mas_marker.DONE_PHASES:
        dry_run_blockers.insert(0, syn2mas_marker.already(mas, marker))
    blockers = dry_run_blockers + ctx["real"] + syn2mas_run.unstoppable(mas, opts, synapse_up, mas_up)
    last = (marker or {}).get("last_run") or {}
    next_step = syn2mas_marker.next_step(mas, marker, phase)
    commands = {
        "check": syn2mas_run.argv(mas, opts, files, "check"),
        "dry_run": syn2mas_run.argv(mas, opts, files, "migrate", dry_run=True),
        "migrate": syn2mas_run.argv(mas, opts, files, "migrate"),
    }
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
        commands={key: syn2mas_output.displayed(args, secrets) for key, args in commands.items()},
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
    phase = syn2mas_marker.effective_phase(mas, syn2mas_guards.marker_for(mas, opts))
    return _answer(syn2mas_run.ensure_synapse(_host(), mas, opts, phase, test))


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
    return _answer(syn2mas_run.check(_host(), ctx))


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
    (``pg_dump -Fd``, its digest and size recorded in the marker; a failed
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
    return _answer(syn2mas_run.migrate(_host(), _prepare(mapdata, overrides)))


# --------------------------------------------------------------------------
# Guards of `state.apply mas`: no lock-out, no silent rollback; the phases they record
# --------------------------------------------------------------------------


def _lockout(mas, opts, marker):
    """The lock-out guard's verdict (``syn2mas_guards.lockout``), Synapse's database read only when asked."""

    def probe():
        files, conf, _ = _synapse_files(mas, opts)
        return syn2mas_guards.probe_login_users(conf, opts, files, _known_secrets(mas, conf))

    return syn2mas_guards.lockout(opts, marker, probe, syn2mas_guards.lockout_where(mas, opts))


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
    marker = syn2mas_guards.marker_for(mas, opts)
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

    Several hosts (``mas:roles``): on a MAS minion without Synapse, which
    cannot see the drop-in, the count starts at the recorded migration (or
    ever, with none recorded); on a Synapse minion without MAS, the MAS
    minion's verdict decides when ``mas.orch.delegate`` passes it
    (``mas:syn2mas:mas_rollback``).

    Returns ``{"result", "phase", "errors", "warnings", "comment", "counts"}``.

    mapdata
        The formula's map (default: computed from pillar).

    CLI Example:

    .. code-block:: bash

        salt-call mas_syn2mas.rollback_check
    """
    mas = _mapdata(mapdata)
    opts = options(mas)
    delegating_here = os.path.exists(syn2mas_marker.dropin(mas))
    if not mas["role"]["mas"] and opts["mas_rollback"] is not None and delegating_here:
        return _answer(syn2mas_guards.given_rollback(mas, opts, opts["mas_rollback"]))
    return _answer(_rollback(mas, opts, syn2mas_guards.marker_for(mas, opts)))


def _rollback(mas, opts, marker):
    """The rollback guard's result (``syn2mas_guards.rollback``), MAS's database counted only when asked."""

    def created_since(since):
        return syn2mas_db.mas_created_since(_mas_database(mas), since, _known_secrets(mas, {}))

    return syn2mas_guards.rollback(mas, opts, marker, created_since)


def verdict(mapdata=None):
    """
    What a Synapse minion of its own needs from this MAS minion, for its
    guards (``mas.orch.delegate`` and ``mas.orch.migrate`` ask it on the
    master and pass it on as ``mas:syn2mas:mas_phase`` and
    ``mas:syn2mas:mas_rollback``): the phase recorded here (``none``
    without a record), the rollback guard's verdict as this minion sees
    it (MAS's database counted), and ``mas:synapse:service``. Reads only.

    Returns ``{"result": True, "phase", "rollback": {"result", "comment",
    "errors", "warnings", "counts", "minion"}, "synapse_service"}``.

    mapdata
        The formula's map (default: computed from pillar).

    CLI Example:

    .. code-block:: bash

        salt-call mas_syn2mas.verdict
    """
    mas = _mapdata(mapdata)
    opts = options(mas)
    marker = syn2mas_marker.read_marker(mas)
    found = _rollback(mas, opts, marker)
    rollback = {key: found.get(key) for key in ("result", "comment", "errors", "warnings")}
    rollback.update(counts=found.get("counts") or {}, minion=__grains__.get("id"))
    return {
        "result": True,
        "phase": syn2mas_marker.phase_of(marker) if marker is not None else "none",
        "rollback": rollback,
        "synapse_service": mas["synapse"]["service"],
    }


def pepper_digest(nonce, mapdata=None):
    """
    This MAS minion's side of the pepper comparison across hosts
    (``mas.orch.migrate`` asks it on the master, and ``mas_synapse.pepper_digest``
    on the Synapse minion, with one nonce): the HMAC of the secret MAS will
    verify the migrated passwords with (its password scheme version 1:
    ``mas:synapse:pepper``, or Synapse's pepper from the files here), keyed
    with ``nonce``. The pepper itself never leaves the minion. Reads only.

    Returns ``{"digest": <hex> | "none" | None, "source": <where it is read>}``;
    ``digest`` None when MAS verifies no migrated password (passwords
    disabled, or no scheme version 1): nothing to compare.

    nonce
        The master's one-time key: 32 to 128 lowercase hex digits.

    CLI Example:

    .. code-block:: bash

        salt-call mas_syn2mas.pepper_digest 00112233445566778899aabbccddeeff
    """
    if not isinstance(nonce, str) or not roles.NONCE.fullmatch(nonce):
        raise SaltInvocationError("nonce must be 32 to 128 lowercase hex digits")
    mas = _mapdata(mapdata)
    scheme, secret, source = syn2mas_preflight.mas_bcrypt_secret(mas, _pillar_value("synapse:pepper"))
    return {"digest": None if scheme is None else roles.pepper_digest(nonce, secret), "source": source}


def mark_rolled_back(mapdata=None, test=False):
    """
    Record the ``rolled_back`` phase once Synapse is authoritative again
    after a delegation (its drop-in removed), so that
    :py:func:`status` tells the truth. Nothing to do otherwise.

    Several hosts (``mas:roles``): a Synapse minion without MAS records
    nothing (the phase is the MAS minion's); on a MAS minion without Synapse
    the drop-in is on the Synapse minion, so a ``delegated`` phase becomes
    ``rolled_back`` here when called after Synapse's minion removed it
    (``mas.orch.delegate`` applies ``mas.syn2mas.delegation`` for that).

    mapdata
        The formula's map (default: computed from pillar).
    test
        Only say what would be recorded.

    CLI Example:

    .. code-block:: bash

        salt-call mas_syn2mas.mark_rolled_back
    """
    mas = _mapdata(mapdata)
    if not mas["role"]["mas"]:
        return _result(True, phase(mas), "nothing to record here: the syn2mas phase is the MAS minion's", changes={})
    dropin = syn2mas_marker.dropin(mas)

    def gone():  # the drop-in removed; on a MAS minion without Synapse it is on the Synapse minion
        return not mas["role"]["synapse"] or not os.path.exists(dropin)

    # every `state.apply mas` while Synapse authenticates comes here: a read without the lock only spares taking
    # it (and failing while a migration holds it) when there is nothing to record; what is recorded is decided
    # on the marker read under the lock
    found = syn2mas_marker.phase_of(syn2mas_marker.read_marker(mas))
    why = "mas:enabled: false" if not mas.get("enabled") else "mas:migration_in_progress: true"
    if found == "delegated" and test:  # the drop-in is removed in the same run
        return _result(
            True,
            found,
            f"syn2mas phase rolled_back would be recorded ({why})",
            changes={"phase": {"old": found, "new": "rolled_back"}},
        )
    if found == "delegated" and gone():
        opts = options(mas)
        with syn2mas_marker.exclusive(mas):
            marker = syn2mas_marker.read_marker(mas)
            found = syn2mas_marker.phase_of(marker)
            if found == "delegated" and gone():
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
                    changes={"phase": {"old": found, "new": "rolled_back"}},
                )
    return _result(True, found, f"nothing to record (syn2mas phase {found})", changes={})


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
    if not mas["role"]["mas"]:
        return _elsewhere(
            mas, syn2mas_marker.phase_of(syn2mas_guards.marker_for(mas, options(mas))), "syn2mas reset refused"
        )
    with syn2mas_marker.exclusive(mas):
        try:
            marker = syn2mas_marker.read_marker(mas)
            phase = syn2mas_marker.phase_of(marker)
        except CommandExecutionError:
            marker = {"version": syn2mas_marker.MARKER_VERSION, "history": [], "phase": "legacy_auth"}
            phase = "unreadable"
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
                    "mas:migration_in_progress is false (Synapse delegates to MAS): set it to true and apply `mas` "
                    "first"
                ],
            )
        if marker is None or phase == "legacy_auth":
            return _result(True, "legacy_auth", "syn2mas phase is already legacy_auth", changes={})
        leftover = syn2mas_guards.mas_leftovers(mas, _mas_database(mas), _known_secrets(mas, None))
        if leftover:
            return _result(False, phase, "syn2mas reset refused (the phase is unchanged)", errors=[leftover])
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

    Several hosts (``mas:roles``): a Synapse minion without MAS records
    nothing (the phase is the MAS minion's): it answers with the lock-out
    guard's verdict. A MAS minion without Synapse records ``delegated``
    after a recorded migration, once ``mas.orch.delegate`` has put the
    drop-in in place on the Synapse minion (it applies
    ``mas.syn2mas.delegation`` here then); with no migration recorded there
    is nothing to record.

    mapdata
        The formula's map (default: computed from pillar).

    CLI Example:

    .. code-block:: bash

        salt-call mas_syn2mas.mark_delegated
    """
    mas = _mapdata(mapdata)
    dropin = syn2mas_marker.dropin(mas)
    if not mas["role"]["mas"]:
        opts = options(mas)
        marker = syn2mas_guards.marker_for(mas, opts)
        ok, message, _ = _lockout(mas, opts, marker)
        if not ok:
            return _result(False, syn2mas_marker.phase_of(marker), "delegated refused", errors=[message])
        return _result(True, syn2mas_marker.phase_of(marker), f"{message}; the phase is the MAS minion's", changes={})
    with syn2mas_marker.exclusive(mas):
        marker = syn2mas_marker.read_marker(mas)
        phase = syn2mas_marker.phase_of(marker)
        if phase == "delegated":
            return _result(True, phase, "syn2mas phase is already delegated", changes={})
        if mas.get("migration_in_progress"):
            return _result(False, phase, "delegated refused", errors=["mas:migration_in_progress is still true"])
        if not mas["role"]["synapse"] and marker is None:
            return _result(
                True, phase, "nothing to record: no syn2mas migration is recorded on this minion", changes={}
            )
        if mas["role"]["synapse"] and not os.path.exists(dropin):
            return _result(
                False, phase, "delegated refused", errors=[f"Synapse's drop-in {dropin} is not there yet: apply `mas`"]
            )
        ok, message, probe = _lockout(mas, options(mas), marker)
        if not ok:
            return _result(False, phase, "delegated refused", errors=[message])
        fields = {"delegated_at": syn2mas_marker.utc_now()}
        if probe is not None:  # no migration was needed (a new homeserver)
            fields.update(migration="none", finished_at=None, fresh_check=probe)
        syn2mas_marker.set_phase(mas, marker, "delegated", **fields)
    comment = "syn2mas phase delegated recorded"
    if probe is not None:
        comment += f" (no migration needed: {message})"
    return _result(
        True,
        "delegated",
        comment,
        changes={"phase": {"old": phase if marker is not None else None, "new": "delegated"}},
    )
