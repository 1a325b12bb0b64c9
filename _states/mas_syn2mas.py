"""
States of the ``mas`` formula's syn2mas migration (Synapse users into MAS).

``mas_syn2mas.migrated`` runs the guarded migration of the
``mas_syn2mas`` execution module once: when the phase marker already says
``migrated`` (or ``delegated``) it reports success without running anything.
``mas_syn2mas.delegated`` records the last phase once Synapse delegates to MAS.
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
    Ensure Synapse's users have been migrated into MAS with syn2mas (once).

    Already ``migrated``/``delegated``: True, nothing run. Otherwise
    ``mas_syn2mas.migrate`` runs with the guards described there (check first,
    refused while Synapse or MAS answer or while delegation is on; the phase
    goes ``legacy_auth`` -> ``migrating`` -> ``migrated``); the change is the
    phase. With ``dry_run`` only ``migrate --dry-run`` runs and the phase
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
        The formula's map (``mas/map.jinja``).

    .. code-block:: yaml

        mas-syn2mas-migrate-mas-syn2mas-migrated:
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
        if phase in ("migrated", "delegated"):
            ret["comment"] = f"Synapse's users are already migrated to MAS (phase {phase}); syn2mas was not run"
            return ret
        if __opts__["test"]:
            return _predict(ret, status, opts["dry_run"])
        result = __salt__["mas_syn2mas.migrate"](dry_run=opts["dry_run"], **args)
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["result"] = False
        ret["comment"] = f"syn2mas: {exc}"
        return ret
    ret["result"] = result["result"]
    if result["phase"] != phase:
        ret["changes"] = {"phase": {"old": phase, "new": result["phase"]}}
    ret["comment"] = result["comment"] + _lines("Errors", result["errors"]) + _lines("Warnings", result["warnings"])
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
        f"syn2mas would migrate: {commands['check']}; then stop Synapse and MAS (unless "
        f"mas:syn2mas:stop_services is false); then {commands['migrate']}"
    )
    ret["changes"] = {"phase": {"old": status["phase"], "new": "migrated"}}
    return ret


def delegated(name, mapdata=None):
    """
    Record the ``delegated`` phase once Synapse delegates to MAS after a
    migration (``mas:migration_in_progress`` false, the drop-in in place).
    Nothing to do without a recorded migration (a new homeserver). Fails when
    delegation would skip or outrun syn2mas (phase ``migrating`` or a reset
    ``legacy_auth``).

    name
        Any name.
    mapdata
        The formula's map (``mas/map.jinja``).

    .. code-block:: yaml

        mas-synapse-file-mas-syn2mas-delegated:
          mas_syn2mas.delegated:
            - name: syn2mas
            - require:
              - mas_synapse: mas-synapse-file-mas-synapse-dropin
    """
    ret = _ret(name)
    try:
        # cheap on every run: the marker only (no HTTP, no subprocess)
        phase = __salt__["mas_syn2mas.phase"](mapdata=mapdata)
        if __opts__["test"] and phase == "migrated":
            # the only case in which mark_delegated writes (once per deployment)
            status = __salt__["mas_syn2mas.status"](mapdata=mapdata)
            if status["migration_in_progress"]:
                ret["result"] = False
                ret["comment"] = "delegated refused: mas:migration_in_progress is still true"
                return ret
            ret["result"] = None
            ret["comment"] = "syn2mas phase delegated would be recorded"
            ret["changes"] = {"phase": {"old": phase, "new": "delegated"}}
            return ret
        result = __salt__["mas_syn2mas.mark_delegated"](mapdata=mapdata)  # read-only unless phase is migrated
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["result"] = False
        ret["comment"] = f"syn2mas: {exc}"
        return ret
    ret["result"] = result["result"]
    ret["changes"] = result.get("changes", {})
    ret["comment"] = result["comment"] + _lines("Errors", result["errors"])
    return ret
