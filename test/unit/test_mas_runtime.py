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
        (":8080", {"port": 8080}),
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
