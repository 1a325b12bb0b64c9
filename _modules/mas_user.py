"""
Users of the ``mas`` formula in every phase: registration and the account lifecycle in whichever service is authoritative, registration tokens and bot tokens.

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
``skip_password_check`` turns it off. ``requests`` is the formula's one HTTP
client.

:depends: requests; zxcvbn-rs-py (the complexity check, with the zxcvbn crate MAS uses)
"""

import base64
import contextlib
import datetime
import grp
import hashlib
import hmac
import importlib.util
import json
import logging
import os
import pwd
import re
import secrets
import stat
import string
import time
import urllib.parse

from salt.exceptions import CommandExecutionError, SaltInvocationError

import mas_formula

mas_formula.refresh()
from mas_formula import grammar, secretfiles  # noqa: E402  (after the refresh: a synced update is imported anew)

# requests and zxcvbn are imported where they are used: the SLS files call this module on every run, and
# importing them costs more than the rest of what those calls do
HAS_REQUESTS = importlib.util.find_spec("requests") is not None

log = logging.getLogger(__name__)

__virtualname__ = "mas_user"

ON_CREATE, ALWAYS = "on_create", "always"
#: When a password from pillar is set: ``on_create`` or ``always`` (when it changed).
PASSWORD_UPDATES = (ON_CREATE, ALWAYS)
#: Page size of the admin API reads (MAS has no maximum).
PAGE = 1000
#: Default margin before a bot token's expiry when it is renewed (seconds).
RENEW_BEFORE = 86400
_CONTEXT = "mas_user.batch"
_ALNUM = string.ascii_letters + string.digits
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def __virtual__():
    if not HAS_REQUESTS:
        return (False, "The mas_user module needs the 'requests' Python package")
    return __virtualname__


# --------------------------------------------------------------------------
# Input
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


def _emails(emails):
    if emails is None:
        return []
    if isinstance(emails, str):
        emails = [emails]
    if not isinstance(emails, (list, tuple)):
        raise SaltInvocationError("emails: a list of email addresses is required")
    return [check_email(e) for e in emails]


def _password(password, password_file, password_pillar_key):
    given = [x for x in (password, password_file, password_pillar_key) if x is not None]
    if len(given) > 1:
        raise SaltInvocationError("give at most one of password, password_file, password_pillar_key")
    if password_file is not None:
        try:
            with open(password_file, encoding="utf-8") as handle:
                value = handle.read().rstrip("\n")
        except OSError as exc:
            raise SaltInvocationError(f"password_file: cannot read {password_file}: {exc.strerror}") from exc
        if not value:
            raise SaltInvocationError(f"password_file: {password_file} is empty")
        return value
    if password_pillar_key is not None:
        value = __salt__["mas_secret.pillar_value"](password_pillar_key)
        if value is None:
            raise SaltInvocationError(f"password_pillar_key: {password_pillar_key} is not set in pillar")
        return str(value)
    if password is not None and not isinstance(password, str):
        password = str(password)
    return password or None


def _check_strength(mas, secret, skip_password_check):
    """Refuse a password MAS would refuse (MAS's own rule: zxcvbn score >= passwords.minimum_complexity)."""
    if secret is None:
        return
    passwords = mas["mas_config"].get("passwords") or {}
    if mas["enabled"] and passwords.get("enabled", True) is False and _authority(mas) == "mas":
        raise SaltInvocationError("password: MAS has password authentication off (passwords.enabled: false)")
    if skip_password_check:
        return
    minimum = int(passwords.get("minimum_complexity", 3))
    try:
        from zxcvbn_rs_py import zxcvbn as _zxcvbn  # pylint: disable=import-outside-toplevel
    except ImportError:  # pragma: no cover - depends on the minion
        _zxcvbn = None
    if _zxcvbn is None:
        raise CommandExecutionError(
            "password: cannot check its strength, the Python package zxcvbn-rs-py is missing on the minion"
            " (install it, or pass skip_password_check=True)"
        )
    score = int(_zxcvbn(secret).score)
    if score < minimum:
        raise SaltInvocationError(
            f"password: too weak (zxcvbn score {score}, MAS requires {minimum}: passwords.minimum_complexity);"
            " choose a stronger one, or pass skip_password_check=True"
        )


# --------------------------------------------------------------------------
# Which service is authoritative
# --------------------------------------------------------------------------


def _authority(mas):
    return "mas" if mas["enabled"] and not mas["migration_in_progress"] else "synapse"


def _why_synapse(mas):
    if not mas["enabled"]:
        return "mas:enabled is false"
    return "mas:migration_in_progress is true; syn2mas carries Synapse's users to MAS"


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
    who = _authority(mas)
    reason = "MAS is enabled and not migrating" if who == "mas" else _why_synapse(mas)
    return {"authority": who, "reason": reason}


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------


class _Http:
    """One ``requests`` session per service (never through an http(s)_proxy: both are local)."""

    what = "the service"

    def __init__(self, timeout=30):
        import requests  # pylint: disable=import-outside-toplevel

        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False

    def send(self, method, url, **kwargs):
        import requests  # pylint: disable=import-outside-toplevel

        try:
            return self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise CommandExecutionError(
                f"{self.what} is not reachable at {url}: {exc.__class__.__name__}", info={"unreachable": True}
            ) from exc


def _json(resp, where):
    try:
        return resp.json() if resp.content else None
    except ValueError as exc:
        raise CommandExecutionError(f"{where}: the answer is not JSON") from exc


def _api_error(resp):
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    if isinstance(body, dict) and "errors" in body:
        return "; ".join(e.get("title", "") for e in body["errors"]) or resp.text[:200]
    if isinstance(body, dict) and ("errcode" in body or "error" in body):
        return f"{body.get('errcode', '')}: {body.get('error', '')}"
    return resp.text[:200]


