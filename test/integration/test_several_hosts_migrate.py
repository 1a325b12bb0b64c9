"""The syn2mas migration across hosts (issue #19 parts 3 and 4): `salt-run state.orchestrate mas.orch.migrate` on the
three minions of ``test_several_hosts`` (``mas-db`` with MAS and PostgreSQL on 127.0.0.2, ``synapse`` on 127.0.0.3,
``proxy`` with nginx on 127.0.0.4), whose hosts, master, daemons and pillar it builds with that file's helpers.

Synapse is the populated one of ``syn2mas_world`` (users with passwords, an admin, an email, a phone number, a
deactivated user, bob's link to the upstream provider ``oidc-keycloak``; devices), its database on the database
minion's PostgreSQL. The MAS minion has no Synapse config: it reads Synapse's database over the network with
``mas:synapse:database`` (and ``mas:synapse:pepper``) from its pillar, through the config the formula writes for
syn2mas there. MAS is the real one; its mas-cli is the fault wrapper of ``syn2mas_world`` (the real mas-cli unless
armed). The upstream provider is a real OpenID provider (``oidc-provider`` over TLS from a test CA, on 127.0.0.5),
which MAS maps to Synapse's ``oidc-keycloak``; the proxy's nginx also serves its locations over TLS for a browser.
The formula was applied everywhere with ``mas:migration_in_progress: true`` (MAS not started yet: its supervisor
starts it once the migration is verified, as an operator's would with ``mas:service:manage: false``).

One fault at each step of the orchestration, each test on its own: the plan refuses (the MAS minion's pillar gives
another pepper than Synapse's), the check refuses (a provider MAS does not map),
the Synapse minion is down (its salt-minion daemon stopped), the backup fails (an unwritable backup directory),
syn2mas migrate fails (Synapse's database role NOLOGIN while it runs), the verification fails (a row of MAS changed
after the migration). After each the run stopped at that step, Synapse answers on its legacy config (no drop-in, a
password login works) and its database is unchanged (checksums of every table: across the run when the run did not
stop Synapse, between its stop and its start again otherwise). Then the fault is fixed and the rerun resumes from
the phase the MAS minion recorded and completes (every step, Synapse delegating to MAS); then the operator's
rollback across hosts (``mas.orch.delegate`` with the migration in progress, MAS's database dropped and created
again, ``mas_syn2mas.reset``) gives the next test a homeserver that was never migrated. The last test migrates
without a fault: the users log in through the proxy minion afterwards (alice with her password through MAS's
compatibility layer; bob through the upstream provider in a real browser, into his old account), and a rollback is
then refused, MAS alone knowing their sessions.
"""

import contextlib
import json
import time
from pathlib import Path

import pytest
import requests

from harness.browser import Browser
from harness.oidc_provider import OidcProvider
from harness.synapse import SYNAPSE_DB_PASSWORD, SYNAPSE_DB_ROLE
from harness.testca import TestCA
from harness.util import tail
from logins_world import (
    MATRIX_HOST,
    Public,
    oauth_login,
    provider_client,
    provider_pillar,
    provider_sign_in,
    whoami,
)
from mas_formula.syn2mas_db import ulid_uuid
from syn2mas_world import (
    DROPIN,
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
#: the upstream provider's own host
IDP_HOST = "127.0.0.5"
#: the phases of a homeserver never migrated: no marker yet, or the one a reset after a rollback leaves
NOT_MIGRATED = ("none", "legacy_auth")
ROLL_BACK = 'pillar={"mas": {"orch": {"migration_in_progress": true}}}'


def provider(w, mapped=True):
    """MAS's provider for Synapse's ``oidc-keycloak``, the real provider's issuer (``synapse_idp_id``; unmapped: the
    check's fault)."""
    found = provider_pillar(w.idp.issuer, "client_secret_post", id=PROVIDER_ID, synapse_idp_id=SYNAPSE_IDP_ID)
    if not mapped:
        del found["synapse_idp_id"]
    return found


def migration_pillar(w):
    """The pillar of the migration: in progress everywhere; on the MAS minion Synapse's database (the database
    minion's PostgreSQL, as the MAS minion reaches it), Synapse's pepper, the provider mapping and the CA that signed
    its certificate, the backups, the fault wrapper as mas-cli."""
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
            "upstream_oauth2_providers": [provider(w)],
            "ca_bundle": str(w.ca.cert),
            "syn2mas": {
                "backup_dir": str(w.disk["mas-db"] / "backups"),
                "accept_warnings": True,  # carol's phone number: read, accepted
                "stop_timeout": 60,
            },
        },
    }


#: Synapse's own bookkeeping, which its background jobs write while it runs (not the formula's doing): among them
#: the client IPs of the last logins, which Synapse batches and writes seconds later.
SYNAPSE_TIMERS = ("event_push_summary_last_receipt_stream_id", "event_push_summary_stream_ordering", "user_ips")


def data_checksum(w):
    """The checksum of every table of Synapse's database but :data:`SYNAPSE_TIMERS`."""
    return {table: md5 for table, md5 in w.service.checksum().items() if table not in SYNAPSE_TIMERS}


