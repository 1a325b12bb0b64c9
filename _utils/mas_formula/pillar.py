"""The formula's own pillar keys, validated: types, grammars and the rules between keys, every problem at once by key.

:func:`validate` checks the merged pillar (``parameters/defaults.yaml`` <
``mas:lookup`` < ``mas``) before anything is derived from it: each key against
the grammar of its kind (:mod:`mas_formula.grammar`), the sections the formula
models (service, runtime and binary, http, secrets, database, email, account,
providers, Synapse, proxy, users and tokens, syn2mas, doctor, TOFS) and the
shapes ``mas:config`` merges into (MAS's own rules on the config.yaml follow in
:mod:`mas_formula.rules`). It returns the list of refusals, each naming its
pillar key; the seed's syn2mas ``--upstreamProviderMapping`` is translated
into ``synapse_idp_id`` on the way (with a deprecation notice).
"""

import datetime
import logging
import os
import re

from salt.exceptions import SaltInvocationError

from mas_formula import grammar, roles, rules

log = logging.getLogger(__name__)

RUNTIMES = ("docker", "binary")


PROXY_TYPES = ("nginx", "traefik", "none")


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


SYSTEMD_RESTART = ("no", "always", "on-success", "on-failure", "on-abnormal", "on-abort", "on-watchdog")


