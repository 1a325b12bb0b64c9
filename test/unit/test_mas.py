"""Unit tests of ``_modules/mas.py``: the map (merge, validation, derived values and paths, config.yaml).

The functions run for real; only what the loader would inject is given
(``formula_modules.dunders``).
"""

import re

import pytest
from salt.exceptions import SaltInvocationError

from formula_modules import DEFAULTS, MODULES, configure_loader_modules  # noqa: F401 (the loader fixture)
from pillars import deep_update

mas = MODULES["mas"]


def settings(**overrides):
    data = deep_update(DEFAULTS, {"enabled": True, "server_name": "example.com", "base_path": "/srv/mas"})
    return mas.settings(deep_update(data, overrides))


def test_settings_derives_public_base_paths_and_redacts_secrets():
    result = settings(
        secrets={"encryption": "a" * 64},
        database={"password": "pw-secret"},
        upstream_oauth2_providers=[
            {
                "id": "01HFVBY12TMNTYTBV8W921M5FA",
                "issuer": "https://id.example.com/",
                "client_id": "c",
                "client_secret": "cs-secret",
                "token_endpoint_auth_method": "client_secret_basic",
            }
        ],
    )
    assert result["hostname"] == "matrix.example.com"
    assert result["public_base"] == "https://matrix.example.com/auth/"
    assert result["paths"]["config_file"] == "/srv/mas/config/config.yaml"
    assert result["synapse"]["mas_endpoint"] == "http://localhost:8080/auth/"
    assert result["database"]["password_set"] is True and "password" not in result["database"]
    assert result["secrets"]["encryption_set"] is True and "encryption" not in result["secrets"]
    text = repr(result)
    for secret in ("a" * 64, "pw-secret", "cs-secret"):
        assert secret not in text
    provider = result["mas_config"]["upstream_oauth2"]["providers"][0]
    assert provider["client_secret_file"] == "/srv/mas/config/secrets/upstream-01HFVBY12TMNTYTBV8W921M5FA.secret"
    kinds = {entry["name"]: entry["kind"] for entry in result["secret_files"]}
    assert kinds["encryption"] == "hex32" and kinds["key-rsa"] == "rsa"
    assert kinds["database_password"] == "pillar" and kinds["provider-01HFVBY12TMNTYTBV8W921M5FA"] == "pillar"


def test_settings_collects_every_error_at_once():
    with pytest.raises(SaltInvocationError) as err:
        settings(hostname="bad_host!", path_prefix="auth", runtime="lxc")
    text = str(err.value)
    assert "mas:hostname" in text and "mas:path_prefix" in text and "mas:runtime" in text
    assert "nothing was changed" in text


def test_settings_root_prefix_and_mas_config_overrides():
    result = settings(
        path_prefix="/", hostname="auth.example.com", config={"http": {"public_base": "https://other.example.com/"}}
    )
    assert result["public_base"] == "https://auth.example.com/"
    assert result["synapse"]["mas_endpoint"] == "http://localhost:8080/"
    assert "prefix" not in result["mas_config"]["http"]["listeners"][0]
    # mas:config is merged last and wins
    assert result["mas_config"]["http"]["public_base"] == "https://other.example.com/"


def test_mapdata_is_computed_once_per_pillar(pillar):
    pillar["mas"] = {"enabled": True, "server_name": "example.com"}
    first = mas.mapdata()
    first["hostname"] = "changed-by-caller"
    assert mas.mapdata()["hostname"] == "matrix.example.com"
    # one computed map for this pillar (its text, and the shared copy the module's own lookups read)
    assert len({k.split(":")[1] for k in mas.__context__ if k.startswith("mas.mapdata:")}) == 1
    pillar["mas"]["server_name"] = "example.org"
    assert mas.mapdata()["hostname"] == "matrix.example.org"