class _AdminApi(_Http):
    """A client of MAS's admin API authenticated as the formula's client."""

    what = "MAS"

    def __init__(self, api, timeout=30, wait=0):
        super().__init__(timeout)
        self.api = api
        secret = secretfiles.read_text(api["client_secret_file"])
        if secret is None:
            raise CommandExecutionError(
                f"cannot read the admin client secret {api['client_secret_file']} (apply the mas state first)",
                info={"unreachable": True},
            )
        self._auth = (api["client_id"], secret.strip())
        self._login(wait)

    def _login(self, wait=0):
        deadline = time.monotonic() + float(wait)
        form = {"grant_type": "client_credentials", "scope": "urn:mas:admin"}
        while True:  # MAS may still be starting: wait up to `wait` seconds
            try:
                resp = self.send("POST", self.api["token_url"], auth=self._auth, data=form)
                break
            except CommandExecutionError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1)
        if resp.status_code != 200:
            raise CommandExecutionError(
                f"MAS refused the formula's admin client at {self.api['token_url']} ({resp.status_code}):"
                f" {_api_error(resp)} -- is MAS running with the config the formula wrote (clients,"
                " policy.data.admin_clients)?"
            )
        try:
            self.session.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"
        except (ValueError, KeyError) as exc:
            raise CommandExecutionError(f"MAS answered {self.api['token_url']} without an access token") from exc

    def call(self, method, path, expect=(200,), **kwargs):
        url = self.api["admin_url"] + path
        resp = self.send(method, url, **kwargs)
        if resp.status_code == 401:  # the client-credentials token expired during a long run
            self._login()
            resp = self.send(method, url, **kwargs)
        if resp.status_code not in expect:
            raise CommandExecutionError(
                f"MAS admin API {method} {path}: {resp.status_code} {_api_error(resp)}",
                info={"status": resp.status_code, "errors": _api_error(resp)},
            )
        return _json(resp, f"MAS admin API {method} {path}")

    def pages(self, path, params=None):
        """Every item of a collection, read in pages of :data:`PAGE` (cursor pagination)."""
        params = dict(params or {}, count="false")
        params["page[first]"] = str(PAGE)
        while True:
            query = urllib.parse.urlencode(params, safe="[]:")
            body = self.call("GET", f"{path}?{query}")
            yield from body["data"]
            if not body["data"] or "next" not in (body.get("links") or {}):
                return
            params["page[after]"] = body["data"][-1]["id"]

    def introspect(self, token):
        """MAS's answer about ``token`` (RFC 7662), asked as the formula's (confidential) client."""
        resp = self.send("POST", self.api["introspect_url"], auth=self._auth, data={"token": token})
        if resp.status_code != 200:
            raise CommandExecutionError(f"MAS introspection: {resp.status_code} {_api_error(resp)}")
        return _json(resp, "MAS introspection") or {}


# --------------------------------------------------------------------------
# MAS's side
# --------------------------------------------------------------------------


def _public(view):
    return None if view is None else {k: v for k, v in view.items() if not k.startswith("_")}


class _Mas:
    """Users in MAS, through its admin API."""

    authority = "mas"

    def __init__(self, mas, wait=0):
        self.mas = mas
        try:
            self.api = _AdminApi(mas["api"], wait=wait)
        except CommandExecutionError as exc:
            problem = __salt__["mas.runtime_problem"](mas)
            if problem and (getattr(exc, "info", None) or {}).get("unreachable"):
                raise CommandExecutionError(problem) from exc  # MAS cannot be running: say why
            raise
        self.directory = None
        self.tokens = None

    @staticmethod
    def _view(user, emails):
        attrs = user["attributes"]
        ids = {e["attributes"]["email"]: e["id"] for e in emails}
        return {
            "user_id": user["id"],
            "username": attrs["username"],
            "admin": bool(attrs["admin"]),
            "locked": attrs.get("locked_at") is not None,
            "deactivated": attrs.get("deactivated_at") is not None,
            "emails": sorted(ids),
            "_email_ids": ids,
        }

    def _refresh(self, view, user):
        fresh = self._view(user, [])
        fresh["emails"], fresh["_email_ids"] = view["emails"], view["_email_ids"]
        view.update(fresh)
        return view

    def prefetch(self):
        """Read every user and every email once (pages, not requests per user)."""
        by_user = {}
        for email in self.api.pages("/user-emails"):
            by_user.setdefault(email["attributes"]["user_id"], []).append(email)
        self.directory = {
            u["attributes"]["username"]: self._view(u, by_user.get(u["id"], [])) for u in self.api.pages("/users")
        }

    def find(self, username, create_admin=False):
        if self.directory is not None:
            return self.directory.get(username)
        found = self.api.call("GET", f"/users/by-username/{urllib.parse.quote(username)}", expect=(200, 404))
        if not found or "data" not in found:
            return None
        return self._view(found["data"], list(self.api.pages("/user-emails", {"filter[user]": found["data"]["id"]})))

    def create(self, username, secret, admin, skip_password_check):
        try:
            created = self.api.call("POST", "/users", expect=(201,), json={"username": username})["data"]
        except CommandExecutionError as exc:
            if (getattr(exc, "info", None) or {}).get("status") != 500:
                raise
            # MAS provisions the account on Synapse before it saves the user
            # (users/add.rs): a 500 is Synapse's refusal, and MAS kept nothing
            raise CommandExecutionError(
                f"Synapse refused to provision the account of {username} for MAS, so MAS did not create the user"
                f" (nothing was created): {exc.info.get('errors') or exc}. Check Synapse's log and its"
                " matrix_authentication_service settings (endpoint, secret)."
            ) from exc
        view = self._view(created, [])
        if self.directory is not None:
            self.directory[username] = view
        if secret is not None:
            try:
                self.set_password(view, secret, skip_password_check)
            except CommandExecutionError as exc:
                raise CommandExecutionError(
                    f"user {username} was created in MAS but MAS refused its password ({exc}); it has no password"
                    f" now: set one with `salt-call mas_user.set_password {username} password_file=...`"
                ) from exc
        if admin:
            self.set_admin(view, True)
        return view

    def set_password(self, view, secret, skip_password_check):
        body = {"password": secret, "skip_password_check": bool(skip_password_check)}
        self.api.call("POST", f"/users/{view['user_id']}/set-password", expect=(204,), json=body)

    def set_admin(self, view, admin):
        user = self.api.call("POST", f"/users/{view['user_id']}/set-admin", json={"admin": bool(admin)})["data"]
        self._refresh(view, user)

    def add_email(self, view, email):
        body = {"user_id": view["user_id"], "email": email}
        added = self.api.call("POST", "/user-emails", expect=(201,), json=body)["data"]
        view["_email_ids"][email] = added["id"]
        view["emails"] = sorted(view["_email_ids"])

    def remove_email(self, view, email):
        email_id = next(i for e, i in view["_email_ids"].items() if e.lower() == email.lower())
        self.api.call("DELETE", f"/user-emails/{email_id}", expect=(204,))
        view["_email_ids"] = {e: i for e, i in view["_email_ids"].items() if i != email_id}
        view["emails"] = sorted(view["_email_ids"])

    def set_locked(self, view, locked):
        user = self.api.call("POST", f"/users/{view['user_id']}/{'lock' if locked else 'unlock'}")["data"]
        self._refresh(view, user)

    def deactivate(self, view, erase):
        user = self.api.call("POST", f"/users/{view['user_id']}/deactivate", json={"skip_erase": not erase})["data"]
        self._refresh(view, user)

    def reactivate(self, view, secret):
        user = self.api.call("POST", f"/users/{view['user_id']}/reactivate")["data"]
        self._refresh(view, user)

    def close(self):
        self.directory = None


