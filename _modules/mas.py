"""
The map of the ``mas`` formula: pillar validation, the derived values and paths, and MAS's ``config.yaml``.

Everything the formula decides is made in Python, and the SLS files only fill
values in: :py:func:`mapdata` merges ``parameters/defaults.yaml``, pillar
``mas:lookup`` and pillar ``mas``, and :py:func:`settings` validates the
result (every problem at once, by pillar key), derives the host names, URLs
and every path the formula writes (``paths``: one source for SLS files and
modules alike), lists the secret files and builds ``config.yaml``
(``mas_config``). The map holds no secret value: the SLS only learn *that* a
secret is set and which file holds it. Also here: the MAS runtime the map
describes (the docker image, :py:func:`image_present`) and whether a file is
the formula's own (:py:func:`managed_by_formula`, :py:func:`foreign_files`).

Pillar is data, never code: every value is checked against the one strict
grammar of its kind (:py:func:`valid`, ``re.fullmatch``), secrets are never
taken inline from ``mas:config``, and MAS's own runtime rules (the
``validate()`` code of its config sections) are checked on the config.yaml
the formula would write, each refusal naming the pillar key.

:depends: PyYAML
"""

import copy
import datetime
import hashlib
import ipaddress
import json
import logging
import os
import re
import stat

import jinja2
import jinja2.sandbox
import salt.utils.data
import salt.utils.dictupdate
import salt.utils.files
import salt.utils.jinja
import salt.utils.yaml
from salt.exceptions import CommandExecutionError, SaltInvocationError
from salt.utils.decorators.jinja import JinjaFilter

log = logging.getLogger(__name__)

__virtualname__ = "mas"

PILLAR_ROOT = "mas"

RUNTIMES = ("docker", "binary")
EMAIL_TRANSPORTS = ("blackhole", "smtp", "sendmail")
SMTP_MODES = ("plain", "starttls", "tls")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
PROXY_TYPES = ("nginx", "traefik", "none")
TOKEN_AUTH_METHODS = (
    "none",
    "client_secret_basic",
    "client_secret_post",
    "client_secret_jwt",
    "private_key_jwt",
    "sign_in_with_apple",
)
ACCOUNT_TOGGLES = (
    "email_change_allowed",
    "displayname_change_allowed",
    "password_registration_enabled",
    "password_registration_email_required",
    "password_change_allowed",
    "password_recovery_enabled",
    "password_registration_token_required",
    "account_deactivation_allowed",
    "login_with_email_allowed",
    "registration_token_required",
)
BOOL_KEYS = (
    ("enabled",),
    ("migration_in_progress",),
    ("service", "manage"),
    ("secrets", "allow_encryption_rotation"),
    ("database", "manage"),
    ("synapse", "restart"),
    ("proxy", "reload"),
    ("proxy", "nginx", "well_known"),
    ("proxy", "traefik", "tls"),
    ("http", "adminapi"),
    ("clean", "purge"),
    ("doctor", "strict"),
    ("syn2mas", "dry_run"),
    ("syn2mas", "accept_warnings"),
    ("syn2mas", "ignore_missing_auth_providers"),
    ("syn2mas", "stop_services"),
    ("syn2mas", "start_synapse_after"),
)
# Secrets an operator may give in pillar: (pillar path, file name).
PILLAR_SECRETS = (
    (("secrets", "encryption"), "encryption"),
    (("secrets", "homeserver_secret"), "homeserver_secret"),
    (("database", "password"), "database_password"),
    (("email", "password"), "email_password"),
    (("synapse", "pepper"), "synapse_pepper"),
)
# Signing keys generated on the minion: (file name, kind).
SIGNING_KEYS = (
    ("rsa.pem", "rsa"),
    ("ec-p256.pem", "ec-p256"),
    ("ec-p384.pem", "ec-p384"),
    ("ec-k256.pem", "ec-k256"),
)

# The formula's own OAuth2 client of MAS (client_credentials, scope
# urn:mas:admin): a fixed id like upstream's 0000000000000000000SYNAPSE; its
# secret is generated on the minion.
ADMIN_CLIENT_ID = "00000000000000000SA1TADM1N"
_INVALID = "Invalid pillar for the mas formula (nothing was changed):\n- "
SYSTEMD_RESTART = ("no", "always", "on-success", "on-failure", "on-abnormal", "on-abort", "on-watchdog")
#: MAS's resources of the listeners the formula renders (its proxy, Synapse
#: and Salt reach MAS through them): a mas:config override must keep them.
WEB_RESOURCES = ("discovery", "human", "oauth", "compat", "graphql", "assets")

# --------------------------------------------------------------------------
# The validator kit: one strict grammar per kind of value
# --------------------------------------------------------------------------
# Pillar is data, never code. Every value that reaches a file, a command, a
# unit, a wrapper, nginx or Traefik is checked against the grammar of its kind
# with re.fullmatch (``$`` would let a trailing newline through); each kind
# has one checker, used wherever that kind appears, and one description of
# what a valid value looks like, which every refusal quotes.

