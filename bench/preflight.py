"""Benchmark: the downtime window of a migration on a million users: the formula's preflight, backup and verification against upstream's real ``mas-cli syn2mas migrate``, in one run on the same data.

Builds a synthetic Synapse database with real Synapse's schema (Synapse 1.163
creates it on a first start against an empty PostgreSQL database, then stops)
and bulk-inserts with ``generate_series``: USERS users (one in 1,000 an admin,
all of them active; one in 100 deactivated), two devices and two access tokens
per user, THREEPIDS 3PIDs (90 % email, 10 % msisdn) and EXTERNAL external ids
over 3 OIDC providers. MAS's database starts empty.

Then, in one run on that data, the formula does what an operator's
``state.apply mas.syn2mas`` does: ``state.apply mas`` renders MAS's config and
wrapper for the real MAS of ``../shared/mas-release`` (verified and unpacked
by ``scripts/mas_release.py``; never copied into the project), and
``salt-call mas_syn2mas.migrate`` runs the formula's own steps, each timed by
the formula: preflight, ``syn2mas check``, backup (``pg_dump``), the real
``mas-cli syn2mas migrate`` and ``verify()`` of what real syn2mas wrote.
Then ``preflight()`` (against an empty MAS database, before the migration)
and ``verify()`` (after it) run ROUNDS more times each (``salt-call``; the
functions' own ``seconds``, Salt's start-up aside), beside a plain
``SELECT count(*)`` over the same tables; last, four rows of MAS are broken
(an email, a compatibility session, an upstream link deleted, an admin flag
flipped) and ``verify()`` must name each.

Prints every time, the load average, and the two ratios of the window:
(preflight + verify) / migrate (goal: at most 10 %) and backup / migrate.

With ``--backup-modes``, also times the ``pg_dump`` modes that ``pg_restore``
restores (custom format at several compression levels, directory format with
two jobs), ROUNDS times each in turn, restores each once into a scratch
database (timed) and compares its row counts: the figures behind the backup's
format (docs/migration.md).

Usage (as root; PostgreSQL 15 server binaries and matrix-synapse installed, as
for the tests; ``../shared/mas-release`` beside the checkout, or
``$MAS_RELEASE_DIR``):

    .venv/bin/python bench/preflight.py [--users 1000000] [--rounds 3] [--keep DIR] [--backup-modes]

``--keep DIR`` builds in DIR and keeps it: a later run with the same DIR and
sizes reuses the Synapse database (the build takes minutes) and recreates only
MAS's database and the formula's deployment. PostgreSQL is stopped at the end
either way; its data stays in DIR/pg. Not part of the test suite.
"""

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "test"), str(REPO / "scripts"), str(REPO / "_utils")]

import mas_release  # noqa: E402  pylint: disable=wrong-import-position

# the real MAS for the whole run (the harness reads these when it is imported)
try:
    RELEASE = mas_release.unpacked()
except mas_release.ReleaseError as exc:
    sys.exit(f"bench/preflight.py runs the real MAS: {exc}")
os.environ["MAS_REAL_CLI"], os.environ["MAS_REAL_SHARE"] = str(RELEASE.cli), str(RELEASE.share)

from harness.postgres import PostgresCluster  # noqa: E402  pylint: disable=wrong-import-position
from harness.synapse import SynapseServer  # noqa: E402  pylint: disable=wrong-import-position
from harness.util import free_port  # noqa: E402  pylint: disable=wrong-import-position
from pillars import PILLAR_SECRETS, deep_update, wired_pillar  # noqa: E402  pylint: disable=wrong-import-position
from saltrun import SaltMinion  # noqa: E402  pylint: disable=wrong-import-position

