"""
Users of the ``mas`` formula in every phase: registration and the account lifecycle in whichever service is authoritative (registration and bot tokens are ``mas_token``'s).

Where a request goes follows the map (``mas.mapdata``), as the states do:

* ``mas:enabled`` true and ``mas:migration_in_progress`` false: **MAS** is
  authoritative. The formula is its own OAuth2 client of MAS
  (``client_credentials``, scope ``urn:mas:admin``; client id and secret file
  in the map's ``api``) and uses MAS's admin API.
* ``mas:enabled`` false, or ``mas:migration_in_progress`` true: **Synapse** is
  authoritative. Users are registered with Synapse's shared-secret
  registration API (``/_synapse/admin/v1/register``, nonce + HMAC-SHA1; the
  secret is ``registration_shared_secret`` or the file of
  ``registration_shared_secret_path`` in Synapse's own config files) and
  managed with Synapse's admin API, logged in as the formula's own Synapse
  admin account (``mas:synapse:formula_admin``). That account's password is
  generated on the minion and kept only in a root-only 0600 file; its access
  token lives in this process's memory for one call (or one state run) and is
  logged out at the end. syn2mas carries these users over to MAS later.

Passwords travel in request bodies only: never in a process's arguments,
never returned, never logged. By default a new password must pass MAS's own
complexity check (zxcvbn, ``passwords.minimum_complexity``, 3 unless set in
``mas:config``), on both paths and before anything is created;
``skip_password_check`` turns it off.

The machinery lives in the formula's helpers: ``mas_formula.users`` (input,
changes, fingerprints, the sessions of a run), ``mas_formula.users_mas`` (MAS's
admin API), ``mas_formula.users_synapse`` (Synapse's APIs), over the formula's
one HTTP client ``mas_formula.http``.

:depends: requests; zxcvbn-rs-py (the complexity check, with the zxcvbn crate MAS uses)
"""

import importlib.util
import logging
import os

from salt.exceptions import CommandExecutionError, SaltInvocationError

import mas_formula

mas_formula.refresh()
from mas_formula import grammar, users, users_mas, users_synapse  # noqa: E402  (after the refresh: a synced update is imported anew)

# requests and zxcvbn are imported where they are used: the SLS files call this module on every run, and
# importing them costs more than the rest of what those calls do
HAS_REQUESTS = importlib.util.find_spec("requests") is not None

log = logging.getLogger(__name__)

__virtualname__ = "mas_user"


def __virtual__():
    if not HAS_REQUESTS:
        return (False, "The mas_user module needs the 'requests' Python package")
    return __virtualname__


def _connect(mas, wait=0):
    """A backend of the service that is authoritative for ``mas`` (the map)."""
    if users.authority(mas) == "mas":
        return users_mas.Backend(mas, wait=wait, runtime_problem=__salt__["mas.runtime_problem"])
    syn = mas["synapse"]
    return users_synapse.Backend(
        mas,
        read_config=lambda: __salt__["mas_synapse.config"](
            syn["config_files"], syn["config_dir"], exclude=[mas["paths"]["synapse_dropin"]], mask=False
        ),
    )


def _opened(batch=False, wait=0):
    """``with _opened(batch) as (mas, backend)``: this call's session, or (``batch``) the state run's."""
    return users.opened(__context__, __salt__["mas.mapdata"], _connect, batch, wait)


def _password(password, password_file, password_pillar_key):
    return users.password(password, password_file, password_pillar_key, __salt__["mas_secret.pillar_value"])


# --------------------------------------------------------------------------
# Input and authority
# --------------------------------------------------------------------------


def check_username(username):
    """
    The Matrix localpart of ``username`` (a leading ``@`` and a trailing
    ``:server`` are removed), or ``SaltInvocationError`` naming the rule MAS
    and Synapse apply: 1-255 of ``a-z 0-9 . _ = / + -``, not starting with ``_``.

    username
        A localpart or a Matrix ID.

    CLI Example:

    .. code-block:: bash

        salt-call mas_user.check_username @alice:example.com
    """
    return grammar.check_username(username)


