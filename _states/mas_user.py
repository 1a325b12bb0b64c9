"""
State of the ``mas`` formula's users: ``mas_user.present`` (a MAS user through MAS's admin API, idempotent).

:depends: the ``mas_user`` execution module of this formula
"""

from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "mas_user"


def __virtual__():
    if "mas_user.register" in __salt__:
        return __virtualname__
    return (False, "The mas_user state module needs the mas_user execution module (run saltutil.sync_all)")


def _ret(name):
    return {"name": name, "result": True, "comment": "", "changes": {}}


def present(name, admin=False, emails=None, password_pillar_key=None, wait=60):
    """
    Ensure a MAS user exists with the given admin flag and emails (the
    playbook's matrix-user-creator, idempotent). The password, read from
    pillar on the minion, is set when the user is created only. MAS must be
    running; refused while ``mas:migration_in_progress`` is true.

    name
        The localpart.
    admin
        ``can_request_admin``.
    emails
        Email addresses the user must have (others are kept).
    password_pillar_key
        The pillar key of the initial password (e.g. ``mas:users:0:password``).
    wait
        Seconds to wait for MAS to answer (it may just have been started).

    .. code-block:: yaml

        mas-users-mas_user-present-alice:
          mas_user.present:
            - name: alice
            - admin: true
            - emails: [alice@example.com]
            - password_pillar_key: mas:users:0:password
    """
    ret = _ret(name)
    try:
        plan = __salt__["mas_user.plan"](
            name, admin, emails, password_set=password_pillar_key is not None, wait=0 if __opts__["test"] else wait
        )
        if not plan["changes"]:
            ret["comment"] = f"MAS user {name} is already as wanted"
            return ret
        if __opts__["test"]:
            ret["result"] = None
            ret["comment"] = f"MAS user {name} would be {'updated' if plan['user'] else 'registered'}"
            ret["changes"] = plan["changes"]
            return ret
        done = __salt__["mas_user.register"](name, password_pillar_key=password_pillar_key, admin=admin, emails=emails)
    except (CommandExecutionError, SaltInvocationError) as exc:
        if __opts__["test"] and (getattr(exc, "info", None) or {}).get("unreachable"):
            # a fresh minion: MAS is not configured or running yet
            ret["result"] = None
            ret["comment"] = f"MAS user {name} would be registered once MAS answers ({exc})"
            return ret
        ret["result"] = False
        ret["comment"] = f"MAS user {name}: {exc}"
        return ret
    ret["comment"] = f"MAS user {name} {'registered' if done['created'] else 'updated'}"
    ret["changes"] = done["changes"]
    return ret
