"""Unit tests of the pillar validation of ``_modules/mas.py`` (issues 7 and 8).

- The validator kit: one strict grammar per kind of value (``mas.valid``),
  each refusing a trailing newline, control characters and injection.
- Types: secrets, ports, unique ids.
- Secrets never inline under ``mas:config`` / ``mas:lookup:config``.
- MAS's own runtime rules (the ``validate()`` code of
  ``crates/config/src/sections/*.rs``),
  each refused with the pillar key it comes from, for the keys the formula
  models and for what ``mas:config`` brings.
- Paths the formula writes: no collisions, not where MAS or its account write.

The functions run for real; only what the loader would inject is given.
"""

import copy
import re

import pytest
from salt.exceptions import SaltInvocationError

from formula_modules import DEFAULTS, MODULES, configure_loader_modules  # noqa: F401 (the loader fixture)
from pillars import deep_update

mas = MODULES["mas"]

ULID = "01HFVBY12TMNTYTBV8W921M5FA"
ULID2 = "01HFVBY12TMNTYTBV8W921M5FB"
ULID3 = "01HFVBY12TMNTYTBV8W921M5FC"


def base(**overrides):
    data = deep_update(DEFAULTS, {"enabled": True, "server_name": "example.com", "base_path": "/srv/mas"})
    return deep_update(data, overrides)


def settings(**overrides):
    return mas.settings(base(**overrides))


def refusal(**overrides):
    with pytest.raises(SaltInvocationError) as err:
        settings(**overrides)
    text = str(err.value)
    assert text.startswith("Invalid pillar for the mas formula (nothing was changed):")
    return text


# --------------------------------------------------------------------------
# The kit
# --------------------------------------------------------------------------

HOSTILE_TAILS = ["\n", "\nx: y", "\r", "\x00", " ", ";", "'", '"', "$(id)", "`id`", "{{ 1 }}", "#"]

GOOD = {
    "hostname": ["example.com", "matrix.example.com", "localhost", "a-b.example", "x1"],
    "host": ["smtp.example.com", "192.0.2.10", "::1", "2001:db8::1"],
    "url": [
        "https://matrix.example.com/",
        "http://localhost:8008/",
        "http://127.0.0.1:8080/auth/",
        "http://[::1]:8008/",
        "https://id.example.com/realms/matrix/",
        "https://example.com",
    ],
    "origin": ["http://127.0.0.1:8080", "https://mas.example.com", "http://[::1]:8080", "http://mas:8080"],
    "bind": ["[::]:8080", "127.0.0.1:8081", "localhost:8081", "0.0.0.0:8080", "[::1]:8081", "mas.internal:9000"],
    "path": ["/srv/mas", "/etc/nginx/snippets/mas.conf", "/a", "/usr/local/bin/mas-cli", "/x/.hidden/y_z+1@2"],
    "command": ["/usr/bin/docker", "/usr/sbin/sendmail"],
    "unit": ["matrix-synapse", "nginx", "traefik.service", "synapse@main", "a_b"],
    "service": ["matrix-authentication-service", "mas", "mas_2"],
    "image": [
        "ghcr.io/element-hq/matrix-authentication-service:1.23.0",
        "registry.example.com:5000/mas/mas:latest",
        "mas",
        "ghcr.io/element-hq/matrix-authentication-service@sha256:" + "a" * 64,
    ],
    "traefik": ["websecure", "web", "letsencrypt", "my_resolver-2"],
    "name": ["mas", "matrix-synapse", "_svc", "www-data"],
    "port": [1, 8080, "8080", 65535],
    "mailbox": [
        "mas@example.com",
        "MAS <mas@example.com>",
        '"Matrix Auth" <mas@example.com>',
        "<mas@example.com>",
        '"Authentication Service" <root@localhost>',
        "J. Doe <j@example.com>",
        '"Doe, John" <j@example.com>',
    ],
    "url_path": ["/", "/auth", "/a/b-c_d.e~f"],
    "file_name": ["matrix-authentication-service.yaml", "mas.conf", "a"],
}

BAD = {
    "hostname": ["", "-bad.example", "bad-.example", "a..b", "a_b.example", "example.com.", "https://x", "x:1", "a b"],
    "host": ["", "host name", "fe80::1%eth0", "[::1]", "1.2.3.4:5"],
    "url": [
        "localhost:8008",
        "ftp://example.com/",
        "https://user:pw@example.com/",
        "https://example.com/?q=1",
        "https://example.com/#f",
        "https://exa mple.com/",
        "https://example.com/a b",
        "https://[::1/",
        "https://example.com:99999/",
        "https://example.com//x",
        "http://localhost:8080/auth/\n\nmas-injected:\n  cmd.run:\n    - name: touch /tmp/x",
        "https://example.com/%zz",
    ],
    "origin": ["http://127.0.0.1:8080/", "http://127.0.0.1:8080/auth", "127.0.0.1:8080", "http://127.0.0.1:8080;"],
    "bind": ["8080", ":8080", "::1:8081", "*:8080", "[::1]", "localhost", "[fe80::1%eth0]:80", "host:0", "a b:1"],
    "path": [
        "relative/dir",
        "/",
        "/srv/mas/",
        "/srv//mas",
        "/srv/x/../../outside",
        "/srv/./mas",
        "/srv/ma s",
        "/srv/mas$(id)",
        "/srv/a,b",
        "/srv/a:b",
        "//srv",
    ],
    "command": ["docker", "/usr/bin/docker --help"],
    "unit": ["--volumes", "-x", "a b", "a/b", ""],
    "service": ["--volumes", "a", "a.b", "a@b", "a b"],
    "image": ["img$(touch /tmp/x)", "a b", "-image", "ghcr.io//x", "x:"],
    "traefik": ["web secure", "a.b", "a@b", "", "-x"],
    "name": ["Bad User", "root;", "a" * 33, "1x:"],
    "port": [0, 65536, 5432.9, 8080.0, "80a", True, None, "", "-1"],
    "mailbox": ["Doe, John <j@example.com>", "a@[192.0.2.1]", "a@b.com, c@d.com", "nobody", "a@", "<a@b"],
    "url_path": ["auth", "/auth/", "//x", "/a b", "/{*x}", "/$uri"],
    "file_name": ["../x.yaml", ".", "..", "a/b", ".hidden", "a b"],
}


@pytest.mark.parametrize(("kind", "value"), [(k, v) for k, values in GOOD.items() for v in values])
def test_valid_values_of_each_kind(kind, value):
    assert mas.valid(kind, value) is True


@pytest.mark.parametrize(("kind", "value"), [(k, v) for k, values in BAD.items() for v in values])
def test_invalid_values_of_each_kind(kind, value):
    assert mas.valid(kind, value) is False


