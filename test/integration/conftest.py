"""Fixtures of the integration tests."""

import pytest

from harness import mas as mas_target
from harness.fixtures import *  # noqa: F403  pylint: disable=wildcard-import,unused-wildcard-import
from harness.util import free_port
from mas_double import run_server
from pillars import wired_pillar


@pytest.fixture(scope="module")
def deployment(pg, module_salt_minion, synapse_factory, tmp_path_factory, request):
    """MAS (the double) and a real Synapse, wired by the formula with the real
    salt-call, both running: ``{pillar, minion, synapse, mas, root, db}``."""
    root = tmp_path_factory.mktemp("deployment")
    dbname = "mas_" + request.module.__name__.rsplit(".", 1)[-1]
    pg.create_database(dbname)
    mas_target.migrate(pg, dbname)
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
