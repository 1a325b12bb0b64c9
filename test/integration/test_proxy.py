"""The compatibility layer and MAS's public route (``mas.proxy``, issue 4).

The proxy files are rendered by the real ``salt-call``; nginx runs them on
loopback in front of two echo upstreams ("mas" and "synapse"), and every
request is checked for where it lands and with which path. Traefik has no
Debian package: its dynamic configuration is parsed and checked.
"""

import re

import pytest
import requests
import yaml

from pillars import deep_update

pytestmark = pytest.mark.integration

PREFIX = "/auth"
TO_MAS_COMPAT = [
    ("GET", "/_matrix/client/v3/login"),
    ("POST", "/_matrix/client/v3/login"),
    ("GET", "/_matrix/client/r0/login"),
    ("GET", "/_matrix/client/v3/login/sso/redirect/oidc-x?redirectUrl=https%3A%2F%2Fapp.example.com%2F%3Fa%3Db"),
    ("POST", "/_matrix/client/v3/logout"),
    ("POST", "/_matrix/client/v3/logout/all"),
    ("POST", "/_matrix/client/unstable/refresh"),
    ("POST", "/_matrix/client/v1/refresh"),
]
TO_SYNAPSE = [
    ("GET", "/_matrix/client/v3/sync"),
    ("GET", "/_matrix/client/versions"),
    ("PUT", "/_matrix/client/v3/user/@alice:example.com/account_data/login"),
    ("GET", "/_matrix/client/v3/rooms/!r:example.com/state/m.room.name/refresh"),
    ("GET", "/_matrix/client/v3/loginx"),
    ("GET", "/_synapse/mas/is_localpart_available?localpart=alice"),
    ("POST", "/_synapse/mas/provision_user"),
    ("GET", "/_synapse/client/oidc/callback"),
]
MAS_PUBLIC = [
    ("GET", "/auth/"),
    ("GET", "/auth/.well-known/openid-configuration"),
    ("POST", "/auth/oauth2/token"),
    ("GET", "/auth/account/?action=profile"),
    ("GET", "/auth/assets/app.js"),
]


def land(server, method, path):
    """Send a request through nginx; return ``(upstream, path seen upstream, headers)``."""
    resp = requests.request(method, server.base_url + path, timeout=10, allow_redirects=False)
    assert resp.status_code == 200, f"{method} {path}: {resp.status_code} {resp.text[:200]}"
    data = resp.json()
    return data["upstream"], data["path"], data["headers"]


@pytest.fixture(scope="module")
def minion(module_salt_minion):
    return module_salt_minion


@pytest.fixture(scope="module")
def upstreams(echo_upstream):
    return {"mas": echo_upstream("mas"), "synapse": echo_upstream("synapse")}


@pytest.fixture(scope="module")
def render(minion, upstreams, tmp_path_factory):
    """``render(name, **pillar)`` applies ``mas.proxy`` and returns the file paths.

    One MAS tree and one Synapse config are shared (no conflicting setting);
    each variant writes its own proxy files.
    """
    root = tmp_path_factory.mktemp("proxy")
    synapse_dir = root / "synapse"
    (synapse_dir / "conf.d").mkdir(parents=True)
    (synapse_dir / "homeserver.yaml").write_text(yaml.safe_dump({"server_name": "example.com"}))

    def _render(name, base=None, sls="mas.proxy", **overrides):
        out = root / name
        files = {
            "snippet": out / "nginx" / "matrix-authentication-service.conf",
            "public": out / "nginx" / "matrix-authentication-service-public.conf",
            "traefik": out / "traefik" / "matrix-authentication-service.yml",
        }
        pillar = {
            "enabled": True,
            "server_name": "example.com",
            "runtime": "binary",
            "binary": {"path": "/usr/local/bin/mas-cli", "share_dir": "/usr/local/share/mas-cli"},
            "base_path": str(base or root / "mas"),
            "service": {"manage": False, "unit_dir": str(root / "units")},
            "synapse": {
                "restart": False,
                "user": "root",
                "group": "root",
                "config_files": [str(synapse_dir / "homeserver.yaml")],
                "config_dir": str(synapse_dir / "conf.d"),
            },
            "proxy": {
                "reload": False,
                "nginx": {
                    "snippet_path": str(files["snippet"]),
                    "public_snippet_path": str(files["public"]),
                    "mas_upstream": upstreams["mas"].url,
                },
                "traefik": {"config_path": str(files["traefik"]), "mas_url": upstreams["mas"].url},
            },
            # no Synapse or MAS database behind these paths: the syn2mas guards (lock-out, rollback) cannot
            # look, so say it is a new homeserver
            "syn2mas": {"assume_fresh": True, "force_rollback": True},
        }
        res = minion.apply(deep_update(pillar, overrides), sls=sls)
        assert res.returncode == 0, res.output
        return files

    return _render