def validate(data):
    """Return the list of problems of the merged pillar ``data``."""
    errors = grammar.Errors()
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
        if isinstance(data.get(path[0]), dict) and not isinstance(grammar.get(data, *path), dict):
            errors.add(path, "must be a mapping")
    if errors:
        return errors
    for path in BOOL_KEYS:
        value = grammar.get(data, *path)
        if not isinstance(value, bool):
            errors.add(path, f"must be true or false, not {value!r}")
            # go on validating the rest with a neutral value: every problem at once
            node = data
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = False
    enabled = data["enabled"]

    server_name = data.get("server_name")
    if enabled and not grammar.is_set(server_name):
        errors.add(("server_name",), "is required when mas:enabled is true")
    elif grammar.is_set(server_name):
        if not isinstance(server_name, str) or "://" in server_name or ":" in server_name:
            errors.add(
                ("server_name",),
                f"must be the bare Matrix domain (no scheme, no port), not {server_name!r}",
            )
        elif not grammar.is_dns_name(server_name):
            errors.add(("server_name",), f"{server_name!r} is not a DNS name: must be {grammar.KINDS['hostname']}")

    hostname = data.get("hostname")
    if grammar.is_set(hostname) and not grammar.is_dns_name(hostname):
        errors.add(
            ("hostname",),
            f"{hostname!r} is not a DNS name (no scheme, port or path): must be {grammar.KINDS['hostname']}",
        )

    prefix = data.get("path_prefix")
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        errors.add(("path_prefix",), f"must start with '/', not {prefix!r}")
    elif prefix != "/" and prefix.endswith("/"):
        errors.add(("path_prefix",), f"must not end with '/' (use /auth, not /auth/): {prefix!r}")
    elif not grammar.CHECKS["url_path"](prefix):
        errors.add(("path_prefix",), f"{prefix!r} is not a plain URL path: must be {grammar.KINDS['url_path']}")

    for path in (("base_path",), ("service", "unit_dir")):
        errors.expect(path, grammar.get(data, *path), "path")
    restart = grammar.get(data, "service", "restart")
    if restart not in SYSTEMD_RESTART:
        errors.add(("service", "restart"), f"must be one of {', '.join(SYSTEMD_RESTART)}, not {restart!r}")
    for path in (("user",), ("group",)):
        errors.expect(path, grammar.get(data, *path), "name")
    errors.expect(("service", "name"), grammar.get(data, "service", "name"), "service")

    runtime = data.get("runtime")
    if runtime not in RUNTIMES:
        errors.add(("runtime",), f"must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    elif runtime == "docker":
        errors.expect(("image",), data.get("image"), "image")
        errors.expect(("service", "docker", "command"), grammar.get(data, "service", "docker", "command"), "command")
        network = grammar.get(data, "service", "docker", "network")
        if not isinstance(network, str) or (network and not grammar.DOCKER_NETWORK.fullmatch(network)):
            errors.add(
                ("service", "docker", "network"),
                f"must be a docker network name (letters, digits and _ . -, e.g. host), not {network!r}",
            )
        extra = grammar.get(data, "service", "docker", "extra_args")
        if not isinstance(extra, list) or not all(
            isinstance(a, str) and grammar.DOCKER_ARG.fullmatch(a) for a in extra
        ):
            errors.add(
                ("service", "docker", "extra_args"),
                "must be a list of single docker arguments (letters, digits and _ . / : = @ , + -; e.g."
                " --publish=127.0.0.1:8080:8080)",
            )
    _validate_binary(data, errors)
    _validate_ca_bundle(data, errors)

    for path in (("http", "web_bind"), ("http", "internal_bind")):
        errors.expect(path, grammar.get(data, *path), "bind")
    proxies = grammar.get(data, "http", "trusted_proxies")
    if proxies is None:
        pass  # unset: MAS's own default (private and loopback networks)
    elif not isinstance(proxies, list):
        errors.add(
            ("http", "trusted_proxies"),
            "must be a list of CIDR networks (e.g. [127.0.0.1/32]; [] trusts none), or unset for MAS's default",
        )
    else:
        for index, net in enumerate(proxies):
            if not grammar.is_cidr(net):
                errors.add(("http", "trusted_proxies", index), f"{net!r} is not a CIDR network (e.g. 10.0.0.0/8)")

    _validate_secrets(data, errors)
    _validate_database(data, errors)
    _validate_email(data, errors)
    _validate_account(data, errors)
    _validate_providers(data, errors)

    endpoint = grammar.get(data, "synapse", "endpoint")
    if errors.expect(("synapse", "endpoint"), endpoint, "url") and not grammar.is_url(endpoint, slash=True):
        errors.add(
            ("synapse", "endpoint"),
            f"must end with '/' when it has a path (MAS joins _synapse/mas/... to it), not {endpoint!r}",
        )
    errors.expect(("synapse", "mas_endpoint"), grammar.get(data, "synapse", "mas_endpoint"), "url", optional=True)
    files = grammar.get(data, "synapse", "config_files")
    if not isinstance(files, list) or not all(grammar.is_path(f) for f in files):
        errors.add(("synapse", "config_files"), f"must be a list of file paths, each {grammar.KINDS['path']}")
    if not isinstance(grammar.get(data, "synapse", "extra_config"), dict):
        errors.add(("synapse", "extra_config"), "must be a mapping (Synapse config keys)")

    _validate_synapse(data, errors)
    roles.validate(data, errors)
    _validate_proxy(data, errors)
    _validate_traefik_tls(data, errors)
    _validate_users(data, errors)
    _validate_access_token_defaults(data, errors)
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
    admin_user = grammar.get(data, "synapse", "formula_admin")
    try:
        grammar.check_username(admin_user)
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
            if not isinstance(name, str) or grammar.check_username(name) != name:
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
                    grammar.check_email(email)
                except SaltInvocationError:
                    errors.add(path + ("emails", position), f"{email!r} is not an email address")
        errors.secret(path + ("password",), user.get("password"))
        if user.get("access_token") is not None:
            _validate_access_token(user["access_token"], path + ("access_token",), errors)
        unknown = set(user) - set(USER_KEYS)
        if unknown:
            errors.add(path, f"unknown keys {', '.join(sorted(unknown))} (known: {', '.join(USER_KEYS)})")


ACCESS_TOKEN_DEFAULT_KEYS = ("renew_before",)


def _validate_access_token_defaults(data, errors):
    defaults = data.get("access_token_defaults")
    if not isinstance(defaults, dict):
        errors.add(("access_token_defaults",), "must be a mapping {renew_before}")
        return
    value = defaults.get("renew_before")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        errors.add(("access_token_defaults", "renew_before"), f"must be a number of seconds >= 0, not {value!r}")
    unknown = set(defaults) - set(ACCESS_TOKEN_DEFAULT_KEYS)
    if unknown:
        errors.add(
            ("access_token_defaults",),
            f"unknown keys {', '.join(sorted(unknown))} (known: {', '.join(ACCESS_TOKEN_DEFAULT_KEYS)})",
        )


def _validate_access_token(token, path, errors):
    if not isinstance(token, dict):
        errors.add(path, "must be a mapping {path, owner, group, expires_in, ...}")
        return
    errors.expect(path + ("path",), token.get("path"), "path", what=f"an absolute file path ({grammar.KINDS['path']})")
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
        "mas_phase",
        "mas_rollback",
    )
    for key in sorted(set(syn2mas) - set(known)):
        errors.add(("syn2mas", key), f"unknown option (known: {', '.join(sorted(known))})")
    files = syn2mas.get("synapse_config_files")
    if not isinstance(files, list) or not all(grammar.is_path(f) for f in files):
        errors.add(("syn2mas", "synapse_config_files"), f"must be a list of file paths, each {grammar.KINDS['path']}")
    uri = syn2mas.get("synapse_database_uri")
    if grammar.is_set(uri) and not (grammar.is_text(uri) and re.match(r"postgres(ql)?://\S+\Z", uri)):
        errors.add(("syn2mas", "synapse_database_uri"), "must be a postgresql:// URI (or empty)")
    for key in ("timeout", "stop_timeout"):
        value = syn2mas.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            errors.add(("syn2mas", key), f"must be a positive number of seconds, not {value!r}")
    for key in ("backup", "assume_fresh", "force_rollback"):
        if not isinstance(syn2mas.get(key), bool):
            errors.add(("syn2mas", key), f"must be true or false, not {syn2mas.get(key)!r}")
    backup_dir = syn2mas.get("backup_dir")
    if grammar.is_set(backup_dir) and not (
        isinstance(backup_dir, str)
        and os.path.isabs(backup_dir)
        and os.path.normpath(backup_dir) == backup_dir.rstrip("/")
        and backup_dir != "/"
    ):
        errors.add(("syn2mas", "backup_dir"), f"must be an absolute, normalised directory path, not {backup_dir!r}")
    _syn2mas_verdicts(syn2mas, errors)
    _syn2mas_extra_arguments(data, errors)


