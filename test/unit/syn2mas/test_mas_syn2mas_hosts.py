"""Unit tests of syn2mas across hosts (issue #19 part 3, ``mas:roles``): a MAS minion without Synapse never stops or
starts Synapse (its minion does, ``mas.orch.migrate``) and only probes it over HTTP; a Synapse minion without MAS
keeps no phase marker and its guards go by the MAS minion's word (``mas:syn2mas:mas_phase``, ``mas_rollback``); the
MAS minion records what the Synapse minion did and answers ``mas_syn2mas.verdict``. Shared with the other syn2mas
unit tests: ``syn2mas_unit.py`` and ``conftest.py``."""

import pytest
from salt.exceptions import SaltInvocationError

from formula_modules import dunders
from harness.util import free_port
from mas_formula import roles, syn2mas_db, syn2mas_marker
from syn2mas_unit import (
    LOGIN_USERS,
    NOT_EMPTY,
    PEPPER,
    assert_no_secret,
    dropin,
    mapdata,
    marker,
    syn2mas,
    syn2mas_state,
    synapse_sqlite,
    told_straight,
)

SHARED = "s" * 32
#: A MAS minion of its own (with its database): Synapse and the proxy are reached by their addresses.
MAS_HERE = {
    "roles": ["mas", "database"],
    "secrets": {"homeserver_secret": SHARED},
    "synapse": {"endpoint": "http://127.0.0.3:8008/", "service": "synapse-unit"},
    "doctor": {"proxy_url": "https://127.0.0.4"},
}
#: A Synapse minion of its own.
SYNAPSE_HERE = {
    "roles": ["synapse"],
    "secrets": {"homeserver_secret": SHARED},
    "synapse": {"mas_endpoint": "http://127.0.0.2:8080/auth/", "service": "synapse-unit"},
}


@pytest.fixture
def configure_loader_modules(pillar, cli, services):
    return dunders(pillar, salt={"cmd.run_all": cli, **services})


def mas_alone(world, **overrides):
    from pillars import deep_update  # pylint: disable=import-outside-toplevel

    return mapdata(world, **deep_update(MAS_HERE, overrides))


def synapse_alone(world, **overrides):
    from pillars import deep_update  # pylint: disable=import-outside-toplevel

    return mapdata(world, **deep_update(SYNAPSE_HERE, overrides))


# ------------------------------------------------------- the run on a MAS minion without Synapse


def test_a_run_on_the_mas_minion_refuses_while_synapse_answers_and_never_stops_it(world, cli, up, services):
    up["synapse"] = True
    data = mas_alone(world, service={"manage": True, "name": "mas-unit"})
    result = syn2mas.migrate(mapdata=data)
    assert result["result"] is False and cli.calls == [] and marker(world) is None
    (error,) = result["errors"]
    assert error == (
        "Synapse answers at http://127.0.0.3:8008/_matrix/client/versions and runs on another minion (mas:roles here: "
        "mas, database): stop it there first (salt-run state.orchestrate mas.orch.migrate does)"
    )
    for call in ("service.status", "service.stop", "service.start"):
        services[call].assert_not_called()
    # status names the same blocker, whatever mas:syn2mas:stop_services says
    assert error in syn2mas.status(data, stop_services=True)["blockers"]


def test_a_run_on_the_mas_minion_stops_only_mas_and_leaves_synapse_to_its_minion(
    world, cli, up, services, orchestration_stubs
):
    data = mas_alone(world, service={"manage": True, "name": "mas-unit"})
    result = syn2mas.migrate(mapdata=data, start_synapse_after=True)
    assert result["result"] is True and result["phase"] == "verified", result["comment"]
    assert [c.args[0] for c in services["service.stop"].call_args_list] == ["mas-unit"]
    services["service.start"].assert_not_called()
    assert result["services"] == {"stopped": ["mas-unit"], "started": [], "down": []}
    told_straight(result["comment"])