# lettre's Mailbox parser takes surrounding whitespace (EM-13): a mailbox may end with a space
TAILED = [(k, t) for k in sorted(GOOD) for t in HOSTILE_TAILS if not (k == "mailbox" and t == " ")]


@pytest.mark.parametrize(("kind", "tail"), TAILED, ids=[f"{k}-{t!r}" for k, t in TAILED])
def test_every_kind_refuses_a_hostile_tail(kind, tail):
    """A trailing newline passes every regex ending in `$`: not these."""
    good = GOOD[kind][0]
    if isinstance(good, int):
        good = str(good)
    assert mas.valid(kind, good + tail) is False


def test_valid_refuses_an_unknown_kind():
    with pytest.raises(SaltInvocationError, match="unknown kind"):
        mas.valid("colour", "red")


# --------------------------------------------------------------------------
# Every kind is used where it appears: the pillar keys
# --------------------------------------------------------------------------

KEYED = [
    ({"server_name": "example.com\n"}, "mas:server_name"),
    ({"hostname": "matrix.example.com\n"}, "mas:hostname"),
    ({"path_prefix": "/auth\n"}, "mas:path_prefix"),
    ({"base_path": "/srv/x/../../outside/mas"}, "mas:base_path"),
    ({"service": {"unit_dir": "/etc/systemd/system/../x"}}, "mas:service:unit_dir"),
    ({"service": {"name": "--volumes"}}, "mas:service:name"),
    ({"service": {"name": "mas\n"}}, "mas:service:name"),
    ({"service": {"docker": {"command": "/usr/bin/docker\n"}}}, "mas:service:docker:command"),
    ({"service": {"docker": {"network": "host\n"}}}, "mas:service:docker:network"),
    ({"service": {"docker": {"extra_args": ["--x=1\n"]}}}, "mas:service:docker:extra_args"),
    ({"image": "ghcr.io/element-hq/mas:1\n"}, "mas:image"),
    ({"user": "mas\n"}, "mas:user"),
    ({"group": "mas\n"}, "mas:group"),
    ({"http": {"web_bind": "127.0.0.1;\n    include /etc/shadow;\n#:8080"}}, "mas:http:web_bind"),
    ({"http": {"internal_bind": "localhost:8081\n"}}, "mas:http:internal_bind"),
    ({"http": {"trusted_proxies": ["127.0.0.1/32\n"]}}, "mas:http:trusted_proxies:0"),
    ({"synapse": {"endpoint": "http://localhost:8008/\n"}}, "mas:synapse:endpoint"),
    ({"synapse": {"mas_endpoint": "http://localhost:8080/auth/\n\nx:\n  cmd.run: []"}}, "mas:synapse:mas_endpoint"),
    ({"synapse": {"config_dir": "/etc/matrix-synapse/conf.d\n"}}, "mas:synapse:config_dir"),
    ({"synapse": {"config_files": ["/etc/x/../shadow"]}}, "mas:synapse:config_files"),
    ({"synapse": {"dropin_name": "mas.yaml\n"}}, "mas:synapse:dropin_name"),
    ({"synapse": {"secret_path": "/srv/a/../../etc/shadow"}}, "mas:synapse:secret_path"),
    ({"synapse": {"service": "--now"}}, "mas:synapse:service"),
    ({"synapse": {"user": "root\n"}}, "mas:synapse:user"),
    ({"proxy": {"matrix_hostname": "matrix.example.com\n"}}, "mas:proxy:matrix_hostname"),
    (
        {"proxy": {"nginx": {"mas_upstream": "http://127.0.0.1:8080;\n    add_header X pwned"}}},
        "mas:proxy:nginx:mas_upstream",
    ),
    ({"proxy": {"nginx": {"snippet_path": "/etc/nginx/../shadow"}}}, "mas:proxy:nginx:snippet_path"),
    ({"proxy": {"nginx": {"service": "nginx\n"}}}, "mas:proxy:nginx:service"),
    ({"proxy": {"type": "traefik", "traefik": {"certresolver": "le\n  x: y"}}}, "mas:proxy:traefik:certresolver"),
    ({"proxy": {"type": "traefik", "traefik": {"entrypoint": "websecure\n"}}}, "mas:proxy:traefik:entrypoint"),
    ({"proxy": {"type": "traefik", "traefik": {"mas_url": "http://127.0.0.1:8080\n"}}}, "mas:proxy:traefik:mas_url"),
    ({"proxy": {"type": "traefik", "traefik": {"config_path": "/etc/t/../x"}}}, "mas:proxy:traefik:config_path"),
    ({"database": {"host": "localhost\n"}}, "mas:database:host"),
    ({"database": {"name": "mas\n"}}, "mas:database:name"),
    ({"database": {"user": "mas;"}}, "mas:database:user"),
    ({"database": {"admin": {"user": "postgres\n"}}}, "mas:database:admin:user"),
    ({"database": {"admin": {"host": "-h"}}}, "mas:database:admin:host"),
    ({"database": {"admin": {"port": "5432 "}}}, "mas:database:admin:port"),
    ({"database": {"admin": {"runas": "postgres\n"}}}, "mas:database:admin:runas"),
    ({"email": {"from": "a@example.com\nBcc: x@y"}}, "mas:email:from"),
    ({"email": {"transport": "sendmail", "command": "/usr/sbin/sendmail -t"}}, "mas:email:command"),
    ({"users": [{"username": "bob\n"}]}, "mas:users:0:username"),
    ({"users": [{"username": "bob", "emails": ["bob@example.com\n"]}]}, "mas:users:0:emails:0"),
    ({"syn2mas": {"synapse_config_files": ["/etc/a/../b.yaml"]}}, "mas:syn2mas:synapse_config_files"),
    ({"syn2mas": {"synapse_database_uri": "postgresql://db/x\n"}}, "mas:syn2mas:synapse_database_uri"),
]


@pytest.mark.parametrize(("overrides", "key"), KEYED, ids=[k for _, k in KEYED])
def test_each_value_is_checked_with_the_grammar_of_its_kind(overrides, key):
    text = refusal(**overrides)
    assert f"- {key}: " in text
    assert "must be" in text or "is not" in text


def test_the_refusal_says_what_a_valid_value_looks_like():
    text = refusal(http={"web_bind": "localhost"})
    assert "mas:http:web_bind: must be HOST:PORT" in text and "e.g. [::]:8080" in text
    text = refusal(base_path="/srv/x/../y")
    assert "no '..'" in text and "e.g. /srv/mas" in text


# --------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "port"), [(5432, 5432), ("5432", 5432), (5432.9, None), (True, None), (0, None), ("5432\n", None)]
)
def test_ports_are_integers_or_digit_strings(value, port):
    if port:
        assert settings(database={"port": value})["mas_config"]["database"]["port"] == port
    else:
        assert "mas:database:port: must be a port number" in refusal(database={"port": value})