#: The phases ``mas:syn2mas:mas_phase`` may name (``syn2mas_marker.PHASES``, and ``none``: no migration recorded).
MAS_PHASES = (
    "none",
    "legacy_auth",
    "migrating",
    "migrated_unverified",
    "migrated",
    "verified",
    "delegated",
    "rolled_back",
)
MAS_ROLLBACK_KEYS = ("result", "comment", "errors", "warnings", "counts", "minion")


def _syn2mas_verdicts(syn2mas, errors):
    """``mas:syn2mas:mas_phase`` and ``mas_rollback``: what the MAS minion says to a Synapse minion of its own
    (``mas.orch.delegate`` passes them), or the operator's word."""
    phase = syn2mas.get("mas_phase")
    if phase is not None and phase not in MAS_PHASES:
        errors.add(("syn2mas", "mas_phase"), f"must be one of {', '.join(MAS_PHASES)} (or unset), not {phase!r}")
    verdict = syn2mas.get("mas_rollback")
    if verdict is None:
        return
    path = ("syn2mas", "mas_rollback")
    if not isinstance(verdict, dict) or not isinstance(verdict.get("result"), bool):
        errors.add(path, "must be the MAS minion's rollback verdict ({result: true|false, comment: ...}) or unset")
        return
    for key in sorted(set(verdict) - set(MAS_ROLLBACK_KEYS)):
        errors.add((*path, key), f"unknown key (known: {', '.join(MAS_ROLLBACK_KEYS)})")
    for key in ("comment", "minion"):
        if verdict.get(key) is not None and not grammar.is_text(verdict[key]):
            errors.add((*path, key), "must be a string without control characters")
    for key in ("errors", "warnings"):
        items = verdict.get(key)
        if items is not None and not (isinstance(items, list) and all(isinstance(i, str) for i in items)):
            errors.add((*path, key), "must be a list of strings")
    if verdict.get("counts") is not None and not isinstance(verdict["counts"], dict):
        errors.add((*path, "counts"), "must be a mapping")


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
        if not re.match(r"^oidc(-[A-Za-z0-9._~-]+)?$", idp) or not grammar.ULID.match(provider_id):
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
        if grammar.is_set(provider.get("synapse_idp_id")) and provider["synapse_idp_id"] != idp:
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
    if grammar.is_set(url) and not grammar.CHECKS["origin"](url.removesuffix("/") if isinstance(url, str) else url):
        errors.add(("doctor", "proxy_url"), f"must be {grammar.KINDS['origin']}, not {url!r}")
    verify = doctor.get("tls_verify")
    if not isinstance(verify, bool) and not grammar.is_path(verify):
        errors.add(
            ("doctor", "tls_verify"),
            f"must be true, false or the path of a CA bundle ({grammar.KINDS['path']}), not {verify!r}",
        )


