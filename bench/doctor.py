"""Benchmark: how long ``mas_doctor.run`` takes with every service answering, against one MAS ``/health`` round
trip measured in the same run.

It starts what the integration tests start (a throwaway PostgreSQL, a real Synapse, nginx with the formula's
snippet in docs/proxy.md's server block, the MAS double, binary runtime), wires them with the real ``salt-call``,
then runs ``salt-call mas_doctor.run`` several times. Reported: the median of the function's own ``duration``
(every check concurrent; ``mas_cli_doctor`` is the slowest), the median ``salt-call`` wall time (Salt's start
included), the median of one ``GET /health`` from this process, and the ratio duration / round trip.

Usage (as root, from the repository): .venv/bin/python bench/doctor.py [ROUNDS]
"""

import pathlib
import statistics
import sys
import tempfile
import time

import requests

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))
sys.path.insert(0, str(REPO / "scripts"))
# pylint: disable=wrong-import-position
from harness import mas as mas_target  # noqa: E402
from harness.fixtures import EchoUpstream  # noqa: E402
from harness.nginx import NginxServer  # noqa: E402
from harness.postgres import PostgresCluster  # noqa: E402
from harness.synapse import SynapseServer  # noqa: E402
from harness.util import free_port  # noqa: E402
from mas_double import run_server  # noqa: E402
from pillars import deep_update, wired_pillar  # noqa: E402
from saltrun import SaltMinion  # noqa: E402


def main(rounds):
    with tempfile.TemporaryDirectory(prefix="mas-bench-doctor-") as tmp:
        root = pathlib.Path(tmp)
        pg = PostgresCluster(root / "pg").start()
        stops = [pg.stop]
        try:
            pg.create_database("mas_bench")
            mas_target.migrate(pg, "mas_bench")  # the double: upstream schema.sql; real MAS: its migrations
            synapse = SynapseServer(root / "synapse")
            synapse_location = root / "synapse-location.conf"
            synapse_location.write_text(
                f"location ~ ^(/_matrix|/_synapse/client) {{\n    proxy_pass {synapse.base_url};\n}}\n"
            )
            proxy = NginxServer(
                root / "nginx-run", synapse_upstream=None, include_files=[root / "nginx" / "mas.conf", synapse_location]
            )
            pillar = deep_update(
                wired_pillar(root, pg, "mas_bench", synapse, free_port(), free_port()),
                {"proxy": {"nginx": {"well_known": True}}, "doctor": {"proxy_url": proxy.base_url}},
            )
            minion = SaltMinion(root / "minion", REPO)
            minion.sync()
            applied = minion.apply(pillar)
            if applied.returncode != 0:
                raise SystemExit(f"state.apply mas failed:\n{applied.output}")
            well_known = EchoUpstream("well-known", reply={"m.homeserver": {"base_url": proxy.base_url}})
            stops.append(well_known.stop)
            mas = run_server([root / "mas" / "config" / "config.yaml"], log_path=root / "mas.log")
            stops.append(mas.stop)
            synapse.start()
            stops.append(synapse.stop)
            proxy.start()
            stops.append(proxy.stop)
            env = {"MAS_DOUBLE_WELL_KNOWN_BASE": well_known.url}
            health = mas.url("health", "/health")
            durations, walls, trips, per_check = [], [], [], {}
            minion.run("mas_doctor.run", env=env)  # warm caches (Salt's, Synapse's, the page cache)
            with requests.Session() as session:
                session.trust_env = False
                for _ in range(rounds):
                    start = time.perf_counter()
                    assert session.get(health, timeout=10).status_code == 200
                    trips.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    res = minion.run("mas_doctor.run", env=env)
                    walls.append(time.perf_counter() - start)
                    if res.data is None or res.data["result"] != "ok":
                        raise SystemExit(f"the doctor did not find everything ok:\n{res.output}")
                    durations.append(res.data["duration"])
                    for check in res.data["checks"]:
                        per_check.setdefault(check["name"].split(".")[0], []).append(check["seconds"] or 0)
        finally:
            for stop in reversed(stops):
                stop()
    med_duration, med_wall, med_trip = (statistics.median(v) for v in (durations, walls, trips))
    print(f"rounds: {rounds}")
    print(f"one GET /health round trip, median: {med_trip * 1000:.2f} ms")
    print(f"mas_doctor.run duration (17 checks, concurrent), median: {med_duration:.3f} s (target < 2 s)")
    slowest = sorted(((statistics.median(v), k) for k, v in per_check.items()), reverse=True)[:3]
    print("  slowest checks, median: " + ", ".join(f"{name} {seconds:.3f} s" for seconds, name in slowest))
    print(f"salt-call mas_doctor.run wall time, median: {med_wall:.3f} s")
    print(f"ratio duration / health round trip: {med_duration / med_trip:.0f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
