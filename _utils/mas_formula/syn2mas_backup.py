"""The backup a real migration takes of Synapse's database: room checked before anything stops, then ``pg_dump`` into a 0600 file whose sha256 and size are recorded.

The password reaches ``pg_dump`` through a private 0600 PGPASSFILE, never its
argument list; the dump is written under a ``.partial`` name and renamed once
complete.
"""

import contextlib
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


def dump_options():
    """pg_dump's format and compression: the custom format (one file, which ``pg_restore`` restores, ``-j`` too),
    uncompressed (#18).

    Measured on a million users (``bench/preflight.py --backup-modes``, 2 cores, 3 rounds; docs/migration.md):
    ``-Fc`` spends most of its 6.6-8.9 s compressing (``-Z6``, the default); ``-Z1`` takes 3.7-4.5 s, ``-Z0``
    2.8-3.6 s for a file about 5.5 times bigger (the tables' own size, which the backup check already requires
    free). PostgreSQL 15's ``pg_dump`` has no lz4 or zstd; ``-Fd -j2 -Z0`` is about 0.4 s faster still, but is a
    directory, not one file.
    """
    return ["--format=custom", "--compress=0"]


def backup(mas, opts, database, plan, secrets, run_all):
    """Write ``pg_dump -Fc`` of Synapse's database into the backup directory (0600, root), atomically.

    The password reaches pg_dump through a 0600 PGPASSFILE, never argv or the
    environment. Returns ``{path, sha256, size, database, at, seconds}``.
    """
    conninfo, password, dbname = dump_target(database)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", dbname)
    path = os.path.join(plan["dir"], f"synapse-{name}-{stamp}.dump")
    partial = path + ".partial"
    started = time.monotonic()
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    private = tempfile.mkdtemp(prefix="mas-formula-pgpass-")
    try:
        env = {"PGAPPNAME": "mas-formula-backup"}
        if password is not None:
            passfile = os.path.join(private, "pgpass")
            descriptor = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(passfile_line(password))
            env["PGPASSFILE"] = passfile
        argv = [pg_dump(), *dump_options(), "--no-password", "--file", partial, "--dbname", conninfo]
        res = run_all(
            argv,
            python_shell=False,
            output_loglevel="quiet",
            ignore_retcode=True,
            timeout=opts["timeout"],
            env=env,
        )
        if res["retcode"] != 0:
            reason = syn2mas_output.summary_of(
                syn2mas_output.scrub(res.get("stderr") or res.get("stdout") or "", secrets)
            )[-800:]
            raise CommandExecutionError(
                f"pg_dump of Synapse's {database['label']} failed (exit {res['retcode']}): {reason}"
            )
        digest = hashlib.sha256()
        with salt.utils.files.fopen(partial, "rb") as handle:
            for block in iter(lambda: handle.read(1024 * 1024), b""):
                digest.update(block)
            os.fsync(handle.fileno())
        os.chmod(partial, 0o600)
        os.rename(partial, path)
        dir_fd = os.open(plan["dir"], os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    finally:
        shutil.rmtree(private, ignore_errors=True)
    size = os.path.getsize(path)
    return {
        "path": path,
        "sha256": digest.hexdigest(),
        "size": size,
        "database": database["label"],
        "at": syn2mas_marker.utc_now(),
        "seconds": round(time.monotonic() - started, 3),
    }