# --------------------------------------------------------------------------
# Synapse's side
# --------------------------------------------------------------------------


class _Synapse(_Http):
    """Users in Synapse: shared-secret registration and the admin API, as the formula's Synapse admin."""

    authority = "synapse"
    what = "Synapse"

    def __init__(self, mas):
        super().__init__()
        self.mas = mas
        self.url = mas["synapse"]["endpoint"].rstrip("/")
        self.admin_name = mas["synapse"]["formula_admin"]
        self.password_path = mas["paths"]["synapse_admin_password"]
        self._conf = None
        self._token = None
        self._device = None

    # -- Synapse's own configuration

    def _config(self):
        if self._conf is None:
            syn = self.mas["synapse"]
            self._conf = __salt__["mas_synapse.config"](
                syn["config_files"], syn["config_dir"], exclude=[self.mas["paths"]["synapse_dropin"]], mask=False
            )
        return self._conf

    @property
    def server_name(self):
        name = self._config()["config"].get("server_name") or self.mas.get("server_name")
        if not name:
            raise CommandExecutionError(
                f"Synapse's server_name is not set in its config files ({', '.join(self._config()['files']) or 'none'}"
                " found; mas:synapse:config_files / config_dir) nor in mas:server_name"
            )
        return name

    def user_id(self, localpart):
        return f"@{localpart}:{self.server_name}"

    def _shared_secret(self):
        conf = self._config()
        value = conf["config"].get("registration_shared_secret")
        if isinstance(value, str) and value:
            return value
        path = conf["config"].get("registration_shared_secret_path")
        if isinstance(path, str) and path:
            text = secretfiles.read_text(path)
            if text is None or not text.strip():
                raise CommandExecutionError(f"Synapse's registration_shared_secret_path {path} is missing or empty")
            return text.strip()
        raise CommandExecutionError(
            "Synapse is authoritative but its configuration has neither registration_shared_secret nor"
            f" registration_shared_secret_path (files read: {', '.join(conf['files']) or 'none'}; see"
            " mas:synapse:config_files and mas:synapse:config_dir): set one of them in Synapse's config so that the"
            " formula can register users there"
        )

    # -- HTTP

    def _request(self, method, path, expect=(200,), token=None, **kwargs):
        headers = {"Authorization": f"Bearer {token or self._token}"} if (token or self._token) else {}
        resp = self.send(method, self.url + path, headers=headers, **kwargs)
        body = _json(resp, f"Synapse {method} {path}") or {}
        if resp.status_code not in expect:
            raise CommandExecutionError(
                f"Synapse {method} {path}: {resp.status_code} {_api_error(resp)}", info={"status": resp.status_code}
            )
        return resp.status_code, body

    def _user_path(self, localpart, version="v2"):
        return f"/_synapse/admin/{version}/users/" + urllib.parse.quote(self.user_id(localpart), safe="")

    def _register(self, localpart, secret, admin, login=False):
        key = self._shared_secret()
        _, nonce = self._request("GET", "/_synapse/admin/v1/register")
        message = b"\x00".join(
            [nonce["nonce"].encode(), localpart.encode(), secret.encode(), b"admin" if admin else b"notadmin"]
        )
        body = {
            "nonce": nonce["nonce"],
            "username": localpart,
            "password": secret,
            "admin": bool(admin),
            "mac": hmac.new(key.encode(), message, hashlib.sha1).hexdigest(),
        }
        if login:
            body["device_id"] = self._new_device()
        else:
            body["inhibit_login"] = True
        status, answer = self._request("POST", "/_synapse/admin/v1/register", expect=(200, 400), json=body)
        if status == 400:
            if answer.get("errcode") == "M_USER_IN_USE":
                return None
            raise CommandExecutionError(f"Synapse refused to register {localpart}: {answer.get('error')}")
        return answer

    # -- the formula's admin session

    @staticmethod
    def _new_device():
        """A device ID that says when it was made (stale ones are recognised by it)."""
        return f"SALT{int(time.time())}" + "".join(secrets.choice(string.ascii_uppercase) for _ in range(4))

    def _login(self, secret):
        body = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": self.admin_name},
            "password": secret,
            "device_id": self._new_device(),
            "initial_device_display_name": "mas formula (Salt)",
        }
        for _ in range(4):  # Synapse rate-limits logins per account (rc_login): wait as told
            status, answer = self._request("POST", "/_matrix/client/v3/login", expect=(200, 401, 403, 429), json=body)
            if status != 429:
                break
            time.sleep(min(30.0, int(answer.get("retry_after_ms") or 1000) / 1000))
        if status != 200:
            raise CommandExecutionError(
                f"cannot log in to Synapse as the formula's admin account @{self.admin_name} ({answer.get('errcode')}:"
                f" {answer.get('error')}); its password is in {self.password_path}. Reset it with Synapse's admin"
                " API, or set mas:synapse:formula_admin to a new account name"
            )
        return answer

    def _forget_stale_devices(self):
        """A run that died before logging out left a device (and its token): remove them."""
        path = self._user_path(self.admin_name) + "/devices"
        _, answer = self._request("GET", path)
        stale = []
        for device in answer.get("devices", []):
            made = re.fullmatch(r"SALT(\d+)[A-Z]{4}", device["device_id"])
            # another run's device is kept while it may still be working (an hour)
            if device["device_id"] != self._device and (made is None or time.time() - int(made.group(1)) > 3600):
                stale.append(device["device_id"])
        if stale:
            path = self._user_path(self.admin_name) + "/delete_devices"
            self._request("POST", path, json={"devices": stale})

    def admin_session(self, create):
        """Log in as the formula's Synapse admin (``create``: register it first when it does not exist yet).
        Returns False when there is none and ``create`` is false."""
        if self._token:
            return True
        secret = secretfiles.read_text(self.password_path)
        if secret:
            answer = self._login(secret.strip())
        elif not create:
            return False
        else:
            secret = "".join(secrets.choice(_ALNUM) for _ in range(40))
            directory = os.path.dirname(self.password_path)
            os.makedirs(directory, mode=0o700, exist_ok=True)
            __salt__["mas_secret.atomic_write"](self.password_path, secret + "\n")
            try:
                answer = self._register(self.admin_name, secret, admin=True, login=True)
            except CommandExecutionError:
                os.unlink(self.password_path)
                raise
            if answer is None:
                os.unlink(self.password_path)
                raise CommandExecutionError(
                    f"the formula's Synapse admin account @{self.admin_name} exists already, but its password file"
                    f" {self.password_path} is missing: set mas:synapse:formula_admin to an unused name, or put"
                    " the account's password into that file (root, 0600)"
                )
            log.info("mas_user: created the formula's Synapse admin account @%s", self.admin_name)
        self._token, self._device = answer["access_token"], answer.get("device_id")
        self._forget_stale_devices()
        return True

    def close(self):
        if self._token:
            with contextlib.suppress(CommandExecutionError):
                self._request("POST", "/_matrix/client/v3/logout", json={})
        self._token = self._device = None

    # -- users

    def _view(self, localpart, body):
        emails = {t["address"]: None for t in body.get("threepids") or [] if t.get("medium") == "email"}
        return {
            "user_id": self.user_id(localpart),
            "username": localpart,
            "admin": bool(body.get("admin")),
            "locked": bool(body.get("locked")),
            "deactivated": bool(body.get("deactivated")),
            "emails": sorted(emails),
            "_threepids": [
                {"medium": t["medium"], "address": t["address"]} for t in body.get("threepids") or [] if "medium" in t
            ],
        }

    def find(self, localpart, create_admin=False):
        if not self.admin_session(create_admin):
            return _UNKNOWN
        status, body = self._request("GET", self._user_path(localpart), expect=(200, 404))
        return self._view(localpart, body) if status == 200 else None

    def _put(self, view, body):
        _, answer = self._request("PUT", self._user_path(view["username"]), json=body)
        fresh = self._view(view["username"], answer)
        view.update(fresh)
        return view

    def create(self, localpart, secret, admin, skip_password_check):
        # Synapse's registration needs a password: without one the account gets a random one, never kept
        given = secret if secret is not None else "".join(secrets.choice(_ALNUM) for _ in range(40))
        if self._register(localpart, given, admin) is None:
            raise CommandExecutionError(f"Synapse says {self.user_id(localpart)} is in use (it appeared meanwhile)")
        view = self.find(localpart)
        if view in (None, _UNKNOWN):
            view = {"user_id": self.user_id(localpart), "username": localpart, "admin": bool(admin)}
            view.update(locked=False, deactivated=False, emails=[], _threepids=[])
        return view

    def set_password(self, view, secret, skip_password_check):
        path = "/_synapse/admin/v1/reset_password/" + urllib.parse.quote(view["user_id"], safe="")
        self._request("POST", path, json={"new_password": secret, "logout_devices": False})

    def set_admin(self, view, admin):
        self._put(view, {"admin": bool(admin)})

    def add_email(self, view, email):
        self._put(view, {"threepids": view["_threepids"] + [{"medium": "email", "address": email}]})

    def remove_email(self, view, email):
        keep = [t for t in view["_threepids"] if not (t["medium"] == "email" and t["address"].lower() == email.lower())]
        self._put(view, {"threepids": keep})

    def set_locked(self, view, locked):
        self._put(view, {"locked": bool(locked)})

    def deactivate(self, view, erase):
        path = "/_synapse/admin/v1/deactivate/" + urllib.parse.quote(view["user_id"], safe="")
        self._request("POST", path, json={"erase": bool(erase)})
        view["deactivated"] = True

    def reactivate(self, view, secret):
        if secret is None:
            raise SaltInvocationError(
                f"{view['user_id']} is deactivated in Synapse; Synapse reactivates an account only with a new"
                " password: give one (password_file / password_pillar_key)"
            )
        self._put(view, {"deactivated": False, "password": secret})


