"""The verification after a migration: MAS compared with Synapse set-wise (users with their admin, deactivated and locked state, emails, upstream links, devices), naming every row that is missing.

Every key of every compared set is hashed into buckets in both databases at
once; only the buckets that differ are fetched and compared key by key.
"""

import concurrent.futures
import logging

from mas_formula import syn2mas_db, syn2mas_preflight

log = logging.getLogger(__name__)


#: Shown per kind of difference before "... and N more".
SHOWN = 20


#: Each set is split into 1024 buckets by a 64-bit hash of its text keys; a bucket is (count, sum of another
#: 64-bit hash), computed in each database. Equal buckets are equal sets (up to a 64-bit collision); only the
#: differing ones are fetched and compared key by key, so a hash that differed between two servers would only cost
#: time, never hide a difference.
BUCKETS = (
    "SELECT (hashtextextended(k, 1) & 1023)::int, count(*), sum(hashtextextended(k, 0)) "
    "FROM ({query}) AS s(k) GROUP BY 1"
)


BUCKET_KEYS = "SELECT k FROM ({query}) AS s(k) WHERE (hashtextextended(k, 1) & 1023)::int = ANY(%(buckets)s)"


def verify_queries(synapse_columns):
    """The sets compared: ``{kind: (synapse query, mas query)}``, one text key per row."""
    localpart = "substr(u.name, 2, length(u.name) - 1 - %(slen)s)"
    eligible = "u.appservice_id IS NULL AND right(u.name, %(slen)s) = %(suffix)s"
    locked = "u.locked::int" if "locked" in synapse_columns else "0"
    return {
        "users": (
            f"SELECT {localpart} || '|' || (u.admin <> 0)::int || (u.deactivated <> 0)::int || {locked} "  # noqa: S608
            f"|| (u.is_guest <> 0)::int FROM users u WHERE {eligible}",
            "SELECT username || '|' || can_request_admin::int || (deactivated_at IS NOT NULL)::int "
            "|| (locked_at IS NOT NULL)::int || is_guest::int FROM users",
        ),
        "emails": (
            f"SELECT {localpart} || '|' || t.address FROM user_threepids t JOIN users u ON u.name = t.user_id "  # noqa: S608
            f"WHERE t.medium = 'email' AND {eligible}",
            "SELECT u.username || '|' || e.email FROM user_emails e JOIN users u USING (user_id)",
        ),
        "external_ids": (
            f"SELECT {localpart} || '|' || x.auth_provider || '|' || x.external_id FROM user_external_ids x "  # noqa: S608
            f"JOIN users u ON u.name = x.user_id WHERE {eligible} AND x.auth_provider = ANY(%(mapped)s)",
            "SELECT u.username || '|' || m.idp || '|' || l.subject FROM upstream_oauth_links l "
            "JOIN users u USING (user_id) "
            "JOIN unnest(%(pids)s::uuid[], %(idps)s::text[]) AS m(pid, idp) ON m.pid = l.upstream_oauth_provider_id",
        ),
        "devices": (
            f"SELECT {localpart} || '|' || d.device_id FROM devices d JOIN users u ON u.name = d.user_id "  # noqa: S608
            f"WHERE {eligible} AND u.deactivated = 0 AND u.is_guest = 0 AND NOT coalesce(d.hidden, false) "
            "AND d.device_id <> 'guest_device'",
            "SELECT u.username || '|' || cs.device_id FROM compat_sessions cs JOIN users u USING (user_id) "
            "WHERE cs.device_id IS NOT NULL",
        ),
    }


def bucket_sums(conn, query, params):
    return {bucket: (n, total) for bucket, n, total in syn2mas_db.fetch(conn, BUCKETS.format(query=query), params)}


def bucket_keys(conn, query, params, buckets):
    return {row[0] for row in syn2mas_db.fetch(conn, BUCKET_KEYS.format(query=query), dict(params, buckets=buckets))}


