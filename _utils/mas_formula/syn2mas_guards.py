"""The guards of syn2mas: what refuses a run before it starts, whether Synapse may delegate to MAS without locking its users out, whether it may become authoritative again without breaking what only MAS knows, and what a reset must find in MAS's database.

They only read: the phase marker, Synapse's drop-in, Synapse's and MAS's
databases. The ``mas_syn2mas`` module passes what comes from Salt: the
runtime's problem, the databases' connection data and the secrets to scrub,
and, where a database is read on some paths only (the guards run on every
``state.apply mas``), a callable that reads it.

On several hosts (``mas:roles``) the phase is the MAS minion's: a Synapse
minion without MAS keeps no marker and goes by what ``mas.orch.delegate``
passes from the MAS minion (``mas:syn2mas:mas_phase`` and ``mas_rollback``:
:func:`marker_for`, :func:`given_rollback`), and a MAS minion without Synapse
cannot see the drop-in, so it counts what a rollback would break from the
recorded migration on (:func:`rollback_target`).
"""

import datetime
import os
import re

from salt.exceptions import CommandExecutionError

from mas_formula import syn2mas_backup, syn2mas_db, syn2mas_marker, syn2mas_output, syn2mas_preflight

#: Where the operator reads how to migrate (the README links it).
MIGRATION_DOC = "docs/migration.md"

MIGRATE_FIRST = (
    "Migrate first: set mas:migration_in_progress: true and apply `mas`, then check, back up and migrate "
    f"(`salt-call state.apply mas.syn2mas`; {MIGRATION_DOC})"
)

#: Why Synapse may not delegate in a recorded phase that is not migrated.
NOT_DELEGABLE = {
    "legacy_auth": (
        "the syn2mas phase was reset to legacy_auth (mas_syn2mas.reset): Synapse's users are not in MAS. "
        + MIGRATE_FIRST
    ),
    "migrating": (
        "the last syn2mas migration did not finish (phase migrating; `salt-call mas_syn2mas.status` shows its "
        "errors): Synapse must not delegate to MAS yet. Set mas:migration_in_progress: true, apply `mas`, then run "
        "`salt-call state.apply mas.syn2mas` again"
    ),
    "migrated_unverified": (
        "the migration finished but its verification found Synapse users, emails, links or devices missing in MAS "
        "(phase migrated_unverified; `salt-call mas_syn2mas.verify` lists them): delegating now would lock them "
        "out. Fix MAS, then `salt-call mas_syn2mas.verify record=True` records `verified`; or roll back "
        f"({MIGRATION_DOC}, 'When something fails')"
    ),
    "rolled_back": (
        "Synapse was made authoritative again after the migration (phase rolled_back): users and sessions created "
        "in Synapse since are not in MAS. Migrate again: drop and recreate MAS's database, "
        "`salt-call mas_syn2mas.reset confirm=True`, then `salt-call state.apply mas.syn2mas`"
    ),
}


def run_problems(mas, opts, files, runtime_problem):
    """What stops syn2mas before it runs: ``(any run, a real migration only)``; ``runtime_problem`` is
    ``mas.runtime_problem``'s answer (None when the runtime can run mas-cli)."""
    problems = []
    if not mas.get("enabled"):
        problems.append("mas:enabled is false: deploy MAS with `state.apply mas` first")
    if not os.access(mas["paths"]["mas_cli"], os.X_OK):
        problems.append(f"{mas['paths']['mas_cli']} is missing: apply `mas` first")
    if runtime_problem:
        problems.append(runtime_problem)
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


# --------------------------------------------------------------------------
# The lock-out guard: no drop-in while Synapse's users are not in MAS
# --------------------------------------------------------------------------


def marker_for(mas, opts):
    """The phase marker the guards go by: this minion's own (``syn2mas_marker.read_marker``), or on a minion
    without MAS (``mas:roles``) the MAS minion's phase as ``mas.orch.delegate`` passes it
    (``mas:syn2mas:mas_phase``; the operator's word otherwise): no marker of its own is read there. None when no
    migration is recorded (or none was given)."""
    if mas["role"]["mas"]:
        return syn2mas_marker.read_marker(mas)
    given = opts.get("mas_phase")
    if given in (None, "none"):
        return None
    return {"phase": given, "given": True}


