"""Unit tests of ``_modules/mas_proxy.py``: the compatibility routes and MAS's public route for nginx and Traefik."""

import re

import pytest

from formula_modules import MODULES, configure_loader_modules, mapdata  # noqa: F401 (the loader fixture)
from saltrun import REPO_ROOT

mas_mod = MODULES["mas"]
mas_proxy = MODULES["mas_proxy"]


COMPAT = re.compile(mas_proxy.COMPAT_REGEX)


@pytest.mark.parametrize(
    "path",
    [
        "/_matrix/client/v3/login",
        "/_matrix/client/r0/login",
        "/_matrix/client/v3/login/sso/redirect/oidc-x",
        "/_matrix/client/v3/logout",
        "/_matrix/client/v3/logout/all",
        "/_matrix/client/unstable/refresh",
    ],
)
def test_compat_regex_matches_the_compat_paths(path):
    assert COMPAT.search(path)


@pytest.mark.parametrize(
    "path",
    [
        "/_matrix/client/v3/sync",
        "/_matrix/client/v3/user/@alice:example.com/account_data/login",
        "/_matrix/client/v3/rooms/!r:example.com/state/m.room.name/refresh",
        "/_matrix/client/v3/loginx",
        "/_synapse/mas/is_localpart_available",
        "/auth/_matrix/client/v3/login",
    ],
)
def test_compat_regex_leaves_look_alikes_alone(path):
    assert not COMPAT.search(path)


def test_nginx_settings_default():
    out = mas_proxy.settings(mapdata())
    assert out["type"] == "nginx" and out["service"] == "nginx" and out["check"] == ["nginx", "-t"]
    assert out["reload"] is True
    (snippet,) = out["files"]
    assert snippet["path"] == "/etc/nginx/snippets/matrix-authentication-service.conf"
    assert snippet["server"] == "matrix.example.com"
    route = snippet["context"]
    assert route["upstream"] == "http://127.0.0.1:8080"
    assert route["compat"] == {"regex": mas_proxy.COMPAT_REGEX, "prefix": "/auth"}
    assert route["public"] == {"location": "^~ /auth/"}
    assert route["well_known"] is None


def test_nginx_settings_migrating_keeps_only_the_public_route():
    route = mas_proxy.settings(mapdata(migration_in_progress=True))["files"][0]["context"]
    assert route["compat"] is None
    assert route["public"] == {"location": "^~ /auth/"}


def test_nginx_well_known_document():
    route = mas_proxy.settings(mapdata(proxy={"nginx": {"well_known": True}}))["files"][0]["context"]
    assert route["well_known"] == (
        '\'{"m.homeserver":{"base_url":"https://matrix.example.com/"},'
        '"org.matrix.msc2965.authentication":{"account":"https://matrix.example.com/auth/account",'
        '"issuer":"https://matrix.example.com/auth/"}}\''
    )
    migrating = mapdata(migration_in_progress=True, proxy={"nginx": {"well_known": True}})
    assert "msc2965" not in mas_proxy.settings(migrating)["files"][0]["context"]["well_known"]


def test_nginx_own_host_with_root_prefix_gets_a_second_snippet():
    out = mas_proxy.settings(
        mapdata(hostname="auth.example.com", path_prefix="/", proxy={"nginx": {"mas_upstream": "http://mas:8080"}})
    )
    matrix, public = out["files"]
    assert matrix["context"]["compat"] == {"regex": mas_proxy.COMPAT_REGEX, "prefix": ""}
    assert matrix["context"]["public"] is None
    assert matrix["context"]["upstream"] == "http://mas:8080"
    assert public["path"] == "/etc/nginx/snippets/matrix-authentication-service-public.conf"
    assert public["server"] == "auth.example.com"
    assert public["context"]["public"] == {"location": "/"} and public["context"]["compat"] is None


def test_nginx_upstream_follows_the_web_bind():
    assert (
        mas_proxy.settings(mapdata(http={"web_bind": "127.0.0.2:9090"}))["files"][0]["context"]["upstream"]
        == "http://127.0.0.2:9090"
    )
    assert (
        mas_proxy.settings(mapdata(http={"web_bind": "[::1]:8080"}))["files"][0]["context"]["upstream"]
        == "http://[::1]:8080"
    )


def test_traefik_dynamic_config():
    out = mas_proxy.settings(
        mapdata(
            runtime="binary",
            binary={"path": "/usr/local/bin/mas-cli", "share_dir": "/usr/local/share/mas-cli"},
            proxy={"type": "traefik", "traefik": {"certresolver": "le"}},
        )
    )
    (dynamic,) = out["files"]
    assert dynamic["path"] == "/etc/traefik/dynamic/matrix-authentication-service.yml"
    http = dynamic["context"]["config"]["http"]
    name = "matrix-authentication-service"
    assert http["routers"][name] == {
        "rule": "Host(`matrix.example.com`) && PathPrefix(`/auth/`)",
        "entryPoints": ["websecure"],
        "service": name,
        "tls": {"certResolver": "le"},
    }
    compat = http["routers"][f"{name}-compat"]
    assert compat["rule"] == f"Host(`matrix.example.com`) && PathRegexp(`{mas_proxy.COMPAT_REGEX}`)"
    assert compat["middlewares"] == [f"{name}-compat-prefix"] and compat["service"] == name
    assert http["middlewares"] == {f"{name}-compat-prefix": {"addPrefix": {"prefix": "/auth"}}}
    assert http["services"][name]["loadBalancer"]["servers"] == [{"url": "http://127.0.0.1:8080"}]
    assert out["labels"] == {} and out["service"] == "traefik"


