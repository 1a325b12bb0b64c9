"""The syn2mas migration across hosts (issue #19 parts 3 and 4): `salt-run state.orchestrate mas.orch.migrate` on the
three minions of ``test_several_hosts`` (``mas-db`` with MAS and PostgreSQL on 127.0.0.2, ``synapse`` on 127.0.0.3,
``proxy`` with nginx on 127.0.0.4), whose hosts, master, daemons and pillar it builds with that file's helpers.

Synapse is the populated one of ``syn2mas_world`` (users with passwords, an admin, an email, a phone number, a
deactivated user, bob's link to the upstream provider ``oidc-keycloak``; devices), its database on the database
minion's PostgreSQL. The MAS minion has no Synapse config: it reads Synapse's database over the network with
``mas:synapse:database`` (and ``mas:synapse:pepper``) from its pillar, through the config the formula writes for
syn2mas there. MAS is the real one; its mas-cli is the fault wrapper of ``syn2mas_world`` (the real mas-cli unless
armed). The formula was applied everywhere with ``mas:migration_in_progress: true`` (MAS not started yet: its
supervisor starts it once the migration is verified, as an operator's would with ``mas:service:manage: false``).

The tests run in order, one fault at each step of the orchestration: the check refuses (a provider MAS does not map),
the Synapse minion is down (its salt-minion daemon stopped), the backup fails (an unwritable backup directory),
syn2mas migrate fails (Synapse's database role NOLOGIN while it runs), the verification fails (a row of MAS changed
after the migration). After each the run stopped at that step, Synapse answers on its legacy config (no drop-in, a
password login works) and its database is unchanged (checksums of every table: across the run when the run did not
stop Synapse, between its stop and its start again otherwise). Each test's rerun, with the fault fixed, resumes from
the phase the MAS minion recorded, gets past that step and meets the next fault; the last rerun completes: the users
log in through the proxy minion afterwards (a password user through the compatibility layer; bob's upstream link is
checked as MAS's row, not through a browser).
"""

import contextlib
import json
import time
from pathlib import Path

import pytest
import requests

from harness.synapse import SYNAPSE_DB_PASSWORD, SYNAPSE_DB_ROLE
from harness.util import tail
from mas_formula.syn2mas_db import ulid_uuid
from pillars import PILLAR_SECRETS
from syn2mas_world import (
    DROPIN,
    ISSUER,
    PASSWORD,
    PEPPER,
    PROVIDER_ID,
    SERVICE,
    SUBJECT,
    SYNAPSE_IDP_ID,
    USERS,
    Faulty,
    build_world,
)
from test_several_hosts import (  # noqa: F401 (salt_factories_config: the daemons' short root directory)
    HOSTS,
    Supervisor,
    failures,
    hosts,
    nested_steps,
    pillars,
    require_real_mas,
    salt_factories_config,
    steps,
)

pytestmark = pytest.mark.integration

STEP = "mas-orch-migrate-salt-{}"
START = STEP.format("function-start")


def provider(mapped=True):
    """MAS's provider for Synapse's ``oidc-keycloak`` (``synapse_idp_id``; unmapped: the check's fault)."""
    found = {
        "id": PROVIDER_ID,
        "issuer": ISSUER,
        "client_id": "mas",
        "client_secret": PILLAR_SECRETS["client_secret"],
        "token_endpoint_auth_method": "client_secret_post",
        "scope": "openid",
    }
    return dict(found, synapse_idp_id=SYNAPSE_IDP_ID) if mapped else found


def migration_pillar(w):
    """The pillar of the migration: in progress everywhere; on the MAS minion Synapse's database (the database
    minion's PostgreSQL, as the MAS minion reaches it), Synapse's pepper, the provider mapping, the backups, the fault
    wrapper as mas-cli."""
    return {
        "common": {"migration_in_progress": True},
        "mas-db": {
            "binary": {"path": str(w.fault.wrapper)},
            "synapse": {
                "pepper": PEPPER,
                "database": {
                    "host": w.pg.host,
                    "port": w.pg.port,
                    "name": w.synapse.dbname,
                    "user": SYNAPSE_DB_ROLE,
                    "password": SYNAPSE_DB_PASSWORD,
                },
            },
            "upstream_oauth2_providers": [provider()],
            "syn2mas": {
                "backup_dir": str(w.disk["mas-db"] / "backups"),
                "accept_warnings": True,  # carol's phone number: read, accepted
                "stop_timeout": 60,
            },
        },
    }


