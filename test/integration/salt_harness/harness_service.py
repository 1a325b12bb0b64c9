"""A ``service`` provider for the integration tests (never shipped).

systemd is not PID 1 on the test machine, so ``service.start`` & co. cannot
drive a real unit. This execution module stands in for them: a test minion
sets ``providers: {service: harness_service}`` and ``module_dirs`` to this
directory, and lists the services it may control in the minion option
``harness_services`` (``{name: {"argv", "cwd", "url", "pidfile", "log",
"events", "fail": [actions]}}``). A service is a detached process started
from ``argv`` (its pid in ``pidfile``); ``start`` waits until ``url``
answers. Every call is appended to ``events`` (``<action> <name> <ok|failed>``)
so a test can tell whether the formula stopped, started or restarted it;
``fail`` makes the listed actions fail (e.g. a restart that does not come back).
With ``snapshot: {"conninfo", "dir"}`` the checksum of every table of that
database is written to ``dir`` after each stop and before each start, so a
test can prove that nothing changed it while the service was down.

The same functions work outside Salt (:func:`control`), so a test drives the
process exactly the way the formula does.
"""

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

__virtualname__ = "harness_service"


def __virtual__():
    return __virtualname__


def _alive(pid):
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
            state = next((line.split()[1] for line in handle if line.startswith("State:")), "")
    except OSError:
        return False
    return state not in ("Z", "X")


def _pid(spec):
    try:
        with open(spec["pidfile"], encoding="utf-8") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def _answers(url, timeout=2):
    try:
        with urllib.request.urlopen(url, timeout=timeout):  # noqa: S310 (loopback only)
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _event(spec, action, name, ok):
    if spec.get("events"):
        with open(spec["events"], "a", encoding="utf-8") as handle:
            handle.write(f"{action} {name} {'ok' if ok else 'failed'}\n")
    return ok


def checksum(conninfo):
    """``{table: md5}`` of every table of the public schema (rows in a fixed order)."""
    import psycopg  # pylint: disable=import-outside-toplevel
    from psycopg import sql  # pylint: disable=import-outside-toplevel

    sums = {}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        tables = [row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for table in sorted(tables):
            query = sql.SQL("SELECT md5(coalesce(string_agg(x::text, chr(10) ORDER BY x::text), '')) FROM {} x")
            sums[table] = conn.execute(query.format(sql.Identifier(table))).fetchone()[0]
    return sums


def _snapshot(spec, when):
    snap = spec.get("snapshot")
    if not snap:
        return
    os.makedirs(snap["dir"], exist_ok=True)
    number = len(os.listdir(snap["dir"]))
    with open(os.path.join(snap["dir"], f"{number:03d}-{when}.json"), "w", encoding="utf-8") as handle:
        json.dump(checksum(snap["conninfo"]), handle)


def running(spec):
    """True while the service's process is alive."""
    pid = _pid(spec)
    return bool(pid) and _alive(pid)


def do_start(spec, timeout=120):
    """Start the process (detached) unless it runs; wait until its URL answers."""
    if running(spec):
        return True
    with open(spec["log"], "ab") as log:
        proc = subprocess.Popen(  # pylint: disable=consider-using-with
            spec["argv"],
            cwd=spec.get("cwd"),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    with open(spec["pidfile"], "w", encoding="utf-8") as handle:
        handle.write(str(proc.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if _answers(spec["url"]):
            return True
        time.sleep(0.2)
    return False


def do_stop(spec, timeout=30):
    """SIGTERM, then SIGKILL after ``timeout``; True once the process is gone."""
    pid = _pid(spec)
    if not pid or not _alive(pid):
        return True
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    return not _alive(pid)


def control(spec, action, name="service"):
    """Run ``action`` (start, stop, restart, status) on ``spec`` as the Salt functions do."""
    if action == "status":
        return running(spec)
    if action in spec.get("fail", []):
        if action == "restart":
            do_stop(spec)
        return _event(spec, action, name, False)
    if action == "start":
        if not running(spec):
            _snapshot(spec, "before-start")
        ok = do_start(spec)
    elif action == "stop":
        was = running(spec)
        ok = do_stop(spec)
        if ok and was:
            _snapshot(spec, "after-stop")
    else:
        ok = do_stop(spec) and do_start(spec)
    return _event(spec, action, name, ok)


def _spec(name):
    services = __opts__.get("harness_services") or {}
    if name not in services:
        return None
    spec = services[name]
    if isinstance(spec, str):  # a JSON file, so that a test can change it between calls
        with open(spec, encoding="utf-8") as handle:
            spec = json.load(handle)
    return spec


def status(name, sig=None):  # pylint: disable=unused-argument
    """``service.status``: True while the service runs."""
    spec = _spec(name)
    return bool(spec) and control(spec, "status", name)


def start(name, **kwargs):  # pylint: disable=unused-argument
    """``service.start``."""
    spec = _spec(name)
    return bool(spec) and control(spec, "start", name)


def stop(name, **kwargs):  # pylint: disable=unused-argument
    """``service.stop``."""
    spec = _spec(name)
    return bool(spec) and control(spec, "stop", name)


def restart(name, **kwargs):  # pylint: disable=unused-argument
    """``service.restart``."""
    spec = _spec(name)
    return bool(spec) and control(spec, "restart", name)


def available(name):
    """``service.available``."""
    return _spec(name) is not None