@pytest.mark.parametrize(
    "prefix,ok", [("/auth", True), ("/", True), ("/a/b", True), ("/auth/", False), ("auth", False), ("/a//b", False)]
)
def test_path_prefix_rules(prefix, ok):
    if ok:
        settings(path_prefix=prefix, hostname="auth.example.com")
    else:
        with pytest.raises(SaltInvocationError, match="mas:path_prefix"):
            settings(path_prefix=prefix, hostname="auth.example.com")


def test_root_prefix_needs_its_own_host():
    with pytest.raises(SaltInvocationError, match="'/' needs MAS on its own host name"):
        settings(path_prefix="/")
    settings(path_prefix="/", proxy={"type": "none"})


def test_mapdata_merges_lookup_then_pillar_and_redacts_user_passwords(pillar):
    pillar["mas"] = {
        "lookup": {"user": "from-lookup", "group": "from-lookup"},
        "enabled": True,
        "server_name": "example.com",
        "group": "from-pillar",
        "users": [{"username": "bot", "password": "Bot-Secret-1", "admin": True}],
    }
    result = mas.mapdata(DEFAULTS)
    assert (result["user"], result["group"]) == ("from-lookup", "from-pillar")
    assert result["users"][0]["password_pillar_key"] == "mas:users:0:password"
    assert (result["users"][0]["username"], result["users"][0]["admin"]) == ("bot", True)
    assert "Bot-Secret-1" not in repr(result)
    assert result["api"]["token_url"] == "http://127.0.0.1:8080/auth/oauth2/token"
    assert result["api"]["admin_url"] == "http://localhost:8081/api/admin/v1"


def test_secrets_under_lookup_are_refused(pillar):
    pillar["mas"] = {
        "enabled": True,
        "server_name": "example.com",
        "lookup": {"secrets": {"encryption": "a" * 64}, "database": {"password": "x"}},
    }
    with pytest.raises(SaltInvocationError) as err:
        mas.mapdata(DEFAULTS)
    assert "mas:lookup:secrets:encryption: secrets belong under mas:secrets:encryption" in str(err.value)
    assert "mas:lookup:database:password" in str(err.value)
    assert "a" * 64 not in str(err.value)


@pytest.mark.parametrize(
    ("synapse", "key"),
    [
        ({"dropin_name": "mas.conf"}, "mas:synapse:dropin_name"),
        ({"dropin_name": "../x.yaml"}, "mas:synapse:dropin_name"),
        ({"secret_path": "relative/secret"}, "mas:synapse:secret_path"),
        ({"config_dir": "conf.d"}, "mas:synapse:config_dir"),
    ],
)
def test_synapse_keys_are_validated(synapse, key):
    with pytest.raises(SaltInvocationError, match=re.escape(key)):
        settings(synapse=synapse)


@pytest.mark.parametrize(
    ("proxy", "key"),
    [
        ({"nginx": {"mas_upstream": "http://mas:8080/auth"}}, "mas:proxy:nginx:mas_upstream"),
        ({"nginx": {"snippet_path": "snippets/mas.conf"}}, "mas:proxy:nginx:snippet_path"),
        ({"matrix_hostname": "https://matrix.example.com"}, "mas:proxy:matrix_hostname"),
        ({"type": "traefik", "traefik": {"entrypoint": "web secure"}}, "mas:proxy:traefik:entrypoint"),
        ({"type": "traefik", "traefik": {"mas_url": "mas:8080"}}, "mas:proxy:traefik:mas_url"),
    ],
)
def test_proxy_keys_are_validated(proxy, key):
    with pytest.raises(SaltInvocationError, match=re.escape(key)):
        settings(proxy=proxy)


def test_files_switch_lists_overrides_first_then_default(pillar):
    pillar["mas"] = {"tofs": {"source_files": {"mas-config-file-file-managed": ["site.yaml.jinja"]}}}
    assert mas.files_switch(["config.yaml.jinja"], "mas-config-file-file-managed") == [
        "salt://mas/files/mas-config-file-file-managed/site.yaml.jinja",
        "salt://mas/files/mas-config-file-file-managed/config.yaml.jinja",
        "salt://mas/files/mas-unit/site.yaml.jinja",
        "salt://mas/files/mas-unit/config.yaml.jinja",
        "salt://mas/files/Debian/site.yaml.jinja",
        "salt://mas/files/Debian/config.yaml.jinja",
        "salt://mas/files/default/site.yaml.jinja",
        "salt://mas/files/default/config.yaml.jinja",
    ]