@pytest.mark.parametrize(
    "path",
    [
        ("database", "password"),
        ("email", "password"),
        ("synapse", "pepper"),
        ("secrets", "homeserver_secret"),
        ("users", 0, "password"),
        ("upstream_oauth2_providers", 0, "client_secret"),
    ],
)
@pytest.mark.parametrize("value", [{"nested": "Secret-Mapping-1"}, ["Secret-List-1"], True, 1.5, "a\nb-Secret-Ctl"])
def test_secrets_must_be_strings_and_are_never_echoed(path, value):
    overrides = {
        "email": {"transport": "smtp", "hostname": "smtp.example.com", "mode": "tls", "username": "u"},
        "users": [{"username": "bob"}],
        "upstream_oauth2_providers": [
            {
                "id": ULID,
                "issuer": "https://id.example.com/",
                "client_id": "mas",
                "token_endpoint_auth_method": "client_secret_post",
                "client_secret": "s",
            }
        ],
    }
    node = overrides
    for part in path[:-1]:
        node = node.setdefault(part, {}) if not isinstance(part, int) else node[part]
    node[path[-1]] = value
    text = refusal(**overrides)
    assert "- mas:" + ":".join(map(str, path)) + ": must" in text
    assert "Secret-" not in text


def test_numeric_secrets_become_strings_and_whitespace_is_refused_where_mas_trims():
    result = settings(database={"password": 123456}, secrets={"homeserver_secret": 12345678901234567890})
    assert result["database"]["password_set"] is True
    text = refusal(database={"password": " padded "})
    assert "mas:database:password: must not start or end with whitespace" in text and "padded" not in text


def test_synapse_idp_id_is_unique():
    provider = {
        "issuer": "https://id.example.com/",
        "client_id": "mas",
        "token_endpoint_auth_method": "none",
        "synapse_idp_id": "oidc-kc",
    }
    text = refusal(upstream_oauth2_providers=[dict(provider, id=ULID), dict(provider, id=ULID2)])
    assert (
        "mas:upstream_oauth2_providers:1:synapse_idp_id: must be unique: oidc-kc is already the synapse_idp_id of"
        in text
    )


# --------------------------------------------------------------------------
# Secrets never inline
# --------------------------------------------------------------------------

INLINE = [
    ({"matrix": {"secret": "Inline-Secret-1"}}, "mas:config:matrix:secret", "mas:secrets:homeserver_secret"),
    ({"secrets": {"encryption": "a" * 64}}, "mas:config:secrets:encryption", "mas:secrets:encryption"),
    ({"email": {"password": "Inline-Secret-1"}}, "mas:config:email:password", "mas:email:password"),
    ({"database": {"password": "Inline-Secret-1"}}, "mas:config:database:password", "mas:database:password"),
    (
        {"database": {"uri": "postgresql://mas:Inline-Secret-1@db/mas"}},
        "mas:config:database:uri",
        "mas:database:host, :port, :name, :user and :password",
    ),
    (
        {"upstream_oauth2": {"providers": [{"id": ULID, "client_secret": "Inline-Secret-1"}]}},
        "mas:config:upstream_oauth2:providers:0:client_secret",
        "mas:upstream_oauth2_providers",
    ),
    (
        {"passwords": {"schemes": [{"version": 1, "algorithm": "bcrypt", "secret": "Inline-Secret-1"}]}},
        "mas:config:passwords:schemes:0:secret",
        "mas:synapse:pepper",
    ),
    (
        {"clients": [{"client_id": ULID, "client_secret": "Inline-Secret-1"}]},
        "mas:config:clients:0:client_secret",
        "client_secret_file",
    ),
    ({"secrets": {"keys": [{"key": "-----BEGIN Inline-Secret-1"}]}}, "mas:config:secrets:keys:0:key", "key_file"),
    (
        {"http": {"listeners": [{"name": "x", "tls": {"key": "Inline-Secret-1"}}]}},
        "mas:config:http:listeners:0:tls:key",
        "tls.key_file",
    ),
    ({"captcha": {"secret_key": "Inline-Secret-1"}}, "mas:config:captcha:secret_key", "CAPTCHA is not supported"),
    ({"branding": {"extra": {"password": "Inline-Secret-1"}}}, "mas:config:branding:extra:password", "password_file"),
]


@pytest.mark.parametrize(("config", "key", "instead"), INLINE, ids=[k for _, k, _ in INLINE])
def test_inline_secrets_under_mas_config_are_refused_naming_the_key_to_use(config, key, instead):
    text = refusal(config=config)
    assert f"- {key}: a secret inline would land in config.yaml" in text
    assert instead in text
    assert "Inline-Secret-1" not in text and "a" * 64 not in text


@pytest.mark.parametrize(("config", "key", "instead"), INLINE[:4], ids=[k for _, k, _ in INLINE[:4]])
def test_inline_secrets_under_mas_lookup_config_are_refused(pillar, config, key, instead):
    pillar["mas"] = {"enabled": True, "server_name": "example.com", "lookup": {"config": config}}
    with pytest.raises(SaltInvocationError) as err:
        mas.mapdata(DEFAULTS)
    lookup_key = key.replace("mas:config:", "mas:lookup:config:")
    assert f"- {lookup_key}: a secret inline" in str(err.value) and instead in str(err.value)
    assert "Inline-Secret-1" not in str(err.value)


def test_a_database_uri_without_password_is_not_a_secret_but_is_refused_next_to_the_formula_keys():
    text = refusal(config={"database": {"uri": "postgresql:///mas"}})
    assert "mas:config:database:uri: must not be combined with host" in text


def test_secret_files_under_mas_config_are_fine():
    result = settings(config={"email": {"password_file": None}, "matrix": {"kind": "synapse_modern"}})
    assert result["mas_config"]["matrix"]["secret_file"] == "/srv/mas/config/secrets/homeserver_secret"


# --------------------------------------------------------------------------
# The merged config keeps what the formula relies on
# --------------------------------------------------------------------------


def listeners(**overrides):
    return copy.deepcopy(settings(**overrides)["mas_config"]["http"]["listeners"])


@pytest.mark.parametrize(
    "change",
    [
        lambda ls: [],
        lambda ls: ls[:1],
        lambda ls: [dict(ls[0], resources=ls[0]["resources"][:2]), ls[1]],
        lambda ls: [dict(ls[0], prefix="/other"), ls[1]],
        lambda ls: [ls[0], dict(ls[1], binds=[{"address": "127.0.0.1:9999"}])],
        lambda ls: [dict(ls[0], name="public"), ls[1]],
    ],
    ids=["none", "no-internal", "resources-dropped", "other-prefix", "other-bind", "renamed"],
)
def test_mas_config_must_keep_the_formula_listeners(change):
    text = refusal(config={"http": {"listeners": change(listeners())}})
    assert "- mas:config:http:listeners: must keep the formula's" in text
    assert "change mas:http:web_bind" in text


