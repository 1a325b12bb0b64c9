#!py
"""The MAS role, a UTF8 database and pg_trgm (mas:database:manage: true)."""

from salt.exceptions import SaltInvocationError


def run():
    try:
        mas = __salt__["mas.mapdata"](refuse_foreign=True)
    except SaltInvocationError as exc:  # the pillar's error, without the loader's frames around it
        raise SaltInvocationError(str(exc)) from None
    database = mas["database"]
    return {
        "mas-database-present-mas_db-present": {
            "mas_db.present": [
                {"name": database["name"]},
                {"owner": database["user"]},
                {"admin": database["admin"]},
                {"password_pillar_key": "mas:database:password" if database["password_set"] else None},
            ]
        }
    }
