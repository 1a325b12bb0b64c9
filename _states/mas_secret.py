"""
State of the ``mas`` formula's secret files: ``mas_secret.present`` (generated once or from pillar, never shown).

:depends: the ``mas_secret`` execution module of this formula
"""

from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "mas_secret"


def __virtual__():
    if "mas_secret.write" in __salt__:
        return __virtualname__
    return (False, "The mas_secret state module needs the mas_secret execution module (run saltutil.sync_all)")


def _ret(name):
    return {"name": name, "result": True, "comment": "", "changes": {}}


def present(
    name,
    kind,
    pillar_key=None,
    user="root",
    group="root",
    mode="0600",
    allow_rotation=False,
    source=None,
    owner=None,
    tmp_dir=None,
):
    """
    Ensure a secret file exists, generated once or taken from pillar, owned by
    ``user``:``group`` with ``mode``. The value is never shown: changes say
    ``generated``, ``from pillar`` or ``copied from <file>``.

    name
        The path of the secret file.
    kind
        ``hex32``, ``token``, ``rsa``, ``ec-p256``, ``ec-p384``, ``ec-k256``,
        ``pillar``, ``pepper``, ``copy`` or ``synapse_config`` (see
        ``mas_secret.status``).
    pillar_key
        The pillar key that may hold the value (read on the minion, so the
        value never passes through the SLS).
    allow_rotation
        Allow replacing an existing encryption secret with another pillar value.
    source
        For ``kind: copy``, the file to copy.
    owner
        The map's ``secret_owner`` (``{record, dirs}``): an existing file that
        is not the formula's own is refused, never replaced, and every file
        written is recorded (see ``mas_secret.foreign``).
    tmp_dir
        Where the file is staged before its rename (default: beside it; see
        ``mas_secret.atomic_write``): the signing keys are staged in the
        secrets directory, since MAS loads every file of ``keys_dir``.

    .. code-block:: yaml

        mas-secrets-file-mas_secret-present-encryption:
          mas_secret.present:
            - name: /matrix/matrix-authentication-service/config/secrets/encryption
            - kind: hex32
            - pillar_key: mas:secrets:encryption
            - user: mas
            - group: mas
    """
    ret = _ret(name)
    args = dict(
        kind=kind,
        pillar_key=pillar_key,
        user=user,
        group=group,
        mode=mode,
        allow_rotation=allow_rotation,
        source=source,
        owner=owner,
    )
    try:
        status = __salt__["mas_secret.status"](name, **args)
        if status["action"] == "none":
            ret["comment"] = f"Secret file {name} is already in place"
            return ret
        change = {"old": "absent" if status["action"] == "create" else "present", "new": status["reason"]}
        if __opts__["test"]:
            ret["result"] = None
            ret["comment"] = f"Secret file {name} would be {_verb(status['action'])} ({status['reason']})"
            ret["changes"] = {"secret": change}
            return ret
        __salt__["mas_secret.write"](name, tmp_dir=tmp_dir, **args)
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["result"] = False
        ret["comment"] = f"Secret file {name}: {exc}"
        return ret
    ret["comment"] = f"Secret file {name} {_verb(status['action'])} ({status['reason']})"
    ret["changes"] = {"secret": change}
    return ret


def _verb(action):
    return {"create": "created", "update": "updated", "fix-mode": "fixed (owner/mode)"}[action]