def test_mas_config_may_add_a_listener_and_resources():
    current = listeners()
    current[1]["resources"].append({"name": "prometheus"})
    current.append(
        {"name": "metrics", "resources": [{"name": "health"}], "binds": [{"host": "localhost", "port": 9100}]}
    )
    result = settings(config={"http": {"listeners": current}})
    assert [listener["name"] for listener in result["mas_config"]["http"]["listeners"]] == [
        "web",
        "internal",
        "metrics",
    ]


# --------------------------------------------------------------------------
# MAS's runtime rules, each refused with its key
# --------------------------------------------------------------------------

SMTP = {"transport": "smtp", "hostname": "smtp.example.com", "mode": "starttls"}


def provider(**fields):
    out = {
        "id": ULID,
        "issuer": "https://id.example.com/",
        "client_id": "mas",
        "token_endpoint_auth_method": "client_secret_post",
        "client_secret": "s3cret",
    }
    out.update(fields)
    return {k: v for k, v in out.items() if v is not None}


def extra_listener(**fields):
    listener = {"name": "extra", "resources": [{"name": "health"}], "binds": [{"address": "127.0.0.1:9100"}]}
    listener.update(fields)
    return {"config": {"http": {"listeners": [*listeners(), listener]}}}


RULES = [
    # email (EM-*)
    ("EM-1", {"config": {"email": {"transport": None}}}, "mas:config:email:transport: must be one of"),
    ("EM-2", {"email": {"from": "Doe, John <j@example.com>"}}, "mas:email:from: must be one email address"),
    ("EM-2b", {"config": {"email": {"reply_to": "a@[192.0.2.1]"}}}, "mas:config:email:reply_to: must be one email"),
    (
        "EM-3",
        {"email": dict(SMTP, username="mas")},
        "mas:email:password: is required when mas:email:username is set",
    ),
    (
        "EM-4",
        {"email": dict(SMTP, password="pw-1")},
        "mas:email:username: is required when mas:email:password is set",
    ),
    (
        "EM-5",
        {"email": dict(SMTP, username="u", password="pw-1"), "config": {"email": {"password_file": "/run/pw"}}},
        "mas:config:email:password_file: cannot be set together with mas:email:password",
    ),
    (
        "EM-6",
        {"email": dict(SMTP, mode="")},
        "mas:email:mode: is required when mas:email:transport is smtp (plain, starttls or tls)",
    ),
    (
        "EM-6b",
        {"config": {"email": {"transport": "smtp", "hostname": "smtp.example.com"}}},
        "mas:email:mode: is required when mas:config:email:transport is smtp",
    ),
    ("EM-7", {"email": dict(SMTP, hostname="")}, "mas:email:hostname: is required when mas:email:transport is smtp"),
    (
        "EM-8",
        {"email": SMTP, "config": {"email": {"command": "/usr/sbin/sendmail"}}},
        "mas:config:email:command: is only for sendmail",
    ),
    (
        "EM-9",
        {"email": {"transport": "sendmail"}},
        "mas:email:command: is required when mas:email:transport is sendmail",
    ),
    (
        "EM-10",
        {"email": {"transport": "sendmail", "command": "/usr/sbin/sendmail"}, "config": {"email": {"mode": "tls"}}},
        "mas:config:email:mode: is only for smtp",
    ),
    ("EM-14", {"config": {"email": dict(SMTP, port=0)}}, "mas:config:email:port: must be a port number"),
    # passwords (PW-*)
    ("PW-2", {"config": {"passwords": {"schemes": []}}}, "mas:config:passwords:schemes: must hold at least one"),
    (
        "PW-3",
        {
            "config": {
                "passwords": {"schemes": [{"version": 1, "algorithm": "bcrypt", "secret_file": "/a", "secret": "x"}]}
            }
        },
        "mas:config:passwords:schemes:0:secret: a secret inline",
    ),
    (
        "PW-4",
        {
            "config": {
                "passwords": {
                    "schemes": [{"version": 1, "algorithm": "bcrypt"}, {"version": 1, "algorithm": "argon2id"}]
                }
            }
        },
        "mas:config:passwords:schemes:1:version: must be unique: 1 is already the version of mas:config:passwords:schemes:0",
    ),
    ("PW-7", {"config": {"passwords": {"minimum_complexity": 5}}}, "mas:config:passwords:minimum_complexity: must be"),
    (
        "PW-8",
        {"config": {"passwords": {"schemes": [{"version": 1, "algorithm": "bcrypt", "cost": 3}]}}},
        "mas:config:passwords:schemes:0:cost: must be an integer from 4 to 31",
    ),
    # secrets (SE-*)
    ("SE-1", {"config": {"secrets": {"encryption_file": None}}}, "mas:config:secrets:encryption_file: exactly one of"),
    ("SE-3", {"secrets": {"encryption": "g" * 64}}, "mas:secrets:encryption: must be exactly 64 hexadecimal"),
    ("SE-5", {"config": {"secrets": {"keys": [{"kid": "x"}]}}}, "mas:config:secrets:keys:0:key_file: exactly one of"),
    # matrix (MX-*)
    ("MX-1", {"config": {"matrix": {"secret_file": None}}}, "mas:config:matrix:secret_file: exactly one of"),
    ("MX-3", {"config": {"matrix": {"kind": "dendrite"}}}, "mas:config:matrix:kind: must be one of synapse"),
    ("MX-4", {"server_name": "example.com:8448"}, "mas:server_name: must be the bare Matrix domain"),
    (
        "MX-5",
        {"synapse": {"endpoint": "http://localhost:8008/synapse"}},
        "mas:synapse:endpoint: must end with '/' when it has a path",
    ),
    ("MX-5b", {"config": {"matrix": {"endpoint": "http://hs/x"}}}, "mas:config:matrix:endpoint: must be an http(s)"),
    # http (HT-*)
    ("HT-2", {"config": {"http": {"public_base": None}}}, "mas:config:http:public_base: must be an http(s) URL"),
    ("HT-3", lambda: extra_listener(resources=[]), "mas:config:http:listeners:2:resources: must not be empty"),
    ("HT-4", lambda: extra_listener(binds=[]), "mas:config:http:listeners:2:binds: must not be empty"),
    (
        "HT-5",
        lambda: extra_listener(tls={"certificate": "PEM", "certificate_file": "/c", "key_file": "/k"}),
        "mas:config:http:listeners:2:tls:certificate_file: only one of certificate or certificate_file",
    ),
    (
        "HT-6",
        lambda: extra_listener(tls={"key_file": "/k"}),
        "mas:config:http:listeners:2:tls:certificate_file: is required",
    ),
    (
        "HT-8",
        lambda: extra_listener(tls={"certificate_file": "/c"}),
        "mas:config:http:listeners:2:tls:key_file: is required",
    ),
    (
        "HT-9",
        lambda: extra_listener(
            tls={"certificate_file": "/c", "key_file": "/k", "password_file": "/p", "password": "x"}
        ),
        "mas:config:http:listeners:2:tls:password: a secret inline",
    ),
    (
        "HT-11",
        lambda: extra_listener(binds=[{"adress": "127.0.0.1:9100"}]),
        "mas:config:http:listeners:2:binds:0: has the keys adress",
    ),
    (
        "HT-11b",
        lambda: extra_listener(binds=[{"host": "localhost", "port": "9100"}]),
        "mas:config:http:listeners:2:binds:0: port must be an integer",
    ),
    (
        "HT-12",
        lambda: extra_listener(binds=[{"address": "localhost:9100"}]),
        "mas:config:http:listeners:2:binds:0: address must be an IP address and port",
    ),
    (
        "HT-13",
        lambda: extra_listener(binds=[{"host": "[::1]", "port": 9100}]),
        "mas:config:http:listeners:2:binds:0: host must be an IP address (IPv6 without brackets)",
    ),
    (
        "HT-14",
        lambda: extra_listener(binds=[{"socket": "/run/mas.sock", "mode": "rw"}]),
        "mas:config:http:listeners:2:binds:0: mode must be octal digits",
    ),
    ("HT-16", lambda: extra_listener(prefix="auth"), "mas:config:http:listeners:2:prefix: must be '/' or a URL path"),
    (
        "HT-17",
        {"config": {"http": {"public_base": "https://matrix.example.com/auth/?x=1"}}},
        "mas:config:http:public_base: must be an http(s) URL",
    ),
    (
        "HT-20",
        lambda: extra_listener(resources=[{"name": "metrics"}]),
        "mas:config:http:listeners:2:resources:0: must be a mapping whose name is one of health",
    ),
    # database (DB-*)
    ("DB-2", {"config": {"database": {"uri": "postgresql:///mas"}}}, "mas:config:database:uri: must not be combined"),
    (
        "DB-3",
        {"database": {"password": "pw-1"}, "config": {"database": {"password_file": "/run/pw"}}},
        "mas:config:database:password_file: cannot be set together with mas:database:password",
    ),
    (
        "DB-4",
        {"config": {"database": {"ssl_ca": "PEM", "ssl_ca_file": "/ca"}}},
        "mas:config:database:ssl_ca_file: cannot be set together with mas:config:database:ssl_ca",
    ),
    (
        "DB-7",
        {"config": {"database": {"ssl_certificate_file": "/c"}}},
        "mas:config:database:ssl_key_file: a client certificate and its key must be set together",
    ),
    ("DB-10", {"config": {"database": {"ssl_mode": "always"}}}, "mas:config:database:ssl_mode: must be one of"),
    ("DB-10b", {"config": {"database": {"max_connections": 0}}}, "mas:config:database:max_connections: must be"),
    # upstream providers (UP-*)
    (
        "UP-2",
        {"upstream_oauth2_providers": [provider(issuer=None)]},
        "mas:upstream_oauth2_providers:0:issuer: is required when mas:upstream_oauth2_providers:0:discovery_mode is oidc",
    ),
    (
        "UP-3",
        {"upstream_oauth2_providers": [provider(token_endpoint_auth_method="none")]},
        "mas:upstream_oauth2_providers:0:client_secret: must not be set when",
    ),
    (
        "UP-4",
        {"upstream_oauth2_providers": [provider(client_secret=None)]},
        "mas:upstream_oauth2_providers:0:client_secret: is required when",
    ),
    (
        "UP-5",
        {"upstream_oauth2_providers": [provider(client_secret_file="/run/cs")]},
        "mas:upstream_oauth2_providers:0:client_secret_file: cannot be set together with",
    ),
    (
        "UP-6",
        {"upstream_oauth2_providers": [provider(token_endpoint_auth_signing_alg="RS256")]},
        "mas:upstream_oauth2_providers:0:token_endpoint_auth_signing_alg: must not be set when",
    ),
    (
        "UP-7",
        {"upstream_oauth2_providers": [provider(token_endpoint_auth_method="private_key_jwt", client_secret=None)]},
        "mas:upstream_oauth2_providers:0:token_endpoint_auth_signing_alg: is required when",
    ),
    (
        "UP-8",
        {"upstream_oauth2_providers": [provider(token_endpoint_auth_method="sign_in_with_apple", client_secret=None)]},
        "mas:upstream_oauth2_providers:0:sign_in_with_apple: is required when",
    ),
    (
        "UP-8b",
        {"upstream_oauth2_providers": [provider(sign_in_with_apple={"team_id": "t", "key_id": "k"})]},
        "mas:upstream_oauth2_providers:0:sign_in_with_apple: must not be set when",
    ),
    (
        "UP-9",
        {
            "upstream_oauth2_providers": [
                provider(
                    token_endpoint_auth_method="sign_in_with_apple",
                    client_secret=None,
                    sign_in_with_apple={"team_id": "t", "key_id": "k"},
                )
            ]
        },
        "mas:upstream_oauth2_providers:0:sign_in_with_apple:private_key_file: is required",
    ),
    (
        "UP-10",
        {"upstream_oauth2_providers": [provider(claims_imports={"skip_confirmation": True})]},
        "mas:upstream_oauth2_providers:0:claims_imports:localpart:action: must be require when",
    ),
    (
        "UP-10b",
        {
            "upstream_oauth2_providers": [
                provider(
                    claims_imports={
                        "skip_confirmation": True,
                        "localpart": {"action": "require"},
                        "email": {"action": "suggest"},
                    }
                )
            ]
        },
        "mas:upstream_oauth2_providers:0:claims_imports:email:action: must not be suggest",
    ),
    (
        "UP-11",
        {
            "upstream_oauth2_providers": [
                provider(claims_imports={"localpart": {"action": "suggest", "on_conflict": "add"}})
            ]
        },
        "mas:upstream_oauth2_providers:0:claims_imports:localpart:action: must be force or require when",
    ),
    (
        "UP-12",
        {"upstream_oauth2_providers": [provider(id="keycloak")]},
        "mas:upstream_oauth2_providers:0:id: must be a ULID",
    ),
    (
        "UP-12b",
        {"upstream_oauth2_providers": [provider(), provider(synapse_idp_id=None)]},
        "mas:upstream_oauth2_providers:1:id: must be unique: 01HFVBY12TMNTYTBV8W921M5FA is used by another provider",
    ),
    (
        "UP-13",
        {"upstream_oauth2_providers": [provider(scope="openid  email")]},
        "mas:upstream_oauth2_providers:0:scope: must be scope tokens separated by single spaces",
    ),
    (
        "UP-14",
        {"upstream_oauth2_providers": [provider(discovery_mode="disabled", issuer=None)]},
        "mas:upstream_oauth2_providers:0:authorization_endpoint: is required when",
    ),
    (
        "UP-mas:config",
        {
            "config": {
                "upstream_oauth2": {"providers": [{"id": ULID, "client_id": "c", "token_endpoint_auth_method": "none"}]}
            }
        },
        "mas:config:upstream_oauth2:providers:0:issuer: is required when",
    ),
    # clients (CL-*)
    (
        "CL-1",
        {"config": {"clients": [{"client_id": ULID, "client_auth_method": "private_key_jwt"}]}},
        "mas:config:clients:0:jwks_uri: exactly one of jwks or jwks_uri",
    ),
    (
        "CL-2",
        {
            "config": {
                "clients": [
                    {
                        "client_id": ULID,
                        "client_auth_method": "private_key_jwt",
                        "jwks": {"keys": []},
                        "jwks_uri": "https://x/",
                    }
                ]
            }
        },
        "mas:config:clients:0:jwks_uri: exactly one of jwks or jwks_uri",
    ),
    (
        "CL-3",
        {
            "config": {
                "clients": [
                    {
                        "client_id": ULID,
                        "client_auth_method": "private_key_jwt",
                        "jwks_uri": "https://x/",
                        "client_secret_file": "/s",
                    }
                ]
            }
        },
        "mas:config:clients:0:client_secret_file: must not be set with private_key_jwt",
    ),
    (
        "CL-4",
        {"config": {"clients": [{"client_id": ULID, "client_auth_method": "client_secret_basic"}]}},
        "mas:config:clients:0:client_secret_file: is required for client_secret_basic",
    ),
    (
        "CL-5",
        {
            "config": {
                "clients": [
                    {
                        "client_id": ULID,
                        "client_auth_method": "client_secret_post",
                        "client_secret_file": "/s",
                        "jwks_uri": "https://x/",
                    }
                ]
            }
        },
        "mas:config:clients:0:jwks_uri: must not be set with client_secret_post",
    ),
    (
        "CL-6",
        {"config": {"clients": [{"client_id": ULID, "client_auth_method": "none", "jwks_uri": "https://x/"}]}},
        "mas:config:clients:0:client_auth_method: none allows no",
    ),
    (
        "CL-8",
        {
            "config": {
                "clients": [
                    {"client_id": ULID, "client_auth_method": "none"},
                    {"client_id": ULID.lower(), "client_auth_method": "none"},
                ]
            }
        },
        "mas:config:clients:1:client_id: must be unique: 01hfvby12tmntytbv8w921m5fa is already the client_id of",
    ),
    # captcha, rate limiting, experimental, telemetry, policy, branding, account
    ("CA-1", {"config": {"captcha": {"service": "hcaptcha"}}}, "mas:config:captcha:site_key: is required when"),
    (
        "RL-1",
        {"config": {"rate_limiting": {"login": {"per_ip": {"burst": 3, "per_second": 0}}}}},
        "mas:config:rate_limiting:login:per_ip:per_second: must be a number more than 0",
    ),
    (
        "RL-2",
        {"config": {"rate_limiting": {"email_authentication": {"per_ip": {"burst": 3, "per_second": -1}}}}},
        "mas:config:rate_limiting:email_authentication:per_ip:per_second: must be a number more than 0",
    ),
    (
        "RL-3",
        {"config": {"rate_limiting": {"registration": {"burst": 0, "per_second": 1}}}},
        "mas:config:rate_limiting:registration:burst: must be an integer of at least 1",
    ),
    (
        "EX-1",
        {"config": {"experimental": {"session_limit": {"soft_limit": 5, "hard_limit": 3}}}},
        "mas:config:experimental:session_limit:hard_limit: must be at least soft_limit",
    ),
    (
        "EX-2",
        {
            "config": {
                "experimental": {
                    "session_limit": {"soft_limit": 1, "hard_limit": 1, "dangerous_hard_limit_eviction": True}
                }
            }
        },
        "mas:config:experimental:session_limit:hard_limit: must be at least 2",
    ),
    (
        "EX-3",
        {"config": {"experimental": {"access_token_ttl": 30}}},
        "mas:config:experimental:access_token_ttl: must be a number of seconds from 60 to 86400",
    ),
    (
        "TE-1",
        {"config": {"telemetry": {"sentry": {"sample_rate": 2}}}},
        "mas:config:telemetry:sentry:sample_rate: must be a number from 0.0 to 1.0",
    ),
    ("PO-4", {"config": {"policy": {"data": ["x"]}}}, "mas:config:policy:data: must be a mapping"),
    ("BR", {"config": {"branding": {"tos_uri": "tos.html"}}}, "mas:config:branding:tos_uri: must be an http(s) URL"),
    ("AC", {"config": {"account": {"password_change_allowed": "yes"}}}, "mas:config:account:password_change_allowed"),
    ("OA", {"config": {"oauth": {"device_code_grant_enabled": 1}}}, "mas:config:oauth:device_code_grant_enabled: must"),
    (
        "UP-1",
        {"config": {"upstream_oauth2": {}}},
        "mas:upstream_oauth2_providers: is required when mas:config:upstream_oauth2 is set",
    ),
    # what serde refuses while MAS reads config.yaml (issue 21, point 5): each pillar slipped through before
    (
        "EX-4",
        {"config": {"experimental": {"session_limit": {"soft_limit": 5}}}},
        "mas:config:experimental:session_limit:hard_limit: is required when mas:config:experimental:session_limit"
        " is set",
    ),
    (
        "EX-4b",
        {"config": {"experimental": {"session_limit": {"hard_limit": 5}}}},
        "mas:config:experimental:session_limit:soft_limit: is required when",
    ),
    (
        "EX-5",
        {"config": {"experimental": {"session_limit": {"soft_limit": 0, "hard_limit": 5}}}},
        "mas:config:experimental:session_limit:soft_limit: must be a whole number of at least 1 (MAS refuses 0), not 0",
    ),
    (
        "EX-5b",
        {"config": {"experimental": {"session_limit": {"soft_limit": 0, "hard_limit": 0}}}},
        "mas:config:experimental:session_limit:hard_limit: must be a whole number of at least 1",
    ),
    (
        "EX-5c",
        {"config": {"experimental": {"session_limit": {"soft_limit": 1, "hard_limit": 2, "max_session_threshold": 0}}}},
        "mas:config:experimental:session_limit:max_session_threshold: must be a whole number of at least 1",
    ),
    (
        "EX-5d",
        {"config": {"experimental": {"session_limit": 5}}},
        "mas:config:experimental:session_limit: must be a mapping (soft_limit, hard_limit, ...), not 5",
    ),
    (
        "EX-6",
        {"config": {"experimental": {"inactive_session_expiration": {"expire_compat_sessions": True}}}},
        "mas:config:experimental:inactive_session_expiration:ttl: is required when"
        " mas:config:experimental:inactive_session_expiration is set (seconds, from 600 to 7776000)",
    ),
    (
        "UP-15",
        {"upstream_oauth2_providers": [provider(pkce_method="S256")]},
        "mas:upstream_oauth2_providers:0:pkce_method: must be one of auto, always, never, not 'S256'",
    ),
    (
        "UP-16",
        {"upstream_oauth2_providers": [provider(response_mode="fragment")]},
        "mas:upstream_oauth2_providers:0:response_mode: must be one of query, form_post, not 'fragment'",
    ),
    (
        "UP-17",
        {"upstream_oauth2_providers": [provider(on_backchannel_logout="logout")]},
        "mas:upstream_oauth2_providers:0:on_backchannel_logout: must be one of do_nothing, logout_browser_only,"
        " logout_all, not 'logout'",
    ),
    (
        "UP-18",
        {
            "upstream_oauth2_providers": [
                provider(claims_imports={"localpart": {"action": "force", "on_conflict": "merge"}})
            ]
        },
        "mas:upstream_oauth2_providers:0:claims_imports:localpart:on_conflict: must be one of fail, add, replace,"
        " set, not 'merge'",
    ),
    (
        "UP-18b",
        {
            "config": {
                "upstream_oauth2": {
                    "providers": [
                        {
                            "id": ULID,
                            "client_id": "c",
                            "issuer": "https://id.example.com/",
                            "token_endpoint_auth_method": "none",
                            "pkce_method": "Always",
                        }
                    ]
                }
            }
        },
        "mas:config:upstream_oauth2:providers:0:pkce_method: must be one of auto, always, never, not 'Always'",
    ),
    (
        "CL-9",
        {"config": {"clients": [{"client_id": ULID, "client_auth_method": "none", "redirect_uris": ["/callback"]}]}},
        "mas:config:clients:0:redirect_uris:0: must be an absolute URL (e.g. https://app.example.com/callback, or a"
        " native app's io.example.app:/callback), not '/callback'",
    ),
    (
        "CL-10",
        {"config": {"clients": [{"client_id": ULID, "client_auth_method": "none", "client_uri": "example.com"}]}},
        "mas:config:clients:0:client_uri: must be an absolute http(s) URL (e.g. https://app.example.com/), not"
        " 'example.com'",
    ),
    (
        "CL-11",
        {
            "config": {
                "clients": [{"client_id": ULID, "client_auth_method": "private_key_jwt", "jwks_uri": "keys.json"}]
            }
        },
        "mas:config:clients:0:jwks_uri: must be an absolute http(s) URL",
    ),
    (
        "CL-12",
        {"config": {"clients": [{"client_id": ULID.lower(), "client_auth_method": "none"}]}},
        f"mas:config:clients:0:client_id: must be upper case ({ULID}): MAS reads a lower-case ULID but knows the"
        " client by its canonical upper-case ID, the only form policy.data.admin_clients matches",
    ),
    (
        "PO-5",
        {"config": {"policy": {"data": {"admin_clients": [ULID.lower()]}}}},
        f"mas:config:policy:data:admin_clients:0: must be upper case ({ULID}): the policy compares it",
    ),
    (
        "TE-2",
        {"config": {"telemetry": {"tracing": {"exporter": "jaeger"}}}},
        "mas:config:telemetry:tracing:exporter: must be one of none, stdout, otlp, not 'jaeger'",
    ),
    (
        "TE-3",
        {"config": {"telemetry": {"metrics": {"exporter": "statsd"}}}},
        "mas:config:telemetry:metrics:exporter: must be one of none, stdout, otlp, prometheus, not 'statsd'",
    ),
    (
        "TE-4",
        {"config": {"telemetry": {"tracing": {"propagators": ["tracecontext", "b3"]}}}},
        "mas:config:telemetry:tracing:propagators:1: must be one of tracecontext, baggage, jaeger, not 'b3'",
    ),
    (
        "TE-5",
        {"config": {"telemetry": {"sentry": {"dsn": "not a dsn"}}}},
        "mas:config:telemetry:sentry:dsn: must be a Sentry DSN, http(s)://<public key>@<host>/<project id>",
    ),
    (
        "TE-5b",
        {"config": {"telemetry": {"sentry": {"dsn": "https://sentry.example.com/1"}}}},
        "mas:config:telemetry:sentry:dsn: must be a Sentry DSN",
    ),
    (
        "ES-1",
        {"config": {"matrix": {"secret": ""}}},
        "mas:config:matrix:secret: is an empty string, which MAS takes as the shared secret with the homeserver",
    ),
    (
        "ES-2",
        {"config": {"database": {"uri": ""}}},
        "mas:config:database:uri: must not be combined with host, port, socket, username, password or database,"
        " which the formula sets: set mas:database:host, :port, :name, :user and :password instead (MAS takes an"
        " empty string as a value, not as unset: remove the key)",
    ),
    (
        "ES-3",
        {"email": {"transport": "sendmail", "command": "/usr/sbin/sendmail"}, "config": {"email": {"username": ""}}},
        "mas:config:email:username: is only for smtp: remove it when mas:email:transport is sendmail (MAS takes an"
        " empty string as a value",
    ),
    (
        "ES-3b",
        {"email": SMTP, "config": {"email": {"username": ""}}},
        "mas:email:password: is required when mas:config:email:username is set (the SMTP password) (MAS takes an"
        " empty string as a value",
    ),
    (
        "ES-4",
        {"config": {"secrets": {"encryption": ""}}},
        "mas:config:secrets:encryption: is an empty string, which MAS decodes as the hex encryption key",
    ),
    (
        "ES-5",
        {"upstream_oauth2_providers": [provider(token_endpoint_auth_signing_alg="")]},
        "mas:upstream_oauth2_providers:0:token_endpoint_auth_signing_alg: must not be set when"
        " mas:upstream_oauth2_providers:0:token_endpoint_auth_method is client_secret_post: remove it (MAS takes an"
        " empty string as a value",
    ),
    (
        "ES-6",
        {"database": {"password": "pw-1"}, "config": {"database": {"password": ""}}},
        "mas:database:password: cannot be set together with mas:config:database:password (MAS takes an empty string",
    ),
    ("ES-7", {"config": {"captcha": {"service": ""}}}, "mas:config:captcha:service: must be one of recaptcha_v2"),
    (
        "DB-11",
        {"config": {"database": {"connect_timeout": "30s"}}},
        "mas:config:database:connect_timeout: must be a whole number of seconds (e.g. 30), not '30s'",
    ),
    (
        "DB-11b",
        {"config": {"database": {"idle_timeout": "5m"}}},
        "mas:config:database:idle_timeout: must be a whole number of seconds (e.g. 30), not '5m'",
    ),
    (
        "DB-11c",
        {"config": {"database": {"max_lifetime": 1.5}}},
        "mas:config:database:max_lifetime: must be a whole number of seconds (e.g. 30), not 1.5",
    ),
    (
        "DB-11d",
        {"config": {"database": {"connect_timeout": None}}},
        "mas:config:database:connect_timeout: must be a whole number of seconds (e.g. 30), not None",
    ),
]


