"""MAS's side of the users: a client of MAS's admin API, logged in as the formula's own OAuth2 client, and the user backend over it.

The formula is its own confidential client of MAS (``client_credentials``,
scope ``urn:mas:admin``; client id and secret file in the map's ``api``). Its
token is renewed when MAS answers 401 during a long run. Collections are read
in pages of :data:`PAGE` (cursor pagination); a state run reads every user and
every email once (:meth:`Backend.prefetch`).
"""

import time
import urllib.parse

from salt.exceptions import CommandExecutionError

from mas_formula import http, secretfiles

#: Page size of the admin API reads (MAS has no maximum).
PAGE = 1000


class AdminApi(http.Client):
    """A client of MAS's admin API authenticated as the formula's client (``api``: the map's ``api``)."""

    def __init__(self, api, timeout=30, wait=0):
        super().__init__("MAS", timeout)
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
                f" {http.error_text(resp)} -- is MAS running with the config the formula wrote (clients,"
                " policy.data.admin_clients)?"
            )
        try:
            self.session.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"
        except (ValueError, KeyError) as exc:
            raise CommandExecutionError(f"MAS answered {self.api['token_url']} without an access token") from exc

    def call(self, method, path, expect=(200,), **kwargs):
        """The JSON answer of the admin API to ``method path``; ``CommandExecutionError`` with ``info["status"]``
        and ``info["errors"]`` for any status but ``expect``."""
        url = self.api["admin_url"] + path
        resp = self.send(method, url, **kwargs)
        if resp.status_code == 401:  # the client-credentials token expired during a long run
            self._login()
            resp = self.send(method, url, **kwargs)
        if resp.status_code not in expect:
            errors = http.error_text(resp)
            raise CommandExecutionError(
                f"MAS admin API {method} {path}: {resp.status_code} {errors}",
                info={"status": resp.status_code, "errors": errors},
            )
        return http.json_body(resp, f"MAS admin API {method} {path}")

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
            raise CommandExecutionError(f"MAS introspection: {resp.status_code} {http.error_text(resp)}")
        return http.json_body(resp, "MAS introspection") or {}


class Backend:
    """Users in MAS, through its admin API. ``runtime_problem(mas)``: why MAS cannot be running on this
    minion ("" when nothing is known), said instead of "not reachable" when MAS does not answer."""

    authority = "mas"

    def __init__(self, mas, wait=0, runtime_problem=None):
        self.mas = mas
        try:
            self.api = AdminApi(mas["api"], wait=wait)
        except CommandExecutionError as exc:
            problem = runtime_problem(mas) if runtime_problem else ""
            if problem and (getattr(exc, "info", None) or {}).get("unreachable"):
                raise CommandExecutionError(problem) from exc  # MAS cannot be running: say why
            raise
        self.directory = None
        #: MAS's registration tokens read for this session (:mod:`mas_formula.tokens`), by value.
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
        """The view of ``username``, or None when MAS has no such user."""
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
        self.tokens = None
        self.api.close()
