"""Several hosts (issue #19): ``mas:roles`` in the map and its validation, the addresses between roles on different
minions, the shared secrets a split minion needs, and the formula's ext_pillar that serves them
(``_pillar/mas_secrets.py``)."""

import importlib.util
import os
import stat
import threading

import pytest
import yaml
from salt.exceptions import CommandExecutionError, SaltInvocationError

from formula_modules import MODULES, configure_loader_modules, mapdata  # noqa: F401 (the loader fixture)
from mas_formula import grammar, secretfiles
from pillars import deep_update
from saltrun import REPO_ROOT

SHARED = "s" * 32
PASSWORD = "Db-Password-0815-secret"
#: what a minion needs to be valid in each split layout (the addresses between the roles, the shared secrets)
MAS_ALONE = {
    "secrets": {"homeserver_secret": SHARED},
    "synapse": {"endpoint": "http://synapse.example.internal:8008/"},
    "doctor": {"proxy_url": "https://proxy.example.internal"},
}


def refusals(**pillar):
    with pytest.raises(SaltInvocationError) as exc:
        mapdata(**pillar)
    return str(exc.value)


# ----------------------------------------------------------------- mas:roles


def test_the_default_is_one_host_holding_every_role():
    mas = mapdata()
    assert mas["roles"] == ["mas", "synapse", "database", "proxy"]
    assert mas["role"] == {"mas": True, "synapse": True, "database": True, "proxy": True}
    assert mas["synapse_secret"]["kind"] == "copy"


def test_roles_are_given_in_any_order_and_kept_in_the_formulas():
    mas = mapdata(roles=["database", "mas"], **MAS_ALONE)
    assert mas["roles"] == ["mas", "database"]
    assert mas["role"] == {"mas": True, "synapse": False, "database": True, "proxy": False}


@pytest.mark.parametrize(
    ("roles", "message"),
    [
        ([], "mas:roles: must be a non-empty list of mas, synapse, database, proxy"),
        ("mas", "mas:roles: must be a non-empty list"),
        (["mas", "web"], "mas:roles:1: must be one of mas, synapse, database, proxy, not 'web'"),
        (["proxy", "proxy"], "mas:roles:1: proxy is listed twice"),
        ([["mas"]], "mas:roles:0: must be one of"),
    ],
)
def test_bad_roles_are_refused_naming_the_key(roles, message):
    assert message in refusals(roles=roles)


# ------------------------------------------------------- the shared secrets


def test_a_split_minion_needs_the_shared_secret_from_pillar():
    for roles in (["synapse"], ["mas"], ["mas", "database", "proxy"]):
        text = refusals(roles=roles)
        assert "mas:secrets:homeserver_secret: is required on this minion: MAS and Synapse are on different" in text
        assert "ext_pillar mas_secrets" in text and "docs/several-hosts.md" in text
    # MAS beside Synapse: generated on that minion, as on one host
    mapdata(roles=["mas", "synapse"], doctor={"proxy_url": "https://proxy.example.internal"})


def test_the_database_password_is_needed_where_mas_and_its_managed_database_are_apart():
    text = refusals(roles=["database"], database={"manage": True})
    assert "mas:database:password: is required on this minion: MAS and its managed database" in text
    assert "mas:database:password" in refusals(
        roles=["mas"], database={"manage": True, "host": "db.example.internal"}, **MAS_ALONE
    )
    # beside each other, or not managed by the formula: no password needed
    mapdata(roles=["mas", "database"], database={"manage": True}, **MAS_ALONE)
    mapdata(roles=["mas"], database={"manage": False}, **MAS_ALONE)
    mapdata(roles=["database"], database={"manage": True, "password": PASSWORD})


# ------------------------------------------------- addresses between minions


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST.", "db.localhost", "127.0.0.1", "::1", "[::1]", "0.0.0.0"])
def test_names_of_this_very_host(host):
    assert grammar.is_this_host(host)


