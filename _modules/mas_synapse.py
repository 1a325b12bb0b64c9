"""
Synapse wiring and the compatibility layer of the ``mas`` formula.

The decisions of ``mas.synapse`` and ``mas.proxy`` are made here; the SLS files
only fill the values in:

* :py:func:`synapse_settings` and :py:func:`proxy_settings` turn the formula's
  map (``mas/map.jinja``) into what the SLS write: the Synapse drop-in and the
  Synapse-readable copy of the shared secret, the nginx snippet(s) or the
  Traefik dynamic configuration.
* :py:func:`inspect` reads and merges the Synapse configuration files on the
  minion (through ``mas.synapse_config``), lists every setting Synapse refuses
  next to MAS (:py:func:`conflicts`) and builds the drop-in
  (:py:func:`dropin_text`). The ``mas_synapse.dropin`` state refuses to write
  while a conflict is left.

Synapse merges its config files *shallowly*: a later file replaces whole
top-level sections. The drop-in therefore carries the complete
``experimental_features`` section (the operator's own keys plus
``msc4108_enabled``), and a ``matrix_authentication_service`` section anywhere
else is refused.

No secret is read or returned here: the drop-in points at the secret file
(``secret_path``), and conflicts name keys and files, never values.

:depends: PyYAML
"""

import copy
import json
import logging
import os
import re
import urllib.parse

import salt.utils.data
import salt.utils.yaml
from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "mas_synapse"

#: Pillar key of the Synapse settings Salt cannot see in files (may hold secrets).
EXTRA_CONFIG_PILLAR = "mas:synapse:extra_config"

#: Client-API paths MAS serves through its ``compat`` resource: any single
#: version segment, then login/logout/refresh and everything below them.
COMPAT_REGEX = r"^/_matrix/client/[^/]+/(login|logout|refresh)(/.*)?$"

#: Python modules of well-known password auth providers loaded through
#: ``modules:`` (Synapse refuses their callbacks at start-up under MAS).
PASSWORD_AUTH_MODULES = ("shared_secret_authenticator", "ldap_auth_provider", "rest_auth_provider")

BANNER = (
    "# File managed by Salt (mas formula): changes will be overwritten.\n"
    "# Synapse delegates authentication to the Matrix Authentication Service.\n"
)

_TRUE = ("y", "yes", "t", "true", "on", "1")
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w|y)?\s*$")


def __virtual__():
    return __virtualname__


# --------------------------------------------------------------------------
# Conflict rules
# --------------------------------------------------------------------------


def _get(data, *path):
    return salt.utils.data.traverse_dict_and_list(data, list(path))


def _strtobool(value):
    """Synapse's ``strtobool(str(value))``; unparseable values count as true."""
    text = str(value).lower()
    return text in _TRUE or text not in ("n", "no", "f", "false", "off", "0")


def _duration_set(value):
    """True when Synapse would see a non-zero duration."""
    if value is None or value is False:
        return False
    if isinstance(value, (int, float)):
        return value != 0
    match = _DURATION.match(str(value))
    return not match or int(match.group(1)) != 0


def _registration_on(conf):
    if "disable_registration" in conf:
        return not _strtobool(conf["disable_registration"])
    return "enable_registration" in conf and _strtobool(conf["enable_registration"])


def _saml2_on(section):
    return (
        isinstance(section, dict)
        and bool(section.get("enabled", True))
        and bool(section.get("sp_config") or section.get("config_path"))
    )


def _password_modules(conf):
    found = []
    for entry in conf.get("modules") or []:
        module = str(entry.get("module", "")) if isinstance(entry, dict) else ""
        if module.split(".", 1)[0] in PASSWORD_AUTH_MODULES:
            found.append(module)
    return found


_REGISTRATION_FIX = (
    "remove it or set it to false: users register in MAS (mas:account:password_registration_enabled,"
    " upstream providers)"
)
_LIFETIME_FIX = "remove it: MAS decides how long sessions and tokens live"