SYNAPSE_DB = "synapse_bench"
MAS_DB = "mas_bench"
PROVIDERS = {
    "oidc-alpha": "01J9BENCHPR0V1DER00000000A",
    "oidc-beta": "01J9BENCHPR0V1DER00000000B",
    "oidc-gamma": "01J9BENCHPR0V1DER00000000C",
}
SYNAPSE_TABLES = ("users", "user_threepids", "user_external_ids", "devices", "access_tokens", "refresh_tokens")
MAS_TABLES = ("users", "user_emails", "upstream_oauth_links", "compat_sessions")
GOAL = 0.10


def timed(label, func):
    start = time.perf_counter()
    value = func()
    print(f"  {label}: {time.perf_counter() - start:.1f} s", flush=True)
    return value


def issuer(idp):
    return f"https://idp.invalid/{idp}"


def build_synapse(pg, server, users, threepids, external):
    """Synapse's schema from Synapse itself (first start), then the rows (set-based)."""
    timed("Synapse creates its schema (first start)", lambda: server.start(timeout=600))
    server.stop()
    bound = {
        "users": users,
        "emails": threepids * 9 // 10,
        "threepids": threepids,
        "external": external,
        "idps": list(PROVIDERS),
    }
    statements = [
        # admins: i % 1000 = 1, never deactivated (i % 100 = 0)
        """INSERT INTO users (name, password_hash, creation_ts, admin, is_guest, deactivated, locked)
            SELECT '@user' || i || ':example.com', '$2b$12$' || md5(i::text) || md5(i::text), 1600000000 + i,
                   (i %% 1000 = 1)::int, 0, (i %% 100 = 0)::int, false
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


def oidc_fragment(path):
    """The pre-MAS Synapse config's OIDC providers (what syn2mas maps with ``synapse_idp_id``)."""
    providers = [
        {"idp_id": idp.split("-", 1)[1], "issuer": issuer(idp), "client_id": "synapse", "client_secret": "bench"}
        for idp in PROVIDERS
    ]
    path.write_text(json.dumps({"oidc_providers": providers}))
    return path


def deployment_pillar(root, pg, server, fragment):
    """The formula's pillar: the real MAS (binary runtime), a migration in progress, Synapse already stopped."""
    providers = [
        {
            "id": pid,
            "synapse_idp_id": idp,
            "issuer": issuer(idp),
            "client_id": "mas",
            "client_secret": PILLAR_SECRETS["client_secret"],
            "token_endpoint_auth_method": "client_secret_post",
            "scope": "openid",
        }
        for idp, pid in PROVIDERS.items()
    ]
    return deep_update(
        wired_pillar(root, pg, MAS_DB, server, free_port(), free_port()),
        {
            "migration_in_progress": True,
            "base_path": str(root / "srv"),
            "secrets": {key: PILLAR_SECRETS[key] for key in ("encryption", "homeserver_secret")},
            "synapse": {"mas_endpoint": None},
            "upstream_oauth2_providers": providers,
            "proxy": {"type": "none"},
            "syn2mas": {
                "stop_services": False,  # the bench stopped Synapse; MAS never ran
                "accept_warnings": True,  # the msisdn 3PIDs: MAS has no use for them
                "backup_dir": str(root / "backups"),
                "synapse_config_files": [str(server.config_path), str(fragment)],
            },
        },
    )


def counts(pg, dbname, tables):
    with pg.connect(dbname) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}  # noqa: S608


def measure(rounds, func):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def salt_call(minion, *args, timeout=600):
    """``salt-call <args>``: the function's return (raises with Salt's output when there is none)."""
    res = minion.run(*args, timeout=timeout)
    if not isinstance(res.data, dict):
        raise RuntimeError(f"salt-call {' '.join(args)} returned nothing usable (exit {res.returncode}):\n{res.output}")
    return res.data


def rounds_of(minion, function, rounds):
    """``rounds`` calls of ``mas_syn2mas.<function>``: (median of their own ``seconds``, the last return)."""
    returns = [salt_call(minion, f"mas_syn2mas.{function}") for _ in range(rounds)]
    return statistics.median(ret["seconds"] for ret in returns), returns[-1]