#: Synapse's own bookkeeping, which its background jobs write while it runs (not the formula's doing).
SYNAPSE_TIMERS = ("event_push_summary_last_receipt_stream_id", "event_push_summary_stream_ordering")


def data_checksum(w):
    """The checksum of every table of Synapse's database but :data:`SYNAPSE_TIMERS`."""
    return {table: md5 for table, md5 in w.service.checksum().items() if table not in SYNAPSE_TIMERS}


def marker(w):
    path = w.disk["mas-db"] / "mas" / "formula" / "syn2mas.json"
    return json.loads(path.read_text()) if path.exists() else None


def phase(w):
    return (marker(w) or {}).get("phase", "none")


@pytest.fixture(scope="module")
def world(salt_factories, synapse_factory, tmp_path_factory):
    require_real_mas()
    fault = Faulty(tmp_path_factory.mktemp("fault"))
    with contextlib.ExitStack() as cleanup:  # whatever started is stopped, also when a step fails

        def populated(w):
            """The populated Synapse on the Synapse minion's address, its database on the database minion's."""
            w.fault = fault
            (w.root / "synapse-world").mkdir()
            w.populated = build_world(synapse_factory, w.pg, w.root / "synapse-world", host=HOSTS["synapse"])
            cleanup.callback(w.populated.service.stop)
            w.service = w.populated.service
            return w.populated.server, w.service.spec_path, w.service.spec, SERVICE

        w = hosts(
            salt_factories,
            cleanup,
            synapse=populated,
            extra_pillar=migration_pillar,
            # a minion that does not answer is told at once (the fault "the Synapse minion is down")
            master_overrides={"timeout": 5, "gather_job_timeout": 5},
        )
        fault.helper(synapse=w.service.conninfo, role=SYNAPSE_DB_ROLE, mas=w.pg.dsn("mas"))
        w.supervisor = Supervisor(
            w.disk["mas-db"] / "mas" / "config" / "config.yaml",
            w.root / "mas.log",
            ready=lambda: phase(w) in ("verified", "delegated"),
        )
        cleanup.callback(w.supervisor.stop)
        before = time.monotonic()
        # the formula everywhere, the migration marked in progress: MAS deployed (not started), no drop-in
        applied = w.salt.run("state.apply", "mas", minion_tgt="*")
        assert applied.returncode == 0, applied
        w.timings["apply mas"] = time.monotonic() - before
        assert not (w.synapse.conf_d / DROPIN).exists() and phase(w) == "none"
        # the MAS minion has Synapse's config for syn2mas, from pillar (0600); the Synapse minion has none of it
        written = w.disk["mas-db"] / "mas" / "config" / "secrets" / "synapse-syn2mas.yaml"
        assert oct(written.stat().st_mode & 0o777) == "0o600" and SYNAPSE_DB_PASSWORD in written.read_text()
        w.runs = {}
        yield w
        print("timings:", {k: round(v, 1) for k, v in w.timings.items()})


def set_pillar(w, minion, **changes):
    """Change ``minion``'s own pillar file and refresh its pillar."""
    extra = migration_pillar(w)
    extra[minion].update(changes)
    w.extra_pillar = extra
    pillars(w)
    res = w.salt.run("saltutil.refresh_pillar", "wait=True", minion_tgt=minion)
    assert res.returncode == 0, res


def migrate(w, name):
    """``salt-run state.orchestrate mas.orch.migrate``: the result and its steps (with the nested delegation's)."""
    w.service.mark()
    w.checksum = data_checksum(w)
    before = time.monotonic()
    res = w.run.run("state.orchestrate", "mas.orch.migrate")
    w.timings[name] = time.monotonic() - before
    w.runs[name] = res
    assert isinstance(res.data, dict), res
    ran = steps(res)
    return res, ran


