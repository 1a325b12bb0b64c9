"""
States of the ``mas`` formula's syn2mas migration (Synapse users into MAS).

``mas_syn2mas.migrated`` runs the guarded migration of the
``mas_syn2mas`` execution module once: when the phase marker already says
``migrated`` (or ``delegated``) it reports success without running anything.
``mas_syn2mas.delegated`` records the last phase once Synapse delegates to MAS,
``mas_syn2mas.rolled_back`` records a rollback once Synapse authenticates again.

The guards of ``state.apply mas`` are requisites of Synapse's drop-in and of
its copy of the shared secret, so they are checked before either is written:
``mas_syn2mas.safe_to_delegate`` (no drop-in that would lock Synapse's users
out) and ``mas_syn2mas.safe_to_roll_back`` (no silent rollback that breaks
users and sessions only MAS knows). They only read, so they run the same
under ``test=True``.

Under ``test=True`` nothing is run or written: the states report the phase,
what would be refused and the commands that would run.

:depends: the ``mas_syn2mas`` execution module of this formula
"""

import logging

from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "mas_syn2mas"


def __virtual__():
    if "mas_syn2mas.migrate" in __salt__:
        return __virtualname__
    return (False, "The mas_syn2mas state module needs the mas_syn2mas execution module (run saltutil.sync_all)")


def _ret(name):
    return {"name": name, "result": True, "comment": "", "changes": {}}


def _lines(title, items):
    return f"\n{title}:\n- " + "\n- ".join(items) if items else ""


def migrated(
    name,
    dry_run=None,
    accept_warnings=None,
    ignore_missing_auth_providers=None,
    stop_services=None,
    start_synapse_after=None,
    mapdata=None,
):
    """
    Ensure Synapse's users have been migrated into MAS with syn2mas (once),
    backed up before and verified after.

    Already ``verified``/``migrated``/``delegated`` (or no migration needed):
    True, no changes, nothing run (the desired state holds). ``migrated_unverified``:
    the verification runs again (``mas_syn2mas.verify record=True``) and the
    phase becomes ``verified`` when it passes. ``rolled_back``: False, with the
    way to migrate again. Each of these runs also says when Synapse does not
    answer, and starts it while it is still authoritative when
    ``start_synapse_after`` asks for it (``mas_syn2mas.ensure_synapse``: the
    change is ``synapse``; a failed start makes the state fail). Otherwise
    ``mas_syn2mas.migrate`` runs with the guards described there (preflight
    and check first, a backup, refused while Synapse or MAS answer or while
    delegation is on; the phase goes ``legacy_auth`` -> ``migrating`` ->
    ``verified``); the change is the
    phase, and the comment lists the steps with their durations. With
    ``dry_run`` only the preflight and ``migrate --dry-run`` run and the phase
    never changes (no changes are reported).

    Every argument defaults to pillar ``mas:syn2mas:<name>``.

    name
        Any name (e.g. ``syn2mas``).
    dry_run
        Run ``mas-cli syn2mas migrate --dry-run`` only.
    accept_warnings
        Migrate despite syn2mas warnings.
    ignore_missing_auth_providers
        Pass ``--ignore-missing-auth-providers``.
    stop_services
        Stop Synapse and a managed MAS before the real migration.
    start_synapse_after
        Start Synapse again after success (still without delegation).
    mapdata
        The formula's map (``mas.mapdata``).

    As ``mas.syn2mas`` declares it (``mas/syn2mas/migrate.sls``; the options
    come from pillar ``mas:syn2mas``):

    .. code-block:: yaml

        mas-syn2mas-migrate-mas_syn2mas-migrated:
          mas_syn2mas.migrated:
            - name: syn2mas
            - dry_run: false
            - accept_warnings: false
    """
    ret = _ret(name)
    args = {
        "accept_warnings": accept_warnings,
        "ignore_missing_auth_providers": ignore_missing_auth_providers,
        "stop_services": stop_services,
        "start_synapse_after": start_synapse_after,
        "mapdata": mapdata,
    }
    try:
        opts = __salt__["mas_syn2mas.options"](mapdata, dry_run=dry_run)
        status = __salt__["mas_syn2mas.status"](
            mapdata=mapdata, ignore_missing_auth_providers=ignore_missing_auth_providers, stop_services=stop_services
        )
        phase = status["phase"]
        notices = status.get("deprecations") or []
        if phase in ("migrated", "verified", "delegated", "rolled_back"):
            if phase == "rolled_back":
                ret["result"] = False
                ret["comment"] = f"syn2mas phase rolled_back: {status['next_step']}"
            elif phase == "delegated" and "no migration" in status["next_step"]:
                ret["comment"] = f"no syn2mas migration needed: {status['next_step']}"
            else:
                ret["comment"] = (
                    f"Synapse's users are already migrated to MAS (phase {phase}); syn2mas was not run. Next: "
                    f"{status['next_step']}" + _lines("Warnings", notices)
                )
            return _synapse(ret, status, start_synapse_after, mapdata)
        if phase == "migrated_unverified":
            if __opts__["test"]:
                ret["result"] = None
                ret["comment"] = "the migration's verification would run again (mas_syn2mas.verify record=True)"
                ret["changes"] = {"phase": {"old": phase, "new": "verified"}}
                return _synapse(ret, status, start_synapse_after, mapdata)
            result = __salt__["mas_syn2mas.verify"](mapdata=mapdata, record=True)
        elif __opts__["test"]:
            return _predict(ret, status, opts["dry_run"])
        else:
            result = __salt__["mas_syn2mas.migrate"](dry_run=opts["dry_run"], **args)
        result["warnings"] = list(result.get("warnings") or []) + [
            n for n in notices if n not in (result.get("warnings") or [])
        ]
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["result"] = False
        ret["comment"] = f"syn2mas: {exc}"
        return ret
    ret["result"] = result["result"]
    if result["phase"] != phase:
        ret["changes"] = {"phase": {"old": phase, "new": result["phase"]}}
    ret["comment"] = result["comment"] + _lines("Errors", result["errors"]) + _lines("Warnings", result["warnings"])
    if phase == "migrated_unverified":
        return _synapse(ret, status, start_synapse_after, mapdata)
    return ret


