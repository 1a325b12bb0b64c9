"""The ``compat`` resource: the legacy Matrix login API served by MAS.

Routes, for any single-segment client API version (``v3``, ``r0``, ``unstable``...):

* ``GET  /_matrix/client/{v}/login``: the flows, with the SSO flow marked
  ``oauth_aware_preferred`` (how doctor and clients recognise MAS);
* ``POST /_matrix/client/{v}/login``: ``m.login.password`` against the user's
  latest ``user_passwords`` row (re-hashed with the current scheme when it
  used an older one, like MAS); creates the device in Synapse
  (``upsert_device``), a ``compat_sessions`` row and a ``mct_`` access token
  (plus a ``mcr_`` refresh token when ``refresh_token: true``);
* ``POST /_matrix/client/{v}/logout`` and ``/logout/all``;
* ``POST /_matrix/client/{v}/refresh``;
* ``GET  /_matrix/client/{v}/login/sso/redirect[/{idp}]``: a redirect to MAS's UI.
"""

from __future__ import annotations

import contextlib
import datetime
import re

from werkzeug.wrappers import Request, Response

from mas_double import db
from mas_double.homeserver import HomeserverError
from mas_double.state import ServerState, generate_device_id, generate_token, json_response

ROUTE = re.compile(r"^/_matrix/client/(?P<version>[^/]+)/(?P<endpoint>login|logout|refresh)(?P<rest>/.*)?$")

#: Lifetime of refreshable compatibility access tokens (MAS: 5 minutes).
REFRESHABLE_TTL = datetime.timedelta(minutes=5)


def _matrix_error(status: int, errcode: str, error: str) -> Response:
    return json_response(status, {"errcode": errcode, "error": error})


def login_flows(state: ServerState) -> dict:
    """The ``GET /login`` body."""
    flows: list[dict] = [
        {
            "type": "m.login.sso",
            "identity_providers": [],
            "delegated_oidc_compatibility": True,
            "org.matrix.msc3824.delegated_oidc_compatibility": True,
            "oauth_aware_preferred": True,
        },
        {"type": "m.login.token"},
    ]
    if state.passwords.enabled:
        flows.append({"type": "m.login.password"})
    return {"flows": flows}


def handle(state: ServerState, request: Request, path: str) -> Response | None:
    """Dispatch a compat request; None when ``path`` is not a compat route."""
    match = ROUTE.match(path)
    if match is None:
        return None
    endpoint, rest = match["endpoint"], match["rest"] or ""
    if endpoint == "login" and rest.startswith("/sso/redirect"):
        return Response(status=302, headers={"Location": state.config.public_base + "login"})
    if endpoint == "login" and not rest:
        if request.method == "GET":
            return json_response(200, login_flows(state))
        if request.method == "POST":
            return _login(state, request)
    if endpoint == "logout" and rest in ("", "/all") and request.method == "POST":
        return _logout(state, request, everywhere=rest == "/all")
    if endpoint == "refresh" and not rest and request.method == "POST":
        return _refresh(state, request)
    if rest:
        return None
    return _matrix_error(405, "M_UNRECOGNIZED", "Unrecognized request")


def _localpart(state: ServerState, body: dict) -> str | None:
    identifier = body.get("identifier")
    user = identifier.get("user") if isinstance(identifier, dict) and identifier.get("type") == "m.id.user" else None
    user = user or body.get("user")
    if not isinstance(user, str):
        return None
    if user.startswith("@"):
        localpart, _, server = user[1:].partition(":")
        return localpart if server in ("", state.config.homeserver) else None
    return user


