"""Benchmark: ``mas_syn2mas.preflight()`` and ``verify()`` on a million users, against plain ``count(*)``.

Builds a synthetic Synapse database with real Synapse's schema (Synapse 1.163
creates it on a first start against an empty PostgreSQL database, then stops)
and bulk-inserts with ``generate_series``: USERS users (one in 1,000 an admin,
one in 100 deactivated), two devices and two access tokens per user, THREEPIDS
3PIDs (90 % email, 10 % msisdn) and EXTERNAL external ids over 3 OIDC
providers. MAS's database (the upstream schema) gets what syn2mas would write
for them, so that ``verify()`` passes. Then, in the same run, several rounds of:
``preflight()``, ``verify()`` (the formula's functions, called through Salt's
loader like the unit tests do, no salt-call start-up) and a plain ``SELECT
count(*)`` over the same tables (Synapse's for the preflight, both databases'
for the verification). Prints medians and ratios.

Usage (as root; PostgreSQL server binaries and matrix-synapse installed, as for the tests):

    .venv/bin/python bench/preflight.py [--users 1000000] [--rounds 3] [--keep DIR]

Not part of the test suite (the database takes minutes to build).
"""

import argparse
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "test"), str(REPO / "scripts")]

from formula_modules import DEFAULTS, MODULES, dunders  # noqa: E402  pylint: disable=wrong-import-position
from harness.postgres import PostgresCluster  # noqa: E402  pylint: disable=wrong-import-position
from harness.synapse import SynapseServer  # noqa: E402  pylint: disable=wrong-import-position
from pillars import deep_update  # noqa: E402  pylint: disable=wrong-import-position

PROVIDERS = {
    "oidc-alpha": "01J9BENCHPR0V1DER00000000A",
    "oidc-beta": "01J9BENCHPR0V1DER00000000B",
    "oidc-gamma": "01J9BENCHPR0V1DER00000000C",
}
SYNAPSE_TABLES = ("users", "user_threepids", "user_external_ids", "devices", "access_tokens", "refresh_tokens")
MAS_TABLES = ("users", "user_emails", "upstream_oauth_links", "compat_sessions")


def timed(label, func):
    start = time.perf_counter()
    value = func()
    print(f"  {label}: {time.perf_counter() - start:.1f} s", flush=True)
    return value


def build_synapse(pg, root, users, threepids, external):
    """Synapse's schema from Synapse itself, then the rows (set-based)."""
    server = SynapseServer(root / "synapse", database=pg, dbname="synapse_bench")
    timed("Synapse creates its schema (first start)", lambda: server.start(timeout=600))
    server.stop()
    emails = threepids * 9 // 10
    idps = list(PROVIDERS)
    bound = {"users": users, "emails": emails, "threepids": threepids, "external": external, "idps": idps}
    statements = [
        """INSERT INTO users (name, password_hash, creation_ts, admin, is_guest, deactivated, locked)
            SELECT '@user' || i || ':example.com', '$2b$12$' || md5(i::text) || md5(i::text), 1600000000 + i,
                   (i %% 1000 = 0)::int, 0, (i %% 100 = 0)::int, false
            FROM generate_series(1, %(users)s) AS i""",
        """INSERT INTO devices (user_id, device_id, display_name, last_seen, ip, user_agent, hidden)
            SELECT '@user' || i || ':example.com', 'DEV' || i || '_' || j, 'phone', 1700000000000, '10.0.0.1',
                   'bench', false
            FROM generate_series(1, %(users)s) AS i, generate_series(1, 2) AS j""",
        """INSERT INTO access_tokens (id, user_id, device_id, token, valid_until_ms, last_validated)
            SELECT i * 2 + j, '@user' || i || ':example.com', 'DEV' || i || '_' || j,
                   'syt_' || md5(i::text || '-' || j::text), NULL, 1700000000000
            FROM generate_series(1, %(users)s) AS i, generate_series(1, 2) AS j""",
        """INSERT INTO user_threepids (user_id, medium, address, validated_at, added_at)
            SELECT '@user' || i || ':example.com', CASE WHEN i <= %(emails)s THEN 'email' ELSE 'msisdn' END,
                   CASE WHEN i <= %(emails)s THEN 'user' || i || '@example.org' ELSE '1555' || i END,
                   1600000000000, 1600000000000
            FROM generate_series(1, %(threepids)s) AS i""",
        """INSERT INTO user_external_ids (auth_provider, external_id, user_id)
            SELECT (%(idps)s::text[])[1 + i %% 3], 'subject-' || i, '@user' || i || ':example.com'
            FROM generate_series(1, %(external)s) AS i""",
        "VACUUM ANALYZE",
    ]
    with pg.connect(server.dbname) as conn:
        for statement in statements:
            params = None if statement.startswith("VACUUM") else bound
            timed("synapse: " + " ".join(statement.split()[:3]), lambda s=statement, p=params: conn.execute(s, p))
    fragment = root / "pre-mas-oidc.yaml"
    fragment.write_text(
        json.dumps(
            {
                "oidc_providers": [
                    {"idp_id": idp.split("-", 1)[1], "issuer": f"https://idp.invalid/{idp}", "client_id": "synapse"}
                    for idp in PROVIDERS
                ]
            }
        )
    )
    return server, fragment


