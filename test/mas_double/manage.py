"""``mas-cli manage ...`` subcommands of the double (MAS 1.23 behaviour: ``crates/cli/src/commands/manage.rs`` upstream).

Each handler takes the loaded :class:`~mas_double.config.MasConfig` and the
parsed arguments and returns the exit code.  Fatal errors are raised as
:class:`~mas_double.config.ConfigError` (or homeserver/password errors) and
printed by :mod:`mas_double.cli` as ``Error: ...`` with exit 1.

Jobs that MAS hands to its worker (provisioning the user in Synapse,
deactivation, reactivation) are queued in ``queue_jobs`` exactly as MAS does;
the double's ``server`` runs them (see :mod:`mas_double.worker`).
"""

from __future__ import annotations

import argparse
import sys

from mas_double import db, ulid
from mas_double.config import ConfigError, MasConfig
from mas_double.homeserver import HomeserverConnection, HomeserverError
from mas_double.passwords import PasswordManager
from mas_double.state import generate_device_id, generate_token
from mas_double.tracing import Logger

LOG = Logger("mas_cli::commands::manage")

#: Width of the right-aligned keys of the "User attributes" table.
_KEY_WIDTH = 17


def add_parsers(subparsers, parent: argparse.ArgumentParser) -> None:
    """Register the ``manage`` subcommands on ``subparsers``."""
    manage = subparsers.add_parser("manage", help="Manage the instance", parents=[parent])
    sub = manage.add_subparsers(dest="manage_command", metavar="COMMAND", required=True)

    p = sub.add_parser("register-user", help="Register a user", parents=[parent])
    p.add_argument("username", nargs="?")
    p.add_argument("-p", "--password")
    p.add_argument("-e", "--email", dest="emails", action="append", default=[], type=_email)
    p.add_argument("-m", "--upstream-provider-mapping", dest="mappings", action="append", default=[])
    admin = p.add_mutually_exclusive_group()
    admin.add_argument("-a", "--admin", action="store_true")
    admin.add_argument("-A", "--no-admin", action="store_true")
    p.add_argument("-y", "--yes", action="store_true")
    p.add_argument("-d", "--display-name")
    p.add_argument("--ignore-password-complexity", action="store_true")
    p.set_defaults(handler=register_user)

    p = sub.add_parser("add-email", help="Add an email address to the specified user", parents=[parent])
    p.add_argument("username")
    p.add_argument("email")
    p.set_defaults(handler=add_email)

    p = sub.add_parser("verify-email", help="(DEPRECATED) Mark email address as verified", parents=[parent])
    p.add_argument("username")
    p.add_argument("email")
    p.set_defaults(handler=verify_email)

    p = sub.add_parser("set-password", help="Set a user password", parents=[parent])
    p.add_argument("username")
    p.add_argument("password")
    p.add_argument("--ignore-complexity", action="store_true")
    p.set_defaults(handler=set_password)

    for name, handler, text in (
        ("promote-admin", promote_admin, "Make a user admin"),
        ("demote-admin", demote_admin, "Make a user non-admin"),
    ):
        p = sub.add_parser(name, help=text, parents=[parent])
        p.add_argument("username")
        p.set_defaults(handler=handler)

    p = sub.add_parser("list-admin-users", help="List all users with admin privileges", parents=[parent])
    p.set_defaults(handler=list_admin_users)

    p = sub.add_parser("lock-user", help="Lock a user", parents=[parent])
    p.add_argument("username")
    p.add_argument("--deactivate", action="store_true")
    p.set_defaults(handler=lock_user)

    p = sub.add_parser("issue-compatibility-token", help="Issue a compatibility token", parents=[parent])
    p.add_argument("username")
    p.add_argument("device_id", nargs="?")
    p.add_argument("--yes-i-want-to-grant-synapse-admin-privileges", dest="admin", action="store_true")
    p.set_defaults(handler=issue_compatibility_token)

    p = sub.add_parser("unlock-user", help="Unlock a user", parents=[parent])
    p.add_argument("username")
    p.add_argument("--reactivate", action="store_true")
    p.set_defaults(handler=unlock_user)


