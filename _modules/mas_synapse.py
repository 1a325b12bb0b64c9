"""
Synapse side of the ``mas`` formula: reading Synapse's configuration, the conflict rules, and the drop-in that delegates authentication to MAS.

* :py:func:`config` reads and merges the Synapse configuration files on the
  minion (secret values masked unless asked for by the formula's own modules).
* :py:func:`conflicts` lists every setting Synapse refuses next to MAS, and
  :py:func:`inspect` builds the drop-in (:py:func:`dropin_text`) when there is
  none; the ``mas_synapse.dropin`` state refuses to write while a conflict is
  left.
* :py:func:`settings` turns the formula's map into what ``mas.synapse``
  writes (the drop-in and Synapse's copy of the shared secret).

Synapse merges its config files *shallowly*: a later file replaces whole
top-level sections. The drop-in therefore carries the complete
``experimental_features`` section (the operator's own keys plus
``msc4108_enabled``), and a ``matrix_authentication_service`` section anywhere
else is refused.

The drop-in points at the secret file (``secret_path``), and conflicts name
keys and files, never values.

:depends: PyYAML
"""

import copy
import logging
import os
import re

import salt.utils.data
import salt.utils.files
import salt.utils.yaml
from salt.exceptions import SaltInvocationError

import mas_formula

mas_formula.refresh()
from mas_formula import http, roles, secretfiles, synapse_config  # noqa: E402  (after the refresh: a synced update is imported anew)

log = logging.getLogger(__name__)

__virtualname__ = "mas_synapse"

