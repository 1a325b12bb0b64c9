"""The backup a real migration takes of Synapse's database: room checked before anything stops, then ``pg_dump`` into a 0700 directory of 0600 files whose digest and size are recorded.

The dump is pg_dump's directory format, one job per core (``pg_restore -j``
restores it the same way); the password reaches ``pg_dump`` through a private
0600 PGPASSFILE, never its argument list; the dump is written under a
``.partial`` name and renamed once complete. Its ``sha256`` is that of the
list of its files' sha256 (``cd <dump> && sha256sum * | sha256sum``).
"""

import datetime
import hashlib
import logging
import os
import pathlib
import re
import shutil
import tempfile
import time

import salt.utils.files
from salt.exceptions import CommandExecutionError

from mas_formula import syn2mas_db, syn2mas_marker, syn2mas_output

log = logging.getLogger(__name__)


#: Kept free on top of the estimated size of a backup.
BACKUP_MARGIN = 16 * 1024 * 1024


def human_size(size):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"  # pragma: no cover


def pg_dump():
    """The ``pg_dump`` binary (PATH, else the newest of Debian's versioned ones)."""
    found = shutil.which("pg_dump")
    if found:
        return found
    for candidate in sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin/pg_dump"), reverse=True):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise CommandExecutionError(
        "pg_dump is not installed: install PostgreSQL's client tools (postgresql-client), or set "
        "mas:syn2mas:backup: false and take the backup yourself"
    )


def backup_plan(mas, opts, database, secrets):
    """Check the backup directory and its free space before anything stops: ``(plan, problems)``."""
    directory = opts.get("backup_dir")
    if not directory:
        return None, [
            "mas:syn2mas:backup_dir is not set: a real migration first takes a pg_dump of Synapse's database. Set "
            "it (e.g. /var/backups/matrix-synapse), or say mas:syn2mas:backup: false to migrate without one"
        ]
    if database["engine"] != "postgres":
        return None, [f"Synapse's {database['label']} is not PostgreSQL: nothing pg_dump can back up"]
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".mas-formula-probe-", dir=directory)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        return None, [
            f"the backup directory {directory} (mas:syn2mas:backup_dir) is not writable: {exc.strerror}. Choose "
            "another one, or say mas:syn2mas:backup: false"
        ]
    try:
        with syn2mas_db.connected(database, secrets) as (_, conn):
            (estimate,) = syn2mas_db.fetch(
                conn,
                "SELECT coalesce(sum(pg_table_size(c.oid)), 0)::bigint FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'm') "
                "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'",
            )[0]
            conn.rollback()
    except (syn2mas_db.Unreachable, *syn2mas_db.db_errors()) as exc:
        return None, [f"the size of Synapse's database cannot be read before its backup: {exc}"]
    stats = os.statvfs(directory)
    free = stats.f_bavail * stats.f_frsize
    need = int(estimate) + BACKUP_MARGIN
    if free < need:
        return None, [
            f"the backup directory {directory} (mas:syn2mas:backup_dir) has {human_size(free)} free; the backup of "
            f"Synapse's {database['label']} needs up to {human_size(need)} (its tables, uncompressed). Free space or "
            "choose another directory"
        ]
    return {"dir": directory, "estimate": int(estimate), "free": free}, []


def dump_target(database):
    """``(conninfo without password, password or None, database name)`` for pg_dump."""
    params = dict(database["connect"])
    if "conninfo" in params:
        params = dict(syn2mas_db.pg().conninfo.conninfo_to_dict(params.pop("conninfo")), **params)
    password = params.pop("password", None)
    params = {key: str(value) for key, value in params.items() if value not in (None, "")}
    return syn2mas_db.pg().conninfo.make_conninfo(**params), password, params.get("dbname", "synapse")


def passfile_line(password):
    escaped = str(password).replace("\\", "\\\\").replace(":", "\\:")
    return f"*:*:*:*:{escaped}\n"


def dump_jobs():
    """pg_dump's jobs: one per core (at most 4): the backup runs while Synapse is down, nothing else needs them."""
    return max(1, min(4, os.cpu_count() or 1))


