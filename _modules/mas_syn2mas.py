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
import re
import time
import urllib.parse

import salt.utils.data
import salt.utils.files
from salt.exceptions import CommandExecutionError, SaltInvocationError

try:
    import requests

    HAS_REQUESTS = True
except ImportError:  # pragma: no cover - depends on the minion
    HAS_REQUESTS = False

log = logging.getLogger(__name__)

__virtualname__ = "mas_syn2mas"

PILLAR_ROOT = "mas"
MARKER_VERSION = 1

PHASES = ("legacy_auth", "migrating", "migrated", "delegated")
DONE_PHASES = ("migrated", "delegated")

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
    phase = _phase(marker)
    synapse_up, mas_up = _answers(_synapse_url(mas)), _answers(_mas_url(mas))
    dry_run_blockers = list(common)
    if phase in DONE_PHASES:
        dry_run_blockers.insert(0, f"already migrated (phase {phase}). {_ROLLBACK}")
    blockers = dry_run_blockers + real
    if not opts["stop_services"]:
        if synapse_up:
            blockers.append(f"Synapse answers at {_synapse_url(mas)}: stop it (mas:syn2mas:stop_services is false)")
        if mas_up:
            blockers.append(f"MAS answers at {_mas_url(mas)}: stop it (mas:syn2mas:stop_services is false)")
    last = (marker or {}).get("last_run") or {}
    next_step = {
        "legacy_auth": "check (mas_syn2mas.check), dry run, then migrate (state.apply mas.syn2mas)",
        "migrating": "the last migration did not finish: fix the errors and migrate again (it resumes safely)",
        "migrated": "set mas:migration_in_progress: false and apply `mas` (Synapse delegates to MAS, MAS starts)",
        "delegated": "nothing: Synapse delegates to MAS",
    }[phase]
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
        return _result(False, phase, "syn2mas check refused", errors=[f"already migrated (phase {phase}). {_ROLLBACK}"])
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
        return _dry_run(mas, opts, phase, files, common, secrets)
    if phase in DONE_PHASES:
        done = (marker or {}).get("finished_at") or (marker or {}).get("updated_at")
        return _result(
            False,
            phase,
            "syn2mas migration refused: already migrated",
            errors=[f"already migrated (phase {phase} since {done}). {_ROLLBACK}"],
        )
    if common or real:
        return _result(False, phase, "syn2mas migration refused", errors=common + real)
    with _exclusive(mas):
        return _migrate(mas, opts, marker, files, secrets)


def _dry_run(mas, opts, phase, files, problems, secrets):
    if phase in DONE_PHASES:
        return _result(
            False,
            phase,
            "syn2mas dry run refused",
            errors=[f"already migrated (phase {phase}): MAS's database is not empty. {_ROLLBACK}"],
            dry_run=True,
        )
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
    targets = [("synapse", mas["synapse"]["service"], _synapse_url(mas))]
    if mas["service"]["manage"]:
        targets.append(("mas", mas["service"]["name"], _mas_url(mas)))
    for kind, name, url in targets:
        if __salt__["service.status"](name) or _answers(url):
            if __salt__["service.stop"](name):
                stopped.append((kind, name))
            else:
                problems.append(f"service.stop {name} failed")
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
    started = []
    for what, name in stopped:
        if what == kind:
            if not __salt__["service.start"](name):
                log.warning("mas_syn2mas: service.start %s failed", name)
                continue
            started.append(name)
    return started


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
        started = _start(stopped, "synapse") + _start(stopped, "mas")
        return _result(
            False,
            phase_before,
            "syn2mas migration refused: services still running",
            errors=running,
            warnings=check_run["warnings"],
            services={"stopped": [n for _, n in stopped], "started": started},
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
    services = {"stopped": [name for _, name in stopped], "started": []}
    if run["exit_code"] == EXIT_OK:
        _set_phase(mas, marker, "migrated", finished_at=last["at"], last_run=last)
        if opts["start_synapse_after"]:
            services["started"] = _start(stopped, "synapse")
        next_step = "set mas:migration_in_progress: false and apply `mas` (Synapse delegates to MAS, MAS starts)"
        if stopped and not services["started"]:
            next_step += "; Synapse stays stopped until then"
        return _result(
            True,
            "migrated",
            f"syn2mas migration completed. Next: {next_step}",
            exit_code=EXIT_OK,
            warnings=run["warnings"],
            summary=run["summary"],
            phase_before=phase_before,
            services=services,
            command=record["command"],
        )
    _set_phase(mas, marker, "migrating", last_run=last)
    services["started"] = _start(stopped, "synapse")
    errors = list(run["errors"]) or [f"mas-cli syn2mas migrate exited with {run['exit_code']}"]
    hint = _hint(errors, "migrating")
    if hint:
        errors.append(hint)
    restarted = " Synapse (still authoritative) was started again." if services["started"] else ""
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
    Record the ``delegated`` phase after a migration: once
    ``mas:migration_in_progress`` is false and Synapse's drop-in is live.

    Returns ``result: True`` without change when there is nothing to record
    (no migration recorded: a new homeserver; or already ``delegated``), and
    ``result: False`` when delegation would skip or outrun syn2mas (phase
    ``migrating``, or ``legacy_auth`` after a reset).

    mapdata
        The formula's map (default: computed from pillar).

    CLI Example:

    .. code-block:: bash

        salt-call mas_syn2mas.mark_delegated
    """
    mas = _mapdata(mapdata)
    marker = _read_marker(mas)
    phase = _phase(marker)
    if marker is None:
        return _result(True, phase, "no syn2mas migration recorded; nothing to mark", changes={})
    if phase == "delegated":
        return _result(True, phase, "syn2mas phase is already delegated", changes={})
    if phase != "migrated":
        why = (
            f"syn2mas has not completed (phase {phase}): finish the migration before Synapse delegates to MAS "
            "(mas:migration_in_progress: true, then state.apply mas.syn2mas)"
        )
        return _result(False, phase, "delegated refused", errors=[why])
    if mas.get("migration_in_progress"):
        return _result(False, phase, "delegated refused", errors=["mas:migration_in_progress is still true"])
    if not os.path.exists(_dropin(mas)):
        return _result(
            False,
            phase,
            "delegated refused",
            errors=[f"Synapse's drop-in {_dropin(mas)} is not there yet: apply `mas`"],
        )
    with _exclusive(mas):
        _set_phase(mas, marker, "delegated", delegated_at=_now())
    return _result(
        True, "delegated", "syn2mas phase delegated recorded", changes={"phase": {"old": phase, "new": "delegated"}}
    )
