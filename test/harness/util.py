"""Shared helpers of the test harness: ports, HTTP polling, binaries, commands."""

from __future__ import annotations

import glob
import os
import random
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

# MAS's published contracts: ``../shared/upstream``, or ``$MAS_DOUBLE_UPSTREAM_DIR``
# (the double's own rule, so that pointing it at an empty directory simulates
# their absence for the harness, the tests and the double alike).
from mas_double.upstream import upstream_dir

#: Root of the mas-formula repository (``test/harness/util.py`` -> repo).
REPO_ROOT = Path(__file__).resolve().parents[2]

#: What :func:`unavailable` adds under CI, and what the end-of-run summary
#: recognises (``test/conftest.py``).
CI_SUFFIX = "(CI=true: missing prerequisites are errors)"

#: The address servers started by the harness listen on, unless given another (``host=``: another loopback
#: address stands for another host, test_several_hosts.py).
LOOPBACK = "127.0.0.1"


class CommandError(RuntimeError):
    """A harness command exited non-zero; the message carries its output."""

    def __init__(self, args: Sequence[str], returncode: int, output: str):
        self.cmd = list(args)
        self.returncode = returncode
        self.output = output
        super().__init__(f"command {self.cmd!r} exited {returncode}:\n{output}")


def ci_enabled() -> bool:
    """Return True when running under CI (``CI=true``), where skips become failures."""
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Skip the current test because a prerequisite is missing; fail instead under CI.

    Every skip of the suite goes through here, so that ``CI=true`` (where
    everything is installed and ``../shared/upstream`` is present) turns a
    missing prerequisite into a failure. ``reason`` is what the end-of-run
    summary groups the skipped tests by: keep it free of per-test details.
    """
    if ci_enabled():
        pytest.fail(f"{reason} {CI_SUFFIX}", pytrace=False)
    pytest.skip(reason)


def require_upstream(relative: str = "mas/config.schema.json") -> Path:
    """The path of one upstream contract file, or skip (fail under CI) when it is absent.

    When the whole directory is missing, every test that needs it skips with
    the same reason (one line in the end-of-run summary).
    """
    root = upstream_dir()
    path = root / relative
    if path.is_file():
        return path
    if not (root / "mas").is_dir():
        unavailable(f"needs MAS's published contracts, absent here: {root} (never copied into the repository)")
    unavailable(f"needs MAS's published contract {path}, missing")
    raise AssertionError("unreachable")  # pragma: no cover


def _reason(report) -> str:
    """The reason of a skipped report, or the message of a failure ``unavailable`` raised under CI."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (path, lineno, "Skipped: reason")
        return longrepr[2].removeprefix("Skipped: ")
    for line in str(getattr(report, "longreprtext", longrepr)).splitlines():
        if CI_SUFFIX in line:
            return line.replace(CI_SUFFIX, "").strip().removeprefix("E").strip().removeprefix("Failed:").strip()
    return ""


def skip_summary(stats: dict, modules: int = 4) -> list[str]:
    """One line per group of tests a missing prerequisite kept from running, and why.

    ``stats`` is the terminal reporter's (``skipped``, ``failed``, ``error``
    reports). Skips are grouped by reason; under ``CI=true`` the failures that
    :func:`unavailable` raised are grouped the same way. Each line names the
    count, the reason and the first ``modules`` test files.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for kind, reports in (("skipped", stats.get("skipped", [])), ("failed (CI=true)", stats.get("failed", []))):
        for report in reports:
            reason = _reason(report)
            if kind == "skipped" or reason:
                groups.setdefault((kind, reason or "(no reason given)"), []).append(report.nodeid)
    for report in stats.get("error", []):
        reason = _reason(report)
        if reason:
            groups.setdefault(("failed (CI=true)", reason), []).append(report.nodeid)
    lines = []
    for (kind, reason), nodeids in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])):
        files = list(dict.fromkeys(nodeid.split("::", 1)[0].rsplit("/", 1)[-1] for nodeid in nodeids))
        where = ", ".join(files[:modules]) + (f" and {len(files) - modules} more files" if len(files) > modules else "")
        lines.append(f"{len(nodeids)} {kind}: {reason} [{where}]")
    return lines


def require_root(why: str = "applying the formula creates a service account") -> None:
    """Skip (fail under CI) unless the tests run as root."""
    if os.geteuid() != 0:
        unavailable(f"{why}: run the tests as root")


def require_binary(name: str, candidates: Iterable[str] = ()) -> str:
    """Locate an executable, or skip (fail when ``CI=true``) when it is absent.

    ``candidates`` are extra absolute paths or glob patterns tried after ``$PATH``;
    among glob matches the lexically highest one wins.
    """
    candidates = list(candidates)
    found = shutil.which(name)
    if found:
        return found
    for pattern in candidates:
        for match in sorted(glob.glob(pattern), reverse=True):
            if os.access(match, os.X_OK):
                return match
    unavailable(f"required binary {name!r} not found on PATH or in {list(candidates)}")
    raise AssertionError("unreachable")  # pragma: no cover


#: Ports :func:`free_port` handed out in this process (never twice: the first may not be bound yet).
_HANDED_OUT: set[int] = set()
#: Where :func:`free_port` looks: below the kernel's ephemeral range (32768-60999, the ports of outgoing connections
#: and of ``bind(0)``), one band per pytest-xdist worker, so that two workers never pick the same port.
PORT_BANDS = 6000
PORT_BASE = 8000


def _band() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) + 1 if worker.startswith("gw") and worker[2:].isdigit() else 0
    start = PORT_BASE + (index % 4) * PORT_BANDS
    return range(start, start + PORT_BANDS)


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` now and not handed out before by this process: from this worker's band of ports
    (:func:`_band`), where neither the other worker nor an outgoing connection takes one between this call and the
    moment the test's server binds it."""
    band = _band()
    start = random.randrange(len(band))
    for offset in range(len(band)):
        port = band[(start + offset) % len(band)]
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port left in {band} on {host}")


def wait_for_http(
    url: str,
    timeout: float = 30.0,
    status: int | None = 200,
    proc: subprocess.Popen | None = None,
    interval: float = 0.1,
) -> None:
    """Poll ``url`` until it answers with ``status`` (``None``: any HTTP status).

    Raises ``RuntimeError`` as soon as ``proc`` (the server process, if given)
    has exited, and ``TimeoutError`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (loopback only)
                if status is None or resp.status == status:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            if status is None or exc.code == status:
                return
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer {status or 'HTTP'} within {timeout}s (last: {last})")
        time.sleep(interval)


def wait_for_port(port: int, host: str = LOOPBACK, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until a TCP connection to ``host:port`` succeeds (see :func:`wait_for_http`)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with {proc.returncode} before {host}:{port} accepted")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{host}:{port} accepted no connection within {timeout}s ({exc})") from exc
        time.sleep(0.02)


def run(args: Sequence[str], *, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run a command (argument list, never a shell string) capturing its output as text.

    With ``check`` a non-zero exit raises :class:`CommandError` with stdout+stderr.
    """
    proc = subprocess.run(list(args), capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, proc.stdout + proc.stderr)
    return proc


def tail(path: Path, lines: int = 60) -> str:
    """Return the last ``lines`` lines of a text file (empty string when absent)."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Terminate ``proc`` (SIGTERM, then SIGKILL after ``timeout``) and reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