#: A Synapse user whose existence cannot be read yet (no formula admin account so far).
_UNKNOWN = {"unknown": True}


# --------------------------------------------------------------------------
# Sessions: one per call, or one per state run (batch)
# --------------------------------------------------------------------------


def _backend(mas, wait):
    return _Mas(mas, wait=wait) if _authority(mas) == "mas" else _Synapse(mas)


def _session(batch, wait=0):
    if not batch:
        mas = __salt__["mas.mapdata"]()
        return mas, _backend(mas, wait)
    ctx = __context__.setdefault(_CONTEXT, {})
    if "map" not in ctx:
        ctx["map"] = __salt__["mas.mapdata"]()
    mas = ctx["map"]
    who = _authority(mas)
    backend = ctx.get(who)
    if isinstance(backend, Exception):
        raise backend  # a failed connection fails every state of the run at once, not after a wait each
    if backend is None:
        try:
            backend = _backend(mas, wait)
            if who == "mas":
                backend.prefetch()
        except (CommandExecutionError, SaltInvocationError) as exc:
            ctx[who] = exc
            raise
        ctx[who] = backend
    return mas, backend


@contextlib.contextmanager
def _opened(batch=False, wait=0):
    mas, backend = _session(batch, wait)
    try:
        yield mas, backend
    finally:
        if not batch:
            backend.close()