def _login(state: ServerState, request: Request) -> Response:
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        return _matrix_error(400, "M_NOT_JSON", "Invalid JSON body")
    if body.get("type") != "m.login.password" or not state.passwords.enabled:
        return _matrix_error(400, "M_UNKNOWN", "Invalid login type")
    localpart = _localpart(state, body)
    password = body.get("password")
    forbidden = _matrix_error(403, "M_FORBIDDEN", "Invalid username/password")
    if localpart is None or not isinstance(password, str):
        return forbidden
    with state.db() as conn:
        # login.rs (user_password_login): a deactivated user is not found, a locked one refused, then the
        # rate limit (requester, account), then the password
        user = db.find_user_by_username(conn, localpart)
        if user is None or user.deactivated_at is not None:
            return forbidden
        if user.locked_at is not None:
            return _matrix_error(401, "M_USER_LOCKED", "User account has been locked")
        client_ip = state.limiter.client_ip(request.remote_addr, request.headers.get("X-Forwarded-For"))
        if not state.limiter.check_password(client_ip, user.id):
            return _matrix_error(429, "M_LIMIT_EXCEEDED", "Too many login attempts")
        stored = db.active_password(conn, user)
        if stored is None:
            return forbidden
        password_id, version, hashed = stored
        if not state.passwords.verify(version, hashed, password):
            return forbidden
        current_version = state.passwords.schemes[0].version
        if version != current_version:
            new_version, new_hash = state.passwords.hash(password)
            db.add_password(conn, user, new_version, new_hash, upgraded_from=password_id)
        device_id = body.get("device_id") or generate_device_id()
        display_name = body.get("initial_device_display_name")
        try:
            state.homeserver.upsert_device(user.username, device_id, display_name)
        except HomeserverError:
            return _matrix_error(500, "M_UNKNOWN", "Internal server error")
        session_id = db.add_compat_session(conn, user, device_id, False, display_name)
        refreshable = body.get("refresh_token") is True
        expires_at = db.now() + REFRESHABLE_TTL if refreshable else None
        access_token = generate_token("mct")
        token_id = db.add_compat_access_token(conn, session_id, access_token, expires_at)
        # ResponseBody (#[skip_serializing_none]): no home_server; the refresh token and expiry when asked
        response = {"access_token": access_token, "device_id": device_id, "user_id": state.config.mxid(user.username)}
        if refreshable:
            refresh_token = generate_token("mcr")
            db.add_compat_refresh_token(conn, session_id, token_id, refresh_token)
            response["refresh_token"] = refresh_token
            response["expires_in_ms"] = int(REFRESHABLE_TTL.total_seconds() * 1000)
    return json_response(200, response)


def _bearer(request: Request) -> str | None:
    auth = request.authorization
    if auth is not None and auth.type == "bearer" and auth.token:
        return auth.token
    return request.args.get("access_token")


def _logout(state: ServerState, request: Request, everywhere: bool) -> Response:
    token = _bearer(request)
    if token is None:
        return _matrix_error(401, "M_MISSING_TOKEN", "Missing access token")
    with state.db() as conn:
        compat = db.find_compat_access_token(conn, token)
        expired = compat is not None and compat.expires_at is not None and compat.expires_at <= db.now()
        if compat is None or compat.session_finished or expired:
            return _matrix_error(401, "M_UNKNOWN_TOKEN", "Invalid access token")
        if everywhere:
            db.finish_user_compat_sessions(conn, compat.user.id)
        else:
            db.finish_compat_session(conn, compat.session_id)
    if compat.device_id and not everywhere:
        # MAS retries this in a job; the session is finished either way
        with contextlib.suppress(HomeserverError):
            state.homeserver.delete_device(compat.user.username, compat.device_id)
    return json_response(200, {})


def _refresh(state: ServerState, request: Request) -> Response:
    body = request.get_json(force=True, silent=True)
    presented = body.get("refresh_token") if isinstance(body, dict) else None
    if not isinstance(presented, str):
        return _matrix_error(400, "M_BAD_JSON", "Missing refresh_token")
    with state.db() as conn:
        found = db.find_compat_refresh_token(conn, presented)
        if found is None or found[2] or found[3]:
            return _matrix_error(401, "M_UNKNOWN_TOKEN", "Invalid refresh token")
        refresh_id, session_id = found[0], found[1]
        db.consume_compat_refresh_token(conn, refresh_id)
        access_token = generate_token("mct")
        token_id = db.add_compat_access_token(conn, session_id, access_token, db.now() + REFRESHABLE_TTL)
        refresh_token = generate_token("mcr")
        db.add_compat_refresh_token(conn, session_id, token_id, refresh_token)
    return json_response(
        200,
        {
            "access_token": access_token,
            "refresh_token": refresh_token,
            "expires_in_ms": int(REFRESHABLE_TTL.total_seconds() * 1000),
        },
    )