# (key shown to the operator, top-level key, predicate(conf), problem, fix, modes)
# modes: "delegated" (MAS authoritative), "migrating" (mas:migration_in_progress).
_RULES = (
    ("enable_registration", "enable_registration",
     lambda c: "disable_registration" not in c and _registration_on(c),
     "Synapse refuses it with MAS (\"Registration cannot be enabled when OAuth delegation is enabled\")",
     _REGISTRATION_FIX, ("delegated", "migrating")),
    ("disable_registration", "disable_registration",
     lambda c: "disable_registration" in c and _registration_on(c),
     "it enables registration, which Synapse refuses with MAS", "remove it", ("delegated", "migrating")),
    ("enable_registration_captcha", "enable_registration_captcha",
     lambda c: bool(c.get("enable_registration_captcha")),
     "Synapse refuses it with MAS (\"CAPTCHA cannot be enabled when OAuth delegation is enabled\")",
     "remove it: MAS has its own CAPTCHA settings (mas:config:captcha)", ("delegated", "migrating")),
    ("user_consent", "user_consent",
     lambda c: c.get("user_consent") is not None,
     "Synapse refuses it with MAS (\"User consent cannot be enabled when OAuth delegation is enabled\")",
     "remove the section: MAS links the terms of service (mas:config:branding:tos_uri)",
     ("delegated", "migrating")),
    ("oidc_providers", "oidc_providers",
     lambda c: bool(c.get("oidc_providers")),
     "Synapse refuses SSO with MAS (\"SSO cannot be enabled when OAuth delegation is enabled\")",
     "move the providers to mas:upstream_oauth2_providers (synapse_idp_id: oidc-<idp_id> keeps the"
     " links during syn2mas), then remove oidc_providers", ("delegated",)),
    ("oidc_config", "oidc_config",
     lambda c: isinstance(c.get("oidc_config"), dict) and bool(c["oidc_config"].get("enabled", False)),
     "Synapse refuses SSO with MAS (\"SSO cannot be enabled when OAuth delegation is enabled\")",
     "move the provider to mas:upstream_oauth2_providers (synapse_idp_id: oidc), then remove oidc_config",
     ("delegated",)),
    ("saml2_config", "saml2_config",
     lambda c: _saml2_on(c.get("saml2_config")),
     "Synapse refuses SSO with MAS (\"SSO cannot be enabled when OAuth delegation is enabled\")",
     "remove it: MAS does not speak SAML; sign-in goes through MAS's upstream OAuth2 providers",
     ("delegated", "migrating")),
    ("cas_config", "cas_config",
     lambda c: bool(c.get("cas_config")) and isinstance(c["cas_config"], dict)
     and bool(c["cas_config"].get("enabled", True)),
     "Synapse refuses SSO with MAS (\"SSO cannot be enabled when OAuth delegation is enabled\")",
     "remove it: MAS does not speak CAS; sign-in goes through MAS's upstream OAuth2 providers",
     ("delegated", "migrating")),
    ("jwt_config", "jwt_config",
     lambda c: isinstance(c.get("jwt_config"), dict) and bool(c["jwt_config"].get("enabled", False)),
     "Synapse refuses JWT login with MAS (\"SSO cannot be enabled when OAuth delegation is enabled\")",
     "remove it: logins go through MAS", ("delegated", "migrating")),
    ("password_providers", "password_providers",
     lambda c: bool(c.get("password_providers")),
     "Synapse refuses it with MAS (\"Password auth providers cannot be enabled when OAuth delegation is"
     " enabled\")",
     "remove the providers (shared-secret-auth, rest-auth, LDAP, ...): passwords are checked by MAS"
     " (LDAP users sign in through an upstream provider)", ("delegated", "migrating")),
    ("ldap_config", "ldap_config",
     lambda c: isinstance(c.get("ldap_config"), dict) and bool(c["ldap_config"].get("enabled", False)),
     "it is a password auth provider, which Synapse refuses with MAS",
     "remove it: passwords are checked by MAS", ("delegated", "migrating")),
    ("modules", "modules",
     lambda c: bool(_password_modules(c)),
     "a password auth module is loaded; Synapse refuses its callbacks at start-up with MAS (\"Cannot use"
     " password auth provider callbacks when OAuth delegation is enabled\")",
     "remove the module (known: " + ", ".join(PASSWORD_AUTH_MODULES) + ")", ("delegated", "migrating")),
    ("password_config.enabled", "password_config",
     lambda c: bool(_get(c, "password_config", "enabled")),
     "Synapse refuses it with MAS (\"Password auth cannot be enabled when OAuth delegation is enabled\")",
     "remove password_config.enabled (with MAS its default is false): MAS checks passwords",
     ("delegated",)),
    ("login_via_existing_session.enabled", "login_via_existing_session",
     lambda c: bool(_get(c, "login_via_existing_session", "enabled")),
     "Synapse refuses it with MAS (\"Login via existing session cannot be enabled when OAuth delegation is"
     " enabled\")",
     "remove it: QR-code login (MSC4108) replaces it", ("delegated", "migrating")),
    ("enable_3pid_changes", "enable_3pid_changes",
     lambda c: bool(c.get("enable_3pid_changes")),
     "Synapse refuses it with MAS (\"enable_3pid_changes cannot be enabled when OAuth delegation is enabled\")",
     "remove it: email addresses are managed in MAS (mas:account:email_change_allowed)",
     ("delegated", "migrating")),
    ("refresh_token_lifetime", "refresh_token_lifetime",
     lambda c: _duration_set(c.get("refresh_token_lifetime")),
     "Synapse refuses it with MAS (\"refresh_token_lifetime cannot be set when OAuth delegation is enabled\")",
     _LIFETIME_FIX, ("delegated", "migrating")),
    ("nonrefreshable_access_token_lifetime", "nonrefreshable_access_token_lifetime",
     lambda c: _duration_set(c.get("nonrefreshable_access_token_lifetime")),
     "Synapse refuses it with MAS (\"nonrefreshable_access_token_lifetime cannot be set when OAuth delegation"
     " is enabled\")", _LIFETIME_FIX, ("delegated", "migrating")),
    ("session_lifetime", "session_lifetime",
     lambda c: _duration_set(c.get("session_lifetime")),
     "Synapse refuses it with MAS (\"session_lifetime cannot be set when OAuth delegation is enabled\")",
     _LIFETIME_FIX, ("delegated", "migrating")),
    ("experimental_features.msc3861", "experimental_features",
     lambda c: bool(_get(c, "experimental_features", "msc3861")),
     "Synapse refuses it, with or without MAS (\"experimental_features.msc3861 was removed\")",
     "remove it: the formula writes the stable matrix_authentication_service section",
     ("delegated", "migrating")),
    ("experimental_features.msc4108_delegation_endpoint", "experimental_features",
     lambda c: _get(c, "experimental_features", "msc4108_delegation_endpoint") is not None,
     "the formula enables QR-code login served by MAS (msc4108_enabled); Synapse refuses both at once and,"
     " while MAS is not authoritative, refuses it alone (\"MSC4108 requires matrix_authentication_service"
     " to be enabled\")",
     "remove it", ("delegated", "migrating")),
    ("experimental_features.msc4108_enabled", "experimental_features",
     lambda c: bool(_get(c, "experimental_features", "msc4108_enabled")),
     "Synapse refuses it while MAS is not authoritative (\"MSC4108 requires matrix_authentication_service to"
     " be enabled\")",
     "remove it: the formula enables it in its drop-in once the migration is over", ("migrating",)),
    ("experimental_features.msc4388_mode", "experimental_features",
     lambda c: (_get(c, "experimental_features", "msc4388_mode") or "off") != "off",
     "Synapse refuses it while MAS is not authoritative (\"MSC4388 requires matrix_authentication_service to"
     " be enabled\")",
     "remove it until the migration is over", ("migrating",)),
)  # fmt: skip


