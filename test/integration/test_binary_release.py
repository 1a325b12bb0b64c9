"""The binary runtime installs the real MAS: upstream's release tarball, unpacked by the formula.

``mas:binary:source`` is the ``file://`` URL of ``../shared/mas-release``'s
tarball and ``mas:binary:source_hash`` its sha256 from ``SHA256SUMS``, as an
operator points them at the GitHub release. The formula extracts it under
``<base_path>/dist/``; the installed ``mas-cli`` (through ``bin/mas-cli``)
accepts the rendered config and serves ``/health``; a second apply changes
nothing; a wrong hash fails before anything is replaced, naming the key.
"""

import subprocess

import pytest
import yaml

import mas_release
from harness.util import free_port, stop_process, unavailable, wait_for_http
from pillars import PILLAR_SECRETS, deep_update, wired_pillar

pytestmark = pytest.mark.integration

RELEASE = "mas-install-binary-mas-release_extracted"


@pytest.fixture(scope="module")
def release():
    try:
        return mas_release.verified()
    except mas_release.ReleaseError as exc:
        unavailable(f"needs the real MAS release: {exc}")
        raise


def test_release_tarball_installed_run_and_kept(release, salt_minion, synapse_factory, pg, tmp_path):
    tarball, digest = release
    dbname = f"mas_release_{free_port()}"
    pg.create_database(dbname)
    web, internal = free_port(), free_port()
    pillar = deep_update(
        wired_pillar(tmp_path, pg, dbname, synapse_factory(), web, internal),
        {"secrets": {"homeserver_secret": PILLAR_SECRETS["homeserver_secret"]}},
    )
    pillar["binary"] = {"source": f"file://{tarball}", "source_hash": f"sha256={digest}"}
    base = tmp_path / "mas"
    res = salt_minion.apply(pillar)
    assert res.returncode == 0, res.output
    assert RELEASE in res.changed
    release_dir = base / "dist" / f"mas-cli-{digest[:16]}"
    assert sorted(p.name for p in (base / "dist").iterdir()) == [release_dir.name]
    assert (release_dir / "mas-cli").stat().st_mode & 0o111 and (release_dir / "share" / "policy.wasm").is_file()
    config_file = base / "config" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    assert config["policy"]["wasm_module"] == str(release_dir / "share" / "policy.wasm")

    wrapper = str(base / "bin" / "mas-cli")
    version = subprocess.run([wrapper, "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("mas-cli v1.")
    check = subprocess.run([wrapper, "config", "check"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    log = (tmp_path / "mas-server.log").open("wb")
    server = subprocess.Popen([wrapper, "server"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for_http(f"http://127.0.0.1:{internal}/health", timeout=60, proc=server)
        assert server.poll() is None
    finally:
        stop_process(server)
        log.close()

    # a second apply changes nothing
    again = salt_minion.apply(pillar)
    assert again.returncode == 0 and again.changed == [], again.changed

    # a wrong hash: refused naming the key, before anything that points at the release is replaced
    before = {path: path.read_bytes() for path in (config_file, base / "bin" / "mas-cli")}
    unit = next((tmp_path / "systemd").iterdir())
    before[unit] = unit.read_bytes()
    wrong = "f" * 64
    broken = deep_update(pillar, {"binary": {"source_hash": f"sha256={wrong}"}})
    res = salt_minion.apply(broken)
    assert res.returncode != 0
    failed = res.by_id(RELEASE)
    assert failed["result"] is False and failed["comment"].startswith("mas:binary:source_hash: ")
    assert f"has sha256 {digest}, not {wrong}" in failed["comment"]
    assert "mas-config-file-file-managed" in res.failed or res.by_id("mas-config-file-file-managed")["result"] is False
    assert {path: path.read_bytes() for path in before} == before
    assert sorted(p.name for p in (base / "dist").iterdir() if (p / "mas-cli").exists()) == [release_dir.name]
