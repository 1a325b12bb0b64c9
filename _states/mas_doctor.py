"""
State of the ``mas`` formula's doctor: ``mas_doctor.healthy``, a gate that fails when doctor reports an error.

:depends: the ``mas_doctor`` execution module of this formula
"""

from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "mas_doctor"


def __virtual__():
    if "mas_doctor.run" in __salt__:
        return __virtualname__
    return (False, "The mas_doctor state module needs the mas_doctor execution module (run saltutil.sync_all)")


def _ret(name):
    return {"name": name, "result": True, "comment": "", "changes": {}}


def healthy(name, strict=False):
    """
    Fail when ``mas-cli doctor`` reports an error (or a warning, with
    ``strict``): a gate for orchestration after deploying MAS. Changes
    nothing; under ``test=True`` doctor is not run.

    name
        Any label.
    strict
        Count warnings as failures too.

    .. code-block:: yaml

        mas-doctor-mas_doctor-healthy:
          mas_doctor.healthy:
            - name: MAS and Synapse work together
    """
    ret = _ret(name)
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = "mas-cli doctor would run"
        return ret
    try:
        report = __salt__["mas_doctor.run"](strict=strict)
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["result"] = False
        ret["comment"] = f"mas-cli doctor: {exc}"
        return ret
    lines = [f"error: {m}" for m in report["errors"]] + [f"warning: {m}" for m in report["warnings"]]
    ret["result"] = report["result"]
    summary = f"{len(report['ok'])} checks passed, {len(report['warnings'])} warnings, {len(report['errors'])} errors"
    ret["comment"] = "\n".join([f"mas-cli doctor: {summary}"] + lines)
    return ret