def break_four_rows(pg):
    """Delete an email, a compatibility session and an upstream link of MAS, and flip an admin flag: what each is."""
    with pg.connect(MAS_DB) as conn:
        email = conn.execute(
            "DELETE FROM user_emails WHERE user_email_id = (SELECT user_email_id FROM user_emails ORDER BY 1 LIMIT 1) "
            "RETURNING (SELECT username FROM users u WHERE u.user_id = user_emails.user_id), email"
        ).fetchone()
        session = conn.execute(
            "DELETE FROM compat_access_tokens WHERE compat_session_id = (SELECT compat_session_id "
            "FROM compat_sessions ORDER BY 1 LIMIT 1)"
        )
        session = conn.execute(
            "DELETE FROM compat_sessions WHERE compat_session_id = (SELECT compat_session_id "
            "FROM compat_sessions ORDER BY 1 LIMIT 1) "
            "RETURNING (SELECT username FROM users u WHERE u.user_id = compat_sessions.user_id), device_id"
        ).fetchone()
        link = conn.execute(
            "DELETE FROM upstream_oauth_links WHERE upstream_oauth_link_id = (SELECT upstream_oauth_link_id "
            "FROM upstream_oauth_links ORDER BY 1 LIMIT 1) "
            "RETURNING (SELECT username FROM users u WHERE u.user_id = upstream_oauth_links.user_id)"
        ).fetchone()
        admin = conn.execute(
            "UPDATE users SET can_request_admin = false WHERE user_id = (SELECT user_id FROM users "
            "WHERE can_request_admin ORDER BY 1 LIMIT 1) RETURNING username"
        ).fetchone()
    return {
        "emails": f"{email[0]}: {email[1]}",
        "devices": f"{session[0]}: {session[1]}",
        "external_ids": f"{link[0]} (",
        "users": admin[0],
    }


def pg_tool(pg, name):
    return str(pg.bindir / name)


BACKUP_MODES = {
    "-Fc (-Z6, pg_dump's default)": ["--format=custom"],
    "-Fc -Z1": ["--format=custom", "--compress=1"],
    "-Fc -Z0": ["--format=custom", "--compress=0"],
    "-Fd -j2 (-Z6)": ["--format=directory", "--jobs=2"],
    "-Fd -j2 -Z1": ["--format=directory", "--jobs=2", "--compress=1"],
    "-Fd -j2 -Z0": ["--format=directory", "--jobs=2", "--compress=0"],
}


def size_of(path):
    path = pathlib.Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def dump(pg, options, target):
    """``pg_dump`` of Synapse's database with ``options`` into ``target``: its seconds."""
    start = time.perf_counter()
    subprocess.run(
        [pg_tool(pg, "pg_dump"), *options, "--no-password", "--file", str(target), pg.dsn(SYNAPSE_DB)], check=True
    )
    return time.perf_counter() - start