def _merged(config_files, config_dir, dropin, extra_config):
    if extra_config is None:
        extra_config = salt.utils.data.traverse_dict_and_list(__pillar__, EXTRA_CONFIG_PILLAR, {}, delimiter=":")
    if not isinstance(extra_config, dict):
        raise SaltInvocationError(f"{EXTRA_CONFIG_PILLAR} must be a mapping of Synapse settings")
    return __salt__["mas.synapse_config"](
        config_files, config_dir, extra_config, exclude=[dropin] if dropin else None
    )


def _loaded_after(path, dropin):
    """True when Synapse loads ``path`` after ``dropin`` (same directory, sorted later)."""
    return (
        bool(dropin)
        and os.path.dirname(path) == os.path.dirname(dropin)
        and os.path.basename(path) > os.path.basename(dropin)
    )


def _find_conflicts(conf, origins, dropin, migrating):
    mode = "migrating" if migrating else "delegated"
    found = []
    where = dropin or "the formula's drop-in"

    def add(key, top, problem, fix):
        found.append({"key": key, "file": origins.get(top, "?"), "problem": problem, "fix": fix})

    for key, top, predicate, problem, fix, modes in _RULES:
        if mode in modes and top in conf and predicate(conf):
            add(key, top, problem, fix)
    section = conf.get("matrix_authentication_service")
    if isinstance(section, dict) and section:
        add(
            "matrix_authentication_service",
            "matrix_authentication_service",
            f"the formula owns this section (it writes it in {where}"
            " and leaves it out while mas:migration_in_progress is true)",
            "remove it there",
        )
    source = origins.get("experimental_features")
    if not migrating and "experimental_features" in conf and source and _loaded_after(source, dropin):
        add(
            "experimental_features",
            "experimental_features",
            f"Synapse loads that file after {where} and replaces the whole section, dropping the"
            " formula's msc4108_enabled",
            f"move the section to a file loaded before {os.path.basename(dropin)} (e.g. homeserver.yaml);"
            " the formula copies its keys into the drop-in",
        )
    return found