@pytest.mark.parametrize("host", ["127.0.0.3", "10.0.0.5", "synapse.example.internal", "[fd00::2]", "", None])
def test_other_hosts(host):
    assert not grammar.is_this_host(host)


@pytest.mark.parametrize(
    ("roles", "override", "key", "user"),
    [
        (["mas"], {"synapse": {"endpoint": "http://localhost:8008/"}}, "mas:synapse:endpoint", "MAS"),
        (["mas"], {"synapse": {"endpoint": "http://[::1]:8008/"}}, "mas:synapse:endpoint", "MAS"),
        (["mas"], {"doctor": {"proxy_url": ""}}, "mas:doctor:proxy_url", "the doctor"),
        (["mas"], {"http": {"web_bind": "127.0.0.1:8080"}}, "mas:http:web_bind", None),
        (
            ["mas"],
            {"database": {"manage": True, "password": PASSWORD, "host": "/run/postgresql"}},
            "mas:database:host",
            "MAS",
        ),
        (["mas"], {"database": {"manage": True, "password": PASSWORD}}, "mas:database:host", "MAS"),
        (["synapse"], {}, "mas:synapse:mas_endpoint", "Synapse"),
        (["proxy"], {}, "mas:proxy:nginx:mas_upstream", "the proxy"),
        (["proxy"], {"proxy": {"type": "traefik"}}, "mas:proxy:traefik:mas_url", "the proxy"),
    ],
)
def test_an_address_naming_this_host_is_refused_where_the_other_role_is_elsewhere(roles, override, key, user):
    base = MAS_ALONE if roles == ["mas"] else {"secrets": {"homeserver_secret": SHARED}}
    text = refusals(roles=roles, **deep_update(base, override))
    assert f"- {key}: " in text, text
    assert "names this very host" in text or "loopback only" in text
    if user:
        assert f"so {user}" in text


def test_derived_defaults_are_named_as_such():
    text = refusals(roles=["synapse"], secrets={"homeserver_secret": SHARED})
    assert "mas:synapse:mas_endpoint: 'http://localhost:8080/auth/' (the formula's default when it is unset)" in text


def test_other_addresses_pass_and_each_minion_checks_only_what_it_uses():
    # Synapse's minion: Synapse's own endpoint on localhost is right there (its restart waits on it)
    mas = mapdata(
        roles=["synapse"],
        secrets={"homeserver_secret": SHARED},
        synapse={"mas_endpoint": "http://127.0.0.2:8080/auth/"},
    )
    assert mas["synapse"]["endpoint"] == "http://localhost:8008/"
    # the proxy's minion does not reach Synapse or the database
    mapdata(roles=["proxy"], proxy={"nginx": {"mas_upstream": "http://mas.example.internal:8080"}})
    # MAS binding every address
    mapdata(roles=["mas"], http={"web_bind": "0.0.0.0:8080"}, **MAS_ALONE)
    # a disabled deployment is not checked
    mapdata(roles=["proxy"], enabled=False)


# ------------------------------------------------------ files of each minion


def test_synapse_copy_of_the_shared_secret_is_the_pillar_value_on_synapse_alone():
    mas = mapdata(
        roles=["synapse"], secrets={"homeserver_secret": SHARED}, synapse={"mas_endpoint": "http://mas.internal/auth/"}
    )
    assert mas["synapse_secret"] == {
        "kind": "pillar",
        "source": None,
        "pillar_key": "mas:secrets:homeserver_secret",
    }
    assert SHARED not in str(mas)


@pytest.fixture
def pillar(tmp_path):
    return {}