def missing_rows(kind, keys, mas_keys):
    """Errors naming what Synapse has and MAS lacks (first ``SHOWN`` and a count)."""

    def shown(items):
        items = sorted(items)
        more = f" ... and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
        return ", ".join(items[:SHOWN]) + more

    if not keys:
        return []
    if kind == "users":
        present = {key.split("|", 1)[0] for key in mas_keys}
        absent = sorted(key.split("|", 1)[0] for key in keys if key.split("|", 1)[0] not in present)
        differ = sorted(key.split("|", 1)[0] for key in keys if key.split("|", 1)[0] in present)
        errors = []
        if absent:
            errors.append(f"{len(absent)} Synapse users are missing in MAS: {shown(absent)}")
        if differ:
            errors.append(
                f"{len(differ)} users have another admin/deactivated/locked/guest state in MAS than in Synapse: "
                f"{shown(differ)}"
            )
        return errors
    labels = {
        "emails": ("email addresses of Synapse are missing in MAS", lambda k: ": ".join(k.split("|", 1))),
        "external_ids": (
            "upstream links of Synapse are missing in MAS",
            lambda k: "{} ({})".format(*k.split("|", 2)[:2]),
        ),
        "devices": (
            "Synapse devices have no compatibility session in MAS",
            lambda k: ": ".join(k.split("|", 1)),
        ),
    }
    text, render = labels[kind]
    return [f"{len(keys)} {text}: {shown(render(k) for k in keys)}"]


def verify(mas, opts, conf, files, secrets, mas_database):
    """Compare Synapse with MAS set-wise: ``{errors, counts, missing}`` (raises :class:`syn2mas_db.Unreachable`)."""
    server_name = conf.get("server_name") or mas.get("server_name")
    suffix = f":{server_name}"
    mapped = syn2mas_preflight.mas_providers(mas)
    params = {
        "slen": len(suffix),
        "suffix": suffix,
        "mapped": sorted(mapped),
        "pids": [syn2mas_db.ulid_uuid(pid) for pid in mapped.values()],
        "idps": list(mapped),
    }
    database = syn2mas_db.synapse_database(conf, opts, files)
    if database["engine"] != "postgres":
        raise syn2mas_db.Unreachable(
            f"Synapse's {database['label']} is not PostgreSQL: syn2mas cannot have migrated it"
        )
    errors, counts, missing = [], {"synapse": {}, "mas": {}}, {}
    with (
        syn2mas_db.connected(database, secrets) as (_, syn),
        syn2mas_db.connected(mas_database, secrets) as (_, mas_conn),
    ):
        syn.isolation_level = syn2mas_db.pg().IsolationLevel.REPEATABLE_READ
        mas_conn.isolation_level = syn2mas_db.pg().IsolationLevel.REPEATABLE_READ
        queries = verify_queries(syn2mas_db.column_list(syn, "users"))
        # each side in its own thread (its own connection): the two databases hash at the same time
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            sides = (
                pool.submit(lambda: {kind: bucket_sums(syn, q[0], params) for kind, q in queries.items()}),
                pool.submit(lambda: {kind: bucket_sums(mas_conn, q[1], params) for kind, q in queries.items()}),
            )
            lefts, rights = sides[0].result(), sides[1].result()
        for kind, (syn_query, mas_query) in queries.items():
            left, right = lefts[kind], rights[kind]
            counts["synapse"][kind] = sum(n for n, _ in left.values())
            counts["mas"][kind] = sum(n for n, _ in right.values())
            differing = sorted(bucket for bucket in left if left[bucket] != right.get(bucket))
            if not differing:
                continue
            keys = bucket_keys(syn, syn_query, params, differing)
            mas_keys = bucket_keys(mas_conn, mas_query, params, differing)
            lacking = keys - mas_keys
            if lacking:
                missing[kind] = len(lacking)
                errors += missing_rows(kind, lacking, mas_keys)
        for table in ("access_tokens", "refresh_tokens"):
            counts["synapse"][table] = syn2mas_db.fetch(syn, f"SELECT count(*) FROM {table}")[0][0]  # noqa: S608
        for table in ("compat_sessions", "compat_access_tokens", "compat_refresh_tokens"):
            counts["mas"][table] = syn2mas_db.fetch(mas_conn, f"SELECT count(*) FROM {table}")[0][0]  # noqa: S608
        syn.rollback()
        mas_conn.rollback()
    return {"errors": errors, "counts": counts, "missing": missing}
