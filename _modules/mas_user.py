"""
Users of the ``mas`` formula: everything that talks to MAS's admin API about users (register, look up, plan).

The formula is its own OAuth2 client of MAS (``client_credentials``, scope
``urn:mas:admin``; client id and secret file in the map's ``api``). Passwords
travel in the bodies of admin-API requests, never in a process's arguments,
and are never returned or logged. ``requests`` is the formula's one HTTP
client.

:depends: requests
"""

import logging
import re
import time

import salt.utils.data
import salt.utils.files
from salt.exceptions import CommandExecutionError, SaltInvocationError

try:
    import requests

    HAS_REQUESTS = True
except ImportError:  # pragma: no cover - depends on the minion
    HAS_REQUESTS = False

log = logging.getLogger(__name__)

__virtualname__ = "mas_user"

_LOCALPART = re.compile(r"^[a-z0-9._=/+-]+$")


def __virtual__():
    if not HAS_REQUESTS:
        return (False, "The mas_user module needs the 'requests' Python package")
    return __virtualname__


def _pillar_value(pillar_key):
    if not pillar_key:
        return None
    value = salt.utils.data.traverse_dict_and_list(__pillar__, pillar_key, None, delimiter=":")
    return value if value not in (None, "", [], {}) else None


class _AdminApi:
    """A client of MAS's admin API authenticated as the formula's client."""

    def __init__(self, api, timeout=30, wait=0):
        self.api = api
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False  # MAS is local: never through an http(s)_proxy
        deadline = time.monotonic() + float(wait)
        try:
            with salt.utils.files.fopen(api["client_secret_file"], "r") as handle:
                secret = handle.read().strip()
        except OSError as exc:
            raise CommandExecutionError(
                f"cannot read the admin client secret {api['client_secret_file']} (apply the mas state first): {exc}",
                info={"unreachable": True},
            ) from exc
        while True:  # MAS may still be starting: wait up to `wait` seconds
            try:
                resp = self._send(
                    "POST",
                    api["token_url"],
                    auth=(api["client_id"], secret),
                    data={"grant_type": "client_credentials", "scope": "urn:mas:admin"},
                )
                break
            except CommandExecutionError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1)
        if resp.status_code != 200:
            raise CommandExecutionError(
                f"MAS refused the formula's admin client at {api['token_url']} ({resp.status_code}): {_api_error(resp)}"
                " -- is MAS running with the config the formula wrote (clients, policy.data.admin_clients)?"
            )
        try:
            self.session.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"
        except (ValueError, KeyError) as exc:
            raise CommandExecutionError(f"MAS answered {api['token_url']} without an access token") from exc

    def _send(self, method, url, **kwargs):
        try:
            return self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise CommandExecutionError(
                f"MAS is not reachable at {url}: {exc.__class__.__name__}", info={"unreachable": True}
            ) from exc

    def call(self, method, path, expect=(200,), **kwargs):
        resp = self._send(method, self.api["admin_url"] + path, **kwargs)
        if resp.status_code not in expect:
            raise CommandExecutionError(
                f"MAS admin API {method} {path}: {resp.status_code} {_api_error(resp)}",
                info={"status": resp.status_code, "errors": _api_error(resp)},
            )
        try:
            return resp.json() if resp.content else None
        except ValueError as exc:
            raise CommandExecutionError(f"MAS admin API {method} {path}: the answer is not JSON") from exc


def _api_error(resp):
    try:
        return "; ".join(e.get("title", "") for e in resp.json().get("errors", [])) or resp.text[:200]
    except ValueError:
        return resp.text[:200]


def _user_view(api, user):
    attrs = user["attributes"]
    emails = api.call("GET", f"/user-emails?filter[user]={user['id']}&page[first]=100")["data"]
    return {
        "user_id": user["id"],
        "username": attrs["username"],
        "admin": bool(attrs["admin"]),
        "locked": attrs.get("locked_at") is not None,
        "deactivated": attrs.get("deactivated_at") is not None,
        "emails": sorted(e["attributes"]["email"] for e in emails),
    }


def _refuse_while_migrating(mas):
    if mas["migration_in_progress"]:
        raise CommandExecutionError(
            "mas:migration_in_progress is true: users are still Synapse's and syn2mas will copy them to MAS. "
            "Registering users in MAS now would make the migration fail (the MAS database must be empty). "
            "Register them in Synapse, or after the migration."
        )


def info(username):
    """
    A MAS user as the formula sees it: ``{user_id, username, admin, locked,
    deactivated, emails}``, or ``None`` when there is no such user.

    username
        The localpart (a leading ``@`` and a trailing ``:server`` are removed).

    CLI Example:

    .. code-block:: bash

        salt-call mas_user.info alice
    """
    username = _localpart(username)
    api = _AdminApi(__salt__["mas.mapdata"]()["api"])
    found = api.call("GET", f"/users/by-username/{username}", expect=(200, 404))
    if not found or "data" not in found:
        return None
    return _user_view(api, found["data"])


def _localpart(username):
    if not isinstance(username, str) or not username:
        raise SaltInvocationError("username: a Matrix localpart is required")
    name = username[1:] if username.startswith("@") else username
    name = name.split(":", 1)[0]
    if not _LOCALPART.match(name):
        raise SaltInvocationError(f"username: {username!r} is not a valid Matrix localpart (a-z, 0-9, ._=/+-)")
    return name