_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_IP_CHARS = re.compile(r"[0-9A-Fa-f:.]+")
# An absolute path: single '/' between names of letters, digits and . _ + @ -
# (no spaces, quotes, '$', '%', ',' or control characters: paths reach the
# unit, the sh wrappers and docker --mount=src=...,dst=...).
_PATH = re.compile(r"(?:/[A-Za-z0-9._+@-]+)+")
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+@-]*")
_URL = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<path>/(?:[A-Za-z0-9._~+=@:,/-]|%[0-9A-Fa-f]{2})*)?"
)
_BIND = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>[0-9]{1,5})")
_URL_PATH = re.compile(r"/|(?:/[A-Za-z0-9._~-]+)+")
_ULID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_PG_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$-]{0,62}")
#: A file or directory name of the TOFS lookup (no '/', no leading '.').
_TOFS_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_UNIT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9:_.@-]{0,250}")
# mas:service:name names the unit, the docker container and the Traefik
# routers (a '.' would split a Traefik label key, '@' names a provider).
_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{1,62}")
_TRAEFIK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
# docker's reference grammar (distribution/reference): [domain[:port]/]path[:tag][@digest]
_IMAGE_DOMAIN = rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*(?::[0-9]+)?"
_IMAGE_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    rf"(?:{_IMAGE_DOMAIN}/)?{_IMAGE_PATH}(?:/{_IMAGE_PATH})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,})?"
)
_DOCKER_NETWORK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_DOCKER_ARG = re.compile(r"[A-Za-z0-9_./:=@,+-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# An email address as lettre's Mailbox parser takes it (MAS email.from):
# `addr`, or `[display name] <addr>`; names with , @ : ; ( ) [ ] < > quoted.
# atext: letters, digits, !#$%&'*+/=?^_`{|}~- and any non-ASCII character, written as what it is not (a
# class reaching U+10FFFF costs Python's re ~6 ms to compile, each time it appears)
_ATEXT = r'[^\x00-\x20\x7f"(),.:;<>@\[\\\]]'
_QUOTED = r'"(?:[^"\\\x00-\x1f\x7f]|\\[^\x00-\x1f\x7f])*"'
_ADDR_SPEC = rf"(?P<local>{_ATEXT}+(?:\.{_ATEXT}+)*|{_QUOTED})@(?P<domain>{_DNS_LABEL}(?:\.{_DNS_LABEL})*)"
_MAILBOX = re.compile(
    rf"[ \t]*(?:{_ADDR_SPEC}|(?:(?:{_ATEXT}+|{_QUOTED})(?:[ \t]*(?:[ \t]{_ATEXT}+|{_QUOTED}|\.))*[ \t]*)?"
    rf"<{_ADDR_SPEC.replace('?P<local>', '?P<local2>').replace('?P<domain>', '?P<domain2>')}>)[ \t]*"
)

#: What a valid value of each kind looks like (quoted by every refusal).
KINDS = {
    "hostname": "a DNS host name (dot-separated labels of letters, digits and '-', e.g. matrix.example.com)",
    "host": "a DNS host name or an IP address (e.g. smtp.example.com or 192.0.2.10)",
    "url": "an http(s) URL: scheme, host, optional port and path, nothing else (no spaces, quotes, query or"
    " control characters; e.g. https://matrix.example.com/)",
    "origin": "http(s)://HOST[:PORT] without a path (e.g. http://127.0.0.1:8080)",
    "bind": "HOST:PORT, HOST an IP address or a DNS name and IPv6 in brackets (e.g. [::]:8080, 127.0.0.1:8081,"
    " localhost:8081)",
    "path": "an absolute, normalised path: names of letters, digits and . _ + @ - between single '/', no '..',"
    " spaces, quotes or control characters (e.g. /srv/mas)",
    "unit": "a systemd unit name (letters, digits and : _ . @ -, not starting with '-'; e.g. matrix-synapse)",
    "service": "2-63 letters, digits, '_' or '-', starting with a letter or digit (it names the systemd unit, the"
    " container and the Traefik routers; e.g. matrix-authentication-service)",
    "image": "a container image reference, [registry/]name[:tag][@sha256:digest] (e.g."
    " ghcr.io/element-hq/matrix-authentication-service:1.23.0)",
    "command": "the absolute path of the program (e.g. /usr/bin/docker)",
    "traefik": "a Traefik name: letters, digits, '_' and '-' (e.g. websecure)",
    "name": "a user or group name: lower-case letters, digits, '_' and '-', at most 32 (e.g. mas)",
    "port": "a port number from 1 to 65535 (an integer, or a string of digits)",
    "mailbox": "one email address, `addr@example.com` or `Name <addr@example.com>` (quote a name holding"
    " , @ : ; ( ) [ ] < >, e.g. '\"Doe, John\" <mas@example.com>')",
    "url_path": "'/' or a URL path of letters, digits and . _ ~ - between single '/' (e.g. /auth)",
    "file_name": "a file name of letters, digits and . _ + @ - (no '/')",
}


def __virtual__():
    return __virtualname__


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------


def _key(*path):
    return ":".join((PILLAR_ROOT,) + tuple(str(p) for p in path))


def _get(data, *path, default=None):
    return salt.utils.data.traverse_dict_and_list(data, list(path), default)


def _is_set(value):
    return value not in (None, "", [], {})


def _is_text(value):
    """A string without control characters (newline, tab, NUL, ...)."""
    return isinstance(value, str) and not _CONTROL.search(value)


def _is_dns_name(value):
    return isinstance(value, str) and 0 < len(value) <= 253 and bool(_HOSTNAME.fullmatch(value))


def _is_ip(value, version=None):
    if not isinstance(value, str) or not _IP_CHARS.fullmatch(value):
        return False
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    return version is None or address.version == version


def _as_port(value):
    """The port ``value`` names (an int, or a string of digits), else None; floats are refused."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,5}", value):
        value = int(value)
    if not isinstance(value, int):
        return None
    return value if 0 < value < 65536 else None


def _is_url(value, schemes=("http", "https"), path=True, slash=False):
    """An absolute URL of ``schemes``: host (DNS name, IPv4 or [IPv6]), optional port, optional path
    (``path`` false: none at all; ``slash``: a path must end with '/'), no userinfo, query or fragment."""
    match = _URL.fullmatch(value) if isinstance(value, str) else None
    if not match or match["scheme"] not in schemes:
        return False
    host = match["host"]
    if host.startswith("["):
        if not _is_ip(host[1:-1], 6):
            return False
    elif not (_is_dns_name(host) or _is_ip(host, 4)):
        return False
    if match["port"] is not None and _as_port(match["port"]) is None:
        return False
    if match["path"] and (not path or (slash and not match["path"].endswith("/"))):
        return False
    return "//" not in (match["path"] or "")


def _split_hostport(value):
    """``(host, port)`` of a bind ``HOST:PORT`` (IPv6 unbracketed), or None."""
    match = _BIND.fullmatch(value) if isinstance(value, str) else None
    if not match or _as_port(match["port"]) is None:
        return None
    if match["v6"] is not None:
        return (match["v6"], int(match["port"])) if _is_ip(match["v6"], 6) else None
    host = match["host"]
    return (host, int(match["port"])) if _is_ip(host, 4) or _is_dns_name(host) else None


def _is_cidr(value):
    if not isinstance(value, str) or not re.fullmatch(r"[0-9A-Fa-f:.]+(?:/[0-9]{1,3})?", value):
        return False
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def _is_path(value):
    return (
        isinstance(value, str)
        and len(value) <= 4096
        and bool(_PATH.fullmatch(value))
        and not any(part in (".", "..") for part in value.split("/"))
    )


_CHECKS = {
    "hostname": _is_dns_name,
    "host": lambda v: _is_dns_name(v) or _is_ip(v),
    "url": _is_url,
    "origin": lambda v: _is_url(v, path=False),
    "bind": lambda v: _split_hostport(v) is not None,
    "path": _is_path,
    "command": _is_path,
    "unit": lambda v: isinstance(v, str) and bool(_UNIT_NAME.fullmatch(v)),
    "service": lambda v: isinstance(v, str) and bool(_SERVICE_NAME.fullmatch(v)),
    "image": lambda v: isinstance(v, str) and len(v) <= 255 and bool(_IMAGE.fullmatch(v)),
    "traefik": lambda v: isinstance(v, str) and bool(_TRAEFIK_NAME.fullmatch(v)),
    "name": lambda v: isinstance(v, str) and bool(_NAME.fullmatch(v)),
    "port": lambda v: _as_port(v) is not None,
    "mailbox": lambda v: isinstance(v, str) and bool(_MAILBOX.fullmatch(v)),
    "url_path": lambda v: isinstance(v, str) and bool(_URL_PATH.fullmatch(v)),
    "file_name": lambda v: isinstance(v, str) and v not in (".", "..") and bool(_FILE_NAME.fullmatch(v)),
}


def valid(kind, value):
    """
    Whether ``value`` is a valid value of ``kind`` for the formula: the one
    strict grammar (``re.fullmatch``) of that kind of value, the same that
    the pillar validation applies. Kinds: hostname, host, url, origin, bind,
    path, command, unit, service, image, traefik, name, port, mailbox,
    url_path, file_name.

    kind
        The kind of value.
    value
        The value to check.

    CLI Example:

    .. code-block:: bash

        salt-call mas.valid bind '[::]:8080'
    """
    if kind not in _CHECKS:
        raise SaltInvocationError(f"mas.valid: unknown kind {kind!r} (known: {', '.join(sorted(_CHECKS))})")
    return bool(_CHECKS[kind](value))


class _Errors(list):
    def add(self, path, message):
        self.append(f"{_key(*path)}: {message}")

    def expect(self, path, value, kind, optional=False, what=None):
        """Add a refusal unless ``value`` is of ``kind`` (``optional``: an unset value passes)."""
        if (optional and not _is_set(value)) or _CHECKS[kind](value):
            return True
        self.add(path, f"must be {what or KINDS[kind]}, not {value!r}")
        return False

    def secret(self, path, value, trimmed=False):
        """A secret from pillar: a string (or an integer), no control characters; never echoed."""
        if not _is_set(value):
            return True
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            self.add(
                path,
                f"must be a string (or an integer), not a {type(value).__name__}; quote it in YAML if needed",
            )
            return False
        if _CONTROL.search(str(value)):
            self.add(path, "must not contain control characters (newline, tab, ...)")
            return False
        if trimmed and str(value) != str(value).strip():
            self.add(path, "must not start or end with whitespace (MAS trims the file it reads it from)")
            return False
        return True


def _validate(data):
    """Return the list of problems of the merged pillar ``data``."""
    errors = _Errors()
    for section in (
        "service",
        "secrets",
        "database",
        "synapse",
        "proxy",
        "http",
        "clean",
        "doctor",
        "syn2mas",
        "email",
        "tofs",
    ):
        if not isinstance(data.get(section), dict):
            errors.add((section,), "must be a mapping")
    for path in (("service", "docker"), ("proxy", "nginx"), ("proxy", "traefik"), ("database", "admin")):
        if isinstance(data.get(path[0]), dict) and not isinstance(_get(data, *path), dict):
            errors.add(path, "must be a mapping")
    if errors:
        return errors
    for path in BOOL_KEYS:
        value = _get(data, *path)
        if not isinstance(value, bool):
            errors.add(path, f"must be true or false, not {value!r}")
            # go on validating the rest with a neutral value: every problem at once
            node = data
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = False
    enabled = data["enabled"]

    server_name = data.get("server_name")
    if enabled and not _is_set(server_name):
        errors.add(("server_name",), "is required when mas:enabled is true")
    elif _is_set(server_name):
        if not isinstance(server_name, str) or "://" in server_name or ":" in server_name:
            errors.add(
                ("server_name",),
                f"must be the bare Matrix domain (no scheme, no port), not {server_name!r}",
            )
        elif not _is_dns_name(server_name):
            errors.add(("server_name",), f"{server_name!r} is not a DNS name: must be {KINDS['hostname']}")

    hostname = data.get("hostname")
    if _is_set(hostname) and not _is_dns_name(hostname):
        errors.add(
            ("hostname",), f"{hostname!r} is not a DNS name (no scheme, port or path): must be {KINDS['hostname']}"
        )

    prefix = data.get("path_prefix")
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        errors.add(("path_prefix",), f"must start with '/', not {prefix!r}")
    elif prefix != "/" and prefix.endswith("/"):
        errors.add(("path_prefix",), f"must not end with '/' (use /auth, not /auth/): {prefix!r}")
    elif not _CHECKS["url_path"](prefix):
        errors.add(("path_prefix",), f"{prefix!r} is not a plain URL path: must be {KINDS['url_path']}")

    for path in (("base_path",), ("service", "unit_dir")):
        errors.expect(path, _get(data, *path), "path")
    restart = _get(data, "service", "restart")
    if restart not in SYSTEMD_RESTART:
        errors.add(("service", "restart"), f"must be one of {', '.join(SYSTEMD_RESTART)}, not {restart!r}")
    for path in (("user",), ("group",)):
        errors.expect(path, _get(data, *path), "name")
    errors.expect(("service", "name"), _get(data, "service", "name"), "service")

    runtime = data.get("runtime")
    if runtime not in RUNTIMES:
        errors.add(("runtime",), f"must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    elif runtime == "docker":
        errors.expect(("image",), data.get("image"), "image")
        errors.expect(("service", "docker", "command"), _get(data, "service", "docker", "command"), "command")
        network = _get(data, "service", "docker", "network")
        if not isinstance(network, str) or (network and not _DOCKER_NETWORK.fullmatch(network)):
            errors.add(
                ("service", "docker", "network"),
                f"must be a docker network name (letters, digits and _ . -, e.g. host), not {network!r}",
            )
        extra = _get(data, "service", "docker", "extra_args")
        if not isinstance(extra, list) or not all(isinstance(a, str) and _DOCKER_ARG.fullmatch(a) for a in extra):
            errors.add(
                ("service", "docker", "extra_args"),
                "must be a list of single docker arguments (letters, digits and _ . / : = @ , + -; e.g."
                " --publish=127.0.0.1:8080:8080)",
            )
    _validate_binary(data, errors)
    _validate_ca_bundle(data, errors)

    for path in (("http", "web_bind"), ("http", "internal_bind")):
        errors.expect(path, _get(data, *path), "bind")
    proxies = _get(data, "http", "trusted_proxies")
    if not isinstance(proxies, list):
        errors.add(("http", "trusted_proxies"), "must be a list of CIDR networks (e.g. [127.0.0.1/32])")
    else:
        for index, net in enumerate(proxies):
            if not _is_cidr(net):
                errors.add(("http", "trusted_proxies", index), f"{net!r} is not a CIDR network (e.g. 10.0.0.0/8)")

    _validate_secrets(data, errors)
    _validate_database(data, errors)
    _validate_email(data, errors)
    _validate_account(data, errors)
    _validate_providers(data, errors)

    endpoint = _get(data, "synapse", "endpoint")
    if errors.expect(("synapse", "endpoint"), endpoint, "url") and not _is_url(endpoint, slash=True):
        errors.add(
            ("synapse", "endpoint"),
            f"must end with '/' when it has a path (MAS joins _synapse/mas/... to it), not {endpoint!r}",
        )
    errors.expect(("synapse", "mas_endpoint"), _get(data, "synapse", "mas_endpoint"), "url", optional=True)
    files = _get(data, "synapse", "config_files")
    if not isinstance(files, list) or not all(_is_path(f) for f in files):
        errors.add(("synapse", "config_files"), f"must be a list of file paths, each {KINDS['path']}")
    if not isinstance(_get(data, "synapse", "extra_config"), dict):
        errors.add(("synapse", "extra_config"), "must be a mapping (Synapse config keys)")

    _validate_synapse(data, errors)
    _validate_proxy(data, errors)
    _validate_traefik_tls(data, errors)
    _validate_users(data, errors)
    _validate_registration_tokens(data, errors)
    _validate_syn2mas(data, errors)
    _validate_doctor(data, errors)
    _validate_tofs(data, errors)
    _validate_config(data, errors)
    return errors


USER_KEYS = (
    "username",
    "password",
    "admin",
    "emails",
    "locked",
    "password_update",
    "skip_password_check",
    "absent",
    "erase",
    "access_token",
)
ACCESS_TOKEN_KEYS = ("path", "owner", "group", "scope", "device_id", "expires_in", "renew_before", "synapse_admin")
REGISTRATION_TOKEN_KEYS = ("usage_limit", "expires", "revoked")
_TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _validate_users(data, errors):
    """``mas:users`` (and ``mas:synapse:formula_admin``); usernames and emails are
    judged by ``mas_user`` itself (one rule for the pillar and the CLI)."""
    admin_user = _get(data, "synapse", "formula_admin")
    try:
        __salt__["mas_user.check_username"](admin_user)
    except SaltInvocationError:
        errors.add(("synapse", "formula_admin"), f"must be a Matrix localpart (a-z, 0-9, ._=/+-), not {admin_user!r}")
    users = data.get("users")
    if not isinstance(users, list):
        errors.add(("users",), "must be a list of {username, password, admin, emails, ...}")
        return
    seen = set()
    for index, user in enumerate(users):
        path = ("users", index)
        if not isinstance(user, dict):
            errors.add(path, "must be a mapping with at least `username`")
            continue
        name = user.get("username")
        try:
            if not isinstance(name, str) or __salt__["mas_user.check_username"](name) != name:
                raise SaltInvocationError(name)
        except SaltInvocationError:
            errors.add(path + ("username",), f"must be a Matrix localpart (a-z, 0-9, ._=/+-), not {name!r}")
        else:
            if name in seen:
                errors.add(path + ("username",), f"{name} is listed twice")
            seen.add(name)
        for key in ("admin", "skip_password_check", "absent", "erase"):
            if not isinstance(user.get(key, False), bool):
                errors.add(path + (key,), f"must be true or false, not {user.get(key)!r}")
        if user.get("locked") is not None and not isinstance(user["locked"], bool):
            errors.add(path + ("locked",), f"must be true, false or unset, not {user['locked']!r}")
        if user.get("password_update", "on_create") not in ("on_create", "always"):
            errors.add(path + ("password_update",), f"must be on_create or always, not {user['password_update']!r}")
        emails = user.get("emails", [])
        if not isinstance(emails, list):
            errors.add(path + ("emails",), "must be a list of email addresses")
        else:
            for position, email in enumerate(emails):
                try:
                    __salt__["mas_user.check_email"](email)
                except SaltInvocationError:
                    errors.add(path + ("emails", position), f"{email!r} is not an email address")
        errors.secret(path + ("password",), user.get("password"))
        if user.get("access_token") is not None:
            _validate_access_token(user["access_token"], path + ("access_token",), errors)
        unknown = set(user) - set(USER_KEYS)
        if unknown:
            errors.add(path, f"unknown keys {', '.join(sorted(unknown))} (known: {', '.join(USER_KEYS)})")


def _validate_access_token(token, path, errors):
    if not isinstance(token, dict):
        errors.add(path, "must be a mapping {path, owner, group, expires_in, ...}")
        return
    errors.expect(path + ("path",), token.get("path"), "path", what=f"an absolute file path ({KINDS['path']})")
    for key in ("owner", "group"):
        if token.get(key) is not None:
            errors.expect(path + (key,), token[key], "name")
    for key, low in (("expires_in", 60), ("renew_before", 0)):
        value = token.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            errors.add(path + (key,), f"must be a number of seconds >= {low}, not {value!r}")
    if token.get("scope") is not None and (not isinstance(token["scope"], str) or not token["scope"].split()):
        errors.add(path + ("scope",), "must be a space-separated list of OAuth2 scopes")
    device = token.get("device_id")
    if device is not None and (
        not isinstance(device, str) or not re.fullmatch(r"[A-Za-z0-9._~!$&'()*+,;=:@/-]{1,255}", device)
    ):
        errors.add(path + ("device_id",), f"{device!r} is not a device ID usable in a scope")
    if not isinstance(token.get("synapse_admin", False), bool):
        errors.add(path + ("synapse_admin",), f"must be true or false, not {token['synapse_admin']!r}")
    unknown = set(token) - set(ACCESS_TOKEN_KEYS)
    if unknown:
        errors.add(path, f"unknown keys {', '.join(sorted(unknown))} (known: {', '.join(ACCESS_TOKEN_KEYS)})")


def _validate_registration_tokens(data, errors):
    tokens = data.get("registration_tokens")
    if not isinstance(tokens, dict):
        errors.add(("registration_tokens",), "must be a mapping of name -> {usage_limit, expires, revoked}")
        return
    for name, token in tokens.items():
        path = ("registration_tokens", name)
        if not isinstance(name, str) or not _TOKEN_NAME.fullmatch(name):
            errors.add(path, "the name must be 1-64 letters, digits, '.', '_' or '-' (it names the token's file)")
        if token is None:
            tokens[name] = token = {}
        if not isinstance(token, dict):
            errors.add(path, "must be a mapping {usage_limit, expires, revoked}")
            continue
        limit = token.get("usage_limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit < 2**32):
            errors.add(path + ("usage_limit",), f"must be a number of uses (or unset: unlimited), not {limit!r}")
        expires = token.get("expires")
        if isinstance(expires, datetime.datetime):  # YAML reads an unquoted timestamp as a datetime
            expires = token["expires"] = expires.isoformat()
        if expires is not None:
            try:
                parsed = datetime.datetime.fromisoformat(str(expires).replace("Z", "+00:00"))
                if parsed.tzinfo is None:
                    raise ValueError(expires)
                token["expires"] = parsed.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            except ValueError:
                errors.add(
                    path + ("expires",), f"must be an RFC 3339 time with a zone (2030-01-31T00:00:00Z), not {expires!r}"
                )
        if not isinstance(token.get("revoked", False), bool):
            errors.add(path + ("revoked",), f"must be true or false, not {token['revoked']!r}")
        unknown = set(token) - set(REGISTRATION_TOKEN_KEYS)
        if unknown:
            errors.add(path, f"unknown keys {', '.join(sorted(unknown))} (known: {', '.join(REGISTRATION_TOKEN_KEYS)})")


def _validate_syn2mas(data, errors):
    syn2mas = data["syn2mas"]
    known = (
        "dry_run",
        "accept_warnings",
        "ignore_missing_auth_providers",
        "stop_services",
        "start_synapse_after",
        "synapse_config_files",
        "synapse_database_uri",
        "timeout",
        "stop_timeout",
        "backup",
        "backup_dir",
        "assume_fresh",
        "force_rollback",
        "extra_arguments",
    )
    for key in sorted(set(syn2mas) - set(known)):
        errors.add(("syn2mas", key), f"unknown option (known: {', '.join(sorted(known))})")
    files = syn2mas.get("synapse_config_files")
    if not isinstance(files, list) or not all(_is_path(f) for f in files):
        errors.add(("syn2mas", "synapse_config_files"), f"must be a list of file paths, each {KINDS['path']}")
    uri = syn2mas.get("synapse_database_uri")
    if _is_set(uri) and not (_is_text(uri) and re.match(r"postgres(ql)?://\S+\Z", uri)):
        errors.add(("syn2mas", "synapse_database_uri"), "must be a postgresql:// URI (or empty)")
    for key in ("timeout", "stop_timeout"):
        value = syn2mas.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            errors.add(("syn2mas", key), f"must be a positive number of seconds, not {value!r}")
    for key in ("backup", "assume_fresh", "force_rollback"):
        if not isinstance(syn2mas.get(key), bool):
            errors.add(("syn2mas", key), f"must be true or false, not {syn2mas.get(key)!r}")
    backup_dir = syn2mas.get("backup_dir")
    if _is_set(backup_dir) and not (
        isinstance(backup_dir, str)
        and os.path.isabs(backup_dir)
        and os.path.normpath(backup_dir) == backup_dir.rstrip("/")
        and backup_dir != "/"
    ):
        errors.add(("syn2mas", "backup_dir"), f"must be an absolute, normalised directory path, not {backup_dir!r}")
    _syn2mas_extra_arguments(data, errors)


#: The seed's syn2mas arguments the formula translates (the TypeScript tool's; MDAD's ..._extra_arguments).
SYN2MAS_EXTRA_ARGUMENTS = ("--upstreamProviderMapping <synapse idp>:<MAS provider id>",)


def _syn2mas_extra_arguments(data, errors):
    """Translate the seed's ``--upstreamProviderMapping <synapse idp>:<MAS provider id>``
    (``mas:syn2mas:extra_arguments``) into ``synapse_idp_id`` on that provider,
    with a deprecation notice (``syn2mas:deprecations``); refuse anything else."""
    path = ("syn2mas", "extra_arguments")
    items = data["syn2mas"].get("extra_arguments")
    data["syn2mas"]["deprecations"] = []
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        errors.add(path, "must be a list of strings (the seed's syn2mas arguments)")
        return
    accepted = "accepted: " + ", ".join(SYN2MAS_EXTRA_ARGUMENTS)
    tokens = [token for item in items for token in item.split()]
    mappings = []
    while tokens:
        token = tokens.pop(0)
        flag, _, value = token.partition("=")
        if flag != "--upstreamProviderMapping":
            errors.add(
                path,
                f"{token!r} is not accepted ({accepted}; the Rust syn2mas's own options are pillar keys under "
                "mas:syn2mas: accept_warnings, ignore_missing_auth_providers, synapse_config_files, "
                "synapse_database_uri)",
            )
            continue
        if not value:
            value = tokens.pop(0) if tokens else ""
        idp, _, provider_id = value.rpartition(":")
        if not re.match(r"^oidc(-[A-Za-z0-9._~-]+)?$", idp) or not _ULID.match(provider_id):
            errors.add(path, f"--upstreamProviderMapping {value!r} must be <synapse idp>:<MAS provider ULID>")
            continue
        mappings.append((idp, provider_id))
    providers = data.get("upstream_oauth2_providers")
    providers = providers if isinstance(providers, list) else []
    for idp, provider_id in mappings:
        match = [p for p in providers if isinstance(p, dict) and str(p.get("id", "")).upper() == provider_id.upper()]
        if not match:
            known = ", ".join(str(p.get("id")) for p in providers if isinstance(p, dict)) or "none"
            errors.add(
                path,
                f"--upstreamProviderMapping {idp}:{provider_id}: no provider {provider_id} in "
                f"mas:upstream_oauth2_providers (known ids: {known})",
            )
            continue
        provider = match[0]
        if _is_set(provider.get("synapse_idp_id")) and provider["synapse_idp_id"] != idp:
            errors.add(
                path,
                f"--upstreamProviderMapping {idp}:{provider_id} contradicts synapse_idp_id "
                f"{provider['synapse_idp_id']!r} of that provider in mas:upstream_oauth2_providers",
            )
            continue
        provider["synapse_idp_id"] = idp
        data["syn2mas"]["deprecations"].append(
            f"mas:syn2mas:extra_arguments: --upstreamProviderMapping {idp}:{provider_id} (the seed's syn2mas "
            f"option) is deprecated: the formula set synapse_idp_id: {idp} on provider {provider_id}; set it there "
            "in mas:upstream_oauth2_providers instead"
        )
        log.warning("mas: %s", data["syn2mas"]["deprecations"][-1])


def _validate_doctor(data, errors):
    doctor = data["doctor"]
    known = ("strict", "after_apply", "wait", "timeout", "proxy_url", "tls_verify")
    for key in sorted(set(doctor) - set(known)):
        errors.add(("doctor", key), f"unknown option (known: {', '.join(known)})")
    if not isinstance(doctor.get("after_apply"), bool):
        errors.add(("doctor", "after_apply"), f"must be true or false, not {doctor.get('after_apply')!r}")
    for key in ("wait", "timeout"):
        value = doctor.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            errors.add(("doctor", key), f"must be a positive number of seconds, not {value!r}")
    url = doctor.get("proxy_url")
    if _is_set(url) and not _CHECKS["origin"](url.removesuffix("/") if isinstance(url, str) else url):
        errors.add(("doctor", "proxy_url"), f"must be {KINDS['origin']}, not {url!r}")
    verify = doctor.get("tls_verify")
    if not isinstance(verify, bool) and not _is_path(verify):
        errors.add(
            ("doctor", "tls_verify"),
            f"must be true, false or the path of a CA bundle ({KINDS['path']}), not {verify!r}",
        )


BINARY_KEYS = ("source", "source_hash", "path", "share_dir")
#: Where Salt's archive.extracted can fetch the release tarball from.
_ARCHIVE_URL = re.compile(r"(?:https?|salt)://[A-Za-z0-9._~:/?#@!$&'()*+,;=%-]+")
_SOURCE_HASH = re.compile(r"(?:(sha256)=)?([0-9a-fA-F]{64})|(sha512)=([0-9a-fA-F]{128})")
_BINARY_EXAMPLE = (
    "{source: https://github.com/element-hq/matrix-authentication-service/releases/download/v1.23.0/"
    "mas-cli-x86_64-linux.tar.gz, source_hash: sha256=<64 hex>} (the release tarball), or"
    " {path: /usr/local/bin/mas-cli, share_dir: /usr/local/share/mas-cli} (a MAS installed some other way)"
)


def _validate_binary(data, errors):
    """``mas:binary``: the MAS release tarball (``source``/``source_hash``) or an installed MAS (``path``/``share_dir``)."""
    binary = data.get("binary")
    if isinstance(binary, str):
        errors.add(("binary",), f"must now be a mapping, not the path {binary!r}: {_BINARY_EXAMPLE}")
        return
    if not isinstance(binary, dict):
        errors.add(("binary",), f"must be a mapping: {_BINARY_EXAMPLE}")
        return
    for key in sorted(set(binary) - set(BINARY_KEYS)):
        errors.add(("binary", key), f"unknown key (known: {', '.join(BINARY_KEYS)})")
    source, source_hash = binary.get("source"), binary.get("source_hash")
    if _is_set(source):
        local = source[len("file://") :] if isinstance(source, str) and source.startswith("file:///") else source
        if not (isinstance(source, str) and (_ARCHIVE_URL.fullmatch(source) or _is_path(local))):
            errors.add(
                ("binary", "source"),
                f"must be the URL (https://, salt://, file://) or absolute path of mas-cli-<arch>-linux.tar.gz,"
                f" not {source!r}",
            )
        if not (isinstance(source_hash, str) and _SOURCE_HASH.fullmatch(source_hash)):
            errors.add(
                ("binary", "source_hash"),
                "is required with mas:binary:source: sha256=<64 hex digits> (or sha512=<128>) of the tarball",
            )
        for key in ("path", "share_dir"):
            if _is_set(binary.get(key)):
                errors.add(("binary", key), "must be left empty with mas:binary:source (it is inside the tarball)")
        return
    if _is_set(source_hash):
        errors.add(("binary", "source_hash"), "is only used with mas:binary:source")
    for key in ("path", "share_dir"):
        value = binary.get(key)
        if not _is_set(value):
            if data.get("runtime") == "binary":
                errors.add(
                    ("binary", key),
                    f"is required with mas:runtime binary unless mas:binary:source is set: {_BINARY_EXAMPLE}",
                )
        else:
            errors.expect(("binary", key), value, "path")


def _binary_paths(data, base):
    """Where mas-cli and its share/ directory are: in the versioned release
    directory of the tarball (one per ``source_hash``) or where the operator
    installed them."""
    binary = data["binary"]
    if data["runtime"] != "binary":
        return {"dist_dir": os.path.join(base, "dist"), "release_dir": None, "mas_binary": None, "share_dir": None}
    if _is_set(binary["source"]):
        match = _SOURCE_HASH.fullmatch(binary["source_hash"])
        digest = (match.group(2) or match.group(4)).lower()
        release = os.path.join(base, "dist", f"mas-cli-{digest[:16]}")
        return {
            "dist_dir": os.path.join(base, "dist"),
            "release_dir": release,
            "mas_binary": os.path.join(release, "mas-cli"),
            "share_dir": os.path.join(release, "share"),
        }
    return {
        "dist_dir": os.path.join(base, "dist"),
        "release_dir": None,
        "mas_binary": os.path.normpath(binary["path"]),
        "share_dir": os.path.normpath(binary["share_dir"]),
    }


def _validate_tofs(data, errors):
    tofs = data["tofs"]
    if not isinstance(tofs, dict):
        errors.add(("tofs",), "must be a mapping (source_files, files_switch, path_prefix, dirs)")
        return
    sources = tofs.get("source_files")
    if not isinstance(sources, dict):
        errors.add(("tofs", "source_files"), "must be a mapping of state ID -> list of file names")
    else:
        for lookup, names in sources.items():
            if not (isinstance(names, list) and all(isinstance(n, str) and _TOFS_NAME.fullmatch(n) for n in names)):
                errors.add(
                    ("tofs", "source_files", lookup), "must be a list of file names (letters, digits, . _ -; no '/')"
                )
    switch = tofs.get("files_switch")
    if not isinstance(switch, list) or not all(isinstance(g, str) and _TOFS_NAME.fullmatch(g) for g in switch):
        errors.add(("tofs", "files_switch"), "must be a list of grain names (e.g. [id, os_family])")
    prefix = tofs.get("path_prefix")
    if prefix and not (isinstance(prefix, str) and all(_TOFS_NAME.fullmatch(p) for p in prefix.split("/"))):
        errors.add(("tofs", "path_prefix"), f"must be a relative salt:// directory (e.g. mas), not {prefix!r}")
    files = _get(tofs, "dirs", "files")
    if not (isinstance(files, str) and _TOFS_NAME.fullmatch(files)):
        errors.add(("tofs", "dirs", "files"), f"must be a directory name (default files), not {files!r}")


def _validate_synapse(data, errors):
    syn = data["synapse"]
    name = syn.get("dropin_name")
    if not (_CHECKS["file_name"](name) and name.endswith(".yaml")):
        errors.add(
            ("synapse", "dropin_name"),
            f"must be a file name ending in .yaml (Synapse ignores others), {KINDS['file_name']}, not {name!r}",
        )
    errors.expect(("synapse", "config_dir"), syn.get("config_dir"), "path")
    errors.expect(("synapse", "secret_path"), syn.get("secret_path"), "path", optional=True)
    for key in ("user", "group"):
        errors.expect(("synapse", key), syn.get(key), "name")
    errors.expect(("synapse", "service"), syn.get("service"), "unit")


def _validate_proxy(data, errors):
    proxy = data["proxy"]
    kind = proxy.get("type")
    if kind not in PROXY_TYPES:
        errors.add(("proxy", "type"), f"must be one of {', '.join(PROXY_TYPES)}, not {kind!r}")
        return
    # every value is checked whatever the type: switching types later must
    # not meet a value that was never validated
    nginx, traefik = proxy["nginx"], proxy["traefik"]
    errors.expect(("proxy", "matrix_hostname"), proxy.get("matrix_hostname"), "hostname", optional=True)
    errors.expect(("proxy", "nginx", "mas_upstream"), nginx.get("mas_upstream"), "origin", optional=True)
    errors.expect(("proxy", "traefik", "mas_url"), traefik.get("mas_url"), "origin", optional=True)
    for path in (
        ("proxy", "nginx", "snippet_path"),
        ("proxy", "nginx", "public_snippet_path"),
        ("proxy", "traefik", "config_path"),
    ):
        errors.expect(path, _get(data, *path), "path")
    errors.expect(("proxy", "nginx", "service"), nginx.get("service"), "unit")
    errors.expect(("proxy", "traefik", "service"), traefik.get("service"), "unit")
    errors.expect(("proxy", "traefik", "entrypoint"), traefik.get("entrypoint"), "traefik")
    errors.expect(("proxy", "traefik", "certresolver"), traefik.get("certresolver"), "traefik", optional=True)
    if kind == "none" or not data["enabled"] or not _is_dns_name(data.get("server_name")):
        return
    matrix_host = proxy.get("matrix_hostname") or f"matrix.{data['server_name']}"
    if not _is_dns_name(matrix_host):
        errors.add(
            ("proxy", "matrix_hostname"),
            f"must be the homeserver's public host name, {KINDS['hostname']}, not {matrix_host!r}",
        )
    separate_host = (data.get("hostname") or f"matrix.{data['server_name']}") != matrix_host
    if data.get("path_prefix") == "/" and not separate_host:
        errors.add(
            ("path_prefix",),
            "'/' needs MAS on its own host name: set mas:hostname (e.g. auth.example.com) to differ from"
            f" the homeserver's host {matrix_host!r} (mas:proxy:matrix_hostname)",
        )
    if kind == "nginx" and separate_host and nginx.get("public_snippet_path") == nginx.get("snippet_path"):
        errors.add(("proxy", "nginx", "public_snippet_path"), "must differ from mas:proxy:nginx:snippet_path")


def _validate_traefik_tls(data, errors):
    """``mas:proxy:traefik:tls``: TLS on the routers (the playbook's way) or not (TLS ended in front of Traefik)."""
    traefik = data["proxy"]["traefik"]
    if traefik.get("tls") is False and _is_set(traefik.get("certresolver")):
        errors.add(
            ("proxy", "traefik", "certresolver"),
            "must be empty when mas:proxy:traefik:tls is false (a certificate resolver needs TLS on the routers)",
        )


def _validate_ca_bundle(data, errors):
    """``mas:ca_bundle``: the CA bundle MAS trusts for its own HTTPS and SMTP connections (``SSL_CERT_FILE``)."""
    errors.expect(
        ("ca_bundle",),
        data.get("ca_bundle"),
        "path",
        optional=True,
        what=f"the path of a PEM CA bundle file ({KINDS['path']})",
    )


def _local_upstream(web_bind):
    """``http://<host>:<port>`` of MAS's web listener, seen from this host."""
    host, _, port = web_bind.rpartition(":")
    host = host.strip("[]")
    if host in ("", "::", "0.0.0.0", "*"):  # noqa: S104 -- a wildcard bind is reached on loopback
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _validate_secrets(data, errors):
    encryption = _get(data, "secrets", "encryption")
    if _is_set(encryption) and not (isinstance(encryption, str) and _HEX64.fullmatch(encryption)):
        errors.add(
            ("secrets", "encryption"),
            "must be exactly 64 hexadecimal characters, quoted in YAML (generate with `openssl rand -hex 32`),"
            " or be left out to let the formula generate it",
        )
    hs_secret = _get(data, "secrets", "homeserver_secret")
    if (
        errors.secret(("secrets", "homeserver_secret"), hs_secret)
        and _is_set(hs_secret)
        and (len(str(hs_secret)) < 16 or re.search(r"\s", str(hs_secret)))
    ):
        errors.add(
            ("secrets", "homeserver_secret"),
            "must be a string of at least 16 characters without whitespace,"
            " or be left out to let the formula generate it",
        )
    errors.secret(("synapse", "pepper"), _get(data, "synapse", "pepper"))


def _validate_database(data, errors):
    db = data["database"]
    host = db.get("host")
    if not (_CHECKS["host"](host) or _is_path(host)):
        errors.add(
            ("database", "host"),
            f"must be {KINDS['host']}, or PostgreSQL's socket directory ({KINDS['path']}), not {host!r}",
        )
    errors.expect(("database", "port"), db.get("port"), "port")
    what = "a PostgreSQL identifier (a letter or '_', then letters, digits, '_', '$' or '-'; at most 63)"
    for name in ("name", "user"):
        value = db.get(name)
        if not (isinstance(value, str) and _PG_IDENT.fullmatch(value)):
            errors.add(("database", name), f"{value!r} is not a valid PostgreSQL identifier: must be {what}")
    if db.get("ssl_mode") not in SSL_MODES:
        errors.add(("database", "ssl_mode"), f"must be one of {', '.join(SSL_MODES)}, not {db.get('ssl_mode')!r}")
    # MAS reads database.password_file trimmed
    errors.secret(("database", "password"), db.get("password"), trimmed=True)
    admin = db["admin"]
    user = admin.get("user")
    if not (isinstance(user, str) and _PG_IDENT.fullmatch(user)):
        errors.add(("database", "admin", "user"), f"{user!r} is not a valid PostgreSQL role: must be {what}")
    host = admin.get("host")
    if _is_set(host) and not (_CHECKS["host"](host) or _is_path(host)):
        errors.add(("database", "admin", "host"), f"must be {KINDS['host']} or a socket directory, or '', not {host!r}")
    errors.expect(("database", "admin", "port"), admin.get("port"), "port", optional=True)
    errors.expect(("database", "admin", "runas"), admin.get("runas"), "name", optional=True)


def _validate_email(data, errors):
    """Types and grammars of mas:email; MAS's rules across keys (smtp needs mode
    and hostname, sendmail a command, ...) are checked on config.yaml
    (:py:func:`_rules_email`), where mas:config may add to them."""
    email = data["email"]
    transport = email.get("transport")
    if transport not in EMAIL_TRANSPORTS:
        errors.add(("email", "transport"), f"must be one of {', '.join(EMAIL_TRANSPORTS)}, not {transport!r}")
        return
    for name in ("from", "reply_to"):
        errors.expect(("email", name), email.get(name), "mailbox")
    errors.expect(("email", "hostname"), email.get("hostname"), "host", optional=True)
    errors.expect(("email", "port"), email.get("port"), "port", optional=True)
    if _is_set(email.get("mode")) and email.get("mode") not in SMTP_MODES:
        errors.add(("email", "mode"), f"must be one of {', '.join(SMTP_MODES)}, not {email.get('mode')!r}")
    username = email.get("username")
    if _is_set(username) and not _is_text(username):
        errors.add(("email", "username"), f"must be a string without control characters, not {username!r}")
    errors.expect(("email", "command"), email.get("command"), "command", optional=True)
    # MAS reads email.password_file trimmed
    errors.secret(("email", "password"), email.get("password"), trimmed=True)


def _validate_account(data, errors):
    account = data.get("account")
    if not isinstance(account, dict):
        errors.add(("account",), "must be a mapping of MAS account toggles")
        return
    for name, value in account.items():
        if name not in ACCOUNT_TOGGLES:
            errors.add(("account", name), f"is not a MAS account toggle (known: {', '.join(ACCOUNT_TOGGLES)})")
        elif not isinstance(value, bool):
            errors.add(("account", name), f"must be true or false, not {value!r}")


def _validate_providers(data, errors):
    providers = data.get("upstream_oauth2_providers")
    if not isinstance(providers, list):
        errors.add(("upstream_oauth2_providers",), "must be a list of MAS upstream OAuth2 providers")
        return
    _check_providers(
        providers,
        lambda sub, message: errors.add(("upstream_oauth2_providers", *sub), message),
        lambda *sub: _key("upstream_oauth2_providers", *sub),
    )
    for index, provider in enumerate(providers):
        if isinstance(provider, dict):
            # MAS reads client_secret_file trimmed
            errors.secret(("upstream_oauth2_providers", index, "client_secret"), provider.get("client_secret"), True)


def _validate_config(data, errors):
    """``mas:config``: a mapping, no secret inline, the shapes the formula merges into."""
    config = data.get("config")
    if not isinstance(config, dict):
        errors.add(("config",), "must be a mapping merged into MAS's config.yaml")
        return
    errors.extend(_inline_secrets(config, ("config",)))
    for section in ("http", "database", "secrets", "matrix", "passwords", "email", "account", "upstream_oauth2"):
        if section in config and not isinstance(config[section], dict):
            errors.add(("config", section), "must be a mapping (it is merged into the formula's section)")
    policy = config.get("policy")
    if policy is not None:
        if not isinstance(policy, dict) or not isinstance(policy.get("data", {}), dict):
            errors.add(("config", "policy", "data"), "must be a mapping (MAS merges it into its policy data)")
        elif not isinstance(policy.get("data", {}).get("admin_clients", []), list):
            errors.add(("config", "policy", "data", "admin_clients"), "must be a list of client IDs")
    clients = config.get("clients")
    if clients is not None and not (isinstance(clients, list) and all(isinstance(c, dict) for c in clients)):
        errors.add(("config", "clients"), "must be a list of MAS clients (mappings)")
    for section in ("email", "database"):
        if _is_set(_get(config, section, "password_file")) and _is_set(_get(data, section, "password")):
            errors.add(
                ("config", section, "password_file"),
                f"cannot be set together with mas:{section}:password (which the formula writes to its own"
                " password_file): set one of them",
            )
    if _is_set(_get(config, "upstream_oauth2", "providers")) and _is_set(data.get("upstream_oauth2_providers")):
        errors.add(
            ("config", "upstream_oauth2", "providers"),
            "would replace mas:upstream_oauth2_providers: list the providers in one of them"
            " (mas:upstream_oauth2_providers moves client_secret to a file)",
        )


# --------------------------------------------------------------------------
# Secrets never inline in mas:config / mas:lookup:config
# --------------------------------------------------------------------------

#: config.yaml keys whose value is a secret, and where the secret belongs instead.
_INLINE_SECRET_KEYS = ("secret", "client_secret", "password", "encryption", "private_key", "secret_key", "ssl_key")
_INLINE_SECRET_HOME = {
    ("matrix", "secret"): "use mas:secrets:homeserver_secret (or matrix.secret_file) instead",
    ("secrets", "encryption"): "use mas:secrets:encryption (or secrets.encryption_file) instead",
    ("email", "password"): "use mas:email:password instead",
    ("database", "password"): "use mas:database:password instead",
    ("database", "uri"): "use mas:database:host, :port, :name, :user and :password instead",
    ("database", "ssl_key"): "use database.ssl_key_file instead",
    ("upstream_oauth2", "providers", "*", "client_secret"): "use mas:upstream_oauth2_providers (client_secret"
    " there is written to a 0600 file) or client_secret_file instead",
    ("upstream_oauth2", "providers", "*", "sign_in_with_apple", "private_key"): "use"
    " sign_in_with_apple.private_key_file instead",
    ("passwords", "schemes", "*", "secret"): "use mas:synapse:pepper (the bcrypt v1 scheme) or the scheme's"
    " secret_file instead",
    ("clients", "*", "client_secret"): "use the client's client_secret_file instead",
    ("secrets", "keys", "*", "key"): "use key_file instead (the formula generates the signing keys in keys_dir)",
    ("secrets", "keys", "*", "password"): "use password_file instead",
    ("http", "listeners", "*", "tls", "key"): "use tls.key_file instead",
    ("http", "listeners", "*", "tls", "password"): "use tls.password_file instead",
    ("captcha", "secret_key"): "MAS reads the CAPTCHA secret only inline, so the formula cannot keep it out of"
    " config.yaml: CAPTCHA is not supported",
}


def _inline_secrets(config, prefix):
    """Refusals for every secret given inline under ``config`` (``prefix``: its pillar path)."""
    found = []

    def home(path):
        generic = tuple("*" if isinstance(p, int) else p for p in path)
        return _INLINE_SECRET_HOME.get(generic, f"use the matching *_file key ({path[-1]}_file) instead")

    def walk(node, path):
        if isinstance(node, dict):
            for name, value in node.items():
                sub = (*path, name)
                inline = _is_set(value) and not isinstance(value, (dict, list, bool))
                if inline and (
                    name in _INLINE_SECRET_KEYS
                    or tuple("*" if isinstance(p, int) else p for p in sub) in _INLINE_SECRET_HOME
                ):
                    if sub == ("database", "uri") and not _uri_has_password(value):
                        continue
                    found.append(
                        f"{_key(*prefix, *sub)}: a secret inline would land in config.yaml, state output and"
                        f" mas.mapdata; {home(sub)}"
                    )
                else:
                    walk(value, sub)
        elif isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, (*path, index))

    walk(config, ())
    return found


def _uri_has_password(uri):
    text = str(uri)
    return bool(re.search(r"://[^/@?#]*:[^/@?#]*@", text) or re.search(r"[?&]password=", text))


# --------------------------------------------------------------------------
# MAS's own runtime rules (validate() of crates/config/src/sections/*.rs)
# --------------------------------------------------------------------------
# The rules MAS applies when it loads config.yaml, beyond its JSON schema (see
# the research ledger mas-runtime-rules.md): checked by the formula before
# anything is written, on the config.yaml it would write, each refusal naming
# the pillar key the value comes from (mas:config:... for what mas:config
# brings) and saying what a valid value looks like.

SECRET_METHODS = ("client_secret_basic", "client_secret_post", "client_secret_jwt")
SIGNED_METHODS = ("client_secret_jwt", "private_key_jwt")
DISCOVERY_MODES = ("oidc", "insecure", "disabled")
IMPORT_ACTIONS = ("ignore", "suggest", "force", "require")
CLIENT_AUTH_METHODS = ("none", "client_secret_basic", "client_secret_post", "client_secret_jwt", "private_key_jwt")
RESOURCES = (
    "health",
    "prometheus",
    "discovery",
    "human",
    "graphql",
    "oauth",
    "compat",
    "assets",
    "adminapi",
    "connection-info",
)
MATRIX_KINDS = ("synapse", "synapse_modern", "synapse_legacy", "synapse_read_only")
PASSWORD_ALGORITHMS = ("bcrypt", "argon2id", "pbkdf2")
CAPTCHA_SERVICES = ("recaptcha_v2", "cloudflare_turnstile", "hcaptcha")
RATE_LIMITERS = (
    ("account_recovery", "per_ip"),
    ("account_recovery", "per_address"),
    ("registration",),
    ("login", "per_ip"),
    ("login", "per_account"),
    ("email_authentication", "per_ip"),
    ("email_authentication", "per_address"),
    ("email_authentication", "emails_per_session"),
    ("email_authentication", "attempt_per_session"),
)
# Scope tokens: single-space separated NQCHARs (oauth2-types scope.rs).
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+(?: [\x21\x23-\x5b\x5d-\x7e]+)*")

# config.yaml paths the formula fills from its own pillar keys (longest prefix wins)
_CONFIG_SOURCES = {
    **{("email", f): ("email", f) for f in ("transport", "from", "reply_to", "hostname", "port", "mode", "username")},
    ("email", "command"): ("email", "command"),
    ("email", "password"): ("email", "password"),
    ("email", "password_file"): ("email", "password"),
    **{("database", f): ("database", f) for f in ("host", "port", "ssl_mode", "password")},
    ("database", "username"): ("database", "user"),
    ("database", "database"): ("database", "name"),
    ("database", "password_file"): ("database", "password"),
    ("matrix", "endpoint"): ("synapse", "endpoint"),
    ("matrix", "homeserver"): ("server_name",),
    ("matrix", "secret_file"): ("secrets", "homeserver_secret"),
    ("secrets", "encryption_file"): ("secrets", "encryption"),
    ("http", "public_base"): ("hostname",),
    ("http", "issuer"): ("hostname",),
    ("http", "trusted_proxies"): ("http", "trusted_proxies"),
    ("upstream_oauth2", "providers"): ("upstream_oauth2_providers",),
    ("account",): ("account",),
}


def _config_key(data, cpath):
    """The pillar key to name for the config.yaml path ``cpath``: ``mas:config:...``
    when mas:config brings the value (or the list holding it), else the
    formula's own key for it."""
    node = data.get("config") or {}
    for part in cpath:
        if isinstance(node, list):
            return _key("config", *cpath)  # lists of mas:config replace the formula's whole list
        if not isinstance(node, dict) or part not in node:
            break
        node = node[part]
    else:
        return _key("config", *cpath)
    for size in range(len(cpath), 0, -1):
        source = _CONFIG_SOURCES.get(tuple(cpath[:size]))
        if source is not None:
            return _key(*source, *cpath[size:])
    return _key("config", *cpath)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check_providers(providers, add, key):
    """Upstream OAuth2 providers: the formula's grammar (id, synapse_idp_id,
    URLs) and MAS's runtime rules (upstream_oauth2.rs ``validate``).
    ``add(subpath, message)`` refuses, ``key(*subpath)`` names a key in a message."""
    ids, idps = {}, {}
    for index, provider in enumerate(providers):
        if not isinstance(provider, dict):
            add((index,), "must be a mapping")
            continue

        def fail(field, message, index=index):
            add((index, *field), message)

        def k(*field, index=index):
            return key(index, *field)

        pid = provider.get("id")
        if not (isinstance(pid, str) and _ULID.fullmatch(pid)):
            fail(("id",), f"must be a ULID (26 characters, e.g. 01HFVBY12TMNTYTBV8W921M5FA), not {pid!r}")
        elif pid.upper() in ids:
            fail(("id",), f"must be unique: {pid} is used by another provider ({ids[pid.upper()]})")
        else:
            ids[pid.upper()] = k("id")
        if not (_is_text(provider.get("client_id")) and provider["client_id"]):
            fail(("client_id",), "is required (a string)")
        method = provider.get("token_endpoint_auth_method")
        if method not in TOKEN_AUTH_METHODS:
            fail(("token_endpoint_auth_method",), f"must be one of {', '.join(TOKEN_AUTH_METHODS)}, not {method!r}")
        idp = provider.get("synapse_idp_id")
        if _is_set(idp):
            if not (isinstance(idp, str) and re.fullmatch(r"oidc(-[A-Za-z0-9._~-]+)?", idp)):
                fail(
                    ("synapse_idp_id",),
                    f"must be 'oidc-<idp_id>' (Synapse adds the 'oidc-' prefix) or 'oidc', not {idp!r}",
                )
            elif idp in idps:
                fail(("synapse_idp_id",), f"must be unique: {idp} is already the synapse_idp_id of {idps[idp]}")
            else:
                idps[idp] = key(index)
        for field in ("issuer", "authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri"):
            if _is_set(provider.get(field)) and not _is_url(provider[field]):
                fail((field,), f"must be {KINDS['url']}, not {provider[field]!r}")
        discovery = provider.get("discovery_mode", "oidc")
        if discovery not in DISCOVERY_MODES:
            fail(("discovery_mode",), f"must be one of {', '.join(DISCOVERY_MODES)}, not {discovery!r}")
        elif discovery != "disabled" and not _is_set(provider.get("issuer")):
            fail(("issuer",), f"is required when {k('discovery_mode')} is {discovery} (the default is oidc)")
        elif discovery == "disabled":
            for field in ("authorization_endpoint", "token_endpoint"):
                if not _is_set(provider.get(field)):
                    fail((field,), f"is required when {k('discovery_mode')} is disabled (an https:// URL)")
        has_secret = _is_set(provider.get("client_secret")) or _is_set(provider.get("client_secret_file"))
        if _is_set(provider.get("client_secret")) and _is_set(provider.get("client_secret_file")):
            fail(("client_secret_file",), f"cannot be set together with {k('client_secret')}: set one of them")
        if method in SECRET_METHODS and not has_secret:
            fail(("client_secret",), f"is required when {k('token_endpoint_auth_method')} is {method} (a string)")
        elif method in TOKEN_AUTH_METHODS and method not in SECRET_METHODS and has_secret:
            fail(("client_secret",), f"must not be set when {k('token_endpoint_auth_method')} is {method}: remove it")
        alg = provider.get("token_endpoint_auth_signing_alg")
        if method in SIGNED_METHODS and not _is_set(alg):
            fail(
                ("token_endpoint_auth_signing_alg",),
                f"is required when {k('token_endpoint_auth_method')} is {method} (e.g. RS256)",
            )
        elif method in TOKEN_AUTH_METHODS and method not in SIGNED_METHODS and _is_set(alg):
            fail(
                ("token_endpoint_auth_signing_alg",),
                f"must not be set when {k('token_endpoint_auth_method')} is {method}: remove it",
            )
        siwa = provider.get("sign_in_with_apple")
        if method == "sign_in_with_apple":
            if not isinstance(siwa, dict):
                fail(
                    ("sign_in_with_apple",),
                    f"is required when {k('token_endpoint_auth_method')} is sign_in_with_apple (team_id, key_id,"
                    " private_key_file)",
                )
            else:
                for field in ("team_id", "key_id"):
                    if not (_is_text(siwa.get(field)) and siwa[field]):
                        fail(("sign_in_with_apple", field), "is required (a string)")
                if not _is_set(siwa.get("private_key_file")) and not _is_set(siwa.get("private_key")):
                    fail(("sign_in_with_apple", "private_key_file"), f"is required: {KINDS['path']}")
                elif _is_set(siwa.get("private_key_file")) and not _is_path(siwa["private_key_file"]):
                    fail(("sign_in_with_apple", "private_key_file"), f"must be {KINDS['path']}")
        elif siwa is not None and method in TOKEN_AUTH_METHODS:
            fail(("sign_in_with_apple",), f"must not be set when {k('token_endpoint_auth_method')} is {method}")
        scope = provider.get("scope")
        if scope is not None and not (isinstance(scope, str) and _SCOPE.fullmatch(scope)):
            fail(("scope",), f"must be scope tokens separated by single spaces (e.g. 'openid email'), not {scope!r}")
        _check_claims_imports(provider.get("claims_imports"), lambda sub, msg, i=index: add((i, *sub), msg), k)


def _check_claims_imports(claims, fail, k):
    if claims is None:
        return
    if not isinstance(claims, dict):
        fail(("claims_imports",), "must be a mapping")
        return
    actions = {}
    for name in ("subject", "localpart", "displayname", "email", "account_name"):
        section = claims.get(name)
        if section is None:
            continue
        if not isinstance(section, dict):
            fail(("claims_imports", name), "must be a mapping")
            continue
        action = section.get("action")
        if action is not None and action not in IMPORT_ACTIONS:
            fail(("claims_imports", name, "action"), f"must be one of {', '.join(IMPORT_ACTIONS)}, not {action!r}")
        actions[name] = action
        if "template" in section:
            _check_claims_template(section["template"], ("claims_imports", name, "template"), fail)
    localpart = claims.get("localpart") if isinstance(claims.get("localpart"), dict) else {}
    local_action = localpart.get("action", "ignore")
    if claims.get("skip_confirmation") is True:
        if local_action != "require":
            fail(
                ("claims_imports", "localpart", "action"),
                f"must be require when {k('claims_imports', 'skip_confirmation')} is true",
            )
        for name in ("email", "displayname"):
            if actions.get(name) == "suggest":
                fail(
                    ("claims_imports", name, "action"),
                    f"must not be suggest when {k('claims_imports', 'skip_confirmation')} is true"
                    " (ignore, force or require)",
                )
    on_conflict = localpart.get("on_conflict", "fail")
    if on_conflict in ("add", "replace", "set") and local_action not in ("force", "require"):
        fail(
            ("claims_imports", "localpart", "action"),
            f"must be force or require when {k('claims_imports', 'localpart', 'on_conflict')} is {on_conflict}",
        )


#: A Jinja expression or statement of MAS's own template language.
_JINJA_MARK = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.S)
_RAW_HINT = (
    "Salt renders pillar files with Jinja before MAS sees them: write MAS's template as"
    ' "{% raw %}{{ user.preferred_username }}{% endraw %}" or put the providers in a #!yaml pillar file'
)


