"""User registration tokens and personal sessions of the double's admin API (MAS 1.23 shapes).

Operations (``crates/handlers/src/admin/v1/user_registration_tokens/`` and
``.../personal_sessions/`` in MAS's source):

=================================================  ==============================================
``GET  /user-registration-tokens``                 list (filters used, revoked, expired, valid)
``POST /user-registration-tokens``                 201 / 409 (same token); no limit = unlimited
``GET  /user-registration-tokens/{id}``            200 / 404
``PUT  /user-registration-tokens/{id}``            200 / 404; absent = unchanged, null = cleared
``POST /user-registration-tokens/{id}/revoke``     200 / 400 already revoked / 404
``POST /user-registration-tokens/{id}/unrevoke``   200 / 400 not revoked / 404
``GET  /personal-sessions``                        list (filters owner_user, owner_client,
                                                   actor_user, status)
``POST /personal-sessions``                        201 with ``access_token`` / 400 / 404 / 410;
                                                   a device scope is upserted on Synapse first
                                                   (500 when that fails)
``GET  /personal-sessions/{id}``                   200 / 404
``POST /personal-sessions/{id}/revoke``            200 / 404 / 409
``POST /personal-sessions/{id}/regenerate``        201 with a new ``access_token`` / 403 / 404 / 422
=================================================  ==============================================

Personal access tokens (``mpt_...``) are stored as SHA-256 digests in
``personal_access_tokens``; :func:`introspect` answers for them at
``/oauth2/introspect`` as MAS does. Sessions created with a client-credentials
token are owned by that client (its ``oauth2_clients`` row is upserted: MAS
syncs static clients at start-up, the double does it on first use).
"""

from __future__ import annotations

import datetime
import hashlib
import re
import secrets
import string
import uuid

from werkzeug.wrappers import Request, Response

from mas_double import db, ulid
from mas_double.homeserver import HomeserverError
from mas_double.state import ServerState, generate_token, json_response

PREFIX = "/api/admin/v1"
_TOKEN_COLUMNS = (
    "user_registration_token_id, token, usage_limit, times_used, created_at, last_used_at, expires_at, revoked_at"
)
#: personal sessions with the expiry of their active token (MAS's PersonalSession resource)
_SESSIONS = (
    "(SELECT s.personal_session_id, s.owner_user_id, s.owner_oauth2_client_id, s.actor_user_id, s.human_name,"
    " s.scope_list, s.created_at, s.revoked_at, s.last_active_at, s.last_active_ip, t.expires_at"
    " FROM personal_sessions s LEFT JOIN personal_access_tokens t"
    " ON t.personal_session_id = s.personal_session_id AND t.revoked_at IS NULL) AS ps"
)
_SESSION_COLUMNS = (
    "personal_session_id, owner_user_id, owner_oauth2_client_id, actor_user_id, human_name, scope_list,"
    " created_at, revoked_at, last_active_at, last_active_ip, expires_at"
)
#: RFC 6749 scope-token characters (NQCHAR)
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
DEVICE_SCOPE = "urn:matrix:client:device:"


def _errors(status: int, *titles: str) -> Response:
    return json_response(status, {"errors": [{"title": title} for title in titles]})


def _single(resource: dict, self_link: str | None = None, status: int = 200) -> Response:
    return json_response(status, {"data": resource, "links": {"self": self_link or resource["links"]["self"]}})


