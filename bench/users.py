"""Benchmark: a no-change re-apply of ``mas`` with 1,000 users in ``mas:users``
against the floor of a trivial one-file state applied the same way (the floor
of bench/reapply.py), in the same run. MAS is the test double (real MAS
database in a throwaway PostgreSQL); a tiny stand-in answers Synapse's
``/_synapse/mas`` API. The users are created by a first apply (not timed).

The formula reads MAS's users and their emails once per run, in pages of
1,000 (``mas_user``), instead of several requests per user; the script also
counts the admin-API requests of one no-change run of ``mas.users``.

Usage (as root): .venv/bin/python bench/users.py [ROUNDS] [USERS]
"""

import json
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "test"), str(REPO / "scripts")]
from harness import mas as mas_target  # noqa: E402  pylint: disable=wrong-import-position
from harness.postgres import PostgresCluster  # noqa: E402  pylint: disable=wrong-import-position
from harness.util import free_port  # noqa: E402  pylint: disable=wrong-import-position
from mas_demo import link_formula  # noqa: E402  pylint: disable=wrong-import-position
from mas_double import run_server  # noqa: E402  pylint: disable=wrong-import-position

TARGET = 3.0


class Homeserver:
    """Synapse's MAS API as the double needs it: every call succeeds."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def _ok(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = _ok

            def log_message(self, format, *args):
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def main(rounds, users):
    with tempfile.TemporaryDirectory(prefix="mas-bench-users-") as tmp:
        tmp = pathlib.Path(tmp)
        pg = PostgresCluster(tmp / "pg").start()
        try:
            pg.create_database("mas_bench")
            pg.load_mas_schema("mas_bench")
            homeserver = Homeserver()
            synapse_dir = tmp / "synapse"
            (synapse_dir / "conf.d").mkdir(parents=True)
            (synapse_dir / "homeserver.yaml").write_text(yaml.safe_dump({"server_name": "example.com"}))
            web, internal = free_port(), free_port()
            pillar = {
                "enabled": True,
                "server_name": "example.com",
                "runtime": "binary",
                "binary": mas_target.binary_pillar(tmp),
                "user": "root",
                "group": "root",
                "base_path": str(tmp / "mas"),
                "service": {"manage": False, "unit_dir": str(tmp / "systemd")},
                "http": {"web_bind": f"127.0.0.1:{web}", "internal_bind": f"127.0.0.1:{internal}"},
                "database": {"host": "127.0.0.1", "port": pg.port, "name": "mas_bench", "user": pg.superuser},
                "synapse": {
                    "user": "root",
                    "group": "root",
                    "restart": False,
                    "endpoint": homeserver.url,
                    "config_files": [str(synapse_dir / "homeserver.yaml")],
                    "config_dir": str(synapse_dir / "conf.d"),
                },
                "proxy": {"type": "none"},
                # a Synapse stand-in without a database: a new homeserver, nothing for the lock-out guard to read
                "syn2mas": {"assume_fresh": True},
                "config": {"rate_limiting": {"login": {"per_ip": {"burst": 1000, "per_second": 100}}}},
            }
            (tmp / "pillar").mkdir()
            (tmp / "pillar" / "top.sls").write_text(yaml.safe_dump({"base": {"*": ["mas"]}}))

            def set_pillar(mas):
                data = {"mas": mas, "bench_trivial_path": str(tmp / "trivial.txt")}
                (tmp / "pillar" / "mas.sls").write_text(yaml.safe_dump(data))

            (tmp / "minion").write_text(
                yaml.safe_dump(
                    {
                        "id": "bench",
                        "file_client": "local",
                        "root_dir": str(tmp / "salt"),
                        "file_roots": {"base": [str(link_formula(tmp / "formula")), str(REPO / "bench" / "trivial")]},
                        "pillar_roots": {"base": [str(tmp / "pillar")]},
                    }
                )
            )
            call = [str(pathlib.Path(sys.executable).with_name("salt-call")), "-c", str(tmp), "--local"]
            call += ["--out=json", "--retcode-passthrough"]

            def apply(sls):
                proc = subprocess.run(call + ["state.apply", sls], capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    raise RuntimeError(f"state.apply {sls} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
                return json.loads(proc.stdout)["local"]

            subprocess.run(call + ["saltutil.sync_all"], check=True, capture_output=True)
            set_pillar(pillar)
            apply("mas")  # MAS's config, then the double can start
            with run_server([tmp / "mas" / "config" / "config.yaml"], log_path=tmp / "mas.log"):
                pillar["users"] = [
                    {"username": f"user{i:04d}", "admin": i % 10 == 0, "emails": [f"user{i:04d}@example.com"]}
                    for i in range(users)
                ]
                set_pillar(pillar)
                start = time.perf_counter()
                first = apply("mas")
                created = sum(1 for s in first.values() if s["__id__"].startswith("mas-users-") and s["changes"])
                print(f"first apply: {created} users created in {time.perf_counter() - start:.1f} s")
                apply("trivial")
                # the admin-API requests of one no-change run (urllib3 logs each one at debug level)
                proc = subprocess.run(
                    call + ["-l", "debug", "state.apply", "mas.users"], capture_output=True, text=True, check=False
                )
                requests_made = len(re.findall(r'"(?:GET|POST|PUT|DELETE) /api/admin/v1/', proc.stdout + proc.stderr))
                times = {"mas": [], "trivial": []}
                for _ in range(rounds):
                    for sls in ("trivial", "mas"):
                        start = time.perf_counter()
                        result = apply(sls)
                        times[sls].append(time.perf_counter() - start)
                        changed = [s["__id__"] for s in result.values() if s["changes"]]
                        if sls == "mas" and changed:
                            raise RuntimeError(f"the re-apply changed {changed}")
            med = {sls: statistics.median(values) for sls, values in times.items()}
            print(f"rounds: {rounds}, users: {users}")
            print(f"admin-API requests of a no-change mas.users run: {requests_made} (rc {proc.returncode})")
            print(f"trivial one-file state, median: {med['trivial']:.3f} s")
            print(f"mas no-change re-apply with {users} users, median: {med['mas']:.3f} s")
            print(f"ratio: {med['mas'] / med['trivial']:.2f}x (target <= {TARGET:.1f}x)")
        finally:
            pg.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5, int(sys.argv[2]) if len(sys.argv) > 2 else 1000)