@pytest.fixture(scope="module")
def nginx_for(nginx_factory, upstreams):
    """``nginx_for(*snippets)``: a started nginx whose ``location /`` is Synapse."""

    def _start(*snippets, synapse=True):
        server = nginx_factory(
            synapse_upstream=upstreams["synapse"].url if synapse else None, include_files=list(snippets)
        )
        ok, output = server.test_config()
        assert ok, output
        return server.start()

    return _start


@pytest.fixture(scope="module")
def prefixed(render, nginx_for):
    files = render("prefixed", proxy={"nginx": {"well_known": True}})
    return {"files": files, "nginx": nginx_for(files["snippet"])}


@pytest.fixture(scope="module")
def own_host(render, nginx_for):
    files = render("own-host", hostname="auth.example.com", path_prefix="/")
    return {
        "files": files,
        "matrix": nginx_for(files["snippet"]),
        "mas": nginx_for(files["public"], synapse=False),
    }


@pytest.fixture(scope="module")
def migrating(render, nginx_for):
    files = render("migrating", migration_in_progress=True, proxy={"nginx": {"well_known": True}})
    return {"files": files, "nginx": nginx_for(files["snippet"])}


# -------------------------------------------------------------------- nginx


@pytest.mark.parametrize(("method", "path"), TO_MAS_COMPAT)
def test_compat_routes_reach_mas_with_the_prefix(prefixed, method, path):
    upstream, seen, headers = land(prefixed["nginx"], method, path)
    assert (upstream, seen) == ("mas", PREFIX + path)
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "http"


@pytest.mark.parametrize(("method", "path"), TO_SYNAPSE + [("GET", "/authx/")])
def test_everything_else_reaches_synapse(prefixed, method, path):
    assert land(prefixed["nginx"], method, path)[:2] == ("synapse", path)


@pytest.mark.parametrize(("method", "path"), MAS_PUBLIC)
def test_mas_public_path_reaches_mas(prefixed, method, path):
    upstream, seen, headers = land(prefixed["nginx"], method, path)
    assert (upstream, seen) == ("mas", path)
    assert headers["X-Forwarded-Proto"] == "http"