def test_foreign_files_are_only_those_of_the_roles_held(tmp_path, pillar):
    """A file at a path of a role held elsewhere is not this minion's business (e.g. the proxy's snippet path on
    the MAS minion); the same file on the minion of that role is refused."""
    snippet = tmp_path / "snippet.conf"
    snippet.write_text("# the operator's own\n")
    config = tmp_path / "mas" / "config" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("# the playbook's\n")
    common = {
        "base_path": str(tmp_path / "mas"),
        "proxy": {"nginx": {"snippet_path": str(snippet), "mas_upstream": "http://mas.internal:8080"}},
    }
    foreign = MODULES["mas"].foreign_files
    on_proxy = mapdata(roles=["proxy"], **common)
    assert [line.split(":")[0:3] for line in foreign(on_proxy)] == [["mas", "proxy", "nginx"]]
    on_mas = mapdata(roles=["mas"], **common, **MAS_ALONE)
    found = foreign(on_mas)
    assert len(found) == 1 and found[0].startswith("mas:base_path: ") and str(config) in found[0]


def test_synapse_config_takes_the_registration_secret_from_pillar(tmp_path, pillar):
    """Where Synapse's files are not (a MAS minion of its own), its registration secret comes from pillar."""
    pillar["mas"] = {"synapse": {"registration_shared_secret": "Synapse-Registration-4711"}}
    found = MODULES["mas_synapse"].config([str(tmp_path / "absent.yaml")], str(tmp_path), mask=False)
    assert found["config"]["registration_shared_secret"] == "Synapse-Registration-4711"
    masked = MODULES["mas_synapse"].config([str(tmp_path / "absent.yaml")], str(tmp_path))
    assert masked["config"]["registration_shared_secret"] == "**********"
    # given explicitly (the conflict rules' own reads), pillar is not consulted
    assert (
        "registration_shared_secret"
        not in MODULES["mas_synapse"].config([str(tmp_path / "absent.yaml")], str(tmp_path), extra_config={})["config"]
    )
    # what the users' Synapse side registers with, on a MAS minion of its own
    files = {"config_files": [str(tmp_path / "absent.yaml")], "config_dir": str(tmp_path)}
    on_mas = mapdata(roles=["mas"], **deep_update(MAS_ALONE, {"synapse": files}))
    migrating = dict(on_mas, migration_in_progress=True)  # Synapse is authoritative: registrations go there
    assert MODULES["mas_user"]._connect(migrating).shared_secret() == "Synapse-Registration-4711"
    assert "mas:synapse:registration_shared_secret: must not contain control characters" in refusals(
        synapse={"registration_shared_secret": "a\nb"}
    )
    assert "Synapse-Registration" not in str(mapdata(synapse={"registration_shared_secret": "Synapse-Registration"}))


# ----------------------------------------------------------- the ext_pillar


def load_ext_pillar(file_roots):
    spec = importlib.util.spec_from_file_location("mas_secrets_pillar", REPO_ROOT / "_pillar" / "mas_secrets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.__opts__ = {"file_roots": {"base": [str(root) for root in file_roots]}}
    assert module.__virtual__() == "mas_secrets"
    return module


def minion(roles, **mas):
    return {"mas": {"enabled": True, "server_name": "example.com", "roles": roles, **mas}}


def test_ext_pillar_serves_each_shared_secret_to_exactly_its_two_roles(tmp_path):
    ext = load_ext_pillar([tmp_path / "salt"])
    store = str(tmp_path / "store")
    on = {}
    for name, roles in (
        ("mas", ["mas"]),
        ("synapse", ["synapse"]),
        ("database", ["database"]),
        ("proxy", ["proxy"]),
        ("mas-synapse", ["mas", "synapse"]),
    ):
        on[name] = ext.serve(minion(roles, database={"manage": True}), store=store)
    shared = on["mas"]["mas"]["secrets"]["homeserver_secret"]
    password = on["mas"]["mas"]["database"]["password"]
    assert len(shared) == 64 and len(password) == 64 and shared != password
    assert on["synapse"] == {"mas": {"secrets": {"homeserver_secret": shared}}}
    assert on["database"] == {"mas": {"database": {"password": password}}}
    assert on["proxy"] == {}
    # MAS beside Synapse: the shared secret is theirs alone (generated on that minion); the password is served
    assert on["mas-synapse"] == {"mas": {"database": {"password": password}}}
    # kept on the master, root only
    directory = tmp_path / "store" / "example.com"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "store").stat().st_mode) == 0o700
    for name, value in (("homeserver_secret", shared), ("database_password", password)):
        assert (directory / name).read_text() == value
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
    # generated once: every later compilation serves the same values
    assert ext.serve(minion(["synapse"]), store=store) == on["synapse"]