def conflicts(config_files=None, config_dir=None, dropin=None, migrating=False, extra_config=None):
    """
    List the Synapse settings that conflict with the formula's drop-in.

    Reads and merges the Synapse config files that exist on the minion (like
    Synapse: later files replace whole top-level sections), plus
    ``extra_config`` (default: pillar ``mas:synapse:extra_config``), leaving
    out the formula's own drop-in. Returns a list of ``{key, file, problem,
    fix}``; values are never returned (Synapse's config holds secrets).

    With ``migrating`` true the rules that the migration window needs relaxed
    (OIDC providers, ``password_config.enabled``) are skipped and the settings
    Synapse refuses without MAS (``msc4108_*``, ``msc4388_mode``) are checked.

    config_files
        Synapse config files (default ``/etc/matrix-synapse/homeserver.yaml``).
    config_dir
        The directory of Synapse's ``*.yaml`` drop-ins.
    dropin
        The formula's drop-in (left out of the check).
    migrating
        ``mas:migration_in_progress``.
    extra_config
        Synapse settings Salt does not see in files (a mapping).

    CLI Example:

    .. code-block:: bash

        salt-call mas_synapse.conflicts "['/etc/matrix-synapse/homeserver.yaml']" /etc/matrix-synapse/conf.d
    """
    merged = _merged(config_files, config_dir, dropin, extra_config)
    return _find_conflicts(merged["config"], merged["origins"], dropin, migrating)


def conflict_message(found, migrating=False):
    """
    Format the result of :py:func:`conflicts` for the operator: every key, the
    file it comes from, why and what to do.

    found
        The list returned by :py:func:`conflicts`.
    migrating
        ``mas:migration_in_progress`` (changes the heading).

    CLI Example:

    .. code-block:: bash

        salt-call mas_synapse.conflict_message "[{key: enable_registration, file: /etc/matrix-synapse/homeserver.yaml, problem: x, fix: y}]"
    """
    if migrating:
        head = (
            "Synapse has settings that must go before authentication can move to MAS"
            " (mas:migration_in_progress is true, so OIDC and password login may stay until then)."
        )
    else:
        head = "Synapse's configuration conflicts with delegating authentication to MAS."
    lines = [f"{head} Nothing was changed. Fix each of these, then apply again:"]
    for item in found:
        lines.append(f"- {item['key']} in {item['file']}: {item['problem']}. To do: {item['fix']}.")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# The drop-in
# --------------------------------------------------------------------------


def dropin_content(endpoint, secret_path, experimental_features=None):
    """
    Build the drop-in Synapse loads next to its own config (a mapping).

    ``experimental_features`` are the operator's own (the drop-in replaces the
    whole section, so they are carried over); ``msc4108_enabled`` (QR-code
    login) is added. ``enabled`` is a real YAML boolean (Synapse's StrictBool).

    endpoint
        MAS as seen from Synapse (``mas:synapse:mas_endpoint``).
    secret_path
        The shared-secret file readable by Synapse.
    experimental_features
        The operator's ``experimental_features`` section.

    CLI Example:

    .. code-block:: bash

        salt-call mas_synapse.dropin_content http://localhost:8080/auth/ /matrix/matrix-authentication-service/synapse/homeserver_secret
    """
    features = copy.deepcopy(experimental_features) if isinstance(experimental_features, dict) else {}
    features["msc4108_enabled"] = True
    return {
        "matrix_authentication_service": {
            "enabled": True,
            "endpoint": endpoint,
            "secret_path": secret_path,
        },
        "experimental_features": features,
    }


