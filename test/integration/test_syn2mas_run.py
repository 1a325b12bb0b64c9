"""A real syn2mas run through ``state.apply mas.syn2mas``, and its faults.

Real Synapse 1.163 on PostgreSQL (populated through its own admin API, see
``syn2mas_world.py``), stopped and started by the formula through the test
``service`` provider; the MAS double's ``mas-cli syn2mas``; real ``pg_dump``
and ``pg_restore``. Each test deploys the formula into its own directory with
its own, empty MAS database (``mas:migration_in_progress: true``).

Every fault ends with a clear error, Synapse running again on its legacy
config (no drop-in, password login works) and Synapse's database
checksum-identical in every table: across the whole run when the formula
refused before stopping Synapse, and between the formula's stop and its start
again otherwise (Synapse itself writes bookkeeping rows when it starts, e.g.
``cache_invalidation_stream_by_instance``).
"""

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from harness import mas as mas_target
from harness.postgres import PostgresCluster
from harness.synapse import SYNAPSE_DB_ROLE
from harness.util import unavailable
from mas_double import run_server
from syn2mas_world import PASSWORD, SUBJECT, USERS, Faulty, deploy, harness_service, world_fixture

pytestmark = pytest.mark.integration


world = world_fixture("syn2mas-run")


def _deployment(world, pg, salt_extmods, tmp_path, request, **overrides):
    world.service.write(fail=[])
    world.service.start()
    dbname = f"mas_run_{request.node.name[5:30]}".replace("[", "_").replace("]", "").replace("-", "_")
    # carol's phone number is a warning (MAS cannot use it): read, and accepted here
    dep = deploy(world, pg, salt_extmods, tmp_path, dbname, syn2mas={"accept_warnings": True}, **overrides)
    world.service.mark()
    yield dep
    dep.assert_no_secret()
    pg.drop_database(dbname)


@pytest.fixture
def deployment(world, pg, salt_extmods, tmp_path, request):
    yield from _deployment(world, pg, salt_extmods, tmp_path, request)


@pytest.fixture
def faulty(world, pg, salt_extmods, tmp_path, request):
    """A deployment whose mas-cli is the fault wrapper (``syn2mas_world.Faulty``) around the real mas-cli (or the
    double)."""
    fault = Faulty(tmp_path / "fault")
    fault.helper(synapse=world.service.conninfo, role=SYNAPSE_DB_ROLE)
    for dep in _deployment(world, pg, salt_extmods, tmp_path, request, binary={"path": str(fault.wrapper)}):
        dep.fault = fault
        yield dep


