"""Several hosts: the roles a minion holds (``mas:roles``), the addresses between roles on different minions, the secrets two roles share.

A deployment has four roles: ``mas`` (MAS itself: its files, service, users, doctor), ``synapse`` (Synapse's
drop-in, its copy of the shared secret, its restart), ``database`` (MAS's managed PostgreSQL role and database) and
``proxy`` (the reverse proxy's files). ``mas:roles`` lists those of one minion; the default, all four, is one host.
The roles are *split* when a minion lacks one of them.

Where two roles sit on different minions, the address one uses to reach the other must reach that other minion:
:func:`cross_host` refuses the names and addresses that mean "this very host" (:func:`grammar.is_this_host`),
naming the key, on the minion that uses the address. The secrets two roles share (:data:`SHARED_SECRETS`) must come
from pillar there (the formula's ext_pillar ``mas_secrets`` generates them on the master and serves each to the
minions of its two roles): :func:`validate` refuses a split deployment without them. Synapse's pepper, which MAS
must verify the migrated passwords with, is compared across the two minions without leaving either
(:func:`pepper_digest`).
"""

import hashlib
import hmac
import re
import urllib.parse

from mas_formula import grammar

ROLES = ("mas", "synapse", "database", "proxy")

#: The secrets two roles share: pillar path -> the roles that need it. The MAS<->Synapse shared secret and the
#: password of MAS's managed database role (the latter only with mas:database:manage).
SHARED_SECRETS = {
    ("secrets", "homeserver_secret"): ("mas", "synapse"),
    ("database", "password"): ("mas", "database"),
}

#: The one-time key the master gives both minions for a pepper comparison: lowercase hex, 32 to 128 digits.
NONCE = re.compile(r"[0-9a-f]{32,128}")

_WHAT = {"mas": "MAS", "synapse": "Synapse", "database": "its managed database", "proxy": "the reverse proxy"}


def held(roles):
    """``{role: bool}`` for a valid ``mas:roles`` list."""
    return {role: role in roles for role in ROLES}


def needs(role_flags, path, data):
    """Whether a minion holding ``role_flags`` needs the shared secret at ``path`` from pillar: it holds one of its
    two roles and not the other (the database password only with ``mas:database:manage``)."""
    first, second = SHARED_SECRETS[path]
    if path == ("database", "password") and grammar.get(data, "database", "manage") is not True:
        return False
    return role_flags[first] != role_flags[second]


def validate(data, errors):
    """``mas:roles``: a non-empty list of known roles, each once; on a split minion, the shared secrets it needs."""
    roles = data.get("roles")
    if not isinstance(roles, list) or not roles:
        errors.add(
            ("roles",),
            f"must be a non-empty list of {', '.join(ROLES)} (the default, all four, is one host), not {roles!r}",
        )
        return
    seen = []
    for index, role in enumerate(roles):
        if not isinstance(role, str) or role not in ROLES:
            errors.add(("roles", index), f"must be one of {', '.join(ROLES)}, not {role!r}")
        elif role in seen:
            errors.add(("roles", index), f"{role} is listed twice")
        else:
            seen.append(role)
    if len(seen) != len(roles) or not data.get("enabled"):
        return
    flags = held(seen)
    for path, (first, second) in SHARED_SECRETS.items():
        if needs(flags, path, data) and not grammar.is_set(grammar.get(data, *path)):
            errors.add(
                path,
                f"is required on this minion: {_WHAT[first]} and {_WHAT[second]} are on different minions"
                f" (mas:roles: {', '.join(seen)}) and both need the same value. The formula's ext_pillar mas_secrets"
                " generates it once on the master and serves it to exactly those two (docs/several-hosts.md); or set"
                " it in pillar targeted to both",
            )


def _host_of(url):
    try:
        return urllib.parse.urlsplit(url).hostname or ""
    except ValueError:
        return ""


