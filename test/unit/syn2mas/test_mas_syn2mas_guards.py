"""Unit tests of syn2mas's guards and the phases they record (``lockout_check``, ``rollback_check``, ``reset``,
``mark_delegated``, ``mark_rolled_back`` and their states): on a SQLite Synapse and a PostgreSQL port nothing listens
on, for real; the reset's bookkeeping with MAS's database found empty (``mas_database_empty``); each phase recorded
from the marker read under its lock (``meanwhile``: another run records a phase in between). Shared with
``test_mas_syn2mas.py``: ``syn2mas_unit.py`` and ``conftest.py``.
"""

import pytest
import yaml

from formula_modules import dunders
from harness.util import free_port
from mas_formula import syn2mas_db, syn2mas_marker
from syn2mas_unit import (
    DB_PASSWORD,
    LOGIN_USERS,
    MIGRATE_OK,
    assert_no_secret,
    dropin,
    mapdata,
    marker,
    syn2mas,
    syn2mas_state,
    synapse_sqlite,
)


@pytest.fixture
def configure_loader_modules(pillar, cli, services):
    """The formula's modules, with this tier's stand-ins for the outside world (``cmd.run_all``, ``service.*``)."""
    return dunders(pillar, salt={"cmd.run_all": cli, **services})


# ------------------------------------------------------------------ reset / delegated


def test_reset_needs_confirmation_and_synapse_authoritative(world, cli, up, orchestration_stubs, mas_database_empty):
    data = mapdata(world, syn2mas={"stop_services": False})
    syn2mas.migrate(mapdata=data)
    assert syn2mas.reset(mapdata=data)["result"] is False
    delegating = mapdata(world, migration_in_progress=False)
    assert "set it to true" in syn2mas.reset(confirm=True, mapdata=delegating)["errors"][0]
    done = syn2mas.reset(confirm=True, mapdata=data)
    assert done["result"] is True and done["changes"] == {"phase": {"old": "verified", "new": "legacy_auth"}}
    saved = marker(world)
    assert saved["phase"] == "legacy_auth" and saved["reset_from"] == "verified"
    assert [h["phase"] for h in saved["history"]] == ["migrating", "verified", "legacy_auth"]
    assert syn2mas.reset(confirm=True, mapdata=data)["changes"] == {}


def test_reset_repairs_an_unreadable_marker(world, mas_database_empty):
    (world["base"] / "formula" / "syn2mas.json").write_text("{not json")
    done = syn2mas.reset(confirm=True, mapdata=mapdata(world))
    assert done["result"] is True and done["changes"] == {"phase": {"old": "unreadable", "new": "legacy_auth"}}
    assert marker(world)["phase"] == "legacy_auth"


def test_reset_refuses_while_mas_database_cannot_be_read(world, pillar):
    """Issue 21.9: the reset looks into MAS's database for real (``syn2mas_guards.mas_leftovers``); here nothing
    listens there, so it cannot see the database empty: refused, naming it, the phase unchanged. (A database that
    still holds the migration is refused against real PostgreSQL: test_syn2mas_guards, test_syn2mas.)"""
    pillar["mas"]["database"] = {"password": DB_PASSWORD}
    port = free_port()
    data = mapdata(world, database={"host": "127.0.0.1", "port": port, "password": DB_PASSWORD})
    syn2mas_marker.set_phase(data, None, "rolled_back")
    refused = syn2mas.reset(confirm=True, mapdata=data)
    assert refused["result"] is False and refused["comment"] == "syn2mas reset refused (the phase is unchanged)"
    (error,) = refused["errors"]
    assert error.startswith(f"MAS's database {data['database']['name']} at 127.0.0.1:{port} (mas:database) is ")
    assert "unreachable" in error and error.endswith(
        ": the reset must see MAS's database empty first. Make it reachable (recreated, empty, if it was dropped), "
        "then run the reset again"
    )
    assert marker(world)["phase"] == "rolled_back"
    assert_no_secret(refused)


def test_reset_records_from_the_marker_read_under_its_lock(world, mas_database_empty, meanwhile):
    """Issue #17.6: another reset finished between this one's start and its lock: nothing is recorded twice."""
    data = mapdata(world)
    syn2mas_marker.set_phase(data, None, "rolled_back")
    meanwhile("legacy_auth", reset_from="rolled_back", reset_at="by the other reset")
    done = syn2mas.reset(confirm=True, mapdata=data)
    assert done["result"] is True and done["changes"] == {} and done["phase"] == "legacy_auth"
    saved = marker(world)
    assert saved["reset_at"] == "by the other reset" and [h["phase"] for h in saved["history"]] == [
        "rolled_back",
        "legacy_auth",
    ]
    assert mas_database_empty == []  # nothing left to reset: MAS's database is not asked