def _check_claims_template(template, subpath, fail):
    """A ``claims_imports`` template must still be MAS's template: a string holding a Jinja
    expression (an empty or constant one is what Salt's own Jinja pass leaves of it)."""
    if not isinstance(template, str) or not template.strip():
        fail(subpath, f"is empty: {_RAW_HINT}")
    elif not _JINJA_MARK.search(template):
        fail(
            subpath,
            f"is {template!r}, a constant with no {{{{ ... }}}} left in it (every user would get the same value;"
            f" pre-rendered?): {_RAW_HINT}",
        )


def _bind_problem(bind):
    """Why a listener bind of config.yaml would not bind (HT-11..14), or None."""
    if not isinstance(bind, dict):
        return "must be a mapping: {host, port}, {address}, {socket[, mode]} or {fd[, kind]}"
    keys = set(bind)
    if keys <= {"host", "port"} and "port" in keys:
        host = bind.get("host")
        if not _is_int(bind["port"]) or _as_port(bind["port"]) is None:
            return f"port must be an integer from 1 to 65535, not {bind['port']!r}"
        if host is not None and not (_is_dns_name(host) or _is_ip(host)):
            return f"host must be an IP address (IPv6 without brackets) or a DNS name, not {host!r}"
        return None
    if keys == {"address"}:
        hostport = _split_hostport(bind["address"])
        if hostport is None or not _is_ip(hostport[0]):
            return (
                "address must be an IP address and port, IPv6 in brackets (e.g. [::]:8080, 127.0.0.1:8081): MAS"
                f" does not resolve names there (use {{host, port}}), not {bind['address']!r}"
            )
        return None
    if keys <= {"socket", "mode"} and "socket" in keys:
        if not _is_path(bind["socket"]):
            return f"socket must be {KINDS['path']}"
        if "mode" in keys and not (isinstance(bind["mode"], str) and re.fullmatch(r"[0-7]{3,4}", bind["mode"])):
            return f"mode must be octal digits as a string (e.g. '0660'), not {bind['mode']!r}"
        return None
    if keys <= {"fd", "kind"} and "fd" in keys:
        if not _is_int(bind["fd"]) or bind["fd"] < 0:
            return f"fd must be a non-negative integer, not {bind['fd']!r}"
        if bind.get("kind", "tcp") not in ("tcp", "unix"):
            return f"kind must be tcp or unix, not {bind['kind']!r}"
        return None
    return (
        f"has the keys {', '.join(sorted(map(str, keys)))}: a bind is {{host, port}}, {{address}}, {{socket[, mode]}}"
        " or {fd[, kind]} (MAS silently turns anything else into file descriptor 0)"
    )