def check_email(address):
    """
    ``address`` if it is an email address MAS accepts (``local@domain``), else
    ``SaltInvocationError``.

    address
        The email address.

    CLI Example:

    .. code-block:: bash

        salt-call mas_user.check_email alice@example.com
    """
    return grammar.check_email(address)


def authority():
    """
    Which service receives registrations now: ``{"authority": "mas" |
    "synapse", "reason"}``, from the map (``mas:enabled``,
    ``mas:migration_in_progress``).

    CLI Example:

    .. code-block:: bash

        salt-call mas_user.authority
    """
    mas = __salt__["mas.mapdata"]()
    return {"authority": users.authority(mas), "reason": users.reason(mas)}


# --------------------------------------------------------------------------
# Sessions of a state run
# --------------------------------------------------------------------------


def close():
    """
    End this run's shared sessions (``batch``; ``mas_token``'s functions
    share them too): log out of Synapse (the formula admin's token is then
    gone) and forget MAS's users and registration tokens read for the run.
    Returns ``{"closed": ["mas", "synapse"]}`` (those that were open). The
    ``mas_user.sessions_closed`` state calls it last.

    CLI Example:

    .. code-block:: bash

        salt-call mas_user.close
    """
    return {"closed": users.close(__context__)}


# --------------------------------------------------------------------------
# Plan and register
# --------------------------------------------------------------------------


def plan(
    username,
    admin=False,
    emails=None,
    password=None,
    password_file=None,
    password_pillar_key=None,
    locked=None,
    password_update=users.ON_CREATE,
    skip_password_check=False,
    wait=0,
    batch=False,
):
    """
    What :py:func:`register` would change for ``username``, read from the
    authoritative service without changing anything: ``{"authority": "mas" |
    "synapse", "user": <info or None>, "changes": {key: {old, new}}}``. With
    Synapse authoritative and the formula's Synapse admin account not created
    yet, the user cannot be looked up: ``"unverified": True`` and the plan is
    that of a new user. A bad username, email or password is refused here too.
    ``wait``: seconds to wait for MAS to come up. ``batch``: share this run's
    sessions and MAS's users read once (the states pass it).

    CLI Example:

    .. code-block:: bash

        salt-call mas_user.plan alice admin=True emails='[alice@example.com]'
    """
    username = grammar.check_username(username)
    emails = users.emails(emails)
    users.check_update_mode(password_update)
    secret = _password(password, password_file, password_pillar_key)
    with _opened(batch, wait) as (mas, backend):
        view = backend.find(username)
        unverified = view is users.UNKNOWN
        view = None if unverified else view
        changes = users.changes(mas, view, username, admin, emails, locked, secret, password_update)
        users.check_strength(mas, users.to_set(secret, changes), skip_password_check)
        out = {"authority": backend.authority, "user": users.public(view), "changes": changes}
        if unverified:
            out["unverified"] = True
        return out


