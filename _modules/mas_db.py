"""
The database of the ``mas`` formula: MAS's PostgreSQL role, its UTF8 database and ``pg_trgm`` (``mas:database:manage``).

:py:func:`status` compares what exists with what the formula wants and
:py:func:`ensure` creates or fixes it, through ``psql`` as the PostgreSQL
superuser with the SQL on stdin (never in argv). The role's password is read
from pillar on the minion and reaches PostgreSQL only as a SCRAM-SHA-256
verifier. An existing database of another owner, or a role that owns other
databases, is refused, never taken over.
"""

import base64
import hashlib
import hmac
import os
import re

from salt.exceptions import CommandExecutionError

__virtualname__ = "mas_db"


def __virtual__():
    return __virtualname__


def _scram_keys(password, salt, iterations):
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return hashlib.sha256(client_key).digest(), server_key


def _scram_verifier(password):
    """A PostgreSQL SCRAM-SHA-256 verifier, so the password itself never
    leaves this process (not in psql's input, not in any log)."""
    salt, iterations = os.urandom(16), 4096
    stored, server = _scram_keys(password, salt, iterations)
    enc = base64.b64encode
    return f"SCRAM-SHA-256${iterations}:{enc(salt).decode()}${enc(stored).decode()}:{enc(server).decode()}"


def _scram_matches(verifier, password):
    match = re.match(r"^SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)$", verifier or "")
    if not match:
        return False
    iterations, salt, stored, server = match.groups()
    want_stored, want_server = _scram_keys(password, base64.b64decode(salt), int(iterations))
    return hmac.compare_digest(want_stored, base64.b64decode(stored)) and hmac.compare_digest(
        want_server, base64.b64decode(server)
    )


def _psql(admin, dbname, script):
    """Run ``script`` (psql input on stdin, never argv) as the PostgreSQL admin."""
    cmd = ["psql", "-X", "-q", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1", "-d", dbname]
    if admin.get("runas") and os.geteuid() == 0:
        # runuser, not cmd.run's runas: that one needs a login shell for the user
        cmd = ["runuser", "-u", str(admin["runas"]), "--"] + cmd
    if admin.get("host"):
        cmd += ["-h", str(admin["host"])]
    if admin.get("port"):
        cmd += ["-p", str(admin["port"])]
    if admin.get("user"):
        cmd += ["-U", admin["user"]]
    res = __salt__["cmd.run_all"](cmd, stdin=script, python_shell=False, output_loglevel="quiet", ignore_retcode=True)
    if res["retcode"] != 0:
        raise CommandExecutionError(f"psql as {admin.get('user')} on database {dbname} failed: {res['stderr'].strip()}")
    return [line.split("|") for line in res["stdout"].splitlines() if line]


def _sql_literal(value):
    return "'" + str(value).replace("'", "''") + "'"


def _sql_ident(value):
    return '"' + str(value).replace('"', '""') + '"'


def status(name, owner, admin, password_pillar_key=None):
    """
    Compare the MAS database, its role and the ``pg_trgm`` extension with what
    the formula wants. Returns ``{"role": ..., "password": ..., "database": ...,
    "owner": ..., "pg_trgm": ...}`` where each value is ``ok`` or what is
    missing. The password is checked against the role's SCRAM verifier; it is
    read from pillar on the minion (``password_pillar_key``).

    name
        The database name (``mas:database:name``).
    owner
        The role (``mas:database:user``).
    admin
        How to reach PostgreSQL as a superuser: ``{user, host, port, runas}``.

    CLI Example:

    .. code-block:: bash

        salt-call mas_db.status mas mas "{user: postgres, runas: postgres}"
    """
    password = __salt__["mas_secret.pillar_value"](password_pillar_key)
    rows = _psql(
        admin,
        "postgres",
        f"SELECT 'role', rolpassword FROM pg_authid WHERE rolname = {_sql_literal(owner)};\n"
        f"SELECT 'db', pg_get_userbyid(datdba) FROM pg_database WHERE datname = {_sql_literal(name)};\n",
    )
    found = {row[0]: row[1] for row in rows}
    others = _psql(
        admin,
        "postgres",
        "SELECT datname FROM pg_database WHERE datdba = "
        f"(SELECT oid FROM pg_roles WHERE rolname = {_sql_literal(owner)}) AND datname <> {_sql_literal(name)};\n",
    )
    if others:
        raise CommandExecutionError(
            f"the role {owner} (mas:database:user) already owns the database(s) "
            f"{', '.join(row[0] for row in others)}: it belongs to another service, and the formula does not take "
            "it over (nor change its password). Give MAS a role of its own."
        )
    if "db" in found and found["db"] != owner:
        raise CommandExecutionError(
            f"the database {name} (mas:database:name) already exists and belongs to {found['db']}: the formula "
            "does not take over an existing database. MAS needs a dedicated, empty database: choose another name."
        )
    status = {
        "role": "ok" if "role" in found else "missing",
        "password": "ok",
        "database": "ok" if "db" in found else "missing",
        "owner": "ok",
        "pg_trgm": "ok",
    }
    if password is not None and not _scram_matches(found.get("role"), str(password)):
        status["password"] = "differs" if "role" in found else "missing"
    if "db" not in found:
        status["owner"] = status["pg_trgm"] = "missing"
        return status
    ext = _psql(admin, name, "SELECT extname FROM pg_extension WHERE extname = 'pg_trgm';\n")
    if not ext:
        status["pg_trgm"] = "missing"
    return status


def ensure(name, owner, admin, password_pillar_key=None):
    """
    Create or fix the MAS role (LOGIN, password from pillar), its UTF8
    database and the ``pg_trgm`` extension (created as superuser: on
    PostgreSQL < 16 MAS's own role cannot). Returns the status from before.
    See :py:func:`status` for the arguments.

    CLI Example:

    .. code-block:: bash

        salt-call mas_db.ensure mas mas "{user: postgres, runas: postgres}" mas:database:password
    """
    before = status(name, owner, admin, password_pillar_key)
    password = __salt__["mas_secret.pillar_value"](password_pillar_key)
    script = []
    verifier = f" PASSWORD {_sql_literal(_scram_verifier(str(password)))}" if password is not None else ""
    if before["role"] == "missing":
        script.append(f"CREATE ROLE {_sql_ident(owner)} LOGIN{verifier};")
    elif before["password"] != "ok":  # noqa: S105 -- a status word, not a password
        script.append(f"ALTER ROLE {_sql_ident(owner)}{verifier};")
    if before["database"] == "missing":
        script.append(
            f"CREATE DATABASE {_sql_ident(name)} OWNER {_sql_ident(owner)} ENCODING 'UTF8' TEMPLATE template0;"
        )
    if script:
        _psql(admin, "postgres", "\n".join(script) + "\n")
    if before["pg_trgm"] != "ok":
        _psql(admin, name, "CREATE EXTENSION IF NOT EXISTS pg_trgm;\n")
    return before