def _time(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


# ---------------------------------------------------------- registration tokens


def _token_resource(row) -> dict:
    token_id, token, usage_limit, times_used, created_at, last_used_at, expires_at, revoked_at = row
    now = db.now()
    valid = (
        revoked_at is None
        and (expires_at is None or expires_at > now)
        and (usage_limit is None or times_used < usage_limit)
    )
    self_link = f"{PREFIX}/user-registration-tokens/{ulid.from_uuid(token_id)}"
    return {
        "type": "user-registration_token",  # sic: MAS's Resource::KIND (admin/model.rs)
        "id": ulid.from_uuid(token_id),
        "attributes": {
            "token": token,
            "valid": valid,
            "usage_limit": usage_limit,
            "times_used": times_used,
            "created_at": db.rfc3339(created_at),
            "last_used_at": db.rfc3339(last_used_at),
            "expires_at": db.rfc3339(expires_at),
            "revoked_at": db.rfc3339(revoked_at),
        },
        "links": {"self": self_link},
    }


def _load_token(conn, token_id: uuid.UUID):
    return conn.execute(
        f"SELECT {_TOKEN_COLUMNS} FROM user_registration_tokens WHERE user_registration_token_id = %s", (token_id,)
    ).fetchone()


def _token_not_found(token_id: uuid.UUID) -> Response:
    return _errors(404, f"Registration token with ID {ulid.from_uuid(token_id)} not found")


def _usage_limit(value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32):
        raise ValueError(value)
    return value


def _json_body(request: Request):
    """The JSON body like axum's ``Json`` extractor: 415 / 400 / 422 as text, or the parsed body."""
    if not (request.mimetype or "").endswith("json"):
        return Response("Expected request with `Content-Type: application/json`", status=415)
    body = request.get_json(silent=True)
    if body is None and request.data:
        return Response("Failed to parse the request body as JSON", status=400)
    return body if body is not None else {}


def _unprocessable(detail: str) -> Response:
    return Response(f"Failed to deserialize the JSON body into the target type: {detail}", status=422)


def list_tokens(conn, request: Request, paginate, filters_base) -> Response:
    args = request.args
    where = []
    flags = {
        "used": ("times_used > 0", "times_used = 0"),
        "revoked": ("revoked_at IS NOT NULL", "revoked_at IS NULL"),
        "expired": ("expires_at IS NOT NULL AND expires_at <= now()", "(expires_at IS NULL OR expires_at > now())"),
        "valid": (
            "(revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
            " AND (usage_limit IS NULL OR times_used < usage_limit))",
            "NOT (revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
            " AND (usage_limit IS NULL OR times_used < usage_limit))",
        ),
    }
    for name, (yes, no) in flags.items():
        value = args.get(f"filter[{name}]")
        if value is None:
            continue
        if value not in ("true", "false"):
            return _errors(400, "Invalid filter parameters")
        where.append(yes if value == "true" else no)
    base = filters_base(f"{PREFIX}/user-registration-tokens", args, list(flags))
    body = paginate(
        conn,
        "user_registration_tokens",
        "user_registration_token_id",
        _TOKEN_COLUMNS,
        where,
        [],
        args,
        base,
        _token_resource,
    )
    return json_response(200, body)


def add_token(conn, request: Request) -> Response:
    body = _json_body(request)
    if isinstance(body, Response):
        return body
    if not isinstance(body, dict):
        return _unprocessable("invalid type: expected struct AddUserRegistrationTokenRequest")
    token = body.get("token")
    try:
        limit = _usage_limit(body.get("usage_limit"))
        expires = _time(body["expires_at"]) if body.get("expires_at") is not None else None
        if token is not None and not isinstance(token, str):
            raise ValueError(token)
    except (ValueError, TypeError, AttributeError):
        return _unprocessable("invalid value in AddUserRegistrationTokenRequest")
    if token is None:
        token = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(12))
    exists = conn.execute("SELECT 1 FROM user_registration_tokens WHERE token = %s", (token,)).fetchone()
    if exists:
        return _errors(409, "A registration token with the same token already exists")
    row = conn.execute(
        "INSERT INTO user_registration_tokens (user_registration_token_id, token, usage_limit, created_at, expires_at)"
        f" VALUES (%s, %s, %s, %s, %s) RETURNING {_TOKEN_COLUMNS}",
        (ulid.new_uuid(), token, limit, db.now(), expires),
    ).fetchone()
    return _single(_token_resource(row), status=201)