def register(
    username,
    password=None,
    password_file=None,
    password_pillar_key=None,
    admin=False,
    emails=None,
    skip_password_check=False,
    locked=None,
    password_update=users.ON_CREATE,
    exists_ok=True,
    batch=False,
):
    """
    Register a user in the service that is authoritative now, or bring an
    existing one to the wanted admin flag, emails and lock -- idempotent,
    unlike ``mas-cli manage register-user``. MAS authoritative: MAS's admin
    API. MAS disabled or migrating: Synapse's shared-secret registration API,
    then Synapse's admin API (syn2mas carries the user to MAS later). The
    password travels in request bodies only: prefer ``password_file`` or
    ``password_pillar_key`` to ``password`` (which would sit in salt-call's
    own arguments).

    Returns ``{"authority", "username", "user_id", "created", "changes"}``.

    username
        The localpart (``alice``; ``@alice:example.com`` works too).
    password / password_file / password_pillar_key
        At most one; without any the user has no password in MAS (upstream
        OAuth2 logins only) and a random, forgotten one in Synapse.
    admin
        MAS: whether the user may request admin rights (``can_request_admin``);
        Synapse: server admin.
    emails
        Email addresses to add (verified); existing ones are kept.
    skip_password_check
        Skip MAS's password complexity check (the seed's
        ``--ignore-password-complexity``); off by default.
    locked
        ``True``/``False`` to lock/unlock; ``None`` leaves it.
    password_update
        ``on_create`` (default): the password is set when the user is created
        only. ``always``: also whenever it differs from the one the formula
        set last (a scrypt fingerprint in ``<base_path>/formula/passwords.json``).
    exists_ok
        ``False``: an existing user is an error (``User already exists``), as
        with ``mas-cli manage register-user`` (``bin/register-user`` keeps
        that playbook behaviour).
    batch
        Share this run's sessions (the states pass it).

    CLI Example:

    .. code-block:: bash

        salt-call mas_user.register alice password_file=/root/alice.pw admin=True emails='[alice@example.com]'
    """
    username = grammar.check_username(username)
    emails = users.emails(emails)
    users.check_update_mode(password_update)
    secret = _password(password, password_file, password_pillar_key)
    with _opened(batch) as (mas, backend):
        view, changes = users.register(
            mas, backend, username, secret, admin, emails, locked, password_update, skip_password_check, exists_ok
        )
        created = "user" in changes
        log.info(
            "mas_user: %s user %s %s",
            backend.authority,
            username,
            "registered" if created else "updated" if changes else "unchanged",
        )
        return {
            "authority": backend.authority,
            "username": username,
            "user_id": view["user_id"],
            "created": created,
            "changes": changes,
        }


def info(username):
    """
    A user as the authoritative service sees it: ``{authority, user_id,
    username, admin, locked, deactivated, emails}``, or ``None`` when there
    is no such user.

    username
        The localpart (a leading ``@`` and a trailing ``:server`` are removed).

    CLI Example:

    .. code-block:: bash

        salt-call mas_user.info alice
    """
    username = grammar.check_username(username)
    with _opened() as (_, backend):
        view = backend.find(username)
        if view is users.UNKNOWN:
            raise CommandExecutionError(
                "cannot look users up in Synapse yet: the formula's Synapse admin account"
                " (mas:synapse:formula_admin) is created by the first mas_user.register"
            )
        return None if view is None else dict(users.public(view), authority=backend.authority)


# --------------------------------------------------------------------------
# Lifecycle
# --------------------------------------------------------------------------


def _lifecycle(username, key, wanted, apply, batch=False, missing_ok=False):
    """Bring one attribute of an existing user to ``wanted``: ``{authority, username, exists, changes}``."""
    username = grammar.check_username(username)
    with _opened(batch) as (_, backend):
        view = users.existing(backend, username, missing_ok)
        changes = {}
        if view is not None and view[key] != wanted:
            old = view[key]
            apply(backend, view)
            changes[key] = {"old": old, "new": wanted}
        return {"authority": backend.authority, "username": username, "exists": view is not None, "changes": changes}


def set_password(username, password=None, password_file=None, password_pillar_key=None, skip_password_check=False):
    """
    Set a user's password (``password_file`` or ``password_pillar_key``:
    never on the command line) in the authoritative service. MAS's complexity
    check applies unless ``skip_password_check``. Always a change (a password
    cannot be read back): ``{authority, username, changes: {password: {old:
    "set", new: "updated"}}}``.

    CLI Example:

    .. code-block:: bash

        salt-call mas_user.set_password alice password_file=/root/alice.pw
    """
    username = grammar.check_username(username)
    secret = _password(password, password_file, password_pillar_key)
    if secret is None:
        raise SaltInvocationError("a password is required (password_file or password_pillar_key)")
    with _opened() as (mas, backend):
        users.check_strength(mas, secret, skip_password_check)
        view = users.existing(backend, username)
        backend.set_password(view, secret, skip_password_check)
        return {
            "authority": backend.authority,
            "username": username,
            "changes": {"password": {"old": "set", "new": "updated"}},
        }