def dump_options(jobs):
    """pg_dump's format and compression: the directory format with ``jobs`` parallel jobs, uncompressed (#18).

    Measured on a million users (``bench/preflight.py --backup-modes``, 2 cores, 3 rounds each; docs/migration.md):
    the dump's time is mostly compression (``-Fc``, pg_dump's default ``-Z6``: 6.2-7.2 s), then one process
    writing every table (``-Fc -Z0``: 2.3-2.9 s); ``-Fd -j2 -Z0`` splits the tables over two processes: 1.7-3.1 s
    (median 1.9 s), the fastest mode ``pg_restore`` restores, for the tables' own size on disk (which the backup
    check already requires free). PostgreSQL 15's ``pg_dump`` has no lz4 or zstd.
    """
    return ["--format=directory", f"--jobs={jobs}", "--compress=0"]


def dump_digest(path):
    """``(sha256, size)`` of a directory dump: the sha256 of the lines ``<sha256 of a file>  <its name>`` in name
    order (what ``cd <dump> && sha256sum * | sha256sum`` prints), and the files' total size."""
    listing, size = hashlib.sha256(), 0
    for name in sorted(os.listdir(path)):
        file = os.path.join(path, name)
        digest = hashlib.sha256()
        with salt.utils.files.fopen(file, "rb") as handle:
            for block in iter(lambda h=handle: h.read(1024 * 1024), b""):
                digest.update(block)
            os.fsync(handle.fileno())
        size += os.path.getsize(file)
        listing.update(f"{digest.hexdigest()}  {name}\n".encode())
    return listing.hexdigest(), size


def backup(mas, opts, database, plan, secrets, run_all):
    """Write ``pg_dump`` of Synapse's database (directory format, :func:`dump_options`) into the backup directory:
    a 0700 directory of 0600 files (root), renamed into place once complete.

    The password reaches pg_dump through a 0600 PGPASSFILE, never argv or the
    environment. Returns ``{path, sha256, size, format, database, at, seconds}``.
    """
    conninfo, password, dbname = dump_target(database)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", dbname)
    path = os.path.join(plan["dir"], f"synapse-{name}-{stamp}.dump")
    count = 1
    while os.path.lexists(path) or os.path.lexists(path + ".partial"):  # never over an earlier backup
        count += 1
        path = os.path.join(plan["dir"], f"synapse-{name}-{stamp}-{count}.dump")
    partial = path + ".partial"
    started = time.monotonic()
    os.mkdir(partial, 0o700)
    private = tempfile.mkdtemp(prefix="mas-formula-pgpass-")
    try:
        env = {"PGAPPNAME": "mas-formula-backup"}
        if password is not None:
            passfile = os.path.join(private, "pgpass")
            descriptor = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(passfile_line(password))
            env["PGPASSFILE"] = passfile
        argv = [pg_dump(), *dump_options(dump_jobs()), "--no-password", "--file", partial, "--dbname", conninfo]
        res = run_all(
            argv,
            python_shell=False,
            output_loglevel="quiet",
            ignore_retcode=True,
            timeout=opts["timeout"],
            umask="077",
            env=env,
        )
        if res["retcode"] != 0:
            reason = syn2mas_output.summary_of(
                syn2mas_output.scrub(res.get("stderr") or res.get("stdout") or "", secrets)
            )[-800:]
            raise CommandExecutionError(
                f"pg_dump of Synapse's {database['label']} failed (exit {res['retcode']}): {reason}"
            )
        for entry in os.listdir(partial):
            os.chmod(os.path.join(partial, entry), 0o600)
        os.chmod(partial, 0o700)
        sha256, size = dump_digest(partial)
        os.rename(partial, path)
        dir_fd = os.open(plan["dir"], os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return {
        "path": path,
        "sha256": sha256,
        "size": size,
        "format": "directory",
        "database": database["label"],
        "at": syn2mas_marker.utc_now(),
        "seconds": round(time.monotonic() - started, 3),
    }