def marker(w):
    path = w.disk["mas-db"] / "mas" / "formula" / "syn2mas.json"
    return json.loads(path.read_text()) if path.exists() else None


def phase(w):
    return (marker(w) or {}).get("phase", "none")


def supervisor(w):
    """MAS's supervisor on the MAS minion: it starts MAS once the migration is verified."""
    return Supervisor(
        w.disk["mas-db"] / "mas" / "config" / "config.yaml",
        w.root / "mas.log",
        ready=lambda: phase(w) in ("verified", "delegated"),
        unit=w.disk["mas-db"] / "systemd" / "matrix-authentication-service.service",
    )


@pytest.fixture(scope="module")
def world(salt_factories, synapse_factory, tmp_path_factory):
    require_real_mas()
    fault = Faulty(tmp_path_factory.mktemp("fault"))
    ca = TestCA(tmp_path_factory.mktemp("ca"))
    with contextlib.ExitStack() as cleanup:  # whatever started is stopped, also when a step fails
        # the upstream provider, on a host of its own; bob signs in there as the subject Synapse linked him to
        idp = OidcProvider(
            tmp_path_factory.mktemp("idp"),
            ca,
            clients=[provider_client("client_secret_post", PROVIDER_ID)],
            accounts={SUBJECT: {"preferred_username": "bob", "name": "Bob"}},
            host=IDP_HOST,
        )
        cleanup.callback(idp.stop)
        idp.start()

        def populated(w):
            """The populated Synapse on the Synapse minion's address, its database on the database minion's."""
            w.fault, w.idp, w.ca = fault, idp, ca
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
            tls=ca.issue(MATRIX_HOST, HOSTS["proxy"]),
        )
        fault.helper(synapse=w.service.conninfo, role=SYNAPSE_DB_ROLE, mas=w.pg.dsn("mas"))
        w.supervisor = supervisor(w)
        cleanup.callback(lambda: w.supervisor.stop())  # the one running then: roll_back replaces it
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


def completes(w, name):
    """The rerun after the fix: resumed from the phase recorded, it completes (every step that runs succeeds, Synapse
    is not started again: it runs delegated to MAS) and MAS is up."""
    res, ran = migrate(w, name)
    assert res.returncode == 0, "\n".join(
        [failures(res), f"--- mas.log ({w.supervisor.error})", tail(w.root / "mas.log", 20)]
    )
    found = outcome(ran)
    assert found.pop(START) == "not run" and set(found.values()) == {"ok"}, found
    for step in ("function-stop", "state-syn2mas", "state-mas", "runner-delegate", "state-proxy", "state-doctor"):
        assert STEP.format(step) in found, (step, found)
    delegation = nested_steps(ran[STEP.format("runner-delegate")])
    assert all(s["result"] is True for s in delegation.values())
    # the phase is the MAS minion's: delegated there; the Synapse minion keeps none
    assert phase(w) == "delegated" and marker(w)["verification"]["result"] is True
    assert not (w.disk["synapse"] / "mas" / "formula" / "syn2mas.json").exists()
    assert (w.synapse.conf_d / DROPIN).exists()
    # Synapse, through the proxy, names MAS as its authorization server
    metadata = requests.get(w.nginx_url + "/_matrix/client/v1/auth_metadata", timeout=10)
    assert metadata.status_code == 200 and metadata.json()["issuer"] == f"https://{MATRIX_HOST}/auth/", metadata.text
    return ran


def roll_back(w, name):
    """The operator's rollback across hosts (docs/several-hosts.md): ``mas.orch.delegate`` with the migration in
    progress removes the drop-in and restarts Synapse on its minion (the MAS minion's verdict allows it: MAS knows
    nobody Synapse does not), then MAS stopped, its database dropped and created again (``mas`` applied on the MAS
    minion), the phase reset there: a homeserver that was never migrated, Synapse on its legacy config."""
    before = time.monotonic()
    res = w.run.run("state.orchestrate", "mas.orch.delegate", ROLL_BACK)
    assert res.returncode == 0, failures(res)
    assert not (w.synapse.conf_d / DROPIN).exists() and phase(w) == "rolled_back"
    w.supervisor.stop()
    w.pg.drop_database("mas")
    applied = w.salt.run("state.apply", "mas", minion_tgt="mas-db")
    assert applied.returncode == 0, applied
    assert w.pg.query("mas", "SELECT to_regclass('users')") == [(None,)]  # created, empty: syn2mas makes the rest
    reset = w.salt.run("mas_syn2mas.reset", "confirm=True", minion_tgt="mas-db")
    assert reset.returncode == 0 and phase(w) == "legacy_auth", reset
    w.supervisor = supervisor(w)
    token = w.synapse.login("alice", PASSWORD)  # Synapse's own login again
    assert w.synapse.request("POST", "/_matrix/client/v3/logout", token=token).status_code == 200
    w.timings[f"{name}: roll back"] = time.monotonic() - before