def set_admin(username, admin=True):
    """
    Give or take a user's admin rights (MAS: ``can_request_admin``; Synapse:
    server admin): ``{authority, username, changes}``.

    CLI Example:

    .. code-block:: bash

        salt-call mas_user.set_admin alice admin=False
    """
    return _lifecycle(username, "admin", bool(admin), lambda b, v: b.set_admin(v, bool(admin)))


def lock(username):
    """
    Lock a user (MAS: no login, sessions kept; Synapse: ``locked``).

    CLI Example:

    .. code-block:: bash

        salt-call mas_user.lock alice
    """
    return _lifecycle(username, "locked", True, lambda b, v: b.set_locked(v, True))


def unlock(username):
    """
    Unlock a user.

    CLI Example:

    .. code-block:: bash

        salt-call mas_user.unlock alice
    """
    return _lifecycle(username, "locked", False, lambda b, v: b.set_locked(v, False))


def deactivate(username, erase=False, missing_ok=False, batch=False):
    """
    Deactivate a user: no login any more, sessions ended. MAS (and Synapse)
    keep a deactivated user: the name stays taken. ``erase``: also ask the
    homeserver to erase the user's data (GDPR erasure). ``missing_ok``: a
    user that does not exist is no error (``exists: False``).

    CLI Example:

    .. code-block:: bash

        salt-call mas_user.deactivate alice
    """
    return _lifecycle(
        username, "deactivated", True, lambda b, v: b.deactivate(v, bool(erase)), batch=batch, missing_ok=missing_ok
    )


def _email_change(username, email, add):
    username = grammar.check_username(username)
    email = grammar.check_email(email)
    with _opened() as (_, backend):
        view = users.existing(backend, username)
        old = list(view["emails"])
        present = email.lower() in {e.lower() for e in old}
        if present != add:
            (backend.add_email if add else backend.remove_email)(view, email)
        changes = {} if present == add else {"emails": {"old": old, "new": list(view["emails"])}}
        return {"authority": backend.authority, "username": username, "changes": changes}


def add_email(username, email):
    """
    Add a verified email address to a user (the seed's ``mas-cli manage
    verify-email``, a no-op since MAS 1.10; MAS stores an added address as
    verified). Idempotent.

    CLI Example:

    .. code-block:: bash

        salt-call mas_user.add_email alice alice@example.com
    """
    return _email_change(username, email, True)


def remove_email(username, email):
    """
    Remove an email address from a user. Idempotent.

    CLI Example:

    .. code-block:: bash

        salt-call mas_user.remove_email alice alice@example.com
    """
    return _email_change(username, email, False)


# --------------------------------------------------------------------------
# bin/register-user
# --------------------------------------------------------------------------


def wrapper_settings():
    """
    What ``bin/register-user`` runs: ``{salt_call, config_dir}`` -- this
    minion's ``salt-call`` (next to Salt's Python, else on ``PATH``) and its
    configuration directory, so that the wrapper reaches ``mas_user.register``
    with the same map (and phase) as the states.

    CLI Example:

    .. code-block:: bash

        salt-call mas_user.wrapper_settings
    """
    import shutil  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel

    sibling = os.path.join(os.path.dirname(sys.executable), "salt-call")
    salt_call = sibling if os.access(sibling, os.X_OK) else (shutil.which("salt-call") or "/usr/bin/salt-call")
    config_dir = os.path.dirname(__opts__.get("conf_file") or "/etc/salt/minion")
    for name, value in (("salt-call", salt_call), ("the minion's configuration directory", config_dir)):
        if not __salt__["mas.valid"]("path", value):  # rendered into bin/register-user
            raise CommandExecutionError(f"bin/register-user: {name} {value!r} has characters a wrapper cannot hold")
    return {"salt_call": salt_call, "config_dir": config_dir}
