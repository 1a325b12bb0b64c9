"""The verification after a migration: MAS compared with Synapse set-wise (users with their admin, deactivated and locked state, emails, upstream links, devices), naming every row that is missing.

Every compared set is digested inside PostgreSQL, in both databases, as
``(count, sum of a 64-bit hash per row)``; a row's hash is keyed by a hash of
its user's Matrix ID (Synapse's ``users.name`` or ``user_id`` column as it is;
MAS's ``'@' || username || ':' || server_name``), so no text key is built per
row, and Synapse's rows need no join with its users but an anti-join with the
few whose rows syn2mas skips (application services, other servers; for devices
also deactivated users and guests). Equal sums: nothing to look for. A set whose
sums differ is digested again in 1024 buckets, a row's bucket being its user's
(the low bits of that same user hash: a user and their rows sit in the same
bucket on both sides, so an admin flag flipped is a user with another state,
not a missing one); only the buckets that differ are fetched, key by key, to
name the rows.

Each database is read in one snapshot (``REPEATABLE READ``; the other readers
import it with ``SET TRANSACTION SNAPSHOT``), by as many readers as this host
has cores (PostgreSQL's own parallel workers only for the cores left over).
"""

import concurrent.futures
import contextlib
import logging
import os
import queue
import threading

from mas_formula import syn2mas_db, syn2mas_preflight

log = logging.getLogger(__name__)


#: Shown per kind of difference before "... and N more".
SHOWN = 20

#: Buckets per compared set: a bucket that differs costs a fetch of its rows (a thousand users' at a million).
BUCKETS = 1024

#: The hash a row's user goes by: its Matrix ID, as Synapse stores it / as MAS's username makes it.
SYN_USER = "hashtextextended({column}, 0)"
MAS_USER = "hashtextextended('@' || u.username || %(suffix)s, 0)"
#: The localpart of a Synapse user ID (``@alice:example.com`` -> ``alice``), only for the rows fetched.
LOCALPART = "substr({column}, 2, length({column}) - 1 - %(slen)s)"

#: Users whose rows syn2mas does not write (appservice users, users of another server): matched per user.
NOT_MIGRATED = "u.appservice_id IS NOT NULL OR u.name NOT LIKE %(pattern)s"
#: ... and for devices, also the deactivated users and guests (syn2mas gives them no compatibility session).
NO_SESSIONS = NOT_MIGRATED + " OR u.deactivated <> 0 OR u.is_guest <> 0"


