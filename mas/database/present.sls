#!mas_py
"""The MAS role, a UTF8 database and pg_trgm (mas:database:manage: true)."""

ROLE = "database"  # mas:roles: elsewhere, the renderer gives one test.nop instead


def run(mas, tplroot):
    database = mas["database"]
    return {
        "mas-database-present-mas_db-present": state(
            "mas_db.present",
            name=database["name"],
            owner=database["user"],
            admin=database["admin"],
            password_pillar_key="mas:database:password" if database["password_set"] else None,
        )
    }
