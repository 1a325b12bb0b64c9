"""The ``adminapi`` resource: ``/api/admin/v1`` in the shapes of the upstream OpenAPI document.

Implemented operations (status codes and JSON:API bodies as in
``admin-api-spec.json``; IDs are ULIDs, stored as UUIDs):

=========================================  =====================================
``GET  /users``                            list (filters admin, status, search,
                                           legacy-guest; cursor pagination)
``POST /users``                            201 / 400 / 409
``GET  /users/{id}``                       200 / 404
``GET  /users/by-username/{username}``     200 / 404
``POST /users/{id}/set-password``          204 / 400 / 403 / 404
``POST /users/{id}/set-admin``             200 / 404
``POST /users/{id}/lock`` / ``unlock``     200 / 404 (a provisioning job tells Synapse)
``POST /users/{id}/deactivate``            200 / 404 (deactivated now, the worker tells Synapse)
``POST /users/{id}/reactivate``            200 / 404 / 500 (Synapse first, synchronously)
``GET  /user-emails``                      list (filters user, email) / 404
``POST /user-emails``                      201 / 400 / 404 / 409
``GET  /user-emails/{id}``                 200 / 404
``DELETE /user-emails/{id}``               204 / 404
``/user-registration-tokens[...]``         see :mod:`mas_double.tokens`
``/personal-sessions[...]``                see :mod:`mas_double.tokens`
=========================================  =====================================

Every call needs ``Authorization: Bearer <token>`` from ``/oauth2/token`` with
scope ``urn:mas:admin`` (401 otherwise).  ``GET /api/spec.json`` serves the
upstream document itself.
"""

from __future__ import annotations

import json
import re
import uuid
from urllib.parse import unquote

from werkzeug.wrappers import Request, Response

from mas_double import db, faults, tokens, ulid, upstream
from mas_double.homeserver import HomeserverError
from mas_double.oauth import ADMIN_SCOPE
from mas_double.passwords import complexity_score
from mas_double.state import ServerState, json_response

PREFIX = "/api/admin/v1"
DEFAULT_PAGE_SIZE = 10

_USERNAME_CHARS = re.compile(r"^[a-z0-9=_\-./+]+$")


def _debug(text: str) -> str:
    """Quote like Rust's ``{:?}`` for strings (double quotes, escapes)."""
    return json.dumps(text, ensure_ascii=False)


def _errors(status: int, *titles: str) -> Response:
    return json_response(status, {"errors": [{"title": title} for title in titles]})


def _user_resource(user: db.User) -> dict:
    return {
        "type": "user",
        "id": user.ulid,
        "attributes": {
            "username": user.username,
            "created_at": db.rfc3339(user.created_at),
            "locked_at": db.rfc3339(user.locked_at),
            "deactivated_at": db.rfc3339(user.deactivated_at),
            "admin": user.can_request_admin,
            "legacy_guest": user.is_guest,
        },
        "links": {"self": f"{PREFIX}/users/{user.ulid}"},
    }


def _email_resource(email: db.UserEmail) -> dict:
    return {
        "type": "user-email",
        "id": email.ulid,
        "attributes": {
            "created_at": db.rfc3339(email.created_at),
            "user_id": ulid.from_uuid(email.user_id),
            "email": email.email,
        },
        "links": {"self": f"{PREFIX}/user-emails/{email.ulid}"},
    }


def _single(resource: dict, self_link: str | None = None, status: int = 200) -> Response:
    return json_response(status, {"data": resource, "links": {"self": self_link or resource["links"]["self"]}})


def _valid_username(username: str) -> bool:
    return 0 < len(username) <= 255 and not username.startswith("_") and bool(_USERNAME_CHARS.match(username))


def _valid_email(email: str) -> bool:
    local, sep, domain = email.partition("@")
    return bool(sep and local and domain and "@" not in domain and not any(c.isspace() for c in email))


class _BadRequest(Exception):
    """A request parameter is invalid (400)."""


def _path_id(text: str) -> uuid.UUID:
    try:
        return ulid.to_uuid(text)
    except ValueError as exc:
        raise _BadRequest("Invalid ID") from exc


# ------------------------------------------------------------- pagination