def test_ext_pillar_decides_on_the_pillar_tree_never_on_what_a_request_adds(tmp_path, monkeypatch):
    """Salt merges a request's pillar_override into the pillar an ext_pillar is handed: the proxy asking with
    ``mas:roles: [mas]`` gets nothing; what the master's own pillar tree gives it (``own_pillar``) decides. The real
    recompilation runs against a real master in test_several_hosts."""
    ext = load_ext_pillar([])
    store = str(tmp_path / "store")
    asked = minion(["mas"], database={"manage": True})
    tree = {"proxy": minion(["proxy"]), "synapse": minion(["synapse"])}
    compiled = []
    monkeypatch.setattr(ext, "own_pillar", lambda minion_id: compiled.append(minion_id) or tree.get(minion_id))
    assert ext.ext_pillar("proxy", asked, store=store) == {}
    served = ext.ext_pillar("synapse", asked, store=store)
    assert list(served["mas"]) == ["secrets"]  # the Synapse minion's secret, not MAS's database password
    # a minion of no split deployment (most of a fleet) costs no second compilation
    assert ext.ext_pillar("web", {"nginx": {}}, store=store) == {}
    assert ext.ext_pillar("one-host", minion(["mas", "synapse", "database", "proxy"]), store=store) == {}
    assert compiled == ["proxy", "synapse"]


def test_own_pillar_fails_closed(caplog):
    ext = load_ext_pillar([])  # a master configuration Salt's pillar cannot compile with
    assert ext.own_pillar("synapse") == {}
    assert "the pillar of synapse did not compile without the request's overrides" in caplog.text


def test_ext_pillar_leaves_alone_what_it_should(tmp_path):
    ext = load_ext_pillar([])
    store = str(tmp_path / "store")
    assert ext.serve(minion(["mas", "synapse", "database", "proxy"]), store=store) == {}
    assert ext.serve(minion(None), store=store) == {}  # no roles: one host
    assert ext.serve({"mas": {"enabled": False, "server_name": "example.com", "roles": ["mas"]}}) == {}
    assert ext.serve(minion(["mas", "web"]), store=store) == {}
    assert ext.serve({"mas": {"enabled": True, "roles": ["mas"]}}, store=store) == {}
    assert ext.serve({"nginx": {}}, store=store) == {}
    # a secret pillar gives is not generated, nor served again
    given = minion(["synapse"], secrets={"homeserver_secret": SHARED})
    assert ext.serve(given, store=store) == {}
    # the database password only with mas:database:manage
    assert ext.serve(minion(["database"]), store=store) == {}
    assert not os.path.exists(store)


def test_ext_pillar_refuses_a_store_every_minion_may_fetch(tmp_path):
    ext = load_ext_pillar([tmp_path / "salt"])
    with pytest.raises(CommandExecutionError, match="overlaps the file root"):
        ext.serve(minion(["synapse"]), store=str(tmp_path / "salt" / "mas-secrets"))
    with pytest.raises(CommandExecutionError, match="store must be an absolute"):
        ext.serve(minion(["synapse"]), store="relative/dir")
    (tmp_path / "open").mkdir(mode=0o755)
    os.chmod(tmp_path / "open", 0o755)  # noqa: S103 -- the open store the ext_pillar must refuse
    with pytest.raises(CommandExecutionError, match="mode 0700"):
        ext.serve(minion(["synapse"]), store=str(tmp_path / "open"))