BINARY_KEYS = ("source", "source_hash", "path", "share_dir")


#: Where Salt's archive.extracted can fetch the release tarball from.
_ARCHIVE_URL = re.compile(r"(?:https?|salt)://[A-Za-z0-9._~:/?#@!$&'()*+,;=%-]+")


SOURCE_HASH = re.compile(r"(?:(sha256)=)?([0-9a-fA-F]{64})|(sha512)=([0-9a-fA-F]{128})")


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
    if grammar.is_set(source):
        local = source[len("file://") :] if isinstance(source, str) and source.startswith("file:///") else source
        if not (isinstance(source, str) and (_ARCHIVE_URL.fullmatch(source) or grammar.is_path(local))):
            errors.add(
                ("binary", "source"),
                f"must be the URL (https://, salt://, file://) or absolute path of mas-cli-<arch>-linux.tar.gz,"
                f" not {source!r}",
            )
        if not (isinstance(source_hash, str) and SOURCE_HASH.fullmatch(source_hash)):
            errors.add(
                ("binary", "source_hash"),
                "is required with mas:binary:source: sha256=<64 hex digits> (or sha512=<128>) of the tarball",
            )
        for key in ("path", "share_dir"):
            if grammar.is_set(binary.get(key)):
                errors.add(("binary", key), "must be left empty with mas:binary:source (it is inside the tarball)")
        return
    if grammar.is_set(source_hash):
        errors.add(("binary", "source_hash"), "is only used with mas:binary:source")
    for key in ("path", "share_dir"):
        value = binary.get(key)
        if not grammar.is_set(value):
            if data.get("runtime") == "binary":
                errors.add(
                    ("binary", key),
                    f"is required with mas:runtime binary unless mas:binary:source is set: {_BINARY_EXAMPLE}",
                )
        else:
            errors.expect(("binary", key), value, "path")


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
            if not (
                isinstance(names, list) and all(isinstance(n, str) and grammar.TOFS_NAME.fullmatch(n) for n in names)
            ):
                errors.add(
                    ("tofs", "source_files", lookup), "must be a list of file names (letters, digits, . _ -; no '/')"
                )
    switch = tofs.get("files_switch")
    if not isinstance(switch, list) or not all(isinstance(g, str) and grammar.TOFS_NAME.fullmatch(g) for g in switch):
        errors.add(("tofs", "files_switch"), "must be a list of grain names (e.g. [id, os_family])")
    prefix = tofs.get("path_prefix")
    if prefix and not (isinstance(prefix, str) and all(grammar.TOFS_NAME.fullmatch(p) for p in prefix.split("/"))):
        errors.add(("tofs", "path_prefix"), f"must be a relative salt:// directory (e.g. mas), not {prefix!r}")
    files = grammar.get(tofs, "dirs", "files")
    if not (isinstance(files, str) and grammar.TOFS_NAME.fullmatch(files)):
        errors.add(("tofs", "dirs", "files"), f"must be a directory name (default files), not {files!r}")


def _validate_synapse(data, errors):
    syn = data["synapse"]
    name = syn.get("dropin_name")
    if not (grammar.CHECKS["file_name"](name) and name.endswith(".yaml")):
        errors.add(
            ("synapse", "dropin_name"),
            f"must be a file name ending in .yaml (Synapse ignores others), {grammar.KINDS['file_name']}, not {name!r}",
        )
    errors.expect(("synapse", "config_dir"), syn.get("config_dir"), "path")
    errors.expect(("synapse", "secret_path"), syn.get("secret_path"), "path", optional=True)
    for key in ("user", "group"):
        errors.expect(("synapse", key), syn.get(key), "name")
    errors.expect(("synapse", "service"), syn.get("service"), "unit")
    _validate_synapse_database(syn.get("database"), errors)


#: ``mas:synapse:database``: Synapse's PostgreSQL database as a MAS minion without Synapse reaches it.
SYNAPSE_DATABASE_KEYS = ("host", "port", "name", "user", "password", "sslmode")