def _paginate(conn, table: str, id_column: str, columns: str, where: list[str], params: list, args, base: str, build):
    """Cursor pagination the way MAS's ``PaginatedResponse`` does it.

    ``base`` is the collection path with its filters (``?filter[...]=...``);
    ``build`` turns a row into a resource.
    """
    first, last = args.get("page[first]"), args.get("page[last]")
    after, before = args.get("page[after]"), args.get("page[before]")
    count_mode = args.get("count", "true")
    if count_mode not in ("true", "false", "only"):
        raise _BadRequest("Invalid pagination parameters")
    try:
        first_n = int(first) if first is not None else None
        last_n = int(last) if last is not None else None
    except ValueError as exc:
        raise _BadRequest("Invalid pagination parameters") from exc
    if (first_n is not None and last_n is not None) or any(n is not None and n < 1 for n in (first_n, last_n)):
        raise _BadRequest("Invalid pagination parameters")
    if first_n is None and last_n is None:
        first_n = DEFAULT_PAGE_SIZE
    if count_mode != "true":
        base += ("&" if "?" in base else "?") + f"count={count_mode}"
    sep = "&" if "?" in base else "?"

    conditions, values = list(where), list(params)
    count = None
    if count_mode in ("true", "only"):
        clause = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        count = conn.execute(f"SELECT count(*) FROM {table}{clause}", values).fetchone()[0]
    if count_mode == "only":
        return {"meta": {"count": count}, "links": {"self": base}}

    if after is not None:
        conditions.append(f"{id_column} > %s")
        values.append(_path_id(after))
    if before is not None:
        conditions.append(f"{id_column} < %s")
        values.append(_path_id(before))
    clause = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    limit = first_n if first_n is not None else last_n
    order = "ASC" if first_n is not None else "DESC"
    rows = conn.execute(
        f"SELECT {columns} FROM {table}{clause} ORDER BY {id_column} {order} LIMIT %s", [*values, limit + 1]
    ).fetchall()
    has_more = len(rows) > limit
    rows = rows[:limit]
    if last_n is not None:
        rows.reverse()
    resources = []
    for row in rows:
        resource = build(row)
        resource["meta"] = {"page": {"cursor": resource["id"]}}
        resources.append(resource)

    page = f"page[first]={first_n}" if first_n is not None else f"page[last]={last_n}"
    if after is not None:
        page = f"page[after]={after}&{page}"
    if before is not None:
        page = f"page[before]={before}&{page}"
    size = first_n if first_n is not None else last_n
    links = {
        "self": f"{base}{sep}{page}",
        "first": f"{base}{sep}page[first]={size}",
        "last": f"{base}{sep}page[last]={size}",
    }
    has_next = has_more if first_n is not None else before is not None
    has_prev = has_more if last_n is not None else after is not None
    if has_next and resources:
        links["next"] = f"{base}{sep}page[after]={resources[-1]['id']}&page[first]={size}"
    if has_prev and resources:
        links["prev"] = f"{base}{sep}page[before]={resources[0]['id']}&page[last]={size}"
    body = {"data": resources, "links": links}
    if count is not None:
        body = {"meta": {"count": count}, **body}
    return body


def _filters_base(path: str, args, names: list[str]) -> str:
    parts = [f"filter[{name}]={args[f'filter[{name}]']}" for name in names if f"filter[{name}]" in args]
    return path + ("?" + "&".join(parts) if parts else "")


# ----------------------------------------------------------------- users


def _list_users(state: ServerState, conn, request: Request) -> Response:
    args = request.args
    where, params = [], []
    if "filter[admin]" in args:
        flag = args["filter[admin]"]
        if flag not in ("true", "false"):
            raise _BadRequest("Invalid filter parameters")
        where.append("can_request_admin = %s")
        params.append(flag == "true")
    if "filter[legacy-guest]" in args:
        flag = args["filter[legacy-guest]"]
        if flag not in ("true", "false"):
            raise _BadRequest("Invalid filter parameters")
        where.append("is_guest = %s")
        params.append(flag == "true")
    if "filter[search]" in args:
        where.append("username ILIKE %s")
        params.append("%" + args["filter[search]"].replace("%", r"\%").replace("_", r"\_") + "%")
    status = args.get("filter[status]")
    if status is not None:
        conditions = {
            "active": "locked_at IS NULL AND deactivated_at IS NULL",
            "locked": "locked_at IS NOT NULL",
            "deactivated": "deactivated_at IS NOT NULL",
        }
        if status not in conditions:
            raise _BadRequest("Invalid filter parameters")
        where.append(conditions[status])
    base = _filters_base(f"{PREFIX}/users", args, ["admin", "legacy-guest", "search", "status"])
    columns = "user_id, username, created_at, locked_at, deactivated_at, can_request_admin, is_guest"
    body = _paginate(
        conn, "users", "user_id", columns, where, params, args, base, lambda row: _user_resource(db.User(*row))
    )
    return json_response(200, body)