def lockout_where(mas, opts):
    """Where the lock-out guard looked for a recorded migration (the words of its refusal)."""
    if mas["role"]["mas"]:
        return "this minion"
    if opts.get("mas_phase") == "none":
        return "the MAS minion (mas:syn2mas:mas_phase: none)"
    return (
        "this Synapse minion, whose phase is the MAS minion's (`salt-run state.orchestrate mas.orch.delegate` passes"
        " it as mas:syn2mas:mas_phase)"
    )


def phase_words(marker):
    """``syn2mas phase <phase>``, saying where it comes from when the MAS minion gave it."""
    phase = syn2mas_marker.phase_of(marker)
    if (marker or {}).get("given"):
        return f"the MAS minion's syn2mas phase {phase} (mas:syn2mas:mas_phase)"
    return f"syn2mas phase {phase}"


def probe_login_users(conf, opts, files, secrets):
    """Synapse's users who can log in (``syn2mas_db.login_users``) and the database's label; raises
    :class:`syn2mas_db.Unreachable` when the database cannot be found or read."""
    database = syn2mas_db.synapse_database(conf, opts, files)
    return syn2mas_db.login_users(database, secrets), database["label"]


def lockout(opts, marker, probe, where="this minion"):
    """The lock-out guard's verdict: ``(ok, message, probe)``; the last is what was found in Synapse (None when
    the recorded phase decided). ``probe()`` reads Synapse's database (:func:`probe_login_users`): only asked
    when no migration is recorded (on ``where``)."""
    phase = syn2mas_marker.phase_of(marker)
    fresh_again = phase == "rolled_back" and (marker or {}).get("migration") == "none"
    if marker is not None and not fresh_again:
        if phase in syn2mas_marker.MIGRATED_PHASES + ("delegated",):
            return True, f"Synapse's users are in MAS ({phase_words(marker)})", None
        if marker.get("given"):
            return False, f"{phase_words(marker)}: {NOT_DELEGABLE[phase]} (on the MAS minion)", None
        return False, NOT_DELEGABLE[phase], None
    try:
        users, label = probe()
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
            f"{where}: delegating to MAS now would lock every one of them out (MAS does not know them). "
            f"{MIGRATE_FIRST}. Migrated them outside the formula? `salt-call mas_syn2mas.verify record=True` "
            "records it once MAS holds them all",
            {"login_users": users, "database": label},
        )
    return (
        True,
        f"no Synapse user to lock out ({label}: no user with a password or an external id)",
        {"login_users": users, "database": label},
    )


# --------------------------------------------------------------------------
# The silent-rollback guard: no Synapse authoritative again over what only MAS knows
# --------------------------------------------------------------------------


def rollback_target(mas, marker):
    """``(delegated, since)``: whether Synapse delegates (recorded or on disk) and since when MAS is authoritative.

    A MAS minion without Synapse (``mas:roles``) cannot see the drop-in: it counts from the recorded migration on
    (verified or delegated), or from ever when none is recorded (a homeserver that needed none)."""
    dropin = os.path.exists(syn2mas_marker.dropin(mas))
    phase = syn2mas_marker.phase_of(marker)
    if mas["role"]["mas"] and not mas["role"]["synapse"]:
        if marker is None:
            return True, None
        if phase == "delegated" and marker.get("migration") == "none":
            return True, None
        if phase in syn2mas_marker.MIGRATED_PHASES + ("delegated",):
            return True, marker.get("finished_at")
        return False, None
    if marker is not None and phase == "delegated":
        since = None if marker.get("migration") == "none" else marker.get("finished_at")
        return dropin, since
    if marker is not None and phase in syn2mas_marker.MIGRATED_PHASES and dropin:  # delegating, the record missed
        return True, marker.get("finished_at")
    if marker is None and dropin:  # delegated before the formula kept a marker: since the drop-in was written
        written = datetime.datetime.fromtimestamp(os.path.getmtime(syn2mas_marker.dropin(mas)), datetime.UTC)
        return True, written.isoformat(timespec="seconds")
    return False, None