def _synapse(ret, status, start_synapse_after, mapdata):
    """A run that did not migrate says whether Synapse answers, and starts it when
    ``start_synapse_after`` asks for it (``mas_syn2mas.ensure_synapse``)."""
    if status["synapse_answers"]:
        return ret
    try:
        found = __salt__["mas_syn2mas.ensure_synapse"](
            start_synapse_after=start_synapse_after, test=__opts__["test"], mapdata=mapdata
        )
    except (CommandExecutionError, SaltInvocationError) as exc:
        found = {"result": False, "comment": f"whether Synapse answers is unknown: {exc}", "errors": [], "changes": {}}
    head, newline, rest = ret["comment"].partition("\n")
    head = head if head.endswith(".") else f"{head}."
    ret["comment"] = f"{head} {found['comment']}.{newline}{rest}" + _lines("Errors", found["errors"])
    if found["changes"]:
        ret["changes"].update(found["changes"])
        if __opts__["test"] and ret["result"] is True:
            ret["result"] = None
    if not found["result"]:
        ret["result"] = False
    return ret


def _predict(ret, status, dry_run):
    """The test=True answer: what would run or be refused (nothing is run)."""
    blockers = status["dry_run_blockers" if dry_run else "blockers"]
    if blockers:
        ret["result"] = False
        ret["comment"] = "syn2mas would be refused" + _lines("Reasons", blockers)
        return ret
    ret["result"] = None
    commands = status["commands"]
    if dry_run:
        ret["comment"] = f"syn2mas dry run would run (phase {status['phase']} unchanged): {commands['dry_run']}"
        return ret
    ret["comment"] = (
        f"syn2mas would migrate: preflight, then {commands['check']}; then stop Synapse and MAS (unless "
        "mas:syn2mas:stop_services is false), back up Synapse's database (mas:syn2mas:backup_dir), then "
        f"{commands['migrate']}, then verify MAS against Synapse"
    )
    ret["changes"] = {"phase": {"old": status["phase"], "new": "verified"}}
    return ret


def _guard(name, check, label, mapdata):
    """Run the read-only check ``mas_syn2mas.<check>`` and answer with its verdict (False when it cannot run)."""
    ret = _ret(name)
    try:
        result = __salt__[f"mas_syn2mas.{check}"](mapdata=mapdata)
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["result"] = False
        ret["comment"] = f"syn2mas {label}: {exc}"
        return ret
    ret["result"] = result["result"]
    ret["comment"] = result["comment"] + _lines("Errors", result["errors"]) + _lines("Warnings", result["warnings"])
    return ret


def safe_to_delegate(name, mapdata=None):
    """
    The lock-out guard: fail, changing nothing, when Synapse delegating to MAS
    now would lock its users out (see ``mas_syn2mas.lockout_check``): a
    migration unfinished, unverified, reset or rolled back, or none recorded
    while Synapse's database holds users with a password or an external id (or
    cannot be read, unless ``mas:syn2mas:assume_fresh``). Make it a requisite
    of the drop-in and of Synapse's copy of the secret.

    name
        Any name.
    mapdata
        The formula's map (``mas.mapdata``).

    As ``mas.synapse.file`` declares it (``mas/synapse/file.sls``):

    .. code-block:: yaml

        mas-synapse-file-mas_syn2mas-safe_to_delegate:
          mas_syn2mas.safe_to_delegate:
            - name: syn2mas
            - require_in:
              - mas_secret: mas-synapse-file-mas_secret-present
              - mas_synapse: mas-synapse-file-mas_synapse-dropin
    """
    return _guard(name, "lockout_check", "lock-out guard", mapdata)