def backup_modes(pg, root, rounds):
    """Each pg_dump mode pg_restore restores, ``rounds`` times in turn: dump times and size; the first dump of each
    is restored into a scratch database (timed) and its row counts compared."""
    print(
        f"\nbackup modes (pg_dump of Synapse's database, Synapse stopped, {rounds} rounds in turn; the first dump "
        "restored with pg_restore -j2 into a scratch database):"
    )
    for method in ("lz4", "zstd"):
        probe = subprocess.run(
            [pg_tool(pg, "pg_dump"), f"--compress={method}", "--schema-only", "--file", os.devnull, pg.dsn(SYNAPSE_DB)],
            capture_output=True,
            text=True,
            check=False,
        )
        said = (probe.stderr.strip().splitlines() or ["accepted"])[0]
        print(f"  pg_dump --compress={method}: {'supported' if probe.returncode == 0 else 'refused: ' + said}")
    want = counts(pg, SYNAPSE_DB, SYNAPSE_TABLES)
    directory = root / "backup-modes"
    times, sizes, restores = {label: [] for label in BACKUP_MODES}, {}, {}
    for turn in range(rounds):
        for label, options in BACKUP_MODES.items():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            target = directory / "dump"
            times[label].append(dump(pg, options, target))
            sizes[label] = size_of(target)
            if turn == 0:
                pg.drop_database("restore_bench")
                pg.create_database("restore_bench", synapse=True)
                start = time.perf_counter()
                subprocess.run(
                    [pg_tool(pg, "pg_restore"), "--no-owner", "--jobs=2", "--dbname", pg.dsn("restore_bench")]
                    + [str(target)],
                    check=True,
                )
                restores[label] = (time.perf_counter() - start, counts(pg, "restore_bench", SYNAPSE_TABLES) == want)
                pg.drop_database("restore_bench")
    shutil.rmtree(directory, ignore_errors=True)
    for label, seconds in times.items():
        restored, same = restores[label]
        print(
            f"  {label:30} dump {min(seconds):4.1f}-{max(seconds):4.1f} s (median {statistics.median(seconds):4.1f})  "
            f"{sizes[label] / 2**20:6.1f} MiB  pg_restore -j2 {restored:5.1f} s  rows {'identical' if same else 'DIFFER'}",
            flush=True,
        )
    fastest = min(times, key=lambda label: statistics.median(times[label]))
    print(f"  fastest dump (median): {fastest}; load average now {os.getloadavg()}")


