"""README's quick start, as a newcomer runs it: the demo (in its own folder,
no account created, operator commands through ``scripts/salt-call``,
``--clean``), ``scripts/test`` (per-checkout pytest temp root) and the end of
a test run (one line per group of tests that did not run, and why).
"""

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import yaml

import mas_release
from harness.util import CI_SUFFIX, require_root, unavailable
from saltrun import REPO_ROOT

pytest_plugins = ["pytester"]

DEMO = REPO_ROOT / "scripts" / "mas_demo.py"
SALT_CALL = REPO_ROOT / "scripts" / "salt-call"
DOCKER = "/usr/bin/docker"
DOCKER_LINE = f"mas:runtime is docker but {DOCKER} is missing: install Docker or set mas:runtime: binary"
#: pillar.example's secrets, which are placeholders (the demo's pillar holds no other)
SECRET_KEYS = (("database", "password"), ("email", "password"))

# ------------------------------------------------------------------ the demo


def _account_files():
    return {name: pathlib.Path(name).read_bytes() for name in ("/etc/passwd", "/etc/group")}


def _salt_dirs():
    return {path: os.path.exists(path) for path in ("/etc/salt", "/var/cache/salt", "/var/log/salt", "/var/run/salt")}


def demo(*args, check=True):
    proc = subprocess.run([sys.executable, str(DEMO), *args], capture_output=True, text=True, check=False)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def salt_call(root, *args):
    env = dict(os.environ, MAS_DEMO_ROOT=str(root), PYTHONWARNINGS="ignore")
    return subprocess.run([str(SALT_CALL), *args], capture_output=True, text=True, check=False, env=env)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    """``scripts/demo`` into a fresh folder; nothing outside it may change."""
    require_root("the demo sets owners and modes")
    root = tmp_path_factory.mktemp("quick-start") / "demo-root"
    before = (_account_files(), _salt_dirs())
    proc = demo(str(root))
    assert (_account_files(), _salt_dirs()) == before, "the demo changed an account or Salt's system paths"
    yield root, proc.stdout
    if root.exists():
        demo("--clean", str(root))


def test_demo_lists_what_it_rendered_and_names_the_existing_account(demo_root):
    root, out = demo_root
    assert "Service account: root:root, an existing account (the demo creates none)" in out
    listed = out.split("Files the mas formula rendered under", 1)[1]
    for name in (
        "config/config.yaml",
        "config/secrets/encryption",
        "bin/mas-cli",
        "matrix-authentication-service.yaml",
    ):
        assert name in listed
    assert "homeserver.yaml" not in listed.replace("homeserver.yaml\n", "")  # the stand-in is the demo's, not rendered
    config = root / "matrix/matrix-authentication-service/config/config.yaml"
    assert config.stat().st_uid == 0 and (config.stat().st_mode & 0o777) == 0o640


def test_demo_keeps_everything_in_its_folder(demo_root):
    root, _ = demo_root
    minion = yaml.safe_load((root / "salt" / "minion").read_text())
    assert minion["root_dir"].startswith(str(root) + "/")
    pillar = yaml.safe_load((root / "salt" / "pillar" / "mas.sls").read_text())["mas"]
    paths = [pillar["base_path"], pillar["service"]["unit_dir"], pillar["synapse"]["config_dir"]]
    paths += pillar["synapse"]["config_files"] + [pillar["proxy"]["nginx"]["snippet_path"]]
    assert all(path.startswith(str(root) + "/") for path in paths), paths
    assert (pillar["user"], pillar["group"]) == ("root", "root")


def test_demo_pillar_holds_only_the_placeholder_secrets(demo_root):
    root, _ = demo_root
    example = yaml.safe_load((REPO_ROOT / "pillar.example").read_text())["mas"]
    pillar = yaml.safe_load((root / "salt" / "pillar" / "mas.sls").read_text())["mas"]
    for first, second in SECRET_KEYS:
        assert pillar[first][second] == example[first][second]
    assert [p["client_secret"] for p in pillar["upstream_oauth2_providers"]] == [
        p["client_secret"] for p in example["upstream_oauth2_providers"]
    ]
    assert "encryption" not in pillar.get("secrets", {}) and "homeserver_secret" not in pillar.get("secrets", {})