#: Pillar key of the Synapse settings Salt cannot see in files (may hold secrets).
EXTRA_CONFIG_PILLAR = "mas:synapse:extra_config"
#: Pillar key of Synapse's ``registration_shared_secret`` where Synapse's files are not (a MAS minion of its own).
REGISTRATION_SECRET_PILLAR = "mas:synapse:registration_shared_secret"  # noqa: S105 -- a pillar key, not a secret

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
    (
        "enable_registration",
        "enable_registration",
        lambda c: "disable_registration" not in c and _registration_on(c),
        'Synapse refuses it with MAS ("Registration cannot be enabled when OAuth delegation is enabled")',
        _REGISTRATION_FIX,
        ("delegated", "migrating"),
    ),
    (
        "disable_registration",
        "disable_registration",
        lambda c: "disable_registration" in c and _registration_on(c),
        "it enables registration, which Synapse refuses with MAS",
        "remove it",
        ("delegated", "migrating"),
    ),
    (
        "enable_registration_captcha",
        "enable_registration_captcha",
        lambda c: bool(c.get("enable_registration_captcha")),
        'Synapse refuses it with MAS ("CAPTCHA cannot be enabled when OAuth delegation is enabled")',
        "remove it: MAS has its own CAPTCHA settings (mas:config:captcha)",
        ("delegated", "migrating"),
    ),
    (
        "user_consent",
        "user_consent",
        lambda c: c.get("user_consent") is not None,
        'Synapse refuses it with MAS ("User consent cannot be enabled when OAuth delegation is enabled")',
        "remove the section: MAS links the terms of service (mas:config:branding:tos_uri)",
        ("delegated", "migrating"),
    ),
    (
        "oidc_providers",
        "oidc_providers",
        lambda c: bool(c.get("oidc_providers")),
        'Synapse refuses SSO with MAS ("SSO cannot be enabled when OAuth delegation is enabled")',
        "move the providers to mas:upstream_oauth2_providers (synapse_idp_id: oidc-<idp_id> keeps the"
        " links during syn2mas), then remove oidc_providers",
        ("delegated",),
    ),
    (
        "oidc_config",
        "oidc_config",
        lambda c: isinstance(c.get("oidc_config"), dict) and bool(c["oidc_config"].get("enabled", False)),
        'Synapse refuses SSO with MAS ("SSO cannot be enabled when OAuth delegation is enabled")',
        "move the provider to mas:upstream_oauth2_providers (synapse_idp_id: oidc), then remove oidc_config",
        ("delegated",),
    ),
    (
        "saml2_config",
        "saml2_config",
        lambda c: _saml2_on(c.get("saml2_config")),
        'Synapse refuses SSO with MAS ("SSO cannot be enabled when OAuth delegation is enabled")',
        "remove it: MAS does not speak SAML; sign-in goes through MAS's upstream OAuth2 providers",
        ("delegated", "migrating"),
    ),
    (
        "cas_config",
        "cas_config",
        lambda c: (
            bool(c.get("cas_config"))
            and isinstance(c["cas_config"], dict)
            and bool(c["cas_config"].get("enabled", True))
        ),
        'Synapse refuses SSO with MAS ("SSO cannot be enabled when OAuth delegation is enabled")',
        "remove it: MAS does not speak CAS; sign-in goes through MAS's upstream OAuth2 providers",
        ("delegated", "migrating"),
    ),
    (
        "jwt_config",
        "jwt_config",
        lambda c: isinstance(c.get("jwt_config"), dict) and bool(c["jwt_config"].get("enabled", False)),
        'Synapse refuses JWT login with MAS ("SSO cannot be enabled when OAuth delegation is enabled")',
        "remove it: logins go through MAS",
        ("delegated", "migrating"),
    ),
    (
        "password_providers",
        "password_providers",
        lambda c: bool(c.get("password_providers")),
        'Synapse refuses it with MAS ("Password auth providers cannot be enabled when OAuth delegation is enabled")',
        "remove the providers (shared-secret-auth, rest-auth, LDAP, ...): passwords are checked by MAS"
        " (LDAP users sign in through an upstream provider)",
        ("delegated", "migrating"),
    ),
    (
        "ldap_config",
        "ldap_config",
        lambda c: isinstance(c.get("ldap_config"), dict) and bool(c["ldap_config"].get("enabled", False)),
        "it is a password auth provider, which Synapse refuses with MAS",
        "remove it: passwords are checked by MAS",
        ("delegated", "migrating"),
    ),
    (
        "modules",
        "modules",
        lambda c: bool(_password_modules(c)),
        'a password auth module is loaded; Synapse refuses its callbacks at start-up with MAS ("Cannot use'
        ' password auth provider callbacks when OAuth delegation is enabled")',
        "remove the module (known: " + ", ".join(PASSWORD_AUTH_MODULES) + ")",
        ("delegated", "migrating"),
    ),
    (
        "password_config.enabled",
        "password_config",
        lambda c: bool(_get(c, "password_config", "enabled")),
        'Synapse refuses it with MAS ("Password auth cannot be enabled when OAuth delegation is enabled")',
        "remove password_config.enabled (with MAS its default is false): MAS checks passwords",
        ("delegated",),
    ),
    (
        "login_via_existing_session.enabled",
        "login_via_existing_session",
        lambda c: bool(_get(c, "login_via_existing_session", "enabled")),
        'Synapse refuses it with MAS ("Login via existing session cannot be enabled when OAuth delegation is enabled")',
        "remove it: QR-code login (MSC4108) replaces it",
        ("delegated", "migrating"),
    ),
    (
        "enable_3pid_changes",
        "enable_3pid_changes",
        lambda c: bool(c.get("enable_3pid_changes")),
        'Synapse refuses it with MAS ("enable_3pid_changes cannot be enabled when OAuth delegation is enabled")',
        "remove it: email addresses are managed in MAS (mas:account:email_change_allowed)",
        ("delegated", "migrating"),
    ),
    (
        "refresh_token_lifetime",
        "refresh_token_lifetime",
        lambda c: _duration_set(c.get("refresh_token_lifetime")),
        'Synapse refuses it with MAS ("refresh_token_lifetime cannot be set when OAuth delegation is enabled")',
        _LIFETIME_FIX,
        ("delegated", "migrating"),
    ),
    (
        "nonrefreshable_access_token_lifetime",
        "nonrefreshable_access_token_lifetime",
        lambda c: _duration_set(c.get("nonrefreshable_access_token_lifetime")),
        'Synapse refuses it with MAS ("nonrefreshable_access_token_lifetime cannot be set when OAuth delegation'
        ' is enabled")',
        _LIFETIME_FIX,
        ("delegated", "migrating"),
    ),
    (
        "session_lifetime",
        "session_lifetime",
        lambda c: _duration_set(c.get("session_lifetime")),
        'Synapse refuses it with MAS ("session_lifetime cannot be set when OAuth delegation is enabled")',
        _LIFETIME_FIX,
        ("delegated", "migrating"),
    ),
    (
        "experimental_features.msc3861",
        "experimental_features",
        lambda c: bool(_get(c, "experimental_features", "msc3861")),
        'Synapse refuses it, with or without MAS ("experimental_features.msc3861 was removed")',
        "remove it: the formula writes the stable matrix_authentication_service section",
        ("delegated", "migrating"),
    ),
    (
        "experimental_features.msc4108_delegation_endpoint",
        "experimental_features",
        lambda c: _get(c, "experimental_features", "msc4108_delegation_endpoint") is not None,
        "the formula enables QR-code login served by MAS (msc4108_enabled); Synapse refuses both at once and,"
        ' while MAS is not authoritative, refuses it alone ("MSC4108 requires matrix_authentication_service'
        ' to be enabled")',
        "remove it",
        ("delegated", "migrating"),
    ),
    (
        "experimental_features.msc4108_enabled",
        "experimental_features",
        lambda c: bool(_get(c, "experimental_features", "msc4108_enabled")),
        'Synapse refuses it while MAS is not authoritative ("MSC4108 requires matrix_authentication_service to'
        ' be enabled")',
        "remove it: the formula enables it in its drop-in once the migration is over",
        ("migrating",),
    ),
    (
        "experimental_features.msc4388_mode",
        "experimental_features",
        lambda c: (_get(c, "experimental_features", "msc4388_mode") or "off") != "off",
        'Synapse refuses it while MAS is not authoritative ("MSC4388 requires matrix_authentication_service to'
        ' be enabled")',
        "remove it until the migration is over",
        ("migrating",),
    ),
)


