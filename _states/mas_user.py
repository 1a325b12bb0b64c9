"""
States of the ``mas`` formula's users, in whichever service is authoritative: ``mas_user.present``, ``mas_user.absent``, ``mas_user.registration_token``, ``mas_user.bot_token`` and ``mas_user.sessions_closed``.

MAS authoritative (``mas:enabled`` and not ``mas:migration_in_progress``):
MAS's admin API. Otherwise Synapse's shared-secret registration and admin API
(syn2mas carries the users to MAS later). The comment of every state says
which service received the change. The states of one run share one session
per service and read MAS's users and emails once, in pages;
``mas_user.sessions_closed`` (last in ``mas.users``) ends the sessions. The
token states call the ``mas_token`` execution module.

:depends: the ``mas_user`` and ``mas_token`` execution modules of this formula
"""

from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "mas_user"

#: Which service each authority is.
_WHERE = {"mas": "MAS", "synapse": "Synapse"}
#: Said after "Synapse" in the comment of a user state whose change lands there.
_SYNAPSE_NOTE = " (authoritative while MAS is disabled or mas:migration_in_progress; syn2mas carries it to MAS)"


def __virtual__():
    if "mas_user.register" in __salt__:
        return __virtualname__
    return (False, "The mas_user state module needs the mas_user execution module (run saltutil.sync_all)")


def _ret(name):
    return {"name": name, "result": True, "comment": "", "changes": {}}


def _lands_in(authority):
    """Where a user state's change lands, for its comment: :data:`_WHERE`, and why when it is Synapse."""
    return _WHERE[authority] + (_SYNAPSE_NOTE if authority == "synapse" else "")


def _failed(ret, what, exc):
    if __opts__["test"] and (getattr(exc, "info", None) or {}).get("unreachable"):
        # a fresh minion: MAS is not configured or running yet
        ret["result"] = None
        ret["comment"] = f"{what} would be handled once the service answers ({exc})"
        return ret
    ret["result"] = False
    ret["comment"] = f"{what}: {exc}"
    return ret