def rows_queries(synapse_columns):
    """``{kind: (synapse query, mas query)}``: rows ``(uh, who, ...)``: the user's hash, their localpart, the values.

    The values: ``f`` (users: admin, deactivated, locked and guest as bits), ``v`` (the email address, device ID or
    upstream subject) and ``idp`` (external IDs: Synapse's provider ID). A Synapse row whose user is not in Synapse's
    ``users`` at all is expected in MAS: syn2mas stops at such a row ("user ... was not found for migration but a
    row in ... was found"), so no migration it finished had one.
    """
    locked = "coalesce(u.locked, false)::int" if "locked" in synapse_columns else "0"

    def skipped(table, condition):
        return f"NOT EXISTS (SELECT FROM users u WHERE u.name = {table}.user_id AND ({condition}))"

    def synapse(table, alias, values, where):
        return (
            f"SELECT {SYN_USER.format(column=alias + '.user_id')} AS uh, "  # noqa: S608
            f"{LOCALPART.format(column=alias + '.user_id')} AS who, {values} FROM {table} {alias} WHERE {where}"
        )

    def mas(table, alias, values, where="TRUE", join=""):
        return (
            f"SELECT {MAS_USER} AS uh, u.username AS who, {values} FROM {table} {alias} "  # noqa: S608
            f"JOIN users u USING (user_id) {join} WHERE {where}"
        )

    return {
        "users": (
            f"SELECT {SYN_USER.format(column='u.name')} AS uh, {LOCALPART.format(column='u.name')} AS who, "  # noqa: S608
            f"(u.admin <> 0)::int * 8 + (u.deactivated <> 0)::int * 4 + {locked} * 2 + (u.is_guest <> 0)::int AS f "
            "FROM users u WHERE u.appservice_id IS NULL AND u.name LIKE %(pattern)s",
            f"SELECT {MAS_USER} AS uh, u.username AS who, u.can_request_admin::int * 8 "  # noqa: S608
            "+ (u.deactivated_at IS NOT NULL)::int * 4 + (u.locked_at IS NOT NULL)::int * 2 + u.is_guest::int AS f "
            "FROM users u",
        ),
        "emails": (
            synapse("user_threepids", "t", "t.address AS v", "t.medium = 'email' AND " + skipped("t", NOT_MIGRATED)),
            mas("user_emails", "e", "e.email AS v"),
        ),
        "external_ids": (
            synapse(
                "user_external_ids",
                "x",
                "x.auth_provider AS idp, x.external_id AS v",
                "x.auth_provider = ANY(%(mapped)s) AND " + skipped("x", NOT_MIGRATED),
            ),
            mas(
                "upstream_oauth_links",
                "l",
                "m.idp, l.subject AS v",
                join="JOIN unnest(%(pids)s::uuid[], %(idps)s::text[]) AS m(pid, idp) "
                "ON m.pid = l.upstream_oauth_provider_id",
            ),
        ),
        "devices": (
            synapse(
                "devices",
                "d",
                "d.device_id AS v",
                "NOT coalesce(d.hidden, false) AND d.device_id <> 'guest_device' AND " + skipped("d", NO_SESSIONS),
            ),
            # every session (its count is reported); those without a device ID hash to NULL and count as no row
            mas("compat_sessions", "cs", "cs.device_id AS v"),
        ),
    }


#: The hash of one row, keyed by its user's hash ``uh``; and the columns that name it.
ROW_HASH = {
    "users": "hashint4extended(s.f, s.uh)",
    "emails": "hashtextextended(s.v, s.uh)",
    "external_ids": "hashtextextended(s.v, s.uh # hashtextextended(s.idp, 0))",
    "devices": "hashtextextended(s.v, s.uh)",
}
KEY = {"users": "s.who, s.f", "emails": "s.who, s.v", "external_ids": "s.who, s.idp, s.v", "devices": "s.who, s.v"}
VALUE = {"users": "s.f", "emails": "s.v", "external_ids": "s.v", "devices": "s.v"}


def digest_sql(kind, rows, buckets=False):
    """``(rows with a value, sum of their hashes, all rows)`` of the whole set, or per bucket (``buckets``: the bucket
    first); ``OFFSET 0`` keeps the user hash computed once per row."""
    bucket = f"(s.uh & {BUCKETS - 1})::int" if buckets else ""
    return (
        f"SELECT {bucket + ', ' if buckets else ''}count({VALUE[kind]}), sum({ROW_HASH[kind]}), count(*) "  # noqa: S608
        f"FROM ({rows} OFFSET 0) AS s" + (" GROUP BY 1" if buckets else "")
    )


def keys_sql(kind, rows):
    """The rows of some buckets, as the tuples that name them."""
    return (
        f"SELECT {KEY[kind]} FROM ({rows}) AS s "  # noqa: S608
        f"WHERE (s.uh & {BUCKETS - 1})::int = ANY(%(buckets)s) AND {VALUE[kind]} IS NOT NULL"
    )


#: Counted, not compared, and reported beside the compared sets (MAS's compat_sessions: by the devices' digest).
COUNTED = {"synapse": ("access_tokens", "refresh_tokens"), "mas": ("compat_access_tokens", "compat_refresh_tokens")}