def rollback(mas, opts, marker, created_since):
    """The silent-rollback guard's result (``mas_syn2mas.rollback_check``); ``created_since(since)`` counts
    MAS's users and sessions created since then (``syn2mas_db.mas_created_since``): only asked while Synapse
    delegates."""
    phase = syn2mas_marker.phase_of(marker)
    result = syn2mas_output.result
    delegating, since = rollback_target(mas, marker)
    if not delegating:
        return result(True, phase, f"Synapse does not delegate to MAS (syn2mas phase {phase}): nothing to roll back")
    why = "mas:enabled is false" if not mas.get("enabled") else "mas:migration_in_progress is true"
    when = "since MAS became authoritative"
    if since and marker is None:
        when = f"since Synapse's drop-in was written ({since})"
    elif since:
        when = f"since the migration ({since})"
    force = "set mas:syn2mas:force_rollback: true to roll back anyway"
    try:
        counts = created_since(since)
    except syn2mas_db.Unreachable as exc:
        message = (
            f"{why}, so Synapse would become authoritative again, but {exc}: the formula cannot count the users "
            f"and sessions that exist only in MAS. Fix that and apply again, or {force}"
        )
        if opts["force_rollback"]:
            return result(True, phase, f"rollback forced (mas:syn2mas:force_rollback): {message}", warnings=[message])
        return result(False, phase, "rollback refused", errors=[message])
    broken = counts["users"] or counts["sessions"]
    message = (
        f"{why}: Synapse would become authoritative again and {counts['users']} users and {counts['sessions']} "
        f"sessions created in MAS {when} would break (they exist only in MAS: the seed's reversibility warning)"
    )
    if broken and not opts["force_rollback"]:
        return result(
            False, phase, "rollback refused", errors=[f"{message}. Keep MAS authoritative, or {force}"], counts=counts
        )
    if broken:
        return result(
            True, phase, f"rollback forced (mas:syn2mas:force_rollback): {message}", warnings=[message], counts=counts
        )
    return result(True, phase, f"{why}: MAS holds no user or session created {when}; nothing breaks", counts=counts)


def given_rollback(mas, opts, verdict):
    """The rollback guard's result on a Synapse minion without MAS from the MAS minion's verdict
    (``mas:syn2mas:mas_rollback``, as ``mas.orch.delegate`` passes it): its refusal stands unless this minion's
    ``mas:syn2mas:force_rollback``."""
    result = syn2mas_output.result
    phase = syn2mas_marker.phase_of(marker_for(mas, opts))
    minion = f" ({verdict['minion']})" if verdict.get("minion") else ""
    said = "; ".join([verdict.get("comment") or "", *(verdict.get("errors") or [])]).strip("; ")
    message = f"the MAS minion{minion} says (mas:syn2mas:mas_rollback): {said}"
    counts = verdict.get("counts") or {}
    if verdict["result"]:
        return result(True, phase, message, warnings=list(verdict.get("warnings") or []), counts=counts)
    if opts["force_rollback"]:
        return result(True, phase, f"rollback forced (mas:syn2mas:force_rollback): {message}", warnings=[message])
    return result(False, phase, "rollback refused", errors=[message], counts=counts)


# --------------------------------------------------------------------------
# The reset: only over an empty MAS database
# --------------------------------------------------------------------------


def mas_leftovers(mas, database, secrets):
    """Why MAS's database (``database``: its connection data) cannot take another migration (the earlier one is
    still there, or it cannot be read), or None when it is empty."""
    db = mas["database"]
    recreate = (
        f'Drop and recreate that database first (as PostgreSQL\'s superuser: `DROP DATABASE "{db["name"]}";` then '
        f'`CREATE DATABASE "{db["name"]}" OWNER "{db["user"]}";`, or apply `mas` with mas:database:manage: '
        "true after the DROP), then run the reset again"
    )
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
