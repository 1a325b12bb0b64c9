"""The binary runtime end to end: MAS's release tarball installed by the formula.

The tarball is the double's, in upstream's release layout (``mas-cli``,
``share/``, ``LICENSE`` at its root: ``mas_double.share``), from a local path
with its sha256, as an operator would point ``mas:binary:source`` at the
GitHub release. ``service.running`` runs against a recording stand-in of the
``service`` provider (``test/salt_fakes``: systemd is not PID 1 here), so the
test counts the restarts each apply causes.
"""

import hashlib
import json
import subprocess

import pytest
import yaml

from harness import mas as mas_target
from harness.util import require_root
from mas_double import share
from mas_double.runner import cli_env
from pillars import deep_update
from saltrun import REPO_ROOT, SaltMinion

FAKES = REPO_ROOT / "test" / "salt_fakes" / "modules"


@pytest.fixture
def minion(tmp_path, salt_extmods):
    require_root()
    state = tmp_path / "services.json"
    config = {
        "module_dirs": [str(FAKES)],
        "providers": {"service": "mas_test_service"},
        "mas_test_service_state": str(state),
    }
    minion = SaltMinion(tmp_path / "minion", REPO_ROOT, extmods=salt_extmods, extra_config=config)
    minion.actions = lambda: json.loads(state.read_text())["actions"] if state.exists() else []
    return minion


def tarball(tmp_path, version):
    path = share.release_tarball(tmp_path / "releases" / version / "mas-cli-x86_64-linux.tar.gz", version)
    return {"source": str(path), "source_hash": "sha256=" + hashlib.sha256(path.read_bytes()).hexdigest()}


def restarts(actions):
    return [a for a in actions if a[0] in ("start", "restart")]


def test_release_tarball_installed_beside_and_restarted_once(minion, minimal_pillar, paths, tmp_path):
    mas_target.require_double_contracts()  # the unit's ExecStartPre runs config check
    pillar = deep_update(minimal_pillar, {"service": {"manage": True}, "user": "root", "group": "root"})
    pillar["binary"] = tarball(tmp_path, "1.23.0")
    res = minion.apply(pillar)
    assert res.returncode == 0, res.output
    base = paths["base"]
    releases = sorted((base / "dist").iterdir())
    assert len(releases) == 1
    first = releases[0]
    assert first.name == "mas-cli-" + pillar["binary"]["source_hash"][len("sha256=") :][:16]
    # upstream's layout, extracted as is
    for name in ("mas-cli", "LICENSE", *share.SHARE_LAYOUT):
        assert (first / name).exists() or (first / "share" / name).exists(), name
    assert (first / "mas-cli").stat().st_mode & 0o111

    # config.yaml points MAS at share/ with absolute paths (a release build
    # would look under ./share/ of its working directory, the data dir)
    config = yaml.safe_load((base / "config" / "config.yaml").read_text())
    share_dir = first / "share"
    assert config["policy"]["wasm_module"] == str(share_dir / "policy.wasm")
    assert config["templates"] == {
        "path": f"{share_dir / 'templates'}/",
        "assets_manifest": str(share_dir / "manifest.json"),
        "translations_path": f"{share_dir / 'translations'}/",
    }
    assets = [r for r in config["http"]["listeners"][0]["resources"] if r["name"] == "assets"]
    assert assets == [{"name": "assets", "path": f"{share_dir / 'assets'}/"}]
    unit = (paths["units"] / "matrix-authentication-service.service").read_text()
    assert f"ExecStart={first / 'mas-cli'} -c {base / 'config' / 'config.yaml'} server" in unit
    assert f"ExecStartPre={first / 'mas-cli'} -c {base / 'config' / 'config.yaml'} config check" in unit

    # the installed mas-cli accepts the rendered config (the unit's ExecStartPre)
    wrapper = str(base / "bin" / "mas-cli")
    check = subprocess.run([wrapper, "config", "check"], capture_output=True, text=True, env=cli_env(), check=False)
    assert check.returncode == 0, check.stderr
    assert "Configuration file looks good" in check.stderr
    assert subprocess.run([wrapper, "--version"], capture_output=True, text=True, check=True).stdout.strip() == (
        "mas-cli 1.23.0"
    )
    assert restarts(minion.actions()) == [["start", "matrix-authentication-service"]]

    # a second apply changes nothing and restarts nothing
    actions = len(minion.actions())
    res = minion.apply(pillar)
    assert res.returncode == 0, res.output
    assert res.changed == []
    assert len(minion.actions()) == actions

    # a new release installs beside the old one and restarts MAS once
    pillar["binary"] = tarball(tmp_path, "1.24.0")
    res = minion.apply(pillar)
    assert res.returncode == 0, res.output
    releases = sorted((base / "dist").iterdir())
    assert len(releases) == 2 and first in releases
    second = next(r for r in releases if r != first)
    assert "mas-install-binary-mas-release_extracted" in res.changed
    assert restarts(minion.actions()[actions:]) == [["restart", "matrix-authentication-service"]]
    unit = (paths["units"] / "matrix-authentication-service.service").read_text()
    assert f"ExecStart={second / 'mas-cli'} -c" in unit
    version = subprocess.run([wrapper, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    assert version == "mas-cli 1.24.0"

    # ... and the apply after that changes nothing again
    actions = len(minion.actions())
    res = minion.apply(pillar)
    assert res.returncode == 0 and res.changed == [], res.output
    assert len(minion.actions()) == actions


def test_wrong_source_hash_installs_nothing(minion, minimal_pillar, paths, tmp_path):
    binary = tarball(tmp_path, "1.23.0")
    binary["source_hash"] = "sha256=" + "0" * 64
    pillar = dict(minimal_pillar, binary=binary)
    res = minion.apply(pillar)
    assert res.returncode != 0
    assert "mas-install-binary-mas-release_extracted" in res.failed
    assert not any((paths["base"] / "dist").glob("*/mas-cli"))


@pytest.mark.parametrize(
    ("binary", "message"),
    [
        (
            "/usr/local/bin/mas-cli",
            "mas:binary: must now be a mapping, not the path '/usr/local/bin/mas-cli': {source:",
        ),
        ({"source": "/tmp/mas.tar.gz"}, "mas:binary:source_hash: is required with mas:binary:source"),
        (
            {"source": "/tmp/mas.tar.gz", "source_hash": "sha256=" + "a" * 64, "path": "/usr/bin/mas-cli"},
            "mas:binary:path: must be left empty with mas:binary:source",
        ),
        ({"path": "/usr/bin/mas-cli"}, "mas:binary:share_dir: is required with mas:runtime binary"),
        ({"source": "ftp://example.com/mas.tar.gz", "source_hash": "a" * 64}, "mas:binary:source: must be the URL"),
    ],
)
def test_binary_pillar_errors_name_the_key(minion, minimal_pillar, paths, binary, message):
    pillar = dict(minimal_pillar, binary=binary)
    res = minion.apply(pillar)
    assert res.returncode != 0
    assert message in res.output
    assert not paths["base"].exists()