@pytest.mark.parametrize(("rule", "overrides", "message"), RULES, ids=[r for r, _, _ in RULES])
def test_each_runtime_rule_is_refused_with_its_key(rule, overrides, message):
    text = refusal(**(overrides() if callable(overrides) else overrides))
    assert f"- {message}" in text, text


def test_values_mas_reads_pass():
    """The valid side of the serde rules: enums, absolute URLs (native-app schemes too), DSNs, durations."""
    result = settings(
        upstream_oauth2_providers=[
            provider(
                pkce_method="always",
                response_mode="form_post",
                on_backchannel_logout="logout_all",
                claims_imports={"localpart": {"action": "require", "on_conflict": "set"}},
            )
        ],
        config={
            "clients": [
                {
                    "client_id": ULID2,
                    "client_auth_method": "none",
                    "client_uri": "https://app.example.com/about?x=1",
                    "redirect_uris": ["https://app.example.com/cb", "io.element.app:/callback", "http://[::1]:8080/"],
                }
            ],
            "policy": {"data": {"admin_clients": [ULID2]}},
            "experimental": {
                "session_limit": {"soft_limit": 5, "hard_limit": 10, "max_session_threshold": 100},
                "inactive_session_expiration": {"ttl": 86400},
            },
            "telemetry": {
                "tracing": {"exporter": "otlp", "propagators": ["tracecontext", "baggage", "jaeger"]},
                "metrics": {"exporter": "prometheus"},
                "sentry": {"dsn": "https://abc123@o1.ingest.sentry.io/42"},
            },
            "database": {"connect_timeout": 0, "idle_timeout": None, "max_lifetime": 1800},
        },
    )
    assert result["mas_config"]["clients"][1]["client_id"] == ULID2
    # MAS reads an empty DSN as no Sentry at all
    assert settings(config={"telemetry": {"sentry": {"dsn": ""}}})["mas_config"]["telemetry"]["sentry"]["dsn"] == ""


