"""Fixtures of the integration tests."""

import pytest

from harness.util import free_port
from mas_double import MAS_CLI, run_server


def wired_pillar(root, pg, dbname, synapse, web, internal):
    """A pillar deploying MAS (the double, binary runtime) with its DB on the
    PostgreSQL fixture, wired to the harness Synapse ``synapse`` and served
    through an nginx snippet under ``root``; nothing needs systemd."""
    return {
        "enabled": True,
        "server_name": "example.com",
        "runtime": "binary",
        "binary": str(MAS_CLI),
        "user": "root",
        "group": "root",
        "base_path": str(root / "mas"),
        "service": {"manage": False, "unit_dir": str(root / "systemd")},
        "http": {"web_bind": f"127.0.0.1:{web}", "internal_bind": f"127.0.0.1:{internal}"},
        "database": {"host": "127.0.0.1", "port": pg.port, "name": dbname, "user": pg.superuser},
        "synapse": {
            "user": "root",
            "group": "root",
            "restart": False,
            "endpoint": synapse.base_url + "/",
            "mas_endpoint": f"http://127.0.0.1:{web}/auth/",
            "config_files": [str(synapse.config_path)],
            "config_dir": str(synapse.conf_d),
        },
        "proxy": {"reload": False, "nginx": {"snippet_path": str(root / "nginx" / "mas.conf"),
                                             "mas_upstream": f"http://127.0.0.1:{web}"}},
    }


@pytest.fixture(scope="module")
def deployment(pg, module_salt_minion, synapse_factory, tmp_path_factory, request):
    """MAS (the double) and a real Synapse, wired by the formula with the real
    salt-call, both running: ``{pillar, minion, synapse, mas, root, db}``."""
    root = tmp_path_factory.mktemp("deployment")
    dbname = "mas_" + request.module.__name__.rsplit(".", 1)[-1]
    pg.create_database(dbname)
    pg.load_mas_schema(dbname)
    synapse = synapse_factory(database="sqlite")
    pillar = wired_pillar(root, pg, dbname, synapse, free_port(), free_port())
    minion = module_salt_minion
    res = minion.apply(pillar)
    assert res.returncode == 0, res.output
    with run_server([root / "mas" / "config" / "config.yaml"], log_path=root / "mas.log") as mas:
        synapse.start()
        try:
            yield {"pillar": pillar, "minion": minion, "synapse": synapse, "mas": mas, "root": root, "db": dbname}
        finally:
            synapse.stop()