def test_traefik_migrating_and_root_prefix():
    out = mas_proxy.settings(
        mapdata(migration_in_progress=True, hostname="auth.example.com", path_prefix="/", proxy={"type": "traefik"})
    )
    http = out["files"][0]["context"]["config"]["http"]
    assert list(http["routers"]) == ["matrix-authentication-service"]
    assert http["routers"]["matrix-authentication-service"]["rule"] == "Host(`auth.example.com`)"
    assert "middlewares" not in http


def test_traefik_labels_for_docker():
    labels = mas_proxy.settings(mapdata(proxy={"type": "traefik"}))["labels"]
    name = "matrix-authentication-service"
    assert labels["traefik.enable"] == "true"
    assert labels[f"traefik.http.routers.{name}-compat.middlewares"] == f"{name}-compat-prefix"
    assert labels[f"traefik.http.routers.{name}-compat.tls"] == "true"
    assert labels[f"traefik.http.middlewares.{name}-compat-prefix.addPrefix.prefix"] == "/auth"
    assert labels[f"traefik.http.services.{name}.loadbalancer.server.port"] == "8080"
    assert not any(".servers" in key for key in labels)


def test_proxy_none_and_clean():
    assert mas_proxy.settings(mapdata(proxy={"type": "none"}))["files"] == []
    disabled = mapdata(enabled=False, server_name="")
    clean = mas_proxy.settings(disabled, clean=True)
    assert [(f["name"], f["action"]) for f in clean["files"]] == [("snippet", "empty"), ("public-snippet", "empty")]
    assert clean["files"][0]["context"]["disabled"] == "MAS is disabled (mas:enabled is false)"
    traefik = mas_proxy.settings(mapdata(enabled=False, proxy={"type": "traefik"}), clean=True)
    assert [(f["name"], f["action"]) for f in traefik["files"]] == [("config", "absent")]


def written(entry, tmp_path):
    """The text ``mas.proxy.file`` writes for a file of :py:func:`mas_proxy.settings` (the formula's template,
    rendered by ``mas.render`` from this checkout, as the SLS does)."""
    mas_mod.__opts__.update(file_client="local", file_roots={"base": [str(REPO_ROOT)]}, cachedir=str(tmp_path))
    server = entry.get("server", "")
    return mas_mod.render([entry["template"]], "mas-proxy-file-test", {"server": server, "route": entry["context"]})


def test_leftovers_of_another_proxy_type_are_cleaned(tmp_path):
    """Files the formula wrote for another proxy type (the formula's own text, routes left) are
    emptied (nginx) or removed (Traefik), with their proxy reloaded; files it
    did not write, or already emptied, are left alone."""
    snippet, public, dynamic = tmp_path / "mas.conf", tmp_path / "mas-public.conf", tmp_path / "mas.yml"
    proxy = {
        "nginx": {"snippet_path": str(snippet), "public_snippet_path": str(public)},
        "traefik": {"config_path": str(dynamic)},
    }
    (routes,) = mas_proxy.settings(mapdata(proxy=dict(proxy, type="nginx")))["files"]
    snippet.write_text(written(routes, tmp_path))
    public.write_text("# someone else's\nlocation / {}\n")
    out = mas_proxy.settings(mapdata(proxy=dict(proxy, type="traefik")))
    assert [(f["id"], f["action"]) for f in out["leftovers"]] == [
        ("mas-proxy-file-file-managed-leftover-nginx-snippet", "empty")
    ]
    assert out["leftovers"][0]["context"]["disabled"] == "MAS is not routed through nginx (mas:proxy:type is traefik)"
    assert out["leftover_reloads"] == [
        {
            "kind": "nginx",
            "service": "nginx",
            "check": ["nginx", "-t"],
            "ids": ["mas-proxy-file-file-managed-leftover-nginx-snippet"],
        }
    ]
    # what mas.proxy.file writes over the leftover: the emptied snippet, no route left
    snippet.write_text(written(out["leftovers"][0], tmp_path))
    assert "location" not in snippet.read_text() and mas_mod.managed_by_formula(str(snippet))
    assert mas_proxy.settings(mapdata(proxy=dict(proxy, type="traefik")))["leftovers"] == []
    (config,) = out["files"]
    dynamic.write_text(written(config, tmp_path))
    back = mas_proxy.settings(mapdata(proxy=dict(proxy, type="none")))
    assert [(f["id"], f["action"]) for f in back["leftovers"]] == [
        ("mas-proxy-file-file-absent-leftover-traefik-config", "absent")
    ]
    assert back["leftover_reloads"][0]["check"] is None


def test_reload_states_check_then_reload_on_the_file_changes_only():
    ids = ["mas-proxy-file-file-managed-snippet", "mas-proxy-file-file-managed-public"]
    states = mas_proxy.reload_states("p", "nginx", ["nginx", "-t"], ids, "-x")
    onchanges = {"onchanges": [{"file": ids[0]}, {"file": ids[1]}]}
    assert list(states) == ["p-check-x", "p-reload-x"]  # the check first: Salt keeps definition order
    assert states["p-check-x"] == {"module.run": [{"mas_proxy.check": [{"argv": ["nginx", "-t"]}]}, onchanges]}
    assert states["p-reload-x"] == {
        "module.run": [{"service.reload": [{"name": "nginx"}]}, onchanges, {"require": [{"module": "p-check-x"}]}]
    }


def test_reload_states_without_a_check():
    states = mas_proxy.reload_states("p", "traefik", [], ["f"])
    assert states == {
        "p-reload": {"module.run": [{"service.reload": [{"name": "traefik"}]}, {"onchanges": [{"file": "f"}]}]}
    }