def test_ext_pillar_generates_once_even_when_minions_compile_at_once(tmp_path):
    ext = load_ext_pillar([])
    store = str(tmp_path / "store")
    values, threads = [], []
    for index in range(8):
        roles = ["mas"] if index % 2 else ["synapse"]
        threads.append(
            threading.Thread(
                target=lambda roles=roles: values.append(
                    ext.serve(minion(roles), store=store)["mas"]["secrets"]["homeserver_secret"]
                )
            )
        )
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(values) == 8 and len(set(values)) == 1
    assert secretfiles.temporaries(str(tmp_path / "store" / "example.com")) == []


# ------------------------------------------- Synapse's config for syn2mas on a MAS minion without Synapse

SYNAPSE_DB = {"host": "db.example.internal", "port": 5433, "name": "synapse", "user": "synapse_user"}
SYNAPSE_DB_PASSWORD = "Synapse-Db-Password-4711"
PROVIDERS = [
    {
        "id": "01HFVBY12TMNTYTBV8W921M5FA",
        "synapse_idp_id": "oidc-keycloak",
        "issuer": "https://keycloak.example.com/realms/matrix/",
        "client_id": "mas",
        "client_secret": "Client-Secret-0001",
        "token_endpoint_auth_method": "client_secret_post",
        "scope": "openid",
    },
    {
        "id": "01HFVBY12TMNTYTBV8W921M5FB",
        "synapse_idp_id": "oidc",
        "issuer": "https://legacy.example.com/",
        "client_id": "mas2",
        "token_endpoint_auth_method": "none",
        "scope": "openid",
    },
    {
        "id": "01HFVBY12TMNTYTBV8W921M5FC",
        "issuer": "https://new.example.com/",
        "client_id": "n",
        "token_endpoint_auth_method": "none",
        "scope": "openid",
    },
]


def mas_with_synapse_database(**overrides):
    return deep_update(
        MAS_ALONE,
        deep_update(
            {
                "roles": ["mas", "database"],
                "synapse": {"database": dict(SYNAPSE_DB, password=SYNAPSE_DB_PASSWORD)},
                "upstream_oauth2_providers": PROVIDERS,
            },
            overrides,
        ),
    )


def test_a_mas_minion_without_synapse_writes_synapses_config_for_syn2mas_from_pillar():
    pillar = mas_with_synapse_database()
    mas = mapdata(**pillar)
    path = mas["paths"]["synapse_syn2mas_config"]
    assert path == "/srv/mas/config/secrets/synapse-syn2mas.yaml"
    (entry,) = [e for e in mas["secret_files"] if e["name"] == "synapse_config"]
    assert (entry["path"], entry["kind"], entry["pillar_key"], entry["mode"]) == (
        path,
        "synapse_config",
        "mas:synapse:database",
        "0600",
    )
    assert entry["mas_reads"] is False  # syn2mas's, not MAS's: a change does not restart MAS
    # what syn2mas, the preflight, the backup and the verification read there
    assert mas["syn2mas"]["synapse_config_files"] == [path]
    assert mas["synapse"]["database_set"] is True and "password" not in mas["synapse"]["database"]
    assert SYNAPSE_DB_PASSWORD not in str(mas)
    # the operator's own files win; beside Synapse (its files are there) or without the database: not written
    assert mapdata(**deep_update(pillar, {"syn2mas": {"synapse_config_files": ["/x.yaml"]}}))["syn2mas"][
        "synapse_config_files"
    ] == ["/x.yaml"]
    for other in (
        mapdata(**deep_update(pillar, {"roles": ["mas", "synapse"]})),
        mapdata(roles=["mas"], **MAS_ALONE),
    ):
        assert "synapse_config" not in [e["name"] for e in other["secret_files"]]
        assert other["syn2mas"]["synapse_config_files"] == []


