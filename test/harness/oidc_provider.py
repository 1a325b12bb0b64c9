"""A real OpenID provider on loopback: upstream's ``oidc-provider`` (npm) over HTTPS.

:class:`OidcProvider` runs ``test/harness/oidc_provider/provider.mjs`` with
Node.js. The package is pinned by the committed ``package.json`` and
``package-lock.json`` beside it and installed with ``npm ci`` the first time
(:func:`ensure_installed`; again whenever the lock changes), into that
directory's ``node_modules/`` (ignored by git).

The provider serves discovery at ``<issuer>/.well-known/openid-configuration``,
its login and consent pages (oidc-provider's development interactions: any
password is accepted, the login name is the account and its subject), the token, userinfo
and JWKS endpoints. Its certificate comes from a :class:`harness.testca.TestCA`
(MAS refuses a self-signed certificate as a server's own), for its address (``127.0.0.1`` unless told another).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import requests

from harness.testca import TestCA
from harness.util import LOOPBACK, free_port, require_binary, run, stop_process, tail

PACKAGE_DIR = Path(__file__).resolve().parent / "oidc_provider"


def ensure_installed() -> Path:
    """``npm ci`` in :data:`PACKAGE_DIR` unless ``node_modules`` matches ``package-lock.json``; returns ``node``.
    One process at a time (an exclusive lock on ``node_modules.lock``): two pytest-xdist workers starting a provider
    at once would otherwise unpack into one ``node_modules`` together."""
    node = require_binary("node")
    npm = require_binary("npm")
    lock = PACKAGE_DIR / "package-lock.json"
    installed = PACKAGE_DIR / "node_modules" / ".package-lock.json"
    stamp = PACKAGE_DIR / "node_modules" / ".mas-formula-lock"
    with (PACKAGE_DIR / "node_modules.lock").open("a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if not (installed.is_file() and stamp.is_file() and stamp.read_text() == lock.read_text()):
            shutil.rmtree(PACKAGE_DIR / "node_modules", ignore_errors=True)
            run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PACKAGE_DIR)
            stamp.write_text(lock.read_text())
    return Path(node)


class OidcProvider:
    """One running provider.

    Args:
        workdir: its config and log.
        ca: the CA that issues its certificate.
        clients: oidc-provider client metadata (``client_id``, ``client_secret``,
            ``token_endpoint_auth_method``, ``redirect_uris``).
        accounts: ``{login: {preferred_username, name, email}}``; the login name is the
            account's subject (``sub``), as oidc-provider's development login makes it.
        host: the loopback address it listens on and names in its issuer (another address stands
            for another host).

    Attributes: ``issuer`` (``https://<host>:<port>``, no trailing slash, as
    the provider advertises it), ``port``, ``log_path``.
    """

    def __init__(
        self, workdir: Path, ca: TestCA, clients: list[dict], accounts: dict | None = None, host: str = LOOPBACK
    ):
        self.node = ensure_installed()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(host)
        self.issuer = f"https://{host}:{self.port}"
        self.ca = ca
        cert = ca.issue(host, "localhost")
        self.config_path = self.workdir / "provider.json"
        self.config_path.write_text(
            json.dumps(
                {
                    "issuer": self.issuer,
                    "host": host,
                    "port": self.port,
                    "cert": str(cert.cert),
                    "key": str(cert.key),
                    "clients": clients,
                    "accounts": accounts or {},
                },
                indent=2,
            )
        )
        self.log_path = self.workdir / "provider.log"
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> OidcProvider:
        """Start Node.js and wait until discovery answers over TLS (verified against the test CA)."""
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(self.node), str(PACKAGE_DIR / "provider.mjs"), str(self.config_path)],
                cwd=PACKAGE_DIR,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(os.environ, NODE_ENV="test"),
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"oidc-provider exited with {self._proc.returncode}:\n{self.log()}")
            try:
                resp = requests.get(self.discovery_url, verify=str(self.ca.cert), timeout=2)
                if resp.status_code == 200 and resp.json().get("issuer") == self.issuer:
                    return self
                last = f"HTTP {resp.status_code}"
            except (requests.RequestException, ValueError) as exc:
                last = str(exc)
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(
            f"oidc-provider did not answer {self.discovery_url} within {timeout}s ({last})\n{self.log()}"
        )

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def requests_seen(self) -> list[dict]:
        """Every request the provider answered (``{method, path, status}``) and its errors, oldest first."""
        seen = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                seen.append(json.loads(line))
            except ValueError:
                continue
        return seen

    def log(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None

    def __repr__(self) -> str:
        return f"OidcProvider({self.issuer})"
