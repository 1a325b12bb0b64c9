"""
MAS's tokens of the ``mas`` formula: user registration tokens and bot tokens (personal sessions, or compatibility tokens from a MAS without them), kept through MAS's admin API.

Both are MAS's: every function refuses while Synapse is authoritative
(``mas:enabled`` false or ``mas:migration_in_progress`` true). A token's value
is written to its file (root-only for registration tokens, 0600 for the bot's
owner for bot tokens) and never returned or logged. Called with ``batch`` (the
states of ``mas_user`` do), the functions share the state run's session with
MAS with ``mas_user`` (``mas_user.close`` ends it).

Moved here from ``mas_user`` before the first release:
``mas_user.registration_token_plan``, ``mas_user.registration_token_ensure``,
``mas_user.bot_token_status`` and ``mas_user.bot_token`` are now
``mas_token.*`` of the same names (the states ``mas_user.registration_token``
and ``mas_user.bot_token`` stay where they are). The machinery is
``mas_formula.tokens``.

:depends: requests
"""

import importlib.util
import os

from salt.exceptions import SaltInvocationError

import mas_formula

mas_formula.refresh()
from mas_formula import tokens, users, users_mas  # noqa: E402  (after the refresh: a synced update is imported anew)

HAS_REQUESTS = importlib.util.find_spec("requests") is not None

__virtualname__ = "mas_token"


def __virtual__():
    if not HAS_REQUESTS:
        return (False, "The mas_token module needs the 'requests' Python package")
    return __virtualname__


def _connect(mas, wait=0):
    return users_mas.Backend(mas, wait=wait, runtime_problem=__salt__["mas.runtime_problem"])


def _opened(what, batch):
    """``with _opened(what, batch) as (mas, backend)``: a session with MAS, refused unless MAS is authoritative."""
    users.require_mas(__salt__["mas.mapdata"](), what)
    return users.opened(__context__, __salt__["mas.mapdata"], _connect, batch)


def _renew_before(renew_before):
    """``renew_before``, or the map's default (``mas:access_token_defaults:renew_before``) when it is None."""
    if renew_before is None:
        return __salt__["mas.mapdata"]()["access_token_defaults"]["renew_before"]
    return renew_before


def _run_quietly(argv):
    return __salt__["cmd.run_all"](argv, python_shell=False, output_loglevel="quiet", ignore_retcode=True)


# --------------------------------------------------------------------------
# Registration tokens
# --------------------------------------------------------------------------


def registration_token_plan(name, usage_limit=None, expires=None, revoked=False, batch=False):
    """
    What :py:func:`registration_token_ensure` would change for the
    registration token ``name``, changing nothing: ``{name, path, changes}``.
    The token's value is never returned.

    CLI Example:

    .. code-block:: bash

        salt-call mas_token.registration_token_plan friends usage_limit=10
    """
    tokens.check_token_args(usage_limit, expires)
    with _opened("registration tokens", batch) as (mas, backend):
        return tokens.registration_token_plan(mas, backend, name, usage_limit, expires, revoked)


def registration_token_ensure(name, usage_limit=None, expires=None, revoked=False, batch=False):
    """
    Keep the MAS user registration token ``name`` as wanted: created once
    (24 random letters and digits, written first to
    ``<base_path>/registration-tokens/<name>``, root 0600, and recorded as the
    formula's file), then its ``usage_limit`` (``None``: unlimited),
    ``expires`` (RFC 3339, ``None``: never) and ``revoked`` kept in sync
    through MAS's admin API. Returns ``{name, path, changes}``, never the
    value: hand the file's content out.

    CLI Example:

    .. code-block:: bash

        salt-call mas_token.registration_token_ensure friends usage_limit=10 expires=2030-01-31T00:00:00Z
    """
    tokens.check_token_args(usage_limit, expires)
    with _opened("registration tokens", batch) as (mas, backend):
        return tokens.ensure_registration_token(mas, backend, name, usage_limit, expires, revoked)


# --------------------------------------------------------------------------
# Bot tokens
# --------------------------------------------------------------------------


def bot_token_status(
    username,
    path,
    owner=None,
    group=None,
    scope=None,
    device_id=None,
    expires_in=None,
    renew_before=None,
    synapse_admin=False,
    batch=False,
):
    """
    Whether the bot's token file at ``path`` holds a valid token of
    ``username`` (asked to MAS's introspection as the formula's client), and
    what :py:func:`bot_token` would do: ``{username, path, action: none |
    fix-mode | regenerate | create, reason}``. Never shows the token. The
    arguments are :py:func:`bot_token`'s.

    CLI Example:

    .. code-block:: bash

        salt-call mas_token.bot_token_status bot.alerts /var/lib/alerts/token owner=alerts
    """
    username, path, scope, renew_before = tokens.bot_args(
        username, path, scope, device_id, expires_in, _renew_before(renew_before), synapse_admin
    )
    with _opened("bot tokens", batch) as (_, backend):
        check = tokens.bot_check(backend, username, path, scope, expires_in, renew_before, owner, group, True)
        return {"username": username, "path": path, "action": check["action"], "reason": check["reason"]}


def bot_token(
    username,
    path,
    owner=None,
    group=None,
    scope=None,
    device_id=None,
    expires_in=None,
    renew_before=None,
    synapse_admin=False,
    batch=False,
):
    """
    Give the bot ``username`` an access token in ``path`` (0600, owned by
    ``owner``:``group``, default root): a MAS personal session owned by the
    formula's client acting as the bot (``/api/admin/v1/personal-sessions``),
    scope ``urn:matrix:client:api:*`` plus a device (``device_id``, default
    derived from the user and path; ``synapse_admin``: also
    ``urn:synapse:admin:*``; ``scope`` replaces all of it). Idempotent: a
    valid token is kept; one that expires within ``renew_before`` seconds
    (default: the map's ``mas:access_token_defaults:renew_before``, one day)
    or is revoked is regenerated in the same session, the old one revoked.
    ``expires_in``: lifetime of a new token in seconds (``None``: no expiry).
    A MAS without personal sessions (its admin API answers 404) gets a
    compatibility token instead (``mas-cli manage issue-compatibility-token``,
    same scope; it does not expire, so ``expires_in`` does not apply), issued
    again whenever it is no longer valid.
    Returns ``{username, path, changes}``; the token is never returned or logged.

    CLI Example:

    .. code-block:: bash

        salt-call mas_token.bot_token bot.alerts /var/lib/alerts/token owner=alerts expires_in=2592000
    """
    username, path, scope, renew_before = tokens.bot_args(
        username, path, scope, device_id, expires_in, _renew_before(renew_before), synapse_admin
    )
    if not os.path.isdir(os.path.dirname(path)):
        raise SaltInvocationError(f"path: the directory {os.path.dirname(path)} does not exist")
    user, group, _, _ = tokens.file_owner(owner, group)
    with _opened("bot tokens", batch) as (mas, backend):
        check = tokens.bot_check(backend, username, path, scope, expires_in, renew_before, owner, group)
        changes = tokens.issue_bot_token(
            mas,
            backend,
            check,
            username,
            path,
            scope,
            expires_in,
            synapse_admin,
            user,
            group,
            run=_run_quietly,
            scrub=__salt__["mas_secret.scrub"],
        )
        return {"username": username, "path": path, "changes": changes}