def synapse_database_given(data):
    """Whether pillar gives Synapse's database (``mas:synapse:database``: a host, name, user or password set)."""
    db = grammar.get(data, "synapse", "database")
    return isinstance(db, dict) and any(grammar.is_set(db.get(key)) for key in ("host", "name", "user", "password"))


def _validate_synapse_database(db, errors):
    """``mas:synapse:database`` (``{host, port, name, user, password, sslmode}``): all or nothing, each of its
    grammar; what a MAS minion without Synapse's config files reads Synapse's database with."""
    path = ("synapse", "database")
    if not isinstance(db, dict):
        errors.add(path, f"must be a mapping of {', '.join(SYNAPSE_DATABASE_KEYS)}, not {db!r}")
        return
    for key in sorted(set(db) - set(SYNAPSE_DATABASE_KEYS)):
        errors.add((*path, key), f"unknown key (known: {', '.join(SYNAPSE_DATABASE_KEYS)})")
    errors.secret((*path, "password"), db.get("password"))
    if not any(grammar.is_set(db.get(key)) for key in ("host", "name", "user", "password")):
        return
    host = db.get("host")
    if not (grammar.CHECKS["host"](host) or grammar.is_path(host)):
        errors.add(
            (*path, "host"),
            f"must be Synapse's PostgreSQL server as this minion reaches it, {grammar.KINDS['host']} (or its socket"
            f" directory), not {host!r}",
        )
    errors.expect((*path, "port"), db.get("port"), "port")
    what = "a PostgreSQL identifier (a letter or '_', then letters, digits, '_', '$' or '-'; at most 63)"
    for key in ("name", "user"):
        value = db.get(key)
        if not (isinstance(value, str) and grammar.PG_IDENT.fullmatch(value)):
            errors.add((*path, key), f"{value!r} is not Synapse's database {key}: must be {what}")
    if db.get("sslmode") not in rules.SSL_MODES:
        errors.add((*path, "sslmode"), f"must be one of {', '.join(rules.SSL_MODES)}, not {db.get('sslmode')!r}")


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
        errors.expect(path, grammar.get(data, *path), "path")
    errors.expect(("proxy", "nginx", "service"), nginx.get("service"), "unit")
    errors.expect(("proxy", "traefik", "service"), traefik.get("service"), "unit")
    errors.expect(("proxy", "traefik", "entrypoint"), traefik.get("entrypoint"), "traefik")
    errors.expect(("proxy", "traefik", "certresolver"), traefik.get("certresolver"), "traefik", optional=True)
    if kind == "none" or not data["enabled"] or not grammar.is_dns_name(data.get("server_name")):
        return
    matrix_host = proxy.get("matrix_hostname") or f"matrix.{data['server_name']}"
    if not grammar.is_dns_name(matrix_host):
        errors.add(
            ("proxy", "matrix_hostname"),
            f"must be the homeserver's public host name, {grammar.KINDS['hostname']}, not {matrix_host!r}",
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


def _validate_secrets(data, errors):
    encryption = grammar.get(data, "secrets", "encryption")
    if grammar.is_set(encryption) and not (isinstance(encryption, str) and grammar.HEX64.fullmatch(encryption)):
        errors.add(
            ("secrets", "encryption"),
            "must be exactly 64 hexadecimal characters, quoted in YAML (generate with `openssl rand -hex 32`),"
            " or be left out to let the formula generate it",
        )
    hs_secret = grammar.get(data, "secrets", "homeserver_secret")
    if (
        errors.secret(("secrets", "homeserver_secret"), hs_secret)
        and grammar.is_set(hs_secret)
        and (len(str(hs_secret)) < 16 or re.search(r"\s", str(hs_secret)))
    ):
        errors.add(
            ("secrets", "homeserver_secret"),
            "must be a string of at least 16 characters without whitespace,"
            " or be left out to let the formula generate it",
        )
    errors.secret(("synapse", "pepper"), grammar.get(data, "synapse", "pepper"))
    # Synapse's own registration secret, for the users while Synapse is authoritative, where its config is not
    errors.secret(("synapse", "registration_shared_secret"), grammar.get(data, "synapse", "registration_shared_secret"))


def _validate_database(data, errors):
    db = data["database"]
    host = db.get("host")
    if not (grammar.CHECKS["host"](host) or grammar.is_path(host)):
        errors.add(
            ("database", "host"),
            f"must be {grammar.KINDS['host']}, or PostgreSQL's socket directory ({grammar.KINDS['path']}), not {host!r}",
        )
    errors.expect(("database", "port"), db.get("port"), "port")
    what = "a PostgreSQL identifier (a letter or '_', then letters, digits, '_', '$' or '-'; at most 63)"
    for name in ("name", "user"):
        value = db.get(name)
        if not (isinstance(value, str) and grammar.PG_IDENT.fullmatch(value)):
            errors.add(("database", name), f"{value!r} is not a valid PostgreSQL identifier: must be {what}")
    if db.get("ssl_mode") not in rules.SSL_MODES:
        errors.add(("database", "ssl_mode"), f"must be one of {', '.join(rules.SSL_MODES)}, not {db.get('ssl_mode')!r}")
    # MAS reads database.password_file trimmed
    errors.secret(("database", "password"), db.get("password"), trimmed=True)
    admin = db["admin"]
    user = admin.get("user")
    if not (isinstance(user, str) and grammar.PG_IDENT.fullmatch(user)):
        errors.add(("database", "admin", "user"), f"{user!r} is not a valid PostgreSQL role: must be {what}")
    host = admin.get("host")
    if grammar.is_set(host) and not (grammar.CHECKS["host"](host) or grammar.is_path(host)):
        errors.add(
            ("database", "admin", "host"), f"must be {grammar.KINDS['host']} or a socket directory, or '', not {host!r}"
        )
    errors.expect(("database", "admin", "port"), admin.get("port"), "port", optional=True)
    errors.expect(("database", "admin", "runas"), admin.get("runas"), "name", optional=True)


def _validate_email(data, errors):
    """Types and grammars of mas:email; MAS's rules across keys (smtp needs mode
    and hostname, sendmail a command, ...) are checked on config.yaml
    (:py:func:`_rules_email`), where mas:config may add to them."""
    email = data["email"]
    transport = email.get("transport")
    if transport not in rules.EMAIL_TRANSPORTS:
        errors.add(("email", "transport"), f"must be one of {', '.join(rules.EMAIL_TRANSPORTS)}, not {transport!r}")
        return
    for name in ("from", "reply_to"):
        errors.expect(("email", name), email.get(name), "mailbox")
    errors.expect(("email", "hostname"), email.get("hostname"), "host", optional=True)
    errors.expect(("email", "port"), email.get("port"), "port", optional=True)
    if grammar.is_set(email.get("mode")) and email.get("mode") not in rules.SMTP_MODES:
        errors.add(("email", "mode"), f"must be one of {', '.join(rules.SMTP_MODES)}, not {email.get('mode')!r}")
    username = email.get("username")
    if grammar.is_set(username) and not grammar.is_text(username):
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
    # mas:upstream_oauth2_providers:*:client_secret goes to a file, '' to none (see _redact)
    checked = [
        {k: v for k, v in p.items() if not (k == "client_secret" and v == "")} if isinstance(p, dict) else p
        for p in providers
    ]
    rules.check_providers(
        checked,
        lambda sub, message: errors.add(("upstream_oauth2_providers", *sub), message),
        lambda *sub: grammar.key("upstream_oauth2_providers", *sub),
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
    errors.extend(rules.inline_secrets(config, ("config",)))
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
        if grammar.is_set(grammar.get(config, section, "password_file")) and grammar.is_set(
            grammar.get(data, section, "password")
        ):
            errors.add(
                ("config", section, "password_file"),
                f"cannot be set together with mas:{section}:password (which the formula writes to its own"
                " password_file): set one of them",
            )
    if grammar.is_set(grammar.get(config, "upstream_oauth2", "providers")) and grammar.is_set(
        data.get("upstream_oauth2_providers")
    ):
        errors.add(
            ("config", "upstream_oauth2", "providers"),
            "would replace mas:upstream_oauth2_providers: list the providers in one of them"
            " (mas:upstream_oauth2_providers moves client_secret to a file)",
        )


def _validate_traefik_tls(data, errors):
    """``mas:proxy:traefik:tls``: TLS on the routers (the playbook's way) or not (TLS ended in front of Traefik)."""
    traefik = data["proxy"]["traefik"]
    if traefik.get("tls") is False and grammar.is_set(traefik.get("certresolver")):
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
        what=f"the path of a PEM CA bundle file ({grammar.KINDS['path']})",
    )
