"""The system packages the virtualenv and the test suite need: find the missing ones and install them.

Run with the system ``python3`` (standard library only) before ``.venv`` exists:
``scripts/venv`` asks for the ``venv`` group (what building the pinned
requirements needs), ``scripts/test`` for ``tests`` (the servers and tools
the tests start). As root on Debian the missing packages are installed with
apt-get, saying which and why; otherwise the script says which are missing
and which tests will not run, and the caller runs the rest.

Usage: ``python3 scripts/prereqs.py venv|tests [...]`` (``--check``: report only).
Exit status: 0 when everything needed is there (or the tests can run without
it), 1 when the virtualenv cannot be built.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from importlib.util import find_spec


def _which(name, *patterns):
    """A command on ``$PATH`` or at one of the glob ``patterns``, else None."""
    found = shutil.which(name)
    if found:
        return found
    for pattern in patterns:
        for match in sorted(glob.glob(pattern), reverse=True):
            if os.access(match, os.X_OK):
                return match
    return None


def _python_header():
    return os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h"))


@dataclass(frozen=True)
class Need:
    """One Debian package, how to tell it is there, and what is lost without it."""

    package: str
    group: str
    present: object  # () -> bool
    without: str


NEEDS = (
    # building .venv: psycopg2 (matrix-synapse[postgres]) and timelib compile from source
    Need("python3-venv", "venv", lambda: find_spec("ensurepip") is not None, "python3 -m venv"),
    Need("python3-dev", "venv", _python_header, "Python.h, to compile psycopg2 and timelib"),
    Need("gcc", "venv", lambda: bool(_which("gcc")), "the C compiler for psycopg2 and timelib"),
    Need("libc6-dev", "venv", lambda: os.path.isfile("/usr/include/stdio.h"), "the C library headers"),
    Need("libpq-dev", "venv", lambda: bool(_which("pg_config")), "pg_config and libpq, to compile psycopg2"),
    # the servers and tools the tests start
    Need(
        "postgresql",
        "tests",
        lambda: bool(_which("initdb", "/usr/lib/postgresql/*/bin/initdb")),
        "the tests with a database (test/integration: database, doctor, mas_double*, smoke, syn2mas, users)",
    ),
    Need(
        "postgresql-contrib",
        "tests",
        lambda: bool(glob.glob("/usr/share/postgresql/*/extension/pg_trgm.control")),
        "pg_trgm, which MAS's schema and mas_db.present create (the same tests)",
    ),
    Need(
        "nginx",
        "tests",
        lambda: bool(_which("nginx", "/usr/sbin/nginx")),
        "the reverse-proxy tests (test_proxy.py, test_doctor.py, test_smoke.py, test_harness_services.py)",
    ),
    Need("xmlsec1", "tests", lambda: bool(_which("xmlsec1")), "Synapse's saml2_config check (test_synapse_wiring.py)"),
    Need(
        "chromium",
        "tests",
        lambda: os.access("/usr/bin/chromium", os.X_OK),
        "the browser of the login tests (test_logins*.py; Debian's build, never a downloaded one)",
    ),
    Need(
        "chromium-driver",
        "tests",
        lambda: os.access("/usr/bin/chromedriver", os.X_OK),
        "chromedriver, through which Selenium drives chromium (test_logins*.py)",
    ),
    Need(
        "nodejs",
        "tests",
        lambda: bool(_which("node")),
        "Node.js, which runs the OpenID provider of the login tests (oidc-provider from npm; test_logins*.py)",
    ),
    Need(
        "npm",
        "tests",
        lambda: bool(_which("npm")),
        "npm ci of that provider (test/harness/oidc_provider/package-lock.json)",
    ),
    Need(
        "systemd",
        "tests",
        lambda: bool(_which("systemd-analyze")),
        "systemd-analyze verify of the unit (test_foundation.py)",
    ),
)


def missing(groups):
    """The :class:`Need` of ``groups`` whose probe fails, in order."""
    return [need for need in NEEDS if need.group in groups and not need.present()]


def can_install():
    """Why apt-get cannot be used here (empty when it can)."""
    if not os.path.isfile("/etc/debian_version") or not shutil.which("apt-get"):
        return "not Debian (no apt-get)"
    if os.geteuid() != 0:
        return "not root"
    return ""


def apt_install(packages, log=print):
    """``apt-get update`` then ``apt-get install`` ``packages`` (no recommends); output only on failure."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
    ):
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            log(proc.stdout + proc.stderr)
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}")
    if "nginx" in packages and shutil.which("service"):
        # Debian's postinst may start a system nginx; the tests start their own
        subprocess.run(["service", "nginx", "stop"], capture_output=True, check=False)


def _system_python():
    """True when this python3 is Debian's (python3-venv/-dev are its packages)."""
    return os.path.realpath(sys.executable).startswith("/usr/bin/")


def main(argv, log=print):
    check_only = "--check" in argv
    groups = [arg for arg in argv if arg in ("venv", "tests")] or ["venv", "tests"]
    who = os.environ.get("PREREQS_CALLER", "scripts/prereqs.py")
    lacking = missing(groups)
    if not lacking:
        return 0
    names = [need.package for need in lacking]
    why_not = "--check given" if check_only else can_install()
    if not why_not:
        log(f"{who}: installing {' '.join(names)} with apt-get (about a minute):")
        for need in lacking:
            log(f"  {need.package}: {need.without}")
        try:
            apt_install(names, log=log)
            why_not = "still missing after apt-get install"
        except RuntimeError as exc:
            log(f"{who}: {exc}")
            why_not = "apt-get failed"
        lacking = missing(groups)
        if not lacking:
            return 0
        names = [need.package for need in lacking]
    log(
        f"{who}: missing system packages (Debian names): {' '.join(names)} ({why_not}; as root on Debian they are installed)"
    )
    venv = [need for need in lacking if need.group == "venv"]
    for need in venv:
        hint = (
            "" if _system_python() or need.package not in ("python3-venv", "python3-dev") else f" of {sys.executable}"
        )
        log(f"  {need.package}{hint}: {need.without}")
    if venv:
        log(
            f"{who}: cannot build .venv without them; install them (apt-get install {' '.join(n.package for n in venv)})"
        )
        return 1
    log("  these tests will not run (they are reported as skipped):")
    for need in lacking:
        log(f"  - without {need.package}: {need.without}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
