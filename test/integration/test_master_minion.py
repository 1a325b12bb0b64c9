"""The operator's way with a master: `salt '*' saltutil.sync_all`, then
`salt '*' state.apply mas` twice (real salt-master and salt-minion daemons on
loopback, started by pytest-salt-factories), then the users' function over
the master: `salt '*' mas.mapdata`."""

import shutil
import tempfile

import pytest
import yaml

from harness.util import require_root
from mas_demo import link_formula

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def salt_factories_config():
    """Short paths: the daemons' unix sockets must fit in sun_path."""
    root = tempfile.mkdtemp(prefix="mas-sf-")
    yield {"root_dir": root}
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def master_and_minion(salt_factories, tmp_path_factory, paths_root):
    require_root()
    pillar_dir = tmp_path_factory.mktemp("master-pillar")
    formula = link_formula(tmp_path_factory.mktemp("master-formula"))
    master = salt_factories.salt_master_daemon(
        "mas-master",
        overrides={
            "interface": "127.0.0.1",
            "file_roots": {"base": [str(formula)]},
            "pillar_roots": {"base": [str(pillar_dir)]},
        },
    )
    minion = master.salt_minion_daemon("mas-minion", overrides={"master": "127.0.0.1"})
    with master.started(), minion.started():
        yield master, minion, pillar_dir


@pytest.fixture(scope="module")
def paths_root(tmp_path_factory):
    return tmp_path_factory.mktemp("master-deploy")


def test_salt_star_state_apply_mas(master_and_minion, paths_root):
    master, minion, pillar_dir = master_and_minion
    pillar = {
        "enabled": True,
        "server_name": "example.com",
        "runtime": "binary",
        "binary": {"path": "/usr/local/bin/mas-cli", "share_dir": "/usr/local/share/mas-cli"},
        "base_path": str(paths_root / "mas"),
        "service": {"manage": False, "unit_dir": str(paths_root / "systemd")},
        "synapse": {
            "user": "root",
            "group": "root",
            "restart": False,
            "config_dir": str(paths_root / "synapse"),
            "config_files": [],
        },
        "syn2mas": {"assume_fresh": True},  # no Synapse here: nothing the lock-out guard could read
        "proxy": {
            "reload": False,
            "nginx": {
                "snippet_path": str(paths_root / "nginx" / "mas.conf"),
                "public_snippet_path": str(paths_root / "nginx" / "public.conf"),
            },
        },
    }
    (pillar_dir / "top.sls").write_text(yaml.safe_dump({"base": {"*": ["mas"]}}))
    (pillar_dir / "mas.sls").write_text(yaml.safe_dump({"mas": pillar}))
    salt = master.salt_cli(timeout=180)
    assert salt.run("saltutil.refresh_pillar", "wait=True", minion_tgt=minion.id).returncode == 0
    sync = salt.run("saltutil.sync_all", minion_tgt=minion.id)
    assert sync.returncode == 0, sync
    assert "modules.mas" in sync.data["modules"]
    # the formula's renderer (#!mas_py), without which the SLS files would render to nothing
    assert "renderers.mas_py" in sync.data["renderers"]

    first = salt.run("state.apply", "mas", minion_tgt=minion.id)
    assert first.returncode == 0, first
    assert all(state["result"] is True for state in first.data.values())
    assert (paths_root / "mas" / "config" / "config.yaml").is_file()

    second = salt.run("state.apply", "mas", minion_tgt=minion.id)
    assert second.returncode == 0, second
    assert [state["__id__"] for state in second.data.values() if state["changes"]] == []

    mapdata = salt.run("mas.mapdata", minion_tgt=minion.id)
    assert mapdata.returncode == 0, mapdata
    assert mapdata.data["public_base"] == "https://matrix.example.com/auth/"
