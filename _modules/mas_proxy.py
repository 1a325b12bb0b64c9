"""
The reverse proxy of the ``mas`` formula: nginx snippets or a Traefik configuration carrying MAS's public route and the compatibility layer.

With MAS authoritative, Synapse no longer serves ``/_matrix/client/*/login``,
``/logout`` or ``/refresh``: :py:func:`settings` turns the formula's map into
the files ``mas.proxy`` writes (the compatibility routes, MAS's public path,
optionally the client well-known), :py:func:`traefik_labels` carries the same
routers as docker labels, and :py:func:`check` runs ``nginx -t`` before a
reload. While ``mas:migration_in_progress`` is true the compatibility routes
are left out (logins keep going to Synapse). Files of another proxy type that
the formula wrote earlier (``leftovers``) are cleaned in the same run, so a
switch from nginx to Traefik leaves no route behind.
"""

import json

from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "mas_proxy"

#: Client-API paths MAS serves through its ``compat`` resource: any single
#: version segment, then login/logout/refresh and everything below them.
COMPAT_REGEX = r"^/_matrix/client/[^/]+/(login|logout|refresh)(/.*)?$"


def __virtual__():
    return __virtualname__


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

        salt-call mas_proxy.well_known_client https://matrix.example.com/ https://matrix.example.com/auth/
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
    tls
        TLS on the routers (``tls: {}``, or with the ``certresolver``), the
        playbook's way; ``False`` leaves ``tls`` off the routers, for an
        entrypoint that speaks plain HTTP (TLS ended in front of Traefik):
        Traefik never matches a TLS router on such an entrypoint.

    CLI Example:

    .. code-block:: bash

        salt-call mas_proxy.traefik_config "$(...mapdata...)" matrix.example.com http://127.0.0.1:8080 websecure
    """
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

        salt-call mas_proxy.traefik_labels "{http: {routers: {}}}" 8080
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
        if f["path"] not in current and __salt__["mas.managed_by_formula"](f["path"]) and not _is_emptied(f["path"])
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


def settings(mas=None, clean=False):
    """
    What ``mas.proxy`` manages, from the formula's map (``mapdata``).

    Returns ``{type, files: [{name, path, template, context, server}], check
    (argv run before a reload, or None), reload, service, labels, leftovers,
    leftover_reloads}``. With type ``none`` there are no files.
    ``leftovers`` are files of another proxy type the formula wrote that still
    route to MAS (emptied or removed in the same run), ``leftover_reloads``
    how to reload their proxy (``{kind, service, check, ids}``: the IDs of
    the leftover states). nginx gets one snippet for the Matrix server
    block (compatibility routes, MAS's public path when MAS shares the Matrix
    host, the optional well-known document) and, when MAS has its own host
    name, one for MAS's server block. Traefik gets one dynamic-configuration
    file; ``labels`` carries the same routers as docker labels for the docker
    runtime.

    mas
        The formula's map (default: ``mas.mapdata``).
    clean
        For ``mas.proxy.clean``: every file the type may have written (paths
        only, nothing validated), so that they can be removed.

    CLI Example:

    .. code-block:: bash

        salt-call mas_proxy.settings
    """
    mas = mas or __salt__["mas.mapdata"]()
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


def check(argv):
    """
    Run the proxy's own configuration test (``nginx -t``) before a reload and
    raise ``CommandExecutionError`` with its output when it fails.

    argv
        The command as a list (``check`` of :py:func:`settings`).

    CLI Example:

    .. code-block:: bash

        salt-call mas_proxy.check "['nginx', '-t']"
    """
    if not isinstance(argv, list) or not argv or not all(isinstance(arg, str) for arg in argv):
        raise SaltInvocationError(f"mas_proxy.check needs the command as a list of strings, not {argv!r}")
    res = __salt__["cmd.run_all"](argv, python_shell=False, output_loglevel="trace", ignore_retcode=True)
    output = (res.get("stdout", "") + "\n" + res.get("stderr", "")).strip()
    if res["retcode"] != 0:
        raise CommandExecutionError(
            f"{' '.join(argv)} failed (exit {res['retcode']}); the proxy was not reloaded:\n{output}",
            info={"result": res},
        )
    return output


def reload_states(prefix, service, check_argv, file_ids, suffix=""):
    """
    For the SLS files (``mas.proxy.reload``, ``mas.proxy.clean``): the states
    that test the proxy's configuration (when ``check_argv`` is set) and reload
    it, each on changes of the file states ``file_ids`` only (by state ID: an
    ``sls:`` requisite would also match every state the included SLS include).

    prefix
        The state IDs' start: ``<prefix>-check<suffix>``, ``<prefix>-reload<suffix>``.
    service
        The proxy's service (``service.reload``).
    check_argv
        The configuration test (``check`` of :py:func:`settings`), or empty.
    file_ids
        The ``file`` states whose changes reload the proxy.
    suffix
        The state IDs' end (the leftovers of another proxy type).

    CLI Example:

    .. code-block:: bash

        salt-call mas_proxy.reload_states mas-proxy-reload-module-run nginx "['nginx', '-t']" "['mas-proxy-file-file-managed-snippet']"
    """
    onchanges = [{"file": state_id} for state_id in file_ids]
    states = {}
    reload = [{"service.reload": [{"name": service}]}, {"onchanges": onchanges}]
    if check_argv:
        states[f"{prefix}-check{suffix}"] = {
            "module.run": [{"mas_proxy.check": [{"argv": check_argv}]}, {"onchanges": onchanges}]
        }
        reload.append({"require": [{"module": f"{prefix}-check{suffix}"}]})
    states[f"{prefix}-reload{suffix}"] = {"module.run": reload}
    return states
