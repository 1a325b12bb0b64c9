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
the formula's own (:py:func:`managed_by_formula`).

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
import urllib.parse

import salt.utils.data
import salt.utils.dictupdate
import salt.utils.files
import salt.utils.yaml
from salt.exceptions import CommandExecutionError, SaltInvocationError

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
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
#: A file or directory name of the TOFS lookup (no '/', no leading '.').
_TOFS_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.@-]+$")
# Values rendered into the bin/ wrappers and the systemd unit: no whitespace,
# quotes, `$`, `%` or control characters, so nothing can inject a command.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/+@-]*$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")
_DOCKER_NETWORK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DOCKER_ARG = re.compile(r"^[A-Za-z0-9_./:=@,+-]+$")
SYSTEMD_RESTART = ("no", "always", "on-success", "on-failure", "on-abnormal", "on-abort", "on-watchdog")


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
    _validate_binary(data, errors)

    for path in (("http", "web_bind"), ("http", "internal_bind")):
        value = _get(data, *path)
        if _parse_bind(value) is None:
            errors.add(
                path, f"must be HOST:PORT (an IP, IPv6 in brackets, or a host name; e.g. '[::]:8080'), not {value!r}"
            )
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
    if not isinstance(files, list) or not all(isinstance(f, str) and os.path.isabs(f) for f in files):
        errors.add(("synapse", "config_files"), "must be a list of absolute file paths")
    if not isinstance(_get(data, "synapse", "extra_config"), dict):
        errors.add(("synapse", "extra_config"), "must be a mapping (Synapse config keys)")

    _validate_synapse(data, errors)
    _validate_proxy(data, errors)
    _validate_users(data, errors)
    _validate_registration_tokens(data, errors)
    _validate_syn2mas(data, errors)
    _validate_doctor(data, errors)
    _validate_tofs(data, errors)
    if not isinstance(data.get("config"), dict):
        errors.add(("config",), "must be a mapping merged into MAS's config.yaml")
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
        if _is_set(user.get("password")) and not isinstance(user["password"], str):
            errors.add(path + ("password",), "must be a string")
        if user.get("access_token") is not None:
            _validate_access_token(user["access_token"], path + ("access_token",), errors)
        unknown = set(user) - set(USER_KEYS)
        if unknown:
            errors.add(path, f"unknown keys {', '.join(sorted(unknown))} (known: {', '.join(USER_KEYS)})")


def _validate_access_token(token, path, errors):
    if not isinstance(token, dict):
        errors.add(path, "must be a mapping {path, owner, group, expires_in, ...}")
        return
    file = token.get("path")
    if not isinstance(file, str) or not os.path.isabs(file) or ".." in file.split("/") or file.endswith("/"):
        errors.add(path + ("path",), f"must be an absolute file path, not {file!r}")
    for key in ("owner", "group"):
        if token.get(key) is not None and (not isinstance(token[key], str) or not _NAME.match(token[key])):
            errors.add(path + (key,), f"{token[key]!r} is not a valid user or group name")
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
    if not isinstance(files, list) or not all(isinstance(f, str) and os.path.isabs(f) for f in files):
        errors.add(("syn2mas", "synapse_config_files"), "must be a list of absolute file paths")
    uri = syn2mas.get("synapse_database_uri")
    if _is_set(uri) and not (isinstance(uri, str) and re.match(r"^postgres(ql)?://", uri)):
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
    if _is_set(url):
        parsed = urllib.parse.urlparse(url) if isinstance(url, str) else None
        if not parsed or parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path not in ("", "/"):
            errors.add(("doctor", "proxy_url"), f"must be http(s)://HOST[:PORT] (no path), not {url!r}")
    verify = doctor.get("tls_verify")
    if not isinstance(verify, bool) and not (isinstance(verify, str) and os.path.isabs(verify)):
        errors.add(("doctor", "tls_verify"), f"must be true, false or the absolute path of a CA bundle, not {verify!r}")


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


BINARY_KEYS = ("source", "source_hash", "path", "share_dir")
#: Where Salt's archive.extracted can fetch the release tarball from.
_ARCHIVE_SOURCE = re.compile(r"^(https?://[^\s]+|salt://[^\s]+|file:///[^\s]+|/[^\s]+)$")
_SOURCE_HASH = re.compile(r"^(?:(sha256)=)?([0-9a-fA-F]{64})$|^(sha512)=([0-9a-fA-F]{128})$")
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
        if not (isinstance(source, str) and _ARCHIVE_SOURCE.match(source)):
            errors.add(
                ("binary", "source"),
                f"must be the URL (https://, salt://, file://) or absolute path of mas-cli-<arch>-linux.tar.gz,"
                f" not {source!r}",
            )
        if not (isinstance(source_hash, str) and _SOURCE_HASH.match(source_hash)):
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
    for key, what in (("path", "mas-cli"), ("share_dir", "MAS's share/ directory (policy.wasm, templates, ...)")):
        value = binary.get(key)
        if not _is_set(value):
            if data.get("runtime") == "binary":
                errors.add(
                    ("binary", key),
                    f"is required with mas:runtime binary unless mas:binary:source is set: {_BINARY_EXAMPLE}",
                )
        elif not (isinstance(value, str) and _SAFE_PATH.match(value) and value != "/" and not value.endswith("/")):
            errors.add(
                ("binary", key), f"must be the absolute path of {what} (letters, digits, . _ / + @ -), not {value!r}"
            )