@pytest.mark.parametrize(
    ("database", "message"),
    [
        ({"host": "db.example.internal"}, "mas:synapse:database:name: '' is not Synapse's database name"),
        ({"name": "synapse", "user": "s"}, "mas:synapse:database:host: must be Synapse's PostgreSQL server"),
        (dict(SYNAPSE_DB, user="bad user"), "mas:synapse:database:user: 'bad user' is not Synapse's database user"),
        (dict(SYNAPSE_DB, sslmode="maybe"), "mas:synapse:database:sslmode: must be one of disable, allow, prefer"),
        (dict(SYNAPSE_DB, port="x"), "mas:synapse:database:port:"),
        (dict(SYNAPSE_DB, dbname="synapse"), "mas:synapse:database:dbname: unknown key"),
        (dict(SYNAPSE_DB, password="a\nb"), "mas:synapse:database:password: must not contain control characters"),
        ("postgresql://synapse@db/synapse", "mas:synapse:database: must be a mapping of host, port, name, user"),
    ],
)
def test_synapses_database_is_refused_naming_the_key(database, message):
    assert message in refusals(roles=["mas"], **deep_update(MAS_ALONE, {"synapse": {"database": database}}))


def test_the_config_for_syn2mas_holds_what_syn2mas_reads_and_is_a_secret_file(tmp_path, pillar):
    pillar["mas"] = mas_with_synapse_database(
        enabled=True,
        server_name="example.com",
        base_path=str(tmp_path / "mas"),
        synapse={"pepper": "Pepper-0002", "extra_config": {"allow_guest_access": False, "enable_registration": True}},
    )
    mas = MODULES["mas"].mapdata()
    secrets_dir = tmp_path / "mas" / "config" / "secrets"
    secrets_dir.mkdir(parents=True)
    (entry,) = [e for e in mas["secret_files"] if e["name"] == "synapse_config"]
    args = {k: entry[k] for k in ("kind", "pillar_key", "user", "group", "mode", "owner")}
    args.update(user="root", group="root")
    write, status = MODULES["mas_secret"].write, MODULES["mas_secret"].status
    assert write(entry["path"], **args)["action"] == "create"
    path = secrets_dir / "synapse-syn2mas.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.startswith("# Synapse's settings for syn2mas on this MAS minion (Synapse runs on another one)")
    assert yaml.safe_load(text) == {
        "server_name": "example.com",
        "database": {
            "name": "psycopg2",
            "args": {
                "host": "db.example.internal",
                "port": 5433,
                "dbname": "synapse",
                "user": "synapse_user",
                "password": SYNAPSE_DB_PASSWORD,
                "sslmode": "prefer",
            },
        },
        "password_config": {"pepper": "Pepper-0002"},
        # Synapse's providers as its user_external_ids name them (oidc-<idp_id>, oidc): the ones MAS maps
        "oidc_providers": [
            {"idp_id": "keycloak", "issuer": "https://keycloak.example.com/realms/matrix/", "client_id": "mas"},
            {"idp_id": "oidc", "issuer": "https://legacy.example.com/", "client_id": "mas2"},
        ],
        "allow_guest_access": False,
        "enable_registration": True,
    }
    # the same pillar, the same bytes; a new password rewrites it; the state never shows the content
    assert status(entry["path"], **args)["action"] == "none"
    pillar["mas"]["synapse"]["database"]["password"] = "Another-Password-0003"
    assert status(entry["path"], **args) == {"action": "update", "reason": "from pillar"}
    write(entry["path"], **args)
    assert "Another-Password-0003" in path.read_text()
    # it is the formula's own file (in its secrets directory), never refused as foreign
    assert MODULES["mas"].foreign_files(MODULES["mas"].mapdata()) == []
    # Synapse's own providers in extra_config are kept as given
    pillar["mas"]["synapse"]["extra_config"] = {"oidc_providers": [{"idp_id": "own", "issuer": "https://own/"}]}
    write(entry["path"], **args)
    assert yaml.safe_load(path.read_text())["oidc_providers"] == [{"idp_id": "own", "issuer": "https://own/"}]