def build_mas(pg, users, threepids, external):
    """MAS's schema (upstream) with what syn2mas would have written for the synthetic Synapse."""
    pg.create_database("mas_bench")
    pg.create_database("mas_empty")  # what the preflight expects: syn2mas needs an empty MAS database
    timed("MAS schema", lambda: pg.load_mas_schema("mas_bench"))
    emails = threepids * 9 // 10
    idps = list(PROVIDERS)
    uuids = [str(ulid_uuid(PROVIDERS[idp])) for idp in idps]
    statements = [
        """INSERT INTO users (user_id, username, created_at, can_request_admin, deactivated_at, is_guest)
            SELECT md5('user' || i)::uuid, 'user' || i, to_timestamp(1600000000 + i), i %% 1000 = 0,
                   CASE WHEN i %% 100 = 0 THEN to_timestamp(1600000000 + i) END, false
            FROM generate_series(1, %(users)s) AS i""",
        """INSERT INTO user_emails (user_email_id, user_id, email, created_at)
            SELECT md5('email' || i)::uuid, md5('user' || i)::uuid, 'user' || i || '@example.org', now()
            FROM generate_series(1, %(emails)s) AS i""",
        """INSERT INTO upstream_oauth_links
            (upstream_oauth_link_id, upstream_oauth_provider_id, user_id, subject, created_at)
            SELECT md5('link' || i)::uuid, (%(uuids)s::uuid[])[1 + i %% 3], md5('user' || i)::uuid,
                   'subject-' || i, now()
            FROM generate_series(1, %(external)s) AS i""",
        """INSERT INTO compat_sessions (compat_session_id, user_id, device_id, created_at)
            SELECT md5('session' || i || '_' || j)::uuid, md5('user' || i)::uuid, 'DEV' || i || '_' || j, now()
            FROM generate_series(1, %(users)s) AS i, generate_series(1, 2) AS j WHERE i %% 100 <> 0""",
        "VACUUM ANALYZE",
    ]
    bound = {"users": users, "emails": emails, "external": external, "uuids": uuids}
    with pg.connect("mas_bench") as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO upstream_oauth_providers (upstream_oauth_provider_id, issuer, scope, client_id, "
                "token_endpoint_auth_method, created_at) VALUES (%s::uuid, %s, 'openid', 'mas', 'client_secret_post', "
                "now())",
                [(uuid, f"https://idp.invalid/{idp}") for idp, uuid in zip(idps, uuids, strict=True)],
            )
        for statement in statements:
            params = None if statement.startswith("VACUUM") else bound
            timed("mas: " + " ".join(statement.split()[:3]), lambda s=statement, p=params: conn.execute(s, p))