def test_operator_commands_on_the_demo(demo_root):
    """README's operator commands, typed as written after ``scripts/salt-call``."""
    root, _ = demo_root
    again = salt_call(root, "state.apply", "mas", "test=True", "--out=json")
    assert again.returncode == 0, again.stdout + again.stderr
    states = json.loads(again.stdout)["local"]
    assert [s["__id__"] for s in states.values() if s["changes"] or s["result"] is not True] == []
    status = salt_call(root, "mas_syn2mas.status", "--out=json")
    assert status.returncode == 0, status.stderr
    # the demo enables MAS, so Synapse's drop-in is on disk: status agrees with it (no marker recorded)
    assert json.loads(status.stdout)["local"]["phase"] == "delegated"
    if os.path.exists(DOCKER):
        unavailable(
            f"the demo's operator commands on a host without {DOCKER} (pillar.example's docker CLI): it is here"
        )
    doctor = salt_call(root, "mas_doctor.run", "--out=json")
    assert doctor.returncode != 0
    report = json.loads(doctor.stdout)["local"]
    mas_cli = {check["name"]: check for check in report["checks"]}["mas_cli_doctor"]
    assert report["result"] == "error" and f"{mas_cli['message']}: {mas_cli['fix']}" == DOCKER_LINE
    check = salt_call(root, "mas_syn2mas.check", "--out=json")
    errors = json.loads(check.stdout)["local"]["errors"]  # delegated: the phase refuses before the runtime
    assert check.returncode != 0 and errors[0].startswith("no migration is needed: Synapse already delegates to MAS")
    assert DOCKER_LINE in json.loads(status.stdout)["local"]["dry_run_blockers"]
    register = salt_call(root, "mas_user.register", "alice", "admin=True")
    assert register.returncode != 0 and DOCKER_LINE in register.stdout + register.stderr
    wrapper = subprocess.run(
        [str(root / "matrix/matrix-authentication-service/bin/mas-cli"), "doctor"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (wrapper.returncode, wrapper.stdout, wrapper.stderr) == (127, "", DOCKER_LINE + "\n")


def test_salt_call_without_a_demo_says_to_run_it_first(tmp_path):
    proc = salt_call(tmp_path / "nowhere", "test.ping")
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"scripts/salt-call: no demo in {tmp_path / 'nowhere'}: run scripts/demo first"


def test_demo_clean_removes_only_a_demo_folder(demo_root, tmp_path):
    foreign = tmp_path / "not-a-demo"
    foreign.mkdir()
    (foreign / "keep").write_text("x")
    refused = demo("--clean", str(foreign), check=False)
    assert refused.returncode == 1 and (foreign / "keep").exists()
    root, _ = demo_root
    cleaned = demo("--clean", str(root))
    assert not root.exists() and f"Removed {root}" in cleaned.stdout
    assert "Nothing to remove" in demo("--clean", str(root)).stdout


# ------------------------------------------------------------- scripts/test


def fake_checkout(where):
    """A checkout holding the real scripts/test, scripts/venv and
    scripts/prereqs.py, and a .venv whose pytest prints what it was given."""
    (where / "scripts").mkdir(parents=True)
    for name in ("test", "venv", "prereqs.py", "suite.py", "mas_release.py"):
        shutil.copy2(REPO_ROOT / "scripts" / name, where / "scripts" / name)
    for name in ("requirements.txt", "requirements.lock"):
        (where / name).write_text(f"# {name}\n")
    bin_dir = where / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    (bin_dir / "pytest").write_text(
        '#!/bin/sh\necho "TEMPROOT=$PYTEST_DEBUG_TEMPROOT REAL=${MAS_REAL_CLI:-} ARGS=$*"\n'
    )
    (bin_dir / "pytest").chmod(0o755)
    # what scripts/venv compares: sha256 of requirements.txt + requirements.lock
    digest = hashlib.sha256(b"".join((where / n).read_bytes() for n in ("requirements.txt", "requirements.lock")))
    (where / ".venv" / ".requirements.sha256").write_text(digest.hexdigest() + "\n")
    return where


def scripts_test(checkout, *args, **env):
    """Run the fake checkout's ``scripts/test`` (no real MAS beside it, not under CI, unless ``env`` says so)."""
    drop = ("PYTEST_DEBUG_TEMPROOT", "MAS_REAL_CLI", "MAS_REAL_SHARE", "MAS_RELEASE_DIR", "CI", "MAS_TEST_WORKERS")
    environ = {k: v for k, v in os.environ.items() if k not in drop}
    return subprocess.run(
        [str(checkout / "scripts" / "test"), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**environ, **env},
    )


def run_scripts_test(checkout, **env):
    proc = scripts_test(checkout, "-m", "not integration", **env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_scripts_test_gives_each_checkout_its_own_pytest_temp_root(tmp_path):
    one, two = fake_checkout(tmp_path / "one"), fake_checkout(tmp_path / "two")
    first, second = run_scripts_test(one), run_scripts_test(two)
    assert first.endswith("REAL= ARGS=-n 2 --dist loadfile -m not integration")
    root_one, root_two = first.split()[0].removeprefix("TEMPROOT="), second.split()[0].removeprefix("TEMPROOT=")
    assert root_one != root_two and os.path.isdir(root_one) and os.path.isdir(root_two)
    assert run_scripts_test(one) == first, "the same checkout keeps its root"
    given = tmp_path / "given"
    assert run_scripts_test(one, PYTEST_DEBUG_TEMPROOT=str(given)).startswith(f"TEMPROOT={given} ")
    for path in (root_one, root_two):
        shutil.rmtree(path)


def test_scripts_test_runs_the_real_mas_then_the_doubles_own_tests(tmp_path):
    """With the release beside the project: pass 1 against the real mas-cli (verified, unpacked outside the
    checkout), pass 2 the double's own tests against the double, a given -m narrowing both."""
    release = mas_release.release_dir()
    if not (release / mas_release.TARBALL).is_file():
        unavailable(f"needs the real MAS release tarball, absent here: {release / mas_release.TARBALL}")
    checkout = fake_checkout(tmp_path / "checkout")
    proc = scripts_test(checkout, "-m", "not slow", "test/x", MAS_RELEASE_DIR=str(release))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = [line for line in proc.stdout.splitlines() if line.startswith("TEMPROOT=")]
    unpacked = mas_release.unpacked(release)
    assert not unpacked.directory.is_relative_to(REPO_ROOT) and not unpacked.directory.is_relative_to(checkout)
    assert [run.split(" ", 1)[1] for run in runs] == [
        f"REAL={unpacked.cli} ARGS=-n 2 --dist loadfile -m not slow test/x",
        "REAL= ARGS=-n 2 --dist loadfile test/x -m (not slow) and (double or double_only)",
    ]
    assert "pass 1 of 2, the suite against the real MAS" in proc.stdout
    assert subprocess.run([str(unpacked.cli), "--version"], capture_output=True, check=True).stdout.startswith(
        b"mas-cli "
    )


def test_scripts_test_under_ci_without_the_release_names_the_missing_file(tmp_path):
    checkout = fake_checkout(tmp_path / "checkout")
    empty = tmp_path / "no-release"
    empty.mkdir()
    proc = scripts_test(checkout, CI="true", MAS_RELEASE_DIR=str(empty))
    assert proc.returncode == 1 and "TEMPROOT=" not in proc.stdout
    assert f"CI=true needs the real MAS: {empty / mas_release.TARBALL} is missing" in proc.stderr
    # the tarball present but not the one SHA256SUMS names: refused too
    (empty / mas_release.TARBALL).write_bytes(b"not the release")
    (empty / mas_release.SUMS).write_text(f"{'0' * 64}  {mas_release.TARBALL}\n")
    proc = scripts_test(checkout, CI="true", MAS_RELEASE_DIR=str(empty))
    assert proc.returncode == 1 and f"but {empty / mas_release.SUMS} says {'0' * 64}" in proc.stderr
    # not under CI: the suite runs against the double, saying so
    proc = scripts_test(checkout, MAS_RELEASE_DIR=str(tmp_path / "elsewhere"))
    assert proc.returncode == 0 and "run against the MAS double" in proc.stderr
    assert proc.stdout.strip().splitlines()[-1].split(" ", 1)[1] == "REAL= ARGS=-n 2 --dist loadfile"
    # the number of workers is the caller's: MAS_TEST_WORKERS=0 runs one process, a given -n wins
    one = scripts_test(checkout, MAS_RELEASE_DIR=str(tmp_path / "elsewhere"), MAS_TEST_WORKERS="0")
    assert one.stdout.strip().splitlines()[-1].split(" ", 1)[1] == "REAL= ARGS="
    given = scripts_test(checkout, "-n", "3", MAS_RELEASE_DIR=str(tmp_path / "elsewhere"))
    assert given.stdout.strip().splitlines()[-1].split(" ", 1)[1] == "REAL= ARGS=-n 3"


# ------------------------------------------------------ the end of a test run


def test_every_skip_goes_through_unavailable():
    """So that CI=true turns every missing prerequisite into a failure."""
    bypass = ("pytest.skip(", "importorskip(", "mark.skip", "skipif(")
    found = [
        f"{path.relative_to(REPO_ROOT)}:{number}"
        for path in sorted((REPO_ROOT / "test").rglob("*.py"))
        if path not in (REPO_ROOT / "test" / "harness" / "util.py", pathlib.Path(__file__))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if any(text in line for text in bypass)
    ]
    assert found == [], "skip with harness.util.unavailable (or require_*) instead"


SKIPPING_TESTS = """
from harness.util import require_upstream, unavailable


def test_needs_a_widget():
    unavailable("no widget here")


def test_needs_a_widget_too():
    unavailable("no widget here")


def test_needs_upstream():
    require_upstream("mas/config.schema.json")


def test_runs():
    pass
"""


@pytest.fixture
def suite(pytester, monkeypatch, tmp_path):
    """A small suite using this repository's conftest hook and harness."""
    pytester.makeini(
        f"[pytest]\npythonpath = {REPO_ROOT / 'test'} {REPO_ROOT / 'scripts'}\naddopts = -p no:cacheprovider\n"
    )
    pytester.makeconftest(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('mas_conftest', {str(REPO_ROOT / 'test' / 'conftest.py')!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "pytest_terminal_summary = module.pytest_terminal_summary\n"
    )
    pytester.makepyfile(test_skipping=SKIPPING_TESTS)
    monkeypatch.setenv("MAS_DOUBLE_UPSTREAM_DIR", str(tmp_path / "empty"))
    monkeypatch.delenv("CI", raising=False)
    return pytester


def test_run_ends_with_one_line_per_group_of_skipped_tests(suite, tmp_path):
    result = suite.runpytest_subprocess()
    result.assert_outcomes(passed=1, skipped=3)
    result.stdout.fnmatch_lines(
        [
            "*- not run: missing prerequisites -*",
            "2 skipped: no widget here [[]test_skipping.py[]]",
            f"1 skipped: needs MAS's published contracts, absent here: {tmp_path / 'empty'} *",
        ]
    )


def test_under_ci_a_missing_prerequisite_fails(suite, monkeypatch):
    monkeypatch.setenv("CI", "true")
    result = suite.runpytest_subprocess()
    result.assert_outcomes(passed=1, failed=3)
    assert CI_SUFFIX in result.stdout.str()
    result.stdout.fnmatch_lines(["2 failed (CI=true): no widget here [[]test_skipping.py[]]"])
