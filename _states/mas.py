"""
States of the ``mas`` formula (Matrix Authentication Service).

The state functions check first, predict under ``test=True`` without touching
anything, and report what changed -- never a secret value.

:depends: the ``mas`` execution module of this formula
"""

import logging

from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "mas"


def __virtual__():
    if "mas.write_secret" in __salt__:
        return __virtualname__
    return (False, "The mas state module needs the mas execution module (run saltutil.sync_all)")


def _ret(name):
    return {"name": name, "result": True, "comment": "", "changes": {}}


def secret(name, kind, pillar_key=None, user="root", group="root", mode="0600",
           allow_rotation=False, source=None, synapse=None):
    """
    Ensure a secret file exists, generated once or taken from pillar, owned by
    ``user``:``group`` with ``mode``. The value is never shown: changes say
    ``generated``, ``from pillar`` or ``copied from <file>``.

    name
        The path of the secret file.
    kind
        ``hex32``, ``token``, ``rsa``, ``ec-p256``, ``ec-p384``, ``ec-k256``,
        ``pillar``, ``pepper`` or ``copy`` (see ``mas.secret_status``).
    pillar_key
        The pillar key that may hold the value (read on the minion, so the
        value never passes through the SLS).
    allow_rotation
        Allow replacing an existing encryption secret with another pillar value.
    source
        For ``kind: copy``, the file to copy.
    synapse
        For ``kind: pepper``: ``{config_files, config_dir, extra_config}``.

    .. code-block:: yaml

        mas-secrets-encryption:
          mas.secret:
            - name: /matrix/matrix-authentication-service/config/secrets/encryption
            - kind: hex32
            - pillar_key: mas:secrets:encryption
            - user: mas
            - group: mas
    """
    ret = _ret(name)
    args = dict(kind=kind, pillar_key=pillar_key, user=user, group=group, mode=mode,
                allow_rotation=allow_rotation, source=source, synapse=synapse)
    try:
        status = __salt__["mas.secret_status"](name, **args)
        if status["action"] == "none":
            ret["comment"] = f"Secret file {name} is already in place"
            return ret
        change = {"old": "absent" if status["action"] == "create" else "present",
                  "new": status["reason"]}
        if __opts__["test"]:
            ret["result"] = None
            ret["comment"] = f"Secret file {name} would be {_verb(status['action'])} ({status['reason']})"
            ret["changes"] = {"secret": change}
            return ret
        __salt__["mas.write_secret"](name, **args)
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["result"] = False
        ret["comment"] = f"Secret file {name}: {exc}"
        return ret
    ret["comment"] = f"Secret file {name} {_verb(status['action'])} ({status['reason']})"
    ret["changes"] = {"secret": change}
    return ret


def _verb(action):
    return {"create": "created", "update": "updated", "fix-mode": "fixed (owner/mode)"}[action]


def database(name, owner, admin, password_pillar_key=None):
    """
    Ensure the MAS PostgreSQL role, its UTF8 database and the ``pg_trgm``
    extension exist (``mas:database:manage``). The role's password is read
    from pillar on the minion and sent to PostgreSQL only as a SCRAM verifier.

    name
        The database name.
    owner
        The role that owns it (MAS connects as this role).
    admin
        ``{user, host, port, runas}``: how to reach PostgreSQL as a superuser.
    password_pillar_key
        The pillar key of the role's password (``mas:database:password``).

    .. code-block:: yaml

        mas-database-mas-database:
          mas.database:
            - name: mas
            - owner: mas
            - admin: {user: postgres, runas: postgres}
            - password_pillar_key: mas:database:password
    """
    ret = _ret(name)
    try:
        status = __salt__["mas.database_status"](name, owner, admin, password_pillar_key)
        todo = {key: {"old": value, "new": "ok"} for key, value in status.items() if value != "ok"}
        if not todo:
            ret["comment"] = f"Database {name}, role {owner} and pg_trgm are already in place"
            return ret
        if __opts__["test"]:
            ret["result"] = None
            ret["comment"] = f"Database {name} would be fixed: {', '.join(sorted(todo))}"
            ret["changes"] = todo
            return ret
        __salt__["mas.database_ensure"](name, owner, admin, password_pillar_key)
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["result"] = False
        ret["comment"] = f"Database {name}: {exc}"
        return ret
    ret["comment"] = f"Database {name} fixed: {', '.join(sorted(todo))}"
    ret["changes"] = todo
    return ret


def user_present(name, admin=False, emails=None, password_pillar_key=None, wait=60):
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

        mas-users-mas-user-present-alice:
          mas.user_present:
            - name: alice
            - admin: true
            - emails: [alice@example.com]
            - password_pillar_key: mas:users:0:password
    """
    ret = _ret(name)
    try:
        plan = __salt__["mas.user_plan"](name, admin, emails, password_set=password_pillar_key is not None,
                                         wait=0 if __opts__["test"] else wait)
        if not plan["changes"]:
            ret["comment"] = f"MAS user {name} is already as wanted"
            return ret
        if __opts__["test"]:
            ret["result"] = None
            ret["comment"] = f"MAS user {name} would be {'updated' if plan['user'] else 'registered'}"
            ret["changes"] = plan["changes"]
            return ret
        done = __salt__["mas.register_user"](name, password_pillar_key=password_pillar_key, admin=admin, emails=emails)
    except (CommandExecutionError, SaltInvocationError) as exc:
        if __opts__["test"]:
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


def doctor(name, strict=False):
    """
    Fail when ``mas-cli doctor`` reports an error (or a warning, with
    ``strict``): a gate for orchestration after deploying MAS. Changes
    nothing; under ``test=True`` doctor is not run.

    name
        Any label.
    strict
        Count warnings as failures too.

    .. code-block:: yaml

        mas-doctor-mas-doctor:
          mas.doctor:
            - name: MAS and Synapse work together
    """
    ret = _ret(name)
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = "mas-cli doctor would run"
        return ret
    try:
        report = __salt__["mas.doctor"](strict=strict)
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["result"] = False
        ret["comment"] = f"mas-cli doctor: {exc}"
        return ret
    lines = [f"error: {m}" for m in report["errors"]] + [f"warning: {m}" for m in report["warnings"]]
    ret["result"] = report["result"]
    summary = f"{len(report['ok'])} checks passed, {len(report['warnings'])} warnings, {len(report['errors'])} errors"
    ret["comment"] = "\n".join([f"mas-cli doctor: {summary}"] + lines)
    return ret


def image_present(name, command="/usr/bin/docker"):
    """
    Ensure the MAS container image is present (pulled when missing).

    name
        The image reference (``mas:image``).
    command
        The docker CLI (``mas:service:docker:command``).

    .. code-block:: yaml

        mas-service-running-mas-image-present:
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
