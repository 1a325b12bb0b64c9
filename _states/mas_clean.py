"""
State of the ``mas`` formula's purge: ``mas_clean.purged`` (``mas:clean:purge``: only what the formula made goes).

:depends: the ``mas_clean`` execution module of this formula
"""

from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "mas_clean"


def __virtual__():
    if "mas_clean.purge" in __salt__:
        return __virtualname__
    return (False, "The mas_clean state module needs the mas_clean execution module (run saltutil.sync_all)")


def _kept(kept):
    return "; ".join(f"{path}: {why}" for path, why in sorted(kept.items()))


def purged(name, mapdata=None):
    """
    Remove what the formula made under ``mas:base_path`` (``name``): its
    files (a banner, its record, the names it reserves in its own
    directories), the releases it extracted and then its directories that
    are empty; keep every other file, naming it and why. ``changes``:
    ``old`` lists what is removed, ``new`` what is kept and why. Predicts
    under ``test=True`` without touching anything. Refused while
    ``mas:enabled`` is true (see ``mas_clean.purge_plan``).

    name
        ``mas:base_path`` (for the output).
    mapdata
        The formula's map (default: ``mas.mapdata``).

    .. code-block:: yaml

        mas-install-clean-mas_clean-purged:
          mas_clean.purged:
            - name: /matrix/matrix-authentication-service
    """
    ret = {"name": name, "result": True, "comment": "", "changes": {}}
    try:
        plan = __salt__["mas_clean.purge_plan"](mapdata=mapdata)
        removing = plan["files"] + plan["trees"] + plan["directories"]
        if not removing:
            ret["comment"] = f"Nothing the formula made is left under {name}"
            if plan["kept"]:
                ret["comment"] += f"; kept: {_kept(plan['kept'])}"
            return ret
        if __opts__["test"]:
            ret["result"] = None
            ret["changes"] = {"old": removing, "new": {"kept": plan["kept"]}}
            ret["comment"] = f"{len(removing)} paths the formula made under {name} would be removed"
        else:
            done = __salt__["mas_clean.purge"](mapdata=mapdata)
            ret["changes"] = {"old": done["removed"], "new": {"kept": done["kept"]}}
            ret["comment"] = f"{len(done['removed'])} paths the formula made under {name} removed"
            plan = {"kept": done["kept"]}
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["result"] = False
        ret["comment"] = f"Purge of {name}: {exc}"
        return ret
    if plan["kept"]:
        ret["comment"] += f"; kept: {_kept(plan['kept'])}"
    return ret
