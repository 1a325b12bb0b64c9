"""The ``oauth`` and ``discovery`` resources of the double.

* ``GET /.well-known/openid-configuration`` (discovery): the issuer and the
  endpoints under ``public_base`` (Synapse reads ``issuer`` and
  ``account_management_uri``); ``GET /oauth2/keys.json`` answers an empty key set.
* ``POST /oauth2/token``: only ``grant_type=client_credentials`` for a static
  ``clients`` entry (``client_secret_basic`` or ``client_secret_post``) listed
  in ``policy.data.admin_clients``, scope ``urn:mas:admin`` -> bearer token.
* ``POST /oauth2/introspect``: authenticated with ``Bearer <matrix.secret>``
  (Synapse) or a static client; answers ``{"active": false}`` for unknown or
  dead tokens.  Compatibility tokens are active with the stable and unstable
  (MSC2967) client API scopes, the device scope in both forms unless the caller
  sends ``X-MAS-Supports-Device-Id: 1`` (+ ``urn:synapse:admin:*`` when the
  session ``is_synapse_admin``), ``username``, ``sub`` (user ULID) and ``device_id``.
* ``POST /oauth2/revoke``: forgets a client-credentials token.
"""

from __future__ import annotations

import hmac
import time

from werkzeug.wrappers import Request, Response

from mas_double import db, tokens
from mas_double.config import ConfigError
from mas_double.state import ServerState, json_response

ADMIN_SCOPE = "urn:mas:admin"
MATRIX_API_SCOPE = "urn:matrix:client:api:*"
UNSTABLE_API_SCOPE = "urn:matrix:org.matrix.msc2967.client:api:*"
DEVICE_SCOPE_PREFIX = "urn:matrix:client:device:"
UNSTABLE_DEVICE_SCOPE_PREFIX = "urn:matrix:org.matrix.msc2967.client:device:"
SYNAPSE_ADMIN_SCOPE = "urn:synapse:admin:*"


def normalize_scope(scope: list[str] | set[str]) -> str:
    """A scope as MAS's introspection answers it (``normalize_scope`` in ``oauth2/introspection.rs``): the
    stable and unstable (MSC2967) forms of the client API and device scopes both present, the tokens sorted
    (a ``BTreeSet``), space-separated."""
    tokens = set(scope)
    for token in list(tokens):
        if token in (MATRIX_API_SCOPE, UNSTABLE_API_SCOPE):
            tokens |= {MATRIX_API_SCOPE, UNSTABLE_API_SCOPE}
        for prefix in (DEVICE_SCOPE_PREFIX, UNSTABLE_DEVICE_SCOPE_PREFIX):
            if token.startswith(prefix):
                device = token[len(prefix) :]
                tokens |= {DEVICE_SCOPE_PREFIX + device, UNSTABLE_DEVICE_SCOPE_PREFIX + device}
    return " ".join(sorted(tokens))


def discovery_document(state: ServerState) -> dict:
    """The OpenID Connect discovery document MAS serves."""
    base = state.config.public_base
    return {
        "issuer": state.config.issuer,
        "authorization_endpoint": base + "authorize",
        "token_endpoint": base + "oauth2/token",
        "jwks_uri": base + "oauth2/keys.json",
        "registration_endpoint": base + "oauth2/registration",
        "scopes_supported": ["openid", "email"],
        "response_types_supported": ["code", "id_token", "code id_token"],
        "response_modes_supported": ["form_post", "query", "fragment"],
        "grant_types_supported": [
            "authorization_code",
            "refresh_token",
            "client_credentials",
            "urn:ietf:params:oauth:grant-type:device_code",
        ],
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "client_secret_jwt",
            "private_key_jwt",
            "none",
        ],
        "revocation_endpoint": base + "oauth2/revoke",
        "introspection_endpoint": base + "oauth2/introspect",
        "userinfo_endpoint": base + "oauth2/userinfo",
        "device_authorization_endpoint": base + "oauth2/device",
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "code_challenge_methods_supported": ["plain", "S256"],
        "prompt_values_supported": ["none", "login", "create"],
        "account_management_uri": base + "account/",
        "account_management_actions_supported": [
            "org.matrix.profile",
            "org.matrix.sessions_list",
            "org.matrix.session_view",
            "org.matrix.session_end",
            "org.matrix.cross_signing_reset",
        ],
    }


def _oauth_error(status: int, error: str, description: str) -> Response:
    return json_response(status, {"error": error, "error_description": description})


def _authenticate_client(state: ServerState, request: Request) -> dict | None:
    """Return the static client authenticated by the request (basic or post), or None."""
    auth = request.authorization
    if auth is not None and auth.type == "basic":
        client_id, secret, method = auth.username, auth.password, "client_secret_basic"
    elif request.form.get("client_id"):
        client_id, secret, method = request.form["client_id"], request.form.get("client_secret"), "client_secret_post"
    else:
        return None
    client = state.config.find_client(client_id or "")
    if client is None or client.get("client_auth_method") != method:
        return None
    try:
        expected = state.config.client_secret(client)
    except ConfigError:
        return None
    if expected is None or secret is None or not hmac.compare_digest(expected.encode(), secret.encode()):
        return None
    return client