def test_files_switch_masterless_keeps_the_first_file_that_exists(pillar, tmp_path):
    mas.__opts__.update(file_client="local", file_roots={"base": [str(tmp_path)]})
    default = tmp_path / "mas" / "files" / "default" / "unit.service.jinja"
    default.parent.mkdir(parents=True)
    default.write_text("x")
    assert mas.files_switch(["unit.service.jinja"], "mas-service-unit-file-managed") == [
        "salt://mas/files/default/unit.service.jinja"
    ]
    override = tmp_path / "mas" / "files" / "Debian" / "unit.service.jinja"
    override.parent.mkdir(parents=True)
    override.write_text("y")
    assert mas.files_switch(["unit.service.jinja"], "mas-service-unit-file-managed") == [
        "salt://mas/files/Debian/unit.service.jinja"
    ]


@pytest.mark.parametrize(
    ("tofs", "key"),
    [
        ({"source_files": {"x": ["../../etc/shadow"]}}, "mas:tofs:source_files:x"),
        ({"files_switch": ["id/../x"]}, "mas:tofs:files_switch"),
        ({"path_prefix": "/abs"}, "mas:tofs:path_prefix"),
        ({"dirs": {"files": "a/b"}}, "mas:tofs:dirs:files"),
    ],
)
def test_tofs_keys_are_validated(tofs, key):
    with pytest.raises(SaltInvocationError, match=re.escape(key)):
        settings(tofs=tofs)


def test_render_finds_the_template_tofs_style_and_has_salts_filters(pillar, tmp_path):
    mas.__opts__.update(file_client="local", file_roots={"base": [str(tmp_path)]}, cachedir=str(tmp_path / "cache"))
    default = tmp_path / "mas" / "files" / "default" / "x.conf.jinja"
    default.parent.mkdir(parents=True)
    default.write_text("# default\n{{ data | yaml(False) }}\nquoted={{ word | quote }}\n")
    text = mas.render(["x.conf.jinja"], "mas-x-file-managed", {"data": {"a": [1, 2]}, "word": "it's"})
    assert text == "# default\na:\n- 1\n- 2\nquoted='it'\"'\"'s'\n"
    override = tmp_path / "mas" / "files" / "mas-x-file-managed" / "x.conf.jinja"
    override.parent.mkdir(parents=True)
    override.write_text("# override for {{ grains['os_family'] }}\n")
    assert mas.render(["x.conf.jinja"], "mas-x-file-managed", {}) == "# override for Debian\n"
    with pytest.raises(mas.CommandExecutionError, match="none of the templates"):
        mas.render(["missing.jinja"], "mas-x-file-managed", {})


def test_render_reads_a_template_only_the_file_server_has(pillar, tmp_path, monkeypatch):
    """Masterless with another backend (gitfs): a template outside file_roots comes through cp.get_file_str."""
    mas.__opts__.update(file_client="local", file_roots={"base": [str(tmp_path)]}, cachedir=str(tmp_path / "cache"))
    served = {"salt://mas/files/default/y.conf.jinja": "from {{ where }}\n"}
    file_server = mas.__salt__["cp.get_file_str"]
    monkeypatch.setitem(mas.__salt__, "cp.get_file_str", lambda url, **kwargs: served.get(url) or file_server(url))
    assert mas.render(["y.conf.jinja"], "mas-y-file-managed", {"where": "gitfs"}) == "from gitfs\n"


def test_account_tells_what_exists(pillar):
    assert mas.account("root", "root") == {"user": True, "group": True}
    assert mas.account("no-such-user-4711", "no-such-group-4711") == {"user": False, "group": False}