def _create_user(state: ServerState, conn, request: Request) -> Response:
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("username"), str):
        raise _BadRequest("Invalid request body")
    username = body["username"]
    if db.user_exists(conn, username):
        return _errors(409, "User already exists")
    if not _valid_username(username):
        return _errors(400, "Username is not valid")
    if not state.homeserver.is_localpart_available(username) and not body.get("skip_homeserver_check"):
        return _errors(409, "Username is reserved by the homeserver")
    user = db.add_user(conn, username)
    display_name = body.get("displayname") if isinstance(body.get("displayname"), str) else None
    db.schedule_provision(conn, user, display_name)
    return _single(_user_resource(user), status=201)


def _load_user(conn, user_id: uuid.UUID) -> db.User | None:
    return db.lookup_user(conn, user_id)


def _user_not_found(user_id: uuid.UUID) -> Response:
    return _errors(404, f"User ID {ulid.from_uuid(user_id)} not found")


def _user_action(state: ServerState, conn, request: Request, user_id: uuid.UUID, action: str) -> Response:
    user = _load_user(conn, user_id)
    if user is None:
        return _user_not_found(user_id)
    self_link = f"{PREFIX}/users/{user.ulid}/{action}"
    body = request.get_json(silent=True) if request.data else None
    if action == "set-password":
        if not isinstance(body, dict) or not isinstance(body.get("password"), str):
            raise _BadRequest("Invalid request body")
        if not state.passwords.enabled:
            return _errors(403, "Password auth is disabled")
        too_weak = complexity_score(body["password"]) < state.passwords.minimum_complexity
        if too_weak and not body.get("skip_password_check"):
            return _errors(400, "Password is too weak")
        db.add_password(conn, user, *state.passwords.hash(body["password"]))
        return Response(status=204)
    if action == "set-admin":
        if not isinstance(body, dict) or not isinstance(body.get("admin"), bool):
            raise _BadRequest("Invalid request body")
        user = db.set_can_request_admin(conn, user, body["admin"])
    elif action in ("lock", "unlock"):
        # lock.rs / unlock.rs: a ProvisionUserJob carries the lock flag to Synapse
        user = db.lock_user(conn, user) if action == "lock" else db.unlock_user(conn, user)
        db.schedule_provision(conn, user)
    elif action == "deactivate":
        # deactivate.rs: deactivated_at is set now (the user is not locked), the job does the rest
        skip_erase = bool(body.get("skip_erase")) if isinstance(body, dict) else False
        user = db.mark_deactivated(conn, user)
        db.schedule_job(conn, "deactivate-user", {"user_id": user.ulid, "hs_erase": not skip_erase})
    elif action == "reactivate":
        # reactivate.rs: Synapse first, synchronously (a failure is a 500), then the database
        state.homeserver.reactivate_user(user.username)
        user = db.mark_reactivated(conn, user)
    else:
        return _errors(404, "Not found")
    return _single(_user_resource(user), self_link)


# ----------------------------------------------------------------- emails


def _list_emails(state: ServerState, conn, request: Request) -> Response:
    args = request.args
    where, params = [], []
    if "filter[user]" in args:
        try:
            user_id = ulid.to_uuid(args["filter[user]"])
        except ValueError as exc:
            raise _BadRequest("Invalid filter parameters") from exc
        if _load_user(conn, user_id) is None:
            return _user_not_found(user_id)
        where.append("user_id = %s")
        params.append(user_id)
    if "filter[email]" in args:
        where.append("LOWER(email) = LOWER(%s)")
        params.append(args["filter[email]"])
    base = _filters_base(f"{PREFIX}/user-emails", args, ["user", "email"])
    columns = "user_email_id, user_id, email, created_at"
    body = _paginate(
        conn,
        "user_emails",
        "user_email_id",
        columns,
        where,
        params,
        args,
        base,
        lambda row: _email_resource(db.UserEmail(*row)),
    )
    return json_response(200, body)


def _add_email(state: ServerState, conn, request: Request) -> Response:
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("email"), str) or not isinstance(body.get("user_id"), str):
        raise _BadRequest("Invalid request body")
    user_id = _path_id(body["user_id"])
    user = _load_user(conn, user_id)
    if user is None:
        return _user_not_found(user_id)
    email = body["email"]
    if not _valid_email(email):
        return _errors(400, f"Email {_debug(email)} is not valid", "Missing domain or user")
    if db.count_emails(conn, email) > 0:
        return _errors(409, f"User email {_debug(email)} already in use")
    created = db.add_email(conn, user, email)
    db.schedule_provision(conn, user)
    return _single(_email_resource(created), status=201)