def present(
    name,
    admin=False,
    emails=None,
    password_pillar_key=None,
    locked=None,
    password_update="on_create",  # noqa: S107 (not a password)
    skip_password_check=False,
    wait=60,
):
    """
    Ensure a user exists, active, with the given admin flag, emails and lock,
    in the service that is authoritative now (the playbook's
    matrix-user-creator, idempotent; see ``mas_user.register``). The password
    is read from pillar on the minion.

    name
        The localpart.
    admin
        MAS ``can_request_admin`` / Synapse server admin.
    emails
        Email addresses the user must have (others are kept).
    password_pillar_key
        The pillar key of the password (e.g. ``mas:users:0:password``).
    locked
        ``True``/``False``: lock/unlock; unset leaves it alone.
    password_update
        ``on_create`` (default) or ``always`` (whenever the pillar's password
        differs from the one the formula set last).
    skip_password_check
        Skip MAS's password complexity check.
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
    args = {
        "admin": admin,
        "emails": emails,
        "password_pillar_key": password_pillar_key,
        "locked": locked,
        "password_update": password_update,
        "skip_password_check": skip_password_check,
    }
    try:
        plan = __salt__["mas_user.plan"](name, wait=0 if __opts__["test"] else wait, batch=True, **args)
        where = _lands_in(plan["authority"])
        if not plan["changes"]:
            ret["comment"] = f"User {name} is already as wanted in {where}"
            return ret
        verb = "registered" if "user" in plan["changes"] else "updated"
        if __opts__["test"]:
            ret["result"] = None
            ret["changes"] = plan["changes"]
            ret["comment"] = f"User {name} would be {verb} in {where}"
            if plan.get("unverified"):
                ret["comment"] += " (not verified: the formula's Synapse admin account is created on the first run)"
            return ret
        done = __salt__["mas_user.register"](name, batch=True, **args)
    except (CommandExecutionError, SaltInvocationError) as exc:
        return _failed(ret, f"User {name}", exc)
    ret["changes"] = done["changes"]
    verb = "registered" if done["created"] else "updated" if done["changes"] else "already as wanted"
    ret["comment"] = f"User {name} {verb} in {_lands_in(done['authority'])}"
    return ret


def absent(name, erase=False):
    """
    Ensure a user is deactivated in the authoritative service (no login, its
    sessions ended). MAS and Synapse keep deactivated users: the name stays
    taken, and ``mas_user.present`` reactivates it. ``erase``: also erase the
    user's data on the homeserver.

    .. code-block:: yaml

        mas-users-mas_user-absent-olduser:
          mas_user.absent:
            - name: olduser
    """
    ret = _ret(name)
    try:
        if __opts__["test"]:
            plan = __salt__["mas_user.plan"](name, batch=True)
            where = _lands_in(plan["authority"])
            user = plan["user"]
            if user is None or user["deactivated"]:
                state = "does not exist" if user is None else "is already deactivated"
                ret["comment"] = f"User {name} {state} in {where}"
                return ret
            changes = {"deactivated": {"old": False, "new": True}}
            ret.update(result=None, changes=changes, comment=f"User {name} would be deactivated in {where}")
            return ret
        done = __salt__["mas_user.deactivate"](name, erase=erase, missing_ok=True, batch=True)
    except (CommandExecutionError, SaltInvocationError) as exc:
        return _failed(ret, f"User {name}", exc)
    where = _lands_in(done["authority"])
    ret["changes"] = done["changes"]
    if not done["exists"]:
        ret["comment"] = f"User {name} does not exist in {where}"
    elif not done["changes"]:
        ret["comment"] = f"User {name} is already deactivated in {where}"
    else:
        ret["comment"] = f"User {name} deactivated in {where} (kept there: the name stays taken)"
    return ret


def _mas_only(ret, what):
    """True when MAS is not authoritative: the state has nothing to do (and says why)."""
    who = __salt__["mas_user.authority"]()
    if who["authority"] == "mas":
        return False
    ret["comment"] = f"{what}: skipped, MAS is not authoritative ({who['reason']})"
    return True


def registration_token(name, usage_limit=None, expires=None, revoked=False):
    """
    Ensure the MAS user registration token ``name`` exists with the given
    ``usage_limit`` (unset: unlimited), ``expires`` (RFC 3339; unset: never)
    and ``revoked``. The token's value is generated once into
    ``<base_path>/registration-tokens/<name>`` (root, 0600) and never shown.
    Skipped while Synapse is authoritative.

    .. code-block:: yaml

        mas-users-mas_user-registration_token-friends:
          mas_user.registration_token:
            - name: friends
            - usage_limit: 10
            - expires: 2030-01-31T00:00:00Z
    """
    ret = _ret(name)
    what = f"Registration token {name}"
    try:
        if _mas_only(ret, what):
            return ret
        args = {"usage_limit": usage_limit, "expires": expires, "revoked": revoked, "batch": True}
        plan = __salt__["mas_token.registration_token_plan"](name, **args)
        if not plan["changes"]:
            ret["comment"] = f"{what} is already as wanted in MAS ({plan['path']})"
            return ret
        if __opts__["test"]:
            ret.update(result=None, changes=plan["changes"], comment=f"{what} would be updated in MAS")
            return ret
        done = __salt__["mas_token.registration_token_ensure"](name, **args)
    except (CommandExecutionError, SaltInvocationError) as exc:
        return _failed(ret, what, exc)
    ret["changes"] = done["changes"]
    ret["comment"] = f"{what} updated in MAS; its value is in {done['path']}"
    return ret


def bot_token(
    name,
    path,
    owner=None,
    group=None,
    scope=None,
    device_id=None,
    expires_in=None,
    renew_before=None,
    synapse_admin=False,
):
    """
    Ensure the bot ``name`` has a valid access token in ``path`` (0600, owned
    by ``owner``:``group``): a MAS personal session, regenerated when it
    expires within ``renew_before`` seconds (unset: the map's
    ``mas:access_token_defaults:renew_before``, one day; see
    ``mas_token.bot_token``).
    A valid token is kept as it is. Skipped while Synapse is authoritative.

    .. code-block:: yaml

        mas-users-mas_user-bot_token-bot.alerts:
          mas_user.bot_token:
            - name: bot.alerts
            - path: /var/lib/alerts/token
            - owner: alerts
            - expires_in: 2592000
    """
    ret = _ret(name)
    what = f"Bot token of {name} ({path})"
    args = {
        "owner": owner,
        "group": group,
        "scope": scope,
        "device_id": device_id,
        "expires_in": expires_in,
        "renew_before": renew_before,
        "synapse_admin": synapse_admin,
        "batch": True,
    }
    try:
        if _mas_only(ret, what):
            return ret
        status = __salt__["mas_token.bot_token_status"](name, path, **args)
        if status["action"] == "none":
            ret["comment"] = f"{what} is valid"
            return ret
        if __opts__["test"]:
            ret["result"] = None
            ret["changes"] = {"token": {"old": status["reason"], "new": status["action"]}}
            ret["comment"] = f"{what} would be renewed in MAS ({status['action']})"
            return ret
        done = __salt__["mas_token.bot_token"](name, path, **args)
    except (CommandExecutionError, SaltInvocationError) as exc:
        return _failed(ret, what, exc)
    ret["changes"] = done["changes"]
    ret["comment"] = f"{what} renewed in MAS"
    return ret


def sessions_closed(name):
    """
    End the sessions the user states of this run shared: log the formula's
    Synapse admin out (its token then no longer exists anywhere) and forget
    the users read from MAS. Never a change; runs under ``test=True`` too.

    .. code-block:: yaml

        mas-users-mas_user-sessions_closed:
          mas_user.sessions_closed:
            - name: mas users
            - order: last
    """
    ret = _ret(name)
    closed = __salt__["mas_user.close"]()["closed"]
    ret["comment"] = f"Closed the sessions with {', '.join(_WHERE[c] for c in closed)}" if closed else "No session open"
    return ret