def cross_host(data, unset):
    """The refusals of the addresses a split minion uses to reach a role on another minion and that name this very
    host; ``unset`` holds the pillar paths whose value the formula derived (its default). Checked where each
    address is used: the MAS minion reaches Synapse, the database and the proxy (the doctor), Synapse reaches MAS,
    the proxy reaches MAS; MAS listens where Synapse and the proxy reach it."""
    errors = grammar.Errors()
    if not data.get("enabled"):
        return errors
    role = data["role"]
    if all(role.values()):
        return errors
    others = f"mas:roles of this minion: {', '.join(data['roles'])}"

    def refuse(path, value, user, target, fix):
        origin = " (the formula's default when it is unset)" if path in unset else ""
        errors.add(
            path,
            f"{value!r}{origin} names this very host, but {_WHAT[target]} is on another minion ({others}), so"
            f" {user} would not reach it there: {fix}",
        )

    syn, proxy, doctor = data["synapse"], data["proxy"], data["doctor"]
    if role["mas"] and not role["synapse"] and grammar.is_this_host(_host_of(syn["endpoint"])):
        fix = "set it to Synapse's address as the MAS minion reaches it (e.g. http://synapse.example.internal:8008/)"
        refuse(("synapse", "endpoint"), syn["endpoint"], "MAS", "synapse", fix)
    if role["synapse"] and not role["mas"] and grammar.is_this_host(_host_of(syn["mas_endpoint"])):
        fix = "set it to MAS's address as the Synapse minion reaches it (e.g. http://mas.example.internal:8080/auth/)"
        refuse(("synapse", "mas_endpoint"), syn["mas_endpoint"], "Synapse", "mas", fix)
    if role["proxy"] and not role["mas"] and proxy["type"] in ("nginx", "traefik"):
        key = "mas_upstream" if proxy["type"] == "nginx" else "mas_url"
        value = proxy[proxy["type"]][key]
        if grammar.is_this_host(_host_of(value)):
            fix = "set it to MAS's address as the proxy minion reaches it (e.g. http://mas.example.internal:8080)"
            refuse(("proxy", proxy["type"], key), value, "the proxy", "mas", fix)
    database = data["database"]
    if role["mas"] and not role["database"] and database["manage"]:
        host = database["host"]
        if grammar.is_path(host) or grammar.is_this_host(host):
            fix = "set it to the database minion's address as the MAS minion reaches it (e.g. db.example.internal)"
            refuse(("database", "host"), host, "MAS", "database", fix)
    if role["mas"] and not role["proxy"]:
        url = doctor.get("proxy_url") or "https://127.0.0.1"
        if grammar.is_this_host(_host_of(url)):
            fix = "set it to the proxy's address as the MAS minion reaches it (e.g. https://proxy.example.internal)"
            refuse(("doctor", "proxy_url"), url, "the doctor (on the MAS minion)", "proxy", fix)
    if role["mas"] and not (role["synapse"] and role["proxy"]):
        split = grammar.split_hostport(data["http"]["web_bind"])
        if split and grammar.is_this_host(split[0], unspecified=False):
            away = "synapse" if not role["synapse"] else "proxy"
            errors.add(
                ("http", "web_bind"),
                f"{data['http']['web_bind']!r} listens on this host's loopback only, but {_WHAT[away]} is on another"
                f" minion ({others}) and reaches MAS over the network: bind an address it reaches (e.g. [::]:8080)",
            )
    return errors


def pepper_digest(nonce, pepper):
    """What a minion tells the master of a pepper (``bytes``, or None: none): ``"none"``, or the HMAC-SHA256 of the
    pepper keyed with the master's one-time ``nonce`` (hex). The master compares the MAS minion's with the Synapse
    minion's; neither pepper leaves its minion, and a digest is worth nothing for the next comparison.
    ``ValueError`` for a nonce outside :data:`NONCE`."""
    if not isinstance(nonce, str) or not NONCE.fullmatch(nonce):
        raise ValueError("the nonce must be 32 to 128 lowercase hex digits")
    if pepper is None:
        return "none"
    return hmac.new(nonce.encode(), pepper, hashlib.sha256).hexdigest()