def _password(password, password_file, password_pillar_key):
    given = [x for x in (password, password_file, password_pillar_key) if x is not None]
    if len(given) > 1:
        raise SaltInvocationError("give at most one of password, password_file, password_pillar_key")
    if password_file is not None:
        try:
            with salt.utils.files.fopen(password_file, "r") as handle:
                return handle.read().rstrip("\n")
        except OSError as exc:
            raise SaltInvocationError(f"password_file: cannot read {password_file}: {exc.strerror}") from exc
    if password_pillar_key is not None:
        value = _pillar_value(password_pillar_key)
        if value is None:
            raise SaltInvocationError(f"password_pillar_key: {password_pillar_key} is not set in pillar")
        return str(value)
    return password


def _plan(api, username, admin, emails, password_set):
    found = api.call("GET", f"/users/by-username/{username}", expect=(200, 404))
    user = _user_view(api, found["data"]) if found and "data" in found else None
    changes = {}
    current = user or {"admin": False, "emails": []}
    if user is None:
        changes["user"] = {"old": None, "new": username}
        if password_set:
            changes["password"] = {"old": None, "new": "set"}
    if bool(admin) != current["admin"]:
        changes["admin"] = {"old": current["admin"], "new": bool(admin)}
    missing = sorted(set(emails or []) - set(current["emails"]))
    if missing:
        changes["emails"] = {"old": current["emails"], "new": sorted(set(current["emails"]) | set(missing))}
    return user, changes


def _users_api(wait=0):
    mas = __salt__["mas.mapdata"]()
    _refuse_while_migrating(mas)
    return _AdminApi(mas["api"], wait=wait)


def plan(username, admin=False, emails=None, password_set=False, wait=0):
    """
    What :py:func:`register` would change for ``username``, read from
    MAS without changing anything: ``{"user": <user_info or None>, "changes":
    {key: {old, new}}}``. A password is only set when the user is created
    (``password_set``), so that re-applying never resets a password the user
    has changed since. ``wait``: seconds to wait for MAS to come up.

    CLI Example:

    .. code-block:: bash

        salt-call mas_user.plan alice admin=True emails='[alice@example.com]'
    """
    user, changes = _plan(_users_api(wait), _localpart(username), admin, emails, password_set)
    return {"user": user, "changes": changes}


def register(
    username,
    password=None,
    password_file=None,
    password_pillar_key=None,
    admin=False,
    emails=None,
    skip_password_check=True,
):
    """
    Register a user in MAS, or bring an existing one to the wanted admin flag
    and emails -- idempotent, unlike ``mas-cli manage register-user``. The
    password is set when the user is created, through MAS's admin API, so it
    never appears in a process's arguments or in Salt's output; prefer
    ``password_file`` or ``password_pillar_key`` to ``password`` (which would
    sit in salt-call's own arguments). Refused while
    ``mas:migration_in_progress`` is true (syn2mas needs an empty MAS).

    Returns ``{"username", "user_id", "created", "changes"}``.

    username
        The localpart (``alice``, ``@alice:example.com`` works too).
    password / password_file / password_pillar_key
        At most one; without any, the user has no password (e.g. upstream
        OAuth2 logins only).
    admin
        Whether the user may request admin rights (``can_request_admin``).
    emails
        Email addresses to add (verified); existing ones are kept.
    skip_password_check
        Skip MAS's password complexity check (like the seed's
        ``--ignore-password-complexity``).

    CLI Example:

    .. code-block:: bash

        salt-call mas_user.register alice password_file=/root/alice.pw admin=True emails='[alice@example.com]'
    """
    secret = _password(password, password_file, password_pillar_key)
    username = _localpart(username)
    api = _users_api()
    user, changes = _plan(api, username, admin, emails, secret is not None)
    if user is None:
        try:
            created = api.call("POST", "/users", expect=(201,), json={"username": username})["data"]
        except CommandExecutionError as exc:
            if (exc.info or {}).get("status") != 500:
                raise
            # MAS provisions the account on Synapse before it saves the user
            # (users/add.rs): a 500 is Synapse's refusal, and MAS kept nothing
            raise CommandExecutionError(
                f"Synapse refused to provision the account of {username} for MAS, so MAS did not create the user"
                f" (nothing was created): {exc.info['errors']}. Check Synapse's log and its"
                " matrix_authentication_service settings (endpoint, secret)."
            ) from exc
        user_id = created["id"]
        if secret is not None:
            try:
                api.call(
                    "POST",
                    f"/users/{user_id}/set-password",
                    expect=(204,),
                    json={"password": secret, "skip_password_check": bool(skip_password_check)},
                )
            except CommandExecutionError as exc:
                raise CommandExecutionError(
                    f"user {username} was created but MAS refused its password ({exc}); it has no password now:"
                    f" set one with `{__salt__['mas.mapdata']()['paths']['mas_cli']} manage set-password {username} ...`"
                ) from exc
    else:
        user_id = user["user_id"]
    if "admin" in changes:
        api.call("POST", f"/users/{user_id}/set-admin", json={"admin": bool(admin)})
    for email in changes.get("emails", {}).get("new", []):
        if email not in (user or {}).get("emails", []):
            api.call("POST", "/user-emails", expect=(201,), json={"user_id": user_id, "email": email})
    log.info("mas: user %s %s", username, "registered" if user is None else "updated" if changes else "unchanged")
    return {"username": username, "user_id": user_id, "created": user is None, "changes": changes}