def _rules_http(http, base, add, key):
    listeners = http.get("listeners")
    if not isinstance(listeners, list):
        add(("listeners",), "must be a list of listeners")
        return
    base_binds = [b for listener in base["listeners"] for b in listener.get("binds", [])]
    for index, listener in enumerate(listeners):
        if not isinstance(listener, dict):
            add(("listeners", index), "must be a mapping (name, resources, binds)")
            continue
        resources = listener.get("resources")
        if not isinstance(resources, list) or not resources:
            add(("listeners", index, "resources"), "must not be empty (listener has no resources)")
        else:
            for rindex, resource in enumerate(resources):
                name = resource.get("name") if isinstance(resource, dict) else None
                if name not in RESOURCES:
                    add(
                        ("listeners", index, "resources", rindex),
                        f"must be a mapping whose name is one of {', '.join(RESOURCES)}, not {resource!r}",
                    )
        binds = listener.get("binds")
        if not isinstance(binds, list) or not binds:
            add(("listeners", index, "binds"), "must not be empty (listener does not bind to any address)")
        else:
            for bindex, bind in enumerate(binds):
                problem = None if bind in base_binds else _bind_problem(bind)
                if problem:
                    add(("listeners", index, "binds", bindex), problem)
        prefix = listener.get("prefix")
        if prefix is not None and not (isinstance(prefix, str) and (prefix == "" or _CHECKS["url_path"](prefix))):
            add(("listeners", index, "prefix"), f"must be {KINDS['url_path']} (MAS panics otherwise), not {prefix!r}")
        tls = listener.get("tls")
        if tls is not None:
            if not isinstance(tls, dict):
                add(("listeners", index, "tls"), "must be a mapping")
                continue
            for a, b, what in (
                ("certificate", "certificate_file", "a certificate"),
                ("key", "key_file", "a private key"),
            ):
                if _is_set(tls.get(a)) and _is_set(tls.get(b)):
                    add(("listeners", index, "tls", b), f"only one of {a} or {b} can be set")
                elif not _is_set(tls.get(a)) and not _is_set(tls.get(b)):
                    add(("listeners", index, "tls", b), f"is required: TLS needs {what}")
            if _is_set(tls.get("password")) and _is_set(tls.get("password_file")):
                add(("listeners", index, "tls", "password_file"), "only one of password or password_file can be set")
    for base_listener in base["listeners"]:
        name = base_listener.get("name")
        found = [entry for entry in listeners if isinstance(entry, dict) and entry.get("name") == name]
        kept = found and all(
            r.get("name") in {x.get("name") for x in found[0].get("resources") or [] if isinstance(x, dict)}
            for r in base_listener["resources"]
        )
        kept = kept and all(b in (found[0].get("binds") or []) for b in base_listener["binds"])
        kept = kept and found[0].get("prefix") == base_listener.get("prefix")
        if not kept:
            wanted = ", ".join(r["name"] for r in base_listener["resources"])
            add(
                ("listeners",),
                f"must keep the formula's {name!r} listener (resources {wanted}, its binds and prefix): the"
                " proxy, Synapse and Salt reach MAS through it; change mas:http:web_bind, mas:http:internal_bind,"
                " mas:http:adminapi or mas:path_prefix instead",
            )
    for field in ("public_base", "issuer"):
        value = http.get(field)
        if (value is not None or field == "public_base") and not _is_url(value):
            add((field,), f"must be {KINDS['url']} (MAS panics otherwise), not {value!r}")
    proxies = http.get("trusted_proxies")
    if proxies is not None and not (isinstance(proxies, list) and all(_is_cidr(p) for p in proxies)):
        add(("trusted_proxies",), "must be a list of CIDR networks (e.g. [127.0.0.1/32])")