def test_a_failed_run_on_the_mas_minion_says_where_synapse_is_started(world, cli, up, services, orchestration_stubs):
    cli.answers["migrate"] = NOT_EMPTY
    result = syn2mas.migrate(mapdata=mas_alone(world))
    assert result["result"] is False and result["phase"] == "migrating"
    services["service.start"].assert_not_called()
    comment = told_straight(result["comment"])
    assert (
        "Synapse does not answer at http://127.0.0.3:8008/_matrix/client/versions: it is still authoritative; it runs "
        "on another minion (mas:roles here: mas, database): `salt <its minion> service.start synapse-unit` starts it "
        "there (salt-run state.orchestrate mas.orch.migrate does after a failure)."
    ) in comment
    # nor does any later run start it from here, start_synapse_after or not
    ensured = syn2mas.ensure_synapse(start_synapse_after=True, mapdata=mas_alone(world))
    assert ensured["result"] is True and ensured["answers"] is False and ensured["changes"] == {}
    assert "runs on another minion" in ensured["comment"]
    services["service.start"].assert_not_called()


def test_the_mas_minion_needs_synapses_database_from_pillar(world, cli, up):
    empty = world["tmp"] / "empty"
    empty.mkdir()
    data = mas_alone(world, synapse={"config_files": [str(world["tmp"] / "absent.yaml")], "config_dir": str(empty)})
    result = syn2mas.check(data)
    assert result["result"] is False
    assert any(
        e.startswith("Synapse is on another minion (mas:roles here: mas, database), so its config files are not here:")
        and "set mas:synapse:database" in e
        and "mas:synapse:pepper" in e
        for e in result["errors"]
    ), result["errors"]


# ----------------------------------------------------- the guards on a Synapse minion without MAS


def test_the_synapse_minion_delegates_on_the_mas_minions_phase_and_records_nothing(world, pillar):
    synapse_sqlite(world, LOGIN_USERS)  # users who log in: a local probe would refuse
    data = synapse_alone(world, syn2mas={"mas_phase": "verified"})
    check = syn2mas.lockout_check(data)
    assert check["result"] is True and check["phase"] == "verified"
    assert check["comment"] == (
        "Synapse's users are in MAS (the MAS minion's syn2mas phase verified (mas:syn2mas:mas_phase))"
    )
    dropin(world)
    delegated = syn2mas.mark_delegated(mapdata=data)
    assert delegated["result"] is True and delegated["changes"] == {}
    assert delegated["comment"].endswith("; the phase is the MAS minion's")
    assert syn2mas.phase(data) == "verified"
    assert not (world["base"] / "formula" / "syn2mas.json").exists()
    assert not (world["base"] / "formula" / "syn2mas.lock").exists()
    # the state: nothing recorded here, no change
    pillar["mas"] = {"syn2mas": {"mas_phase": "verified"}}
    ret = syn2mas_state.delegated("syn2mas", mapdata=data)
    assert ret["result"] is True and ret["changes"] == {}


@pytest.mark.parametrize("phase", ["migrating", "migrated_unverified", "rolled_back", "legacy_auth"])
def test_the_synapse_minion_refuses_what_the_mas_minions_phase_refuses(world, phase):
    data = synapse_alone(world, syn2mas={"mas_phase": phase})
    check = syn2mas.lockout_check(data)
    assert check["result"] is False
    (error,) = check["errors"]
    assert error.startswith(f"the MAS minion's syn2mas phase {phase} (mas:syn2mas:mas_phase): ")
    assert error.endswith("(on the MAS minion)")


def test_without_the_mas_minions_word_the_synapse_minion_probes_synapse_as_today(world):
    synapse_sqlite(world, LOGIN_USERS)
    refused = syn2mas.lockout_check(synapse_alone(world))
    assert refused["result"] is False
    assert (
        "no syn2mas migration is recorded on this Synapse minion, whose phase is the MAS minion's (`salt-run "
        "state.orchestrate mas.orch.delegate` passes it as mas:syn2mas:mas_phase): delegating to MAS now would lock"
    ) in refused["errors"][0]
    # the MAS minion records no migration: the probe decides, and says where it looked
    told = syn2mas.lockout_check(synapse_alone(world, syn2mas={"mas_phase": "none"}))
    assert "recorded on the MAS minion (mas:syn2mas:mas_phase: none)" in told["errors"][0]
    (world["tmp"] / "homeserver.db").unlink()
    synapse_sqlite(world)  # a new homeserver: nobody to lock out
    assert syn2mas.lockout_check(synapse_alone(world, syn2mas={"mas_phase": "none"}))["result"] is True
    assert not (world["base"] / "formula" / "syn2mas.json").exists()


