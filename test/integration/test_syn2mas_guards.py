"""The syn2mas guards of ``state.apply mas``: no lock-out, no silent rollback.

Real Synapse 1.163 on PostgreSQL with users (``syn2mas_world.py``), restarted
by the formula through the test ``service`` provider (``mas:synapse:restart:
true``), whose event log tells whether Synapse was restarted; the MAS double's
``mas-cli``. Each guard refuses with the numbers *before* anything is written
(the drop-in stays as it was, Synapse is not restarted) and is allowed with its
override.
"""

import types

import pytest
import yaml

from harness.util import free_port
from pillars import deep_update, wired_pillar
from syn2mas_world import DROPIN, PASSWORD, deploy, service_minion, world_fixture

pytestmark = pytest.mark.integration

GUARD = "mas-synapse-file-mas_syn2mas-safe_to_delegate"
ROLLBACK_GUARD = "mas-synapse-file-mas_syn2mas-safe_to_roll_back"
RESTART = "mas-synapse-restart-mas_synapse-restarted"


world = world_fixture("syn2mas-guards")


@pytest.fixture
def deployment(world, pg, salt_extmods, tmp_path, request):
    world.service.write(fail=[])
    world.service.start()
    world.service.mark()
    dbname = f"mas_guard_{request.node.name[5:28]}".replace("-", "_")
    dep = deploy(
        world, pg, salt_extmods, tmp_path, dbname, synapse={"restart": True}, syn2mas={"accept_warnings": True}
    )
    yield dep
    dep.assert_no_secret()
    if dep.dropin.exists():  # leave the module's Synapse authoritative, as the next test expects it
        dep.dropin.unlink()
        world.service.write(fail=[])
        world.service.stop()
        world.service.start()
    pg.drop_database(dbname)


def restarts(world):
    return [event for event in world.service.events() if event[0] == "restart"]


def test_first_migrating_apply_does_not_restart_synapse(world, deployment):
    """The secret copy is written, but without a drop-in Synapse has no reason to restart."""
    assert (deployment.root / "srv" / "synapse" / "homeserver_secret").exists()
    assert restarts(world) == [] and world.service.running


def test_lockout_refused_with_the_numbers_before_anything_is_written(world, deployment):
    world.service.mark()
    res = deployment.state("mas", migration_in_progress=False)
    assert res.returncode != 0
    guard = res.by_id(GUARD)
    assert guard["result"] is False and guard["changes"] == {}
    assert "holds 4 users who log in with a password (4) or through an upstream provider (1)" in guard["comment"]
    assert "lock every one of them out" in guard["comment"] and "mas:migration_in_progress: true" in guard["comment"]
    assert not deployment.dropin.exists()
    assert restarts(world) == [] and world.service.running
    assert res.by_id("mas-synapse-file-mas_synapse-dropin")["result"] is False  # never ran: its requisite failed
    assert deployment.marker() is None
    assert world.server.login("alice", PASSWORD)  # nobody was locked out


def test_lockout_unreachable_synapse_refused_unless_assume_fresh(pg, salt_extmods, tmp_path):
    """A Synapse whose database the formula cannot reach: refused; allowed with mas:syn2mas:assume_fresh."""
    conf_d = tmp_path / "synapse" / "conf.d"
    conf_d.mkdir(parents=True)
    hs = tmp_path / "synapse" / "homeserver.yaml"
    port = free_port()
    hs.write_text(
        yaml.safe_dump(
            {
                "server_name": "example.com",
                "database": {"name": "psycopg2", "args": {"host": "127.0.0.1", "port": port, "dbname": "synapse"}},
            }
        )
    )
    server = types.SimpleNamespace(base_url="http://127.0.0.1:9", config_path=hs, conf_d=conf_d)
    pillar = deep_update(
        wired_pillar(tmp_path, pg, "mas_unused", server, free_port(), free_port()),
        {"proxy": {"type": "none"}, "secrets": {"homeserver_secret": "hs-Secret-Value-4711-abcdefghij"}},
    )
    minion = service_minion(tmp_path, salt_extmods, types.SimpleNamespace(spec_path=tmp_path / "none.json"))
    refused = minion.apply(pillar)
    assert refused.returncode != 0
    comment = refused.by_id(GUARD)["comment"]
    assert f"PostgreSQL database synapse at 127.0.0.1:{port} is unreachable" in comment
    assert "mas:syn2mas:assume_fresh: true" in comment and not (conf_d / DROPIN).exists()
    allowed = minion.apply(deep_update(pillar, {"syn2mas": {"assume_fresh": True}}))
    assert allowed.returncode == 0, allowed.output
    assert "assume_fresh is true" in allowed.by_id(GUARD)["comment"] and (conf_d / DROPIN).exists()
    marker = yaml.safe_load((tmp_path / "mas" / "formula" / "syn2mas.json").read_text())
    assert marker["phase"] == "delegated" and marker["migration"] == "none"
    status = minion.run("mas_syn2mas.status")
    assert status.data["phase"] == "delegated" and "no migration was needed" in status.data["next_step"]


