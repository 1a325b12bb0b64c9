"""``mas-cli server`` of the double: the HTTP listeners of ``http.listeners``.

Each listener gets a threaded werkzeug server per bind (``{address:
"host:port"}``, ``{host, port}`` or ``{socket}``; ``fd`` binds are refused)
serving the listener's resources under its optional ``prefix``:

* ``health``: ``GET /health`` -> ``ok`` after ``SELECT 1``;
* ``discovery``: ``GET /.well-known/openid-configuration``, ``GET /oauth2/keys.json``;
* ``oauth``: ``POST /oauth2/token|introspect|revoke`` (:mod:`mas_double.oauth`);
* ``compat``: the legacy login API (:mod:`mas_double.compat`);
* ``adminapi``: ``/api/admin/v1`` and ``/api/spec.json`` (:mod:`mas_double.admin_api`);
* ``human``: ``GET /`` and ``GET /account/`` as a tiny HTML page;
* ``prometheus``: ``GET /metrics`` (empty exposition);
* ``graphql``, ``assets``, ``connection-info``: accepted, answer 404.

The process runs in the foreground until SIGTERM/SIGINT, then stops its
listeners and worker and exits 0.  Before listening it loads the schema unless
``--no-migrate`` (which refuses to start on an empty database), and starts the
job worker unless ``--no-worker``.  ``MAS_DOUBLE_FAULT=refuse`` makes it exit 1
(database unreachable) without binding; ``http500`` answers every request 500;
``slow`` delays every response.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from mas_double import admin_api, compat, db, faults, oauth
from mas_double import config as config_mod
from mas_double.config import ConfigError, MasConfig
from mas_double.state import ServerState, json_response
from mas_double.tracing import Logger
from mas_double.worker import Worker

LOG = Logger("mas_cli::server")

KNOWN_RESOURCES = frozenset(
    {
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
    }
)


class ListenerApp:
    """The WSGI application of one listener (its resources under its prefix)."""

    def __init__(self, state: ServerState, listener: dict):
        self.state = state
        self.resources = {r["name"] for r in listener.get("resources") or []}
        self.prefix = (listener.get("prefix") or "").rstrip("/")

    def __call__(self, environ, start_response):
        request = Request(environ)
        faults.maybe_slow()
        if faults.active("http500"):
            response = json_response(500, {"error": "internal_server_error", "error_description": "MAS_DOUBLE_FAULT"})
        else:
            try:
                response = self.dispatch(request)
            except ConfigError as exc:
                LOG.error(f"Request failed: {str(exc).splitlines()[0]}")
                response = json_response(500, {"error": "internal_server_error"})
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        """Route ``request`` to the first resource that handles its path."""
        path = request.path
        if self.prefix:
            if path != self.prefix and not path.startswith(self.prefix + "/"):
                return Response("Not Found", status=404)
            path = path[len(self.prefix) :] or "/"
        for handler in (self._health, self._discovery, self._oauth, self._compat, self._admin, self._human):
            response = handler(request, path)
            if response is not None:
                return response
        return Response("Not Found", status=404)

    def _health(self, request: Request, path: str) -> Response | None:
        if "health" in self.resources and path == "/health" and request.method in ("GET", "HEAD"):
            with self.state.db() as conn:
                conn.execute("SELECT 1").fetchone()
            return Response("ok", mimetype="text/plain")
        if "prometheus" in self.resources and path == "/metrics":
            return Response("", mimetype="text/plain; version=0.0.4")
        return None

    def _discovery(self, request: Request, path: str) -> Response | None:
        if "discovery" not in self.resources or request.method not in ("GET", "HEAD"):
            return None
        if path == "/.well-known/openid-configuration":
            return json_response(200, oauth.discovery_document(self.state))
        if path == "/oauth2/keys.json":
            return json_response(200, {"keys": []})
        return None

    def _oauth(self, request: Request, path: str) -> Response | None:
        if "oauth" not in self.resources or request.method != "POST":
            return None
        handlers = {
            "/oauth2/token": oauth.token,
            "/oauth2/introspect": oauth.introspect,
            "/oauth2/revoke": oauth.revoke,
        }
        handler = handlers.get(path)
        return handler(self.state, request) if handler else None

    def _compat(self, request: Request, path: str) -> Response | None:
        return compat.handle(self.state, request, path) if "compat" in self.resources else None

    def _admin(self, request: Request, path: str) -> Response | None:
        return admin_api.handle(self.state, request, path) if "adminapi" in self.resources else None

    def _human(self, request: Request, path: str) -> Response | None:
        if "human" in self.resources and request.method == "GET" and path in ("/", "/account", "/account/"):
            return Response("<!DOCTYPE html><title>MAS double</title><p>MAS test double</p>", mimetype="text/html")
        return None


def parse_bind(bind: dict) -> tuple[str, int | None]:
    """Return ``(host, port)`` for a TCP bind or ``("unix://<path>", None)`` for a socket.

    Raises:
        ConfigError: ``fd`` binds or malformed addresses.
    """
    if "socket" in bind:
        return f"unix://{bind['socket']}", None
    if "address" in bind:
        address = str(bind["address"])
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"invalid listener address {address!r}")
        return host.strip("[]") or "0.0.0.0", int(port)
    if "port" in bind:
        return str(bind.get("host") or "0.0.0.0"), int(bind["port"])
    raise ConfigError("the MAS double cannot listen on file descriptors")


def _bind_listeners(state: ServerState) -> list[BaseWSGIServer]:
    servers: list[BaseWSGIServer] = []
    try:
        for listener in state.config.listeners:
            unknown = {r.get("name") for r in listener.get("resources") or []} - KNOWN_RESOURCES
            if unknown:
                raise ConfigError(f"unknown listener resources: {sorted(unknown)}")
            app = ListenerApp(state, listener)
            for bind in listener.get("binds") or []:
                host, port = parse_bind(bind)
                if host.startswith("unix://") and os.path.exists(host[len("unix://") :]):
                    os.unlink(host[len("unix://") :])  # MAS >= 1.21 replaces stale sockets
                try:
                    servers.append(make_server(host, port or 0, app, threaded=True))
                except OSError as exc:
                    raise ConfigError(f"failed to bind {host}:{port}: {exc.strerror or exc}") from exc
                names = ", ".join(sorted(app.resources))
                where = host if port is None else f"http://{host}:{port}{app.prefix}/"
                LOG.info(f"Listening on {where} with resources [{names}]", name=listener.get("name"))
    except BaseException:
        for server in servers:
            server.server_close()
        raise
    return servers


def serve(config: MasConfig, no_migrate: bool = False, no_worker: bool = False) -> int:
    """Run the server in the foreground until SIGTERM/SIGINT; returns the exit code."""
    config_mod.check(config)
    # MAS reads every secret at startup: unreadable files or bad keys stop it here
    config.encryption_key()
    config.matrix_secret()
    config.signing_keys()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    state = ServerState(config)
    if no_migrate:
        with config.connect(autocommit=True) as conn:
            if not db.schema_present(conn):
                raise ConfigError("The database has pending migrations. Run `mas-cli database migrate` first.")
    else:
        db.ensure_schema(config)
    servers = _bind_listeners(state)
    worker = None if no_worker else Worker(state)
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    if worker is not None:
        worker.start()
    LOG.info("Starting task worker" if worker else "Not starting the task worker (--no-worker)")
    stop.wait()
    LOG.info("Shutting down")
    for server in servers:
        server.shutdown()
        server.server_close()
    if worker is not None:
        worker.stop()
    return 0
