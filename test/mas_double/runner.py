"""Test-side helpers to run the double: ``run_cli`` and ``run_server``.

Example::

    from mas_double import run_cli, run_server

    result = run_cli(["config", "check"], [config_path])
    assert result.returncode == 0

    with run_server([config_path], log_path=tmp_path / "mas.log") as mas:
        requests.get(mas.url("health", "/health"))

Both run ``bin/mas-cli`` with ``MAS_DOUBLE_PYTHON`` set to the interpreter
running the tests, so the double always sees the same packages -- or the real
``mas-cli`` of ``MAS_REAL_CLI`` (see :mod:`harness.mas`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from harness import mas as mas_target
from harness.util import LOOPBACK, stop_process, tail, wait_for_http
from mas_double import faults
from mas_double.config import load_config


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for ``bin/mas-cli``: ``os.environ`` + ``MAS_DOUBLE_PYTHON`` + ``env``."""
    merged = dict(os.environ)
    merged.setdefault("MAS_DOUBLE_PYTHON", sys.executable)
    merged.update(env or {})
    return merged


def _config_args(config_paths: Iterable[str | Path]) -> list[str]:
    args: list[str] = []
    for path in config_paths:
        args += ["--config", str(path)]
    return args


def run_cli(
    args: Sequence[str],
    config_paths: Iterable[str | Path] = (),
    env: dict[str, str] | None = None,
    timeout: float = 120,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess:
    """Run ``mas-cli [--config P]... <args>`` and capture stdout/stderr as text (never raises on exit codes)."""
    command = [str(mas_target.cli()), *_config_args(config_paths), *args]
    return subprocess.run(
        command, capture_output=True, text=True, env=cli_env(env), timeout=timeout, cwd=cwd, check=False
    )


def _bind_url(bind: dict, prefix: str) -> str | None:
    if "address" in bind:
        host, _, port = str(bind["address"]).rpartition(":")
    elif "port" in bind:
        host, port = str(bind.get("host") or ""), str(bind["port"])
    else:
        return None
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = LOOPBACK
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{prefix}"


class MasServer:
    """A running ``mas-cli server`` of the double.

    Attributes:
        proc: the :class:`subprocess.Popen` of the server.
        log_path: where its stdout and stderr go.
        listeners: ``{listener name or index: base URL including the prefix}``.
        resources: ``{resource name: base URL of the first listener serving it}``.
    """

    def __init__(self, proc: subprocess.Popen, log_path: Path, config_paths: list[str]):
        self.proc = proc
        self.log_path = log_path
        self.listeners: dict[str, str] = {}
        self.resources: dict[str, str] = {}
        config = load_config(config_paths)
        for index, listener in enumerate(config.listeners):
            prefix = (listener.get("prefix") or "").rstrip("/")
            binds = [url for url in (_bind_url(b, prefix) for b in listener.get("binds") or []) if url]
            if not binds:
                continue
            self.listeners[str(listener.get("name") or index)] = binds[0]
            for resource in listener.get("resources") or []:
                self.resources.setdefault(resource["name"], binds[0])

    def url(self, resource: str, path: str = "/") -> str:
        """Absolute URL of ``path`` on the listener serving ``resource``."""
        return self.resources[resource] + path

    def log(self, lines: int = 80) -> str:
        """The last lines of the server log."""
        return tail(self.log_path, lines)

    def stop(self) -> int | None:
        """SIGTERM the server (SIGKILL after a grace period); returns its exit code."""
        stop_process(self.proc)
        return self.proc.returncode

    def __enter__(self) -> MasServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def run_server(
    config_paths: Iterable[str | Path],
    env: dict[str, str] | None = None,
    *,
    args: Sequence[str] = (),
    log_path: str | Path | None = None,
    wait: bool = True,
    timeout: float = 30,
) -> MasServer:
    """Start ``mas-cli --config P... server <args>`` in the background.

    With ``wait`` it returns once ``/health`` answers (200, or 500 under
    ``MAS_DOUBLE_FAULT=http500``) on the first listener with the ``health``
    resource; it raises ``RuntimeError`` with the log tail when the process
    exits first, ``TimeoutError`` after ``timeout``.  The caller must
    :meth:`MasServer.stop` it (or use it as a context manager).
    """
    paths = [str(p) for p in config_paths]
    if log_path is None:
        handle, name = tempfile.mkstemp(prefix="mas-double-", suffix=".log")
        os.close(handle)
        log_path = Path(name)
    log_path = Path(log_path)
    full_env = cli_env(env)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [str(mas_target.cli()), *_config_args(paths), "server", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            stdin=subprocess.DEVNULL,
        )
    server = MasServer(proc, log_path, paths)
    if not wait:
        return server
    if "health" not in server.resources:
        raise ValueError("run_server(wait=True) needs a listener with the health resource")
    enabled = {f.strip() for f in full_env.get("MAS_DOUBLE_FAULT", "").split(",")} & faults.KNOWN
    expected = 500 if "http500" in enabled else 200
    try:
        wait_for_http(server.url("health", "/health"), timeout=timeout, status=expected, proc=proc)
    except (RuntimeError, TimeoutError) as exc:
        server.stop()
        raise type(exc)(f"{exc}\n--- mas double log ---\n{server.log()}") from exc
    return server