#: The order the digests start in, the longest first (at a million users the MAS side's joins of sessions and
#: emails with users cost most), so that the readers finish together.
ORDER = (
    ("mas", "devices"),
    ("synapse", "devices"),
    ("mas", "emails"),
    ("synapse", "users"),
    ("mas", "users"),
    ("synapse", "emails"),
    ("synapse", "external_ids"),
    ("mas", "external_ids"),
)


def readers_for(cores=None):
    """``(readers, parallel workers per query)``: one reader per core (at most one per digest), and PostgreSQL's
    parallel workers only for the cores the readers leave."""
    cores = cores or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()) or 1
    readers = max(1, min(cores, len(ORDER)))
    return readers, max(0, cores // readers - 1)


class Readers:
    """Connections to both databases, each database in one snapshot: the first reader's connections export it,
    the others import it (``SET TRANSACTION SNAPSHOT``), opened when a reader first needs them."""

    def __init__(self, stack, databases, secrets, count, workers):
        self.stack, self.databases, self.secrets, self.workers = stack, databases, secrets, workers
        self.lock = threading.Lock()
        self.snapshots = {}
        self.idle = queue.Queue()
        for _ in range(count):
            self.idle.put({})
        first = self.idle.get()
        for side in databases:
            conn = self._open(side)
            self.snapshots[side] = syn2mas_db.fetch(conn, "SELECT pg_export_snapshot()")[0][0]
            first[side] = conn
        self.idle.put(first)

    def _open(self, side):
        with self.lock:
            _, conn = self.stack.enter_context(syn2mas_db.connected(self.databases[side], self.secrets))
        conn.isolation_level = syn2mas_db.pg().IsolationLevel.REPEATABLE_READ
        if side in self.snapshots:
            sql = syn2mas_db.pg().sql
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(self.snapshots[side])))
        conn.execute(f"SET LOCAL max_parallel_workers_per_gather = {int(self.workers)}")
        return conn

    def run(self, side, func, *args):
        """``func(connection to side, *args)`` on an idle reader."""
        reader = self.idle.get()
        try:
            if side not in reader:
                reader[side] = self._open(side)
            return func(reader[side], *args)
        finally:
            self.idle.put(reader)


#: MAS's joins of a whole table with its users are merge joins: right after syn2mas MAS's tables have no statistics
#: yet, and PostgreSQL then hashes all the users for each join; merged in ``user_id`` order through the indexes MAS
#: keeps on both sides (users' primary key, each table's user foreign key) they cost less. At a million users
#: (CPU seconds, no statistics): sessions 0.63 instead of 0.77, emails 0.12 instead of 0.32, links 0.13 instead of
#: 0.21. Only for these digests (a fetch of some buckets' rows hashes the few users it needs).
MERGE_JOINS = ("enable_hashjoin", "enable_nestloop")


def digest(conn, side, kind, rows, params, buckets=False):
    """``((rows with a value, sum of their hashes), all rows)``; with ``buckets`` the first is per bucket."""
    planner = MERGE_JOINS if side == "mas" and kind != "users" else ()
    for setting in planner:
        conn.execute(f"SET LOCAL {setting} = off")
    found = syn2mas_db.fetch(conn, digest_sql(kind, rows, buckets), params)
    for setting in planner:
        conn.execute(f"RESET {setting}")
    if not buckets:
        n, total, every = found[0]
        return (n, total), every
    return {bucket: (n, total) for bucket, n, total, _ in found}, sum(every for *_, every in found)


def bucket_keys(conn, _side, kind, rows, params, buckets):
    """The rows of ``buckets``, as the tuples that name them."""
    return {tuple(row) for row in syn2mas_db.fetch(conn, keys_sql(kind, rows), dict(params, buckets=buckets))}


def count_rows(conn, table):
    return syn2mas_db.fetch(conn, f"SELECT count(*) FROM {table}")[0][0]  # noqa: S608