def _email_by_id(state: ServerState, conn, request: Request, email_id: uuid.UUID) -> Response:
    email = db.lookup_email(conn, email_id)
    if email is None:
        return _errors(404, f"User email ID {ulid.from_uuid(email_id)} not found")
    if request.method == "DELETE":
        db.delete_email(conn, email_id)
        user = _load_user(conn, email.user_id)
        if user is not None:
            db.schedule_provision(conn, user)
        return Response(status=204)
    return _single(_email_resource(email))


# ---------------------------------------------------------------- routing


def _route(state: ServerState, conn, request: Request, path: str) -> Response:
    method = request.method
    parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
    if parts == ["users"]:
        if method == "GET":
            return _list_users(state, conn, request)
        if method == "POST":
            return _create_user(state, conn, request)
    elif len(parts) == 3 and parts[:2] == ["users", "by-username"] and method == "GET":
        user = db.find_user_by_username(conn, parts[2])
        if user is None:
            return _errors(404, f"User with username {_debug(parts[2])} not found")
        return _single(_user_resource(user), f"{PREFIX}/users/by-username/{parts[2]}")
    elif len(parts) == 2 and parts[0] == "users" and method == "GET":
        user_id = _path_id(parts[1])
        user = _load_user(conn, user_id)
        return _user_not_found(user_id) if user is None else _single(_user_resource(user))
    elif len(parts) == 3 and parts[0] == "users" and method == "POST":
        return _user_action(state, conn, request, _path_id(parts[1]), parts[2])
    elif parts == ["user-emails"]:
        if method == "GET":
            return _list_emails(state, conn, request)
        if method == "POST":
            return _add_email(state, conn, request)
    elif len(parts) == 2 and parts[0] == "user-emails" and method in ("GET", "DELETE"):
        return _email_by_id(state, conn, request, _path_id(parts[1]))
    elif parts == ["user-registration-tokens"] and method in ("GET", "POST"):
        if method == "GET":
            return tokens.list_tokens(conn, request, _paginate, _filters_base)
        return tokens.add_token(conn, request)
    elif parts[:1] == ["user-registration-tokens"] and len(parts) in (2, 3):
        return tokens.token_by_id(conn, request, _path_id(parts[1]), parts[2] if len(parts) == 3 else None)
    elif parts[:1] == ["personal-sessions"] and faults.active("no-personal-sessions"):
        return Response(status=404)  # a MAS before personal sessions: no such route
    elif parts == ["personal-sessions"] and method in ("GET", "POST"):
        if method == "GET":
            return tokens.list_sessions(conn, request, _paginate, _filters_base)
        return tokens.add_session(state, conn, request)
    elif parts[:1] == ["personal-sessions"] and len(parts) in (2, 3):
        return tokens.session_by_id(state, conn, request, _path_id(parts[1]), parts[2] if len(parts) == 3 else None)
    return _errors(404, "Not found")


def _authorized(state: ServerState, request: Request) -> Response | None:
    auth = request.authorization
    if auth is None or auth.type != "bearer" or not auth.token:
        return _errors(401, "Missing bearer token in Authorization header")
    issued = state.tokens.get(auth.token)
    if issued is None:
        return _errors(401, "Invalid or expired access token")
    if ADMIN_SCOPE not in issued.scope.split():
        return _errors(403, "Missing urn:mas:admin scope")
    return None


def handle(state: ServerState, request: Request, path: str) -> Response | None:
    """Dispatch an admin API request; None when ``path`` is not under ``/api``."""
    if path == "/api/spec.json" and request.method == "GET":
        try:
            spec = upstream.admin_api_spec().read_bytes()
        except upstream.UpstreamMissing:
            return _errors(404, "Not found")
        return Response(spec, mimetype="application/json")
    if path != PREFIX and not path.startswith(PREFIX + "/"):
        return None
    denied = _authorized(state, request)
    if denied is not None:
        return denied
    try:
        with state.db() as conn:
            return _route(state, conn, request, path[len(PREFIX) :])
    except _BadRequest as exc:
        return _errors(400, str(exc))
    except HomeserverError as exc:
        return _errors(500, str(exc).splitlines()[0])
