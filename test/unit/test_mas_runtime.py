"""Unit tests of what ``_modules/mas.py`` renders for MAS's runtime: listener binds and the binary runtime.

MAS parses ``binds[].address`` as a literal socket address (``crates/cli/src/server.rs``:
``address.parse::<SocketAddr>()``), so a host name must be rendered as ``{host, port}``.
"""

import re

import pytest
from salt.exceptions import SaltInvocationError

from formula_modules import DEFAULTS, MODULES, dunders
from pillars import deep_update

mas = MODULES["mas"]


@pytest.fixture
def configure_loader_modules():
    return dunders({})


def settings(**overrides):
    data = deep_update(DEFAULTS, {"enabled": True, "server_name": "example.com", "base_path": "/srv/mas"})
    return mas.settings(deep_update(data, overrides))


def binds(result):
    return {listener["name"]: listener["binds"] for listener in result["mas_config"]["http"]["listeners"]}


@pytest.mark.parametrize(
    ("bind", "rendered"),
    [
        ("localhost:8081", {"host": "localhost", "port": 8081}),
        ("mas.internal.example:8081", {"host": "mas.internal.example", "port": 8081}),
        ("127.0.0.1:8081", {"address": "127.0.0.1:8081"}),
        ("[::1]:8081", {"address": "[::1]:8081"}),
        ("0.0.0.0:8080", {"address": "0.0.0.0:8080"}),
        ("[::]:8080", {"address": "[::]:8080"}),
    ],
)
def test_binds_are_socket_addresses_or_host_and_port(bind, rendered):
    result = settings(http={"web_bind": bind, "internal_bind": bind})
    assert binds(result) == {"web": [rendered], "internal": [rendered]}


def test_default_internal_bind_is_host_and_port():
    # the default 'localhost:8081' as {address: ...} is what real MAS refuses at start
    assert binds(settings())["internal"] == [{"host": "localhost", "port": 8081}]


@pytest.mark.parametrize("bind", ["::1:8081", "[localhost]:8081", "[127.0.0.1]:80", "localhost", "host:0", "a b:80"])
def test_malformed_binds_are_refused_with_their_key(bind):
    with pytest.raises(SaltInvocationError, match=re.escape("mas:http:internal_bind: must be HOST:PORT")):
        settings(http={"internal_bind": bind})


HASH = "ab" * 32


def test_release_tarball_paths_and_share_wiring():
    result = settings(
        runtime="binary", binary={"source": "https://example.com/mas.tar.gz", "source_hash": "sha256=" + HASH}
    )
    release = "/srv/mas/dist/mas-cli-" + HASH[:16]
    paths = result["paths"]
    assert (paths["release_dir"], paths["mas_binary"], paths["share_dir"]) == (
        release,
        release + "/mas-cli",
        release + "/share",
    )
    config = result["mas_config"]
    assert config["policy"]["wasm_module"] == release + "/share/policy.wasm"
    assert config["policy"]["data"]["admin_clients"]  # the formula's admin client survives
    assert config["templates"] == {
        "path": release + "/share/templates/",
        "assets_manifest": release + "/share/manifest.json",
        "translations_path": release + "/share/translations/",
    }
    web = config["http"]["listeners"][0]
    assert {"name": "assets", "path": release + "/share/assets/"} in web["resources"]


def test_installed_binary_and_docker_paths():
    installed = settings(runtime="binary", binary={"path": "/usr/bin/mas-cli", "share_dir": "/usr/share/mas-cli"})
    assert installed["paths"]["mas_binary"] == "/usr/bin/mas-cli" and installed["paths"]["release_dir"] is None
    assert installed["mas_config"]["policy"]["wasm_module"] == "/usr/share/mas-cli/policy.wasm"
    docker = settings()
    assert docker["paths"]["mas_binary"] is None
    # the image has its share/ at /usr/local/share/mas-cli: nothing to point at
    assert "templates" not in docker["mas_config"] and "wasm_module" not in docker["mas_config"]["policy"]
    assert {"name": "assets"} in docker["mas_config"]["http"]["listeners"][0]["resources"]


@pytest.mark.parametrize(
    ("binary", "key"),
    [
        ("/usr/local/bin/mas-cli", "mas:binary: must now be a mapping"),
        ({"source": "https://example.com/mas.tar.gz", "source_hash": "md5=abc"}, "mas:binary:source_hash: is required"),
        ({"source": "https://example.com/mas.tar.gz", "source_hash": HASH, "share_dir": "/x"}, "mas:binary:share_dir"),
        (
            {"path": "/usr/bin/mas-cli", "share_dir": "share"},
            "mas:binary:share_dir: must be an absolute, normalised path",
        ),
        ({"path": "/usr/bin/mas cli", "share_dir": "/s"}, "mas:binary:path: must be an absolute, normalised path"),
        ({"path": "/usr/bin/mas-cli", "share_dir": "/s", "version": "1"}, "mas:binary:version: unknown key"),
        ({"source_hash": HASH, "path": "/p", "share_dir": "/s"}, "mas:binary:source_hash: is only used with"),
    ],
)
def test_binary_pillar_is_validated(binary, key):
    data = deep_update(DEFAULTS, {"enabled": True, "server_name": "example.com", "runtime": "binary"})
    data["binary"] = binary
    with pytest.raises(SaltInvocationError, match=re.escape(key)):
        mas.settings(data)