def _rules_database(db, add, key):
    if _is_set(db.get("uri")):
        mixed = [f for f in ("host", "port", "socket", "username", "password_file", "database") if f in db]
        if mixed:
            add(
                ("uri",),
                "must not be combined with host, port, socket, username, password or database, which the formula"
                " sets: set mas:database:host, :port, :name, :user and :password instead",
            )
    pairs = (("password", "password_file"), ("ssl_ca", "ssl_ca_file"), ("ssl_certificate", "ssl_certificate_file"))
    for a, b in (*pairs, ("ssl_key", "ssl_key_file")):
        if _is_set(db.get(a)) and _is_set(db.get(b)):
            add((b,), f"cannot be set together with {key(a)}")
    has_cert = _is_set(db.get("ssl_certificate")) or _is_set(db.get("ssl_certificate_file"))
    has_key = _is_set(db.get("ssl_key")) or _is_set(db.get("ssl_key_file"))
    if has_cert != has_key:
        add(
            ("ssl_key_file",) if has_cert else ("ssl_certificate_file",),
            "a client certificate and its key must be set together (ssl_certificate_file and ssl_key_file)",
        )
    if "ssl_mode" in db and db["ssl_mode"] not in SSL_MODES:
        add(("ssl_mode",), f"must be one of {', '.join(SSL_MODES)}, not {db['ssl_mode']!r}")
    if "port" in db and not (_is_int(db["port"]) and _as_port(db["port"])):
        add(("port",), f"must be {KINDS['port']}, not {db['port']!r}")
    for field, low in (("max_connections", 1), ("min_connections", 0)):
        if field in db and not (_is_int(db[field]) and db[field] >= low):
            add((field,), f"must be an integer of at least {low}, not {db[field]!r}")


def _rules_email(email, add, key):
    transport = email.get("transport")
    if transport not in EMAIL_TRANSPORTS:
        add(("transport",), f"must be one of {', '.join(EMAIL_TRANSPORTS)}, not {transport!r}")
        return
    for field in ("from", "reply_to"):
        if field in email and not _CHECKS["mailbox"](email[field]):
            add((field,), f"must be {KINDS['mailbox']}, not {email[field]!r}")
    has_password = _is_set(email.get("password")) or _is_set(email.get("password_file"))
    if transport == "smtp":
        if not _is_set(email.get("mode")):
            add(("mode",), f"is required when {key('transport')} is smtp (plain, starttls or tls)")
        elif email["mode"] not in SMTP_MODES:
            add(("mode",), f"must be one of {', '.join(SMTP_MODES)}, not {email['mode']!r}")
        if not _is_set(email.get("hostname")):
            add(("hostname",), f"is required when {key('transport')} is smtp ({KINDS['host']})")
        elif not _CHECKS["host"](email["hostname"]):
            add(("hostname",), f"must be {KINDS['host']}, not {email['hostname']!r}")
        if "port" in email and not (_is_int(email["port"]) and _as_port(email["port"])):
            add(("port",), f"must be {KINDS['port']}, not {email['port']!r}")
        if _is_set(email.get("username")) and not has_password:
            add(("password",), f"is required when {key('username')} is set (the SMTP password)")
        if has_password and not _is_set(email.get("username")):
            add(("username",), f"is required when {key('password_file')} is set (the SMTP user name)")
        if _is_set(email.get("password")) and _is_set(email.get("password_file")):
            add(("password_file",), f"cannot be set together with {key('password')}")
        if _is_set(email.get("command")):
            add(("command",), f"is only for sendmail: remove it when {key('transport')} is smtp")
    elif transport == "sendmail":
        if not _is_set(email.get("command")):
            add(("command",), f"is required when {key('transport')} is sendmail ({KINDS['command']})")
        elif not _is_path(email["command"]):
            add(("command",), f"must be {KINDS['command']}, not {email['command']!r}")
        for field in ("mode", "hostname", "port", "username", "password"):
            if _is_set(email.get(field)):
                add((field,), f"is only for smtp: remove it when {key('transport')} is sendmail")