def test_the_synapse_minion_rolls_back_on_the_mas_minions_verdict(world):
    refused = {
        "result": False,
        "comment": "rollback refused",
        "errors": ["mas:migration_in_progress is true: ... 2 users and 1 sessions created in MAS ... would break"],
        "minion": "mas-db",
    }
    data = synapse_alone(world, migration_in_progress=True, syn2mas={"mas_phase": "delegated", "mas_rollback": refused})
    # no drop-in here: nothing to roll back, whatever the MAS minion counts
    assert syn2mas.rollback_check(data)["result"] is True
    dropin(world)
    result = syn2mas.rollback_check(data)
    assert result["result"] is False and result["errors"] == [
        "the MAS minion (mas-db) says (mas:syn2mas:mas_rollback): rollback refused; mas:migration_in_progress is "
        "true: ... 2 users and 1 sessions created in MAS ... would break"
    ]
    forced = syn2mas.rollback_check(
        synapse_alone(
            world,
            migration_in_progress=True,
            syn2mas={"mas_phase": "delegated", "mas_rollback": refused, "force_rollback": True},
        )
    )
    assert forced["result"] is True and forced["comment"].startswith("rollback forced (mas:syn2mas:force_rollback)")
    fine = dict(refused, result=True, comment="nothing breaks", errors=[])
    allowed = syn2mas.rollback_check(
        synapse_alone(world, migration_in_progress=True, syn2mas={"mas_phase": "delegated", "mas_rollback": fine})
    )
    assert allowed["result"] is True and "says (mas:syn2mas:mas_rollback): nothing breaks" in allowed["comment"]
    # without the verdict: MAS's database is counted from here, which cannot reach it: refused as before
    alone = synapse_alone(world, migration_in_progress=True, database={"host": "127.0.0.1", "port": free_port()})
    unreachable = syn2mas.rollback_check(alone)
    assert unreachable["result"] is False and "cannot count the users" in unreachable["errors"][0]
    # and what it records: nothing, here
    assert syn2mas.mark_rolled_back(alone)["changes"] == {}
    assert not (world["base"] / "formula" / "syn2mas.json").exists()


def test_the_mas_minions_word_is_validated_with_the_map(world):
    from salt.exceptions import SaltInvocationError  # pylint: disable=import-outside-toplevel

    with pytest.raises(SaltInvocationError) as err:
        synapse_alone(world, syn2mas={"mas_phase": "done", "mas_rollback": {"result": "yes"}})
    text = str(err.value)
    assert "mas:syn2mas:mas_phase: must be one of none, legacy_auth, migrating" in text
    assert "mas:syn2mas:mas_rollback: must be the MAS minion's rollback verdict" in text
    with pytest.raises(SaltInvocationError, match="mas:syn2mas:mas_rollback:bogus: unknown key"):
        synapse_alone(world, syn2mas={"mas_rollback": {"result": True, "bogus": 1}})


# ------------------------------------------------------------ the MAS minion's record and verdict


def test_the_mas_minion_records_what_the_synapse_minion_did(world, monkeypatch):
    counted = []

    def created_since(database, since, secrets):
        counted.append(since)
        return {"users": 0, "sessions": 0, "compat_sessions": 0, "oauth2_sessions": 0}

    monkeypatch.setattr(syn2mas_db, "mas_created_since", created_since)
    delegating = mas_alone(world, migration_in_progress=False)
    # no migration recorded here (a new homeserver): nothing to record
    none = syn2mas.mark_delegated(mapdata=delegating)
    assert none["result"] is True and none["changes"] == {} and marker(world) is None
    assert syn2mas.verdict(delegating)["phase"] == "none" and counted.pop() is None  # counted from ever
    # a verified migration: delegated once the Synapse minion delegates (its drop-in is not on this minion)
    syn2mas_marker.set_phase(delegating, None, "verified", finished_at="2026-01-01T00:00:00+00:00")
    recorded = syn2mas.mark_delegated(mapdata=delegating)
    assert recorded["changes"] == {"phase": {"old": "verified", "new": "delegated"}}
    assert marker(world)["phase"] == "delegated"
    # the rollback guard counts from the migration on, though it cannot see the drop-in
    rolling_back = mas_alone(world, migration_in_progress=True)
    verdict = syn2mas.verdict(rolling_back)
    assert verdict["phase"] == "delegated" and verdict["synapse_service"] == "synapse-unit"
    assert verdict["rollback"]["result"] is True and verdict["rollback"]["minion"] == "mas-unit"
    assert counted == ["2026-01-01T00:00:00+00:00"]
    assert "nothing breaks" in verdict["rollback"]["comment"]
    # Synapse authenticates again: rolled_back recorded here
    predicted = syn2mas.mark_rolled_back(rolling_back, test=True)
    assert predicted["changes"] == {"phase": {"old": "delegated", "new": "rolled_back"}}
    assert marker(world)["phase"] == "delegated"
    done = syn2mas.mark_rolled_back(rolling_back)
    assert done["changes"] == {"phase": {"old": "delegated", "new": "rolled_back"}}
    assert marker(world)["phase"] == "rolled_back"
    assert_no_secret(verdict)