def safe_to_roll_back(name, mapdata=None):
    """
    The silent-rollback guard: fail, changing nothing, when making Synapse
    authoritative again (``mas:migration_in_progress: true`` or
    ``mas:enabled: false``) while it delegates to MAS would break users or
    sessions created in MAS since (see ``mas_syn2mas.rollback_check``), unless
    ``mas:syn2mas:force_rollback``. Make it a requisite of the drop-in's
    removal (and of the compatibility routes' removal).

    name
        Any name.
    mapdata
        The formula's map (``mas.mapdata``).

    As ``mas.synapse.file`` declares it (``mas/synapse/file.sls``; ``mas.clean``
    has ``mas-synapse-clean-mas_syn2mas-safe_to_roll_back`` before the
    compatibility routes' removal and the purge):

    .. code-block:: yaml

        mas-synapse-file-mas_syn2mas-safe_to_roll_back:
          mas_syn2mas.safe_to_roll_back:
            - name: syn2mas
            - require_in:
              - mas_secret: mas-synapse-file-mas_secret-present
              - mas_synapse: mas-synapse-file-mas_synapse-dropin
    """
    return _guard(name, "rollback_check", "rollback guard", mapdata)


def rolled_back(name, mapdata=None):
    """
    Record the ``rolled_back`` phase once Synapse's drop-in is gone after a
    delegation (``mas_syn2mas.mark_rolled_back``); nothing to do otherwise.

    name
        Any name.
    mapdata
        The formula's map (``mas.mapdata``).

    As ``mas.synapse.file`` declares it (``mas/synapse/file.sls``; in
    ``mas.clean`` it is ``mas-synapse-clean-mas_syn2mas-rolled_back``, after
    ``file: mas-synapse-clean-file-absent-dropin``):

    .. code-block:: yaml

        mas-synapse-file-mas_syn2mas-rolled_back:
          mas_syn2mas.rolled_back:
            - name: syn2mas
            - require:
              - mas_synapse: mas-synapse-file-mas_synapse-dropin
    """
    ret = _ret(name)
    try:
        if __opts__["test"]:
            result = __salt__["mas_syn2mas.mark_rolled_back"](mapdata=mapdata, test=True)
            ret["comment"] = result["comment"]
            if result["changes"]:
                ret["result"] = None
                ret["comment"] = "syn2mas phase rolled_back would be recorded once the drop-in is removed"
                ret["changes"] = result["changes"]
            return ret
        result = __salt__["mas_syn2mas.mark_rolled_back"](mapdata=mapdata)
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["result"] = False
        ret["comment"] = f"syn2mas: {exc}"
        return ret
    ret["result"] = result["result"]
    ret["changes"] = result.get("changes", {})
    ret["comment"] = result["comment"] + _lines("Errors", result["errors"])
    return ret


def delegated(name, mapdata=None):
    """
    Record the ``delegated`` phase once Synapse delegates to MAS
    (``mas:migration_in_progress`` false, the drop-in in place): after a
    migration, or with ``migration: none`` on a homeserver that needed none.
    Fails when delegation would skip or outrun syn2mas (see
    ``mas_syn2mas.mark_delegated``).

    name
        Any name.
    mapdata
        The formula's map (``mas.mapdata``).

    As ``mas.synapse.file`` declares it (``mas/synapse/file.sls``):

    .. code-block:: yaml

        mas-synapse-file-mas_syn2mas-delegated:
          mas_syn2mas.delegated:
            - name: syn2mas
            - require:
              - mas_synapse: mas-synapse-file-mas_synapse-dropin
    """
    ret = _ret(name)
    try:
        # cheap on every later run: the marker only (no HTTP, no subprocess)
        phase = __salt__["mas_syn2mas.phase"](mapdata=mapdata)
        if phase == "delegated":
            ret["comment"] = "syn2mas phase is already delegated"
            return ret
        if __opts__["test"]:
            status = __salt__["mas_syn2mas.status"](mapdata=mapdata)
            if status["migration_in_progress"]:
                ret["result"] = False
                ret["comment"] = "delegated refused: mas:migration_in_progress is still true"
                return ret
            ret["result"] = None
            ret["comment"] = "syn2mas phase delegated would be recorded (the lock-out guard decides first)"
            ret["changes"] = {"phase": {"old": phase if status["recorded"] else None, "new": "delegated"}}
            return ret
        result = __salt__["mas_syn2mas.mark_delegated"](mapdata=mapdata)
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["result"] = False
        ret["comment"] = f"syn2mas: {exc}"
        return ret
    ret["result"] = result["result"]
    ret["changes"] = result.get("changes", {})
    ret["comment"] = result["comment"] + _lines("Errors", result["errors"])
    return ret