def test_mark_delegated_after_a_migration(world, cli, up, orchestration_stubs):
    data = mapdata(world, syn2mas={"stop_services": False})
    delegating = mapdata(world, migration_in_progress=False)
    cli.answers["migrate"] = {"retcode": 1, "stdout": "", "stderr": "Error: boom\n"}
    syn2mas.migrate(mapdata=data)
    dropin(world)
    half = syn2mas.mark_delegated(delegating)
    assert half["result"] is False and "did not finish (phase migrating" in half["errors"][0]

    cli.answers["migrate"] = MIGRATE_OK
    (world["conf_d"] / "matrix-authentication-service.yaml").unlink()
    syn2mas.migrate(mapdata=data)
    assert "not there yet" in syn2mas.mark_delegated(delegating)["errors"][0]
    dropin(world)
    done = syn2mas.mark_delegated(delegating)
    assert done["result"] is True and done["changes"] == {"phase": {"old": "verified", "new": "delegated"}}
    assert marker(world)["phase"] == "delegated" and "migration" not in marker(world)
    assert syn2mas.mark_delegated(delegating)["changes"] == {}


def test_mark_delegated_records_a_homeserver_that_needed_no_migration(world):
    synapse_sqlite(world)  # Synapse has no user yet
    delegating = mapdata(world, migration_in_progress=False)
    dropin(world)
    fresh = syn2mas.mark_delegated(delegating)
    assert fresh["result"] is True and fresh["changes"] == {"phase": {"old": None, "new": "delegated"}}
    saved = marker(world)
    assert saved["phase"] == "delegated" and saved["migration"] == "none"
    assert saved["fresh_check"]["login_users"]["total"] == 0
    status = syn2mas.status(delegating)
    assert status["phase"] == "delegated" and "no migration was needed" in status["next_step"]
    assert syn2mas.migrate(mapdata=mapdata(world))["errors"][0].startswith("no migration is needed")


def test_mark_delegated_records_from_the_marker_read_under_its_lock(world, meanwhile):
    """Issue #17.6: another run recorded the delegation after this one started: nothing is recorded twice."""
    delegating = mapdata(world, migration_in_progress=False)
    syn2mas_marker.set_phase(delegating, None, "verified", finished_at="2026-01-01T00:00:00+00:00")
    dropin(world)
    meanwhile("delegated", delegated_at="by the other run")
    result = syn2mas.mark_delegated(delegating)
    assert result["result"] is True and result["changes"] == {} and result["phase"] == "delegated"
    saved = marker(world)
    assert saved["delegated_at"] == "by the other run"
    assert [h["phase"] for h in saved["history"]] == ["verified", "delegated"]


def test_state_delegated(world, cli, up, orchestration_stubs):
    data = mapdata(world, syn2mas={"stop_services": False})
    syn2mas.migrate(mapdata=data)
    (world["conf_d"] / "matrix-authentication-service.yaml").write_text("{}\n")
    delegating = mapdata(world, migration_in_progress=False)
    syn2mas_state.__opts__["test"] = True
    predicted = syn2mas_state.delegated("syn2mas", mapdata=delegating)
    assert predicted["result"] is None and marker(world)["phase"] == "verified"
    syn2mas_state.__opts__["test"] = False
    ret = syn2mas_state.delegated("syn2mas", mapdata=delegating)
    assert ret["result"] is True and ret["changes"] == {"phase": {"old": "verified", "new": "delegated"}}


def test_lockout_guard_refuses_synapse_users_without_a_migration(world):
    synapse_sqlite(world, LOGIN_USERS, [("oidc-keycloak", "kc-bob", "@bob:example.com")])
    result = syn2mas.lockout_check(mapdata(world, migration_in_progress=False))
    assert result["result"] is False and result["phase"] == "legacy_auth"
    error = result["errors"][0]
    assert "holds 2 users who log in with a password (1) or through an upstream provider (1)" in error
    assert "lock every one of them out" in error and "mas:migration_in_progress: true" in error
    assert "mas_syn2mas.verify record=True" in error
    assert result["probe"]["login_users"] == {"with_password": 1, "with_external_id": 1, "total": 2}


def test_lockout_guard_passes_a_synapse_without_users(world):
    synapse_sqlite(world, LOGIN_USERS[2:])  # only users who cannot log in
    result = syn2mas.lockout_check(mapdata(world, migration_in_progress=False))
    assert result["result"] is True and result["errors"] == [] and "no Synapse user to lock out" in result["comment"]
    (world["tmp"] / "homeserver.db").unlink()  # Synapse never started: no database yet
    assert syn2mas.lockout_check(mapdata(world, migration_in_progress=False))["result"] is True


@pytest.mark.parametrize("case", ["unreachable", "no_config"])
def test_lockout_guard_refuses_what_it_cannot_read_unless_assume_fresh(world, case):
    if case == "no_config":
        world["hs"].unlink()
        (world["conf_d"] / "oidc.yaml").unlink()
        text = "no Synapse config file found"
    else:  # the world's Synapse config: PostgreSQL on a port nothing listens on
        conf = yaml.safe_load(world["hs"].read_text())
        conf["database"]["args"].update(host="127.0.0.1", port=free_port())
        world["hs"].write_text(yaml.safe_dump(conf))
        text = "is unreachable"
    refused = syn2mas.lockout_check(mapdata(world, migration_in_progress=False))
    assert refused["result"] is False and text in refused["errors"][0]
    assert "mas:syn2mas:assume_fresh: true" in refused["errors"][0]
    assert_no_secret(refused)
    allowed = syn2mas.lockout_check(mapdata(world, migration_in_progress=False, syn2mas={"assume_fresh": True}))
    assert allowed["result"] is True and "assume_fresh is true" in allowed["warnings"][0]