def dropin_text(content):
    """
    Render the drop-in mapping as YAML with the "managed by Salt" banner.

    content
        The mapping from :py:func:`dropin_content`.

    CLI Example:

    .. code-block:: bash

        salt-call mas_synapse.dropin_text "{matrix_authentication_service: {enabled: true}}"
    """
    return BANNER + salt.utils.yaml.safe_dump(content, default_flow_style=False, sort_keys=True)


def inspect(dropin, endpoint, secret_path, config_files=None, config_dir=None, migrating=False,
            extra_config=None):
    """
    Everything the ``mas_synapse.dropin`` state needs, read on the minion:
    ``{"files": [Synapse files read], "conflicts": [...], "text": <drop-in
    text, or None while migrating>}``.

    dropin
        The drop-in path (left out of the conflict check).
    endpoint, secret_path
        See :py:func:`dropin_content`.
    config_files, config_dir, migrating, extra_config
        See :py:func:`conflicts`.

    CLI Example:

    .. code-block:: bash

        salt-call mas_synapse.inspect /etc/matrix-synapse/conf.d/matrix-authentication-service.yaml http://localhost:8080/auth/ /matrix/matrix-authentication-service/synapse/homeserver_secret
    """
    merged = _merged(config_files, config_dir, dropin, extra_config)
    found = _find_conflicts(merged["config"], merged["origins"], dropin, migrating)
    text = None
    if not migrating and not found:
        text = dropin_text(dropin_content(endpoint, secret_path, merged["config"].get("experimental_features")))
    return {"files": merged["files"], "conflicts": found, "text": text}


# --------------------------------------------------------------------------
# Settings for the SLS
# --------------------------------------------------------------------------


def synapse_settings(mas):
    """
    What ``mas.synapse`` manages, from the formula's map (``mapdata``).

    Returns ``{dropin, config_dir, config_files, state ("present" while MAS is
    authoritative, "absent" while migrating), endpoint, secret: {path, dir,
    source, user, group, mode}, restart, service}``.
    The values were validated and completed by ``mas.settings``
    (``mas:synapse:secret_path`` defaults to
    ``<base_path>/synapse/homeserver_secret``).

    mas
        The map from ``mas/map.jinja``.

    CLI Example:

    .. code-block:: bash

        salt-call mas_synapse.synapse_settings "$(salt-call --out=json mas.settings ...)"
    """
    syn = mas["synapse"]
    secret_path = syn["secret_path"]
    return {
        "dropin": os.path.join(syn["config_dir"], syn["dropin_name"]),
        "config_dir": syn["config_dir"],
        "config_files": list(syn.get("config_files") or []),
        "state": "absent" if mas["migration_in_progress"] else "present",
        "endpoint": syn["mas_endpoint"],
        "secret": {
            "path": secret_path,
            "dir": os.path.dirname(secret_path),
            "source": os.path.join(mas["paths"]["secrets_dir"], "homeserver_secret"),
            "user": syn["user"],
            "group": syn["group"],
            "mode": "0600",
        },
        "restart": bool(syn["restart"]),
        "service": syn["service"],
    }


def _nginx_string(value):
    """Quote ``value`` for an nginx single-quoted string (``$`` cannot be escaped)."""
    if "$" in value:
        raise SaltInvocationError(f"mas: '$' cannot appear in nginx literal text: {value!r}")
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def well_known_client(homeserver_base_url, public_base, migrating=False):
    """
    The ``/.well-known/matrix/client`` document: ``m.homeserver`` and, unless
    migrating, ``org.matrix.msc2965.authentication`` ``{issuer, account}``.

    homeserver_base_url
        The homeserver's public base URL.
    public_base
        MAS's ``http.public_base`` (also its issuer).
    migrating
        ``mas:migration_in_progress`` (clients must not be sent to MAS yet).

    CLI Example:

    .. code-block:: bash

        salt-call mas_synapse.well_known_client https://matrix.example.com/ https://matrix.example.com/auth/
    """
    doc = {"m.homeserver": {"base_url": homeserver_base_url}}
    if not migrating:
        doc["org.matrix.msc2965.authentication"] = {"issuer": public_base, "account": public_base + "account"}
    return doc


