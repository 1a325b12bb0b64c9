"""Synapse's side of the users while Synapse is authoritative: shared-secret registration, the formula's own Synapse admin account and its session, and the user backend over Synapse's admin API.

Users are registered with Synapse's shared-secret registration API
(``/_synapse/admin/v1/register``, nonce + HMAC-SHA1; the secret is
``registration_shared_secret`` or the file of
``registration_shared_secret_path`` in Synapse's own config) and managed with
Synapse's admin API, logged in as the formula's Synapse admin account
(``mas:synapse:formula_admin``). That account's password is generated on the
minion and kept only in a root-only 0600 file; its access token lives in this
process's memory for one call (or one state run) and is logged out at the end.
"""

import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import string
import time
import urllib.parse

from salt.exceptions import CommandExecutionError, SaltInvocationError

from mas_formula import http, secretfiles, users

log = logging.getLogger(__name__)


class Backend(http.Client):
    """Users in Synapse: shared-secret registration and the admin API, as the formula's Synapse admin.
    ``read_config()``: Synapse's configuration as it loads it, unmasked (``{"config", "files"}``)."""

    authority = "synapse"

    def __init__(self, mas, read_config):
        super().__init__("Synapse")
        self.mas = mas
        self.url = mas["synapse"]["endpoint"].rstrip("/")
        self.admin_name = mas["synapse"]["formula_admin"]
        self.password_path = mas["paths"]["synapse_admin_password"]
        self._read_config = read_config
        self._conf = None
        self._token = None
        self._device = None

    # -- Synapse's own configuration

    def _config(self):
        if self._conf is None:
            self._conf = self._read_config()
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

    def shared_secret(self):
        """Synapse's registration shared secret, from its config or the file its config names."""
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
        body = http.json_body(resp, f"Synapse {method} {path}") or {}
        if resp.status_code not in expect:
            raise CommandExecutionError(
                f"Synapse {method} {path}: {resp.status_code} {http.error_text(resp)}",
                info={"status": resp.status_code},
            )
        return resp.status_code, body

    def _user_path(self, localpart, version="v2"):
        return f"/_synapse/admin/{version}/users/" + urllib.parse.quote(self.user_id(localpart), safe="")

    def _register(self, localpart, secret, admin, login=False):
        key = self.shared_secret()
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
            secret = users.random_password()
            directory = os.path.dirname(self.password_path)
            os.makedirs(directory, mode=0o700, exist_ok=True)
            secretfiles.atomic_write(self.password_path, secret + "\n")
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
        super().close()

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
        """The view of ``localpart``, None when Synapse has no such user, or :data:`users.UNKNOWN` when the
        formula's admin account does not exist yet (and ``create_admin`` is false)."""
        if not self.admin_session(create_admin):
            return users.UNKNOWN
        status, body = self._request("GET", self._user_path(localpart), expect=(200, 404))
        return self._view(localpart, body) if status == 200 else None

    def _put(self, view, body):
        _, answer = self._request("PUT", self._user_path(view["username"]), json=body)
        fresh = self._view(view["username"], answer)
        view.update(fresh)
        return view

    def create(self, localpart, secret, admin, skip_password_check):
        # Synapse's registration needs a password: without one the account gets a random one, never kept
        given = secret if secret is not None else users.random_password()
        if self._register(localpart, given, admin) is None:
            raise CommandExecutionError(f"Synapse says {self.user_id(localpart)} is in use (it appeared meanwhile)")
        view = self.find(localpart)
        if view is None or view is users.UNKNOWN:
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
