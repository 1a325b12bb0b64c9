"""MAS's own rules for config.yaml, checked on the file the formula would write: its runtime ``validate()``, what serde refuses, and secrets never inline.

* :func:`inline_secrets`: a secret given inline under ``mas:config`` would land in
  config.yaml, state output and ``mas.mapdata``: refused, naming the key to use instead.
* :func:`check_providers`: upstream OAuth2 providers (the formula's grammar and MAS's rules).
* :func:`validate_mas_config`: the rules MAS applies when it loads config.yaml, beyond its
  JSON schema (the ``validate()`` code of ``crates/config/src/sections/*.rs`` at the release's
  commit) and the types serde reads it into (enums by their exact names, non-zero limits,
  absolute URLs, whole seconds, a Sentry DSN that parses), each refusal naming the pillar key
  the value comes from (``mas:config:...`` for what ``mas:config`` brings, :func:`config_key`)
  and saying what a valid value looks like.

Also MAS's vocabulary the pillar validation shares (email transports, SMTP and SSL modes,
token endpoint auth methods, ...).
"""

import re
import urllib.parse

from mas_formula import grammar

EMAIL_TRANSPORTS = ("blackhole", "smtp", "sendmail")


SMTP_MODES = ("plain", "starttls", "tls")


SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


TOKEN_AUTH_METHODS = (
    "none",
    "client_secret_basic",
    "client_secret_post",
    "client_secret_jwt",
    "private_key_jwt",
    "sign_in_with_apple",
)


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


