"""The reverse proxy's files for a map: nginx snippets or a Traefik configuration carrying MAS's public route and the compatibility layer.

With MAS authoritative, Synapse no longer serves ``/_matrix/client/*/login``,
``/logout`` or ``/refresh``: :func:`settings` turns the formula's map into the
files ``mas.proxy`` writes (the compatibility routes, MAS's public path,
optionally the client well-known), :func:`traefik_labels` carries the same
routers as docker labels. While ``mas:migration_in_progress`` is true the
compatibility routes are left out (logins keep going to Synapse). Files of
another proxy type that the formula wrote earlier (``leftovers``) are cleaned
in the same run, so a switch from nginx to Traefik leaves no route behind.
"""

import json

from salt.exceptions import SaltInvocationError

from mas_formula import render

#: Client-API paths MAS serves through its ``compat`` resource: any single
#: version segment, then login/logout/refresh and everything below them.
COMPAT_REGEX = r"^/_matrix/client/[^/]+/(login|logout|refresh)(/.*)?$"


def nginx_string(value):
    """Quote ``value`` for an nginx single-quoted string (``$`` cannot be escaped)."""
    if "$" in value:
        raise SaltInvocationError(f"mas: '$' cannot appear in nginx literal text: {value!r}")
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def well_known_client(homeserver_base_url, public_base, migrating=False):
    """The ``/.well-known/matrix/client`` document: ``m.homeserver`` and, unless migrating, ``org.matrix.msc2965.authentication`` ``{issuer, account}``."""
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
        matrix["well_known"] = nginx_string(json.dumps(doc, sort_keys=True, separators=(",", ":")))
    files = [
        {
            "name": "snippet",
            "path": nginx["snippet_path"],
            "template": "nginx-snippet.conf.jinja",
            "context": matrix,
            "server": matrix_host,
        }
    ]
    if separate_host:
        files.append(
            {
                "name": "public-snippet",
                "path": nginx["public_snippet_path"],
                "template": "nginx-snippet.conf.jinja",
                "context": {
                    "upstream": upstream,
                    "compat": None,
                    "public": public,
                    "well_known": None,
                    "disabled": False,
                },
                "server": mas["hostname"],
            }
        )
    return {"files": files, "check": ["nginx", "-t"], "service": nginx["service"]}


def traefik_config(mas, matrix_host, mas_url, entrypoint, certresolver="", tls=True):
    """The Traefik (v3) dynamic configuration for the file provider: a router for the compatibility routes on the
    Matrix host (absent while migrating, with an ``addPrefix`` middleware when MAS has a path prefix), a router for
    MAS\'s public path on MAS\'s host, and the MAS service."""
    name = mas["service"]["name"]
    prefix = mas["path_prefix"]
    tls = _router_tls(tls, certresolver)
    public_rule = f"Host(`{mas['hostname']}`)"
    if prefix != "/":
        public_rule += f" && PathPrefix(`{prefix}/`)"
    routers = {name: {"rule": public_rule, "entryPoints": [entrypoint], "service": name}}
    middlewares = {}
    if not mas["migration_in_progress"]:
        compat = {
            "rule": f"Host(`{matrix_host}`) && PathRegexp(`{COMPAT_REGEX}`)",
            "entryPoints": [entrypoint],
            "service": name,
            "priority": 1000,
        }
        if prefix != "/":
            middlewares[f"{name}-compat-prefix"] = {"addPrefix": {"prefix": prefix}}
            compat["middlewares"] = [f"{name}-compat-prefix"]
        routers[f"{name}-compat"] = compat
    if tls is not None:
        for router in routers.values():
            router["tls"] = dict(tls)
    http = {
        "routers": routers,
        "services": {name: {"loadBalancer": {"servers": [{"url": mas_url}], "passHostHeader": True}}},
    }
    if middlewares:
        http["middlewares"] = middlewares
    return {"http": http}


def _router_tls(tls, certresolver):
    """The routers' ``tls`` section: ``None`` (no TLS), ``{}`` or ``{certResolver: ...}``."""
    if not tls:
        return None
    return {"certResolver": certresolver} if certresolver else {}


def traefik_labels(config, port):
    """Docker container labels carrying the routers and middlewares of :func:`traefik_config` (Traefik\'s docker
    provider), with the service pointed at the container\'s ``port``."""
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