def _rules_passwords(passwords, add, key):
    if passwords.get("enabled", True) is False:
        return
    schemes = passwords.get("schemes")
    if not isinstance(schemes, list) or not schemes:
        add(("schemes",), "must hold at least one password scheme while passwords are enabled")
        return
    versions = {}
    for index, scheme in enumerate(schemes):
        if not isinstance(scheme, dict):
            add(("schemes", index), "must be a mapping (version, algorithm, ...)")
            continue
        version = scheme.get("version")
        if not (_is_int(version) and 0 <= version < 65536):
            add(("schemes", index, "version"), f"must be an integer from 0 to 65535, not {version!r}")
        elif version in versions:
            add(
                ("schemes", index, "version"),
                f"must be unique: {version} is already the version of {versions[version]}",
            )
        else:
            versions[version] = key("schemes", index)
        if scheme.get("algorithm") not in PASSWORD_ALGORITHMS:
            add(
                ("schemes", index, "algorithm"),
                f"must be one of {', '.join(PASSWORD_ALGORITHMS)}, not {scheme.get('algorithm')!r}",
            )
        if _is_set(scheme.get("secret")) and _is_set(scheme.get("secret_file")):
            add(("schemes", index, "secret_file"), "cannot be set together with secret")
        cost = scheme.get("cost")
        if cost is not None and not (_is_int(cost) and 4 <= cost <= 31):
            add(("schemes", index, "cost"), f"must be an integer from 4 to 31 (bcrypt), not {cost!r}")
    complexity = passwords.get("minimum_complexity")
    if complexity is not None and not (_is_int(complexity) and 0 <= complexity <= 4):
        add(
            ("minimum_complexity",),
            f"must be an integer from 0 to 4 (5 and more refuse every password), not {complexity!r}",
        )


def _rules_secrets(secrets, add, key):
    if _is_set(secrets.get("encryption")) == _is_set(secrets.get("encryption_file")):
        add(
            ("encryption_file",), "exactly one of encryption or encryption_file is required (the formula sets the file)"
        )
    keys = secrets.get("keys")
    if keys is not None:
        if not isinstance(keys, list):
            add(("keys",), "must be a list of keys")
            return
        for index, entry in enumerate(keys):
            if not isinstance(entry, dict):
                add(("keys", index), "must be a mapping (key_file, ...)")
                continue
            if _is_set(entry.get("key")) == _is_set(entry.get("key_file")):
                add(("keys", index, "key_file"), "exactly one of key or key_file is required")
            if _is_set(entry.get("password")) and _is_set(entry.get("password_file")):
                add(("keys", index, "password_file"), "cannot be set together with password")
    if "keys_dir" in secrets and not _is_path(secrets["keys_dir"]):
        add(("keys_dir",), f"must be {KINDS['path']}")


def _rules_matrix(matrix, add, key):
    if _is_set(matrix.get("secret")) == _is_set(matrix.get("secret_file")):
        add(("secret_file",), "exactly one of secret or secret_file is required (the formula sets the file)")
    if matrix.get("kind", "synapse") not in MATRIX_KINDS:
        add(("kind",), f"must be one of {', '.join(MATRIX_KINDS)}, not {matrix.get('kind')!r}")
    endpoint = matrix.get("endpoint")
    if endpoint is not None and not _is_url(endpoint, slash=True):
        add(("endpoint",), f"must be {KINDS['url']}, a path ending with '/', not {endpoint!r}")


def _rules_clients(clients, add, key):
    seen = {}
    for index, client in enumerate(clients):
        cid = client.get("client_id")
        if not (isinstance(cid, str) and _ULID.fullmatch(cid)):
            add((index, "client_id"), f"must be a ULID (26 characters, e.g. 01HFVBY12TMNTYTBV8W921M5FA), not {cid!r}")
        elif cid.upper() in seen:
            add((index, "client_id"), f"must be unique: {cid} is already the client_id of {seen[cid.upper()]}")
        else:
            seen[cid.upper()] = key(index)
        method = client.get("client_auth_method")
        secret = _is_set(client.get("client_secret")) or _is_set(client.get("client_secret_file"))
        jwks, jwks_uri = _is_set(client.get("jwks")), _is_set(client.get("jwks_uri"))
        if method not in CLIENT_AUTH_METHODS:
            add((index, "client_auth_method"), f"must be one of {', '.join(CLIENT_AUTH_METHODS)}, not {method!r}")
        elif method == "private_key_jwt":
            if jwks == jwks_uri:
                add((index, "jwks_uri"), "exactly one of jwks or jwks_uri is required for private_key_jwt")
            if secret:
                add((index, "client_secret_file"), "must not be set with private_key_jwt")
        elif method in SECRET_METHODS:
            if not secret:
                add((index, "client_secret_file"), f"is required for {method}")
            if jwks or jwks_uri:
                add((index, "jwks" if jwks else "jwks_uri"), f"must not be set with {method}")
        elif secret or jwks or jwks_uri:
            add((index, "client_auth_method"), "none allows no client_secret(_file), jwks or jwks_uri")
        if _is_set(client.get("client_secret")) and _is_set(client.get("client_secret_file")):
            add((index, "client_secret_file"), "cannot be set together with client_secret")


def _rules_misc(config, add, key):
    """captcha, rate_limiting, experimental, telemetry, policy, branding, account."""
    captcha = config.get("captcha")
    if isinstance(captcha, dict) and _is_set(captcha.get("service")):
        if captcha["service"] not in CAPTCHA_SERVICES:
            add(("captcha", "service"), f"must be one of {', '.join(CAPTCHA_SERVICES)}, not {captcha['service']!r}")
        for field in ("site_key", "secret_key"):
            if not _is_set(captcha.get(field)):
                add(("captcha", field), f"is required when {key('captcha', 'service')} is set")
    limits = config.get("rate_limiting")
    if isinstance(limits, dict):
        for path in RATE_LIMITERS:
            limiter = _get(limits, *path)
            if limiter is None:
                continue
            where = ("rate_limiting", *path)
            if not isinstance(limiter, dict):
                add(where, "must be a mapping {burst, per_second}")
                continue
            burst, rate = limiter.get("burst"), limiter.get("per_second")
            if not (_is_int(burst) and burst >= 1):
                add((*where, "burst"), f"must be an integer of at least 1, not {burst!r}")
            if not (_is_number(rate) and 0 < rate <= 1e9):
                add((*where, "per_second"), f"must be a number more than 0 and at most 1000000000, not {rate!r}")
    experimental = config.get("experimental")
    if isinstance(experimental, dict):
        for path, low, high in (
            (("access_token_ttl",), 60, 86400),
            (("compat_token_ttl",), 60, 86400),
            (("inactive_session_expiration", "ttl"), 600, 7776000),
        ):
            value = _get(experimental, *path)
            if value is not None and not (_is_int(value) and low <= value <= high):
                add(("experimental", *path), f"must be a number of seconds from {low} to {high}, not {value!r}")
        limit = experimental.get("session_limit")
        if isinstance(limit, dict):
            soft, hard = limit.get("soft_limit"), limit.get("hard_limit")
            if _is_int(soft) and _is_int(hard) and hard < soft:
                add(("experimental", "session_limit", "hard_limit"), f"must be at least soft_limit ({soft})")
            if limit.get("dangerous_hard_limit_eviction") is True and _is_int(hard) and hard < 2:
                add(
                    ("experimental", "session_limit", "hard_limit"),
                    "must be at least 2 when dangerous_hard_limit_eviction is true",
                )
    telemetry = config.get("telemetry")
    if isinstance(telemetry, dict):
        for path in (("sentry", "sample_rate"), ("sentry", "traces_sample_rate"), ("tracing", "sample_rate")):
            value = _get(telemetry, *path)
            if value is not None and not (_is_number(value) and 0 <= value <= 1):
                add(("telemetry", *path), f"must be a number from 0.0 to 1.0, not {value!r}")
    branding = config.get("branding")
    if isinstance(branding, dict):
        for field in ("policy_uri", "tos_uri"):
            if branding.get(field) is not None and not _is_url(branding[field]):
                add(("branding", field), f"must be {KINDS['url']}, not {branding[field]!r}")
    for name in ("account", "oauth"):
        section = config.get(name)
        if isinstance(section, dict):
            for field, value in section.items():
                if not isinstance(value, bool):
                    add((name, field), f"must be true or false, not {value!r}")
    upstream = config.get("upstream_oauth2")
    if isinstance(upstream, dict) and not isinstance(upstream.get("providers"), list):
        add(("upstream_oauth2", "providers"), f"is required when {key('upstream_oauth2')} is set (a list of providers)")


def _validate_mas_config(data, base):
    """MAS's runtime rules on the config.yaml the formula would write
    (``data["mas_config"]``, ``base``: the same without mas:config)."""
    config = data["mas_config"]
    errors = []

    def section(name, rules, *extra):
        value = config.get(name)
        if not isinstance(value, dict):
            return

        def key(*sub):
            return _config_key(data, (name, *sub))

        def add(sub, message):
            errors.append(f"{key(*sub)}: {message}")

        rules(value, *extra, add, key)

    section("http", _rules_http, base["http"])
    section("database", _rules_database)
    section("email", _rules_email)
    section("passwords", _rules_passwords)
    section("secrets", _rules_secrets)
    section("matrix", _rules_matrix)
    providers = _get(data["config"], "upstream_oauth2", "providers")
    if isinstance(providers, list):
        checker = _Errors()
        _check_providers(
            providers,
            lambda sub, message: checker.append(f"{_key('config', 'upstream_oauth2', 'providers', *sub)}: {message}"),
            lambda *sub: _key("config", "upstream_oauth2", "providers", *sub),
        )
        errors.extend(checker)
    clients = data["config"].get("clients")
    if isinstance(clients, list):
        _rules_clients(
            clients,
            lambda sub, message: errors.append(f"{_key('config', 'clients', *sub)}: {message}"),
            lambda *sub: _key("config", "clients", *sub),
        )
    _rules_misc(
        config,
        lambda sub, message: errors.append(f"{_config_key(data, sub)}: {message}"),
        lambda *sub: _config_key(data, sub),
    )
    return errors


# --------------------------------------------------------------------------
# settings: validation + derived values + the MAS config
# --------------------------------------------------------------------------


def _paths(data):
    """Every path the formula writes or reads for this deployment (one source)."""
    base = data["base_path"]
    config_dir = os.path.join(base, "config")
    secrets_dir = os.path.join(config_dir, "secrets")
    state_dir = os.path.join(base, "formula")
    syn = data["synapse"]
    return {
        "base": base,
        "config_dir": config_dir,
        "config_file": os.path.join(config_dir, "config.yaml"),
        "secrets_dir": secrets_dir,
        "keys_dir": os.path.join(config_dir, "keys"),
        "encryption_secret": os.path.join(secrets_dir, "encryption"),
        "homeserver_secret": os.path.join(secrets_dir, "homeserver_secret"),
        "admin_client_secret": os.path.join(secrets_dir, "admin_client_secret"),
        "database_password": os.path.join(secrets_dir, "database_password"),
        "email_password": os.path.join(secrets_dir, "email_password"),
        "synapse_pepper": os.path.join(secrets_dir, "synapse_pepper"),
        "data_dir": os.path.join(base, "data"),
        "bin_dir": os.path.join(base, "bin"),
        "mas_cli": os.path.join(base, "bin", "mas-cli"),
        "register_user": os.path.join(base, "bin", "register-user"),
        "labels_file": os.path.join(config_dir, "docker.labels"),
        "unit": os.path.join(data["service"]["unit_dir"], data["service"]["name"] + ".service"),
        # Synapse's side: the drop-in and its copy of the shared secret
        "synapse_dropin": os.path.join(syn["config_dir"], syn["dropin_name"]),
        "synapse_secret": syn["secret_path"] or os.path.join(base, "synapse", "homeserver_secret"),
        # the formula's own records (syn2mas phase): root only, outside data/,
        # which the MAS process may write
        "state_dir": state_dir,
        "syn2mas_marker": os.path.join(state_dir, "syn2mas.json"),
        "syn2mas_lock": os.path.join(state_dir, "syn2mas.lock"),
        # which secret files the formula wrote (mas_secret refuses to replace others)
        "secret_record": os.path.join(state_dir, "secrets.json"),
        # users (mas_user): the formula's Synapse admin account, password fingerprints, registration tokens
        "synapse_admin_password": os.path.join(state_dir, "synapse-admin.password"),
        "password_fingerprints": os.path.join(state_dir, "passwords.json"),
        "registration_tokens_dir": os.path.join(base, "registration-tokens"),
        # the binary runtime: mas-cli and its share/ (policy, templates, assets)
        **_binary_paths(data, base),
    }


def _provider_secret(paths, provider_id):
    return os.path.join(paths["secrets_dir"], f"upstream-{provider_id}.secret")


def _synapse_pepper(data):
    syn = data["synapse"]
    try:
        conf = __salt__["mas_synapse.config"](syn["config_files"], syn["config_dir"], syn["extra_config"], mask=False)[
            "config"
        ]
    except CommandExecutionError:
        return None
    pepper = _get(conf, "password_config", "pepper")
    return pepper if _is_set(pepper) else None


def _secret_files(data, paths, pepper_source):
    """The secret files of the deployment, in the order they are written."""
    base = {
        "user": data["user"],
        "group": data["group"],
        "mode": "0600",
        "allow_rotation": False,
        "owner": _secret_owner(paths),
    }
    files = []

    def add(name, path, kind, pillar_key=None, **extra):
        files.append({**base, "name": name, "path": path, "kind": kind, "pillar_key": pillar_key, **extra})

    add(
        "encryption",
        paths["encryption_secret"],
        "hex32",
        _key("secrets", "encryption"),
        allow_rotation=_get(data, "secrets", "allow_encryption_rotation"),
    )
    add("homeserver_secret", paths["homeserver_secret"], "token", _key("secrets", "homeserver_secret"))
    add("admin_client_secret", paths["admin_client_secret"], "token")
    for filename, kind in SIGNING_KEYS:
        add(f"key-{kind}", os.path.join(paths["keys_dir"], filename), kind)
    for name, path in (("database_password", ("database", "password")), ("email_password", ("email", "password"))):
        if _is_set(_get(data, *path)):
            add(name, paths[name], "pillar", _key(*path))
    for index, provider in enumerate(data["upstream_oauth2_providers"]):
        if _is_set(provider.get("client_secret")):
            add(
                f"provider-{provider['id']}",
                _provider_secret(paths, provider["id"]),
                "pillar",
                _key("upstream_oauth2_providers", index, "client_secret"),
            )
    if pepper_source:
        add("synapse_pepper", paths["synapse_pepper"], "pepper", _key("synapse", "pepper"))
    return files


