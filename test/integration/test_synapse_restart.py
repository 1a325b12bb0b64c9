"""Synapse restarted by the formula for real, with ``mas:synapse:restart`` on (its default).

systemd is not PID 1 here, so a stand-in ``service`` program on the minion's
``PATH`` (``harness.service_standin``) answers Salt's own ``service.restart``
by stopping and starting the test's Synapse process. ``state.apply mas
test=True`` on the apply that writes Synapse's drop-in (a first deployment,
and the delegation after a migration) predicts the restart and the proxy
snippet as changes to come, never as failures; the real apply restarts
Synapse once, and Synapse then delegates to MAS.
"""

import pytest

from harness import service_standin
from harness.util import free_port
from pillars import PILLAR_SECRETS, deep_update, wired_pillar
from saltrun import REPO_ROOT, SaltMinion
from syn2mas_world import SynapseService

pytestmark = pytest.mark.integration

SERVICE = "synapse-restart-harness"
RESTART = "mas-synapse-restart-mas_synapse-restarted"
DROPIN_STATE = "mas-synapse-file-mas_synapse-dropin"
SNIPPET = "mas-proxy-file-file-managed-snippet"


@pytest.fixture
def world(synapse_factory, pg, salt_extmods, tmp_path):
    server = synapse_factory(database=pg)
    service = SynapseService(server, pg, tmp_path)
    service.start()
    env = service_standin.install(tmp_path / "bin", {SERVICE: service.spec_path})
    minion = SaltMinion(tmp_path / "minion", REPO_ROOT, extmods=salt_extmods, env=env)
    dbname = f"mas_restart_{free_port()}"
    pg.create_database(dbname)
    pillar = deep_update(
        wired_pillar(tmp_path, pg, dbname, server, free_port(), free_port()),
        {
            "secrets": {"homeserver_secret": PILLAR_SECRETS["homeserver_secret"]},
            "synapse": {"restart": True, "service": SERVICE},
        },
    )
    yield server, service, minion, pillar
    service.stop()
    pg.drop_database(dbname)


def test_preview_predicts_the_restart_and_the_apply_restarts_synapse_once(world):
    server, service, minion, pillar = world
    dropin = server.conf_d / "matrix-authentication-service.yaml"
    service.mark()

    preview = minion.apply(pillar, test=True)
    assert preview.returncode == 0, preview.output
    assert preview.failed == []
    restart = preview.by_id(RESTART)
    assert restart["result"] is None and restart["changes"]["restarted"]["new"] == f"{SERVICE} restarted"
    assert "would be restarted" in restart["comment"]
    assert preview.by_id(SNIPPET)["result"] is None and preview.by_id(DROPIN_STATE)["result"] is None
    assert not dropin.exists() and service.events() == [] and service.running

    applied = minion.apply(pillar)
    assert applied.returncode == 0, applied.output
    restart = applied.by_id(RESTART)
    assert restart["result"] is True and restart["changes"], restart
    assert f"restarted and answers at {server.base_url}/_matrix/client/versions" in restart["comment"]
    assert service.events() == [("restart", SERVICE, "ok")]
    # the restarted Synapse runs the drop-in: its MAS API wants the shared secret
    path = "/_synapse/mas/is_localpart_available"
    assert server.request("GET", path).status_code == 401
    assert server.request("GET", path, token=PILLAR_SECRETS["homeserver_secret"]).status_code == 400

    service.mark()
    again = minion.apply(pillar)
    assert again.returncode == 0 and again.changed == [], again.changed
    assert "none of the onchanges reqs changed" in again.by_id(RESTART)["comment"]
    preview = minion.apply(pillar, test=True)
    assert preview.returncode == 0 and preview.by_id(RESTART)["result"] is True
    assert service.events() == []


def test_a_restart_that_fails_says_synapse_may_be_down(world):
    _, service, minion, pillar = world
    service.write(fail=["restart"])
    service.mark()
    applied = minion.apply(pillar)
    assert applied.returncode != 0
    restart = applied.by_id(RESTART)
    assert restart["result"] is False and "did not restart" in restart["comment"] and "DOWN" in restart["comment"]
    assert f"salt-call service.start {SERVICE}" in restart["comment"]
    # the compatibility routes wait for a Synapse that delegates: they are not written either
    assert applied.failed == [SNIPPET, "mas-proxy-reload-test-nop", RESTART], applied.failed
    assert "requisite failed" in applied.by_id(SNIPPET)["comment"]
    assert service.events() == [("restart", SERVICE, "failed")] and not service.running