def token_by_id(conn, request: Request, token_id: uuid.UUID, action: str | None) -> Response:
    row = _load_token(conn, token_id)
    if row is None:
        return _token_not_found(token_id)
    resource_id = ulid.from_uuid(token_id)
    if action is None and request.method == "GET":
        return _single(_token_resource(row))
    if action is None and request.method == "PUT":
        body = _json_body(request)
        if isinstance(body, Response):
            return body
        if not isinstance(body, dict):
            return _unprocessable("invalid type: expected struct EditUserRegistrationTokenRequest")
        try:
            if "expires_at" in body:
                expires = _time(body["expires_at"]) if body["expires_at"] is not None else None
                conn.execute(
                    "UPDATE user_registration_tokens SET expires_at = %s WHERE user_registration_token_id = %s",
                    (expires, token_id),
                )
            if "usage_limit" in body:
                conn.execute(
                    "UPDATE user_registration_tokens SET usage_limit = %s WHERE user_registration_token_id = %s",
                    (_usage_limit(body["usage_limit"]), token_id),
                )
        except (ValueError, TypeError, AttributeError):
            return _unprocessable("invalid value in EditUserRegistrationTokenRequest")
        return _single(_token_resource(_load_token(conn, token_id)), f"{PREFIX}/user-registration-tokens/{resource_id}")
    if action in ("revoke", "unrevoke") and request.method == "POST":
        revoked = row[7] is not None
        if action == "revoke" and revoked:
            return _errors(400, f"Registration token with ID {resource_id} is already revoked")
        if action == "unrevoke" and not revoked:
            return _errors(400, f"Registration token with ID {resource_id} is not revoked")
        conn.execute(
            "UPDATE user_registration_tokens SET revoked_at = %s WHERE user_registration_token_id = %s",
            (db.now() if action == "revoke" else None, token_id),
        )
        link = f"{PREFIX}/user-registration-tokens/{resource_id}/{action}"
        return _single(_token_resource(_load_token(conn, token_id)), link)
    return _errors(404, "Not found")


# ------------------------------------------------------------ personal sessions


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _session_resource(row, access_token: str | None = None) -> dict:
    (session_id, owner_user, owner_client, actor, human_name, scopes, created_at, revoked_at) = row[:8]
    last_active_at, last_active_ip, expires_at = row[8:]
    attributes = {
        "created_at": db.rfc3339(created_at),
        "revoked_at": db.rfc3339(revoked_at),
        "owner_user_id": ulid.from_uuid(owner_user) if owner_user else None,
        "owner_client_id": ulid.from_uuid(owner_client) if owner_client else None,
        "actor_user_id": ulid.from_uuid(actor),
        "human_name": human_name,
        "scope": " ".join(sorted(scopes)),
        "last_active_at": db.rfc3339(last_active_at),
        "last_active_ip": str(last_active_ip) if last_active_ip else None,
        "expires_at": db.rfc3339(expires_at) if revoked_at is None else None,
    }
    if access_token is not None:
        attributes["access_token"] = access_token
    resource_id = ulid.from_uuid(session_id)
    return {
        "type": "personal-session",
        "id": resource_id,
        "attributes": attributes,
        "links": {"self": f"{PREFIX}/personal-sessions/{resource_id}"},
    }


def _load_session(conn, session_id: uuid.UUID):
    return conn.execute(
        f"SELECT {_SESSION_COLUMNS} FROM {_SESSIONS} WHERE personal_session_id = %s", (session_id,)
    ).fetchone()