def _nginx(mas, proxy, matrix_host, separate_host):
    nginx = proxy["nginx"]
    upstream = nginx["mas_upstream"]
    prefix = mas["path_prefix"]
    migrating = mas["migration_in_progress"]
    public = {"location": "/" if prefix == "/" else f"^~ {prefix}/"}
    matrix = {
        "upstream": upstream,
        "compat": None if migrating else {"regex": COMPAT_REGEX, "prefix": "" if prefix == "/" else prefix},
        "public": None if separate_host else public,
        "well_known": None,
        "disabled": False,
    }
    if nginx["well_known"]:
        doc = well_known_client(f"https://{matrix_host}/", mas["public_base"], migrating)
        matrix["well_known"] = _nginx_string(json.dumps(doc, sort_keys=True, separators=(",", ":")))
    files = [{"name": "snippet", "path": nginx["snippet_path"], "template": "nginx-snippet.conf.jinja",
              "context": matrix, "server": matrix_host}]  # fmt: skip
    if separate_host:
        files.append({
            "name": "public-snippet", "path": nginx["public_snippet_path"], "template": "nginx-snippet.conf.jinja",
            "context": {"upstream": upstream, "compat": None, "public": public, "well_known": None,
                        "disabled": False},
            "server": mas["hostname"],
        })  # fmt: skip
    return {"files": files, "check": ["nginx", "-t"], "service": nginx["service"]}


def traefik_config(mas, matrix_host, mas_url, entrypoint, certresolver=""):
    """
    The Traefik (v3) dynamic configuration for the file provider: a router for
    the compatibility routes on the Matrix host (absent while migrating) with an
    ``addPrefix`` middleware when MAS has a path prefix, a router for MAS's
    public path on MAS's host, and the MAS service.

    mas
        The formula's map.
    matrix_host
        The homeserver's public host name.
    mas_url
        MAS's web listener as Traefik reaches it (``http://HOST:PORT``).
    entrypoint
        The Traefik entrypoint (e.g. ``websecure``).
    certresolver
        Optional ACME resolver name for the routers' TLS.

    CLI Example:

    .. code-block:: bash

        salt-call mas_synapse.traefik_config "$(...mapdata...)" matrix.example.com http://127.0.0.1:8080 websecure
    """
    name = mas["service"]["name"]
    prefix = mas["path_prefix"]
    tls = {"certResolver": certresolver} if certresolver else {}
    public_rule = f"Host(`{mas['hostname']}`)"
    if prefix != "/":
        public_rule += f" && PathPrefix(`{prefix}/`)"
    routers = {
        name: {"rule": public_rule, "entryPoints": [entrypoint], "service": name, "tls": dict(tls)},
    }
    middlewares = {}
    if not mas["migration_in_progress"]:
        compat = {
            "rule": f"Host(`{matrix_host}`) && PathRegexp(`{COMPAT_REGEX}`)",
            "entryPoints": [entrypoint],
            "service": name,
            "priority": 1000,
            "tls": dict(tls),
        }
        if prefix != "/":
            middlewares[f"{name}-compat-prefix"] = {"addPrefix": {"prefix": prefix}}
            compat["middlewares"] = [f"{name}-compat-prefix"]
        routers[f"{name}-compat"] = compat
    http = {
        "routers": routers,
        "services": {name: {"loadBalancer": {"servers": [{"url": mas_url}], "passHostHeader": True}}},
    }
    if middlewares:
        http["middlewares"] = middlewares
    return {"http": http}


def traefik_labels(config, port):
    """
    Docker container labels carrying the routers and middlewares of
    :py:func:`traefik_config` (Traefik's docker provider), with the service
    pointed at the container's ``port``.

    config
        The mapping from :py:func:`traefik_config`.
    port
        MAS's web port inside the container.

    CLI Example:

    .. code-block:: bash

        salt-call mas_synapse.traefik_labels "{http: {routers: {}}}" 8080
    """
    labels = {"traefik.enable": "true"}

    def flatten(prefix, value):
        if isinstance(value, dict):
            for key, item in value.items():
                flatten(f"{prefix}.{key}", item)
        elif isinstance(value, list):
            labels[prefix] = ",".join(str(item) for item in value)
        else:
            labels[prefix] = str(value).lower() if isinstance(value, bool) else str(value)

    http = config["http"]
    for kind in ("routers", "middlewares"):
        for name, section in (http.get(kind) or {}).items():
            section = dict(section)
            if section.get("tls") == {}:
                section["tls"] = True
            flatten(f"traefik.http.{kind}.{name}", section)
    for name in http["services"]:
        labels[f"traefik.http.services.{name}.loadbalancer.server.port"] = str(port)
    return labels


