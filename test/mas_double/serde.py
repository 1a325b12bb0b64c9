"""What MAS's serde refuses while it reads config.yaml, worded like figment (see FIDELITY.md).

MAS deserialises each section into typed structs (``crates/config/src/sections/*.rs``)
before any ``validate()`` runs: enums by their serde names, ``NonZeroU64``,
``url::Url``, ``serde_with::DurationSeconds<u64>``, ``Ulid``.  The double's JSON
schema check says the same things in jsonschema's words (or not at all: the
schema's ``format: uri`` is not checked, its ULID pattern refuses the lower-case
IDs MAS reads); this module gives MAS's words for the keys it models, and
:func:`dsn_error` parses ``telemetry.sentry.dsn`` like sentry-types, whose
refusal is a panic of every ``mas-cli`` command.

Each check takes ``at(message, *path)``, which places the message at a key
(``_Rules.at`` of :mod:`mas_double.config`), or gives "" to leave that section out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

At = Callable[..., str]

PKCE_METHODS = ("auto", "always", "never")
RESPONSE_MODES = ("query", "form_post")
BACKCHANNEL_LOGOUT = ("do_nothing", "logout_browser_only", "logout_all")
IMPORT_ACTIONS = ("ignore", "suggest", "force", "require")
ON_CONFLICT = ("fail", "add", "replace", "set")
TRACING_EXPORTERS = ("none", "stdout", "otlp")
METRICS_EXPORTERS = ("none", "stdout", "otlp", "prometheus")
PROPAGATORS = ("tracecontext", "baggage", "jaeger")

_CROCKFORD = frozenset("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
#: url's "special" schemes: they need a host
_SPECIAL = ("http", "https", "ws", "wss", "ftp")


def actual(value: Any) -> str:
    """A value as figment's ``Actual`` names it in ``invalid type``/``invalid value`` errors."""
    if value is None:
        return "unit"
    if isinstance(value, bool):
        return f"bool {str(value).lower()}"
    if isinstance(value, int):
        return f"{'signed' if value < 0 else 'unsigned'} int `{value}`"
    if isinstance(value, float):
        return f"float `{int(value) if value.is_integer() else value}`"
    if isinstance(value, str):
        return f"string {json.dumps(value)}"
    return "sequence" if isinstance(value, list) else "map"


def _variants(names: tuple[str, ...]) -> str:
    quoted = [f"`{name}`" for name in names]
    if len(quoted) == 1:
        return quoted[0]
    if len(quoted) == 2:
        return f"{quoted[0]} or {quoted[1]}"
    return "one of " + ", ".join(quoted)


def enum_error(value: Any, names: tuple[str, ...], enum: str) -> str | None:
    """serde's refusal of ``value`` for a unit enum with the serde names ``names`` (None: accepted)."""
    if isinstance(value, str):
        return None if value in names else f"unknown variant: found `{value}`, expected `{_variants(names)}`"
    return f"invalid type: found {actual(value)}, expected enum {enum}"


def u64_error(value: Any, nonzero: bool = False) -> str | None:
    """serde's refusal of ``value`` as a ``u64`` (``NonZeroU64`` with ``nonzero``)."""
    expected = "a nonzero u64" if nonzero else "u64"
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0 or (nonzero and value == 0):
            return f"invalid value {actual(value)}, expected {expected}"
        return None
    return f"invalid type: found {actual(value)}, expected {expected}"


def url_error(value: Any) -> str | None:
    """``url::Url``'s refusal of a string (non-strings are left to the schema check)."""
    if not isinstance(value, str):
        return None
    text = value.strip(" \t\n\r\x0b\x0c\x00")
    if not _SCHEME.match(text):
        return f"relative URL without a base: {json.dumps(value)}"
    scheme, _, rest = text.partition(":")
    if scheme.lower() in _SPECIAL and not _host(rest):
        return f"empty host: {json.dumps(value)}"
    return None


def _host(rest: str) -> str:
    """The host of a special URL after its ``scheme:`` (url reads ``http:x`` as ``http://x``)."""
    authority = re.split(r"[/?#\\]", rest.lstrip("/\\"), maxsplit=1)[0]
    return re.sub(r":[0-9]*$", "", authority.rpartition("@")[2])


def ulid_error(value: Any) -> str | None:
    """The ulid crate's refusal of a string (``from_string``): case-insensitive Crockford base32,
    26 characters; a first character above 7 is not refused (the value wraps)."""
    if not isinstance(value, str):
        return None
    if len(value) != 26:
        return "invalid length"
    if any(char.upper() not in _CROCKFORD for char in value):
        return "invalid character"
    return None


