"""
State of the ``mas`` formula's runtime: ``mas.image_present`` (the MAS container image of the docker runtime).

:depends: the ``mas`` execution module of this formula
"""

from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "mas"


def __virtual__():
    if "mas.image_present" in __salt__:
        return __virtualname__
    return (False, "The mas state module needs the mas execution module (run saltutil.sync_all)")


def _ret(name):
    return {"name": name, "result": True, "comment": "", "changes": {}}


def image_present(name, command="/usr/bin/docker"):
    """
    Ensure the MAS container image is present (pulled when missing).

    name
        The image reference (``mas:image``).
    command
        The docker CLI (``mas:service:docker:command``).

    .. code-block:: yaml

        mas-service-running-mas-image_present:
          mas.image_present:
            - name: ghcr.io/element-hq/matrix-authentication-service:1.23.0
    """
    ret = _ret(name)
    try:
        state = __salt__["mas.image_present"](name, command, test=__opts__["test"])
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["result"] = False
        ret["comment"] = f"Image {name}: {exc}"
        return ret
    if state["present_before"]:
        ret["comment"] = f"Image {name} is already present"
        return ret
    ret["changes"] = {"image": {"old": None, "new": name}}
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = f"Image {name} would be pulled"
    else:
        ret["comment"] = f"Image {name} pulled"
    return ret