def _binary_paths(data, base):
    """Where mas-cli and its share/ directory are: in the versioned release
    directory of the tarball (one per ``source_hash``) or where the operator
    installed them."""
    binary = data["binary"]
    if data["runtime"] != "binary":
        return {"dist_dir": os.path.join(base, "dist"), "release_dir": None, "mas_binary": None, "share_dir": None}
    if _is_set(binary["source"]):
        match = _SOURCE_HASH.match(binary["source_hash"])
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


def _abs_path(errors, path, value):
    if not isinstance(value, str) or not os.path.isabs(value) or value == "/" or value.endswith("/"):
        errors.add(path, f"must be an absolute path (no trailing '/'), not {value!r}")


def _validate_synapse(data, errors):
    syn = data["synapse"]
    name = syn.get("dropin_name")
    if not isinstance(name, str) or "/" in name or not name.endswith(".yaml") or name.startswith("."):
        errors.add(
            ("synapse", "dropin_name"), f"must be a file name ending in .yaml (Synapse ignores others), not {name!r}"
        )
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
    if host in ("", "::", "0.0.0.0", "*"):  # noqa: S104 -- a wildcard bind is reached on loopback
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
    base = {"user": data["user"], "group": data["group"], "mode": "0600", "allow_rotation": False}
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


def _parse_bind(value):
    """``(host, port)`` of a ``HOST:PORT`` bind (IPv6 bracketed; host '' = any), or None when malformed."""
    if not isinstance(value, str):
        return None
    host, sep, port = value.rpartition(":")
    port = _as_port(port) if sep and port.isdigit() else None
    if port is None:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        return (host, port) if ":" in host and _is_ip(host) else None
    if host and not (_is_dns_name(host) or (_is_ip(host) and ":" not in host)):
        return None
    return host, port


def _split_bind(bind):
    """MAS's bind for ``HOST:PORT``: ``address`` is parsed as a literal socket
    address (an IP, IPv6 in brackets), so a host name becomes ``{host, port}``
    (MAS resolves it)."""
    host, port = _parse_bind(bind)
    if not host:
        return {"port": port}
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


def mapdata(defaults=None):
    """
    The formula's map: ``parameters/defaults.yaml`` < pillar ``mas:lookup`` <
    pillar ``mas``, validated and completed by :py:func:`settings`. This is
    what ``mas/map.jinja`` gives every SLS, and what the execution functions
    (``mas_user.register``, ``mas_doctor.run``, ...) work from.

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
        # a copy for each caller (the map is plain JSON data: a JSON round trip is the fast deep copy)
        return json.loads(__context__[cache_key])
    if defaults is None:
        defaults = _defaults()
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
    result = settings(salt.utils.dictupdate.update(merged, pillar, merge_lists=False), defaults)
    __context__[cache_key] = json.dumps(result, default=str)
    return json.loads(__context__[cache_key])


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
        raise SaltInvocationError("Invalid pillar for the mas formula (nothing was changed):\n- " + "\n- ".join(errors))
    prefix = data["path_prefix"]
    if _is_set(data["server_name"]) and not _is_set(data["hostname"]):
        data["hostname"] = f"matrix.{data['server_name']}"
    host = data["hostname"] or "localhost"
    data["public_base"] = f"https://{host}{'' if prefix == '/' else prefix}/"
    data["paths"] = _paths(data)
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
    _redact(data)
    data["synapse"]["pepper_source"] = pepper_source
    pepper_file = data["paths"]["synapse_pepper"] if pepper_source else None
    data["mas_config"] = _mas_config(data, data["paths"], pepper_file)
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
    tofs = mapdata()["tofs"]
    prefix = tofs["path_prefix"] or tplroot
    names = list(tofs["source_files"].get(lookup, [])) + list(source_files)
    dirs = [lookup]
    for grain in tofs["files_switch"]:
        value = __grains__.get(grain)
        if isinstance(value, str) and _TOFS_NAME.fullmatch(value) and value not in dirs:
            dirs.append(value)
    dirs.append("default")
    candidates = [f"{prefix}/{tofs['dirs']['files']}/{directory}/{name}" for directory in dirs for name in names]
    if __opts__.get("file_client") == "local":
        # masterless: keep only the candidates that exist in file_roots, so that file.managed looks up one
        # source instead of asking the file server for every override that is not there
        saltenv = __opts__.get("saltenv") or "base"
        roots = (__opts__.get("file_roots") or {}).get(saltenv, [])
        found = [path for path in candidates if any(os.path.isfile(os.path.join(root, path)) for root in roots)]
        candidates = found[:1] or candidates
    return [f"salt://{path}" for path in candidates]


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
