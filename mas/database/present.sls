#!py
"""The MAS role, a UTF8 database and pg_trgm (mas:database:manage: true)."""


def run():
    database = __salt__["mas.mapdata"](refuse_foreign=True)["database"]
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