def _candidates(proxy, kind, reason):
    """Every file the proxy type ``kind`` may have written, emptied (nginx:
    an ``include`` of a missing file breaks nginx) or removed (Traefik)."""
    if kind == "nginx":
        keys, action = ("snippet_path", "public_snippet_path"), "empty"
    else:
        keys, action = ("config_path",), "absent"
    return [
        {
            "name": key[: -len("_path")].replace("_", "-"),
            "kind": kind,
            "path": proxy[kind][key],
            "action": action,
            "template": "nginx-snippet.conf.jinja",
            "server": "",
            "context": {"upstream": None, "compat": None, "public": None, "well_known": None, "disabled": reason},
        }
        for key in keys
        if proxy[kind].get(key)
    ]


def _leftovers(proxy, kind, separate_host, current):
    """The files of the other proxy types (and nginx's public snippet once MAS
    shares the homeserver's host) that the formula wrote and that still route
    to MAS, with how to reload their proxy."""
    found = []
    for other in ("nginx", "traefik"):
        if other != kind:
            found += _candidates(proxy, other, f"MAS is not routed through {other} (mas:proxy:type is {kind})")
    if kind == "nginx" and not separate_host:
        found += [
            c
            for c in _candidates(proxy, "nginx", "MAS shares the homeserver's host name now")
            if c["name"] == "public-snippet"
        ]
    found = [
        f
        for f in found
        if f["path"] not in current and render.managed_by_formula(f["path"]) and not _is_emptied(f["path"])
    ]
    for f in found:
        verb = "managed" if f["action"] == "empty" else "absent"
        f["id"] = f"mas-proxy-file-file-{verb}-leftover-{f['kind']}-{f['name']}"
    reloads = []
    for other in ("nginx", "traefik"):
        ids = [f["id"] for f in found if f["kind"] == other]
        if ids:
            check = ["nginx", "-t"] if other == "nginx" else None
            reloads.append({"kind": other, "service": proxy[other]["service"], "check": check, "ids": ids})
    return found, reloads


def _is_emptied(path):
    """True when an nginx snippet was already emptied by the formula (no route left)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(65536)
    except (OSError, UnicodeDecodeError):
        return False
    return not any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines())


def settings(mas, clean=False):
    """What ``mas.proxy`` manages for the map ``mas`` (see ``mas_proxy.settings``); ``clean``: every file the
    type may have written, to empty or remove."""
    proxy = mas["proxy"]
    kind = proxy["type"]
    matrix_host = proxy.get("matrix_hostname", "")
    out = {
        "type": kind,
        "files": [],
        "check": None,
        "reload": bool(proxy["reload"]),
        "service": None,
        "labels": {},
        "leftovers": [],
        "leftover_reloads": [],
    }
    if clean:
        if kind == "none":
            return out
        # nginx fails on an include of a missing file: existing snippets are
        # emptied (no route left), never deleted.
        out["files"] = _candidates(proxy, kind, "MAS is disabled (mas:enabled is false)")
        out["service"] = proxy[kind]["service"]
        out["check"] = ["nginx", "-t"] if kind == "nginx" else None
        return out
    separate_host = mas["hostname"] != matrix_host
    if kind == "nginx":
        out.update(_nginx(mas, proxy, matrix_host, separate_host))
    elif kind == "traefik":
        out.update(_traefik(mas, proxy, matrix_host))
    current = {f["path"] for f in out["files"]}
    out["leftovers"], out["leftover_reloads"] = _leftovers(proxy, kind, separate_host, current)
    return out


def _traefik(mas, proxy, matrix_host):
    out = {}
    traefik = proxy["traefik"]
    mas_url = traefik["mas_url"]
    config = traefik_config(
        mas, matrix_host, mas_url, traefik["entrypoint"], traefik.get("certresolver") or "", traefik.get("tls", True)
    )
    out["files"] = [
        {
            "name": "config",
            "path": traefik["config_path"],
            "template": "traefik-dynamic.yml.jinja",
            "context": {"config": config},
            "server": matrix_host,
        }
    ]
    out["service"] = traefik["service"]
    if mas["runtime"] == "docker":
        out["labels"] = traefik_labels(config, mas["http"]["web_bind"].rpartition(":")[2])
    return out