def _email(value: str) -> str:
    """argparse type for ``-e``: a minimal mailbox check (``local@domain``)."""
    local, sep, domain = value.partition("@")
    if not sep or not local or not domain or "@" in domain or any(c.isspace() for c in value):
        raise argparse.ArgumentTypeError("Missing domain or user")
    return value


def _require_user(conn, username: str) -> db.User:
    user = db.find_user_by_username(conn, username)
    if user is None:
        raise ConfigError("User not found")
    return user


def _normalize_username(localpart_or_mxid: str) -> str:
    """Strip a leading ``@`` and a trailing ``:server`` (MAS's basic MXID handling)."""
    localpart = localpart_or_mxid.lstrip("@")
    return localpart.split(":", 1)[0]


def _show(config: MasConfig, username: str, display_name, has_password: bool, emails, admin) -> None:
    """Print the "User attributes" table to stdout (no TTY: no colours)."""
    out = ["User attributes"]

    def row(key: str, value: object) -> None:
        out.append(f"{key:>{_KEY_WIDTH}}: {value}")

    row("Username", username)
    row("Matrix ID", config.mxid(username))
    if display_name is not None:
        row("Display name", display_name)
    if has_password:
        row("Password", "********")
    for email in emails:
        row("Email", email)
    if not emails:
        out.append("No email address provided, user will be prompted to add one")
    if not has_password:
        out.append("No password or upstream provider mapping provided, user will not be able to log in")
    if admin is not None:
        row("Can request admin", str(admin).lower())
    sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.flush()


def register_user(config: MasConfig, ns: argparse.Namespace) -> int:
    """``manage register-user``: create a user with password, emails and admin flag."""
    if ns.yes and ns.username is None:
        sys.stderr.write(
            "error: the following required arguments were not provided:\n  <USERNAME>\n\n"
            "Usage: mas-cli manage register-user --yes <USERNAME>\n\nFor more information, try '--help'.\n"
        )
        return 2
    if ns.mappings:
        raise ConfigError("the MAS double does not support --upstream-provider-mapping")
    manager = PasswordManager(config)
    homeserver = HomeserverConnection(config)
    with config.connect() as conn:
        if ns.password is not None and not ns.ignore_password_complexity and not manager.is_complex_enough(ns.password):
            LOG.error("That password is too weak.")
            return 1
        if ns.username is None:
            raise ConfigError("IO error: not a terminal")
        localpart = _normalize_username(ns.username)
        if not localpart:
            raise ConfigError("Username cannot be empty")
        if db.user_exists(conn, localpart):
            raise ConfigError("User already exists")
        if not homeserver.is_localpart_available(localpart):
            raise ConfigError("Username not available on homeserver")
        admin = True if ns.admin else False if ns.no_admin else None
        hashed = manager.hash(ns.password) if ns.password is not None else None
        _show(config, localpart, ns.display_name, hashed is not None, ns.emails, admin)
        if not ns.yes:
            raise ConfigError("IO error: not a terminal")
        if not ns.emails:
            LOG.warn("No email address provided, user will need to add one")
        user = db.add_user(conn, localpart)
        if hashed is not None:
            db.add_password(conn, user, *hashed)
        for email in ns.emails:
            db.add_email(conn, user, email)
        if admin is not None:
            user = db.set_can_request_admin(conn, user, admin)
        db.schedule_provision(conn, user, ns.display_name)
        conn.commit()
    LOG.info("User registered", **{"user.id": user.ulid})
    return 0


def add_email(config: MasConfig, ns: argparse.Namespace) -> int:
    """``manage add-email``: idempotently add a (verified) email to a user."""
    with config.connect() as conn:
        user = _require_user(conn, ns.username)
        email = db.find_email(conn, user, ns.email)
        if email is not None:
            LOG.info("Email already exists, makring as verified", **{"email.id": email.ulid})
        else:
            email = db.add_email(conn, user, ns.email)
        conn.commit()
    LOG.info(
        "Email added",
        **{"user.id": user.ulid, "user.username": user.username, "email.id": email.ulid, "email.email": email.email},
    )
    return 0


def verify_email(config: MasConfig, ns: argparse.Namespace) -> int:
    """``manage verify-email``: deprecated no-op since MAS 1.10."""
    LOG.warn(
        "The 'verify-email' command is deprecated and will be removed in a future version. Use 'add-email' instead."
    )
    return 0