def token(state: ServerState, request: Request) -> Response:
    """``POST /oauth2/token`` (client credentials only)."""
    client = _authenticate_client(state, request)
    if client is None:
        return _oauth_error(401, "invalid_client", "Client authentication failed")
    grant_type = request.form.get("grant_type")
    if grant_type != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", "The grant type is not supported by the MAS double")
    scope = " ".join(request.form.get("scope", "").split())

    # the policy (authorization_grant.rego): openid, email and urn:mas:graphql:* for any
    # client; urn:mas:admin only for policy.data.admin_clients
    def allowed(token: str) -> bool:
        if token == ADMIN_SCOPE:
            return client["client_id"] in state.config.admin_clients
        return token in ("openid", "email", "urn:mas:graphql:*")

    refused = [token for token in scope.split() if not allowed(token)]
    if refused:
        # token.rs: a policy denial is 403 invalid_scope, the violations joined as the description
        return _oauth_error(403, "invalid_scope", ", ".join(f"scope '{token}' not allowed" for token in refused))
    issued = state.tokens.issue(client["client_id"], scope)
    return json_response(
        200,
        {
            "access_token": issued.token,
            "token_type": "Bearer",
            "expires_in": issued.expires_at - issued.issued_at,
            "scope": issued.scope,
        },
        headers={"Cache-Control": "no-store"},
    )


def _introspection_allowed(state: ServerState, request: Request) -> bool:
    auth = request.authorization
    if auth is not None and auth.type == "bearer":
        try:
            secret = state.config.matrix_secret()
        except ConfigError:
            return False
        return hmac.compare_digest((auth.token or "").encode(), secret.encode())
    return _authenticate_client(state, request) is not None


def introspect(state: ServerState, request: Request) -> Response:
    """``POST /oauth2/introspect`` (RFC 7662)."""
    if not _introspection_allowed(state, request):
        return _oauth_error(401, "invalid_client", "Client authentication failed")
    presented = request.form.get("token", "")
    inactive = json_response(200, {"active": False})
    issued = state.tokens.get(presented)
    if issued is not None:
        return json_response(
            200,
            {
                "active": True,
                "scope": normalize_scope(issued.scope.split()),
                "client_id": issued.client_id,
                "token_type": "access_token",
                "exp": issued.expires_at,
                "expires_in": max(0, issued.expires_at - int(time.time())),
                "iat": issued.issued_at,
                "nbf": issued.issued_at,
                "jti": issued.jti,
            },
        )
    personal = tokens.introspect(state, presented)
    if personal is not None:
        return json_response(200, personal)
    with state.db() as conn:
        compat = db.find_compat_access_token(conn, presented) if presented else None
    if compat is None or compat.session_finished:
        return inactive
    user = compat.user
    if user.locked_at is not None or user.deactivated_at is not None:
        return inactive
    now = time.time()
    if compat.expires_at is not None and compat.expires_at.timestamp() <= now:
        return inactive
    # introspection.rs: both API scopes; the device scopes (both forms) unless the caller sends
    # X-MAS-Supports-Device-Id: 1 (then only device_id says it); no iss, no jti
    scopes = {MATRIX_API_SCOPE, UNSTABLE_API_SCOPE}
    if compat.device_id and request.headers.get("X-MAS-Supports-Device-Id") != "1":
        scopes |= {DEVICE_SCOPE_PREFIX + compat.device_id, UNSTABLE_DEVICE_SCOPE_PREFIX + compat.device_id}
    if compat.is_synapse_admin:
        scopes.add(SYNAPSE_ADMIN_SCOPE)
    body = {
        "active": True,
        "scope": " ".join(sorted(scopes)),
        "client_id": "legacy",
        "username": user.username,
        "token_type": "access_token",
    }
    if compat.expires_at is not None:
        body["exp"] = int(compat.expires_at.timestamp())
        body["expires_in"] = max(0, int(compat.expires_at.timestamp() - now))
    body.update(iat=int(compat.created_at.timestamp()), nbf=int(compat.created_at.timestamp()), sub=user.ulid)
    if compat.device_id:
        body["device_id"] = compat.device_id
    return json_response(200, body)


def revoke(state: ServerState, request: Request) -> Response:
    """``POST /oauth2/revoke``: forget a client-credentials token (always 200)."""
    if _authenticate_client(state, request) is None:
        return _oauth_error(401, "invalid_client", "Client authentication failed")
    state.tokens.revoke(request.form.get("token", ""))
    return json_response(200, {})