def test_the_mas_minions_verdict_counts_from_ever_without_a_record(world, monkeypatch):
    """A MAS minion without Synapse and without a recorded migration cannot tell whether Synapse delegates: a
    rollback is counted against every user and session MAS holds."""
    monkeypatch.setattr(
        syn2mas_db,
        "mas_created_since",
        lambda database, since, secrets: {"users": 3, "sessions": 1, "compat_sessions": 1, "oauth2_sessions": 0},
    )
    verdict = syn2mas.verdict(mas_alone(world, migration_in_progress=True))
    assert verdict["phase"] == "none" and verdict["rollback"]["result"] is False
    assert "3 users and 1 sessions created in MAS since MAS became authoritative" in verdict["rollback"]["errors"][0]


def test_no_change_of_phase_is_recorded_on_the_synapse_minion(world):
    data = synapse_alone(world, migration_in_progress=True, syn2mas={"mas_phase": "rolled_back"})
    for result in (syn2mas.reset(confirm=True, mapdata=data), syn2mas.verify(mapdata=data, record=True)):
        assert result["result"] is False and result["phase"] == "rolled_back"
        assert result["errors"] == [
            "the syn2mas phase is kept on the MAS minion (mas:roles here: synapse): run this there"
        ]
    assert not (world["base"] / "formula" / "syn2mas.json").exists()
    assert not (world["base"] / "formula" / "syn2mas.lock").exists()


# ------------------------------------------------------- the pepper compared across hosts

NONCE = "0123456789abcdef" * 2


def test_pepper_digest_is_the_hmac_of_the_secret_mas_verifies_migrated_passwords_with(world, pillar):
    # one host: MAS verifies with Synapse's own pepper, read from Synapse's files
    here = syn2mas.pepper_digest(NONCE, mapdata=mapdata(world))
    assert here["digest"] == roles.pepper_digest(NONCE, PEPPER.encode()) and PEPPER not in str(here)
    assert "Synapse's pepper from mas:synapse:config_files" in here["source"]
    # a MAS minion of its own: the pepper its pillar gives, the right one or another
    for pepper, same in ((PEPPER, True), ("Another-Pepper-0002", False)):
        pillar["mas"]["synapse"] = {"pepper": pepper}
        given = syn2mas.pepper_digest(NONCE, mapdata=mas_alone(world, synapse={"pepper": pepper}))
        assert (given["digest"] == here["digest"]) is same and given["source"].startswith("mas:synapse:pepper")
    # another nonce, another digest: one comparison's digest is worth nothing for the next
    assert syn2mas.pepper_digest("f" * 32, mapdata=mapdata(world))["digest"] != here["digest"]
    # MAS verifies no migrated password: nothing to compare
    off = syn2mas.pepper_digest(NONCE, mapdata=mapdata(world, config={"passwords": {"enabled": False}}))
    assert off["digest"] is None
    for nonce in ("", "0123", NONCE.upper(), NONCE + "\n", None):
        with pytest.raises(SaltInvocationError, match="nonce must be 32 to 128 lowercase hex digits"):
            syn2mas.pepper_digest(nonce, mapdata=mapdata(world))