def set_password(config: MasConfig, ns: argparse.Namespace) -> int:
    """``manage set-password``: add a new ``user_passwords`` row."""
    manager = PasswordManager(config)
    with config.connect() as conn:
        user = _require_user(conn, ns.username)
        if not ns.ignore_complexity and not manager.is_complex_enough(ns.password):
            LOG.error("That password is too weak.")
            return 1
        version, hashed = manager.hash(ns.password)
        db.add_password(conn, user, version, hashed)
        conn.commit()
    LOG.info("Password changed", **{"user.id": user.ulid, "user.username": user.username})
    return 0


def _set_admin(config: MasConfig, username: str, admin: bool) -> int:
    with config.connect() as conn:
        user = _require_user(conn, username)
        user = db.set_can_request_admin(conn, user, admin)
        conn.commit()
    message = "User promoted to admin" if admin else "User demoted from admin"
    LOG.info(message, **{"user.id": user.ulid, "user.username": user.username})
    return 0


def promote_admin(config: MasConfig, ns: argparse.Namespace) -> int:
    """``manage promote-admin``: set ``can_request_admin``."""
    return _set_admin(config, ns.username, True)


def demote_admin(config: MasConfig, ns: argparse.Namespace) -> int:
    """``manage demote-admin``: clear ``can_request_admin``."""
    return _set_admin(config, ns.username, False)


def list_admin_users(config: MasConfig, ns: argparse.Namespace) -> int:
    """``manage list-admin-users``: INFO log lines on stderr (``user.id=<ULID> username=<name>``), nothing on
    stdout (``crates/cli/src/commands/manage.rs``)."""
    with config.connect() as conn:
        users = db.list_admin_users(conn)
    LOG.info(f"The following users can request admin privileges ({len(users)} total):")
    for user in users:
        LOG.info("", **{"user.id": user.ulid, "username": user.username})
    return 0


def lock_user(config: MasConfig, ns: argparse.Namespace) -> int:
    """``manage lock-user [--deactivate]``: lock now, queue the deactivation."""
    with config.connect() as conn:
        user = _require_user(conn, ns.username)
        LOG.info("Locking user", **{"user.id": user.ulid})
        user = db.lock_user(conn, user)
        if ns.deactivate:
            LOG.warn("Scheduling user deactivation", **{"user.id": user.ulid})
            db.schedule_job(conn, "deactivate-user", {"user_id": user.ulid, "hs_erase": False})
        conn.commit()
    return 0


def unlock_user(config: MasConfig, ns: argparse.Namespace) -> int:
    """``manage unlock-user [--reactivate]``: unlock now, or queue the reactivation."""
    with config.connect() as conn:
        user = _require_user(conn, ns.username)
        if ns.reactivate:
            LOG.warn("Scheduling user reactivation", **{"user.id": user.ulid})
            db.schedule_job(conn, "reactivate-user", {"user_id": user.ulid})
        else:
            db.unlock_user(conn, user)
        conn.commit()
    return 0


def issue_compatibility_token(config: MasConfig, ns: argparse.Namespace) -> int:
    """``manage issue-compatibility-token <USERNAME> [DEVICE_ID] [--yes-i-want-to-grant-synapse-admin-privileges]``.

    manage.rs: the device is upserted on the homeserver first (ERROR and exit 1
    when that fails); the token is logged on stderr (``Compatibility token issued: <mct_...>``).
    """
    homeserver = HomeserverConnection(config)
    with config.connect() as conn:
        user = _require_user(conn, ns.username)
        device_id = ns.device_id or generate_device_id()
        try:
            homeserver.upsert_device(user.username, device_id)
        except HomeserverError:
            LOG.error("Could not create the device on the homeserver, aborting")
            return 1
        session_id = db.add_compat_session(conn, user, device_id, bool(ns.admin), None)
        token = generate_token("mct")
        token_id = db.add_compat_access_token(conn, session_id, token, None)
        conn.commit()
    LOG.info(
        f"Compatibility token issued: {token}",
        **{
            "compat_access_token.id": ulid.from_uuid(token_id),
            "compat_session.id": ulid.from_uuid(session_id),
            "compat_session.device": device_id,
            "user.id": user.ulid,
            "user.username": user.username,
        },
    )
    return 0
