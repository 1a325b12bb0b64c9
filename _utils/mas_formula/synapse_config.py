"""Synapse's configuration as Synapse loads it: its files (and the ``*.yaml`` of its drop-in directory) read and merged, later files winning whole top-level sections; and the config the formula writes for syn2mas on a MAS minion without Synapse.

Synapse's own files are only read, never written: the formula's modules read
them for the conflict rules, Synapse's pepper, its database and its secrets
(to scrub them). On a MAS minion without Synapse (``mas:roles``) they are on
another minion; :func:`for_syn2mas` builds, from pillar, the few settings
syn2mas and the formula's migration read there instead (a secret file of the
formula: it holds the database password).
"""

import os

import salt.utils.files
import salt.utils.yaml
from salt.exceptions import CommandExecutionError

DEFAULT_FILE = "/etc/matrix-synapse/homeserver.yaml"
SYN2MAS_BANNER = (
    "# Synapse's settings for syn2mas on this MAS minion (Synapse runs on another one), written by the mas formula\n"
    "# from pillar mas:synapse:database, mas:synapse:pepper, mas:upstream_oauth2_providers and\n"
    "# mas:synapse:extra_config. Not Synapse's own config: never load it into Synapse.\n"
)
EXTRA_ORIGIN = "pillar mas:synapse:extra_config"


def files(config_files, config_dir, exclude=()):
    """The files Synapse loads: ``config_files`` (default :data:`DEFAULT_FILE`), then the ``*.yaml`` of
    ``config_dir`` in sorted order, without ``exclude``."""
    found = list(config_files or []) or [DEFAULT_FILE]
    if config_dir and os.path.isdir(config_dir):
        for entry in sorted(os.listdir(config_dir)):
            path = os.path.join(config_dir, entry)
            if entry.endswith(".yaml") and os.path.isfile(path) and path not in found:
                found.append(path)
    exclude = set(exclude or [])
    return [f for f in found if f not in exclude]


def read(config_files, config_dir, extra_config=None, exclude=()):
    """``{"config": <merged mapping>, "origins": {<top-level key>: <file>}, "files": [<files read>]}`` of the files
    that exist, ``extra_config`` (Synapse settings Salt cannot see in files) merged last; unmasked."""
    merged, origins, read_files = {}, {}, []
    for path in files(config_files, config_dir, exclude):
        if not os.path.isfile(path):
            continue
        try:
            with salt.utils.files.fopen(path, "r") as handle:
                content = salt.utils.yaml.safe_load(handle) or {}
        except (OSError, salt.utils.yaml.YAMLError) as exc:
            raise CommandExecutionError(f"Cannot read the Synapse config file {path}: {exc}") from exc
        if not isinstance(content, dict):
            raise CommandExecutionError(f"The Synapse config file {path} is not a YAML mapping")
        read_files.append(path)
        for key in content:
            origins[key] = path
        merged.update(content)
    for key, value in (extra_config or {}).items():
        origins[key] = EXTRA_ORIGIN
        merged[key] = value
    return {"config": merged, "origins": origins, "files": read_files}


def oidc_idp_id(synapse_idp_id):
    """The ``idp_id`` of Synapse's ``oidc_providers`` entry whose users Synapse records as ``synapse_idp_id``
    (``oidc-<idp_id>``, or ``oidc``); None for another kind of provider (upstream's ``all_oidc_providers``)."""
    if synapse_idp_id == "oidc":
        return "oidc"
    if isinstance(synapse_idp_id, str) and synapse_idp_id.startswith("oidc-") and len(synapse_idp_id) > 5:
        return synapse_idp_id[5:]
    return None


def for_syn2mas(server_name, database, pepper=None, providers=(), extra_config=None):
    """The text of the Synapse config the formula writes for syn2mas on a MAS minion without Synapse.

    ``database``: ``mas:synapse:database`` (with its password); ``pepper``: ``mas:synapse:pepper``;
    ``providers``: MAS's upstream providers (``mas:upstream_oauth2_providers``, as the map holds them);
    ``extra_config``: ``mas:synapse:extra_config``, Synapse's settings pillar states (guest access, registration,
    3PID changes, ...), kept as given. The formula sets ``server_name``, ``database`` (``psycopg2``) and
    ``password_config.pepper``; ``oidc_providers``, unless ``extra_config`` lists Synapse's own, gets an entry
    (``idp_id``, ``issuer``, ``client_id``) for each provider whose ``synapse_idp_id`` names a Synapse OIDC provider,
    which is what syn2mas and the formula's preflight match Synapse's ``user_external_ids`` against. YAML, the keys
    sorted: the same pillar gives the same bytes."""
    conf = dict(extra_config or {})
    args = {"host": database["host"], "port": int(database["port"]), "dbname": database["name"]}
    args["user"] = database["user"]
    if database.get("password") not in (None, ""):
        args["password"] = str(database["password"])
    if database.get("sslmode"):
        args["sslmode"] = database["sslmode"]
    conf.update(server_name=server_name, database={"name": "psycopg2", "args": args})
    if pepper not in (None, ""):
        passwords = conf.get("password_config") if isinstance(conf.get("password_config"), dict) else {}
        conf["password_config"] = dict(passwords, pepper=str(pepper))
    if "oidc_providers" not in conf and "oidc_config" not in conf:
        oidc = []
        for provider in providers or []:
            idp_id = oidc_idp_id(provider.get("synapse_idp_id"))
            if idp_id:
                entry = {"idp_id": idp_id, "issuer": provider.get("issuer"), "client_id": provider.get("client_id")}
                oidc.append({key: value for key, value in entry.items() if value is not None})
        if oidc:
            conf["oidc_providers"] = oidc
    return SYN2MAS_BANNER + salt.utils.yaml.safe_dump(conf, default_flow_style=False, sort_keys=True)