def _secret_owner(paths):
    """How mas_secret tells the formula's own secret files (``owner`` of mas_secret.status)."""
    return {"record": paths["secret_record"], "dirs": [paths["secrets_dir"], paths["keys_dir"]]}


def _validate_paths(data):
    """The files pillar places (unit, drop-in, Synapse's secret copy, proxy
    files) must not be one of the formula's own files or directories, nor lie
    where MAS or its account write, nor be the same file twice."""
    paths = data["paths"]
    errors = _Errors()
    own = {
        paths[name]: name
        for name in (
            "base",
            "config_dir",
            "config_file",
            "secrets_dir",
            "keys_dir",
            "data_dir",
            "bin_dir",
            "mas_cli",
            "register_user",
            "labels_file",
            "state_dir",
            "encryption_secret",
            "homeserver_secret",
            "admin_client_secret",
            "database_password",
            "email_password",
            "synapse_pepper",
            "secret_record",
            "synapse_admin_password",
            "password_fingerprints",
        )
        if name in paths
    }
    # the account writes data/; the others hold only the formula's secrets and records
    forbidden = {paths[name]: name for name in ("data_dir", "secrets_dir", "keys_dir", "state_dir")}
    placed = [(("service", "unit_dir"), paths["unit"]), (("synapse", "config_dir"), paths["synapse_dropin"])]
    if _is_set(data["synapse"]["secret_path"]):
        placed.append((("synapse", "secret_path"), paths["synapse_secret"]))
    kind = data["proxy"]["type"]
    if kind == "nginx":
        placed += [
            (("proxy", "nginx", "snippet_path"), data["proxy"]["nginx"]["snippet_path"]),
            (("proxy", "nginx", "public_snippet_path"), data["proxy"]["nginx"]["public_snippet_path"]),
        ]
    elif kind == "traefik":
        placed.append((("proxy", "traefik", "config_path"), data["proxy"]["traefik"]["config_path"]))
    for index, user in enumerate(data.get("users") or []):
        token = user.get("access_token") if isinstance(user, dict) else None
        if isinstance(token, dict) and _is_path(token.get("path")):
            placed.append((("users", index, "access_token", "path"), token["path"]))
    seen = {}
    for key, path in placed:
        if path in own:
            errors.add(key, f"{path} is the formula's own {own[path]}: choose another path")
        elif any(path.startswith(directory + "/") for directory in forbidden):
            inside = next(d for d in forbidden if path.startswith(d + "/"))
            errors.add(
                key,
                f"{path} lies in {inside} ({forbidden[inside]}), where only MAS or the formula write: choose another"
                " path",
            )
        elif path in seen:
            errors.add(key, f"{path} is also {_key(*seen[path])}'s file: choose another path")
        seen.setdefault(path, key)
    return errors


def foreign_files(mas=None):
    """
    The files the formula would write that exist and are not its own, as
    refusals naming the pillar key that places each (``[]``: none). A template
    the formula wrote carries its banner (``File managed by Salt (mas
    formula)``); a secret file is its own when ``mas_secret.foreign`` says so.
    ``state.apply mas`` calls this while rendering (every SLS asks the map with
    ``refuse_foreign=True``), so a refusal comes before anything is written:
    the formula never overwrites a file it did not write.

    mas
        The map (default: ``mas.mapdata``).

    CLI Example:

    .. code-block:: bash

        salt-call mas.foreign_files
    """
    mas = mas or mapdata()
    if not mas["enabled"]:
        return []
    paths = mas["paths"]
    problems = []

    def refuse(key, path, why):
        problems.append(
            f"{_key(*key)}: {path} {why}; the formula never overwrites a file it did not write: move it away or"
            " choose another path"
        )

    templates = [
        (("base_path",), paths["config_file"]),
        (("base_path",), paths["mas_cli"]),
        (("base_path",), paths["register_user"]),
        (("service", "unit_dir"), paths["unit"]),
        (("synapse", "config_dir"), paths["synapse_dropin"]),
    ]
    proxy = __salt__["mas_proxy.settings"](mas)
    keys = {"snippet": "snippet_path", "public-snippet": "public_snippet_path", "config": "config_path"}
    for entry in proxy["files"]:
        templates.append((("proxy", proxy["type"], keys[entry["name"]]), entry["path"]))
    if proxy["labels"]:
        templates.append((("base_path",), paths["labels_file"]))
    for key, path in templates:
        if os.path.lexists(path) and not managed_by_formula(path):
            refuse(key, path, f"exists without the line '{BANNER}'")
    secrets = [(("base_path",), e["path"], e["kind"], e["pillar_key"], None) for e in mas["secret_files"]]
    secrets.append((("synapse", "secret_path"), paths["synapse_secret"], "copy", None, paths["homeserver_secret"]))
    owner = _secret_owner(paths)
    for key, path, kind, pillar_key, source in secrets:
        why = __salt__["mas_secret.foreign"](path, kind, pillar_key=pillar_key, source=source, owner=owner)
        if why:
            refuse(key, path, why)
    return problems


def _split_bind(bind):
    """MAS's bind for ``HOST:PORT``: ``address`` is parsed as a literal socket
    address (an IP, IPv6 in brackets), so a host name becomes ``{host, port}``
    (MAS resolves it)."""
    host, port = _split_hostport(bind)
    if _is_ip(host):
        return {"address": f"[{host}]:{port}" if ":" in host else f"{host}:{port}"}
    return {"host": host, "port": port}


def _assets_resource(paths):
    """The ``assets`` resource, served from ``share/assets/`` with the binary runtime."""
    if paths["share_dir"]:
        return {"name": "assets", "path": os.path.join(paths["share_dir"], "assets") + "/"}
    return {"name": "assets"}


def _mas_config(data, paths, pepper_file):
    """Build MAS's config.yaml (a dict) from validated data. No secret inside."""
    prefix = data["path_prefix"]
    web = {
        "name": "web",
        "resources": [
            {"name": "discovery"},
            {"name": "human"},
            {"name": "oauth"},
            {"name": "compat"},
            {"name": "graphql"},
            _assets_resource(paths),
        ],
        "binds": [_split_bind(data["http"]["web_bind"])],
    }
    if prefix != "/":
        web["prefix"] = prefix
    internal_resources = [{"name": "health"}]
    if data["http"]["adminapi"]:
        internal_resources.append({"name": "adminapi"})
    http = {
        "public_base": data["public_base"],
        "issuer": data["public_base"],
        "listeners": [
            web,
            {
                "name": "internal",
                "resources": internal_resources,
                "binds": [_split_bind(data["http"]["internal_bind"])],
            },
        ],
    }
    if data["http"]["trusted_proxies"]:
        http["trusted_proxies"] = [str(net) for net in data["http"]["trusted_proxies"]]

    db = data["database"]
    database = {
        "host": db["host"],
        "port": int(db["port"]),
        "username": db["user"],
        "database": db["name"],
        "ssl_mode": db["ssl_mode"],
    }
    if db["password_set"]:
        database["password_file"] = paths["database_password"]

    bcrypt = {"version": 1, "algorithm": "bcrypt", "unicode_normalization": True}
    if pepper_file:
        bcrypt["secret_file"] = pepper_file
    passwords = {"enabled": True, "schemes": [bcrypt, {"version": 2, "algorithm": "argon2id"}]}

    mail = data["email"]
    email = {"transport": mail["transport"], "from": mail["from"], "reply_to": mail["reply_to"]}
    if mail["transport"] == "smtp":
        email["hostname"] = mail["hostname"]
        if _is_set(mail.get("port")):
            email["port"] = int(mail["port"])
        if _is_set(mail.get("mode")):
            email["mode"] = mail["mode"]
        if _is_set(mail.get("username")):
            email["username"] = mail["username"]
        if mail["password_set"]:
            email["password_file"] = paths["email_password"]
    elif mail["transport"] == "sendmail" and _is_set(mail.get("command")):
        email["command"] = mail["command"]

    config = {
        "http": http,
        "database": database,
        "secrets": {
            "encryption_file": paths["encryption_secret"],
            "keys_dir": paths["keys_dir"],
        },
        "matrix": {
            "kind": "synapse",
            "homeserver": data["server_name"],
            "secret_file": paths["homeserver_secret"],
            "endpoint": data["synapse"]["endpoint"],
        },
        "passwords": passwords,
        "email": email,
    }
    share = paths["share_dir"]
    if share:
        # a release build looks for these under ./share/ of its working
        # directory (crates/config/src/sections/{policy,templates}.rs, dist)
        config["policy"] = {"wasm_module": os.path.join(share, "policy.wasm")}
        config["templates"] = {
            "path": os.path.join(share, "templates") + "/",
            "assets_manifest": os.path.join(share, "manifest.json"),
            "translations_path": os.path.join(share, "translations") + "/",
        }
    if data["account"]:
        config["account"] = dict(data["account"])
    if data["upstream_oauth2_providers"]:
        config["upstream_oauth2"] = {"providers": data["upstream_oauth2_providers"]}
    config = salt.utils.dictupdate.update(config, copy.deepcopy(data["config"]), merge_lists=False)
    # The formula's admin client survives an operator's own `clients` or
    # `policy.data` in mas:config: mas_user.register and the mas_user.present state need it.
    admin_client = {
        "client_id": ADMIN_CLIENT_ID,
        "client_name": "Salt (mas formula)",
        "client_auth_method": "client_secret_basic",
        "client_secret_file": paths["admin_client_secret"],
    }
    config["clients"] = [admin_client] + [
        c for c in config.get("clients") or [] if not (isinstance(c, dict) and c.get("client_id") == ADMIN_CLIENT_ID)
    ]
    policy_data = config.setdefault("policy", {}).setdefault("data", {})
    admins = list(policy_data.get("admin_clients") or [])
    policy_data["admin_clients"] = [ADMIN_CLIENT_ID] + [c for c in admins if c != ADMIN_CLIENT_ID]
    return config


def _redact(data):
    """Remove every secret value from ``data``; keep ``*_set`` flags instead."""
    data["secrets"]["encryption_set"] = _is_set(data["secrets"].pop("encryption", None))
    data["secrets"]["homeserver_secret_set"] = _is_set(data["secrets"].pop("homeserver_secret", None))
    data["database"]["password_set"] = _is_set(data["database"].pop("password", None))
    data["email"]["password_set"] = _is_set(data["email"].pop("password", None))
    data["synapse"]["pepper_set"] = _is_set(data["synapse"].pop("pepper", None))
    # Synapse settings given in pillar may hold Synapse secrets: the modules
    # read them from pillar themselves; the map keeps only their names.
    data["synapse"]["extra_config_keys"] = sorted(data["synapse"].pop("extra_config", {}))
    providers = []
    for provider in data["upstream_oauth2_providers"]:
        provider = dict(provider)
        if _is_set(provider.pop("client_secret", None)):
            provider["client_secret_file"] = _provider_secret(data["paths"], provider["id"])
        providers.append(provider)
    data["upstream_oauth2_providers"] = providers
    # a postgresql:// URI may carry a password: mas_syn2mas reads it from pillar
    syn2mas = data.get("syn2mas")
    if isinstance(syn2mas, dict) and "synapse_database_uri" in syn2mas:
        syn2mas["synapse_database_uri_set"] = _is_set(syn2mas.pop("synapse_database_uri"))
    users = []
    for index, user in enumerate(data["users"]):
        token = user.get("access_token")
        users.append(
            {
                "username": user["username"],
                "admin": bool(user.get("admin", False)),
                "emails": list(user.get("emails") or []),
                "password_pillar_key": _key("users", index, "password") if _is_set(user.get("password")) else None,
                "locked": user.get("locked"),
                "password_update": user.get("password_update", "on_create"),
                "skip_password_check": bool(user.get("skip_password_check", False)),
                "absent": bool(user.get("absent", False)),
                "erase": bool(user.get("erase", False)),
                "access_token": dict(token) if token else None,
            }
        )
    data["users"] = users


def _map():
    """The map of this run, shared and read-only: for this module's own lookups (no copy)."""
    key = _cache_key() + ":shared"
    if key not in __context__:
        mapdata()
    return __context__[key]


def _cache_key():
    pillar = salt.utils.data.traverse_dict_and_list(__pillar__, PILLAR_ROOT, {}) or {}
    return "mas.mapdata:" + hashlib.sha256(json.dumps(pillar, sort_keys=True, default=str).encode()).hexdigest()


def mapdata(defaults=None, refuse_foreign=False):
    """
    The formula's map: ``parameters/defaults.yaml`` < pillar ``mas:lookup`` <
    pillar ``mas``, validated and completed by :py:func:`settings`. This is
    what every SLS of the formula (and ``mas/map.jinja``) works from, as do
    the execution functions (``mas_user.register``, ``mas_doctor.run``, ...).

    defaults
        The ``values`` of ``parameters/defaults.yaml``; read from
        ``salt://mas/parameters/defaults.yaml`` when omitted (and then
        computed once per run).
    refuse_foreign
        Also refuse, naming the pillar key, a file the formula would write
        that exists and is not its own (:py:func:`foreign_files`); what
        the SLS (and ``mas/map.jinja``) ask while they render.

    CLI Example:

    .. code-block:: bash

        salt-call mas.mapdata
    """
    pillar = salt.utils.data.traverse_dict_and_list(__pillar__, PILLAR_ROOT, {}) or {}
    if not isinstance(pillar, dict):
        raise SaltInvocationError(f"the pillar key '{PILLAR_ROOT}' must be a mapping")
    # every SLS of a run asks for the same map: compute it once per pillar
    cache_key = _cache_key()
    if defaults is None and cache_key in __context__:
        result = json.loads(__context__[cache_key])
        if refuse_foreign and cache_key + ":foreign-checked" not in __context__:
            _refuse_foreign(result)
            __context__[cache_key + ":foreign-checked"] = True
        return result
    if defaults is None:
        defaults = _defaults()
    pillar = copy.deepcopy(dict(pillar))
    lookup = pillar.pop("lookup", None) or {}
    misplaced = [":".join(path) for path, _ in PILLAR_SECRETS if _get(lookup, *path) is not None]
    misplaced += [key for key in ("users", "upstream_oauth2_providers") if key in lookup]
    problems = [f"mas:lookup:{key}: secrets belong under mas:{key}, not mas:lookup" for key in misplaced]
    if isinstance(lookup.get("config"), dict):
        problems += _inline_secrets(lookup["config"], ("lookup", "config"))
    if problems:
        raise SaltInvocationError(_INVALID + "\n- ".join(problems))
    merged = salt.utils.dictupdate.update(copy.deepcopy(dict(defaults)), copy.deepcopy(dict(lookup)), merge_lists=False)
    result = settings(salt.utils.dictupdate.update(merged, pillar, merge_lists=False), defaults)
    __context__[cache_key] = json.dumps(result, default=str)
    __context__[cache_key + ":shared"] = json.loads(__context__[cache_key])
    result = json.loads(__context__[cache_key])
    if refuse_foreign:
        # once per run: the first SLS to render refuses before anything is written
        _refuse_foreign(result)
        __context__[cache_key + ":foreign-checked"] = True
    return result


