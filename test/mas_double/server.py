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

import ipaddress
import json
import logging
import os
import re
import signal
import socket
import threading
from pathlib import Path

from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from mas_double import admin_api, compat, db, faults, oauth, share
from mas_double import config as config_mod
from mas_double.config import ConfigError, MasConfig, os_error
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


def _parse_socket_address(address: str) -> tuple[str, int] | None:
    """Rust's ``str::parse::<SocketAddr>()``: ``a.b.c.d:port`` or ``[v6]:port``, nothing else."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        version = 6
    else:
        version = 4
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version != version or (version == 4 and not re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", host)):
        return None
    return host, int(port)


def parse_bind(bind: dict) -> tuple[str, int | None]:
    """``(host, port)`` of a TCP bind or ``("unix://<path>", None)`` of a socket, as ``mas-cli server`` binds them.

    ``address`` must be a literal socket address (``crates/cli/src/server.rs``:
    ``address.parse::<SocketAddr>()``); ``host`` is an IP or a name, resolved,
    the first address wins; no ``host`` tries ``[::]`` then ``0.0.0.0``.

    Raises:
        ConfigError: with MAS's wording.
    """
    if "socket" in bind:
        return f"unix://{bind['socket']}", None
    if "port" in bind and isinstance(bind["port"], int):
        host = bind.get("host")
        if host is None:
            return "::" if socket.has_ipv6 else "0.0.0.0", int(bind["port"])
        try:
            infos = socket.getaddrinfo(str(host), int(bind["port"]), type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise ConfigError(
                f"could not parse listener host\n\nCaused by:\n    failed to lookup address information: {exc.strerror}"
            ) from exc
        return str(infos[0][4][0]), int(bind["port"])
    if "address" in bind:
        address = str(bind["address"])
        parsed = _parse_socket_address(address)
        if parsed is None:
            raise ConfigError(
                f"could not parse listener address {address}\n\nCaused by:\n    invalid socket address syntax"
            )
        return parsed
    # an unknown shape deserialises as {fd: 0, kind: tcp} (an untagged enum with defaults)
    kind = "unix socket" if bind.get("kind") == "unix" else "listener"
    raise ConfigError(f"no {kind} found on file descriptor")


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


#: The sections ``server`` validates when it loads its config (``AppConfig``):
#: clients and upstream providers are checked by the config sync, telemetry by every command.
APP_SECTIONS = (
    "http",
    "database",
    "email",
    "passwords",
    "secrets",
    "matrix",
    "rate_limiting",
    "captcha",
    "experimental",
)


def _share_path(configured: object, default: str) -> str:
    """A share path as MAS opens it: relative to the working directory unless absolute (dist defaults)."""
    return str(configured) if configured else default


def load_policy(config: MasConfig) -> None:
    """Step 7: open the OPA policy (``policy.wasm_module``, default ``./share/policy.wasm``)."""
    path = _share_path(config.section("policy").get("wasm_module"), "./share/policy.wasm")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"failed to open OPA WASM policy file\n\nCaused by:\n    {os_error(exc)}") from exc
    if not data.startswith(share.WASM_HEADER[:4]):
        raise ConfigError(
            "failed to load the policy\n\nCaused by:\n    0: failed to compile WASM module\n"
            "    1: failed to parse WebAssembly module"
        )


def load_templates(config: MasConfig) -> None:
    """Step 11: the assets manifest, then the translations, then the templates directory."""
    templates = config.section("templates")
    path = _share_path(templates.get("path"), "./share/templates/")
    manifest = _share_path(templates.get("assets_manifest"), "./share/manifest.json")
    translations = _share_path(templates.get("translations_path"), "./share/translations/")
    head = f"Failed to load the templates at {path}\n\nCaused by:\n"
    try:
        text = Path(manifest).read_text()
    except OSError as exc:
        raise ConfigError(f"{head}    0: failed to read the assets manifest\n    1: {os_error(exc)}") from exc
    try:
        json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{head}    0: invalid assets manifest\n    1: {exc}") from exc
    try:
        entries = sorted(Path(translations).iterdir())
    except OSError as exc:
        raise ConfigError(
            f"{head}    0: failed to load the translations\n"
            f'    1: Failed to load translation directory "{translations}"\n    2: {os_error(exc)}'
        ) from exc
    for entry in entries:
        if not re.fullmatch(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*", entry.stem) or entry.suffix != ".json":
            raise ConfigError(f'{head}    0: failed to load the translations\n    1: Invalid locale for file "{entry}"')
    if not Path(path).is_dir():
        raise ConfigError(f"{head}    No such file or directory (os error 2)")


def load_mailer(config: MasConfig) -> None:
    """Step 13 (unless ``--no-worker``): every transport's ``from``/``reply_to`` parse as one mailbox."""
    email = config.section("email")
    default = '"Authentication Service" <root@localhost>'
    for field in ("from", "reply_to"):
        error = config_mod.mailbox_error(email.get(field, default))
        if error:
            raise ConfigError(f"invalid email configuration: invalid '{field}' address\n\nCaused by:\n    {error}")
    if email.get("transport") == "smtp":
        config.email_password()


def load_password_manager(config: MasConfig) -> None:
    """Step 14: versions must be unique (not checked by ``config check``); scheme secrets are read."""
    if not config.passwords_enabled:
        return
    versions = [scheme.version for scheme in config.password_schemes()]
    if len(versions) != len(set(versions)):
        raise ConfigError("Multiple password schemes have the same versions")


def serve(config: MasConfig, no_migrate: bool = False, no_worker: bool = False, no_sync: bool = False) -> int:
    """Run the server in the foreground until SIGTERM/SIGINT; returns the exit code.

    Starts in the order of ``crates/cli/src/commands/server.rs``: config, database,
    migrations, encryption secret, (config sync: its sections validated), signing
    keys, policy, templates, homeserver secret, mailer, password manager, listeners.
    """
    config_mod.check(config, sections=APP_SECTIONS)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    if no_migrate:
        with config.connect(autocommit=True) as conn:
            if not db.schema_present(conn):
                raise ConfigError("The database has pending migrations. Run `mas-cli database migrate` first.")
    else:
        db.ensure_schema(config)
    config.encryption_key()
    if not no_sync:
        config_mod.check(config, schema=False, sections=("clients", "upstream_oauth2"))
    config.signing_keys()
    load_policy(config)
    load_templates(config)
    config.matrix_secret()
    if not no_worker:
        load_mailer(config)
    load_password_manager(config)
    state = ServerState(config)
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