def dsn_error(value: Any) -> str | None:
    """Why sentry-types refuses ``value`` as a DSN (``Dsn::from_str``), as the panic names it
    (``InvalidUrl``, ``NoProjectId``, ...); None when it parses or is empty (no Sentry)."""
    if value is None or value == "":
        return None
    text = str(value).strip(" \t\n\r\x0b\x0c\x00")
    if not _SCHEME.match(text):
        return "InvalidUrl"
    try:
        parts = urlsplit(text)
        _ = parts.port
    except ValueError:
        return "InvalidUrl"
    if re.search(r'[\s"<>\\^`{|}]', parts.netloc):
        return "InvalidUrl"
    special = parts.scheme.lower() in _SPECIAL
    if special and not parts.hostname:
        return "InvalidUrl"
    if parts.path == "/" or (special and parts.path == ""):
        return "NoProjectId"
    if not parts.path.strip("/").rsplit("/", 1)[-1]:
        return "InvalidProjectId(EmptyValue)"
    if not parts.username:
        return "NoUsername"
    if parts.scheme.lower() not in ("http", "https"):
        return "InvalidScheme"
    if not parts.hostname:
        return "InvalidUrl"
    return None


def telemetry_errors(telemetry: dict, at: At) -> list[str]:
    """The telemetry section's types; ``at`` places a message at a path inside ``telemetry``."""
    errors = []
    for section, names, enum in (
        ("tracing", TRACING_EXPORTERS, "TracingExporterKind"),
        ("metrics", METRICS_EXPORTERS, "MetricsExporterKind"),
    ):
        part = telemetry.get(section)
        if isinstance(part, dict) and "exporter" in part:
            error = enum_error(part["exporter"], names, enum)
            if error:
                errors.append(at(error, section, "exporter"))
    propagators = (
        telemetry.get("tracing", {}).get("propagators") if isinstance(telemetry.get("tracing"), dict) else None
    )
    for index, propagator in enumerate(propagators if isinstance(propagators, list) else []):
        error = enum_error(propagator, PROPAGATORS, "Propagator")
        if error:
            errors.append(at(error, "tracing", "propagators", index))
    return errors


def section_errors(raw: dict, at: At) -> list[str]:
    """The types of ``clients``, ``database``, ``upstream_oauth2`` and ``experimental``, in
    ``RootConfig``'s field order (the first is what ``mas-cli`` reports)."""
    errors: list[str] = []

    def check(error: str | None, *path: Any) -> None:
        placed = at(error, *path) if error else ""
        if placed:  # ``at`` gives "" for a section it leaves out
            errors.append(placed)

    clients = raw.get("clients")
    for index, client in enumerate(clients if isinstance(clients, list) else []):
        if not isinstance(client, dict):
            continue
        check(ulid_error(client.get("client_id")), "clients", index, "client_id")
        for field in ("client_uri", "jwks_uri"):
            check(url_error(client.get(field)), "clients", index, field)
        uris = client.get("redirect_uris")
        for rindex, uri in enumerate(uris if isinstance(uris, list) else []):
            check(url_error(uri), "clients", index, "redirect_uris", rindex)

    database = raw.get("database") if isinstance(raw.get("database"), dict) else {}
    if "connect_timeout" in database:  # no Option: null is refused too
        check(u64_error(database["connect_timeout"]), "database", "connect_timeout")
    for field in ("idle_timeout", "max_lifetime"):
        if database.get(field) is not None:
            check(u64_error(database[field]), "database", field)

    upstream = raw.get("upstream_oauth2") if isinstance(raw.get("upstream_oauth2"), dict) else {}
    providers = upstream.get("providers")
    for index, provider in enumerate(providers if isinstance(providers, list) else []):
        if not isinstance(provider, dict):
            continue
        where = ("upstream_oauth2", "providers", index)
        check(ulid_error(provider.get("id")), *where, "id")
        for field, names, enum in (
            ("pkce_method", PKCE_METHODS, "PkceMethod"),
            ("response_mode", RESPONSE_MODES, "ResponseMode"),
            ("on_backchannel_logout", BACKCHANNEL_LOGOUT, "OnBackchannelLogout"),
        ):
            if provider.get(field) is not None:
                check(enum_error(provider[field], names, enum), *where, field)
        imports = provider.get("claims_imports") if isinstance(provider.get("claims_imports"), dict) else {}
        for claim in ("localpart", "displayname", "email"):
            section = imports.get(claim) if isinstance(imports.get(claim), dict) else {}
            if "action" in section:
                check(
                    enum_error(section["action"], IMPORT_ACTIONS, "ImportAction"),
                    *where,
                    "claims_imports",
                    claim,
                    "action",
                )
            if claim == "localpart" and "on_conflict" in section:
                check(
                    enum_error(section["on_conflict"], ON_CONFLICT, "OnConflict"),
                    *where,
                    "claims_imports",
                    claim,
                    "on_conflict",
                )

    experimental = raw.get("experimental") if isinstance(raw.get("experimental"), dict) else {}
    limit = experimental.get("session_limit")
    if isinstance(limit, dict):
        where = ("experimental", "session_limit")
        before = len(errors)
        for field, value in limit.items():  # serde: value errors in the order of the keys
            if field in ("soft_limit", "hard_limit") or (field == "max_session_threshold" and value is not None):
                check(u64_error(value, nonzero=True), *where, field)
        if len(errors) == before:
            for field in ("soft_limit", "hard_limit"):  # then missing fields, in the struct's order
                if field not in limit:
                    check(f"missing field `{field}`", *where)
                    break
    expiration = experimental.get("inactive_session_expiration")
    if isinstance(expiration, dict) and "ttl" not in expiration:
        check("missing field `ttl`", "experimental", "inactive_session_expiration")
    return errors