def close():
    """
    End this run's shared sessions (``batch``): log out of Synapse (the
    formula admin's token is then gone) and forget MAS's users read for the
    run. The ``mas_user.sessions_closed`` state calls it last.

    CLI Example:

    .. code-block:: bash

        salt-call mas_user.close
    """
    ctx = __context__.pop(_CONTEXT, {})
    closed = []
    for who in ("mas", "synapse"):
        backend = ctx.get(who)
        if backend is not None and not isinstance(backend, Exception):
            backend.close()
            closed.append(who)
    return {"closed": closed}


# --------------------------------------------------------------------------
# Password fingerprints (password_update: always)
# --------------------------------------------------------------------------


def _b64(data):
    return base64.b64encode(data).decode()


def _fingerprint(secret, salt=None):
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${_b64(salt)}${_b64(digest)}"


def _fingerprint_matches(stored, secret):
    try:
        _, n, r, p, salt, digest = stored.split("$")
        salt = base64.b64decode(salt)
        want = base64.b64decode(digest)
        got = hashlib.scrypt(secret.encode(), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def _fingerprints(mas):
    text = secretfiles.read_text(mas["paths"]["password_fingerprints"])
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}


def _remember_password(mas, username, secret):
    path = mas["paths"]["password_fingerprints"]
    stored = _fingerprints(mas)
    stored[username] = _fingerprint(secret)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    __salt__["mas_secret.atomic_write"](path, json.dumps(stored, indent=1, sort_keys=True) + "\n")


def _password_differs(mas, username, secret):
    stored = _fingerprints(mas).get(username)
    return stored is None or not _fingerprint_matches(stored, secret)


# --------------------------------------------------------------------------
# Plan and register
# --------------------------------------------------------------------------


def _changes(mas, view, username, admin, emails, locked, secret, password_update):
    changes = {}
    if view is None:
        changes["user"] = {"old": None, "new": username}
        if secret is not None:
            changes["password"] = {"old": None, "new": "set"}
        current = {"admin": False, "emails": [], "locked": False}
    else:
        current = view
        if view["deactivated"]:
            changes["deactivated"] = {"old": True, "new": False}
        if secret is not None and password_update == ALWAYS and _password_differs(mas, username, secret):
            changes["password"] = {"old": "set", "new": "updated"}
    if bool(admin) != current["admin"]:
        changes["admin"] = {"old": current["admin"], "new": bool(admin)}
    have = {e.lower() for e in current["emails"]}
    missing = [e for e in emails if e.lower() not in have]
    if missing:
        changes["emails"] = {"old": list(current["emails"]), "new": sorted(list(current["emails"]) + missing)}
    if locked is not None and bool(locked) != current["locked"]:
        changes["locked"] = {"old": current["locked"], "new": bool(locked)}
    return changes


def _to_set(secret, changes):
    """The password only when it will be set (a new user, an update, a reactivation): an
    existing user's password is never judged again."""
    return secret if "password" in changes or "deactivated" in changes else None


def _check_update_mode(password_update):
    if password_update not in PASSWORD_UPDATES:
        raise SaltInvocationError(f"password_update: must be one of {', '.join(PASSWORD_UPDATES)}")