@pytest.mark.parametrize(
    "pillar, expected",
    [
        ({}, None),  # unset: MAS's own default (private and loopback networks)
        ({"http": {"trusted_proxies": []}}, []),  # trust none
        ({"http": {"trusted_proxies": ["127.0.0.1/32", "::1/128"]}}, ["127.0.0.1/32", "::1/128"]),
        ({"http": {"trusted_proxies": ["10.0.0.0/8"]}, "config": {"http": {"trusted_proxies": []}}}, []),
    ],
)
def test_trusted_proxies_land_in_config_yaml_as_written(pillar, expected):
    """Issue 21, 7: an empty list means trust none, so it is written; only an unset value is left out."""
    http = settings(**pillar)["mas_config"]["http"]
    assert http.get("trusted_proxies", "left out") == ("left out" if expected is None else expected)


def test_trusted_proxies_must_be_a_list_of_networks():
    for value, key in (
        ("10.0.0.0/8", "mas:http:trusted_proxies"),
        (["10.0.0.0/8", "any"], "mas:http:trusted_proxies:1"),
    ):
        with pytest.raises(SaltInvocationError, match=f"{key}: "):
            settings(http={"trusted_proxies": value})


CLIENT = {"client_id": "01HFVBY12TMNTYTBV8W921M5FC", "client_auth_method": "client_secret_basic"}


def test_docker_mounts_the_host_files_mas_reads_outside_config_read_only():
    """Issue 21, 7: the docker runtime mounts <base_path>/config; a *_file of mas:config or of a provider,
    or PostgreSQL's socket directory, elsewhere is mounted too (read-only, same path); config/ is not
    mounted twice, and the binary runtime mounts nothing."""
    pillar = {
        "runtime": "docker",
        "database": {"host": "/var/run/postgresql"},
        "config": {
            "clients": [{**CLIENT, "client_secret_file": "/etc/mas/client.secret"}],
            "database": {"ssl_ca_file": "/etc/ssl/pg-ca.pem"},
            "secrets": {"keys": [{"key_file": "/srv/mas/config/secrets/extra.pem"}]},
        },
        "upstream_oauth2_providers": [
            {
                "id": "01HFVBY12TMNTYTBV8W921M5FA",
                "issuer": "https://appleid.apple.com",
                "client_id": "c",
                "token_endpoint_auth_method": "sign_in_with_apple",
                "sign_in_with_apple": {"private_key_file": "/etc/mas/apple.p8", "team_id": "T", "key_id": "K"},
            }
        ],
    }
    result = settings(**pillar)
    assert result["docker_mounts"] == [
        "/etc/mas/apple.p8",
        "/etc/mas/client.secret",
        "/etc/ssl/pg-ca.pem",
        "/var/run/postgresql",
    ]
    assert (
        settings(**dict(pillar, runtime="binary", binary={"path": "/bin/true", "share_dir": "/usr/share"}))[
            "docker_mounts"
        ]
        == []
    )
    assert settings(runtime="docker")["docker_mounts"] == []


@pytest.mark.parametrize(
    "config, key, binary_ok",
    [
        ({"database": {"ssl_ca_file": "certs/pg-ca.pem"}}, "mas:config:database:ssl_ca_file", True),
        ({"clients": [{**CLIENT, "client_secret_file": "/etc/mas/a b"}]}, "mas:config:clients:0", True),
        ({"database": {"socket": "run/postgresql"}}, "mas:config:database:socket", True),
        ({"database": {"host": "/run/pg,src=/"}}, "mas:config:database:host", True),
        ({"secrets": {"keys_dir": "/srv/keys,dst=/etc"}}, "mas:config:secrets:keys_dir", False),
    ],
)
def test_docker_refuses_a_host_path_it_cannot_mount_naming_the_key(config, key, binary_ok):
    with pytest.raises(SaltInvocationError, match=f"{key}[:a-z_]*: with mas:runtime docker") as err:
        settings(runtime="docker", config=config)
    assert "mounts it read-only at the same path" in str(err.value)
    if binary_ok:  # the binary runtime reads the host's files itself
        settings(runtime="binary", binary={"path": "/bin/true", "share_dir": "/usr/share"}, config=config)
