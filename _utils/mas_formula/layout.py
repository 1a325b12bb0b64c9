"""Where everything of a deployment lives and what MAS's config.yaml holds: the map derived from a valid pillar.

:func:`settings` is the map's whole computation (``mas.mapdata`` caches it per
run): the pillar validated (:mod:`mas_formula.pillar`), then every path the
formula writes or reads (:func:`paths`: one source for the SLS files and the
modules alike), the secret files in the order they are written
(:func:`secret_files`), the admin API's addresses, MAS's ``config.yaml``
(:func:`mas_config`: no secret inside, every secret through a ``*_file``
key) checked against MAS's own rules (:mod:`mas_formula.rules`), and for the
docker runtime the host paths ``bin/mas-cli`` mounts (:func:`docker_mounts`).
:func:`redact` leaves no secret value in the map.
"""

import copy
import os

import salt.utils.data
import salt.utils.dictupdate
from salt.exceptions import SaltInvocationError

from mas_formula import grammar, pillar, roles, rules

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


#: MAS's resources of the listeners the formula renders (its proxy, Synapse
#: and Salt reach MAS through them): a mas:config override must keep them.
WEB_RESOURCES = ("discovery", "human", "oauth", "compat", "graphql", "assets")


def _binary_paths(data, base):
    """Where mas-cli and its share/ directory are: in the versioned release
    directory of the tarball (one per ``source_hash``) or where the operator
    installed them."""
    binary = data["binary"]
    if data["runtime"] != "binary":
        return {"dist_dir": os.path.join(base, "dist"), "release_dir": None, "mas_binary": None, "share_dir": None}
    if grammar.is_set(binary["source"]):
        match = pillar.SOURCE_HASH.fullmatch(binary["source_hash"])
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


def local_upstream(web_bind):
    """``http://<host>:<port>`` of MAS's web listener, seen from this host."""
    host, _, port = web_bind.rpartition(":")
    host = host.strip("[]")
    if host in ("", "::", "0.0.0.0", "*"):  # noqa: S104 -- a wildcard bind is reached on loopback
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def paths(data):
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
        # Synapse's config for syn2mas on a MAS minion without Synapse (mas:synapse:database)
        "synapse_syn2mas_config": os.path.join(secrets_dir, "synapse-syn2mas.yaml"),
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


def provider_secret(paths, provider_id):
    return os.path.join(paths["secrets_dir"], f"upstream-{provider_id}.secret")


def secret_files(data, paths, pepper_source):
    """The secret files of the deployment, in the order they are written."""
    base = {
        "user": data["user"],
        "group": data["group"],
        "mode": "0600",
        "allow_rotation": False,
        "owner": secret_owner(paths),
        "tmp_dir": None,
        # MAS reads it (a change restarts MAS)
        "mas_reads": True,
    }
    files = []

    def add(name, path, kind, pillar_key=None, **extra):
        files.append({**base, "name": name, "path": path, "kind": kind, "pillar_key": pillar_key, **extra})

    add(
        "encryption",
        paths["encryption_secret"],
        "hex32",
        grammar.key("secrets", "encryption"),
        allow_rotation=grammar.get(data, "secrets", "allow_encryption_rotation"),
    )
    add("homeserver_secret", paths["homeserver_secret"], "token", grammar.key("secrets", "homeserver_secret"))
    add("admin_client_secret", paths["admin_client_secret"], "token")
    for filename, kind in SIGNING_KEYS:
        # staged in secrets_dir: MAS loads every file of keys_dir, an interrupted write's too
        add(f"key-{kind}", os.path.join(paths["keys_dir"], filename), kind, tmp_dir=paths["secrets_dir"])
    for name, path in (("database_password", ("database", "password")), ("email_password", ("email", "password"))):
        if grammar.is_set(grammar.get(data, *path)):
            add(name, paths[name], "pillar", grammar.key(*path))
    for index, provider in enumerate(data["upstream_oauth2_providers"]):
        if grammar.is_set(provider.get("client_secret")):
            add(
                f"provider-{provider['id']}",
                provider_secret(paths, provider["id"]),
                "pillar",
                grammar.key("upstream_oauth2_providers", index, "client_secret"),
            )
    if pepper_source:
        add("synapse_pepper", paths["synapse_pepper"], "pepper", grammar.key("synapse", "pepper"))
    if synapse_config_written(data):
        add(
            "synapse_config",
            paths["synapse_syn2mas_config"],
            "synapse_config",
            grammar.key("synapse", "database"),
            mas_reads=False,  # syn2mas's, not MAS's
        )
    return files