def table_counts(pg, dbname):
    tables = [row[0] for row in pg.query(dbname, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    return {table: pg.query(dbname, f'SELECT count(*) FROM "{table}"')[0][0] for table in sorted(tables)}


def test_real_run_backs_up_migrates_and_verifies(world, deployment, pg):
    res, ret = deployment.migrated()
    assert res.returncode == 0 and ret["result"] is True, ret["comment"]
    assert ret["changes"] == {"phase": {"old": "legacy_auth", "new": "verified"}}
    comment = ret["comment"]
    assert "migration completed and verified" in comment
    for step in ("preflight ok", "check ok", "backup check ok", "stop ok", "backup ok", "migrate ok", "verify ok"):
        assert step in comment, comment
    assert "start skipped" in comment and "Synapse stays stopped" in comment
    assert not world.service.running and ("stop", "synapse-harness", "ok") in world.service.events()

    marker = deployment.marker()
    assert marker["phase"] == "verified" and marker["verification"]["errors"] == []
    assert marker["verification"]["result"] is True  # as `mas_syn2mas.verify record=True` records it
    assert marker["verification"]["counts"]["synapse"]["users"] == len(USERS)
    assert [step["step"] for step in marker["steps"]][:3] == ["preflight", "check", "backup check"]

    # the backup: a 0700 directory of 0600 files, its digest and size recorded, and it restores to the same rows
    backup = Path(marker["backup"]["path"])
    assert backup.parent == deployment.root / "backups"
    assert_backup_as_recorded(backup, marker["backup"])
    restored = "syn2mas_restore_check"
    pg.drop_database(restored)
    pg.create_database(restored, synapse=True)
    subprocess.run(
        [
            str(PostgresCluster.find_bindir() / "pg_restore"),
            "--no-owner",
            "--host",
            pg.host,
            "--port",
            str(pg.port),
            "--username",
            pg.superuser,
            "--dbname",
            restored,
            str(backup),
        ],
        check=True,
        capture_output=True,
    )
    try:
        # Synapse stayed stopped since the formula's stop, before the backup: its database is what was dumped
        assert table_counts(pg, restored) == table_counts(pg, world.server.dbname)
        after_stop = sorted(world.service.snapshots.glob("*-after-stop.json"))[-1]
        assert harness_service.checksum(pg.dsn(restored)) == json.loads(after_stop.read_text())
    finally:
        pg.drop_database(restored)

    # what Synapse had is in MAS
    rows = dict(deployment.pg.query(deployment.dbname, "SELECT username, can_request_admin FROM users"))
    assert rows == {"alice": True, "bob": False, "carol": False, "dave": False, "erin": False}
    emails = deployment.pg.query(deployment.dbname, "SELECT email FROM user_emails ORDER BY 1")
    assert emails == [("alice@example.org",), ("bob@example.org",)]
    assert deployment.pg.query(deployment.dbname, "SELECT subject FROM upstream_oauth_links") == [(SUBJECT,)]
    verify = deployment.call("mas_syn2mas.verify")
    assert verify.returncode == 0 and verify.data["result"] is True, verify.output

    # applied again on the migrated deployment: True, no changes, nothing run
    res, ret = deployment.migrated()
    assert res.returncode == 0 and ret["result"] is True and ret["changes"] == {}
    assert "already migrated" in ret["comment"]
    assert deployment.count("users") == len(USERS)


def test_backup_on_its_own(world, deployment):
    """``mas_syn2mas.backup`` alone, Synapse running (pg_dump reads one consistent snapshot): the file in
    mas:syn2mas:backup_dir (a 0700 directory of 0600 files) with the digest and size it reports, readable by pg_restore; nothing stopped,
    the phase unchanged."""
    res = deployment.call("mas_syn2mas.backup")
    assert res.returncode == 0 and res.data["result"] is True, res.output
    taken = res.data["backup"]
    backup = Path(taken["path"])
    assert backup.parent == deployment.root / "backups" and taken["database"].startswith("PostgreSQL database ")
    assert_backup_as_recorded(backup, taken)
    assert res.data["comment"].startswith(f"backup of Synapse's {taken['database']} written to {backup} (")
    assert not list(backup.parent.glob("*.partial"))
    listed = subprocess.run(
        [str(PostgresCluster.find_bindir() / "pg_restore"), "--list", str(backup)],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "TABLE public users " in listed.stdout
    assert deployment.marker() is None and world.service.events() == [] and world.service.running


def assert_backup_as_recorded(backup, recorded):
    """pg_dump's directory format: a 0700 directory of 0600 files; its recorded sha256 is what
    ``cd <dump> && sha256sum * | sha256sum`` prints, its size the files' total."""
    assert recorded["format"] == "directory" and oct(backup.stat().st_mode & 0o777) == "0o700"
    files = sorted(backup.iterdir())
    assert files and {oct(f.stat().st_mode & 0o777) for f in files} == {"0o600"} and (backup / "toc.dat").is_file()
    listing = subprocess.run(["sha256sum", *[f.name for f in files]], cwd=backup, capture_output=True, check=True)
    assert hashlib.sha256(listing.stdout).hexdigest() == recorded["sha256"]
    assert sum(f.stat().st_size for f in files) == recorded["size"]


def assert_legacy_synapse_back(world, deployment, checksum_before):
    """Synapse runs again on its legacy config and nothing changed its database."""
    assert world.service.running
    assert not deployment.dropin.exists()
    stopped = any(action == "stop" for action, _, _ in world.service.events())
    if stopped:  # the formula stopped Synapse: nothing changed its database until the formula started it again
        after_stop, before_start = world.service.window()
        assert after_stop == before_start
    else:
        assert world.service.checksum() == checksum_before
    assert world.server.login("alice", PASSWORD)  # password login: Synapse is still authoritative


def run_fault(world, deployment, **pillar):
    world.service.start()
    world.service.mark()
    checksum = world.service.checksum()
    res, ret = deployment.migrated(**pillar)
    assert res.returncode != 0 and ret["result"] is False
    assert_legacy_synapse_back(world, deployment, checksum)
    return ret


def test_fault_mas_database_not_empty(world, deployment, pg):
    mas_target.migrate(pg, deployment.dbname)
    pg.query(
        deployment.dbname,
        "INSERT INTO users (user_id, username, created_at) VALUES (gen_random_uuid(), 'early', now())",
    )
    ret = run_fault(world, deployment)
    assert "is not empty: rows in users (1 users)" in ret["comment"] and "drop and recreate it" in ret["comment"]
    assert "stop" not in ret["comment"].split("Steps:")[1] and deployment.marker() is None


def test_fault_synapse_database_down(world, deployment, pg):
    dbname = world.server.dbname
    world.service.start()
    world.service.mark()
    checksum = world.service.checksum()
    pg.query("postgres", f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
    try:
        res, ret = deployment.migrated()
    finally:
        pg.query("postgres", f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
    assert res.returncode != 0 and ret["result"] is False
    assert f"PostgreSQL database {dbname} at 127.0.0.1:{pg.port} is unreachable" in ret["comment"]
    assert_legacy_synapse_back(world, deployment, checksum)
    assert deployment.marker() is None


@mas_target.double_only
def test_fault_migrate_exits_1_half_way(world, deployment, monkeypatch):
    monkeypatch.setenv("MAS_DOUBLE_FAULT", "migrate-exit1")
    ret = run_fault(world, deployment)
    assert ret["changes"] == {"phase": {"old": "legacy_auth", "new": "migrating"}}
    assert "injected fault" in ret["comment"] and "Synapse (still authoritative) was started again" in ret["comment"]
    assert "migrate failed" in ret["comment"] and "start ok" in ret["comment"]
    assert deployment.marker()["backup"]["sha256"]  # the backup was taken before migrate


def test_fault_backup_directory_unwritable(world, deployment, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the backups should go\n")
    ret = run_fault(world, deployment, syn2mas={"backup_dir": str(blocker / "backups")})
    assert f"the backup directory {blocker / 'backups'} (mas:syn2mas:backup_dir) is not writable" in ret["comment"]
    assert "(nothing was stopped)" in ret["comment"] and deployment.marker() is None


def test_fault_disk_too_small_for_the_backup(world, deployment, tmp_path):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tiny)], check=False)
    if mounted.returncode != 0:
        unavailable("mounting a 1 MiB tmpfs (the small disk) needs root with CAP_SYS_ADMIN")
    try:
        ret = run_fault(world, deployment, syn2mas={"backup_dir": str(tiny)})
    finally:
        subprocess.run(["umount", str(tiny)], check=False)
    assert f"the backup directory {tiny} (mas:syn2mas:backup_dir) has 1.0 MiB free" in ret["comment"]
    assert "needs up to" in ret["comment"] and deployment.marker() is None


@mas_target.double_only
def test_fault_verification_mismatch(world, deployment, monkeypatch, pg):
    monkeypatch.setenv("MAS_DOUBLE_FAULT", "migrate-drop-user")
    ret = run_fault(world, deployment)
    assert ret["changes"] == {"phase": {"old": "legacy_auth", "new": "migrated_unverified"}}
    assert "verification FAILED" in ret["comment"] and "1 Synapse users are missing in MAS: erin" in ret["comment"]
    assert deployment.marker()["phase"] == "migrated_unverified"
    assert deployment.count("users") == len(USERS) - 1
    # delegating now would lock erin out: refused before the drop-in
    res = deployment.state("mas", migration_in_progress=False)
    assert res.returncode != 0 and not deployment.dropin.exists()
    assert "verification found" in res.by_id("mas-synapse-file-mas_syn2mas-safe_to_delegate")["comment"]

    # applied again, the state verifies again (mas_syn2mas.verify record=True), never migrates again: erin is
    # still missing, so it fails and the phase stays
    monkeypatch.delenv("MAS_DOUBLE_FAULT")
    res, ret = deployment.migrated()
    assert res.returncode != 0 and ret["result"] is False and ret["changes"] == {}
    assert ret["comment"].startswith("syn2mas verification FAILED") and "missing in MAS: erin" in ret["comment"]
    assert deployment.marker()["phase"] == "migrated_unverified" and deployment.count("users") == len(USERS) - 1

    # MAS fixed by hand: erin, and a compatibility session for each Synapse device without one (erin's, and
    # alice's since Synapse came back): the verification passes and the state records it
    pg.query(
        deployment.dbname,
        "INSERT INTO users (user_id, username, created_at) VALUES (gen_random_uuid(), 'erin', now())",
    )
    devices = pg.query(
        world.server.dbname,
        "SELECT substr(u.name, 2, strpos(u.name, ':') - 2), d.device_id FROM devices d JOIN users u ON "
        "u.name = d.user_id WHERE u.deactivated = 0 AND NOT coalesce(d.hidden, false)",
    )
    known = set(
        pg.query(
            deployment.dbname, "SELECT u.username, s.device_id FROM compat_sessions s JOIN users u USING (user_id)"
        )
    )
    lacking = [row for row in devices if tuple(row) not in known]
    assert "erin" in {name for name, _ in lacking}
    for name, device in lacking:
        pg.query(
            deployment.dbname,
            "INSERT INTO compat_sessions (compat_session_id, user_id, device_id, created_at) "
            "SELECT gen_random_uuid(), user_id, %s, now() FROM users WHERE username = %s",
            (device, name),
        )
    res, ret = deployment.migrated()
    assert res.returncode == 0 and ret["result"] is True, ret["comment"]
    assert ret["changes"] == {"phase": {"old": "migrated_unverified", "new": "verified"}}
    marker = deployment.marker()
    assert marker["phase"] == "verified" and marker["verification"]["result"] is True
    assert marker["verification"]["errors"] == [] and marker["last_run"]["exit_code"] == 0


def test_a_running_mas_the_formula_does_not_manage_refuses_before_anything_stops(world, deployment):
    """Issue 21.4: with mas:service:manage: false a running MAS cannot be stopped by the run: status names it,
    test=True predicts the refusal, and the run refuses before any service call (Synapse is never stopped)."""
    config = deployment.root / "srv" / "config" / "config.yaml"
    with run_server([config], log_path=deployment.root / "mas.log") as server:
        health = server.url("health", "/health")
        status = deployment.call("mas_syn2mas.status").data
        assert status["mas_answers"] is True and status["synapse_answers"] is True
        blocker = (
            f"MAS answers at {health} and the formula does not manage its service (mas:service:manage is false), "
            "so it will not stop it: stop MAS yourself, then migrate"
        )
        assert [b for b in status["blockers"] if b.startswith(blocker)], status["blockers"]
        res, ret = deployment.migrated("test=True")
        assert ret["result"] is False and blocker in ret["comment"]
        world.service.mark()
        res, ret = deployment.migrated()
    assert res.returncode != 0 and ret["result"] is False and ret["changes"] == {}
    assert ret["comment"].startswith("syn2mas migration refused (nothing was run or stopped)")
    assert blocker in ret["comment"] and "still answers" not in ret["comment"]
    assert world.service.events() == [] and world.service.running  # no service.stop, no service.start
    assert deployment.marker() is None and world.server.login("alice", PASSWORD)


def test_fault_syn2mas_killed_half_way_then_resumed(world, faulty, pg):
    """Issue 21.9: a mas-cli killed by SIGKILL during ``syn2mas migrate`` is told as such (not "exited with -9",
    no INFO lines); the phase stays migrating, Synapse runs again untouched, and the next run resumes."""
    faulty.fault.arm("kill")
    ret = run_fault(world, faulty)
    assert not faulty.fault.armed
    comment = ret["comment"]
    assert ret["changes"] == {"phase": {"old": "legacy_auth", "new": "migrating"}}
    assert comment.startswith(
        "syn2mas migration failed: mas-cli was killed by signal 9 (SIGKILL); the phase stays migrating and the "
        "next run retries (syn2mas resets the partial migration). Synapse (still authoritative) was started again. "
        "MAS stays stopped."
    ), comment
    assert "- mas-cli was killed by signal 9 (SIGKILL): it logged no error. SIGKILL comes from outside" in comment
    assert "exited with -9" not in comment and " INFO " not in comment
    assert "migrate failed" in comment and "start ok" in comment
    marker = faulty.marker()
    assert marker["phase"] == "migrating" and marker["last_run"]["exit_code"] == -9 and marker["backup"]["sha256"]
    if mas_target.real():  # upstream commits its renamed tables before it reads Synapse (the double reads first)
        partial = "SELECT to_regclass('syn2mas_restore_indices') IS NOT NULL, to_regclass('users') IS NULL"
        assert faulty.pg.query(faulty.dbname, partial) == [(True, True)]
        notes = faulty.call("mas_syn2mas.preflight").data["notes"]
        assert "a partial syn2mas migration is in MAS's database: the next run resets it first" in notes
        reset = faulty.call("mas_syn2mas.reset", "confirm=True").data  # the partial migration is named too
        assert reset["result"] is False and faulty.marker()["phase"] == "migrating"
        assert (
            "still holds the earlier migration: a partial syn2mas migration (its syn2mas_restore_*"
            in (reset["errors"][0])
        )

    # the fault gone, the next run resumes (syn2mas resets the partial migration) and verifies
    res, ret = faulty.migrated()
    assert res.returncode == 0 and ret["result"] is True, ret["comment"]
    assert ret["changes"] == {"phase": {"old": "migrating", "new": "verified"}}
    assert faulty.count("users") == len(USERS)
    assert faulty.pg.query(faulty.dbname, "SELECT to_regclass('syn2mas_restore_indices') IS NULL") == [(True,)]


def test_fault_synapse_does_not_start_again_and_later_runs_say_so(world, deployment):
    """Issue 21.9: Synapse failing to start after a verified migration is DOWN (not "stays stopped"), and
    every later run checks that Synapse answers: it says so, and starts it when start_synapse_after asks."""
    world.service.write(fail=["start"])
    res, ret = deployment.migrated(syn2mas={"start_synapse_after": True})
    assert res.returncode != 0 and ret["result"] is False
    assert ret["changes"] == {"phase": {"old": "legacy_auth", "new": "verified"}}
    comment = ret["comment"]
    assert comment.startswith("syn2mas migration completed and verified. Backup: ")
    assert "(Synapse delegates to MAS, MAS starts). Synapse is DOWN: service.start synapse-harness failed. Steps:" in (
        comment
    )
    assert "stays stopped" not in comment and ".." not in comment and "start failed" in comment
    assert "start it with `salt-call service.start synapse-harness`" in comment
    assert not world.service.running and ("start", "synapse-harness", "failed") in world.service.events()
    after_stop = sorted(world.service.snapshots.glob("*-after-stop.json"))[-1]
    assert world.service.checksum() == json.loads(after_stop.read_text())  # Synapse's data untouched

    # a rerun without start_synapse_after: nothing to migrate, Synapse down by design until it delegates: said
    world.service.mark()
    res, ret = deployment.migrated()
    assert res.returncode == 0 and ret["result"] is True and ret["changes"] == {}
    assert "already migrated to MAS (phase verified); syn2mas was not run" in ret["comment"]
    assert (
        f"Synapse does not answer at {world.server.base_url}/_matrix/client/versions: it stays stopped"
        in (ret["comment"])
    )
    assert world.service.events() == []

    # with start_synapse_after, the fault still there: the run fails and says how to start Synapse
    res, ret = deployment.migrated(syn2mas={"start_synapse_after": True})
    assert res.returncode != 0 and ret["result"] is False and "could not be started" in ret["comment"]
    assert "Synapse is DOWN: service.start synapse-harness failed" in ret["comment"]

    # the fault gone: the rerun starts Synapse, still authoritative (password login), and says so
    world.service.write(fail=[])
    res, ret = deployment.migrated(syn2mas={"start_synapse_after": True})
    assert res.returncode == 0 and ret["result"] is True, ret["comment"]
    assert ret["changes"] == {"synapse": {"old": "not answering", "new": "started (synapse-harness)"}}
    assert "it was started again (service.start synapse-harness" in ret["comment"]
    assert world.service.running and world.server.login("alice", PASSWORD)
    res, ret = deployment.migrated(syn2mas={"start_synapse_after": True})
    assert ret["result"] is True and ret["changes"] == {} and "answer" not in ret["comment"]


def test_fault_synapse_database_refuses_the_login(world, faulty, pg):
    """Synapse's database refusing syn2mas's login: before the run (the preflight cannot log in: nothing is
    stopped), and only while ``syn2mas migrate`` runs (after the backup: the phase stays migrating, Synapse
    runs again, its data untouched)."""
    pg.query("postgres", f'ALTER ROLE "{SYNAPSE_DB_ROLE}" NOLOGIN')
    try:
        ret = run_fault(world, faulty)
    finally:
        pg.query("postgres", f'ALTER ROLE "{SYNAPSE_DB_ROLE}" LOGIN')
    assert ret["comment"].startswith("syn2mas migration refused: the preflight found blocking errors.")
    assert f'role "{SYNAPSE_DB_ROLE}" is not permitted to log in' in ret["comment"]
    assert "Steps: preflight failed" in ret["comment"] and "stop" not in ret["comment"].split("Steps:")[1]
    assert faulty.marker() is None

    faulty.fault.arm("nologin")
    ret = run_fault(world, faulty)
    comment = ret["comment"]
    assert ret["changes"] == {"phase": {"old": "legacy_auth", "new": "migrating"}}
    assert comment.startswith(
        "syn2mas migration failed: mas-cli exited with 1; the phase stays migrating and the next run retries"
    ), comment
    assert "Synapse (still authoritative) was started again. MAS stays stopped." in comment
    assert "- Error: could not connect to Synapse Postgres database" in comment
    assert f'role "{SYNAPSE_DB_ROLE}" is not permitted to log in' in comment
    assert "Stack backtrace" not in comment and ".." not in comment
    assert faulty.marker()["phase"] == "migrating" and faulty.count("users") == 0