def test_delegation_rollback_and_reset(world, deployment, pg):
    """Migrate, delegate (the restart fails: reported), then the silent-rollback guard, its override,
    and the reset-then-delegate path refused before the drop-in."""
    res, ret = deployment.migrated()
    assert ret["result"] is True and deployment.marker()["phase"] == "verified", ret["comment"]

    # the delegation previewed first: the drop-in, Synapse's restart and the routes as changes to come, no failure
    world.service.mark()
    preview = deployment.state("mas", "test=True", migration_in_progress=False)
    assert preview.returncode == 0 and preview.failed == [], preview.failed
    assert preview.by_id(RESTART)["result"] is None and preview.by_id(RESTART)["changes"]
    assert not deployment.dropin.exists() and restarts(world) == []

    # delegate; the restart of Synapse fails: an error in the state comment, the run fails
    world.service.write(fail=["restart"])
    world.service.mark()
    res = deployment.state("mas", migration_in_progress=False)
    assert res.returncode != 0 and deployment.dropin.exists()
    assert res.by_id(GUARD)["result"] is True
    failed = res.by_id(RESTART)
    assert failed["result"] is False and "did not restart" in failed["comment"] and "DOWN" in failed["comment"]
    assert "salt-call service.start synapse-harness" in failed["comment"]
    assert restarts(world) == [("restart", "synapse-harness", "failed")]
    assert deployment.marker()["phase"] == "delegated"
    world.service.write(fail=[])
    world.service.start()

    # users and sessions created in MAS since: rolling back is refused, with the numbers
    pg.query(
        deployment.dbname,
        "WITH u AS (INSERT INTO users (user_id, username, created_at) VALUES (gen_random_uuid(), 'newcomer', now()) "
        "RETURNING user_id) INSERT INTO compat_sessions (compat_session_id, user_id, device_id, created_at) "
        "SELECT gen_random_uuid(), user_id, 'NEWDEVICE', now() FROM u",
    )
    world.service.mark()
    for pillar, why in (
        ({"migration_in_progress": True}, "mas:migration_in_progress is true"),
        ({"enabled": False}, "mas:enabled is false"),
    ):
        res = deployment.state("mas", **pillar)
        assert res.returncode != 0
        guard = next(s for s in res.states.values() if s["__id__"].endswith("mas_syn2mas-safe_to_roll_back"))
        assert guard["result"] is False and why in guard["comment"]
        assert "1 users and 1 sessions created in MAS since the migration" in guard["comment"]
        assert "mas:syn2mas:force_rollback: true" in guard["comment"]
        assert deployment.dropin.exists() and restarts(world) == []
        assert (deployment.root / "srv" / "config" / "config.yaml").exists()  # mas.clean did not go on
    assert deployment.marker()["phase"] == "delegated"

    # allowed with its override: the drop-in goes, Synapse restarts, the marker says rolled_back
    res = deployment.state("mas", migration_in_progress=True, syn2mas={"force_rollback": True})
    assert res.returncode == 0, res.output
    assert res.by_id(ROLLBACK_GUARD)["comment"].startswith("rollback forced")
    assert not deployment.dropin.exists() and restarts(world) == [("restart", "synapse-harness", "ok")]
    marker = deployment.marker()
    assert marker["phase"] == "rolled_back" and marker["forced"] is True
    assert marker["rolled_back_by"] == "mas:migration_in_progress: true"
    status = deployment.call("mas_syn2mas.status").data
    assert status["phase"] == "rolled_back" and "drop and recreate MAS's database" in status["next_step"]
    assert world.server.login("alice", PASSWORD)  # Synapse authenticates again

    # delegating again without migrating again is refused before the drop-in
    world.service.mark()
    res = deployment.state("mas", migration_in_progress=False)
    assert res.returncode != 0 and "made authoritative again" in res.by_id(GUARD)["comment"]
    assert not deployment.dropin.exists() and restarts(world) == []

    # reset: refused while MAS's database still holds the migration (and the newcomer), naming what to drop
    refused = deployment.call("mas_syn2mas.reset", "confirm=True")
    assert refused.returncode == 1 and refused.data["result"] is False, refused.output
    assert (
        f"MAS's database {deployment.dbname} at 127.0.0.1:{pg.port} (mas:database) still holds the earlier "
        in (refused.data["errors"][0])
    )
    assert (
        "(6 users)" in refused.data["errors"][0]
        and f'`DROP DATABASE "{deployment.dbname}";`' in (refused.data["errors"][0])
    )
    assert deployment.marker()["phase"] == "rolled_back"

    # recreated, reset, then delegate: refused before the drop-in (the reset marks a migration to redo)
    deployment.recreate_database()
    reset = deployment.call("mas_syn2mas.reset", "confirm=True")
    assert reset.data["changes"] == {"phase": {"old": "rolled_back", "new": "legacy_auth"}}
    res = deployment.state("mas", migration_in_progress=False)
    assert res.returncode != 0 and "was reset to legacy_auth" in res.by_id(GUARD)["comment"]
    assert not deployment.dropin.exists() and restarts(world) == []