def synapse_config_written(data):
    """Whether the formula writes Synapse's config for syn2mas here: a MAS minion without Synapse (``mas:roles``)
    whose pillar gives Synapse's database (``mas:synapse:database``)."""
    return data["role"]["mas"] and not data["role"]["synapse"] and pillar.synapse_database_given(data)


def synapse_secret(data):
    """Where Synapse's copy of the shared secret comes from: ``{kind, source, pillar_key}``. Beside MAS, a copy of
    MAS's file (``kind: copy``); on a minion with Synapse and without MAS, the pillar value both minions are served
    (``kind: pillar``, ``mas:secrets:homeserver_secret``)."""
    if data["role"]["synapse"] and not data["role"]["mas"]:
        return {"kind": "pillar", "source": None, "pillar_key": grammar.key("secrets", "homeserver_secret")}
    return {"kind": "copy", "source": data["paths"]["homeserver_secret"], "pillar_key": None}


def secret_owner(paths):
    """How mas_secret tells the formula's own secret files (``owner`` of mas_secret.status)."""
    return {"record": paths["secret_record"], "dirs": [paths["secrets_dir"], paths["keys_dir"]]}


#: The map's paths (``paths``) of the formula's own directories, of the templates it renders there, and of the files
#: it keeps in its own directories (secrets and records): what no pillar key may place a file at, and what a purge
#: removes.
OWN_DIRECTORIES = ("base", "config_dir", "secrets_dir", "keys_dir", "data_dir", "bin_dir", "state_dir")
TEMPLATES = ("config_file", "labels_file", "mas_cli", "register_user")
OWN_FILES = (
    "encryption_secret",
    "homeserver_secret",
    "admin_client_secret",
    "database_password",
    "email_password",
    "synapse_pepper",
    "synapse_syn2mas_config",
    "syn2mas_marker",
    "syn2mas_lock",
    "secret_record",
    "synapse_admin_password",
    "password_fingerprints",
)


def validate_paths(data):
    """The files pillar places (unit, drop-in, Synapse's secret copy, proxy
    files) must not be one of the formula's own files or directories, nor lie
    where MAS or its account write, nor be the same file twice."""
    paths = data["paths"]
    errors = grammar.Errors()
    own = {paths[name]: name for name in (*OWN_DIRECTORIES, *TEMPLATES, *OWN_FILES) if name in paths}
    # the account writes data/; the others hold only the formula's secrets and records
    forbidden = {paths[name]: name for name in ("data_dir", "secrets_dir", "keys_dir", "state_dir")}
    placed = [(("service", "unit_dir"), paths["unit"]), (("synapse", "config_dir"), paths["synapse_dropin"])]
    if grammar.is_set(data["synapse"]["secret_path"]):
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
        if isinstance(token, dict) and grammar.is_path(token.get("path")):
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
            errors.add(key, f"{path} is also {grammar.key(*seen[path])}'s file: choose another path")
        seen.setdefault(path, key)
    return errors


def _split_bind(bind):
    """MAS's bind for ``HOST:PORT``: ``address`` is parsed as a literal socket
    address (an IP, IPv6 in brackets), so a host name becomes ``{host, port}``
    (MAS resolves it)."""
    host, port = grammar.split_hostport(bind)
    if grammar.is_ip(host):
        return {"address": f"[{host}]:{port}" if ":" in host else f"{host}:{port}"}
    return {"host": host, "port": port}


def _assets_resource(paths):
    """The ``assets`` resource, served from ``share/assets/`` with the binary runtime."""
    if paths["share_dir"]:
        return {"name": "assets", "path": os.path.join(paths["share_dir"], "assets") + "/"}
    return {"name": "assets"}


def mas_config(data, paths, pepper_file):
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
    proxies = data["http"].get("trusted_proxies")
    if proxies is not None:
        # as written: [] trusts no proxy (left out, MAS would trust its private and loopback defaults)
        http["trusted_proxies"] = [str(net) for net in proxies]

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
        if grammar.is_set(mail.get("port")):
            email["port"] = int(mail["port"])
        if grammar.is_set(mail.get("mode")):
            email["mode"] = mail["mode"]
        if grammar.is_set(mail.get("username")):
            email["username"] = mail["username"]
        if mail["password_set"]:
            email["password_file"] = paths["email_password"]
    elif mail["transport"] == "sendmail" and grammar.is_set(mail.get("command")):
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