def outcome(ran):
    """``{step: "ok" | "failed" | "skipped" | "not run"}`` (skipped: a requisite failed; not run: onfail not met)."""
    found = {}
    for step, ret in ran.items():
        comment = ret["comment"]
        if ret["result"] is True:
            found[step] = "not run" if "onfail req did not change" in comment else "ok"
        else:
            found[step] = "skipped" if "requisite failed" in comment.lower() else "failed"
    return found


def details(step):
    """What a failed step said: its comment and its minions' returns (JSON)."""
    return step["comment"] + "\n" + json.dumps(step.get("changes", {}), default=str)


def assert_legacy_synapse_back(w, stopped):
    """Synapse answers on its legacy config (no drop-in; a password login works, its device removed again by the
    logout), and nothing changed its database while the run had it."""
    assert w.service.running, tail(Path(w.service.spec["log"]), 20)
    assert not (w.synapse.conf_d / DROPIN).exists()
    events = w.service.events()
    if stopped:
        assert events[0] == ("stop", SERVICE, "ok") and ("start", SERVICE, "ok") in events, events
        after_stop, before_start = w.service.window()
        assert after_stop == before_start
    else:
        assert ("stop", SERVICE, "ok") not in events, events
        assert data_checksum(w) == w.checksum
    token = w.synapse.login("alice", PASSWORD)
    assert w.synapse.request("POST", "/_matrix/client/v3/logout", token=token).status_code == 200


def test_the_check_refuses_a_provider_mas_does_not_map(world):
    set_pillar(world, "mas-db", upstream_oauth2_providers=[provider(mapped=False)])
    res, ran = migrate(world, "check refuses")
    assert res.returncode != 0
    assert outcome(ran) == {
        STEP.format("function-check"): "failed",
        STEP.format("function-stop"): "skipped",
        STEP.format("state-syn2mas"): "skipped",
        STEP.format("state-mas"): "skipped",
        STEP.format("runner-delegate"): "skipped",
        STEP.format("state-proxy"): "skipped",
        STEP.format("state-doctor"): "skipped",
        START: "ok",  # after any failure Synapse's service is started: here it never stopped (no-op)
    }, failures(res)
    said = details(ran[STEP.format("function-check")])
    assert "Unknown upstream provider oidc-keycloak: 1 Synapse users are linked to it" in said, said
    assert phase(world) == "none"
    assert_legacy_synapse_back(world, stopped=False)


def test_the_synapse_minion_down(world):
    set_pillar(world, "mas-db", upstream_oauth2_providers=[provider()])  # the check's fault fixed
    world.minions["synapse"].terminate()
    try:
        res, ran = migrate(world, "synapse minion down")
    finally:
        world.minions["synapse"].start()
    assert res.returncode != 0
    found = outcome(ran)
    assert found[STEP.format("function-check")] == "ok"  # the fix: past the check
    assert found[STEP.format("function-stop")] == "failed" and found[START] == "failed", failures(res)
    assert all(found[step] == "skipped" for step in list(ran)[2:-1]), found
    assert "Running function service.stop failed on minions: synapse" in ran[STEP.format("function-stop")]["comment"]
    assert phase(world) == "none"
    assert_legacy_synapse_back(world, stopped=False)  # it never stopped: its minion could not be reached


def test_the_backup_fails(world):
    blocker = world.disk["mas-db"] / "not-a-directory"
    blocker.write_text("a file where the backups should go\n")
    set_pillar(world, "mas-db", syn2mas=dict(migration_pillar(world)["mas-db"]["syn2mas"], backup_dir=f"{blocker}/b"))
    res, ran = migrate(world, "backup fails")
    assert res.returncode != 0
    found = outcome(ran)
    assert [found[STEP.format(s)] for s in ("function-check", "function-stop", "state-syn2mas")] == [
        "ok",
        "ok",
        "failed",
    ], failures(res)
    assert found[START] == "ok" and found[STEP.format("state-mas")] == "skipped"
    said = details(ran[STEP.format("state-syn2mas")])
    assert f"the backup directory {blocker}/b (mas:syn2mas:backup_dir) is not writable" in said, said
    # on the MAS minion the run never touches Synapse: it says where Synapse is started again
    assert "runs on another minion" in said and "mas.orch.migrate does after a failure" in said
    assert phase(world) == "none"
    assert_legacy_synapse_back(world, stopped=True)


