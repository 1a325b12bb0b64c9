"""
State of the ``mas`` formula's doctor: ``mas_doctor.healthy``, a gate that waits for MAS and fails when the doctor finds an error.

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


def healthy(name, strict=False, wait=60, timeout=10):
    """
    Wait until MAS's ``/health`` (and Synapse) answer, with growing pauses, at
    most ``wait`` seconds; then run the doctor (``mas_doctor.run``) and fail
    on an error, or on a warning with ``strict``. Warnings alone pass, listed
    in the comment. Changes nothing; under ``test=True`` nothing is probed.

    name
        Any label.
    strict
        Count warnings as failures too (``mas:doctor:strict``).
    wait
        Seconds to wait for MAS and Synapse to answer (``mas:doctor:wait``),
        e.g. right after they were (re)started.
    timeout
        Seconds each check may take (``mas:doctor:timeout``).

    .. code-block:: yaml

        mas-doctor-mas_doctor-healthy:
          mas_doctor.healthy:
            - name: MAS and Synapse work together
            - wait: 60
    """
    ret = _ret(name)
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = f"the doctor would wait up to {wait} s for MAS and Synapse, then check the deployment"
        return ret
    try:
        waited = __salt__["mas_doctor.wait"](wait)
        report = __salt__["mas_doctor.run"](timeout=timeout, strict=strict)
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["result"] = False
        ret["comment"] = f"doctor: {exc}"
        return ret
    if waited["ready"]:
        head = f"MAS and Synapse answered after {waited['seconds']:.1f} s."
    else:
        head = f"Still not answering after {waited['seconds']:.1f} s: {'; '.join(waited['waiting_for'])}."
    ret["result"] = report["result"] == "ok" or (report["result"] == "warning" and not strict)
    if report["result"] == "warning":
        head += " Warnings " + ("fail this state (mas:doctor:strict)." if strict else "do not fail this state.")
    ret["comment"] = head + "\n" + __salt__["mas_doctor.render"](report)
    return ret