def test_well_known_points_clients_at_mas(prefixed):
    resp = requests.get(prefixed["nginx"].base_url + "/.well-known/matrix/client", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert resp.json() == {
        "m.homeserver": {"base_url": "https://matrix.example.com/"},
        "org.matrix.msc2965.authentication": {
            "issuer": "https://matrix.example.com/auth/",
            "account": "https://matrix.example.com/auth/account",
        },
    }


def test_snippet_is_a_managed_file(prefixed):
    text = prefixed["files"]["snippet"].read_text()
    assert text.startswith("# File managed by Salt")
    assert "server` block of matrix.example.com" in text
    assert not prefixed["files"]["public"].exists()


def test_readme_server_block_order(prefixed, nginx_for, upstreams, tmp_path):
    """The README's server block: the snippet first, then Synapse's usual
    regex location (nginx takes the first matching regex)."""
    synapse_location = tmp_path / "synapse-location.conf"
    synapse_location.write_text(
        f"location ~ ^(/_matrix|/_synapse/client) {{\n    proxy_pass {upstreams['synapse'].url};\n}}\n"
    )
    server = nginx_for(prefixed["files"]["snippet"], synapse_location, synapse=False)
    for method, path in TO_MAS_COMPAT:
        assert land(server, method, path)[:2] == ("mas", PREFIX + path)
    for method, path in TO_SYNAPSE:
        if not path.startswith("/_synapse/mas/"):  # not public in the README's block
            assert land(server, method, path)[:2] == ("synapse", path)
    assert land(server, "GET", "/auth/")[:2] == ("mas", "/auth/")


@pytest.mark.parametrize(("method", "path"), TO_MAS_COMPAT)
def test_root_prefix_compat_routes_reach_mas_unchanged(own_host, method, path):
    assert land(own_host["matrix"], method, path)[:2] == ("mas", path)


@pytest.mark.parametrize(("method", "path"), TO_SYNAPSE + [("GET", "/auth/")])
def test_root_prefix_matrix_host_keeps_the_rest_on_synapse(own_host, method, path):
    assert land(own_host["matrix"], method, path)[:2] == ("synapse", path)


@pytest.mark.parametrize("path", ["/", "/.well-known/openid-configuration", "/oauth2/token", "/account/"])
def test_root_prefix_mas_host_serves_everything_from_mas(own_host, path):
    upstream, seen, headers = land(own_host["mas"], "GET", path)
    assert (upstream, seen) == ("mas", path)
    assert headers["X-Forwarded-For"] == "127.0.0.1"


def test_root_prefix_snippets_name_their_server_block(own_host):
    assert "server` block of matrix.example.com" in own_host["files"]["snippet"].read_text()
    assert "server` block of auth.example.com" in own_host["files"]["public"].read_text()


@pytest.mark.parametrize(("method", "path"), TO_MAS_COMPAT + TO_SYNAPSE)
def test_migrating_keeps_every_client_route_on_synapse(migrating, method, path):
    assert land(migrating["nginx"], method, path)[:2] == ("synapse", path)


@pytest.mark.parametrize(("method", "path"), MAS_PUBLIC)
def test_migrating_keeps_the_mas_public_route(migrating, method, path):
    assert land(migrating["nginx"], method, path)[:2] == ("mas", path)


def test_migrating_well_known_does_not_announce_mas(migrating):
    resp = requests.get(migrating["nginx"].base_url + "/.well-known/matrix/client", timeout=10)
    assert resp.json() == {"m.homeserver": {"base_url": "https://matrix.example.com/"}}


def test_clean_empties_the_snippet_and_nginx_still_loads(render, nginx_for, tmp_path_factory):
    """mas:enabled false: the included snippet stays (nginx would fail on a
    missing include) but holds no route; logins go back to Synapse."""
    base = tmp_path_factory.mktemp("proxy-clean-base")
    files = render("clean", base=base)
    assert "location" in files["snippet"].read_text()
    render("clean", base=base, sls="mas.proxy.clean", enabled=False)
    text = files["snippet"].read_text()
    assert "location" not in text and "MAS is disabled" in text
    assert not files["public"].exists()
    server = nginx_for(files["snippet"])
    assert land(server, "GET", "/_matrix/client/v3/login")[:2] == ("synapse", "/_matrix/client/v3/login")


# ------------------------------------------------------------------ Traefik


def traefik_routes(path):
    text = path.read_text()
    assert text.startswith("# File managed by Salt")
    return yaml.safe_load(text)["http"]


def rule_regex(rule):
    match = re.search(r"PathRegexp\(`([^`]+)`\)", rule)
    assert match, rule
    return re.compile(match.group(1))


def test_traefik_dynamic_configuration(render, upstreams):
    files = render("traefik", proxy={"type": "traefik", "traefik": {"certresolver": "letsencrypt"}})
    http = traefik_routes(files["traefik"])
    name = "matrix-authentication-service"
    assert set(http["routers"]) == {name, f"{name}-compat"}
    public, compat = http["routers"][name], http["routers"][f"{name}-compat"]
    assert public["rule"] == "Host(`matrix.example.com`) && PathPrefix(`/auth/`)"
    assert compat["rule"].startswith("Host(`matrix.example.com`) && PathRegexp(")
    for router in (public, compat):
        assert router["entryPoints"] == ["websecure"]
        assert router["service"] == name
        assert router["tls"] == {"certResolver": "letsencrypt"}
    assert compat["middlewares"] == [f"{name}-compat-prefix"]
    assert compat["priority"] > 0
    assert http["middlewares"] == {f"{name}-compat-prefix": {"addPrefix": {"prefix": "/auth"}}}
    assert http["services"] == {
        name: {"loadBalancer": {"servers": [{"url": upstreams["mas"].url}], "passHostHeader": True}}
    }
    regex = rule_regex(compat["rule"])
    for _, path in TO_MAS_COMPAT:
        assert regex.search(path.split("?")[0]), path
    for _, path in TO_SYNAPSE:
        assert not regex.search(path.split("?")[0]), path
    assert not files["snippet"].exists()


def test_traefik_migrating_and_own_host(render):
    files = render(
        "traefik-migrating",
        migration_in_progress=True,
        hostname="auth.example.com",
        path_prefix="/",
        proxy={"type": "traefik"},
    )
    http = traefik_routes(files["traefik"])
    assert list(http["routers"]) == ["matrix-authentication-service"]
    assert http["routers"]["matrix-authentication-service"]["rule"] == "Host(`auth.example.com`)"
    assert http["routers"]["matrix-authentication-service"]["tls"] == {}
    assert "middlewares" not in http


def test_proxy_none_writes_nothing(render):
    files = render("none", proxy={"type": "none"})
    assert not any(path.exists() for path in files.values())