@pytest.mark.parametrize(
    "dsn",
    [
        "https://k@sentry.example.com/1",
        "http://k:s@sentry.example.com:9000/a/b/1",
        "https://k@sentry.example.com/1/",
        "https://k@[::1]/abc",
    ],
)
def test_sentry_dsns_mas_parses_pass(dsn):
    settings(config={"telemetry": {"sentry": {"dsn": dsn}}})


@pytest.mark.parametrize(
    "dsn",
    [
        "not a dsn",
        "https://sentry.example.com/1",
        "https://k@sentry.example.com/",
        "https://k@sentry.example.com//",
        "ftp://k@sentry.example.com/1",
        "https://k@/1",
        " ",
        "https://k@sentry.example.com:99999/1",
    ],
)
def test_sentry_dsns_mas_panics_on_are_refused_without_echoing_them(dsn):
    text = refusal(config={"telemetry": {"sentry": {"dsn": dsn}}})
    assert "- mas:config:telemetry:sentry:dsn: must be a Sentry DSN" in text
    assert repr(dsn) not in text  # a DSN may carry a secret key: never echoed


def test_every_type_refusal_comes_at_once():
    text = refusal(
        config={
            "experimental": {"session_limit": {"soft_limit": 2}},
            "telemetry": {"metrics": {"exporter": "statsd"}},
            "clients": [{"client_id": ULID.lower(), "client_auth_method": "none", "redirect_uris": ["cb"]}],
            "matrix": {"secret": ""},
            "database": {"connect_timeout": "30s"},
            "upstream_oauth2": {
                "providers": [provider(response_mode="fragment", client_secret=None, client_secret_file="/s")]
            },
        },
    )
    for key in (
        "mas:config:experimental:session_limit:hard_limit",
        "mas:config:telemetry:metrics:exporter",
        "mas:config:clients:0:client_id",
        "mas:config:clients:0:redirect_uris:0",
        "mas:config:matrix:secret",
        "mas:config:database:connect_timeout",
        "mas:config:upstream_oauth2:providers:0:response_mode",
    ):
        assert re.search(rf"^- {key}: ", text, re.M), key