def missing_rows(kind, keys, mas_keys):
    """Errors naming what Synapse has and MAS lacks (first ``SHOWN`` and a count); keys are ``(who, ...)`` tuples."""

    def shown(items):
        items = sorted(items)
        more = f" ... and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
        return ", ".join(items[:SHOWN]) + more

    if not keys:
        return []
    if kind == "users":
        present = {key[0] for key in mas_keys}
        absent = sorted(key[0] for key in keys if key[0] not in present)
        differ = sorted(key[0] for key in keys if key[0] in present)
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
        "emails": ("email addresses of Synapse are missing in MAS", lambda k: f"{k[0]}: {k[1]}"),
        "external_ids": ("upstream links of Synapse are missing in MAS", lambda k: f"{k[0]} ({k[1]})"),
        "devices": ("Synapse devices have no compatibility session in MAS", lambda k: f"{k[0]}: {k[1]}"),
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
        # LIKE, not right(): PostgreSQL estimates it from its statistics (and so plans the anti-joins well)
        "pattern": "%" + suffix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_"),
        "mapped": sorted(mapped),
        "pids": [syn2mas_db.ulid_uuid(pid) for pid in mapped.values()],
        "idps": list(mapped),
    }
    database = syn2mas_db.synapse_database(conf, opts, files)
    if database["engine"] != "postgres":
        raise syn2mas_db.Unreachable(
            f"Synapse's {database['label']} is not PostgreSQL: syn2mas cannot have migrated it"
        )
    count, workers = readers_for()
    errors, counts, missing = [], {"synapse": {}, "mas": {}}, {}
    with contextlib.ExitStack() as stack:
        readers = Readers(stack, {"synapse": database, "mas": mas_database}, secrets, count, workers)
        columns = readers.run("synapse", syn2mas_db.column_list, "users")
        queries = rows_queries(columns)
        index = {"synapse": 0, "mas": 1}
        with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:

            def each(kinds, func, *args):
                """``func`` for both sides of each kind, on the readers: ``{(side, kind): future}``."""
                return {
                    (side, kind): pool.submit(
                        readers.run, side, func, side, kind, queries[kind][index[side]], params, *args
                    )
                    for side, kind in ORDER
                    if kind in kinds
                }

            # the whole sets first: equal sums, nothing to look for (no grouping: each row costs less)
            whole = each(queries, digest)
            totals = {
                (side, table): pool.submit(readers.run, side, count_rows, table)
                for side, tables in COUNTED.items()
                for table in tables
            }
            differ = []
            for kind in queries:
                (left, _), (right, every) = whole["synapse", kind].result(), whole["mas", kind].result()
                counts["synapse"][kind], counts["mas"][kind] = left[0], right[0]
                if kind == "devices":  # every session (MAS's foreign key: a session has a user)
                    counts["mas"]["compat_sessions"] = every
                if left != right:
                    differ.append(kind)
            # then the buckets of the sets that differ, and the rows of the buckets that differ
            sums = each(differ, digest, True)
            differing = {}
            for kind in differ:
                left, right = sums["synapse", kind].result()[0], sums["mas", kind].result()[0]
                # a Synapse row and its MAS row share their user's bucket: buckets without Synapse rows lack nothing
                differing[kind] = sorted(bucket for bucket in left if left[bucket] != right.get(bucket))
            fetched = {
                key: future
                for kind, buckets in differing.items()
                if buckets
                for key, future in each({kind}, bucket_keys, buckets).items()
            }
            for kind in differing:
                if ("synapse", kind) not in fetched:
                    continue
                mas_keys = fetched["mas", kind].result()
                lacking = fetched["synapse", kind].result() - mas_keys
                if lacking:
                    missing[kind] = len(lacking)
                    errors += missing_rows(kind, lacking, mas_keys)
            for (side, table), total in totals.items():
                counts[side][table] = total.result()
    return {"errors": errors, "counts": counts, "missing": missing}