def ulid_uuid(ulid):
    return MODULES["mas_syn2mas"]._ulid_uuid(ulid)  # pylint: disable=protected-access


def formula(pg, root, server, fragment, mas_database):
    """The formula's map for this deployment, and its modules wired like Salt's loader does."""
    for module, values in dunders({"mas": {}}, salt={}).items():
        for key, value in values.items():
            setattr(module, key, value)
    base = root / "srv"
    (base / "formula").mkdir(parents=True, exist_ok=True)
    providers = [
        {"id": pid, "synapse_idp_id": idp, "client_id": "mas", "token_endpoint_auth_method": "none"}
        for idp, pid in PROVIDERS.items()
    ]
    data = deep_update(
        DEFAULTS,
        {
            "enabled": True,
            "server_name": "example.com",
            "base_path": str(base),
            "runtime": "binary",
            "user": "root",
            "group": "root",
            "migration_in_progress": True,
            "database": {"host": pg.host, "port": pg.port, "name": mas_database, "user": pg.superuser},
            "upstream_oauth2_providers": providers,
            "synapse": {
                "config_files": [str(server.config_path)],
                "config_dir": str(server.conf_d),
                "user": "root",
                "group": "root",
            },
            "syn2mas": {"synapse_config_files": [str(server.config_path), str(fragment)]},
        },
    )
    return MODULES["mas"].settings(data)


def counts(pg, dbname, tables):
    with pg.connect(dbname) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}  # noqa: S608


def measure(rounds, func):
    times, value = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        value = func()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--threepids", type=int, default=500_000)
    parser.add_argument("--external", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", help="build in this directory and keep it (default: a temporary one)")
    args = parser.parse_args(argv)
    root = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="mas-bench-preflight-"))
    root.mkdir(parents=True, exist_ok=True)
    pg = PostgresCluster(root / "pg")
    try:
        pg.start()
        print(
            f"building: {args.users} users, {2 * args.users} devices and access tokens, {args.threepids} 3PIDs, "
            f"{args.external} external ids over {len(PROVIDERS)} providers",
            flush=True,
        )
        server, fragment = build_synapse(pg, root, args.users, args.threepids, args.external)
        build_mas(pg, args.users, args.threepids, args.external)
        before, after = (
            formula(pg, root, server, fragment, "mas_empty"),
            formula(pg, root, server, fragment, "mas_bench"),
        )
        syn2mas = MODULES["mas_syn2mas"]
        base_pre, table_counts = measure(args.rounds, lambda: counts(pg, server.dbname, SYNAPSE_TABLES))
        base_ver, _ = measure(
            args.rounds,
            lambda: (counts(pg, server.dbname, SYNAPSE_TABLES[:4]), counts(pg, "mas_bench", MAS_TABLES)),
        )
        pre_time, pre = measure(args.rounds, lambda: syn2mas.preflight(before))
        ver_time, ver = measure(args.rounds, lambda: syn2mas.verify(after))
        print(f"rows: {json.dumps(table_counts)}")
        print(f"preflight: result {pre['result']}, errors {pre['errors']}, warnings {len(pre['warnings'])}")
        print(f"verify: result {ver['result']}, errors {ver['errors']}")
        print(
            f"rounds: {args.rounds} (medians); load average (1, 5, 15 min): {os.getloadavg()} on {os.cpu_count()} cores"
        )
        print(f"count(*) over Synapse's {len(SYNAPSE_TABLES)} tables: {base_pre:.2f} s")
        print(f"preflight(): {pre_time:.2f} s  ratio {pre_time / base_pre:.2f}x (target <= 3x and < 10 s)")
        print(f"count(*) over the {4 + len(MAS_TABLES)} compared tables (both databases): {base_ver:.2f} s")
        print(f"verify(): {ver_time:.2f} s  ratio {ver_time / base_ver:.2f}x")
        return 0 if pre["result"] and ver["result"] else 1
    finally:
        pg.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
