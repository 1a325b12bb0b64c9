"""`salt-call mas_doctor.run` / `state.apply mas.doctor`: mas-cli doctor's probes
(run by the MAS double against the real Synapse wired by the formula), parsed
into a result automation can gate on, never showing a secret."""

import json

import pytest

from pillars import deep_update

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(deployment, echo_upstream, nginx_factory):
    """The public side: nginx with the formula's snippet in front of Synapse
    and MAS, announced by the client well-known. Step 2 of doctor asks
    https://<server_name>/.well-known/matrix/client; the double asks a
    loopback server instead (no traffic leaves the machine)."""
    proxy = nginx_factory(
        synapse_upstream=deployment["synapse"].base_url, include_files=[deployment["root"] / "nginx" / "mas.conf"]
    )
    proxy.start()
    well_known = echo_upstream("well-known", reply={"m.homeserver": {"base_url": proxy.base_url}})
    yield {"MAS_DOUBLE_WELL_KNOWN_BASE": well_known.url}
    proxy.stop()


def doctor(deployment, env, *args):
    deployment["minion"].set_pillar({"mas": deployment["pillar"]})
    return deployment["minion"].run("mas_doctor.run", *args, env=env)


def test_healthy_deployment_passes(deployment, env):
    res = doctor(deployment, env)
    assert res.returncode == 0, res.output
    report = res.data
    assert report["result"] is True and report["exit_code"] == 0 and report["errors"] == []
    joined = "\n".join(report["ok"])
    assert "Homeserver is reachable" in joined
    assert "correctly rejected an invalid token" in joined
    assert "/_synapse/mas/is_localpart_available" in joined
    assert "is reachable and is handled by MAS" in joined


def test_wrong_shared_secret_fails_and_the_secret_is_scrubbed(deployment, env):
    """Synapse with another shared secret: doctor's /_synapse/mas probe fails
    and upstream prints matrix.secret in clear -- the formula must not."""
    synapse = deployment["synapse"]
    secret_copy = deployment["root"] / "mas" / "synapse" / "homeserver_secret"
    good = secret_copy.read_text()
    secret = (deployment["root"] / "mas" / "config" / "secrets" / "homeserver_secret").read_text()
    secret_copy.write_text("a-completely-different-shared-secret")
    synapse.restart()
    try:
        res = doctor(deployment, env)
        assert res.returncode != 0
        assert res.data["result"] is False
        assert any("/_synapse/mas" in e or "is_localpart_available" in e for e in res.data["errors"]), res.data
        assert secret not in res.output
        assert "**********" in json.dumps(res.data)
    finally:
        secret_copy.write_text(good)
        synapse.restart()


def test_synapse_down_fails_the_state_gate(deployment, env):
    deployment["synapse"].stop()
    try:
        res = deployment["minion"].run("state.apply", "mas.doctor", "--retcode-passthrough", env=env)
        assert res.returncode != 0
        state = res.by_id("mas-doctor-mas_doctor-healthy")
        assert state["result"] is False and state["changes"] == {}
        assert "error" in state["comment"]
        predicted = deployment["minion"].run("state.apply", "mas.doctor", "test=True", env=env)
        assert predicted.by_id("mas-doctor-mas_doctor-healthy")["result"] is None
    finally:
        deployment["synapse"].start()


def test_config_error_is_reported(deployment, env):
    """A homeserver name doctor cannot parse (upstream aborts, exit 1)."""
    minion = deployment["minion"]
    bad = deep_update(deployment["pillar"], {"config": {"matrix": {"homeserver": "example.com:8448"}}})
    assert minion.apply(bad, sls="mas.config").returncode == 0
    try:
        res = minion.run("mas_doctor.run", env=env)
        assert res.returncode != 0
        assert res.data["exit_code"] == 1
        assert any("matrix.homeserver" in e for e in res.data["errors"])
    finally:
        assert minion.apply(deployment["pillar"], sls="mas.config").returncode == 0