def _caller_client(state: ServerState, conn, request: Request) -> uuid.UUID:
    """The calling client's ``oauth2_clients`` id (the row is upserted, as MAS's start-up sync would have)."""
    issued = state.tokens.get(request.authorization.token)
    client_id = ulid.to_uuid(issued.client_id)
    conn.execute(
        "INSERT INTO oauth2_clients (oauth2_client_id, grant_type_authorization_code, grant_type_refresh_token,"
        " grant_type_client_credentials, token_endpoint_auth_method, is_static, created_at)"
        " VALUES (%s, true, true, true, %s, true, %s) ON CONFLICT (oauth2_client_id) DO NOTHING",
        (client_id, "client_secret_basic", db.now()),
    )
    return client_id


def _scopes(text) -> list[str] | None:
    if not isinstance(text, str):
        return None
    parts = text.split(" ")
    if not parts or any(not _SCOPE_TOKEN.fullmatch(p) for p in parts):
        return None
    return sorted(set(parts))


def _issue(conn, session_id: uuid.UUID, expires_in) -> str:
    token = generate_token("mpt")
    expires = db.now() + datetime.timedelta(seconds=expires_in) if expires_in is not None else None
    conn.execute(
        "INSERT INTO personal_access_tokens (personal_access_token_id, personal_session_id, access_token_sha256,"
        " created_at, expires_at) VALUES (%s, %s, %s, %s, %s)",
        (ulid.new_uuid(), session_id, _digest(token), db.now(), expires),
    )
    return token


def _expires_in(body: dict):
    value = body.get("expires_in")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32):
        raise ValueError(value)
    return value


def list_sessions(conn, request: Request, paginate, filters_base) -> Response:
    args = request.args
    where, params = [], []
    for name, column in (
        ("owner_user", "owner_user_id"),
        ("owner_client", "owner_oauth2_client_id"),
        ("actor_user", "actor_user_id"),
    ):
        value = args.get(f"filter[{name}]")
        if value is None:
            continue
        try:
            params.append(ulid.to_uuid(value))
        except ValueError:
            return _errors(400, "Invalid filter parameters")
        where.append(f"{column} = %s")
    status = args.get("filter[status]")
    if status is not None:
        if status not in ("active", "revoked"):
            return _errors(400, "Invalid filter parameters")
        where.append("revoked_at IS NULL" if status == "active" else "revoked_at IS NOT NULL")
    base = filters_base(f"{PREFIX}/personal-sessions", args, ["owner_user", "owner_client", "actor_user", "status"])
    body = paginate(
        conn, _SESSIONS, "personal_session_id", _SESSION_COLUMNS, where, params, args, base, _session_resource
    )
    return json_response(200, body)


def add_session(state: ServerState, conn, request: Request) -> Response:
    body = _json_body(request)
    if isinstance(body, Response):
        return body
    if not isinstance(body, dict) or not isinstance(body.get("human_name"), str) or "scope" not in body:
        return _unprocessable("missing field in CreatePersonalSessionRequest")
    try:
        actor_id = ulid.to_uuid(str(body.get("actor_user_id")))
        expires_in = _expires_in(body)
    except ValueError:
        return _unprocessable("invalid value in CreatePersonalSessionRequest")
    actor = db.lookup_user(conn, actor_id)
    if actor is None:
        return _errors(404, "User not found")
    if actor.deactivated_at is not None:  # locked users are valid actors (User::is_valid_actor)
        return _errors(410, "User is not active")
    scopes = _scopes(body["scope"])
    if scopes is None:
        return _errors(400, "Invalid scope")
    owner = _caller_client(state, conn, request)
    session_id = ulid.new_uuid()
    conn.execute(
        "INSERT INTO personal_sessions (personal_session_id, owner_oauth2_client_id, actor_user_id, human_name,"
        " scope_list, created_at) VALUES (%s, %s, %s, %s, %s, %s)",
        (session_id, owner, actor.id, body["human_name"], scopes, db.now()),
    )
    token = _issue(conn, session_id, expires_in)
    for scope in scopes:
        if scope.startswith(DEVICE_SCOPE):
            try:
                state.homeserver.upsert_device(actor.username, scope[len(DEVICE_SCOPE) :])
            except HomeserverError as exc:
                conn.rollback()
                return _errors(500, "Failed to provision device", str(exc).splitlines()[0])
    return _single(_session_resource(_load_session(conn, session_id), token), status=201)


