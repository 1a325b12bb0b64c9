"""Access to the real MAS database schema (the upstream ``schema.sql``).

Every function takes an open psycopg connection (from
:meth:`mas_double.config.MasConfig.connect`) and reads or writes the same rows
MAS would: ``users``, ``user_passwords``, ``user_emails``, ``compat_sessions``,
``compat_access_tokens``, ``compat_refresh_tokens`` and ``queue_jobs``.
Identifiers are ULIDs stored as UUIDs (:mod:`mas_double.ulid`).  Callers own
the transaction (commit or roll back).
"""

from __future__ import annotations

import datetime
import glob
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass

from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from mas_double import ulid, upstream
from mas_double.config import ConfigError, MasConfig

_USER_COLUMNS = "user_id, username, created_at, locked_at, deactivated_at, can_request_admin, is_guest"
_EMAIL_COLUMNS = "user_email_id, user_id, email, created_at"


def now() -> datetime.datetime:
    """Current UTC time, truncated to microseconds like PostgreSQL stores it."""
    return datetime.datetime.now(datetime.UTC)


def rfc3339(value: datetime.datetime | None) -> str | None:
    """Format a timestamp like MAS's JSON (``2022-01-16T14:40:00Z``, fractions when set)."""
    if value is None:
        return None
    value = value.astimezone(datetime.UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"


@dataclass
class User:
    """A row of ``users``."""

    id: uuid.UUID
    username: str
    created_at: datetime.datetime
    locked_at: datetime.datetime | None
    deactivated_at: datetime.datetime | None
    can_request_admin: bool
    is_guest: bool

    @property
    def ulid(self) -> str:
        """The user ID as MAS shows it."""
        return ulid.from_uuid(self.id)


@dataclass
class UserEmail:
    """A row of ``user_emails``."""

    id: uuid.UUID
    user_id: uuid.UUID
    email: str
    created_at: datetime.datetime

    @property
    def ulid(self) -> str:
        """The email ID as MAS shows it."""
        return ulid.from_uuid(self.id)


@dataclass
class CompatToken:
    """A compatibility access token joined with its session and user."""

    token_id: uuid.UUID
    session_id: uuid.UUID
    device_id: str | None
    is_synapse_admin: bool
    expires_at: datetime.datetime | None
    created_at: datetime.datetime
    session_finished: bool
    user: User


# ------------------------------------------------------------------- users


def _user(row) -> User | None:
    return User(*row) if row else None


def find_user_by_username(conn, username: str) -> User | None:
    """Return the user called ``username`` (exact match), or None."""
    row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE username = %s", (username,)).fetchone()
    return _user(row)


def lookup_user(conn, user_id: uuid.UUID) -> User | None:
    """Return the user with ``user_id``, or None."""
    row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE user_id = %s", (user_id,)).fetchone()
    return _user(row)


def user_exists(conn, username: str) -> bool:
    """True when a user called ``username`` exists."""
    return conn.execute("SELECT 1 FROM users WHERE username = %s", (username,)).fetchone() is not None


def add_user(conn, username: str) -> User:
    """Insert a new user (fresh ULID, created now) and return it."""
    row = conn.execute(
        f"INSERT INTO users (user_id, username, created_at) VALUES (%s, %s, %s) RETURNING {_USER_COLUMNS}",
        (ulid.new_uuid(), username, now()),
    ).fetchone()
    return User(*row)


def _update_user(conn, user: User, assignment: str, params: tuple = ()) -> User:
    row = conn.execute(
        f"UPDATE users SET {assignment} WHERE user_id = %s RETURNING {_USER_COLUMNS}", (*params, user.id)
    ).fetchone()
    return User(*row)


def set_can_request_admin(conn, user: User, can_request_admin: bool) -> User:
    """Set ``users.can_request_admin``."""
    return _update_user(conn, user, "can_request_admin = %s", (can_request_admin,))


def lock_user(conn, user: User) -> User:
    """Set ``locked_at`` (kept when already locked)."""
    return _update_user(conn, user, "locked_at = COALESCE(locked_at, %s)", (now(),))


def unlock_user(conn, user: User) -> User:
    """Clear ``locked_at``."""
    return _update_user(conn, user, "locked_at = NULL")


def deactivate_user(conn, user: User) -> User:
    """MAS's deactivation job: set ``deactivated_at``, finish compat sessions, revoke the personal
    sessions acting as the user (tasks/src/user.rs; the user is not locked)."""
    stamp = now()
    finish_user_compat_sessions(conn, user.id)
    conn.execute(
        "UPDATE personal_sessions SET revoked_at = %s WHERE actor_user_id = %s AND revoked_at IS NULL", (stamp, user.id)
    )
    return mark_deactivated(conn, user)


def mark_deactivated(conn, user: User) -> User:
    """Set ``deactivated_at`` only (MAS's ``UserRepository::deactivate``)."""
    return _update_user(conn, user, "deactivated_at = COALESCE(deactivated_at, %s)", (now(),))


def mark_reactivated(conn, user: User) -> User:
    """Clear ``deactivated_at`` only (MAS's ``UserRepository::reactivate``)."""
    return _update_user(conn, user, "deactivated_at = NULL")


def reactivate_user(conn, user: User) -> User:
    """Clear ``deactivated_at`` and ``locked_at``."""
    return _update_user(conn, user, "deactivated_at = NULL, locked_at = NULL")


def list_admin_users(conn) -> list[User]:
    """Users with ``can_request_admin``, ordered by ID."""
    rows = conn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE can_request_admin ORDER BY user_id").fetchall()
    return [User(*row) for row in rows]


# --------------------------------------------------------------- passwords


def add_password(conn, user: User, version: int, hashed: str, upgraded_from: uuid.UUID | None = None) -> uuid.UUID:
    """Insert a ``user_passwords`` row; returns its ID.

    ``upgraded_from`` links a re-hash (login with an older scheme) to the old row.
    """
    password_id = ulid.new_uuid()
    conn.execute(
        "INSERT INTO user_passwords (user_password_id, user_id, hashed_password, created_at, version,"
        " upgraded_from_id) VALUES (%s, %s, %s, %s, %s, %s)",
        (password_id, user.id, hashed, now(), version, upgraded_from),
    )
    return password_id


def active_password(conn, user: User) -> tuple[uuid.UUID, int, str] | None:
    """The user's most recent password as ``(id, version, hashed_password)``, or None."""
    row = conn.execute(
        "SELECT user_password_id, version, hashed_password FROM user_passwords WHERE user_id = %s"
        " ORDER BY created_at DESC, user_password_id DESC LIMIT 1",
        (user.id,),
    ).fetchone()
    return (row[0], row[1], row[2]) if row else None


# ------------------------------------------------------------------ emails


def find_email(conn, user: User, email: str) -> UserEmail | None:
    """The user's email row for ``email`` (case-insensitive), or None."""
    row = conn.execute(
        f"SELECT {_EMAIL_COLUMNS} FROM user_emails WHERE user_id = %s AND LOWER(email) = LOWER(%s)",
        (user.id, email),
    ).fetchone()
    return UserEmail(*row) if row else None


def lookup_email(conn, email_id: uuid.UUID) -> UserEmail | None:
    """The email row with ``email_id``, or None."""
    row = conn.execute(f"SELECT {_EMAIL_COLUMNS} FROM user_emails WHERE user_email_id = %s", (email_id,)).fetchone()
    return UserEmail(*row) if row else None


def count_emails(conn, email: str) -> int:
    """How many rows (any user) hold ``email`` (case-insensitive)."""
    return conn.execute("SELECT count(*) FROM user_emails WHERE LOWER(email) = LOWER(%s)", (email,)).fetchone()[0]


def add_email(conn, user: User, email: str) -> UserEmail:
    """Insert a ``user_emails`` row (emails are verified once stored)."""
    row = conn.execute(
        f"INSERT INTO user_emails (user_email_id, user_id, email, created_at) VALUES (%s, %s, %s, %s)"
        f" RETURNING {_EMAIL_COLUMNS}",
        (ulid.new_uuid(), user.id, email, now()),
    ).fetchone()
    return UserEmail(*row)


def emails_of(conn, user: User) -> list[str]:
    """The user's email addresses, ordered by ID."""
    rows = conn.execute("SELECT email FROM user_emails WHERE user_id = %s ORDER BY user_email_id", (user.id,))
    return [row[0] for row in rows.fetchall()]


def delete_email(conn, email_id: uuid.UUID) -> None:
    """Delete one ``user_emails`` row."""
    conn.execute("DELETE FROM user_emails WHERE user_email_id = %s", (email_id,))


# -------------------------------------------------------------- job queue


def schedule_job(conn, queue_name: str, payload: dict) -> uuid.UUID:
    """Insert an ``available`` job in ``queue_jobs`` (as MAS's ``schedule_job``)."""
    job_id = ulid.new_uuid()
    conn.execute(
        "INSERT INTO queue_jobs (queue_job_id, queue_name, payload, metadata, created_at) VALUES (%s, %s, %s, %s, %s)",
        (job_id, queue_name, Jsonb(payload), Jsonb({}), now()),
    )
    return job_id


def schedule_provision(conn, user: User, display_name: str | None = None) -> uuid.UUID:
    """Schedule MAS's ``provision-user`` job for ``user``."""
    payload: dict = {"user_id": user.ulid}
    if display_name is not None:
        payload["set_display_name"] = display_name
    return schedule_job(conn, "provision-user", payload)


# ------------------------------------------------------- compat sessions


def add_compat_session(conn, user: User, device_id: str, is_synapse_admin: bool, human_name: str | None) -> uuid.UUID:
    """Insert a ``compat_sessions`` row; returns its ID."""
    session_id = ulid.new_uuid()
    conn.execute(
        "INSERT INTO compat_sessions (compat_session_id, user_id, device_id, created_at, is_synapse_admin, human_name)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (session_id, user.id, device_id, now(), is_synapse_admin, human_name),
    )
    return session_id


def add_compat_access_token(conn, session_id: uuid.UUID, token: str, expires_at: datetime.datetime | None) -> uuid.UUID:
    """Insert a ``compat_access_tokens`` row; returns its ID."""
    token_id = ulid.new_uuid()
    conn.execute(
        "INSERT INTO compat_access_tokens (compat_access_token_id, compat_session_id, access_token, created_at,"
        " expires_at) VALUES (%s, %s, %s, %s, %s)",
        (token_id, session_id, token, now(), expires_at),
    )
    return token_id


def add_compat_refresh_token(conn, session_id: uuid.UUID, access_token_id: uuid.UUID, token: str) -> uuid.UUID:
    """Insert a ``compat_refresh_tokens`` row; returns its ID."""
    refresh_id = ulid.new_uuid()
    conn.execute(
        "INSERT INTO compat_refresh_tokens (compat_refresh_token_id, compat_session_id, compat_access_token_id,"
        " refresh_token, created_at) VALUES (%s, %s, %s, %s, %s)",
        (refresh_id, session_id, access_token_id, token, now()),
    )
    return refresh_id


def find_compat_access_token(conn, token: str) -> CompatToken | None:
    """Look a compatibility access token up, with its session and user."""
    row = conn.execute(
        "SELECT t.compat_access_token_id, s.compat_session_id, s.device_id, s.is_synapse_admin, t.expires_at,"
        " t.created_at, s.finished_at IS NOT NULL,"
        f" {', '.join('u.' + c.strip() for c in _USER_COLUMNS.split(','))}"
        " FROM compat_access_tokens t JOIN compat_sessions s USING (compat_session_id)"
        " JOIN users u ON u.user_id = s.user_id WHERE t.access_token = %s",
        (token,),
    ).fetchone()
    if row is None:
        return None
    return CompatToken(*row[:7], user=User(*row[7:]))


def find_compat_refresh_token(conn, token: str) -> tuple | None:
    """Look a refresh token up: ``(refresh_id, session_id, consumed, session_finished, user_id)`` or None."""
    return conn.execute(
        "SELECT r.compat_refresh_token_id, r.compat_session_id, r.consumed_at IS NOT NULL,"
        " s.finished_at IS NOT NULL, s.user_id FROM compat_refresh_tokens r"
        " JOIN compat_sessions s USING (compat_session_id) WHERE r.refresh_token = %s",
        (token,),
    ).fetchone()


def consume_compat_refresh_token(conn, refresh_id: uuid.UUID) -> None:
    """Mark a refresh token consumed and expire the access token it came with (``compat/refresh.rs``)."""
    stamp = now()
    conn.execute(
        "UPDATE compat_refresh_tokens SET consumed_at = %s WHERE compat_refresh_token_id = %s", (stamp, refresh_id)
    )
    conn.execute(
        "UPDATE compat_access_tokens SET expires_at = %s WHERE compat_access_token_id = (SELECT"
        " compat_access_token_id FROM compat_refresh_tokens WHERE compat_refresh_token_id = %s)"
        " AND (expires_at IS NULL OR expires_at > %s)",
        (stamp, refresh_id, stamp),
    )


def finish_compat_session(conn, session_id: uuid.UUID) -> None:
    """Mark a compatibility session finished."""
    conn.execute(
        "UPDATE compat_sessions SET finished_at = COALESCE(finished_at, %s) WHERE compat_session_id = %s",
        (now(), session_id),
    )


def finish_user_compat_sessions(conn, user_id: uuid.UUID) -> None:
    """Mark all of a user's compatibility sessions finished."""
    conn.execute(
        "UPDATE compat_sessions SET finished_at = %s WHERE user_id = %s AND finished_at IS NULL", (now(), user_id)
    )


# ------------------------------------------------------------------ schema


def schema_present(conn) -> bool:
    """True when the MAS schema is loaded."""
    # upstream_oauth_providers: syn2mas renames users while it writes
    return conn.execute("SELECT to_regclass('public.upstream_oauth_providers') IS NOT NULL").fetchone()[0]


def find_psql() -> str:
    """Locate ``psql`` on ``$PATH`` or in Debian's ``/usr/lib/postgresql/*/bin``."""
    found = shutil.which("psql")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"), reverse=True)
    if candidates:
        return candidates[0]
    raise ConfigError("could not run migrations\n\nCaused by:\n    psql not found")


def ensure_schema(config: MasConfig) -> bool:
    """Load the upstream schema into the MAS database unless ``users`` exists.

    Stands in for MAS's embedded migrations (``database migrate``, and the
    migration step of ``server`` and ``syn2mas``).  Returns True when the schema
    was loaded, False when it was already present.

    Raises:
        ConfigError: the database is unreachable, the schema file is missing
            or ``psql`` failed.
    """
    with config.connect(autocommit=True) as conn:
        if schema_present(conn):
            return False
    try:
        schema = upstream.schema_sql()
    except upstream.UpstreamMissing as exc:
        raise ConfigError(f"could not run migrations\n\nCaused by:\n    {exc}") from exc
    params = config.database_conninfo()
    conninfo = params.pop("conninfo")
    params.pop("connect_timeout", None)
    merged = conninfo_to_dict(conninfo, **{k: str(v) for k, v in params.items()})
    password = merged.pop("password", None)
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    args = [find_psql(), "--no-psqlrc", "--quiet", "-v", "ON_ERROR_STOP=1", "--dbname", make_conninfo(**merged)]
    proc = subprocess.run([*args, "-f", str(schema)], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise ConfigError("could not run migrations\n\nCaused by:\n    " + (detail[0] if detail else "psql failed"))
    return True
