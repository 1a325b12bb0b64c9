"""
State of the ``mas`` formula's database: ``mas_db.present`` (MAS's role, its UTF8 database and ``pg_trgm``).

:depends: the ``mas_db`` execution module of this formula
"""

from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "mas_db"


def __virtual__():
    if "mas_db.ensure" in __salt__:
        return __virtualname__
    return (False, "The mas_db state module needs the mas_db execution module (run saltutil.sync_all)")


def _ret(name):
    return {"name": name, "result": True, "comment": "", "changes": {}}


def present(name, owner, admin, password_pillar_key=None):
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

        mas-database-present-mas_db-present:
          mas_db.present:
            - name: mas
            - owner: mas
            - admin: {user: postgres, runas: postgres}
            - password_pillar_key: mas:database:password
    """
    ret = _ret(name)
    try:
        status = __salt__["mas_db.status"](name, owner, admin, password_pillar_key)
        todo = {key: {"old": value, "new": "ok"} for key, value in status.items() if value != "ok"}
        if not todo:
            ret["comment"] = f"Database {name}, role {owner} and pg_trgm are already in place"
            return ret
        if __opts__["test"]:
            ret["result"] = None
            ret["comment"] = f"Database {name} would be fixed: {', '.join(sorted(todo))}"
            ret["changes"] = todo
            return ret
        __salt__["mas_db.ensure"](name, owner, admin, password_pillar_key)
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["result"] = False
        ret["comment"] = f"Database {name}: {exc}"
        return ret
    ret["comment"] = f"Database {name} fixed: {', '.join(sorted(todo))}"
    ret["changes"] = todo
    return ret
