"""
Matrix Authentication Service (MAS) -- the decisions of the ``mas`` formula.

Everything the formula decides is made here, in Python, and the SLS files only
fill values in: the pillar is validated and completed by :py:func:`settings`
(called once per SLS from ``mas/map.jinja``), the MAS ``config.yaml`` is built
by :py:func:`settings` too, and the secrets are generated and written by
:py:func:`write_secret` (driven by the ``mas.secret`` state).

Secret values never leave this module: :py:func:`settings` removes them from
the map it returns (the SLS only learn *that* a secret is set and which file
holds it), and the secret functions report what they did, never a value.

:depends: cryptography, PyYAML, requests
"""

import base64
import copy
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import stat
import tempfile
import time
import urllib.parse

import salt.utils.data
import salt.utils.dictupdate
import salt.utils.files
import salt.utils.yaml
from salt.exceptions import CommandExecutionError, SaltInvocationError

try:
    import requests

    HAS_REQUESTS = True
except ImportError:  # pragma: no cover - depends on the minion
    HAS_REQUESTS = False

try:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    HAS_CRYPTOGRAPHY = True
except ImportError:  # pragma: no cover - depends on the minion
    HAS_CRYPTOGRAPHY = False

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
    ("http", "adminapi"),
    ("clean", "purge"),
    ("doctor", "strict"),
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
SECRET_KINDS = ("hex32", "token", "pillar", "pepper", "copy") + tuple(
    kind for _, kind in SIGNING_KEYS
)

# The formula's own OAuth2 client of MAS (client_credentials, scope
# urn:mas:admin): a fixed id like upstream's 0000000000000000000SYNAPSE; its
# secret is generated on the minion.
ADMIN_CLIENT_ID = "00000000000000000SA1TADM1N"
_LOCALPART = re.compile(r"^[a-z0-9._=/+-]+$")
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.@-]+$")
# Values rendered into the bin/ wrappers and the systemd unit: no whitespace,
# quotes, `$`, `%` or control characters, so nothing can inject a command.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/+@-]*$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")
_DOCKER_NETWORK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DOCKER_ARG = re.compile(r"^[A-Za-z0-9_./:=@,+-]+$")
SYSTEMD_RESTART = ("no", "always", "on-success", "on-failure", "on-abnormal", "on-abort", "on-watchdog")


def __virtual__():
    if not HAS_CRYPTOGRAPHY:
        return (False, "The mas module needs the 'cryptography' Python package")
    if not HAS_REQUESTS:
        return (False, "The mas module needs the 'requests' Python package")
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


def _is_dns_name(value):
    if not isinstance(value, str) or not value or len(value) > 253:
        return False
    labels = value.rstrip(".").split(".")
    return all(_DNS_LABEL.match(label) for label in labels)


def _is_url(value, schemes=("http", "https")):
    if not isinstance(value, str):
        return False
    parsed = urllib.parse.urlparse(value)
    return parsed.scheme in schemes and bool(parsed.netloc)


def _as_port(value):
    if isinstance(value, bool):
        return None
    try:
        port = int(value)
    except (TypeError, ValueError):
        return None
    return port if 0 < port < 65536 else None


class _Errors(list):
    def add(self, path, message):
        self.append(f"{_key(*path)}: {message}")