def config(config_files=None, config_dir=None, extra_config=None, exclude=None, mask=True):
    """
    Read and merge the Synapse configuration files that exist on the minion.

    Returns ``{"config": <merged mapping>, "origins": {<top-level key>: <file>},
    "files": [<files read>]}``. Later files win, like Synapse's own loader
    (whole top-level sections); ``extra_config`` is merged last with the
    origin ``pillar mas:synapse:extra_config``; when it is taken from pillar,
    so is ``mas:synapse:registration_shared_secret`` (Synapse's own, given to a
    minion where Synapse's files are not, for the users while Synapse is
    authoritative) as ``registration_shared_secret``. Secret values (keys such as
    ``registration_shared_secret``, ``macaroon_secret_key``, ``form_secret``,
    ``password_config.pepper``, passwords) are shown as ``**********`` unless
    ``mask`` is false; the formula's own modules read them unmasked, to find
    the pepper and to scrub output.

    Without ``config_files`` and ``config_dir``, the files are the map's
    (``mas:synapse:config_files`` and the ``*.yaml`` of
    ``mas:synapse:config_dir``, without the formula's drop-in).

    config_files
        Synapse config files (default ``/etc/matrix-synapse/homeserver.yaml``).
    config_dir
        A directory whose ``*.yaml`` files Synapse also loads.
    extra_config
        Synapse settings Salt does not see in the files (default: pillar
        ``mas:synapse:extra_config``; ``{}`` for none).
    exclude
        Files to leave out (e.g. the formula's own drop-in).
    mask
        Hide secret values (default true).

    CLI Example:

    .. code-block:: bash

        salt-call mas_synapse.config
        salt-call mas_synapse.config "['/etc/matrix-synapse/homeserver.yaml']" /etc/matrix-synapse/conf.d
    """
    if config_files is None and config_dir is None:
        mas = __salt__["mas.mapdata"]()
        config_files, config_dir = mas["synapse"]["config_files"], mas["synapse"]["config_dir"]
        exclude = list(exclude or []) + [mas["paths"]["synapse_dropin"]]
    if extra_config is None:
        extra_config = salt.utils.data.traverse_dict_and_list(__pillar__, EXTRA_CONFIG_PILLAR, {}, delimiter=":")
        registration = salt.utils.data.traverse_dict_and_list(__pillar__, REGISTRATION_SECRET_PILLAR, delimiter=":")
        if isinstance(extra_config, dict) and registration not in (None, ""):
            extra_config = dict(extra_config, registration_shared_secret=str(registration))
    if not isinstance(extra_config, dict):
        raise SaltInvocationError(f"{EXTRA_CONFIG_PILLAR} must be a mapping of Synapse settings")
    found = synapse_config.read(config_files, config_dir, extra_config, exclude)
    if mask:
        found["config"] = secretfiles.mask(found["config"])
    return found


