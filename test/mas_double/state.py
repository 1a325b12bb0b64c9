"""Shared state and small helpers of the double's HTTP server.

``ServerState`` bundles what request handlers need: the configuration, the
password manager, the homeserver client and the in-memory store of OAuth 2.0
access tokens issued by ``/oauth2/token`` (client credentials).  Unlike MAS,
which keeps those in ``oauth2_access_tokens``, the double keeps them in memory:
they are lost when the server stops.  Compatibility tokens (``/login``) are
stored in the real ``compat_*`` tables.
"""

from __future__ import annotations

import json
import secrets
import string
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass

from werkzeug.wrappers import Response

from mas_double import ulid
from mas_double.config import MasConfig
from mas_double.homeserver import HomeserverConnection
from mas_double.passwords import PasswordManager
from mas_double.ratelimit import Limiter

_ALNUM = string.ascii_letters + string.digits
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase

#: Lifetime of client-credentials access tokens, in seconds (MAS default 300).
ACCESS_TOKEN_TTL = 300


def generate_token(prefix: str) -> str:
    """A MAS-shaped token: ``<prefix>_<30 alphanumerics>_<6-char base62 CRC32>``."""
    random_part = "".join(secrets.choice(_ALNUM) for _ in range(30))
    body = f"{prefix}_{random_part}"
    crc = zlib.crc32(body.encode())
    checksum = ""
    for _ in range(6):
        crc, digit = divmod(crc, 62)
        checksum = _BASE62[digit] + checksum
    return f"{body}_{checksum}"


def generate_device_id() -> str:
    """A random 10-character device ID (upper-case letters and digits)."""
    return "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(10))


def json_response(status: int, body: object, headers: dict | None = None) -> Response:
    """A JSON response (``application/json``)."""
    return Response(json.dumps(body), status=status, mimetype="application/json", headers=headers)


@dataclass
class IssuedToken:
    """An access token issued through the client-credentials grant."""

    token: str
    client_id: str
    scope: str
    issued_at: int
    expires_at: int
    jti: str  # the token's ULID (introspection answers it as ``jti``)

    @property
    def active(self) -> bool:
        """True until the token expires."""
        return time.time() < self.expires_at


class TokenStore:
    """Thread-safe in-memory store of client-credentials access tokens."""

    def __init__(self):
        self._lock = threading.Lock()
        self._tokens: dict[str, IssuedToken] = {}

    def issue(self, client_id: str, scope: str) -> IssuedToken:
        """Issue a fresh ``mat_`` token for ``client_id`` with ``scope``."""
        now = int(time.time())
        issued = IssuedToken(
            generate_token("mat"), client_id, scope, now, now + ACCESS_TOKEN_TTL, ulid.encode(ulid.new_int())
        )
        with self._lock:
            self._tokens[issued.token] = issued
        return issued

    def get(self, token: str) -> IssuedToken | None:
        """Return the active token record, or None."""
        with self._lock:
            issued = self._tokens.get(token)
        return issued if issued is not None and issued.active else None

    def revoke(self, token: str) -> None:
        """Forget a token."""
        with self._lock:
            self._tokens.pop(token, None)


class ServerState:
    """Everything request handlers share (one instance per server process)."""

    def __init__(self, config: MasConfig):
        self.config = config
        self.passwords = PasswordManager(config)
        self.homeserver = HomeserverConnection(config)
        self.tokens = TokenStore()
        self.limiter = Limiter(config.section("rate_limiting"), config.section("http").get("trusted_proxies"))

    @contextmanager
    def db(self):
        """A database connection for one request; committed on success, rolled back on error."""
        conn = self.config.connect()
        try:
            yield conn
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()
