"""The formula's renderer (``_renderers/mas_py.py``, shebang ``#!mas_py``), through Salt's own loader and
``slsutil.renderer`` (one salt process): what it hands ``run``, the ``state`` helper, and how a render fails.
"""

import json
import subprocess
import sys

import pytest

from pillars import deep_update

RENDER = """
import json, sys
import salt.client

caller = salt.client.Caller(c_path=sys.argv[1])
out = {}
for path, sls in json.loads(sys.argv[2]):
    try:
        out[sls] = caller.cmd("slsutil.renderer", path, default_renderer="yaml", sls=sls)
    except Exception as exc:  # noqa: BLE001 -- the render's outcome
        out[sls] = "RENDER FAILED: " + str(exc)
print(json.dumps(out))
"""

SLS = {
    # what run is given, and state()'s body: the arguments in the order written
    "mas.probe.given": """#!mas_py
def run(mas, tplroot):
    return {
        "probe": state("test.nop", name=mas["server_name"], tplroot=tplroot, sls=__sls__, order=[3, 1]),
        "empty": state("test.succeed_without_changes"),
    }
""",
    # an error a module raises on purpose: its message, without frames
    "mas.probe.module_error": """#!mas_py
def run(mas, tplroot):
    return {"x": state("test.nop", name=__salt__["mas.render"](["no-such-template.jinja"], "x", {}, tplroot))}
""",
    # an SLS of one role (mas:roles): on a minion without it, run is not called
    "mas.probe.proxy_role": """#!mas_py
ROLE = "proxy"


def run(mas, tplroot):
    return {"x": state("test.nop", name=mas["no_such_key_in_the_map"])}
""",
    "mas.probe.mas_role": """#!mas_py
ROLE = "mas"


def run(mas, tplroot):
    return {"x": state("test.nop", name=mas["server_name"])}
""",
    # a bug of the SLS: shown with its traceback, as #!py would
    "mas.probe.bug": """#!mas_py
def run(mas, tplroot):
    return {"x": state("test.nop", name=mas["no_such_key_in_the_map"])}
""",
}


def render(minion, tmp_path, pillar):
    minion.set_pillar({"mas": pillar})
    files = []
    for sls, text in SLS.items():
        path = tmp_path / f"{sls}.sls"
        path.write_text(text)
        files.append((str(path), sls))
    proc = subprocess.run(
        [sys.executable, "-c", RENDER, str(minion.confdir / "minion"), json.dumps(files)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def rendered(module_salt_minion, tmp_path_factory):
    pillar = {
        "enabled": True,
        "server_name": "example.com",
        "runtime": "binary",
        "binary": {"path": "/usr/local/bin/mas-cli", "share_dir": "/usr/local/share/mas-cli"},
        "base_path": str(tmp_path_factory.mktemp("root") / "srv" / "mas"),
    }
    mas_alone = {
        "roles": ["mas", "database"],
        "secrets": {"homeserver_secret": "s" * 32},
        "synapse": {"endpoint": "http://synapse.example.internal:8008/"},
        "doctor": {"proxy_url": "https://proxy.example.internal"},
    }
    return {
        "good": render(module_salt_minion, tmp_path_factory.mktemp("good"), pillar),
        "bad": render(module_salt_minion, tmp_path_factory.mktemp("bad"), deep_update(pillar, {"hostname": "-bad-"})),
        "mas alone": render(module_salt_minion, tmp_path_factory.mktemp("split"), deep_update(pillar, mas_alone)),
    }


def test_an_sls_of_a_role_the_minion_lacks_is_one_nop_saying_where_it_runs(rendered):
    assert rendered["mas alone"]["mas.probe.proxy_role"] == {
        "mas-probe-proxy_role-test-nop-role": {
            "test.nop": [
                {"name": "mas.probe.proxy_role: the proxy role is on another minion (mas:roles here: mas, database)"}
            ]
        }
    }
    assert rendered["mas alone"]["mas.probe.mas_role"] == {"x": {"test.nop": [{"name": "example.com"}]}}
    # one host (the default): every role is here, run is called (and here finds its bug)
    assert "KeyError: 'no_such_key_in_the_map'" in rendered["good"]["mas.probe.proxy_role"]


def test_run_gets_the_map_and_tplroot_and_state_builds_single_key_arguments(rendered):
    assert rendered["good"]["mas.probe.given"] == {
        "probe": {
            "test.nop": [{"name": "example.com"}, {"tplroot": "mas"}, {"sls": "mas.probe.given"}, {"order": [3, 1]}]
        },
        "empty": {"test.succeed_without_changes": []},
    }


def test_a_module_error_fails_the_render_with_its_message_only(rendered):
    text = rendered["good"]["mas.probe.module_error"]
    assert text.startswith("RENDER FAILED: "), text
    assert "none of the templates" in text and "no-such-template.jinja" in text, text
    assert "Traceback" not in text and "salt/loader" not in text, text


def test_a_bug_in_an_sls_fails_the_render_with_its_traceback(rendered):
    text = rendered["good"]["mas.probe.bug"]
    assert "Traceback" in text and "KeyError: 'no_such_key_in_the_map'" in text, text
    assert "mas.probe.bug.sls" in text, text


def test_a_bad_pillar_fails_every_render_naming_the_key_without_a_traceback(rendered):
    for sls, text in rendered["bad"].items():
        assert isinstance(text, str) and text.startswith("RENDER FAILED: "), (sls, text)
        assert "Invalid pillar for the mas formula (nothing was changed)" in text, (sls, text)
        assert "- mas:hostname: '-bad-' is not a DNS name" in text, (sls, text)
        assert "Traceback" not in text, (sls, text)