def pepper_digest(nonce):
    """
    This Synapse minion's side of the pepper comparison across hosts
    (``mas.orch.migrate`` asks it on the master, and ``mas_syn2mas.pepper_digest``
    on the MAS minion, with one nonce): the HMAC of Synapse's
    ``password_config.pepper`` (from the map's Synapse config files), keyed
    with ``nonce``. The pepper itself never leaves the minion. Reads only.

    Returns ``{"digest": <hex> | "none", "source": <where it is read>}``.

    nonce
        The master's one-time key: 32 to 128 lowercase hex digits.

    CLI Example:

    .. code-block:: bash

        salt-call mas_synapse.pepper_digest 00112233445566778899aabbccddeeff
    """
    if not isinstance(nonce, str) or not roles.NONCE.fullmatch(nonce):
        raise SaltInvocationError("nonce must be 32 to 128 lowercase hex digits")
    found = config(mask=False)
    pepper = _get(found["config"], "password_config", "pepper")
    if pepper in (None, ""):
        return {"digest": "none", "source": f"no password_config.pepper in {', '.join(found['files']) or 'no file'}"}
    where = found["origins"].get("password_config", "?")
    return {"digest": roles.pepper_digest(nonce, str(pepper).encode()), "source": f"password_config.pepper in {where}"}


def _merged(config_files, config_dir, dropin, extra_config):
    return config(config_files, config_dir, extra_config, exclude=[dropin] if dropin else None, mask=False)


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


def inspect(dropin, endpoint, secret_path, config_files=None, config_dir=None, migrating=False, extra_config=None):
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


def settings(mas=None):
    """
    What ``mas.synapse`` manages, from the formula's map (used by the SLS
    files while they render).

    Returns ``{dropin, config_dir, config_files, state ("present" while MAS is
    authoritative, "absent" while migrating), endpoint, secret: {path, dir,
    kind, source, pillar_key, user, group, mode}, restart, service, url
    (Synapse's client API base, where a restart is checked)}``. Every path
    comes from the map's ``paths``. Synapse's copy of the shared secret is a
    copy of MAS's file (``kind: copy``), or on a minion with the ``synapse``
    role and without ``mas`` (``mas:roles``) the pillar value both are served
    (``kind: pillar``, ``pillar_key: mas:secrets:homeserver_secret``).

    mas
        The formula's map (default: ``mas.mapdata``).

    CLI Example:

    .. code-block:: bash

        salt-call mas_synapse.settings
    """
    mas = mas or __salt__["mas.mapdata"]()
    syn, paths = mas["synapse"], mas["paths"]
    return {
        "dropin": paths["synapse_dropin"],
        "config_dir": syn["config_dir"],
        "config_files": list(syn.get("config_files") or []),
        "state": "absent" if mas["migration_in_progress"] else "present",
        "endpoint": syn["mas_endpoint"],
        "secret": {
            "path": paths["synapse_secret"],
            "dir": os.path.dirname(paths["synapse_secret"]),
            **mas["synapse_secret"],
            "user": syn["user"],
            "group": syn["group"],
            "mode": "0600",
        },
        "restart": bool(syn["restart"]),
        "service": syn["service"],
        "url": syn["endpoint"],
    }


def restart(service=None, url=None, timeout=60):
    """
    Restart Synapse and wait until it answers: ``service.restart`` of
    ``service``, then ``GET <url>/_matrix/client/versions`` until it answers
    200 or ``timeout`` seconds have passed. Never raises for a Synapse that
    stays down: the answer says so.

    Returns ``{"service", "restarted" (service.restart succeeded), "answers",
    "url", "seconds", "why" (why it does not answer, or "")}``.

    service
        Synapse's service (default ``mas:synapse:service``).
    url
        Synapse's client API base (default ``mas:synapse:endpoint``).
    timeout
        Seconds to wait for Synapse to answer after the restart.

    CLI Example:

    .. code-block:: bash

        salt-call mas_synapse.restart
    """
    if service is None or url is None:
        mas = __salt__["mas.mapdata"]()
        service = service or mas["synapse"]["service"]
        url = url or mas["synapse"]["endpoint"]
    probe = url.rstrip("/") + "/_matrix/client/versions"
    result = {"service": service, "restarted": False, "answers": False, "url": probe, "seconds": 0.0, "why": ""}
    result["restarted"] = bool(__salt__["service.restart"](service))
    if result["restarted"]:
        result["answers"], result["seconds"], result["why"] = http.wait_until_answers(probe, timeout)
    return result