def docker_mounts(data):
    """The host paths MAS reads outside ``<base_path>/config`` (the one directory the docker runtime mounts):
    ``*_file`` keys of ``mas:config`` and ``mas:upstream_oauth2_providers``, ``secrets.keys_dir``, and
    ``database.host``/``socket`` naming PostgreSQL's socket directory. ``(mounts, refusals)``: each is
    mounted read-only at the same path (``bin/mas-cli``), so it must be a path the ``--mount`` argument
    takes as it is."""
    found = []

    def walk(node, key):
        if isinstance(node, dict):
            for name, value in node.items():
                if isinstance(name, str) and name.endswith("_file") and value is not None:
                    found.append((grammar.key(*key, name), value))
                else:
                    walk(value, (*key, name))
        elif isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, (*key, index))

    walk(data["config"], ("config",))
    walk(data["upstream_oauth2_providers"], ("upstream_oauth2_providers",))
    config = data["mas_config"]
    db, keys_dir = config.get("database") or {}, grammar.get(config, "secrets", "keys_dir")
    if isinstance(db.get("host"), str) and db["host"].startswith("/"):
        found.append((rules.config_key(data, ("database", "host")), db["host"]))
    for cpath, value in ((("database", "socket"), db.get("socket")), (("secrets", "keys_dir"), keys_dir)):
        if value is not None:
            found.append((rules.config_key(data, cpath), value))
    config_dir, mounts, errors = data["paths"]["config_dir"], [], []
    for key, path in found:
        if not grammar.is_path(path):
            errors.append(
                f"{key}: with mas:runtime docker MAS reads it in the container, where the formula mounts it"
                f" read-only at the same path: must be {grammar.KINDS['path']}, not {path!r}"
            )
        elif path != config_dir and not path.startswith(config_dir + "/") and path not in mounts:
            mounts.append(path)
    return sorted(mounts), errors


def access_token(token, defaults):
    """A ``mas:users`` entry's ``access_token`` with what it does not say taken from ``defaults``
    (``mas:access_token_defaults``)."""
    filled = dict(token)
    for key, value in defaults.items():
        if filled.get(key) is None:
            filled[key] = value
    return filled


def redact(data):
    """Remove every secret value from ``data``; keep ``*_set`` flags instead."""
    data["secrets"]["encryption_set"] = grammar.is_set(data["secrets"].pop("encryption", None))
    data["secrets"]["homeserver_secret_set"] = grammar.is_set(data["secrets"].pop("homeserver_secret", None))
    data["database"]["password_set"] = grammar.is_set(data["database"].pop("password", None))
    data["email"]["password_set"] = grammar.is_set(data["email"].pop("password", None))
    data["synapse"]["pepper_set"] = grammar.is_set(data["synapse"].pop("pepper", None))
    data["synapse"]["registration_shared_secret_set"] = grammar.is_set(
        data["synapse"].pop("registration_shared_secret", None)
    )
    # Synapse settings given in pillar may hold Synapse secrets: the modules
    # read them from pillar themselves; the map keeps only their names.
    data["synapse"]["extra_config_keys"] = sorted(data["synapse"].pop("extra_config", {}))
    data["synapse"]["database_set"] = pillar.synapse_database_given(data)
    data["synapse"]["database"].pop("password", None)
    providers = []
    for provider in data["upstream_oauth2_providers"]:
        provider = dict(provider)
        if grammar.is_set(provider.pop("client_secret", None)):
            provider["client_secret_file"] = provider_secret(data["paths"], provider["id"])
        providers.append(provider)
    data["upstream_oauth2_providers"] = providers
    # a postgresql:// URI may carry a password: mas_syn2mas reads it from pillar
    syn2mas = data.get("syn2mas")
    if isinstance(syn2mas, dict) and "synapse_database_uri" in syn2mas:
        syn2mas["synapse_database_uri_set"] = grammar.is_set(syn2mas.pop("synapse_database_uri"))
    users = []
    for index, user in enumerate(data["users"]):
        token = user.get("access_token")
        users.append(
            {
                "username": user["username"],
                "admin": bool(user.get("admin", False)),
                "emails": list(user.get("emails") or []),
                "password_pillar_key": grammar.key("users", index, "password")
                if grammar.is_set(user.get("password"))
                else None,
                "locked": user.get("locked"),
                "password_update": user.get("password_update", "on_create"),
                "skip_password_check": bool(user.get("skip_password_check", False)),
                "absent": bool(user.get("absent", False)),
                "erase": bool(user.get("erase", False)),
                "access_token": access_token(token, data["access_token_defaults"]) if token else None,
            }
        )
    data["users"] = users


