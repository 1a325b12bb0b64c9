"""The formula's value grammar: one strict grammar (``re.fullmatch``) per kind of value, and the checks built on it.

Pillar is data, never code. Every value that reaches a file, a command, a
unit, a wrapper, nginx or Traefik is checked against the grammar of its kind
with ``re.fullmatch`` (``$`` would let a trailing newline through); each kind
has one checker (:data:`CHECKS`, :func:`valid`), used wherever that kind
appears, and one description of what a valid value looks like
(:data:`KINDS`), which every refusal quotes. Matrix localparts and email
addresses (:func:`check_username`, :func:`check_email`) are judged here too,
for the pillar and the command line alike. Also: :class:`Errors`, the list of
refusals every validation fills, each naming its pillar key (:func:`key`).
"""

import ipaddress
import re

import salt.utils.data
from salt.exceptions import SaltInvocationError

PILLAR_ROOT = "mas"
INVALID = "Invalid pillar for the mas formula (nothing was changed):\n- "
DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"{DNS_LABEL}(?:\.{DNS_LABEL})*")
IP_CHARS = re.compile(r"[0-9A-Fa-f:.]+")


# An absolute path: single '/' between names of letters, digits and . _ + @ -
# (no spaces, quotes, '$', '%', ',' or control characters: paths reach the
# unit, the sh wrappers and docker --mount=src=...,dst=...).
PATH = re.compile(r"(?:/[A-Za-z0-9._+@-]+)+")
FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+@-]*")
URL = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<path>/(?:[A-Za-z0-9._~+=@:,/-]|%[0-9A-Fa-f]{2})*)?"
)
BIND = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>[0-9]{1,5})")
URL_PATH = re.compile(r"/|(?:/[A-Za-z0-9._~-]+)+")
ULID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}")


HEX64 = re.compile(r"[0-9a-fA-F]{64}")
NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
PG_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$-]{0,62}")


#: A file or directory name of the TOFS lookup (no '/', no leading '.').
TOFS_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
UNIT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9:_.@-]{0,250}")


# mas:service:name names the unit, the docker container and the Traefik
# routers (a '.' would split a Traefik label key, '@' names a provider).
SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{1,62}")
TRAEFIK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