def test_syn2mas_migrate_fails(world):
    set_pillar(world, "mas-db", syn2mas=migration_pillar(world)["mas-db"]["syn2mas"])  # the backup's fault fixed
    world.fault.arm("nologin")
    res, ran = migrate(world, "migrate fails")
    assert res.returncode != 0 and not world.fault.armed
    found = outcome(ran)
    assert found[STEP.format("state-syn2mas")] == "failed" and found[START] == "ok", failures(res)
    said = details(ran[STEP.format("state-syn2mas")])
    assert "syn2mas migration failed: mas-cli exited with 1; the phase stays migrating" in said, said
    assert f'role \\"{SYNAPSE_DB_ROLE}\\" is not permitted to log in' in said, said
    assert "backup ok" in said and "migrate failed" in said
    record = marker(world)
    assert record["phase"] == "migrating" and record["backup"]["sha256"]
    assert world.pg.query("mas", "SELECT count(*) FROM users") == [(0,)]  # nobody migrated yet
    assert_legacy_synapse_back(world, stopped=True)


def test_the_verification_fails(world):
    world.fault.arm("unverified")
    res, ran = migrate(world, "verify fails")
    assert res.returncode != 0 and not world.fault.armed
    found = outcome(ran)
    # resumed from the phase migrating: checked again, syn2mas reset its partial migration and migrated
    assert found[STEP.format("function-check")] == "ok"
    assert found[STEP.format("state-syn2mas")] == "failed" and found[START] == "ok", failures(res)
    said = details(ran[STEP.format("state-syn2mas")])
    assert "syn2mas migration completed but its verification FAILED" in said, said
    assert phase(world) == "migrated_unverified"
    assert world.pg.query("mas", "SELECT count(*) FROM users")[0][0] == len(USERS)
    assert_legacy_synapse_back(world, stopped=True)


def test_the_rerun_after_the_fix_completes_and_the_users_log_in_through_the_proxy(world):
    # the fix: MAS's row as Synapse has it
    world.pg.query("mas", "UPDATE users SET can_request_admin = true WHERE username = 'alice'")
    res, ran = migrate(world, "completes")
    assert res.returncode == 0, "\n".join(
        [failures(res), f"--- mas.log ({world.supervisor.error})", tail(world.root / "mas.log", 20)]
    )
    # resumed from migrated_unverified: no check (the migration is done), Synapse stopped, verified again, delegated
    assert outcome(ran) == {
        STEP.format("function-stop"): "ok",
        STEP.format("state-syn2mas"): "ok",
        STEP.format("state-mas"): "ok",
        STEP.format("runner-delegate"): "ok",
        STEP.format("state-proxy"): "ok",
        STEP.format("state-doctor"): "ok",
        START: "not run",
    }
    delegation = nested_steps(ran[STEP.format("runner-delegate")])
    assert all(s["result"] is True for s in delegation.values())
    # the phase is the MAS minion's: delegated there; the Synapse minion keeps none
    assert phase(world) == "delegated" and marker(world)["verification"]["result"] is True
    assert not (world.disk["synapse"] / "mas" / "formula" / "syn2mas.json").exists()
    assert (world.synapse.conf_d / DROPIN).exists()
    # Synapse's users log in through the proxy minion: a password user through MAS's compatibility layer
    login = requests.post(
        world.nginx_url + "/_matrix/client/v3/login",
        json={"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": PASSWORD},
        timeout=30,
    )
    assert login.status_code == 200, login.text
    token = login.json()["access_token"]
    me = requests.get(
        world.nginx_url + "/_matrix/client/v3/account/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert me.status_code == 200 and me.json()["user_id"] == "@alice:example.com", me.text
    # bob, linked to the upstream provider in Synapse: the same link in MAS, to the provider mapped
    links = world.pg.query(
        "mas",
        "SELECT u.username, l.subject, l.upstream_oauth_provider_id FROM upstream_oauth_links l JOIN users u USING "
        "(user_id)",
    )
    assert links == [("bob", SUBJECT, ulid_uuid(PROVIDER_ID))], links
    print("timings:", {k: round(v, 1) for k, v in world.timings.items()})
