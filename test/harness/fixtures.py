"""pytest fixtures of the integration harness (exported by ``test/conftest.py``).

Session-scoped services, each stopped in its finalizer even when tests fail:

* ``pg`` -- a started :class:`~harness.postgres.PostgresCluster`.
* ``synapse_factory`` -- ``synapse_factory(server_name="example.com",
  database="sqlite" | "postgres" | PostgresCluster, start=False, **kwargs)``
  returns a new :class:`~harness.synapse.SynapseServer` (``"postgres"`` means
  the ``pg`` cluster); the generated base config is cached per server name.
* ``synapse`` -- a started, PostgreSQL-backed Synapse without MAS.  Shared by
  the whole session: do not leave drop-ins in its ``conf_d``.
* ``nginx_factory`` -- ``nginx_factory(**kwargs)`` returns a new, unstarted
  :class:`~harness.nginx.NginxServer`.
* ``echo_upstream`` -- ``echo_upstream("mas")`` returns a started
  :class:`EchoUpstream` that answers every request with
  ``{"upstream": name, "path": ..., "method": ...}``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from harness.nginx import NginxServer
from harness.postgres import PostgresCluster
from harness.synapse import SynapseServer, generate_config
from harness.util import LOOPBACK

__all__ = ["EchoUpstream", "echo_upstream", "nginx_factory", "pg", "synapse", "synapse_factory"]


def _stop_all(servers: list, what: str) -> None:
    """Stop every server, then raise the first failure (so none is left running)."""
    errors = []
    for server in reversed(servers):
        try:
            server.stop()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise RuntimeError(f"failed to stop {len(errors)} {what}: {errors[0]}") from errors[0]


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster started once per session on a free loopback port.

    Its directory is outside pytest's temporary tree: a pytest session started
    meanwhile (another checkout, another engineer) resets that tree's mode to
    0700, which would cut the ``postgres`` user off its own data directory."""
    basedir = Path(tempfile.mkdtemp(prefix="mas-formula-pg-"))
    cluster = PostgresCluster(basedir)
    try:
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(basedir, ignore_errors=True)


@pytest.fixture(scope="session")
def synapse_factory(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Callable[..., SynapseServer]]:
    """Create :class:`SynapseServer` instances; all are stopped at session end."""
    servers: list[SynapseServer] = []
    templates: dict[str, Path] = {}

    def factory(
        server_name: str = "example.com",
        database: str | PostgresCluster = "sqlite",
        start: bool = False,
        **kwargs: Any,
    ) -> SynapseServer:
        if database == "postgres":
            database = request.getfixturevalue("pg")
        if server_name not in templates:
            templates[server_name] = generate_config(tmp_path_factory.mktemp("synapse-template"), server_name).parent
        server = SynapseServer(
            tmp_path_factory.mktemp("synapse"),
            server_name=server_name,
            database=database,
            template_dir=templates[server_name],
            **kwargs,
        )
        servers.append(server)
        if start:
            server.start()
        return server

    try:
        yield factory
    finally:
        _stop_all(servers, "Synapse servers")


@pytest.fixture(scope="session")
def synapse(synapse_factory: Callable[..., SynapseServer], pg: PostgresCluster) -> SynapseServer:
    """A started, PostgreSQL-backed Synapse (``example.com``) without MAS."""
    return synapse_factory(database=pg, start=True)


@pytest.fixture(scope="session")
def nginx_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., NginxServer]]:
    """Create (unstarted) :class:`NginxServer` instances; all are stopped at session end."""
    servers: list[NginxServer] = []

    def factory(**kwargs: Any) -> NginxServer:
        server = NginxServer(tmp_path_factory.mktemp("nginx"), **kwargs)
        servers.append(server)
        return server

    try:
        yield factory
    finally:
        _stop_all(servers, "nginx servers")


class EchoUpstream:
    """A threaded stdlib HTTP server on a free loopback port that echoes requests.

    Every request, whatever its method or path, gets ``200`` with the JSON
    ``{"upstream": name, "path": <raw path incl. query>, "method": ...,
    "headers": {...}}`` -- or with ``reply``, when given (a fixed JSON
    document, e.g. a ``/.well-known/matrix/client``).  ``requests`` lists the
    request dicts, oldest first.
    """

    def __init__(self, name: str, reply: Any = None):
        self.name = name
        self.reply = reply
        self.requests: list[dict[str, Any]] = []
        self._server = ThreadingHTTPServer((LOOPBACK, 0), self._handler_class())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"echo-{name}", daemon=True)
        self._thread.start()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _echo(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                record = {
                    "upstream": upstream.name,
                    "path": self.path,
                    "method": self.command,
                    "headers": dict(self.headers.items()),
                }
                upstream.requests.append(record)
                body = json.dumps(record if upstream.reply is None else upstream.reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _echo

            def log_message(self, format: str, *args: Any) -> None:
                """Stay quiet (the default writes every request to stderr)."""

        return Handler

    def stop(self) -> None:
        """Shut the server down and close its socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __repr__(self) -> str:
        return f"EchoUpstream({self.name!r}, {self.url})"


@pytest.fixture(scope="session")
def echo_upstream() -> Iterator[Callable[[str], EchoUpstream]]:
    """Factory of started :class:`EchoUpstream` servers, stopped at session end."""
    servers: list[EchoUpstream] = []

    def factory(name: str, reply: Any = None) -> EchoUpstream:
        server = EchoUpstream(name, reply)
        servers.append(server)
        return server

    try:
        yield factory
    finally:
        _stop_all(servers, "echo upstreams")