def test_a_pepper_that_is_not_synapses_is_refused_before_anything_stops(world):
    wrong = "Not-Synapses-Pepper-0003"
    set_pillar(world, "mas-db", synapse=dict(migration_pillar(world)["mas-db"]["synapse"], pepper=wrong))
    world.service.mark()
    world.checksum = data_checksum(world)
    res = world.run.run("state.orchestrate", "mas.orch.migrate")
    assert res.returncode != 0
    said = " ".join((res.stdout + res.stderr).split())
    assert (
        f"Synapse's pepper on synapse (password_config.pepper in {world.synapse.config_path}) is not the one MAS on"
        " mas-db would verify the migrated passwords with (mas:synapse:pepper (written to the pepper file by `mas`)):"
        " every password user would be locked out after the migration"
    ) in said, said
    assert wrong not in said and PEPPER not in said  # an HMAC under a fresh nonce from each side, never a pepper
    assert phase(world) in NOT_MIGRATED
    assert_legacy_synapse_back(world, stopped=False)

    set_pillar(world, "mas-db")  # the fix: Synapse's pepper
    completes(world, "pepper: rerun")
    roll_back(world, "pepper")


def test_the_check_refuses_a_provider_mas_does_not_map(world):
    set_pillar(world, "mas-db", upstream_oauth2_providers=[provider(world, mapped=False)])
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
    assert phase(world) in NOT_MIGRATED
    assert_legacy_synapse_back(world, stopped=False)

    set_pillar(world, "mas-db")  # the fix: the provider mapped
    completes(world, "check refuses: rerun")
    roll_back(world, "check refuses")


def test_the_synapse_minion_down(world):
    world.minions["synapse"].terminate()
    try:
        res, ran = migrate(world, "synapse minion down")
    finally:
        world.minions["synapse"].start()  # the fix
    assert res.returncode != 0
    found = outcome(ran)
    assert found[STEP.format("function-check")] == "ok"
    assert found[STEP.format("function-stop")] == "failed" and found[START] == "failed", failures(res)
    assert all(found[step] == "skipped" for step in list(ran)[2:-1]), found
    assert "Running function service.stop failed on minions: synapse" in ran[STEP.format("function-stop")]["comment"]
    assert phase(world) in NOT_MIGRATED
    assert_legacy_synapse_back(world, stopped=False)  # it never stopped: its minion could not be reached

    completes(world, "synapse minion down: rerun")
    roll_back(world, "synapse minion down")


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
    assert phase(world) in NOT_MIGRATED
    assert_legacy_synapse_back(world, stopped=True)

    set_pillar(world, "mas-db")  # the fix: the backup directory of the migration's pillar
    completes(world, "backup fails: rerun")
    roll_back(world, "backup fails")


def test_syn2mas_migrate_fails(world):
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

    # the fix: Synapse's role logs in again (the fault was for one run); resumed from migrating, migrated again
    completes(world, "migrate fails: rerun")
    roll_back(world, "migrate fails")


def test_the_verification_fails(world):
    world.fault.arm("unverified")
    res, ran = migrate(world, "verify fails")
    assert res.returncode != 0 and not world.fault.armed
    found = outcome(ran)
    assert found[STEP.format("function-check")] == "ok"
    assert found[STEP.format("state-syn2mas")] == "failed" and found[START] == "ok", failures(res)
    said = details(ran[STEP.format("state-syn2mas")])
    assert "syn2mas migration completed but its verification FAILED" in said, said
    assert phase(world) == "migrated_unverified"
    assert world.pg.query("mas", "SELECT count(*) FROM users")[0][0] == len(USERS)
    assert_legacy_synapse_back(world, stopped=True)

    # the fix: MAS's row as Synapse has it; resumed from migrated_unverified: no check (the migration is done)
    world.pg.query("mas", "UPDATE users SET can_request_admin = true WHERE username = 'alice'")
    ran = completes(world, "verify fails: rerun")
    assert STEP.format("function-check") not in ran
    roll_back(world, "verify fails")


def test_the_users_log_in_through_the_proxy_after_the_migration(world, tmp_path):
    completes(world, "completes")
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
    # ... and he signs in through that provider in a browser (Element X's login through the proxy's TLS server block)
    public = Public(world.public_url, world.ca.cert)
    browser = Browser(tmp_path / "browser", {f"{MATRIX_HOST}:443": world.public_url.removeprefix("https://")})
    try:
        bob = oauth_login(
            public, browser, provider_sign_in(SUBJECT, screenshot="several-hosts"), "several-hosts", False
        )
        assert whoami(public, bob.access_token)["user_id"] == "@bob:example.com", tail(world.root / "mas.log", 30)
        assert browser.failed(prefix=f"https://{MATRIX_HOST}/auth/") == []
    finally:
        browser.quit()
    # now MAS alone knows their sessions: the rollback across hosts is refused, the drop-in stays
    res = world.run.run("state.orchestrate", "mas.orch.delegate", ROLL_BACK)
    assert res.returncode != 0
    said = failures(res)
    assert "rollback refused" in said, said
    assert (world.synapse.conf_d / DROPIN).exists() and phase(world) == "delegated"