def session_by_id(state: ServerState, conn, request: Request, session_id: uuid.UUID, action: str | None) -> Response:
    row = _load_session(conn, session_id)
    resource_id = ulid.from_uuid(session_id)
    if action is None and request.method == "GET":
        return _errors(404, "Personal session not found") if row is None else _single(_session_resource(row))
    if action == "revoke" and request.method == "POST":
        if row is None:
            return _errors(404, f"Personal session with ID {resource_id} not found")
        if row[7] is not None:
            return _errors(409, f"Personal session with ID {resource_id} is already revoked")
        conn.execute(
            "UPDATE personal_sessions SET revoked_at = %s WHERE personal_session_id = %s", (db.now(), session_id)
        )
        return _single(
            _session_resource(_load_session(conn, session_id)), f"{PREFIX}/personal-sessions/{resource_id}/revoke"
        )
    if action == "regenerate" and request.method == "POST":
        body = _json_body(request)
        if isinstance(body, Response):
            return body
        try:
            expires_in = _expires_in(body if isinstance(body, dict) else {})
        except ValueError:
            return _unprocessable("invalid value in RegeneratePersonalSessionRequest")
        if row is None:
            return _errors(404, "Session not found")
        if row[7] is not None:
            return _errors(422, "Session not valid")
        if row[2] != _caller_client(state, conn, request):
            return _errors(403, "Session does not belong to you")
        conn.execute(
            "UPDATE personal_access_tokens SET revoked_at = %s WHERE personal_session_id = %s AND revoked_at IS NULL",
            (db.now(), session_id),
        )
        token = _issue(conn, session_id, expires_in)
        return _single(_session_resource(_load_session(conn, session_id), token), status=201)
    return _errors(404, "Not found")


def introspect(state: ServerState, token: str) -> dict | None:
    """MAS's introspection answer for a personal access token, or None when ``token`` is not one."""
    from mas_double.oauth import normalize_scope  # local import: oauth imports this module

    if not token.startswith("mpt_"):
        return None
    inactive = {"active": False}
    with state.db() as conn:
        row = conn.execute(
            "SELECT t.created_at, t.expires_at, t.revoked_at, s.revoked_at, s.scope_list, s.owner_oauth2_client_id,"
            f" {', '.join('u.' + c.strip() for c in db._USER_COLUMNS.split(','))}"
            " FROM personal_access_tokens t JOIN personal_sessions s USING (personal_session_id)"
            " JOIN users u ON u.user_id = s.actor_user_id WHERE t.access_token_sha256 = %s",
            (_digest(token),),
        ).fetchone()
    if row is None:
        return inactive
    created_at, expires_at, token_revoked, session_revoked, scopes, owner_client = row[:6]
    user = db.User(*row[6:])
    now = db.now()
    if token_revoked is not None or (expires_at is not None and expires_at <= now) or session_revoked is not None:
        return inactive
    if user.locked_at is not None or user.deactivated_at is not None:  # User::is_valid
        return inactive
    answer = {
        "active": True,
        "scope": normalize_scope(scopes),  # introspection.rs: stable and unstable forms, sorted
        "client_id": ulid.from_uuid(owner_client) if owner_client else None,
        "username": user.username,
        "token_type": "access_token",
    }
    if expires_at is not None:
        answer["exp"] = int(expires_at.timestamp())
        answer["expires_in"] = max(0, int((expires_at - now).total_seconds()))
    answer.update(iat=int(created_at.timestamp()), nbf=int(created_at.timestamp()), sub=user.ulid)
    return {key: value for key, value in answer.items() if value is not None}  # #[skip_serializing_none]
