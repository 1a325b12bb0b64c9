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

from salt.exceptions import CommandExecutionError, SaltInvocationError

import mas_formula

mas_formula.refresh()
from mas_formula import proxy  # noqa: E402  (after the refresh: a synced update is imported anew)

__virtualname__ = "mas_proxy"

COMPAT_REGEX = proxy.COMPAT_REGEX


def __virtual__():
    return __virtualname__


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
    return proxy.well_known_client(homeserver_base_url, public_base, migrating)


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
    return proxy.traefik_config(mas, matrix_host, mas_url, entrypoint, certresolver, tls)


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
    return proxy.traefik_labels(config, port)


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
    return proxy.settings(mas or __salt__["mas.mapdata"](), clean)


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
