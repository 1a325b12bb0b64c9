"""mas:database:manage against a real PostgreSQL: role, UTF8 database and
pg_trgm, the password proven by a real SCRAM login (issue: Formula foundation)."""

import psycopg
import pytest

from pillars import deep_update

pytestmark = pytest.mark.integration


@pytest.fixture
def db_pillar(full_pillar, pg, request):
    name = "mas_" + request.node.name.split("[")[0][-20:].replace("-", "_")
    pg.require_password(name)
    return deep_update(
        full_pillar,
        {
            "database": {
                "manage": True,
                "name": name,
                "user": name,
                "host": "127.0.0.1",
                "port": pg.port,
                "admin": {"user": pg.superuser, "host": str(pg.sockdir), "port": pg.port, "runas": "postgres"},
            }
        },
    )


def login(pg, role, password):
    with psycopg.connect(host="127.0.0.1", port=pg.port, dbname=role, user=role, password=password) as conn:
        return conn.execute("SELECT current_user").fetchone()[0]


def test_database_role_and_pg_trgm_created_once(salt_minion, db_pillar, pg):
    name = db_pillar["database"]["name"]
    password = db_pillar["database"]["password"]
    predicted = salt_minion.apply(db_pillar, test=True)
    assert predicted.returncode == 0, predicted.output
    state = predicted.by_id("mas-database-present-mas_db-present")
    assert state["result"] is None and set(state["changes"]) >= {"role", "database", "pg_trgm"}
    assert not pg.database_exists(name)

    res = salt_minion.apply(db_pillar)
    assert res.returncode == 0, res.output
    assert password not in res.output
    rows = pg.query(
        "postgres",
        "SELECT pg_encoding_to_char(encoding), pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
        (name,),
    )
    assert rows == [("UTF8", name)]
    assert pg.query(name, "SELECT extname FROM pg_extension WHERE extname = 'pg_trgm'") == [("pg_trgm",)]
    assert login(pg, name, password) == name
    with pytest.raises(psycopg.OperationalError):
        login(pg, name, "wrong-password")

    again = salt_minion.apply(db_pillar)
    assert again.returncode == 0 and again.changed == [], again.output


def test_database_password_change_is_applied(salt_minion, db_pillar, pg):
    name = db_pillar["database"]["name"]
    assert salt_minion.apply(db_pillar).returncode == 0
    changed = deep_update(db_pillar, {"database": {"password": "A-New-Db-Password-42"}})
    res = salt_minion.apply(changed)
    assert res.returncode == 0, res.output
    assert res.by_id("mas-database-present-mas_db-present")["changes"] == {"password": {"old": "differs", "new": "ok"}}
    assert "A-New-Db-Password-42" not in res.output
    assert login(pg, name, "A-New-Db-Password-42") == name


def test_an_existing_database_or_foreign_role_is_not_taken_over(salt_minion, db_pillar, pg):
    """A pillar typo naming another service's database or role must not reset
    its password or change its owner."""
    pg.create_role("other_service", password="Other-Service-Pw-1")
    pg.create_database("other_db", owner="other_service")
    for database in ({"name": "other_db"}, {"user": "other_service", "name": "mas_new_db_for_takeover"}):
        res = salt_minion.apply(deep_update(db_pillar, {"database": database}))
        assert res.returncode != 0
        state = res.by_id("mas-database-present-mas_db-present")
        assert state["result"] is False and "does not take" in state["comment"]
    assert pg.query("postgres", "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'other_db'") == [
        ("other_service",)
    ]
    assert not pg.database_exists("mas_new_db_for_takeover")