def test_an_empty_provider_secret_in_pillar_is_no_secret():
    """mas:upstream_oauth2_providers:*:client_secret: '' never reaches config.yaml (no file is written for it)."""
    result = settings(upstream_oauth2_providers=[provider(token_endpoint_auth_method="none", client_secret="")])
    assert "client_secret" not in result["mas_config"]["upstream_oauth2"]["providers"][0]
    assert "client_secret_file" not in result["mas_config"]["upstream_oauth2"]["providers"][0]


def test_pillar_example_style_smtp_and_providers_pass():
    result = settings(
        email=dict(SMTP, username="mas@example.com", password="pw-1", port=587),
        upstream_oauth2_providers=[provider(synapse_idp_id="oidc-kc", scope="openid email profile")],
    )
    assert result["mas_config"]["email"]["mode"] == "starttls"


# --------------------------------------------------------------------------
# Paths the formula writes
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"synapse": {"secret_path": "/srv/mas/config/secrets/encryption"}}, "is the formula's own encryption_secret"),
        ({"synapse": {"secret_path": "/srv/mas/data/secret"}}, "lies in /srv/mas/data (data_dir)"),
        ({"proxy": {"nginx": {"snippet_path": "/srv/mas/config/keys/x.conf"}}}, "lies in /srv/mas/config/keys"),
        ({"proxy": {"nginx": {"snippet_path": "/srv/mas/bin/mas-cli"}}}, "is the formula's own mas_cli"),
        ({"service": {"unit_dir": "/srv/mas/formula"}}, "lies in /srv/mas/formula (state_dir)"),
        (
            {"proxy": {"nginx": {"snippet_path": "/etc/matrix-synapse/conf.d/matrix-authentication-service.yaml"}}},
            "is also mas:synapse:config_dir's file",
        ),
    ],
)
def test_placed_files_cannot_collide_with_the_formula_files(overrides, message):
    assert message in refusal(**overrides)


def test_every_refusal_comes_at_once_and_names_each_key():
    text = refusal(hostname="bad_host!", path_prefix="auth", runtime="lxc", database={"port": 1.5})
    for key in ("mas:hostname", "mas:path_prefix", "mas:runtime", "mas:database:port"):
        assert re.search(rf"^- {key}: ", text, re.M), key