def settings(data, defaults, synapse_pepper):
    """The complete map of pillar ``data`` merged over ``defaults``: validated (every problem by key, raised as
    ``SaltInvocationError`` before anything else), then the derived host names, URLs, every path, the secret
    files, the admin API's addresses, MAS's ``config.yaml`` (checked against MAS's own rules) and, with the docker
    runtime, the host paths ``bin/mas-cli`` mounts. No secret value is left in it. ``synapse_pepper(data)`` reads
    Synapse's ``password_config.pepper`` from its config files (None when there is none)."""
    data = salt.utils.dictupdate.update(defaults, copy.deepcopy(salt.utils.data.decode(dict(data))), merge_lists=False)
    errors = pillar.validate(data)
    if errors:
        raise SaltInvocationError(grammar.INVALID + "\n- ".join(errors))
    prefix = data["path_prefix"]
    if grammar.is_set(data["server_name"]) and not grammar.is_set(data["hostname"]):
        data["hostname"] = f"matrix.{data['server_name']}"
    host = data["hostname"] or "localhost"
    data["public_base"] = f"https://{host}{'' if prefix == '/' else prefix}/"
    data["paths"] = paths(data)
    errors = validate_paths(data)
    if errors:
        raise SaltInvocationError(grammar.INVALID + "\n- ".join(errors))
    data["synapse"]["secret_path"] = data["paths"]["synapse_secret"]
    data["roles"] = [role for role in roles.ROLES if role in data["roles"]]
    data["role"] = roles.held(data["roles"])
    data["synapse_secret"] = synapse_secret(data)
    # the addresses the formula derives when unset: cross_host names them as defaults
    unset = {
        path
        for path in (
            ("synapse", "mas_endpoint"),
            ("proxy", "nginx", "mas_upstream"),
            ("proxy", "traefik", "mas_url"),
            ("doctor", "proxy_url"),
        )
        if not grammar.is_set(grammar.get(data, *path))
    }
    if not grammar.is_set(data["synapse"]["mas_endpoint"]):
        port = data["http"]["web_bind"].rsplit(":", 1)[-1]
        data["synapse"]["mas_endpoint"] = f"http://localhost:{port}{'' if prefix == '/' else prefix}/"
    if data["runtime"] == "docker" and not data["service"]["docker"]["network"]:
        # MAS reaches PostgreSQL and Synapse on localhost, and Salt, Synapse
        # and the proxy reach MAS there, as with the binary runtime
        data["service"]["docker"]["network"] = "host"
    proxy = data["proxy"]
    if not grammar.is_set(proxy.get("matrix_hostname")) and grammar.is_set(data["server_name"]):
        proxy["matrix_hostname"] = f"matrix.{data['server_name']}"
    upstream = local_upstream(data["http"]["web_bind"])
    internal = local_upstream(data["http"]["internal_bind"])
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
        if not grammar.is_set(proxy[kind].get(key)):
            proxy[kind][key] = upstream
    errors = roles.cross_host(data, unset)
    if errors:
        raise SaltInvocationError(grammar.INVALID + "\n- ".join(errors))
    pepper_source = "pillar" if grammar.is_set(data["synapse"].get("pepper")) else None
    if pepper_source is None and synapse_pepper(data) is not None:
        pepper_source = "synapse"
    data["secret_files"] = secret_files(data, data["paths"], pepper_source)
    if synapse_config_written(data) and not data["syn2mas"]["synapse_config_files"]:
        # what syn2mas, the preflight, the backup and the verification read on a MAS minion without Synapse
        data["syn2mas"]["synapse_config_files"] = [data["paths"]["synapse_syn2mas_config"]]
    data["secret_owner"] = secret_owner(data["paths"])
    redact(data)
    data["synapse"]["pepper_source"] = pepper_source
    pepper_file = data["paths"]["synapse_pepper"] if pepper_source else None
    data["mas_config"] = mas_config(data, data["paths"], pepper_file)
    errors = rules.validate_mas_config(data, mas_config(dict(data, config={}), data["paths"], pepper_file))
    data["docker_mounts"] = []
    if data["runtime"] == "docker":
        data["docker_mounts"], refusals = docker_mounts(data)
        errors += refusals
    if errors:
        raise SaltInvocationError(grammar.INVALID + "\n- ".join(errors))
    return data
