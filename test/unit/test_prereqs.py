"""``scripts/prereqs.py``: what ``scripts/test`` and ``scripts/venv`` install, report, or refuse.

The probes are checked against dpkg's own answer on this machine; the
decisions (install as root on Debian, else report and run the rest, refuse
when ``.venv`` cannot be built) with stand-in probes and a recorded apt-get.
"""

import shutil
import subprocess

import prereqs
import pytest

from harness.util import require_binary


def _installed(package):
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False)
    return proc.returncode == 0 and proc.stdout.endswith(" installed")


def test_every_probe_agrees_with_dpkg():
    """A package dpkg reports installed is found by its probe (a wrong probe
    would make scripts/test reinstall it on every run, or miss it)."""
    require_binary("dpkg-query")
    for need in prereqs.NEEDS:
        if need.package in ("python3-venv", "python3-dev") and not prereqs._system_python():
            continue  # the probes look at the running python3, not Debian's
        if _installed(need.package):
            assert need.present(), f"{need.package} is installed but its probe does not find it"


def test_every_probe_finds_nothing_where_nothing_is(monkeypatch, tmp_path):
    """The other direction: on a machine without any of the packages, every probe says so (a probe that always
    answers yes would make scripts/test skip an install it needs)."""
    monkeypatch.setattr(prereqs.shutil, "which", lambda *args, **kwargs: None)
    monkeypatch.setattr(prereqs.glob, "glob", lambda *args, **kwargs: [])
    monkeypatch.setattr(prereqs.os.path, "isfile", lambda path: False)
    monkeypatch.setattr(prereqs.os, "access", lambda path, mode: False)
    monkeypatch.setattr(prereqs, "find_spec", lambda name: None)
    present = [need.package for need in prereqs.NEEDS if need.present()]
    assert present == []


def test_every_need_says_what_is_lost_without_it():
    assert {need.group for need in prereqs.NEEDS} == {"venv", "tests"}
    for need in prereqs.NEEDS:
        assert need.package and need.without


@pytest.fixture
def world(monkeypatch):
    """Stand-in probes (``absent`` lists the missing packages) and a recorded apt-get."""
    state = {"absent": set(), "apt": [], "why_not": ""}

    def fake_needs():
        return tuple(
            prereqs.Need(n.package, n.group, (lambda p=n.package: p not in state["absent"]), n.without)
            for n in prereqs.NEEDS
        )

    def apt_install(packages, log=print):  # pylint: disable=unused-argument
        state["apt"].append(list(packages))
        state["absent"] -= set(packages)

    monkeypatch.setattr(prereqs, "NEEDS", fake_needs())
    monkeypatch.setattr(prereqs, "apt_install", apt_install)
    monkeypatch.setattr(prereqs, "can_install", lambda: state["why_not"])
    return state


def run(argv):
    lines = []
    code = prereqs.main(argv, log=lines.append)
    return code, "\n".join(lines)


def test_nothing_missing_says_nothing(world):
    assert run(["venv", "tests"]) == (0, "")
    assert world["apt"] == []


def test_root_on_debian_installs_the_missing_packages_and_says_which(world):
    world["absent"] = {"nginx", "xmlsec1", "gcc"}
    code, out = run(["tests"])
    assert code == 0
    assert world["apt"] == [["nginx", "xmlsec1"]]  # only the group asked for
    assert "installing nginx xmlsec1 with apt-get" in out
    assert "nginx: the reverse-proxy tests" in out


def test_not_root_reports_the_missing_packages_and_the_tests_that_will_not_run(world):
    world["absent"] = {"nginx", "systemd"}
    world["why_not"] = "not root"
    code, out = run(["tests"])
    assert code == 0, "the rest of the suite runs"
    assert world["apt"] == []
    assert "missing system packages (Debian names): nginx systemd (not root;" in out
    assert "without nginx: the reverse-proxy tests (test_proxy.py" in out
    assert "without systemd: systemd-analyze verify" in out


def test_the_venv_cannot_be_built_without_its_build_packages(world):
    world["absent"] = {"libpq-dev", "nginx"}
    world["why_not"] = "not Debian (no apt-get)"
    code, out = run(["venv"])
    assert code == 1
    assert "cannot build .venv without them; install them (apt-get install libpq-dev)" in out
    assert "nginx" not in out


def test_a_package_still_missing_after_apt_get_is_reported(world, monkeypatch):
    world["absent"] = {"xmlsec1"}
    monkeypatch.setattr(prereqs, "apt_install", lambda packages, log=print: world["apt"].append(packages))
    code, out = run(["tests"])
    assert code == 0 and world["apt"] == [["xmlsec1"]]
    assert "xmlsec1 (still missing after apt-get install;" in out


def test_a_failed_apt_get_still_runs_the_rest(world, monkeypatch):
    def broken(packages, log=print):
        raise RuntimeError("apt-get update -qq exited 100")

    world["absent"] = {"nginx"}
    monkeypatch.setattr(prereqs, "apt_install", broken)
    code, out = run(["tests"])
    assert code == 0
    assert "apt-get update -qq exited 100" in out and "nginx (apt-get failed;" in out
    assert "without nginx: the reverse-proxy tests" in out


def test_check_only_never_installs(world):
    world["absent"] = {"postgresql"}
    code, out = run(["tests", "--check"])
    assert code == 0 and world["apt"] == []
    assert "without postgresql: the tests with a database" in out


def test_can_install_here():
    """The CI machine (root, Debian) can install; elsewhere the reason is given."""
    why = prereqs.can_install()
    if shutil.which("apt-get"):
        assert why in ("", "not root")
    else:
        assert why == "not Debian (no apt-get)"