def inline_secrets(config, prefix):
    """Refusals for every secret given inline under ``config`` (``prefix``: its pillar path)."""
    found = []

    def home(path):
        generic = tuple("*" if isinstance(p, int) else p for p in path)
        return _INLINE_SECRET_HOME.get(generic, f"use the matching *_file key ({path[-1]}_file) instead")

    def walk(node, path):
        if isinstance(node, dict):
            for name, value in node.items():
                sub = (*path, name)
                inline = grammar.is_set(value) and not isinstance(value, (dict, list, bool))
                if inline and (
                    name in _INLINE_SECRET_KEYS
                    or tuple("*" if isinstance(p, int) else p for p in sub) in _INLINE_SECRET_HOME
                ):
                    if sub == ("database", "uri") and not _uri_has_password(value):
                        continue
                    found.append(
                        f"{grammar.key(*prefix, *sub)}: a secret inline would land in config.yaml, state output and"
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


def config_key(data, cpath):
    """The pillar key to name for the config.yaml path ``cpath``: ``mas:config:...``
    when mas:config brings the value (or the list holding it), else the
    formula's own key for it."""
    node = data.get("config") or {}
    for part in cpath:
        if isinstance(node, list):
            return grammar.key("config", *cpath)  # lists of mas:config replace the formula's whole list
        if not isinstance(node, dict) or part not in node:
            break
        node = node[part]
    else:
        return grammar.key("config", *cpath)
    for size in range(len(cpath), 0, -1):
        source = _CONFIG_SOURCES.get(tuple(cpath[:size]))
        if source is not None:
            return grammar.key(*source, *cpath[size:])
    return grammar.key("config", *cpath)


def check_providers(providers, add, key):
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
        if not (isinstance(pid, str) and grammar.ULID.fullmatch(pid)):
            fail(("id",), f"must be a ULID (26 characters, e.g. 01HFVBY12TMNTYTBV8W921M5FA), not {pid!r}")
        elif pid.upper() in ids:
            fail(("id",), f"must be unique: {pid} is used by another provider ({ids[pid.upper()]})")
        else:
            ids[pid.upper()] = k("id")
        if not (grammar.is_text(provider.get("client_id")) and provider["client_id"]):
            fail(("client_id",), "is required (a string)")
        method = provider.get("token_endpoint_auth_method")
        if method not in TOKEN_AUTH_METHODS:
            fail(("token_endpoint_auth_method",), f"must be one of {', '.join(TOKEN_AUTH_METHODS)}, not {method!r}")
        idp = provider.get("synapse_idp_id")
        if grammar.is_set(idp):
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
            if grammar.is_set(provider.get(field)) and not grammar.is_url(provider[field]):
                fail((field,), f"must be {grammar.KINDS['url']}, not {provider[field]!r}")
        discovery = provider.get("discovery_mode", "oidc")
        if discovery not in DISCOVERY_MODES:
            fail(("discovery_mode",), f"must be one of {', '.join(DISCOVERY_MODES)}, not {discovery!r}")
        elif discovery != "disabled" and not grammar.is_set(provider.get("issuer")):
            fail(("issuer",), f"is required when {k('discovery_mode')} is {discovery} (the default is oidc)")
        elif discovery == "disabled":
            for field in ("authorization_endpoint", "token_endpoint"):
                if not grammar.is_set(provider.get(field)):
                    fail((field,), f"is required when {k('discovery_mode')} is disabled (an https:// URL)")
        secret, secret_file = provider.get("client_secret"), provider.get("client_secret_file")
        if _given(secret) and _given(secret_file):
            fail(("client_secret_file",), f"cannot be set together with {k('client_secret')}: set one of them")
        if method in SECRET_METHODS and not (grammar.is_set(secret) or grammar.is_set(secret_file)):
            fail(("client_secret",), f"is required when {k('token_endpoint_auth_method')} is {method} (a string)")
        elif method in TOKEN_AUTH_METHODS and method not in SECRET_METHODS and (_given(secret) or _given(secret_file)):
            field = "client_secret" if _given(secret) else "client_secret_file"
            fail(
                (field,),
                f"must not be set when {k('token_endpoint_auth_method')} is {method}: remove it"
                + _empty(provider[field]),
            )
        alg = provider.get("token_endpoint_auth_signing_alg")
        if method in SIGNED_METHODS and not grammar.is_set(alg):
            fail(
                ("token_endpoint_auth_signing_alg",),
                f"is required when {k('token_endpoint_auth_method')} is {method} (e.g. RS256)",
            )
        elif method in TOKEN_AUTH_METHODS and method not in SIGNED_METHODS and _given(alg):
            fail(
                ("token_endpoint_auth_signing_alg",),
                f"must not be set when {k('token_endpoint_auth_method')} is {method}: remove it{_empty(alg)}",
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
                    if not (grammar.is_text(siwa.get(field)) and siwa[field]):
                        fail(("sign_in_with_apple", field), "is required (a string)")
                if not grammar.is_set(siwa.get("private_key_file")) and not grammar.is_set(siwa.get("private_key")):
                    fail(("sign_in_with_apple", "private_key_file"), f"is required: {grammar.KINDS['path']}")
                elif grammar.is_set(siwa.get("private_key_file")) and not grammar.is_path(siwa["private_key_file"]):
                    fail(("sign_in_with_apple", "private_key_file"), f"must be {grammar.KINDS['path']}")
        elif siwa is not None and method in TOKEN_AUTH_METHODS:
            fail(("sign_in_with_apple",), f"must not be set when {k('token_endpoint_auth_method')} is {method}")
        scope = provider.get("scope")
        if scope is not None and not (isinstance(scope, str) and _SCOPE.fullmatch(scope)):
            fail(("scope",), f"must be scope tokens separated by single spaces (e.g. 'openid email'), not {scope!r}")
        _check_claims_imports(provider.get("claims_imports"), lambda sub, msg, i=index: add((i, *sub), msg), k)
        _check_provider_types(provider, fail)


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
        if not grammar.is_int(bind["port"]) or grammar.as_port(bind["port"]) is None:
            return f"port must be an integer from 1 to 65535, not {bind['port']!r}"
        if host is not None and not (grammar.is_dns_name(host) or grammar.is_ip(host)):
            return f"host must be an IP address (IPv6 without brackets) or a DNS name, not {host!r}"
        return None
    if keys == {"address"}:
        hostport = grammar.split_hostport(bind["address"])
        if hostport is None or not grammar.is_ip(hostport[0]):
            return (
                "address must be an IP address and port, IPv6 in brackets (e.g. [::]:8080, 127.0.0.1:8081): MAS"
                f" does not resolve names there (use {{host, port}}), not {bind['address']!r}"
            )
        return None
    if keys <= {"socket", "mode"} and "socket" in keys:
        if not grammar.is_path(bind["socket"]):
            return f"socket must be {grammar.KINDS['path']}"
        if "mode" in keys and not (isinstance(bind["mode"], str) and re.fullmatch(r"[0-7]{3,4}", bind["mode"])):
            return f"mode must be octal digits as a string (e.g. '0660'), not {bind['mode']!r}"
        return None
    if keys <= {"fd", "kind"} and "fd" in keys:
        if not grammar.is_int(bind["fd"]) or bind["fd"] < 0:
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
        if prefix is not None and not (
            isinstance(prefix, str) and (prefix == "" or grammar.CHECKS["url_path"](prefix))
        ):
            add(
                ("listeners", index, "prefix"),
                f"must be {grammar.KINDS['url_path']} (MAS panics otherwise), not {prefix!r}",
            )
        tls = listener.get("tls")
        if tls is not None:
            if not isinstance(tls, dict):
                add(("listeners", index, "tls"), "must be a mapping")
                continue
            for a, b, what in (
                ("certificate", "certificate_file", "a certificate"),
                ("key", "key_file", "a private key"),
            ):
                if _given(tls.get(a)) and _given(tls.get(b)):
                    add(("listeners", index, "tls", b), f"only one of {a} or {b} can be set{_empty(tls[a])}")
                elif not grammar.is_set(tls.get(a)) and not grammar.is_set(tls.get(b)):
                    add(("listeners", index, "tls", b), f"is required: TLS needs {what}")
            if _given(tls.get("password")) and _given(tls.get("password_file")):
                add(
                    ("listeners", index, "tls", "password_file"),
                    f"only one of password or password_file can be set{_empty(tls['password'])}",
                )
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
        if (value is not None or field == "public_base") and not grammar.is_url(value):
            add((field,), f"must be {grammar.KINDS['url']} (MAS panics otherwise), not {value!r}")
    proxies = http.get("trusted_proxies")
    if proxies is not None and not (isinstance(proxies, list) and all(grammar.is_cidr(p) for p in proxies)):
        add(("trusted_proxies",), "must be a list of CIDR networks (e.g. [127.0.0.1/32])")


def _rules_database(db, add, key):
    if _given(db.get("uri")):
        mixed = [
            f
            for f in ("host", "port", "socket", "username", "password", "password_file", "database")
            if _given(db.get(f))
        ]
        if mixed:
            add(
                ("uri",),
                "must not be combined with host, port, socket, username, password or database, which the formula"
                f" sets: set mas:database:host, :port, :name, :user and :password instead{_empty(db['uri'])}",
            )
    pairs = (("password", "password_file"), ("ssl_ca", "ssl_ca_file"), ("ssl_certificate", "ssl_certificate_file"))
    for a, b in (*pairs, ("ssl_key", "ssl_key_file")):
        if _given(db.get(a)) and _given(db.get(b)):
            add((b,), f"cannot be set together with {key(a)}{_empty(db[a])}")
    has_cert = _given(db.get("ssl_certificate")) or _given(db.get("ssl_certificate_file"))
    has_key = _given(db.get("ssl_key")) or _given(db.get("ssl_key_file"))
    if has_cert != has_key:
        add(
            ("ssl_key_file",) if has_cert else ("ssl_certificate_file",),
            "a client certificate and its key must be set together (ssl_certificate_file and ssl_key_file)",
        )
    if "ssl_mode" in db and db["ssl_mode"] not in SSL_MODES:
        add(("ssl_mode",), f"must be one of {', '.join(SSL_MODES)}, not {db['ssl_mode']!r}")
    if "port" in db and not (grammar.is_int(db["port"]) and grammar.as_port(db["port"])):
        add(("port",), f"must be {grammar.KINDS['port']}, not {db['port']!r}")
    for field, low in (("max_connections", 1), ("min_connections", 0)):
        if field in db and not (grammar.is_int(db[field]) and db[field] >= low):
            add((field,), f"must be an integer of at least {low}, not {db[field]!r}")


def _rules_email(email, add, key):
    transport = email.get("transport")
    if transport not in EMAIL_TRANSPORTS:
        add(("transport",), f"must be one of {', '.join(EMAIL_TRANSPORTS)}, not {transport!r}")
        return
    for field in ("from", "reply_to"):
        if field in email and not grammar.CHECKS["mailbox"](email[field]):
            add((field,), f"must be {grammar.KINDS['mailbox']}, not {email[field]!r}")
    has_password = _given(email.get("password")) or _given(email.get("password_file"))
    if transport == "smtp":
        if not grammar.is_set(email.get("mode")):
            add(("mode",), f"is required when {key('transport')} is smtp (plain, starttls or tls)")
        elif email["mode"] not in SMTP_MODES:
            add(("mode",), f"must be one of {', '.join(SMTP_MODES)}, not {email['mode']!r}")
        if not grammar.is_set(email.get("hostname")):
            add(("hostname",), f"is required when {key('transport')} is smtp ({grammar.KINDS['host']})")
        elif not grammar.CHECKS["host"](email["hostname"]):
            add(("hostname",), f"must be {grammar.KINDS['host']}, not {email['hostname']!r}")
        if "port" in email and not (grammar.is_int(email["port"]) and grammar.as_port(email["port"])):
            add(("port",), f"must be {grammar.KINDS['port']}, not {email['port']!r}")
        username = email.get("username")
        if _given(username) and not has_password:
            add(("password",), f"is required when {key('username')} is set (the SMTP password){_empty(username)}")
        if has_password and not grammar.is_set(username):
            add(("username",), f"is required when {key('password_file')} is set (the SMTP user name){_empty(username)}")
        if _given(email.get("password")) and _given(email.get("password_file")):
            add(("password_file",), f"cannot be set together with {key('password')}{_empty(email['password'])}")
        if _given(email.get("command")):
            add(
                ("command",),
                f"is only for sendmail: remove it when {key('transport')} is smtp{_empty(email['command'])}",
            )
    elif transport == "sendmail":
        if not grammar.is_set(email.get("command")):
            add(("command",), f"is required when {key('transport')} is sendmail ({grammar.KINDS['command']})")
        elif not grammar.is_path(email["command"]):
            add(("command",), f"must be {grammar.KINDS['command']}, not {email['command']!r}")
        for field in ("mode", "hostname", "port", "username", "password"):
            if _given(email.get(field)):
                add((field,), f"is only for smtp: remove it when {key('transport')} is sendmail{_empty(email[field])}")


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
        if not (grammar.is_int(version) and 0 <= version < 65536):
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
        if _given(scheme.get("secret")) and _given(scheme.get("secret_file")):
            add(("schemes", index, "secret_file"), f"cannot be set together with secret{_empty(scheme['secret'])}")
        cost = scheme.get("cost")
        if cost is not None and not (grammar.is_int(cost) and 4 <= cost <= 31):
            add(("schemes", index, "cost"), f"must be an integer from 4 to 31 (bcrypt), not {cost!r}")
    complexity = passwords.get("minimum_complexity")
    if complexity is not None and not (grammar.is_int(complexity) and 0 <= complexity <= 4):
        add(
            ("minimum_complexity",),
            f"must be an integer from 0 to 4 (5 and more refuse every password), not {complexity!r}",
        )


def _rules_secrets(secrets, add, key):
    if secrets.get("encryption") == "":
        add(
            ("encryption",),
            "is an empty string, which MAS decodes as the hex encryption key and refuses: remove the key (the"
            " formula sets encryption_file)",
        )
    elif _given(secrets.get("encryption")) == _given(secrets.get("encryption_file")):
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
            if _given(entry.get("key")) == _given(entry.get("key_file")):
                add(
                    ("keys", index, "key_file"), f"exactly one of key or key_file is required{_empty(entry.get('key'))}"
                )
            if _given(entry.get("password")) and _given(entry.get("password_file")):
                add(
                    ("keys", index, "password_file"),
                    f"cannot be set together with password{_empty(entry['password'])}",
                )
    if "keys_dir" in secrets and not grammar.is_path(secrets["keys_dir"]):
        add(("keys_dir",), f"must be {grammar.KINDS['path']}")


def _rules_matrix(matrix, add, key):
    if matrix.get("secret") == "":
        add(
            ("secret",),
            "is an empty string, which MAS takes as the shared secret with the homeserver: remove the key (the"
            " formula sets secret_file from mas:secrets:homeserver_secret)",
        )
    elif _given(matrix.get("secret")) == _given(matrix.get("secret_file")):
        add(("secret_file",), "exactly one of secret or secret_file is required (the formula sets the file)")
    if matrix.get("kind", "synapse") not in MATRIX_KINDS:
        add(("kind",), f"must be one of {', '.join(MATRIX_KINDS)}, not {matrix.get('kind')!r}")
    endpoint = matrix.get("endpoint")
    if endpoint is not None and not grammar.is_url(endpoint, slash=True):
        add(("endpoint",), f"must be {grammar.KINDS['url']}, a path ending with '/', not {endpoint!r}")


def _rules_clients(clients, add, key):
    seen = {}
    for index, client in enumerate(clients):
        cid = client.get("client_id")
        if not (isinstance(cid, str) and grammar.ULID.fullmatch(cid)):
            add((index, "client_id"), f"must be a ULID (26 characters, e.g. 01HFVBY12TMNTYTBV8W921M5FA), not {cid!r}")
        elif cid.upper() in seen:
            add((index, "client_id"), f"must be unique: {cid} is already the client_id of {seen[cid.upper()]}")
        else:
            seen[cid.upper()] = key(index)
        method = client.get("client_auth_method")
        secret = _given(client.get("client_secret")) or _given(client.get("client_secret_file"))
        jwks, jwks_uri = _given(client.get("jwks")), _given(client.get("jwks_uri"))
        if method not in CLIENT_AUTH_METHODS:
            add((index, "client_auth_method"), f"must be one of {', '.join(CLIENT_AUTH_METHODS)}, not {method!r}")
        elif method == "private_key_jwt":
            if jwks == jwks_uri:
                add((index, "jwks_uri"), "exactly one of jwks or jwks_uri is required for private_key_jwt")
            if secret:
                add((index, "client_secret_file"), "must not be set with private_key_jwt")
        elif method in SECRET_METHODS:
            if not (grammar.is_set(client.get("client_secret")) or grammar.is_set(client.get("client_secret_file"))):
                add((index, "client_secret_file"), f"is required for {method}")
            if jwks or jwks_uri:
                add((index, "jwks" if jwks else "jwks_uri"), f"must not be set with {method}")
        elif secret or jwks or jwks_uri:
            add((index, "client_auth_method"), "none allows no client_secret(_file), jwks or jwks_uri")
        if _given(client.get("client_secret")) and _given(client.get("client_secret_file")):
            add(
                (index, "client_secret_file"),
                f"cannot be set together with client_secret{_empty(client['client_secret'])}",
            )
        _check_client_types(client, index, add)


def _rules_misc(config, add, key):
    """captcha, rate_limiting, experimental, telemetry, policy, branding, account."""
    captcha = config.get("captcha")
    if isinstance(captcha, dict) and _given(captcha.get("service")):
        if captcha["service"] not in CAPTCHA_SERVICES:
            add(("captcha", "service"), f"must be one of {', '.join(CAPTCHA_SERVICES)}, not {captcha['service']!r}")
        for field in ("site_key", "secret_key"):
            if not grammar.is_set(captcha.get(field)):
                add(("captcha", field), f"is required when {key('captcha', 'service')} is set")
    limits = config.get("rate_limiting")
    if isinstance(limits, dict):
        for path in RATE_LIMITERS:
            limiter = grammar.get(limits, *path)
            if limiter is None:
                continue
            where = ("rate_limiting", *path)
            if not isinstance(limiter, dict):
                add(where, "must be a mapping {burst, per_second}")
                continue
            burst, rate = limiter.get("burst"), limiter.get("per_second")
            if not (grammar.is_int(burst) and burst >= 1):
                add((*where, "burst"), f"must be an integer of at least 1, not {burst!r}")
            if not (grammar.is_number(rate) and 0 < rate <= 1e9):
                add((*where, "per_second"), f"must be a number more than 0 and at most 1000000000, not {rate!r}")
    experimental = config.get("experimental")
    if isinstance(experimental, dict):
        for path, low, high in (
            (("access_token_ttl",), 60, 86400),
            (("compat_token_ttl",), 60, 86400),
            (("inactive_session_expiration", "ttl"), 600, 7776000),
        ):
            value = grammar.get(experimental, *path)
            if value is not None and not (grammar.is_int(value) and low <= value <= high):
                add(("experimental", *path), f"must be a number of seconds from {low} to {high}, not {value!r}")
        limit = experimental.get("session_limit")
        if isinstance(limit, dict):
            soft, hard = limit.get("soft_limit"), limit.get("hard_limit")
            if grammar.is_int(soft) and grammar.is_int(hard) and hard < soft:
                add(("experimental", "session_limit", "hard_limit"), f"must be at least soft_limit ({soft})")
            if limit.get("dangerous_hard_limit_eviction") is True and grammar.is_int(hard) and hard < 2:
                add(
                    ("experimental", "session_limit", "hard_limit"),
                    "must be at least 2 when dangerous_hard_limit_eviction is true",
                )
    telemetry = config.get("telemetry")
    if isinstance(telemetry, dict):
        for path in (("sentry", "sample_rate"), ("sentry", "traces_sample_rate"), ("tracing", "sample_rate")):
            value = grammar.get(telemetry, *path)
            if value is not None and not (grammar.is_number(value) and 0 <= value <= 1):
                add(("telemetry", *path), f"must be a number from 0.0 to 1.0, not {value!r}")
    branding = config.get("branding")
    if isinstance(branding, dict):
        for field in ("policy_uri", "tos_uri"):
            if branding.get(field) is not None and not grammar.is_url(branding[field]):
                add(("branding", field), f"must be {grammar.KINDS['url']}, not {branding[field]!r}")
    for name in ("account", "oauth"):
        section = config.get(name)
        if isinstance(section, dict):
            for field, value in section.items():
                if not isinstance(value, bool):
                    add((name, field), f"must be true or false, not {value!r}")
    upstream = config.get("upstream_oauth2")
    if isinstance(upstream, dict) and not isinstance(upstream.get("providers"), list):
        add(("upstream_oauth2", "providers"), f"is required when {key('upstream_oauth2')} is set (a list of providers)")


PKCE_METHODS = ("auto", "always", "never")


RESPONSE_MODES = ("query", "form_post")


BACKCHANNEL_LOGOUT = ("do_nothing", "logout_browser_only", "logout_all")


ON_CONFLICT = ("fail", "add", "replace", "set")


TRACING_EXPORTERS = ("none", "stdout", "otlp")


METRICS_EXPORTERS = ("none", "stdout", "otlp", "prometheus")


PROPAGATORS = ("tracecontext", "baggage", "jaeger")


# url::Url::parse of an absolute URL: a scheme first; http(s) need a host after '//'
_ABSOLUTE_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):(?P<rest>[^\s\x00-\x1f\x7f]+)")


_HTTP_AUTHORITY = re.compile(r"//(?:[^/?#@]*@)?(?:\[[0-9A-Fa-f:.]+\]|[^/?#@:\[\]]+)(?::[0-9]*)?(?:[/?#].*)?")


_REDIRECT_URI = "an absolute URL (e.g. https://app.example.com/callback, or a native app's io.example.app:/callback)"


_EMPTY = " (MAS takes an empty string as a value, not as unset: remove the key)"


def _given(value):
    """Whether MAS sees ``value`` as set (an Option that is Some): anything but null, '' included."""
    return value is not None


def _empty(value):
    """What to add to a refusal of ``value`` when it is an empty string."""
    return _EMPTY if value == "" else ""


def is_absolute_url(value, http=False):
    """An absolute URL as url::Url parses it (a scheme first); ``http``: an http(s) URL with a host."""
    match = _ABSOLUTE_URL.fullmatch(value) if isinstance(value, str) else None
    if not match:
        return False
    if match["scheme"].lower() in ("http", "https"):
        return bool(_HTTP_AUTHORITY.fullmatch(match["rest"]))
    return not http


def _is_sentry_dsn(value):
    """A DSN as sentry-types parses it (``Dsn::from_str``):
    ``http(s)://<public key>[:<secret key>]@<host>[:<port>]/[<path>/]<project id>``."""
    if not is_absolute_url(value, http=True):
        return False
    try:
        parts = urllib.parse.urlsplit(value)
        _ = parts.port
    except ValueError:
        return False
    return bool(parts.username) and bool(parts.hostname) and bool(parts.path.strip("/"))


def _one_of(value, choices, fail, path):
    """Refuse ``value`` unless it is unset or one of the serde names ``choices``."""
    if value is not None and value not in choices:
        fail(path, f"must be one of {', '.join(choices)}, not {value!r}")


def _check_provider_types(provider, fail):
    """A provider's enums (upstream_oauth2.rs ``PkceMethod``, ``ResponseMode``,
    ``OnBackchannelLogout``, ``OnConflict``)."""
    _one_of(provider.get("pkce_method"), PKCE_METHODS, fail, ("pkce_method",))
    _one_of(provider.get("response_mode"), RESPONSE_MODES, fail, ("response_mode",))
    _one_of(provider.get("on_backchannel_logout"), BACKCHANNEL_LOGOUT, fail, ("on_backchannel_logout",))
    localpart = grammar.get(provider, "claims_imports", "localpart")
    if isinstance(localpart, dict):
        _one_of(localpart.get("on_conflict"), ON_CONFLICT, fail, ("claims_imports", "localpart", "on_conflict"))


def _check_client_types(client, index, add):
    """A client's canonical ULID and its URLs (clients.rs: ``Ulid``, ``Option<Url>``, ``Vec<Url>``)."""
    cid = client.get("client_id")
    if isinstance(cid, str) and grammar.ULID.fullmatch(cid) and cid != cid.upper():
        add(
            (index, "client_id"),
            f"must be upper case ({cid.upper()}): MAS reads a lower-case ULID but knows the client by its"
            " canonical upper-case ID, the only form policy.data.admin_clients matches",
        )
    for field in ("client_uri", "jwks_uri"):
        value = client.get(field)
        if value is not None and not is_absolute_url(value, http=True):
            add((index, field), f"must be an absolute http(s) URL (e.g. https://app.example.com/), not {value!r}")
    uris = client.get("redirect_uris")
    if uris is not None and not isinstance(uris, list):
        add((index, "redirect_uris"), f"must be a list, each {_REDIRECT_URI}")
    for rindex, uri in enumerate(uris if isinstance(uris, list) else []):
        if not is_absolute_url(uri):
            add((index, "redirect_uris", rindex), f"must be {_REDIRECT_URI}, not {uri!r}")


def _check_admin_clients(admins, add):
    """policy.data.admin_clients: the policy compares each with a client's canonical (upper-case) ID."""
    for index, cid in enumerate(admins if isinstance(admins, list) else []):
        if isinstance(cid, str) and grammar.ULID.fullmatch(cid) and cid != cid.upper():
            add(
                (index,),
                f"must be upper case ({cid.upper()}): the policy compares it with the client's canonical"
                " upper-case ID, so a lower-case one never matches",
            )


def _rules_types(config, add, key):
    """experimental (session_limit, inactive_session_expiration), telemetry, database durations."""
    experimental = config.get("experimental") if isinstance(config.get("experimental"), dict) else {}
    for name, fields in (("session_limit", "soft_limit, hard_limit"), ("inactive_session_expiration", "ttl")):
        if experimental.get(name) is not None and not isinstance(experimental[name], dict):
            add(("experimental", name), f"must be a mapping ({fields}, ...), not {experimental[name]!r}")
    limit = experimental.get("session_limit")
    if isinstance(limit, dict):
        where = ("experimental", "session_limit")
        for field in ("soft_limit", "hard_limit", "max_session_threshold"):
            value = limit.get(field)
            if value is None and field != "max_session_threshold":
                add(
                    (*where, field),
                    f"is required when {key(*where)} is set (a whole number of sessions, at least 1;"
                    " hard_limit at least soft_limit)",
                )
            elif value is not None and not (grammar.is_int(value) and value >= 1):
                add((*where, field), f"must be a whole number of at least 1 (MAS refuses 0), not {value!r}")
    expiration = experimental.get("inactive_session_expiration")
    if isinstance(expiration, dict) and expiration.get("ttl") is None:
        where = ("experimental", "inactive_session_expiration")
        add((*where, "ttl"), f"is required when {key(*where)} is set (seconds, from 600 to 7776000)")
    telemetry = config.get("telemetry") if isinstance(config.get("telemetry"), dict) else {}
    for section, choices in (("tracing", TRACING_EXPORTERS), ("metrics", METRICS_EXPORTERS)):
        _one_of(grammar.get(telemetry, section, "exporter"), choices, add, ("telemetry", section, "exporter"))
    propagators = grammar.get(telemetry, "tracing", "propagators")
    if propagators is not None and not isinstance(propagators, list):
        add(("telemetry", "tracing", "propagators"), f"must be a list of {', '.join(PROPAGATORS)}")
    for index, propagator in enumerate(propagators if isinstance(propagators, list) else []):
        _one_of(propagator, PROPAGATORS, add, ("telemetry", "tracing", "propagators", index))
    dsn = grammar.get(telemetry, "sentry", "dsn")
    if dsn not in (None, "") and not _is_sentry_dsn(dsn):
        add(
            ("telemetry", "sentry", "dsn"),
            "must be a Sentry DSN, http(s)://<public key>@<host>/<project id> (e.g."
            " https://abc123@o1.ingest.sentry.io/42): MAS panics on every mas-cli command otherwise",
        )
    database = config.get("database") if isinstance(config.get("database"), dict) else {}
    for field in ("connect_timeout", "idle_timeout", "max_lifetime"):
        value = database.get(field)
        # connect_timeout is no Option: null is refused too
        if (value is not None or (field == "connect_timeout" and field in database)) and not (
            grammar.is_int(value) and value >= 0
        ):
            add(("database", field), f"must be a whole number of seconds (e.g. 30), not {value!r}")


def validate_mas_config(data, base):
    """MAS's runtime rules on the config.yaml the formula would write
    (``data["mas_config"]``, ``base``: the same without mas:config)."""
    config = data["mas_config"]
    errors = []

    def section(name, rules, *extra):
        value = config.get(name)
        if not isinstance(value, dict):
            return

        def key(*sub):
            return config_key(data, (name, *sub))

        def add(sub, message):
            errors.append(f"{key(*sub)}: {message}")

        rules(value, *extra, add, key)

    section("http", _rules_http, base["http"])
    section("database", _rules_database)
    section("email", _rules_email)
    section("passwords", _rules_passwords)
    section("secrets", _rules_secrets)
    section("matrix", _rules_matrix)
    providers = grammar.get(data["config"], "upstream_oauth2", "providers")
    if isinstance(providers, list):
        checker = grammar.Errors()
        check_providers(
            providers,
            lambda sub, message: checker.append(
                f"{grammar.key('config', 'upstream_oauth2', 'providers', *sub)}: {message}"
            ),
            lambda *sub: grammar.key("config", "upstream_oauth2", "providers", *sub),
        )
        errors.extend(checker)
    clients = data["config"].get("clients")
    if isinstance(clients, list):
        _rules_clients(
            clients,
            lambda sub, message: errors.append(f"{grammar.key('config', 'clients', *sub)}: {message}"),
            lambda *sub: grammar.key("config", "clients", *sub),
        )
    _rules_misc(
        config,
        lambda sub, message: errors.append(f"{config_key(data, sub)}: {message}"),
        lambda *sub: config_key(data, sub),
    )
    _rules_types(
        config,
        lambda sub, message: errors.append(f"{config_key(data, sub)}: {message}"),
        lambda *sub: config_key(data, sub),
    )
    _check_admin_clients(
        grammar.get(data["config"], "policy", "data", "admin_clients"),
        lambda sub, message: errors.append(
            f"{grammar.key('config', 'policy', 'data', 'admin_clients', *sub)}: {message}"
        ),
    )
    return errors