def deploy(root, pg, server, fragment):
    """A fresh deployment of the formula (a new minion, an empty MAS database): ``(minion, pillar)``."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    pg.drop_database(MAS_DB)
    pg.create_database(MAS_DB)  # empty: real syn2mas creates MAS's schema itself
    pillar = deployment_pillar(root, pg, server, fragment)
    minion = SaltMinion(root / "salt", REPO)
    timed("saltutil.sync_all", minion.sync)
    res = timed("state.apply mas (MAS's config and wrapper for the real MAS)", lambda: minion.apply(pillar))
    if res.returncode != 0:
        raise RuntimeError(f"state.apply mas failed:\n{res.output[-4000:]}")
    return minion, pillar


def step_seconds(ret, name):
    found = [step["seconds"] for step in ret.get("steps") or [] if step["step"] == name]
    return found[-1] if found else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--threepids", type=int, default=500_000)
    parser.add_argument("--external", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3, help="more calls of preflight() and verify() (medians)")
    parser.add_argument("--keep", help="build in this directory and keep it (a later run reuses its Synapse)")
    parser.add_argument("--backup-modes", action="store_true", help="also time each pg_dump mode and restore it")
    args = parser.parse_args(argv)
    root = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="mas-bench-preflight-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    sizes = {"users": args.users, "threepids": args.threepids, "external": args.external}
    built = root / "built.json"
    reuse = built.is_file() and json.loads(built.read_text()) == sizes
    pg = PostgresCluster(root / "pg")
    try:
        pg.start()
        server = SynapseServer(root / "synapse", database=pg, dbname=SYNAPSE_DB)
        if reuse:
            print(f"reusing the Synapse database built in {root}", flush=True)
        else:
            built.unlink(missing_ok=True)
            print(
                f"building: {args.users} users, {2 * args.users} devices and access tokens, {args.threepids} 3PIDs, "
                f"{args.external} external ids over {len(PROVIDERS)} providers",
                flush=True,
            )
            build_synapse(pg, server, args.users, args.threepids, args.external)
            built.write_text(json.dumps(sizes))
        fragment = oidc_fragment(root / "pre-mas-oidc.yaml")
        print("deploying the formula (not timed):", flush=True)
        minion, _ = deploy(root / "deployment", pg, server, fragment)
        version = subprocess.run([str(RELEASE.cli), "--version"], capture_output=True, text=True, check=False)

        # before the migration: preflight() against the empty MAS database, and its count(*) floor
        base_pre = measure(args.rounds, lambda: counts(pg, SYNAPSE_DB, SYNAPSE_TABLES))
        pre_time, pre = rounds_of(minion, "preflight", args.rounds)

        # the migration, one run of the formula's own steps
        print("salt-call mas_syn2mas.migrate (the formula's steps; the real mas-cli syn2mas migrate):", flush=True)
        ret = timed("mas_syn2mas.migrate", lambda: salt_call(minion, "mas_syn2mas.migrate", timeout=7200))
        if not ret.get("result"):
            print(json.dumps(ret, indent=1)[-6000:])
            raise RuntimeError("the formula's migration failed")
        window = {name: step_seconds(ret, name) for name in ("preflight", "check", "backup", "migrate", "verify")}

        # after it: verify() again, and its count(*) floor over both databases
        base_ver = measure(
            args.rounds, lambda: (counts(pg, SYNAPSE_DB, SYNAPSE_TABLES[:4]), counts(pg, MAS_DB, MAS_TABLES))
        )
        ver_time, ver = rounds_of(minion, "verify", args.rounds)
        table_counts = {"synapse": counts(pg, SYNAPSE_DB, SYNAPSE_TABLES), "mas": counts(pg, MAS_DB, MAS_TABLES)}

        broken = break_four_rows(pg)
        bad = salt_call(minion, "mas_syn2mas.verify")
        named = {kind: any(expected in error for error in bad["errors"]) for kind, expected in broken.items()}

        print()
        print(f"MAS: {version.stdout.strip() or version.stderr.strip()} ({RELEASE.tarball})")
        print(f"rows: {json.dumps(table_counts)}")
        print(f"preflight: result {pre['result']}, errors {pre['errors']}, warnings {len(pre['warnings'])}")
        print(f"verify: result {ver['result']}, errors {ver['errors']}, counts {json.dumps(ver['counts'])}")
        backup = ret.get("backup") or {}
        print(f"backup: {backup.get('path')} ({backup.get('size', 0) / 2**20:.1f} MiB)")
        print(f"load average (1, 5, 15 min): {os.getloadavg()} on {os.cpu_count()} cores")
        print()
        print("one migration (salt-call mas_syn2mas.migrate; each step timed by the formula):")
        for name, seconds in window.items():
            note = {"check": "  (upstream's syn2mas check, before Synapse stops)"}.get(name, "")
            print(f"  {name:10} {seconds:7.2f} s{note}")
        guards = window["preflight"] + window["verify"]
        print(
            f"(preflight + verify) / migrate: {guards:.2f} / {window['migrate']:.2f} s = "
            f"{guards / window['migrate']:.1%} (goal <= {GOAL:.0%})"
        )
        print(
            f"backup / migrate: {window['backup']:.2f} / {window['migrate']:.2f} s = {window['backup'] / window['migrate']:.1%}"
        )
        print()
        print(f"{args.rounds} more calls each (medians of the functions' own seconds):")
        print(f"  count(*) over Synapse's {len(SYNAPSE_TABLES)} tables: {base_pre:.2f} s")
        print(f"  preflight(): {pre_time:.2f} s  ratio {pre_time / base_pre:.2f}x count(*)")
        print(f"  count(*) over the {4 + len(MAS_TABLES)} compared tables (both databases): {base_ver:.2f} s")
        print(f"  verify(): {ver_time:.2f} s  ratio {ver_time / base_ver:.2f}x count(*)")
        print(f"  (preflight + verify) / migrate: {(pre_time + ver_time) / window['migrate']:.1%} with the medians")
        print()
        print(f"four rows broken in MAS, verify() in {bad['seconds']:.2f} s: result {bad['result']}")
        for kind, expected in broken.items():
            print(f"  {kind:12} {expected!r:40} {'named' if named[kind] else 'NOT NAMED'}")
        if args.backup_modes:
            backup_modes(pg, root, args.rounds)
        ok = (
            pre["result"]
            and ver["result"]
            and not bad["result"]
            and all(named.values())
            and guards <= GOAL * window["migrate"]
        )
        return 0 if ok else 1
    finally:
        pg.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