@pytest.mark.parametrize(
    "phase, ok, text",
    [
        ("migrating", False, "did not finish"),
        ("legacy_auth", False, "was reset to legacy_auth"),
        ("migrated_unverified", False, "verification found"),
        ("rolled_back", False, "made authoritative again"),
        ("migrated", True, "phase migrated"),
        ("verified", True, "phase verified"),
        ("delegated", True, "phase delegated"),
    ],
)
def test_lockout_guard_follows_the_recorded_phase_without_asking_synapse(world, monkeypatch, phase, ok, text):
    data = mapdata(world, migration_in_progress=False)
    syn2mas_marker.set_phase(data, None, phase)
    monkeypatch.setattr(syn2mas_db, "connected", None)  # no database may be asked
    result = syn2mas.lockout_check(data)
    assert result["result"] is ok and text in (result["comment"] + " ".join(result["errors"]))


def test_rollback_guard_only_asks_while_synapse_delegates(world, monkeypatch):
    monkeypatch.setattr(syn2mas_db, "connected", None)
    data = mapdata(world)
    assert "nothing to roll back" in syn2mas.rollback_check(data)["comment"]
    syn2mas_marker.set_phase(data, None, "verified")
    assert syn2mas.rollback_check(data)["result"] is True
    dropin(world)  # Synapse delegates although `delegated` was not recorded: asked (and MAS cannot be read here)
    with pytest.raises(TypeError):
        syn2mas.rollback_check(mapdata(world))


def test_rollback_guard_refuses_an_unreadable_mas_database_unless_forced(world):
    data = mapdata(world, database={"host": "127.0.0.1", "port": free_port()})
    syn2mas_marker.set_phase(data, None, "delegated", finished_at="2026-01-01T00:00:00+00:00")
    dropin(world)
    refused = syn2mas.rollback_check(data)
    assert refused["result"] is False and "mas:migration_in_progress is true" in refused["errors"][0]
    assert "is unreachable" in refused["errors"][0] and "mas:syn2mas:force_rollback: true" in refused["errors"][0]
    disabled = syn2mas.rollback_check(mapdata(world, enabled=False, database={"port": free_port()}))
    assert disabled["result"] is False and disabled["errors"][0].startswith("mas:enabled is false")
    forced = syn2mas.rollback_check(
        mapdata(world, database={"host": "127.0.0.1", "port": free_port()}, syn2mas={"force_rollback": True})
    )
    assert forced["result"] is True and forced["comment"].startswith("rollback forced")


def test_mark_rolled_back_once_the_dropin_is_gone(world):
    data = mapdata(world, syn2mas={"force_rollback": True})
    syn2mas_marker.set_phase(data, None, "delegated")
    dropin(world)
    assert syn2mas.mark_rolled_back(data)["changes"] == {}
    (world["conf_d"] / "matrix-authentication-service.yaml").unlink()
    done = syn2mas.mark_rolled_back(data)
    assert done["changes"] == {"phase": {"old": "delegated", "new": "rolled_back"}}
    saved = marker(world)
    assert saved["rolled_back_by"] == "mas:migration_in_progress: true" and saved["forced"] is True
    status = syn2mas.status(data)
    assert status["phase"] == "rolled_back" and "drop and recreate MAS's database" in status["next_step"]


def test_mark_rolled_back_records_from_the_marker_read_under_its_lock(world, meanwhile):
    """Issue #17.6: another run recorded the rollback after this one looked at the marker: nothing is recorded
    twice, what the other wrote stays."""
    data = mapdata(world)
    syn2mas_marker.set_phase(data, None, "delegated")  # the drop-in is gone: Synapse authenticates again
    meanwhile("rolled_back", rolled_back_by="the other run", forced=False)
    result = syn2mas.mark_rolled_back(data)
    assert result["result"] is True and result["changes"] == {} and result["phase"] == "rolled_back"
    saved = marker(world)
    assert saved["rolled_back_by"] == "the other run" and [h["phase"] for h in saved["history"]] == [
        "delegated",
        "rolled_back",
    ]


def test_guard_states_report_and_refuse(world):
    synapse_sqlite(world, LOGIN_USERS)
    ret = syn2mas_state.safe_to_delegate("syn2mas", mapdata=mapdata(world, migration_in_progress=False))
    assert ret["result"] is False and ret["changes"] == {}
    assert ret["comment"].startswith("delegating to MAS refused") and "\nErrors:\n- Synapse's SQLite" in ret["comment"]
    ok = syn2mas_state.safe_to_roll_back("syn2mas", mapdata=mapdata(world))
    assert ok["result"] is True and ok["changes"] == {}
    rolled = syn2mas_state.rolled_back("syn2mas", mapdata=mapdata(world))
    assert rolled["result"] is True and rolled["changes"] == {}