# docker's reference grammar (distribution/reference): [domain[:port]/]path[:tag][@digest]
IMAGE_DOMAIN = rf"{DNS_LABEL}(?:\.{DNS_LABEL})*(?::[0-9]+)?"
IMAGE_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE = re.compile(
    rf"(?:{IMAGE_DOMAIN}/)?{IMAGE_PATH}(?:/{IMAGE_PATH})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,})?"
)
DOCKER_NETWORK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
DOCKER_ARG = re.compile(r"[A-Za-z0-9_./:=@,+-]+")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# An email address as lettre's Mailbox parser takes it (MAS email.from):
# `addr`, or `[display name] <addr>`; names with , @ : ; ( ) [ ] < > quoted.
# atext: letters, digits, !#$%&'*+/=?^_`{|}~- and any non-ASCII character, written as what it is not (a
# class reaching U+10FFFF costs Python's re ~6 ms to compile, each time it appears)
ATEXT = r'[^\x00-\x20\x7f"(),.:;<>@\[\\\]]'
QUOTED = r'"(?:[^"\\\x00-\x1f\x7f]|\\[^\x00-\x1f\x7f])*"'
ADDR_SPEC = rf"(?P<local>{ATEXT}+(?:\.{ATEXT}+)*|{QUOTED})@(?P<domain>{DNS_LABEL}(?:\.{DNS_LABEL})*)"
MAILBOX = re.compile(
    rf"[ \t]*(?:{ADDR_SPEC}|(?:(?:{ATEXT}+|{QUOTED})(?:[ \t]*(?:[ \t]{ATEXT}+|{QUOTED}|\.))*[ \t]*)?"
    rf"<{ADDR_SPEC.replace('?P<local>', '?P<local2>').replace('?P<domain>', '?P<domain2>')}>)[ \t]*"
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


def key(*path):
    return ":".join((PILLAR_ROOT,) + tuple(str(p) for p in path))


def get(data, *path, default=None):
    return salt.utils.data.traverse_dict_and_list(data, list(path), default)


def is_set(value):
    return value not in (None, "", [], {})


def is_text(value):
    """A string without control characters (newline, tab, NUL, ...)."""
    return isinstance(value, str) and not CONTROL.search(value)


def is_dns_name(value):
    return isinstance(value, str) and 0 < len(value) <= 253 and bool(HOSTNAME.fullmatch(value))


def is_ip(value, version=None):
    if not isinstance(value, str) or not IP_CHARS.fullmatch(value):
        return False
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    return version is None or address.version == version


#: The names that mean this very host (``/etc/hosts`` of Debian, RFC 6761's ``localhost.`` and its subdomains).
THIS_HOST_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def is_this_host(host, unspecified=True):
    """Whether ``host`` (a name or an IP address, IPv6 with or without brackets) names this very host by
    convention: ``localhost`` and its kin, ``127.0.0.1``, ``::1`` (IPv4-mapped too) or, unless ``unspecified`` is
    false (a bind, where it means every address), an unspecified address (``0.0.0.0``, ``::``). The other addresses of ``127.0.0.0/8`` are not: each is chosen on purpose (several
    services on one machine, each on its own loopback address, as the tests of several hosts run)."""
    if not isinstance(host, str):
        return False
    name = host.strip().removeprefix("[").removesuffix("]").rstrip(".").lower()
    if name in THIS_HOST_NAMES or name.endswith(".localhost"):
        return True
    if not IP_CHARS.fullmatch(name):
        return False
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (unspecified and address.is_unspecified) or str(address) in ("127.0.0.1", "::1")


def as_port(value):
    """The port ``value`` names (an int, or a string of digits), else None; floats are refused."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,5}", value):
        value = int(value)
    if not isinstance(value, int):
        return None
    return value if 0 < value < 65536 else None


def is_url(value, schemes=("http", "https"), path=True, slash=False):
    """An absolute URL of ``schemes``: host (DNS name, IPv4 or [IPv6]), optional port, optional path
    (``path`` false: none at all; ``slash``: a path must end with '/'), no userinfo, query or fragment."""
    match = URL.fullmatch(value) if isinstance(value, str) else None
    if not match or match["scheme"] not in schemes:
        return False
    host = match["host"]
    if host.startswith("["):
        if not is_ip(host[1:-1], 6):
            return False
    elif not (is_dns_name(host) or is_ip(host, 4)):
        return False
    if match["port"] is not None and as_port(match["port"]) is None:
        return False
    if match["path"] and (not path or (slash and not match["path"].endswith("/"))):
        return False
    return "//" not in (match["path"] or "")


def split_hostport(value):
    """``(host, port)`` of a bind ``HOST:PORT`` (IPv6 unbracketed), or None."""
    match = BIND.fullmatch(value) if isinstance(value, str) else None
    if not match or as_port(match["port"]) is None:
        return None
    if match["v6"] is not None:
        return (match["v6"], int(match["port"])) if is_ip(match["v6"], 6) else None
    host = match["host"]
    return (host, int(match["port"])) if is_ip(host, 4) or is_dns_name(host) else None


def is_cidr(value):
    if not isinstance(value, str) or not re.fullmatch(r"[0-9A-Fa-f:.]+(?:/[0-9]{1,3})?", value):
        return False
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def is_path(value):
    return (
        isinstance(value, str)
        and len(value) <= 4096
        and bool(PATH.fullmatch(value))
        and not any(part in (".", "..") for part in value.split("/"))
    )


CHECKS = {
    "hostname": is_dns_name,
    "host": lambda v: is_dns_name(v) or is_ip(v),
    "url": is_url,
    "origin": lambda v: is_url(v, path=False),
    "bind": lambda v: split_hostport(v) is not None,
    "path": is_path,
    "command": is_path,
    "unit": lambda v: isinstance(v, str) and bool(UNIT_NAME.fullmatch(v)),
    "service": lambda v: isinstance(v, str) and bool(SERVICE_NAME.fullmatch(v)),
    "image": lambda v: isinstance(v, str) and len(v) <= 255 and bool(IMAGE.fullmatch(v)),
    "traefik": lambda v: isinstance(v, str) and bool(TRAEFIK_NAME.fullmatch(v)),
    "name": lambda v: isinstance(v, str) and bool(NAME.fullmatch(v)),
    "port": lambda v: as_port(v) is not None,
    "mailbox": lambda v: isinstance(v, str) and bool(MAILBOX.fullmatch(v)),
    "url_path": lambda v: isinstance(v, str) and bool(URL_PATH.fullmatch(v)),
    "file_name": lambda v: isinstance(v, str) and v not in (".", "..") and bool(FILE_NAME.fullmatch(v)),
}


def valid(kind, value):
    """Whether ``value`` is a valid value of ``kind`` (a key of :data:`KINDS`): its one strict grammar,
    the same the pillar validation applies; an unknown kind is a ``SaltInvocationError``."""
    if kind not in CHECKS:
        raise SaltInvocationError(f"mas.valid: unknown kind {kind!r} (known: {', '.join(sorted(CHECKS))})")
    return bool(CHECKS[kind](value))


class Errors(list):
    """Every problem of a pillar at once, each ``mas:<key>: <what is wrong>``."""

    def add(self, path, message):
        self.append(f"{key(*path)}: {message}")

    def expect(self, path, value, kind, optional=False, what=None):
        """Add a refusal unless ``value`` is of ``kind`` (``optional``: an unset value passes)."""
        if (optional and not is_set(value)) or CHECKS[kind](value):
            return True
        self.add(path, f"must be {what or KINDS[kind]}, not {value!r}")
        return False

    def secret(self, path, value, trimmed=False):
        """A secret from pillar: a string (or an integer), no control characters; never echoed."""
        if not is_set(value):
            return True
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            self.add(
                path,
                f"must be a string (or an integer), not a {type(value).__name__}; quote it in YAML if needed",
            )
            return False
        if CONTROL.search(str(value)):
            self.add(path, "must not contain control characters (newline, tab, ...)")
            return False
        if trimmed and str(value) != str(value).strip():
            self.add(path, "must not start or end with whitespace (MAS trims the file it reads it from)")
            return False
        return True


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------
# Matrix localparts and email addresses (pillar and command line alike)
# --------------------------------------------------------------------------

LOCALPART = re.compile(r"[a-z0-9._=/+-]{1,255}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL = re.compile(r"[^@\s<>()\[\],;:\"\\]{1,64}@(?:" + _LABEL + r"\.)*" + _LABEL)


def check_username(username):
    """The Matrix localpart of ``username`` (a leading ``@`` and a trailing ``:server`` are removed), or
    ``SaltInvocationError`` naming the rule MAS and Synapse apply: 1-255 of ``a-z 0-9 . _ = / + -``, not
    starting with ``_``."""
    if isinstance(username, int) and not isinstance(username, bool):
        username = str(username)  # salt-call reads `username=123` as a number
    if not isinstance(username, str) or not username:
        raise SaltInvocationError("username: a Matrix localpart is required")
    name = username[1:] if username.startswith("@") else username
    name = name.split(":", 1)[0]
    if not LOCALPART.fullmatch(name) or name.startswith("_"):
        raise SaltInvocationError(
            f"username: {username!r} is not a valid Matrix localpart (1-255 of a-z, 0-9, ._=/+-, not starting with _)"
        )
    return name


def check_email(address):
    """``address`` if it is an email address MAS accepts (``local@domain``), else ``SaltInvocationError``."""
    if not isinstance(address, str) or not EMAIL.fullmatch(address):
        raise SaltInvocationError(f"email: {address!r} is not an email address (local@domain)")
    return address