def _validate(data):
    """Return the list of problems of the merged pillar ``data``."""
    errors = _Errors()
    for path in BOOL_KEYS:
        value = _get(data, *path)
        if not isinstance(value, bool):
            errors.add(path, f"must be true or false, not {value!r}")
    if errors:
        return errors
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
            errors.add(("server_name",), f"{server_name!r} is not a DNS name")

    hostname = data.get("hostname")
    if _is_set(hostname) and not _is_dns_name(hostname):
        errors.add(("hostname",), f"{hostname!r} is not a DNS name (no scheme, port or path)")

    prefix = data.get("path_prefix")
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        errors.add(("path_prefix",), f"must start with '/', not {prefix!r}")
    elif prefix != "/" and prefix.endswith("/"):
        errors.add(("path_prefix",), f"must not end with '/' (use /auth, not /auth/): {prefix!r}")
    elif not re.match(r"^/[A-Za-z0-9._~/-]*$", prefix) or "//" in prefix:
        errors.add(("path_prefix",), f"{prefix!r} is not a plain URL path")

    for path in (("base_path",), ("service", "unit_dir")):
        value = _get(data, *path)
        if not isinstance(value, str) or not os.path.isabs(value) or value == "/":
            errors.add(path, f"must be an absolute directory path, not {value!r}")
        elif not _SAFE_PATH.match(value):
            errors.add(path, f"{value!r} may only hold letters, digits and . _ / + @ -")
    restart = _get(data, "service", "restart")
    if restart not in SYSTEMD_RESTART:
        errors.add(("service", "restart"), f"must be one of {', '.join(SYSTEMD_RESTART)}, not {restart!r}")
    for path in (("user",), ("group",)):
        value = _get(data, *path)
        if not isinstance(value, str) or not _NAME.match(value):
            errors.add(path, f"{value!r} is not a valid user or group name")
    unit = _get(data, "service", "name")
    if not isinstance(unit, str) or not _UNIT_NAME.match(unit):
        errors.add(("service", "name"), f"{unit!r} is not a valid systemd unit name")

    runtime = data.get("runtime")
    if runtime not in RUNTIMES:
        errors.add(("runtime",), f"must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    elif runtime == "docker":
        image = data.get("image")
        if not isinstance(image, str) or not _IMAGE.match(image):
            errors.add(("image",), f"must be a container image reference, not {image!r}")
        command = _get(data, "service", "docker", "command")
        if not isinstance(command, str) or not _SAFE_PATH.match(command):
            errors.add(("service", "docker", "command"), f"must be the absolute path of docker, not {command!r}")
        network = _get(data, "service", "docker", "network")
        if not isinstance(network, str) or (network and not _DOCKER_NETWORK.match(network)):
            errors.add(("service", "docker", "network"), f"must be a docker network name, not {network!r}")
        extra = _get(data, "service", "docker", "extra_args")
        if not isinstance(extra, list) or not all(isinstance(a, str) and _DOCKER_ARG.match(a) for a in extra):
            errors.add(
                ("service", "docker", "extra_args"),
                "must be a list of single docker arguments (letters, digits and _ . / : = @ , + -; e.g."
                " --publish=127.0.0.1:8080:8080)",
            )
    else:
        binary = data.get("binary")
        if not isinstance(binary, str) or not _SAFE_PATH.match(binary):
            errors.add(("binary",), f"must be the absolute path of mas-cli (letters, digits, . _ / + @ -), not {binary!r}")

    for path in (("http", "web_bind"), ("http", "internal_bind")):
        value = _get(data, *path)
        if not isinstance(value, str) or _as_port(value.rsplit(":", 1)[-1]) is None:
            errors.add(path, f"must be HOST:PORT (e.g. '[::]:8080'), not {value!r}")
    proxies = _get(data, "http", "trusted_proxies")
    if not isinstance(proxies, list):
        errors.add(("http", "trusted_proxies"), "must be a list of CIDR networks")
    else:
        for index, net in enumerate(proxies):
            try:
                ipaddress.ip_network(str(net), strict=False)
            except ValueError:
                errors.add(("http", "trusted_proxies", index), f"{net!r} is not a CIDR network")

    _validate_secrets(data, errors)
    _validate_database(data, errors)
    _validate_email(data, errors)
    _validate_account(data, errors)
    _validate_providers(data, errors)

    endpoint = _get(data, "synapse", "endpoint")
    if not _is_url(endpoint):
        errors.add(("synapse", "endpoint"), f"must be an http(s) URL, not {endpoint!r}")
    mas_endpoint = _get(data, "synapse", "mas_endpoint")
    if _is_set(mas_endpoint) and not _is_url(mas_endpoint):
        errors.add(("synapse", "mas_endpoint"), f"must be an http(s) URL, not {mas_endpoint!r}")
    files = _get(data, "synapse", "config_files")
    if not isinstance(files, list) or not all(
        isinstance(f, str) and os.path.isabs(f) for f in files
    ):
        errors.add(("synapse", "config_files"), "must be a list of absolute file paths")
    if not isinstance(_get(data, "synapse", "extra_config"), dict):
        errors.add(("synapse", "extra_config"), "must be a mapping (Synapse config keys)")

    _validate_synapse(data, errors)
    _validate_proxy(data, errors)
    _validate_users(data, errors)
    if not isinstance(data.get("config"), dict):
        errors.add(("config",), "must be a mapping merged into MAS's config.yaml")
    return errors


def _validate_users(data, errors):
    users = data.get("users")
    if not isinstance(users, list):
        errors.add(("users",), "must be a list of {username, password, admin, emails}")
        return
    seen = set()
    for index, user in enumerate(users):
        path = ("users", index)
        if not isinstance(user, dict):
            errors.add(path, "must be a mapping with at least `username`")
            continue
        name = user.get("username")
        if not isinstance(name, str) or not _LOCALPART.match(name):
            errors.add(path + ("username",), f"must be a Matrix localpart (a-z, 0-9, ._=/+-), not {name!r}")
        elif name in seen:
            errors.add(path + ("username",), f"{name} is listed twice")
        seen.add(name)
        if not isinstance(user.get("admin", False), bool):
            errors.add(path + ("admin",), f"must be true or false, not {user.get('admin')!r}")
        emails = user.get("emails", [])
        if not isinstance(emails, list) or not all(isinstance(e, str) and "@" in e for e in emails):
            errors.add(path + ("emails",), "must be a list of email addresses")
        if _is_set(user.get("password")) and not isinstance(user["password"], str):
            errors.add(path + ("password",), "must be a string")
        unknown = set(user) - {"username", "password", "admin", "emails"}
        if unknown:
            errors.add(path, f"unknown keys {', '.join(sorted(unknown))} (known: username, password, admin, emails)")


def _abs_path(errors, path, value):
    if not isinstance(value, str) or not os.path.isabs(value) or value == "/" or value.endswith("/"):
        errors.add(path, f"must be an absolute path (no trailing '/'), not {value!r}")


def _validate_synapse(data, errors):
    syn = data["synapse"]
    name = syn.get("dropin_name")
    if not isinstance(name, str) or "/" in name or not name.endswith(".yaml") or name.startswith("."):
        errors.add(("synapse", "dropin_name"), f"must be a file name ending in .yaml (Synapse ignores others), not {name!r}")
    _abs_path(errors, ("synapse", "config_dir"), syn.get("config_dir"))
    if _is_set(syn.get("secret_path")):
        _abs_path(errors, ("synapse", "secret_path"), syn.get("secret_path"))
    for key in ("user", "group"):
        if not isinstance(syn.get(key), str) or not _NAME.match(syn[key]):
            errors.add(("synapse", key), f"{syn.get(key)!r} is not a valid user or group name")
    if not isinstance(syn.get("service"), str) or not _UNIT_NAME.match(syn["service"]):
        errors.add(("synapse", "service"), f"{syn.get('service')!r} is not a valid systemd unit name")


def _validate_proxy(data, errors):
    proxy = data["proxy"]
    kind = proxy.get("type")
    if kind not in PROXY_TYPES:
        errors.add(("proxy", "type"), f"must be one of {', '.join(PROXY_TYPES)}, not {kind!r}")
        return
    if kind == "none" or not data["enabled"] or not _is_set(data.get("server_name")):
        return
    matrix_host = proxy.get("matrix_hostname") or f"matrix.{data['server_name']}"
    if not _is_dns_name(matrix_host):
        errors.add(("proxy", "matrix_hostname"), f"must be the homeserver's public host name, not {matrix_host!r}")
    separate_host = (data.get("hostname") or f"matrix.{data['server_name']}") != matrix_host
    if data.get("path_prefix") == "/" and not separate_host:
        errors.add(
            ("path_prefix",),
            "'/' needs MAS on its own host name: set mas:hostname (e.g. auth.example.com) to differ from"
            f" the homeserver's host {matrix_host!r} (mas:proxy:matrix_hostname)",
        )
    if kind == "nginx":
        nginx = proxy["nginx"]
        _upstream_url(errors, ("proxy", "nginx", "mas_upstream"), nginx.get("mas_upstream"))
        _abs_path(errors, ("proxy", "nginx", "snippet_path"), nginx.get("snippet_path"))
        if separate_host:
            _abs_path(errors, ("proxy", "nginx", "public_snippet_path"), nginx.get("public_snippet_path"))
            if nginx.get("public_snippet_path") == nginx.get("snippet_path"):
                errors.add(("proxy", "nginx", "public_snippet_path"), "must differ from mas:proxy:nginx:snippet_path")
    else:
        traefik = proxy["traefik"]
        _upstream_url(errors, ("proxy", "traefik", "mas_url"), traefik.get("mas_url"))
        _abs_path(errors, ("proxy", "traefik", "config_path"), traefik.get("config_path"))
        entrypoint = traefik.get("entrypoint")
        if not isinstance(entrypoint, str) or not re.match(r"^[A-Za-z0-9_-]+$", entrypoint):
            errors.add(("proxy", "traefik", "entrypoint"), f"must be a Traefik entrypoint name, not {entrypoint!r}")


def _upstream_url(errors, path, value):
    """An optional ``http(s)://HOST[:PORT]`` (empty: derived from the web bind)."""
    if not _is_set(value):
        return
    parsed = urllib.parse.urlparse(value) if isinstance(value, str) else None
    if not parsed or parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path not in ("", "/"):
        errors.add(path, f"must be http(s)://HOST[:PORT] (no path), not {value!r}")


def _local_upstream(web_bind):
    """``http://<host>:<port>`` of MAS's web listener, seen from this host."""
    host, _, port = web_bind.rpartition(":")
    host = host.strip("[]")
    if host in ("", "::", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _validate_secrets(data, errors):
    encryption = _get(data, "secrets", "encryption")
    if _is_set(encryption) and not (isinstance(encryption, str) and _HEX64.match(encryption)):
        errors.add(
            ("secrets", "encryption"),
            "must be exactly 64 hexadecimal characters (generate with `openssl rand -hex 32`),"
            " or be left out to let the formula generate it",
        )
    hs_secret = _get(data, "secrets", "homeserver_secret")
    if _is_set(hs_secret) and not (
        isinstance(hs_secret, str) and len(hs_secret) >= 16 and not re.search(r"\s", hs_secret)
    ):
        errors.add(
            ("secrets", "homeserver_secret"),
            "must be a string of at least 16 characters without whitespace,"
            " or be left out to let the formula generate it",
        )
    pepper = _get(data, "synapse", "pepper")
    if _is_set(pepper) and not isinstance(pepper, str):
        errors.add(("synapse", "pepper"), "must be a string (Synapse's password_config.pepper)")


def _validate_database(data, errors):
    db = data.get("database")
    if not isinstance(db, dict):
        errors.add(("database",), "must be a mapping")
        return
    host = db.get("host")
    if not isinstance(host, str) or not (_is_dns_name(host) or _is_ip(host) or os.path.isabs(host)):
        errors.add(("database", "host"), f"must be a host name, IP address or socket directory, not {host!r}")
    if _as_port(db.get("port")) is None:
        errors.add(("database", "port"), f"must be a port number (1-65535), not {db.get('port')!r}")
    for name in ("name", "user"):
        value = db.get(name)
        if not isinstance(value, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$", value):
            errors.add(("database", name), f"{value!r} is not a valid PostgreSQL identifier")
    if db.get("ssl_mode") not in SSL_MODES:
        errors.add(("database", "ssl_mode"), f"must be one of {', '.join(SSL_MODES)}, not {db.get('ssl_mode')!r}")
    password = db.get("password")
    if _is_set(password) and not isinstance(password, str):
        errors.add(("database", "password"), "must be a string")


def _is_ip(value):
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _validate_email(data, errors):
    email = data.get("email")
    if not isinstance(email, dict):
        errors.add(("email",), "must be a mapping")
        return
    transport = email.get("transport")
    if transport not in EMAIL_TRANSPORTS:
        errors.add(("email", "transport"), f"must be one of {', '.join(EMAIL_TRANSPORTS)}, not {transport!r}")
        return
    for name in ("from", "reply_to"):
        if not isinstance(email.get(name), str) or "@" not in email.get(name, ""):
            errors.add(("email", name), f"must be an email address, not {email.get(name)!r}")
    if transport == "smtp":
        if not _is_set(email.get("hostname")):
            errors.add(("email", "hostname"), "is required when mas:email:transport is smtp")
        elif not (_is_dns_name(email["hostname"]) or _is_ip(email["hostname"])):
            errors.add(("email", "hostname"), f"{email['hostname']!r} is not a host name")
        if _is_set(email.get("port")) and _as_port(email.get("port")) is None:
            errors.add(("email", "port"), f"must be a port number (1-65535), not {email.get('port')!r}")
        if _is_set(email.get("mode")) and email.get("mode") not in SMTP_MODES:
            errors.add(("email", "mode"), f"must be one of {', '.join(SMTP_MODES)}, not {email.get('mode')!r}")
        if _is_set(email.get("password")) and not _is_set(email.get("username")):
            errors.add(("email", "username"), "is required when mas:email:password is set")
    elif transport == "sendmail" and _is_set(email.get("command")) and not os.path.isabs(email["command"]):
        errors.add(("email", "command"), "must be an absolute path")


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
    seen = set()
    for index, provider in enumerate(providers):
        path = ("upstream_oauth2_providers", index)
        if not isinstance(provider, dict):
            errors.add(path, "must be a mapping")
            continue
        pid = provider.get("id")
        if not isinstance(pid, str) or not _ULID.match(pid):
            errors.add(path + ("id",), f"must be a ULID (26 characters, e.g. 01HFVBY12TMNTYTBV8W921M5FA), not {pid!r}")
        elif pid.upper() in seen:
            errors.add(path + ("id",), f"{pid} is used by another provider")
        else:
            seen.add(pid.upper())
        if not _is_set(provider.get("client_id")):
            errors.add(path + ("client_id",), "is required")
        method = provider.get("token_endpoint_auth_method")
        if method not in TOKEN_AUTH_METHODS:
            errors.add(
                path + ("token_endpoint_auth_method",),
                f"must be one of {', '.join(TOKEN_AUTH_METHODS)}, not {method!r}",
            )
        issuer = provider.get("issuer")
        if _is_set(issuer) and not _is_url(issuer):
            errors.add(path + ("issuer",), f"must be an http(s) URL, not {issuer!r}")
        idp = provider.get("synapse_idp_id")
        if _is_set(idp) and not (isinstance(idp, str) and re.match(r"^oidc(-[A-Za-z0-9._~-]+)?$", idp)):
            errors.add(
                path + ("synapse_idp_id",),
                f"must be 'oidc-<idp_id>' (Synapse adds the 'oidc-' prefix) or 'oidc', not {idp!r}",
            )


# --------------------------------------------------------------------------
# settings: validation + derived values + the MAS config
# --------------------------------------------------------------------------


def _paths(base_path):
    config_dir = os.path.join(base_path, "config")
    return {
        "base": base_path,
        "config_dir": config_dir,
        "config_file": os.path.join(config_dir, "config.yaml"),
        "secrets_dir": os.path.join(config_dir, "secrets"),
        "keys_dir": os.path.join(config_dir, "keys"),
        "data_dir": os.path.join(base_path, "data"),
        "bin_dir": os.path.join(base_path, "bin"),
        "mas_cli": os.path.join(base_path, "bin", "mas-cli"),
        "register_user": os.path.join(base_path, "bin", "register-user"),
        "labels_file": os.path.join(config_dir, "docker.labels"),
        # the formula's own records (syn2mas phase): root only, outside data/,
        # which the MAS process may write
        "state_dir": os.path.join(base_path, "formula"),
    }


def _secret_files(data, paths):
    """The secret files of the deployment, in the order they are written."""
    user, group = data["user"], data["group"]
    base = {"user": user, "group": group, "mode": "0600"}
    files = []

    def add(name, path, kind, pillar_key=None, **extra):
        entry = dict(base, name=name, path=path, kind=kind, pillar_key=pillar_key)
        entry.update(extra)
        files.append(entry)

    secrets_dir = paths["secrets_dir"]
    add(
        "encryption",
        os.path.join(secrets_dir, "encryption"),
        "hex32",
        _key("secrets", "encryption"),
        allow_rotation=_get(data, "secrets", "allow_encryption_rotation"),
    )
    add(
        "homeserver_secret",
        os.path.join(secrets_dir, "homeserver_secret"),
        "token",
        _key("secrets", "homeserver_secret"),
    )
    add("admin_client_secret", os.path.join(secrets_dir, "admin_client_secret"), "token")
    for filename, kind in SIGNING_KEYS:
        add(f"key-{kind}", os.path.join(paths["keys_dir"], filename), kind)
    if _is_set(_get(data, "database", "password")):
        add("database_password", os.path.join(secrets_dir, "database_password"), "pillar", _key("database", "password"))
    if _is_set(_get(data, "email", "password")):
        add("email_password", os.path.join(secrets_dir, "email_password"), "pillar", _key("email", "password"))
    for index, provider in enumerate(data["upstream_oauth2_providers"]):
        if _is_set(provider.get("client_secret")):
            add(
                f"provider-{provider['id']}",
                os.path.join(secrets_dir, f"upstream-{provider['id']}.secret"),
                "pillar",
                _key("upstream_oauth2_providers", index, "client_secret"),
            )
    return files


def _split_bind(bind):
    return {"address": bind}


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
            {"name": "assets"},
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
        database["password_file"] = os.path.join(paths["secrets_dir"], "database_password")

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
            email["password_file"] = os.path.join(paths["secrets_dir"], "email_password")
    elif mail["transport"] == "sendmail" and _is_set(mail.get("command")):
        email["command"] = mail["command"]

    config = {
        "http": http,
        "database": database,
        "secrets": {
            "encryption_file": os.path.join(paths["secrets_dir"], "encryption"),
            "keys_dir": paths["keys_dir"],
        },
        "matrix": {
            "kind": "synapse",
            "homeserver": data["server_name"],
            "secret_file": os.path.join(paths["secrets_dir"], "homeserver_secret"),
            "endpoint": data["synapse"]["endpoint"],
        },
        "passwords": passwords,
        "email": email,
    }
    if data["account"]:
        config["account"] = dict(data["account"])
    if data["upstream_oauth2_providers"]:
        config["upstream_oauth2"] = {"providers": data["upstream_oauth2_providers"]}
    config = salt.utils.dictupdate.update(config, copy.deepcopy(data["config"]), merge_lists=False)
    # The formula's admin client survives an operator's own `clients` or
    # `policy.data` in mas:config: mas.register_user and mas.user_present need it.
    admin_client = {
        "client_id": ADMIN_CLIENT_ID,
        "client_name": "Salt (mas formula)",
        "client_auth_method": "client_secret_basic",
        "client_secret_file": os.path.join(paths["secrets_dir"], "admin_client_secret"),
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
            provider["client_secret_file"] = os.path.join(
                data["paths"]["secrets_dir"], f"upstream-{provider['id']}.secret"
            )
        providers.append(provider)
    data["upstream_oauth2_providers"] = providers
    # a postgresql:// URI may carry a password: mas_syn2mas reads it from pillar
    syn2mas = data.get("syn2mas")
    if isinstance(syn2mas, dict) and "synapse_database_uri" in syn2mas:
        syn2mas["synapse_database_uri_set"] = _is_set(syn2mas.pop("synapse_database_uri"))
    users = []
    for index, user in enumerate(data["users"]):
        users.append({
            "username": user["username"],
            "admin": bool(user.get("admin", False)),
            "emails": list(user.get("emails") or []),
            "password_pillar_key": _key("users", index, "password") if _is_set(user.get("password")) else None,
        })
    data["users"] = users


def mapdata(defaults=None):
    """
    The formula's map: ``parameters/defaults.yaml`` < pillar ``mas:lookup`` <
    pillar ``mas``, validated and completed by :py:func:`settings`. This is
    what ``mas/map.jinja`` gives every SLS, and what the execution functions
    (``mas.register_user``, ``mas.doctor``, ...) work from.

    defaults
        The ``values`` of ``parameters/defaults.yaml``; read from
        ``salt://mas/parameters/defaults.yaml`` when omitted (and then
        computed once per run).

    CLI Example:

    .. code-block:: bash

        salt-call mas.mapdata
    """
    pillar = salt.utils.data.traverse_dict_and_list(__pillar__, PILLAR_ROOT, {}) or {}
    if not isinstance(pillar, dict):
        raise SaltInvocationError(f"the pillar key '{PILLAR_ROOT}' must be a mapping")
    # every SLS of a run asks for the same map: compute it once per pillar
    cache_key = "mas.mapdata:" + hashlib.sha256(json.dumps(pillar, sort_keys=True, default=str).encode()).hexdigest()
    if defaults is None and cache_key in __context__:
        return copy.deepcopy(__context__[cache_key])
    if defaults is None:
        text = __salt__["cp.get_file_str"](f"salt://{PILLAR_ROOT}/parameters/defaults.yaml")
        if not text:
            raise CommandExecutionError(
                f"cannot read salt://{PILLAR_ROOT}/parameters/defaults.yaml: is the formula in file_roots?"
            )
        defaults = salt.utils.yaml.safe_load(text)["values"]
    pillar = copy.deepcopy(dict(pillar))
    lookup = pillar.pop("lookup", None) or {}
    misplaced = [":".join(path) for path, _ in PILLAR_SECRETS if _get(lookup, *path) is not None]
    misplaced += [key for key in ("users", "upstream_oauth2_providers") if key in lookup]
    if misplaced:
        raise SaltInvocationError(
            "Invalid pillar for the mas formula (nothing was changed):\n- "
            + "\n- ".join(f"mas:lookup:{key}: secrets belong under mas:{key}, not mas:lookup" for key in misplaced)
        )
    merged = salt.utils.dictupdate.update(copy.deepcopy(dict(defaults)), copy.deepcopy(dict(lookup)), merge_lists=False)
    result = settings(salt.utils.dictupdate.update(merged, pillar, merge_lists=False))
    __context__[cache_key] = copy.deepcopy(result)
    return result


def settings(data):
    """
    Validate the merged pillar of the formula and return the complete map.

    Called by ``mas/map.jinja`` with the merge of ``parameters/defaults.yaml``,
    ``mas:lookup`` and ``mas``. Raises ``SaltInvocationError`` listing every
    problem by pillar key, so that a bad pillar fails the render before any
    state runs. The returned map holds no secret value; it adds ``hostname``,
    ``public_base``, ``paths``, ``secret_files`` and ``mas_config`` (the
    content of MAS's ``config.yaml``).

    data
        The merged pillar data (a mapping).

    CLI Example:

    .. code-block:: bash

        salt-call mas.settings "{'enabled': false, ...}"
    """
    if not isinstance(data, dict):
        raise SaltInvocationError("mas: the pillar key 'mas' must be a mapping")
    data = copy.deepcopy(salt.utils.data.decode(dict(data)))
    errors = _validate(data)
    if errors:
        raise SaltInvocationError(
            "Invalid pillar for the mas formula (nothing was changed):\n- " + "\n- ".join(errors)
        )
    prefix = data["path_prefix"]
    if _is_set(data["server_name"]) and not _is_set(data["hostname"]):
        data["hostname"] = f"matrix.{data['server_name']}"
    host = data["hostname"] or "localhost"
    data["public_base"] = f"https://{host}{'' if prefix == '/' else prefix}/"
    data["paths"] = _paths(data["base_path"])
    if not _is_set(data["synapse"]["mas_endpoint"]):
        port = data["http"]["web_bind"].rsplit(":", 1)[-1]
        data["synapse"]["mas_endpoint"] = f"http://localhost:{port}{'' if prefix == '/' else prefix}/"
    if data["runtime"] == "docker" and not data["service"]["docker"]["network"]:
        # MAS reaches PostgreSQL and Synapse on localhost, and Salt, Synapse
        # and the proxy reach MAS there, as with the binary runtime
        data["service"]["docker"]["network"] = "host"
    if not _is_set(data["synapse"].get("secret_path")):
        data["synapse"]["secret_path"] = os.path.join(data["base_path"], "synapse", "homeserver_secret")
    proxy = data["proxy"]
    if not _is_set(proxy.get("matrix_hostname")) and _is_set(data["server_name"]):
        proxy["matrix_hostname"] = f"matrix.{data['server_name']}"
    upstream = _local_upstream(data["http"]["web_bind"])
    data["api"] = {
        "client_id": ADMIN_CLIENT_ID,
        "client_secret_file": os.path.join(data["paths"]["secrets_dir"], "admin_client_secret"),
        "token_url": f"{upstream}{'' if prefix == '/' else prefix}/oauth2/token",
        "admin_url": _local_upstream(data["http"]["internal_bind"]) + "/api/admin/v1",
        "health_url": _local_upstream(data["http"]["internal_bind"]) + "/health",
    }
    for kind, key in (("nginx", "mas_upstream"), ("traefik", "mas_url")):
        if not _is_set(proxy[kind].get(key)):
            proxy[kind][key] = upstream
    pepper_source = "pillar" if _is_set(data["synapse"].get("pepper")) else None
    if pepper_source is None and _synapse_pepper(data) is not None:
        pepper_source = "synapse"
    data["secret_files"] = _secret_files(data, data["paths"])
    _redact(data)
    data["synapse"]["pepper_source"] = pepper_source
    pepper_file = None
    if pepper_source:
        pepper_file = os.path.join(data["paths"]["secrets_dir"], "synapse_pepper")
        data["secret_files"].append(
            {
                "name": "synapse_pepper",
                "path": pepper_file,
                "kind": "pepper",
                "pillar_key": _key("synapse", "pepper"),
                "user": data["user"],
                "group": data["group"],
                "mode": "0600",
            }
        )
    data["mas_config"] = _mas_config(data, data["paths"], pepper_file)
    return data


# --------------------------------------------------------------------------
# Synapse configuration (read only)
# --------------------------------------------------------------------------


def _synapse_config_files(config_files, config_dir):
    files = list(config_files or [])
    if not files:
        files.append("/etc/matrix-synapse/homeserver.yaml")
    if config_dir and os.path.isdir(config_dir):
        for entry in sorted(os.listdir(config_dir)):
            path = os.path.join(config_dir, entry)
            if entry.endswith(".yaml") and os.path.isfile(path) and path not in files:
                files.append(path)
    return files


def synapse_config(config_files=None, config_dir=None, extra_config=None, exclude=None):
    """
    Read and merge the Synapse configuration files that exist on the minion.

    Returns ``{"config": <merged mapping>, "origins": {<top-level key>: <file>},
    "files": [<files read>]}``. Later files win, like Synapse's own loader;
    ``extra_config`` (pillar ``mas:synapse:extra_config``) is merged last with
    the origin ``pillar mas:synapse:extra_config``. The merged mapping may hold
    Synapse secrets: callers must never return it to the user.

    config_files
        Synapse config files (default ``/etc/matrix-synapse/homeserver.yaml``).
    config_dir
        A directory whose ``*.yaml`` files Synapse also loads.
    extra_config
        Synapse settings Salt does not see in the files.
    exclude
        Files to leave out (e.g. the formula's own drop-in).

    CLI Example:

    .. code-block:: bash

        salt-call mas.synapse_config "['/etc/matrix-synapse/homeserver.yaml']"
    """
    merged, origins, read = {}, {}, []
    exclude = set(exclude or [])
    for path in _synapse_config_files(config_files, config_dir):
        if path in exclude or not os.path.isfile(path):
            continue
        try:
            with salt.utils.files.fopen(path, "r") as handle:
                content = salt.utils.yaml.safe_load(handle) or {}
        except (OSError, salt.utils.yaml.YAMLError) as exc:
            raise CommandExecutionError(f"Cannot read the Synapse config file {path}: {exc}") from exc
        if not isinstance(content, dict):
            raise CommandExecutionError(f"The Synapse config file {path} is not a YAML mapping")
        read.append(path)
        for key in content:
            origins[key] = path
        merged.update(content)
    for key, value in (extra_config or {}).items():
        origins[key] = "pillar mas:synapse:extra_config"
        merged[key] = value
    return {"config": merged, "origins": origins, "files": read}


def _synapse_pepper(data):
    syn = data["synapse"]
    try:
        conf = synapse_config(syn["config_files"], syn["config_dir"], syn["extra_config"])["config"]
    except CommandExecutionError:
        return None
    pepper = _get(conf, "password_config", "pepper")
    return pepper if _is_set(pepper) else None


# --------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------


def _pillar_value(pillar_key):
    if not pillar_key:
        return None
    value = salt.utils.data.traverse_dict_and_list(__pillar__, pillar_key, None, delimiter=":")
    return value if _is_set(value) else None


def _generate(kind):
    if kind == "hex32":
        return secrets.token_hex(32).encode()
    if kind == "token":
        return secrets.token_hex(32).encode()
    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    elif kind == "ec-p256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif kind == "ec-p384":
        key = ec.generate_private_key(ec.SECP384R1())
    elif kind == "ec-k256":
        key = ec.generate_private_key(ec.SECP256K1())
    else:
        raise SaltInvocationError(f"mas: secrets of kind {kind!r} cannot be generated")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _wanted(kind, pillar_key, source, synapse):
    """The bytes the secret file must hold, or None when it is generated/kept."""
    if kind == "copy":
        if not source or not os.path.isfile(source):
            raise CommandExecutionError(f"the source secret file {source} does not exist yet")
        return _read_regular(source)
    value = _pillar_value(pillar_key)
    if kind == "pepper":
        if value is None and synapse:
            extra = synapse.get("extra_config")
            if synapse.get("extra_config_from_pillar"):
                extra = _pillar_value(_key("synapse", "extra_config"))
            value = _get(
                synapse_config(synapse.get("config_files"), synapse.get("config_dir"), extra)["config"],
                "password_config",
                "pepper",
            )
        if not _is_set(value):
            raise CommandExecutionError(
                "no Synapse pepper found: set mas:synapse:pepper or password_config.pepper in Synapse's config"
            )
        # syn2mas compares the v1 secret_file untrimmed: no trailing newline.
        return str(value).encode()
    if kind == "pillar":
        if value is None:
            raise CommandExecutionError(f"the pillar key {pillar_key} is not set")
        return str(value).encode()
    if value is not None:
        return str(value).strip().encode()
    return None


def _owner_ids(user, group):
    import grp  # pylint: disable=import-outside-toplevel
    import pwd  # pylint: disable=import-outside-toplevel

    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError as exc:
        raise CommandExecutionError(f"the user {user!r} does not exist") from exc
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError as exc:
        raise CommandExecutionError(f"the group {group!r} does not exist") from exc
    return uid, gid


def secret_status(path, kind, pillar_key=None, user="root", group="root", mode="0600",
                  allow_rotation=False, source=None, synapse=None):
    """
    Tell what :py:func:`write_secret` would do with one secret file, without
    revealing or changing anything.

    Returns ``{"action": "none"|"create"|"update"|"fix-mode", "reason": ...}``
    and raises ``CommandExecutionError`` when the change is refused (an
    encryption secret in pillar that differs from the one on disk).

    path
        The secret file.
    kind
        ``hex32`` (MAS encryption secret), ``token`` (shared secret), ``rsa``,
        ``ec-p256``, ``ec-p384``, ``ec-k256`` (signing keys), ``pillar`` (a
        value that must come from pillar), ``pepper`` (Synapse's pepper, from
        pillar or Synapse's config) or ``copy`` (the content of ``source``).
    pillar_key
        The colon-separated pillar key that may hold the value.

    CLI Example:

    .. code-block:: bash

        salt-call mas.secret_status /matrix/matrix-authentication-service/config/secrets/encryption hex32 mas:secrets:encryption
    """
    if kind not in SECRET_KINDS:
        raise SaltInvocationError(f"mas: unknown secret kind {kind!r} (known: {', '.join(SECRET_KINDS)})")
    if kind == "copy" and not (source and os.path.isfile(source)):
        # the source is written earlier in the same run (test=True predicts)
        return {"action": "create" if not os.path.exists(path) else "update",
                "reason": f"copied from {source}, which does not exist yet"}
    wanted = _wanted(kind, pillar_key, source, synapse)
    if not os.path.lexists(path):
        return {"action": "create", "reason": "from pillar" if wanted is not None else "generated"}
    current = _read_regular(path)
    if wanted is not None and not hmac.compare_digest(current, wanted):
        if kind == "hex32" and not allow_rotation:
            raise CommandExecutionError(
                f"{pillar_key} differs from the encryption secret already in use ({path}). Changing it makes "
                "every value MAS has encrypted in its database unreadable (upstream OAuth2 client secrets, "
                "sessions, ...). Put the current value in pillar, or remove the key from pillar to keep the "
                "file; to rotate on purpose set mas:secrets:allow_encryption_rotation: true."
            )
        return {"action": "update", "reason": "from pillar" if kind != "copy" else f"copied from {source}"}
    uid, gid = _owner_ids(user, group)
    info = os.lstat(path)
    if stat.S_IMODE(info.st_mode) != int(str(mode), 8) or (info.st_uid, info.st_gid) != (uid, gid):
        return {"action": "fix-mode", "reason": "owner or mode"}
    return {"action": "none", "reason": "in place"}


def _read_regular(path):
    """Read a secret file, refusing anything but a regular file (a symlink
    planted there must never make root read or chown another file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise CommandExecutionError(f"cannot read {path} (a symlink is refused): {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise CommandExecutionError(f"{path} is not a regular file")
        return handle.read()


def write_secret(path, kind, pillar_key=None, user="root", group="root", mode="0600",
                 allow_rotation=False, source=None, synapse=None):
    """
    Create or update one secret file atomically, never world-readable, and
    return what was done (never the value). An existing generated secret is
    never regenerated. See :py:func:`secret_status` for the arguments.

    CLI Example:

    .. code-block:: bash

        salt-call mas.write_secret /matrix/matrix-authentication-service/config/keys/rsa.pem rsa user=mas group=mas
    """
    status = secret_status(path, kind, pillar_key, user, group, mode, allow_rotation, source, synapse)
    if status["action"] == "none":
        return status
    uid, gid = _owner_ids(user, group)
    if status["action"] == "fix-mode":
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, int(str(mode), 8))
            finally:
                os.close(fd)
        except OSError as exc:
            raise CommandExecutionError(f"cannot fix owner/mode of {path}: {exc.strerror}") from exc
        return status
    content = _wanted(kind, pillar_key, source, synapse)
    if content is None:
        content = _generate(kind)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise CommandExecutionError(f"the directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        os.fchmod(fd, int(str(mode), 8))
        os.fchown(fd, uid, gid)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise CommandExecutionError(f"cannot write {path}: {exc.strerror}") from exc
    log.info("mas: %s secret file %s (%s)", status["action"], path, status["reason"])
    return status


# --------------------------------------------------------------------------
# Database (mas:database:manage)
# --------------------------------------------------------------------------


def _scram_keys(password, salt, iterations):
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return hashlib.sha256(client_key).digest(), server_key


def _scram_verifier(password):
    """A PostgreSQL SCRAM-SHA-256 verifier, so the password itself never
    leaves this process (not in psql's input, not in any log)."""
    salt, iterations = os.urandom(16), 4096
    stored, server = _scram_keys(password, salt, iterations)
    enc = base64.b64encode
    return f"SCRAM-SHA-256${iterations}:{enc(salt).decode()}${enc(stored).decode()}:{enc(server).decode()}"


def _scram_matches(verifier, password):
    match = re.match(r"^SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)$", verifier or "")
    if not match:
        return False
    iterations, salt, stored, server = match.groups()
    want_stored, want_server = _scram_keys(password, base64.b64decode(salt), int(iterations))
    return hmac.compare_digest(want_stored, base64.b64decode(stored)) and hmac.compare_digest(
        want_server, base64.b64decode(server)
    )


def _psql(admin, dbname, script):
    """Run ``script`` (psql input on stdin, never argv) as the PostgreSQL admin."""
    cmd = ["psql", "-X", "-q", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1", "-d", dbname]
    if admin.get("runas") and os.geteuid() == 0:
        # runuser, not cmd.run's runas: that one needs a login shell for the user
        cmd = ["runuser", "-u", str(admin["runas"]), "--"] + cmd
    if admin.get("host"):
        cmd += ["-h", str(admin["host"])]
    if admin.get("port"):
        cmd += ["-p", str(admin["port"])]
    if admin.get("user"):
        cmd += ["-U", admin["user"]]
    res = __salt__["cmd.run_all"](
        cmd, stdin=script, python_shell=False, output_loglevel="quiet", ignore_retcode=True
    )
    if res["retcode"] != 0:
        raise CommandExecutionError(f"psql as {admin.get('user')} on database {dbname} failed: {res['stderr'].strip()}")
    return [line.split("|") for line in res["stdout"].splitlines() if line]


def _sql_literal(value):
    return "'" + str(value).replace("'", "''") + "'"


def _sql_ident(value):
    return '"' + str(value).replace('"', '""') + '"'


def database_status(name, owner, admin, password_pillar_key=None):
    """
    Compare the MAS database, its role and the ``pg_trgm`` extension with what
    the formula wants. Returns ``{"role": ..., "password": ..., "database": ...,
    "owner": ..., "pg_trgm": ...}`` where each value is ``ok`` or what is
    missing. The password is checked against the role's SCRAM verifier; it is
    read from pillar on the minion (``password_pillar_key``).

    name
        The database name (``mas:database:name``).
    owner
        The role (``mas:database:user``).
    admin
        How to reach PostgreSQL as a superuser: ``{user, host, port, runas}``.

    CLI Example:

    .. code-block:: bash

        salt-call mas.database_status mas mas "{user: postgres, runas: postgres}"
    """
    password = _pillar_value(password_pillar_key)
    rows = _psql(
        admin,
        "postgres",
        f"SELECT 'role', rolpassword FROM pg_authid WHERE rolname = {_sql_literal(owner)};\n"
        f"SELECT 'db', pg_get_userbyid(datdba) FROM pg_database WHERE datname = {_sql_literal(name)};\n",
    )
    found = {row[0]: row[1] for row in rows}
    others = _psql(
        admin,
        "postgres",
        "SELECT datname FROM pg_database WHERE datdba = "
        f"(SELECT oid FROM pg_roles WHERE rolname = {_sql_literal(owner)}) AND datname <> {_sql_literal(name)};\n",
    )
    if others:
        raise CommandExecutionError(
            f"the role {owner} (mas:database:user) already owns the database(s) "
            f"{', '.join(row[0] for row in others)}: it belongs to another service, and the formula does not take "
            "it over (nor change its password). Give MAS a role of its own."
        )
    if "db" in found and found["db"] != owner:
        raise CommandExecutionError(
            f"the database {name} (mas:database:name) already exists and belongs to {found['db']}: the formula "
            "does not take over an existing database. MAS needs a dedicated, empty database: choose another name."
        )
    status = {"role": "ok" if "role" in found else "missing", "password": "ok",
              "database": "ok" if "db" in found else "missing", "owner": "ok", "pg_trgm": "ok"}
    if password is not None and not _scram_matches(found.get("role"), str(password)):
        status["password"] = "differs" if "role" in found else "missing"
    if "db" not in found:
        status["owner"] = status["pg_trgm"] = "missing"
        return status
    ext = _psql(admin, name, "SELECT extname FROM pg_extension WHERE extname = 'pg_trgm';\n")
    if not ext:
        status["pg_trgm"] = "missing"
    return status


def database_ensure(name, owner, admin, password_pillar_key=None):
    """
    Create or fix the MAS role (LOGIN, password from pillar), its UTF8
    database and the ``pg_trgm`` extension (created as superuser: on
    PostgreSQL < 16 MAS's own role cannot). Returns the status from before.
    See :py:func:`database_status` for the arguments.

    CLI Example:

    .. code-block:: bash

        salt-call mas.database_ensure mas mas "{user: postgres, runas: postgres}" mas:database:password
    """
    before = database_status(name, owner, admin, password_pillar_key)
    password = _pillar_value(password_pillar_key)
    script = []
    pw = f" PASSWORD {_sql_literal(_scram_verifier(str(password)))}" if password is not None else ""
    if before["role"] == "missing":
        script.append(f"CREATE ROLE {_sql_ident(owner)} LOGIN{pw};")
    elif before["password"] != "ok":
        script.append(f"ALTER ROLE {_sql_ident(owner)}{pw};")
    if before["database"] == "missing":
        script.append(
            f"CREATE DATABASE {_sql_ident(name)} OWNER {_sql_ident(owner)} ENCODING 'UTF8' TEMPLATE template0;"
        )
    if script:
        _psql(admin, "postgres", "\n".join(script) + "\n")
    if before["pg_trgm"] != "ok":
        _psql(admin, name, "CREATE EXTENSION IF NOT EXISTS pg_trgm;\n")
    return before


# --------------------------------------------------------------------------
# Users (through MAS's admin API: passwords travel in request bodies, never
# in a process's arguments)
# --------------------------------------------------------------------------


class _AdminApi:
    """A client of MAS's admin API authenticated as the formula's client."""

    def __init__(self, api, timeout=30, wait=0):
        self.api = api
        self.timeout = timeout
        self.session = requests.Session()
        deadline = time.monotonic() + float(wait)
        try:
            with salt.utils.files.fopen(api["client_secret_file"], "r") as handle:
                secret = handle.read().strip()
        except OSError as exc:
            raise CommandExecutionError(
                f"cannot read the admin client secret {api['client_secret_file']} (apply the mas state first): {exc}"
            ) from exc
        while True:  # MAS may still be starting: wait up to `wait` seconds
            try:
                resp = self._send(
                    "POST", api["token_url"], auth=(api["client_id"], secret),
                    data={"grant_type": "client_credentials", "scope": "urn:mas:admin"},
                )  # fmt: skip
                break
            except CommandExecutionError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1)
        if resp.status_code != 200:
            raise CommandExecutionError(
                f"MAS refused the formula's admin client at {api['token_url']} ({resp.status_code}): {_api_error(resp)}"
                " -- is MAS running with the config the formula wrote (clients, policy.data.admin_clients)?"
            )
        try:
            self.session.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"
        except (ValueError, KeyError) as exc:
            raise CommandExecutionError(f"MAS answered {api['token_url']} without an access token") from exc

    def _send(self, method, url, **kwargs):
        try:
            return self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise CommandExecutionError(f"MAS is not reachable at {url}: {exc.__class__.__name__}") from exc

    def call(self, method, path, expect=(200,), **kwargs):
        resp = self._send(method, self.api["admin_url"] + path, **kwargs)
        if resp.status_code not in expect:
            raise CommandExecutionError(f"MAS admin API {method} {path}: {resp.status_code} {_api_error(resp)}")
        try:
            return resp.json() if resp.content else None
        except ValueError as exc:
            raise CommandExecutionError(f"MAS admin API {method} {path}: the answer is not JSON") from exc


def _api_error(resp):
    try:
        return "; ".join(e.get("title", "") for e in resp.json().get("errors", [])) or resp.text[:200]
    except ValueError:
        return resp.text[:200]


def _user_view(api, user):
    attrs = user["attributes"]
    emails = api.call("GET", f"/user-emails?filter[user]={user['id']}&page[first]=100")["data"]
    return {
        "user_id": user["id"],
        "username": attrs["username"],
        "admin": bool(attrs["admin"]),
        "locked": attrs.get("locked_at") is not None,
        "deactivated": attrs.get("deactivated_at") is not None,
        "emails": sorted(e["attributes"]["email"] for e in emails),
    }


def _refuse_while_migrating(mas):
    if mas["migration_in_progress"]:
        raise CommandExecutionError(
            "mas:migration_in_progress is true: users are still Synapse's and syn2mas will copy them to MAS. "
            "Registering users in MAS now would make the migration fail (the MAS database must be empty). "
            "Register them in Synapse, or after the migration."
        )


def user_info(username):
    """
    A MAS user as the formula sees it: ``{user_id, username, admin, locked,
    deactivated, emails}``, or ``None`` when there is no such user.

    username
        The localpart (a leading ``@`` and a trailing ``:server`` are removed).

    CLI Example:

    .. code-block:: bash

        salt-call mas.user_info alice
    """
    username = _localpart(username)
    api = _AdminApi(mapdata()["api"])
    found = api.call("GET", f"/users/by-username/{username}", expect=(200, 404))
    if not found or "data" not in found:
        return None
    return _user_view(api, found["data"])


def _localpart(username):
    if not isinstance(username, str) or not username:
        raise SaltInvocationError("username: a Matrix localpart is required")
    name = username[1:] if username.startswith("@") else username
    name = name.split(":", 1)[0]
    if not _LOCALPART.match(name):
        raise SaltInvocationError(f"username: {username!r} is not a valid Matrix localpart (a-z, 0-9, ._=/+-)")
    return name


def _password(password, password_file, password_pillar_key):
    given = [x for x in (password, password_file, password_pillar_key) if x is not None]
    if len(given) > 1:
        raise SaltInvocationError("give at most one of password, password_file, password_pillar_key")
    if password_file is not None:
        try:
            with salt.utils.files.fopen(password_file, "r") as handle:
                return handle.read().rstrip("\n")
        except OSError as exc:
            raise SaltInvocationError(f"password_file: cannot read {password_file}: {exc.strerror}") from exc
    if password_pillar_key is not None:
        value = _pillar_value(password_pillar_key)
        if value is None:
            raise SaltInvocationError(f"password_pillar_key: {password_pillar_key} is not set in pillar")
        return str(value)
    return password


def _plan(api, username, admin, emails, password_set):
    found = api.call("GET", f"/users/by-username/{username}", expect=(200, 404))
    user = _user_view(api, found["data"]) if found and "data" in found else None
    changes = {}
    current = user or {"admin": False, "emails": []}
    if user is None:
        changes["user"] = {"old": None, "new": username}
        if password_set:
            changes["password"] = {"old": None, "new": "set"}
    if bool(admin) != current["admin"]:
        changes["admin"] = {"old": current["admin"], "new": bool(admin)}
    missing = sorted(set(emails or []) - set(current["emails"]))
    if missing:
        changes["emails"] = {"old": current["emails"], "new": sorted(set(current["emails"]) | set(missing))}
    return user, changes


def _users_api(wait=0):
    mas = mapdata()
    _refuse_while_migrating(mas)
    return _AdminApi(mas["api"], wait=wait)


def user_plan(username, admin=False, emails=None, password_set=False, wait=0):
    """
    What :py:func:`register_user` would change for ``username``, read from
    MAS without changing anything: ``{"user": <user_info or None>, "changes":
    {key: {old, new}}}``. A password is only set when the user is created
    (``password_set``), so that re-applying never resets a password the user
    has changed since. ``wait``: seconds to wait for MAS to come up.

    CLI Example:

    .. code-block:: bash

        salt-call mas.user_plan alice admin=True emails='[alice@example.com]'
    """
    user, changes = _plan(_users_api(wait), _localpart(username), admin, emails, password_set)
    return {"user": user, "changes": changes}


def register_user(username, password=None, password_file=None, password_pillar_key=None, admin=False,
                  emails=None, skip_password_check=True):
    """
    Register a user in MAS, or bring an existing one to the wanted admin flag
    and emails -- idempotent, unlike ``mas-cli manage register-user``. The
    password is set when the user is created, through MAS's admin API, so it
    never appears in a process's arguments or in Salt's output; prefer
    ``password_file`` or ``password_pillar_key`` to ``password`` (which would
    sit in salt-call's own arguments). Refused while
    ``mas:migration_in_progress`` is true (syn2mas needs an empty MAS).

    Returns ``{"username", "user_id", "created", "changes"}``.

    username
        The localpart (``alice``, ``@alice:example.com`` works too).
    password / password_file / password_pillar_key
        At most one; without any, the user has no password (e.g. upstream
        OAuth2 logins only).
    admin
        Whether the user may request admin rights (``can_request_admin``).
    emails
        Email addresses to add (verified); existing ones are kept.
    skip_password_check
        Skip MAS's password complexity check (like the seed's
        ``--ignore-password-complexity``).

    CLI Example:

    .. code-block:: bash

        salt-call mas.register_user alice password_file=/root/alice.pw admin=True emails='[alice@example.com]'
    """
    secret = _password(password, password_file, password_pillar_key)
    username = _localpart(username)
    api = _users_api()
    user, changes = _plan(api, username, admin, emails, secret is not None)
    if user is None:
        created = api.call("POST", "/users", expect=(201,), json={"username": username})["data"]
        user_id = created["id"]
        if secret is not None:
            try:
                api.call("POST", f"/users/{user_id}/set-password", expect=(204,),
                         json={"password": secret, "skip_password_check": bool(skip_password_check)})
            except CommandExecutionError as exc:
                raise CommandExecutionError(
                    f"user {username} was created but MAS refused its password ({exc}); it has no password now:"
                    f" set one with `{mapdata()['paths']['mas_cli']} manage set-password {username} ...`"
                ) from exc
    else:
        user_id = user["user_id"]
    if "admin" in changes:
        api.call("POST", f"/users/{user_id}/set-admin", json={"admin": bool(admin)})
    for email in changes.get("emails", {}).get("new", []):
        if email not in (user or {}).get("emails", []):
            api.call("POST", "/user-emails", expect=(201,), json={"user_id": user_id, "email": email})
    log.info("mas: user %s %s", username, "registered" if user is None else "updated" if changes else "unchanged")
    return {"username": username, "user_id": user_id, "created": user is None, "changes": changes}


# --------------------------------------------------------------------------
# doctor
# --------------------------------------------------------------------------

_TRACE = re.compile(r"^(\d{4}-\d\d-\d\dT\S+)\s+(TRACE|DEBUG|INFO|WARN|ERROR)\s+(\S+)\s?(.*)$")
MASK = "**********"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: Config keys whose string values are secrets (Synapse's and the formula's pillar).
_SECRET_KEY = re.compile(
    r"^(.*_)?(secret|secret_key|password|passwd|pass|pepper|token|api_key|encryption)$", re.IGNORECASE
)
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/?#\s@]*:)(?P<pw>[^@/\s]+)(?P<tail>@)", re.IGNORECASE)
#: `secret: value` lines (upstream doctor prints a config snippet with matrix.secret)
_INLINE_SECRET = re.compile(r"(?im)^(\s*(?:secret|client_secret|password)\s*:\s*).+$")


def _secret_values(node, found):
    """Collect string values under secret-looking keys (recursively)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                if _SECRET_KEY.match(str(key)):
                    found.add(value)
            else:
                _secret_values(value, found)
    elif isinstance(node, list):
        for item in node:
            _secret_values(item, found)
    return found


def _known_secrets(secrets_dir, synapse_conf=None):
    """Every secret value the minion knows for this deployment (never returned)."""
    found = _secret_values(synapse_conf or {}, set())
    _secret_values(salt.utils.data.traverse_dict_and_list(__pillar__, [PILLAR_ROOT], {}) or {}, found)
    # the whole URI: libpq also takes ?password=... which the URL rule misses
    uri = salt.utils.data.traverse_dict_and_list(__pillar__, [PILLAR_ROOT, "syn2mas", "synapse_database_uri"], "")
    if isinstance(uri, str) and uri:
        found.add(uri)
    if os.path.isdir(secrets_dir):
        for entry in os.listdir(secrets_dir):
            path = os.path.join(secrets_dir, entry)
            if os.path.isfile(path) and os.path.getsize(path) < 65536:
                with salt.utils.files.fopen(path, "rb") as handle:
                    content = handle.read().decode("utf-8", "replace")
                found.update({content, content.strip()})
    return sorted((s for s in found if isinstance(s, str) and len(s.strip()) >= 4), key=len, reverse=True)


def _scrub(text, secrets):
    """``text`` without ANSI colours, secrets or passwords in URLs."""
    text = _ANSI.sub("", text or "")
    for secret in secrets:
        text = text.replace(secret, MASK)
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK + m.group("tail"), text)
    return _INLINE_SECRET.sub(lambda m: m.group(1) + MASK, text)


def scrub(text, synapse_conf=None, secrets_dir=None):
    """
    ``text`` without ANSI colours and without any secret the minion knows for
    this deployment: its secret files, the secret values of pillar ``mas``
    (and of ``synapse_conf``, a Synapse config mapping), passwords in URLs and
    ``secret: ...`` lines. For output of ``mas-cli`` that may echo them.

    text
        The text to clean.
    synapse_conf
        A Synapse configuration whose secret-looking values are hidden too.
    secrets_dir
        The deployment's secrets directory (default: from the map).

    CLI Example:

    .. code-block:: bash

        salt-call mas.scrub "$(bin/mas-cli doctor 2>&1)"
    """
    return _scrub(text, _known_secrets(secrets_dir or mapdata()["paths"]["secrets_dir"], synapse_conf))


def _doctor_entries(stderr):
    """Tracing lines of ``mas-cli`` as ``[{level, target, message}]``
    (continuation lines belong to the entry above them)."""
    entries = []
    for raw in _ANSI.sub("", stderr).splitlines():
        match = _TRACE.match(raw)
        if match:
            entries.append({"level": match.group(2), "target": match.group(3), "message": match.group(4)})
        elif entries:
            entries[-1]["message"] += "\n" + raw
        elif raw.strip():
            entries.append({"level": "ERROR" if raw.startswith("Error") else "INFO", "target": "", "message": raw})
    return entries


def _classify(entry):
    message = entry["message"].lstrip()
    if message.startswith("✅"):
        return "ok"
    if message.startswith("⚠"):
        return "warning"
    if message.startswith("❌") or entry["level"] == "ERROR":
        return "error"
    if entry["level"] == "WARN":
        return "warning"
    return "info"


def doctor(strict=False):
    """
    Run ``mas-cli doctor`` with the deployed configuration and return a result
    automation can gate on: ``{"result", "exit_code", "ok": [...], "warnings":
    [...], "errors": [...]}``. ``result`` is false when doctor reports an
    error (or a warning, with ``strict``), and ``salt-call`` then exits
    non-zero. Secrets are removed from every message (upstream's doctor
    prints ``matrix.secret`` when the ``/_synapse/mas`` probe fails).

    strict
        Count warnings as failures too.

    CLI Example:

    .. code-block:: bash

        salt-call mas.doctor
        salt-call mas.doctor strict=True
    """
    mas = mapdata()
    cli = mas["paths"]["mas_cli"]
    if not os.path.isfile(cli):
        raise CommandExecutionError(f"{cli} does not exist: apply the mas state first")
    hide = _known_secrets(mas["paths"]["secrets_dir"])
    res = __salt__["cmd.run_all"](
        [cli, "doctor"], python_shell=False, output_loglevel="quiet", ignore_retcode=True,
        env={"RUST_LOG": "info", "NO_COLOR": "1"},
    )  # fmt: skip
    report = {"result": True, "exit_code": res["retcode"], "ok": [], "warnings": [], "errors": []}
    for entry in _doctor_entries(res["stderr"]):
        kind = _classify(entry)
        if kind != "info":
            report[kind + "s" if kind != "ok" else "ok"].append(_scrub(entry["message"], hide))
    if res["retcode"] != 0 and not report["errors"]:
        report["errors"].append(_scrub((res["stderr"] or res["stdout"]).strip()[-2000:], hide))
    report["result"] = res["retcode"] == 0 and not report["errors"] and not (strict and report["warnings"])
    if not report["result"]:
        __context__["retcode"] = 1
    return report


# --------------------------------------------------------------------------
# Container image (docker runtime)
# --------------------------------------------------------------------------


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
    inspect = __salt__["cmd.run_all"]([command, "image", "inspect", image], python_shell=False,
                                      output_loglevel="quiet", ignore_retcode=True)
    if inspect["retcode"] == 0:
        return {"present_before": True, "pulled": False}
    if test:
        return {"present_before": False, "pulled": False}
    pull = __salt__["cmd.run_all"]([command, "pull", image], python_shell=False, ignore_retcode=True)
    if pull["retcode"] != 0:
        raise CommandExecutionError(f"docker pull {image} failed: {(pull['stderr'] or pull['stdout']).strip()[-500:]}")
    return {"present_before": False, "pulled": True}


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