def _refuse_foreign(mas):
    problems = foreign_files(mas)
    if problems:
        raise SaltInvocationError(_INVALID + "\n- ".join(problems))


def _defaults():
    """The ``values`` of ``parameters/defaults.yaml``, through the file server (once per run)."""
    if "mas.defaults" not in __context__:
        text = __salt__["cp.get_file_str"](f"salt://{PILLAR_ROOT}/parameters/defaults.yaml")
        if not text:
            raise CommandExecutionError(
                f"cannot read salt://{PILLAR_ROOT}/parameters/defaults.yaml: is the formula in file_roots?"
            )
        __context__["mas.defaults"] = salt.utils.yaml.safe_load(text)["values"]
    return copy.deepcopy(__context__["mas.defaults"])


def settings(data, defaults=None):
    """
    Validate pillar data of the formula and return the complete map (what
    :py:func:`mapdata` does with the pillar, for any data: e.g. to check a
    pillar before it is deployed).

    ``data`` is merged over ``parameters/defaults.yaml``. Raises
    ``SaltInvocationError`` listing every problem by pillar key. The returned
    map holds no secret value; it adds ``hostname``, ``public_base``,
    ``paths``, ``secret_files``, ``api`` and ``mas_config`` (the content of
    MAS's ``config.yaml``).

    data
        Pillar data of the formula (the value of the ``mas`` key).
    defaults
        The defaults to merge it over (default: ``parameters/defaults.yaml``).

    CLI Example:

    .. code-block:: bash

        salt-call mas.settings "{enabled: true, server_name: example.com}"
    """
    if not isinstance(data, dict):
        raise SaltInvocationError("mas: the pillar key 'mas' must be a mapping")
    base = copy.deepcopy(defaults) if defaults is not None else _defaults()
    data = salt.utils.dictupdate.update(base, copy.deepcopy(salt.utils.data.decode(dict(data))), merge_lists=False)
    errors = _validate(data)
    if errors:
        raise SaltInvocationError(_INVALID + "\n- ".join(errors))
    prefix = data["path_prefix"]
    if _is_set(data["server_name"]) and not _is_set(data["hostname"]):
        data["hostname"] = f"matrix.{data['server_name']}"
    host = data["hostname"] or "localhost"
    data["public_base"] = f"https://{host}{'' if prefix == '/' else prefix}/"
    data["paths"] = _paths(data)
    errors = _validate_paths(data)
    if errors:
        raise SaltInvocationError(_INVALID + "\n- ".join(errors))
    data["synapse"]["secret_path"] = data["paths"]["synapse_secret"]
    if not _is_set(data["synapse"]["mas_endpoint"]):
        port = data["http"]["web_bind"].rsplit(":", 1)[-1]
        data["synapse"]["mas_endpoint"] = f"http://localhost:{port}{'' if prefix == '/' else prefix}/"
    if data["runtime"] == "docker" and not data["service"]["docker"]["network"]:
        # MAS reaches PostgreSQL and Synapse on localhost, and Salt, Synapse
        # and the proxy reach MAS there, as with the binary runtime
        data["service"]["docker"]["network"] = "host"
    proxy = data["proxy"]
    if not _is_set(proxy.get("matrix_hostname")) and _is_set(data["server_name"]):
        proxy["matrix_hostname"] = f"matrix.{data['server_name']}"
    upstream = _local_upstream(data["http"]["web_bind"])
    internal = _local_upstream(data["http"]["internal_bind"])
    data["api"] = {
        "client_id": ADMIN_CLIENT_ID,
        "client_secret_file": data["paths"]["admin_client_secret"],
        "token_url": f"{upstream}{'' if prefix == '/' else prefix}/oauth2/token",
        "introspect_url": f"{upstream}{'' if prefix == '/' else prefix}/oauth2/introspect",
        "admin_url": internal + "/api/admin/v1",
        "health_url": internal + "/health",
        "web_url": f"{upstream}{'' if prefix == '/' else prefix}/",
    }
    for kind, key in (("nginx", "mas_upstream"), ("traefik", "mas_url")):
        if not _is_set(proxy[kind].get(key)):
            proxy[kind][key] = upstream
    pepper_source = "pillar" if _is_set(data["synapse"].get("pepper")) else None
    if pepper_source is None and _synapse_pepper(data) is not None:
        pepper_source = "synapse"
    data["secret_files"] = _secret_files(data, data["paths"], pepper_source)
    data["secret_owner"] = _secret_owner(data["paths"])
    _redact(data)
    data["synapse"]["pepper_source"] = pepper_source
    pepper_file = data["paths"]["synapse_pepper"] if pepper_source else None
    data["mas_config"] = _mas_config(data, data["paths"], pepper_file)
    errors = _validate_mas_config(data, _mas_config(dict(data, config={}), data["paths"], pepper_file))
    if errors:
        raise SaltInvocationError(_INVALID + "\n- ".join(errors))
    return data


# --------------------------------------------------------------------------
# Container image (docker runtime)
# --------------------------------------------------------------------------

#: What every command that needs docker says when it is not there (the docker
#: branch of ``mas/files/default/mas-cli.sh.jinja`` prints the same line).
DOCKER_MISSING = "mas:runtime is docker but {command} is missing: install Docker or set mas:runtime: binary"
BINARY_MISSING = "mas:runtime is binary but {command} is missing: install mas-cli there or set mas:binary"


def runtime_problem(mas=None):
    """
    Why ``bin/mas-cli`` cannot run on this minion, in one line for the
    operator, or an empty string when nothing is known to be wrong: with the
    docker runtime, the docker CLI (``mas:service:docker:command``) missing;
    with the binary runtime, ``mas-cli`` (``mas:binary``) missing.
    The formula's functions that run ``mas-cli`` (doctor, syn2mas) or need MAS
    running (users) check it first, instead of a shell's "exec: not found".

    mas
        The formula's map (default: :py:func:`mapdata`).

    CLI Example:

    .. code-block:: bash

        salt-call mas.runtime_problem
    """
    mas = mas or mapdata()
    if mas["runtime"] == "docker":
        command = mas["service"]["docker"]["command"]
        if not __salt__["cmd.has_exec"](command):
            return DOCKER_MISSING.format(command=command)
    elif not __salt__["cmd.has_exec"](mas["paths"]["mas_binary"]):
        return BINARY_MISSING.format(command=mas["paths"]["mas_binary"])
    return ""


def image_present(image, command="/usr/bin/docker", test=False):
    """
    Make sure the MAS container image is on the minion: ``docker image
    inspect``, and ``docker pull`` when it is missing (argument lists, no
    shell). Returns ``{"present_before": bool, "pulled": bool}``; with
    ``test`` nothing is pulled.

    image
        The image reference (``mas:image``).
    command
        The docker CLI (``mas:service:docker:command``).

    CLI Example:

    .. code-block:: bash

        salt-call mas.image_present ghcr.io/element-hq/matrix-authentication-service:1.23.0
    """
    if not __salt__["cmd.has_exec"](command):
        raise CommandExecutionError(DOCKER_MISSING.format(command=command))
    inspect = __salt__["cmd.run_all"](
        [command, "image", "inspect", image], python_shell=False, output_loglevel="quiet", ignore_retcode=True
    )
    if inspect["retcode"] == 0:
        return {"present_before": True, "pulled": False}
    if test:
        return {"present_before": False, "pulled": False}
    pull = __salt__["cmd.run_all"]([command, "pull", image], python_shell=False, ignore_retcode=True)
    if pull["retcode"] != 0:
        raise CommandExecutionError(f"docker pull {image} failed: {(pull['stderr'] or pull['stdout']).strip()[-500:]}")
    return {"present_before": False, "pulled": True}


def files_switch(source_files, lookup, tplroot=PILLAR_ROOT):
    """
    The ``source`` list of a template, TOFS-style as the template-formula's
    ``files_switch`` builds it (used by the SLS files while they render): for
    each directory ``<lookup>`` (the state ID), the values of the grains in
    ``mas:tofs:files_switch`` (default ``id``, ``os_family``) and ``default``,
    each file of ``mas:tofs:source_files:<lookup>`` then of ``source_files``,
    under ``salt://<mas:tofs:path_prefix>/<mas:tofs:dirs:files>/``. The first
    that exists wins, so an operator overrides a template by placing a file
    in ``mas/files/<state id>/`` or naming another one in pillar. Masterless,
    only the first candidate found in ``file_roots`` is returned (all of them
    when none is there, so that ``file.managed`` names what it looked for).

    source_files
        The formula's file names for the state (e.g. ``['config.yaml.jinja']``).
    lookup
        The state ID.
    tplroot
        The formula's directory (default ``mas``).

    CLI Example:

    .. code-block:: bash

        salt-call mas.files_switch "['config.yaml.jinja']" mas-config-file-file-managed
    """
    tofs = _map()["tofs"]
    prefix = tofs["path_prefix"] or tplroot
    names = list(tofs["source_files"].get(lookup, [])) + list(source_files)
    dirs = [lookup]
    for grain in tofs["files_switch"]:
        value = __grains__.get(grain)
        if isinstance(value, str) and _TOFS_NAME.fullmatch(value) and value not in dirs:
            dirs.append(value)
    dirs.append("default")
    candidates = [f"{prefix}/{tofs['dirs']['files']}/{directory}/{name}" for directory in dirs for name in names]
    # masterless: keep only the first candidate that exists in file_roots, so that it is looked up once
    # instead of asking the file server for every override that is not there
    found = [path for path in candidates if _local_file(path)]
    candidates = found[:1] or candidates
    return [f"salt://{path}" for path in candidates]


def account(user=None, group=None):
    """
    Whether the service account and its group exist on the minion:
    ``{"user": bool, "group": bool}`` (``mas.install`` creates what is missing
    and leaves what exists as it is). Cheap: no group enumeration.

    user, group
        The names (default: ``mas:user`` and ``mas:group`` from the map).

    CLI Example:

    .. code-block:: bash

        salt-call mas.account
    """
    import grp  # pylint: disable=import-outside-toplevel
    import pwd  # pylint: disable=import-outside-toplevel

    if user is None or group is None:
        mas = mapdata()
        user, group = user or mas["user"], group or mas["group"]
    found = {}
    for key, name, lookup in (("user", user, pwd.getpwnam), ("group", group, grp.getgrnam)):
        try:
            lookup(name)
            found[key] = True
        except KeyError:
            found[key] = False
    return found


def _template_text(source):
    """The text of ``salt://`` ``source``: read from file_roots directly masterless (cheaper), else (a master,
    or another file server backend such as gitfs) through the file server."""
    local = _local_file(source[len("salt://") :])
    if local:
        with salt.utils.files.fopen(local, "r") as handle:
            return handle.read()
    return __salt__["cp.get_file_str"](source) or None


def _local_file(path):
    """Masterless: the file ``path`` (relative to a file root) in this saltenv's file_roots, else None."""
    if __opts__.get("file_client") != "local":
        return None
    for root in (__opts__.get("file_roots") or {}).get(__opts__.get("saltenv") or "base", []):
        candidate = os.path.join(root, path)
        if os.path.isfile(candidate):
            return candidate
    return None


def _template_source(source):
    """Jinja's FunctionLoader: ``(text, None, uptodate)`` of ``source`` (a ``salt://`` URL), None when missing."""
    text = _template_text(source)
    return None if text is None else (text, None, lambda: False)


def _jinja_env():
    """One Jinja environment per run, with Salt's template filters (``yaml``, ``json``, ``quote``, ...)."""
    if "mas.jinja_env" not in __context__:
        cache_dir = os.path.join(__opts__.get("cachedir") or "/var/cache/salt/minion", "mas-jinja")
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        env = jinja2.sandbox.SandboxedEnvironment(
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            extensions=["jinja2.ext.do", "jinja2.ext.loopcontrols", salt.utils.jinja.SerializerExtension],
            # compiled templates are kept between runs (keyed on the template's text)
            bytecode_cache=jinja2.FileSystemBytecodeCache(cache_dir),
            loader=jinja2.FunctionLoader(_template_source),
        )
        env.filters.update(JinjaFilter.salt_jinja_filters)
        __context__["mas.jinja_env"] = env
    return __context__["mas.jinja_env"]


def render(source_files, lookup, context=None, tplroot=PILLAR_ROOT):
    """
    The text of one of the formula's templates, found TOFS-style
    (:py:func:`files_switch`) and rendered with Jinja and Salt's template
    filters (``yaml``, ``json``, ``quote``, ...). Used by the SLS files while
    they render (``file.managed`` gets the text as ``contents``): one Jinja
    environment for the whole run instead of Salt's template machinery per
    file, which made a no-change run of ``mas`` much slower. A template sees
    ``context`` and ``grains`` (and ``salt``); no pillar (the result is part
    of the rendered SLS).

    source_files
        The formula's file names for the state (e.g. ``['config.yaml.jinja']``).
    lookup
        The state ID.
    context
        The template's variables.
    tplroot
        The formula's directory (default ``mas``).

    CLI Example:

    .. code-block:: bash

        salt-call mas.render "['docker.labels.jinja']" mas-config-file-file-managed-labels "{labels: {a: b}}"
    """
    sources = files_switch(source_files, lookup, tplroot)
    env = _jinja_env()
    for source in sources:
        try:
            template = env.get_template(source)
        except jinja2.TemplateNotFound:
            continue
        return template.render(**dict(context or {}, grains=__grains__, salt=__salt__))
    raise CommandExecutionError(f"none of the templates {', '.join(sources)} exists")


BANNER = "File managed by Salt (mas formula)"


def managed_by_formula(path):
    """
    True when ``path`` is a regular file carrying the formula's banner: what
    ``mas.clean`` may remove (files another tool wrote at the same paths, e.g.
    the playbook's, are left alone).

    path
        The file to look at.

    CLI Example:

    .. code-block:: bash

        salt-call mas.managed_by_formula /matrix/matrix-authentication-service/config/config.yaml
    """
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with salt.utils.files.fopen(path, "r") as handle:
            return BANNER in handle.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