def plan(
    username,
    admin=False,
    emails=None,
    password=None,
    password_file=None,
    password_pillar_key=None,
    locked=None,
    password_update=ON_CREATE,
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
    username = check_username(username)
    emails = _emails(emails)
    _check_update_mode(password_update)
    secret = _password(password, password_file, password_pillar_key)
    with _opened(batch, wait) as (mas, backend):
        view = backend.find(username)
        unverified = view is _UNKNOWN
        view = None if unverified else view
        changes = _changes(mas, view, username, admin, emails, locked, secret, password_update)
        _check_strength(mas, _to_set(secret, changes), skip_password_check)
        out = {"authority": backend.authority, "user": _public(view), "changes": changes}
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
    password_update=ON_CREATE,
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
    username = check_username(username)
    emails = _emails(emails)
    _check_update_mode(password_update)
    secret = _password(password, password_file, password_pillar_key)
    with _opened(batch) as (mas, backend):
        view = backend.find(username, create_admin=True)
        if view is not None and not exists_ok:
            raise CommandExecutionError("User already exists")
        changes = _changes(mas, view, username, admin, emails, locked, secret, password_update)
        _check_strength(mas, _to_set(secret, changes), skip_password_check)
        if view is None:
            view = backend.create(username, secret, admin, skip_password_check)
        else:
            if view["deactivated"]:
                backend.reactivate(view, secret)
            if "password" in changes:
                backend.set_password(view, secret, skip_password_check)
            if "admin" in changes:
                backend.set_admin(view, admin)
        for email in emails:
            if email.lower() not in {e.lower() for e in view["emails"]}:
                backend.add_email(view, email)
        if "locked" in changes:
            backend.set_locked(view, locked)
        if secret is not None and password_update == ALWAYS and "password" in changes:
            _remember_password(mas, username, secret)
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
    username = check_username(username)
    with _opened() as (_, backend):
        view = backend.find(username)
        if view is _UNKNOWN:
            raise CommandExecutionError(
                "cannot look users up in Synapse yet: the formula's Synapse admin account"
                " (mas:synapse:formula_admin) is created by the first mas_user.register"
            )
        return None if view is None else dict(_public(view), authority=backend.authority)


# --------------------------------------------------------------------------
# Lifecycle
# --------------------------------------------------------------------------


def _existing(backend, username, missing_ok=False):
    view = backend.find(username, create_admin=True)
    if view is None and not missing_ok:
        raise CommandExecutionError(
            f"there is no user {username} in {'MAS' if backend.authority == 'mas' else 'Synapse'}"
        )
    return view


def _lifecycle(username, key, wanted, apply, batch=False, missing_ok=False):
    """Bring one attribute of an existing user to ``wanted``: ``{authority, username, exists, changes}``."""
    username = check_username(username)
    with _opened(batch) as (_, backend):
        view = _existing(backend, username, missing_ok)
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
    username = check_username(username)
    secret = _password(password, password_file, password_pillar_key)
    if secret is None:
        raise SaltInvocationError("a password is required (password_file or password_pillar_key)")
    with _opened() as (mas, backend):
        _check_strength(mas, secret, skip_password_check)
        view = _existing(backend, username)
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
    username = check_username(username)
    email = check_email(email)
    with _opened() as (_, backend):
        view = _existing(backend, username)
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
# Registration tokens (MAS)
# --------------------------------------------------------------------------


def _require_mas(mas, what):
    if _authority(mas) != "mas":
        raise CommandExecutionError(f"{what} are MAS's and MAS is not authoritative ({_why_synapse(mas)})")


def _when(text):
    if text is None:
        return None
    return datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00")).astimezone(datetime.UTC)


def _stamp(moment):
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _token_path(mas, name):
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", str(name)):
        raise SaltInvocationError(f"name: {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return os.path.join(mas["paths"]["registration_tokens_dir"], name)


def _registration_tokens(backend):
    if backend.tokens is None:
        backend.tokens = {t["attributes"]["token"]: t for t in backend.api.pages("/user-registration-tokens")}
    return backend.tokens


def _token_changes(found, usage_limit, expires, revoked):
    attrs = found["attributes"] if found else {"usage_limit": None, "expires_at": None, "revoked_at": None}
    changes = {}
    if attrs.get("usage_limit") != usage_limit:
        changes["usage_limit"] = {"old": attrs.get("usage_limit"), "new": usage_limit}
    old_expiry = _stamp(_when(attrs.get("expires_at")))
    if old_expiry != _stamp(_when(expires)):
        changes["expires"] = {"old": old_expiry, "new": _stamp(_when(expires))}
    if (attrs.get("revoked_at") is not None) != bool(revoked):
        changes["revoked"] = {"old": attrs.get("revoked_at") is not None, "new": bool(revoked)}
    return changes


def _check_token_args(usage_limit, expires):
    if usage_limit is not None and (isinstance(usage_limit, bool) or not isinstance(usage_limit, int)):
        raise SaltInvocationError("usage_limit: a number of uses, or None for unlimited")
    try:
        _when(expires)
    except ValueError as exc:
        raise SaltInvocationError(f"expires: {expires!r} is not an RFC 3339 time (2030-01-31T00:00:00Z)") from exc


def registration_token_plan(name, usage_limit=None, expires=None, revoked=False, batch=False):
    """
    What :py:func:`registration_token_ensure` would change for the
    registration token ``name``, changing nothing: ``{name, path, changes}``.
    The token's value is never returned.

    CLI Example:

    .. code-block:: bash

        salt-call mas_user.registration_token_plan friends usage_limit=10
    """
    _check_token_args(usage_limit, expires)
    with _opened(batch) as (mas, backend):
        _require_mas(mas, "registration tokens")
        path = _token_path(mas, name)
        value = secretfiles.read_text(path)
        found = _registration_tokens(backend).get(value.strip()) if value else None
        changes = _token_changes(found, usage_limit, expires, revoked)
        if found is None:
            changes["token"] = {"old": None, "new": "created" if value is None else "created from its file"}
        return {"name": name, "path": path, "changes": changes}


def registration_token_ensure(name, usage_limit=None, expires=None, revoked=False, batch=False):
    """
    Keep the MAS user registration token ``name`` as wanted: created once
    (24 random letters and digits, written first to
    ``<base_path>/registration-tokens/<name>``, root 0600), then its
    ``usage_limit`` (``None``: unlimited), ``expires`` (RFC 3339, ``None``:
    never) and ``revoked`` kept in sync through MAS's admin API. Returns
    ``{name, path, changes}``, never the value: hand the file's content out.

    CLI Example:

    .. code-block:: bash

        salt-call mas_user.registration_token_ensure friends usage_limit=10 expires=2030-01-31T00:00:00Z
    """
    _check_token_args(usage_limit, expires)
    with _opened(batch) as (mas, backend):
        _require_mas(mas, "registration tokens")
        path = _token_path(mas, name)
        value = secretfiles.read_text(path)
        value = value.strip() if value else None
        tokens = _registration_tokens(backend)
        found = tokens.get(value) if value else None
        changes = _token_changes(found, usage_limit, expires, revoked)
        if found is None:
            changes["token"] = {"old": None, "new": "created"}
            if value is None:
                value = "".join(secrets.choice(_ALNUM) for _ in range(24))
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                __salt__["mas_secret.atomic_write"](path, value + "\n")
                __salt__["mas_secret.record"](path, mas["secret_owner"])  # the formula's (mas:clean:purge)
            body = {"token": value, "usage_limit": usage_limit, "expires_at": _stamp(_when(expires))}
            found = backend.api.call("POST", "/user-registration-tokens", expect=(201,), json=body)["data"]
            tokens[value] = found
        else:
            update = {}
            if "usage_limit" in changes:
                update["usage_limit"] = usage_limit
            if "expires" in changes:
                update["expires_at"] = _stamp(_when(expires))
            if update:
                found = backend.api.call("PUT", f"/user-registration-tokens/{found['id']}", json=update)["data"]
        if bool(revoked) != (found["attributes"].get("revoked_at") is not None):
            action = "revoke" if revoked else "unrevoke"
            found = backend.api.call("POST", f"/user-registration-tokens/{found['id']}/{action}")["data"]
        tokens[value] = found
        return {"name": name, "path": path, "changes": changes}


# --------------------------------------------------------------------------
# Bot tokens (MAS personal sessions)
# --------------------------------------------------------------------------


def _bot_device(username, path):
    return "SALT" + hashlib.sha256(f"{username}\0{path}".encode()).hexdigest()[:10].upper()


#: MSC2967's unstable scope prefix and the stable one MAS treats as the same (introspection answers both forms).
_UNSTABLE_CLIENT_SCOPE, _STABLE_CLIENT_SCOPE = "urn:matrix:org.matrix.msc2967.client:", "urn:matrix:client:"


def _scope_key(scope):
    """A scope to compare: tokens sorted and deduplicated, the unstable client scopes in their stable form
    (MAS's introspection adds the other form of every client API and device scope)."""
    tokens = {
        _STABLE_CLIENT_SCOPE + t[len(_UNSTABLE_CLIENT_SCOPE) :] if t.startswith(_UNSTABLE_CLIENT_SCOPE) else t
        for t in (scope or "").split()
    }
    return " ".join(sorted(tokens))


def _bot_scope(username, path, scope, device_id, synapse_admin):
    if scope:
        return " ".join(sorted(scope.split()))
    parts = ["urn:matrix:client:api:*", f"urn:matrix:client:device:{device_id or _bot_device(username, path)}"]
    if synapse_admin:
        parts.append("urn:synapse:admin:*")
    return " ".join(sorted(parts))


def _session_name(path):
    return f"Salt bot token {path}"


def _file_owner(owner, group):
    """``(user, group, uid, gid)`` of a token file: root by default; the group defaults to the owner's own."""
    user = owner or "root"
    try:
        entry = pwd.getpwnam(user)
        group = group or grp.getgrgid(entry.pw_gid).gr_name
        gid = grp.getgrnam(group).gr_gid
    except KeyError as exc:
        raise SaltInvocationError(f"owner/group: {exc.args[0]} does not exist on the minion") from exc
    return user, group, entry.pw_uid, gid


def _owner_ok(path, owner, group):
    _, _, uid, gid = _file_owner(owner, group)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return (
        stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600 and (info.st_uid, info.st_gid) == (uid, gid)
    )


def _personal_sessions(backend, view, path):
    """The formula's active personal sessions for ``path``, or None when this MAS has no personal sessions."""
    filters = {"filter[actor_user]": view["user_id"], "filter[status]": "active"}
    try:
        found = list(backend.api.pages("/personal-sessions", filters))
    except CommandExecutionError as exc:
        if (exc.info or {}).get("status") == 404:
            return None  # a MAS before personal sessions: compatibility tokens instead
        raise
    return [s for s in found if s["attributes"]["human_name"] == _session_name(path)]


def _bot_check(backend, username, path, scope, expires_in, renew_before, owner, group, missing_ok=False):
    """What the bot's token needs: ``{action, reason, view, session, sessions, personal}`` with action ``none``,
    ``fix-mode``, ``regenerate`` (personal session) or ``create`` (new session, or a compatibility token)."""
    view = backend.find(username)
    if view is None and missing_ok:  # a prediction: the user is registered by an earlier state of the run
        return {"action": "create", "reason": "the user is not registered yet", "personal": True}
    if view is None or view["deactivated"]:
        state = "does not exist" if view is None else "is deactivated"
        raise CommandExecutionError(f"bot token: the MAS user {username} {state} (list it in mas:users first)")
    sessions = _personal_sessions(backend, view, path)
    personal = sessions is not None
    same_scope = [s for s in sessions or [] if _scope_key(s["attributes"]["scope"]) == _scope_key(scope)]
    session = same_scope[0] if same_scope else None
    found = {"view": view, "session": session, "sessions": sessions or [], "personal": personal}
    renew = "regenerate" if session else "create"
    value = secretfiles.read_text(path)
    if not value or not value.strip():
        return dict(found, action=renew, reason="no token file")
    answer = backend.api.introspect(value.strip())
    if not answer.get("active"):
        return dict(found, action=renew, reason="token no longer valid")
    if answer.get("username") != username or _scope_key(answer.get("scope")) != _scope_key(scope):
        return dict(found, action=renew, reason="token of another user or scope")
    expiry = answer.get("exp")
    if personal and (expiry is None) != (expires_in is None):
        return dict(found, action=renew, reason="expiry policy changed")
    if expiry is not None and expiry - time.time() <= renew_before:
        return dict(found, action=renew, reason="token expires soon")
    if not _owner_ok(path, owner, group):
        return dict(found, action="fix-mode", reason="owner or mode")
    return dict(found, action="none", reason="valid")


def _create_session(backend, body, attempts=20):
    """``POST /personal-sessions``. MAS puts the session's device on Synapse first; a user MAS created
    moments ago may not be provisioned there yet (MAS's job queue): retry that for a while."""
    for attempt in range(attempts):
        try:
            return backend.api.call("POST", "/personal-sessions", expect=(201,), json=body)["data"]
        except CommandExecutionError as exc:
            if attempt == attempts - 1 or (exc.info or {}).get("status") != 500 or "provision" not in str(exc):
                raise
            time.sleep(1)
    raise AssertionError("unreachable")  # pragma: no cover


def _compat_token(mas, username, scope, synapse_admin):
    """A compatibility token from ``mas-cli manage issue-compatibility-token`` (never logged)."""
    devices = [
        t[len("urn:matrix:client:device:") :] for t in scope.split() if t.startswith("urn:matrix:client:device:")
    ]
    extra = (
        set(scope.split())
        - {"urn:matrix:client:api:*", "urn:synapse:admin:*"}
        - {f"urn:matrix:client:device:{d}" for d in devices}
    )
    if len(devices) != 1 or extra:
        raise SaltInvocationError(
            "scope: this MAS has no personal sessions; a compatibility token carries only the client API, one device"
            " and (synapse_admin) urn:synapse:admin:*"
        )
    argv = [mas["paths"]["mas_cli"], "manage", "issue-compatibility-token", username, devices[0]]
    if synapse_admin:
        argv.append("--yes-i-want-to-grant-synapse-admin-privileges")
    res = __salt__["cmd.run_all"](argv, python_shell=False, output_loglevel="quiet", ignore_retcode=True)
    found = re.search(r"Compatibility token issued: (mct_\S+)", (res.get("stderr") or "") + (res.get("stdout") or ""))
    if res.get("retcode") != 0 or found is None:
        tail = __salt__["mas_secret.scrub"](((res.get("stderr") or "") + (res.get("stdout") or ""))[-600:])
        raise CommandExecutionError(f"mas-cli manage issue-compatibility-token failed ({res.get('retcode')}): {tail}")
    return found.group(1)


def _bot_args(username, path, owner, group, scope, device_id, expires_in, renew_before, synapse_admin):
    username = check_username(username)
    if not isinstance(path, str) or not os.path.isabs(path) or ".." in path.split("/"):
        raise SaltInvocationError(f"path: {path!r} must be an absolute file path")
    if expires_in is not None and (not isinstance(expires_in, int) or expires_in < 60):
        raise SaltInvocationError("expires_in: seconds (>= 60), or None for a token that does not expire")
    scope = _bot_scope(username, path, scope, device_id, synapse_admin)
    return username, path, scope, int(renew_before or 0)


def bot_token_status(
    username,
    path,
    owner=None,
    group=None,
    scope=None,
    device_id=None,
    expires_in=None,
    renew_before=RENEW_BEFORE,
    synapse_admin=False,
    batch=False,
):
    """
    Whether the bot's token file at ``path`` holds a valid token of
    ``username`` (asked to MAS's introspection as the formula's client), and
    what :py:func:`bot_token` would do: ``{username, path, action: none |
    fix-mode | regenerate | create, reason}``. Never shows the token.

    CLI Example:

    .. code-block:: bash

        salt-call mas_user.bot_token_status bot.alerts /var/lib/alerts/token owner=alerts
    """
    username, path, scope, renew_before = _bot_args(
        username, path, owner, group, scope, device_id, expires_in, renew_before, synapse_admin
    )
    with _opened(batch) as (mas, backend):
        _require_mas(mas, "bot tokens")
        check = _bot_check(backend, username, path, scope, expires_in, renew_before, owner, group, missing_ok=True)
        return {"username": username, "path": path, "action": check["action"], "reason": check["reason"]}


def bot_token(
    username,
    path,
    owner=None,
    group=None,
    scope=None,
    device_id=None,
    expires_in=None,
    renew_before=RENEW_BEFORE,
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
    valid token is kept; one that expires within ``renew_before`` seconds (or
    is revoked) is regenerated in the same session, the old one revoked.
    ``expires_in``: lifetime of a new token in seconds (``None``: no expiry).
    A MAS without personal sessions (its admin API answers 404) gets a
    compatibility token instead (``mas-cli manage issue-compatibility-token``,
    same scope; it does not expire, so ``expires_in`` does not apply), issued
    again whenever it is no longer valid.
    Returns ``{username, path, changes}``; the token is never returned or logged.

    CLI Example:

    .. code-block:: bash

        salt-call mas_user.bot_token bot.alerts /var/lib/alerts/token owner=alerts expires_in=2592000
    """
    username, path, scope, renew_before = _bot_args(
        username, path, owner, group, scope, device_id, expires_in, renew_before, synapse_admin
    )
    if not os.path.isdir(os.path.dirname(path)):
        raise SaltInvocationError(f"path: the directory {os.path.dirname(path)} does not exist")
    user, group, _, _ = _file_owner(owner, group)
    with _opened(batch) as (mas, backend):
        _require_mas(mas, "bot tokens")
        check = _bot_check(backend, username, path, scope, expires_in, renew_before, owner, group)
        action, reason, session = check["action"], check["reason"], check["session"]
        changes = {}
        if action in ("create", "regenerate") and not check["personal"]:
            token = _compat_token(mas, username, scope, synapse_admin)
            __salt__["mas_secret.atomic_write"](path, token + "\n", mode="0600", user=user, group=group)
            changes["token"] = {"old": reason, "new": "issued (compatibility token: this MAS has no personal sessions)"}
        elif action in ("create", "regenerate"):
            body = {} if expires_in is None else {"expires_in": int(expires_in)}
            if action == "regenerate":
                url = f"/personal-sessions/{session['id']}/regenerate"
                issued = backend.api.call("POST", url, expect=(201,), json=body)["data"]
            else:
                body.update(actor_user_id=check["view"]["user_id"], human_name=_session_name(path), scope=scope)
                issued = _create_session(backend, body)
            token = issued["attributes"]["access_token"]
            __salt__["mas_secret.atomic_write"](path, token + "\n", mode="0600", user=user, group=group)
            for stale in check["sessions"]:
                if stale["id"] != issued["id"]:
                    backend.api.call("POST", f"/personal-sessions/{stale['id']}/revoke", expect=(200, 409))
            changes["token"] = {"old": reason, "new": "issued" if action == "create" else "regenerated"}
        elif action == "fix-mode":
            __salt__["mas_secret.atomic_write"](path, secretfiles.read_text(path), mode="0600", user=user, group=group)
            changes["mode"] = {"old": reason, "new": f"0600 {user}:{group}"}
        return {"username": username, "path": path, "changes": changes}


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