def proxy_settings(mas, clean=False):
    """
    What ``mas.proxy`` manages, from the formula's map (``mapdata``).

    Returns ``{type, files: [{name, path, template, context, server}], check
    (argv run before a reload, or None), reload, service, labels}``. With type
    ``none`` there are no files. nginx gets one snippet for the Matrix server
    block (compatibility routes, MAS's public path when MAS shares the Matrix
    host, the optional well-known document) and, when MAS has its own host
    name, one for MAS's server block. Traefik gets one dynamic-configuration
    file; ``labels`` carries the same routers as docker labels for the docker
    runtime.

    mas
        The map from ``mas/map.jinja``.
    clean
        For ``mas.proxy.clean``: every file the type may have written (paths
        only, nothing validated), so that they can be removed.

    CLI Example:

    .. code-block:: bash

        salt-call mas_synapse.proxy_settings "$(...mapdata...)"
    """
    proxy = mas["proxy"]
    kind = proxy["type"]
    matrix_host = proxy.get("matrix_hostname", "")
    out = {"type": kind, "files": [], "check": None, "reload": bool(proxy["reload"]), "service": None,
           "labels": {}}  # fmt: skip
    if kind == "none":
        return out
    if clean:
        if kind == "nginx":
            # nginx fails on an include of a missing file: existing snippets
            # are emptied (no route left), never deleted.
            keys, action = ("snippet_path", "public_snippet_path"), "empty"
            out.update(check=["nginx", "-t"], service=proxy["nginx"]["service"])
        else:
            keys, action = ("config_path",), "absent"
            out["service"] = proxy["traefik"]["service"]
        out["files"] = [
            {"name": key[: -len("_path")].replace("_", "-"), "path": proxy[kind][key], "action": action,
             "template": "nginx-snippet.conf.jinja", "server": "",
             "context": {"upstream": None, "compat": None, "public": None, "well_known": None, "disabled": True}}
            for key in keys if proxy[kind].get(key)
        ]  # fmt: skip
        return out
    separate_host = mas["hostname"] != matrix_host
    if kind == "nginx":
        out.update(_nginx(mas, proxy, matrix_host, separate_host))
        return out
    traefik = proxy["traefik"]
    mas_url = traefik["mas_url"]
    config = traefik_config(mas, matrix_host, mas_url, traefik["entrypoint"], traefik.get("certresolver") or "")
    out["files"] = [{"name": "config", "path": traefik["config_path"], "template": "traefik-dynamic.yml.jinja",
                     "context": {"config": config}, "server": matrix_host}]  # fmt: skip
    out["service"] = traefik["service"]
    if mas["runtime"] == "docker":
        out["labels"] = traefik_labels(config, mas["http"]["web_bind"].rpartition(":")[2])
    return out


def proxy_check(argv):
    """
    Run the proxy's own configuration test (``nginx -t``) before a reload and
    raise ``CommandExecutionError`` with its output when it fails.

    argv
        The command as a list (``check`` of :py:func:`proxy_settings`).

    CLI Example:

    .. code-block:: bash

        salt-call mas_synapse.proxy_check "['nginx', '-t']"
    """
    if not isinstance(argv, list) or not argv or not all(isinstance(arg, str) for arg in argv):
        raise SaltInvocationError(f"mas_synapse.proxy_check needs the command as a list of strings, not {argv!r}")
    res = __salt__["cmd.run_all"](argv, python_shell=False, output_loglevel="trace", ignore_retcode=True)
    output = (res.get("stdout", "") + "\n" + res.get("stderr", "")).strip()
    if res["retcode"] != 0:
        raise CommandExecutionError(
            f"{' '.join(argv)} failed (exit {res['retcode']}); the proxy was not reloaded:\n{output}",
            info={"result": res},
        )
    return output
