"""Hostile pillars, applied with the real salt-call (issue 8).

Pillar is often assembled from several hands, so the formula treats every
value as untrusted data. Each case below is ``pillar.example`` (redirected
into a fresh root) with one hostile value: injection through each value that
reaches a file or a command (SLS, unit, wrapper, nginx, Traefik), path
traversal and foreign files, control characters and trailing newlines,
coercion, inline secrets. Each is applied with ``state.apply mas`` in a fresh
root next to a sibling directory holding victim files, and must be refused
naming the pillar key, with nothing written anywhere: the whole tree (root
and sibling) is compared before and after. A refusal fails at render, before
any state runs, so the cases share one synced minion and take about a second
each.
"""

import copy
import hashlib
import pathlib
import re
import stat

import pytest
import yaml

from mas_demo import overrides as demo_overrides
from pillars import deep_update
from saltrun import REPO_ROOT

ULID2 = "01HFVBY12TMNTYTBV8W921M5FB"
INJECT = "\n\nmas-injected:\n  cmd.run:\n    - name: touch {root}/pwned"
VICTIMS = {"file": "victim data\n", "mas.service": "[Unit]\nDescription=not the formula's\n", "victim.yaml": "a: 1\n"}
SECRET = "Hostile-Secret-7"


def provider(**fields):
    example = yaml.safe_load((REPO_ROOT / "pillar.example").read_text())["mas"]["upstream_oauth2_providers"][0]
    return {**example, **fields}


# (case id, pillar overrides ({root} and {victim} are filled in), the pillar key that must be named)
CASES = [
    # -- injection through values that reach an SLS
    (
        "sls-mas-endpoint",
        {"synapse": {"mas_endpoint": "http://localhost:8080/auth/" + INJECT}},
        "mas:synapse:mas_endpoint",
    ),
    ("sls-synapse-endpoint", {"synapse": {"endpoint": "http://localhost:8008/" + INJECT}}, "mas:synapse:endpoint"),
    ("sls-hostname", {"hostname": "matrix.example.com" + INJECT}, "mas:hostname"),
    ("sls-server-name", {"server_name": "example.com" + INJECT}, "mas:server_name"),
    ("sls-path-prefix", {"path_prefix": "/auth" + INJECT}, "mas:path_prefix"),
    ("sls-base-path", {"base_path": "{root}/mas" + INJECT}, "mas:base_path"),
    (
        "sls-snippet-path",
        {"proxy": {"nginx": {"snippet_path": "{root}/mas.conf" + INJECT}}},
        "mas:proxy:nginx:snippet_path",
    ),
    ("sls-username", {"users": [{"username": "bot" + INJECT}]}, "mas:users:0:username"),
    ("sls-image", {"image": "ghcr.io/element-hq/mas:1" + INJECT}, "mas:image"),
    ("sls-user", {"user": "mas" + INJECT}, "mas:user"),
    ("sls-group", {"group": "mas" + INJECT}, "mas:group"),
    ("sls-synapse-service", {"synapse": {"service": "matrix-synapse" + INJECT}}, "mas:synapse:service"),
    ("sls-dropin-name", {"synapse": {"dropin_name": "mas.yaml" + INJECT}}, "mas:synapse:dropin_name"),
    ("sls-synapse-config-dir", {"synapse": {"config_dir": "{root}/conf.d" + INJECT}}, "mas:synapse:config_dir"),
    ("sls-database-name", {"database": {"name": "mas" + INJECT}}, "mas:database:name"),
    ("sls-database-user", {"database": {"user": "mas" + INJECT}}, "mas:database:user"),
    ("sls-unit-dir", {"service": {"unit_dir": "{root}/units" + INJECT}}, "mas:service:unit_dir"),
    ("sls-tofs-files", {"tofs": {"dirs": {"files": "files" + INJECT}}}, "mas:tofs:dirs:files"),
    # -- nginx directive injection
    (
        "nginx-upstream",
        {"proxy": {"nginx": {"mas_upstream": "http://127.0.0.1:8080;\n    add_header X-Injected pwned"}}},
        "mas:proxy:nginx:mas_upstream",
    ),
    ("nginx-web-bind", {"http": {"web_bind": "127.0.0.1;\n    include /etc/shadow;\n#:8080"}}, "mas:http:web_bind"),
    (
        "nginx-matrix-hostname",
        {"proxy": {"matrix_hostname": "matrix.example.com\n}\nserver {"}},
        "mas:proxy:matrix_hostname",
    ),
    ("nginx-prefix-semicolon", {"path_prefix": "/auth;return 200"}, "mas:path_prefix"),
    ("nginx-prefix-variable", {"path_prefix": "/auth$request_uri"}, "mas:path_prefix"),
    ("nginx-prefix-brace", {"path_prefix": "/auth{"}, "mas:path_prefix"),
    (
        "nginx-upstream-path",
        {"proxy": {"nginx": {"mas_upstream": "http://127.0.0.1:8080/"}}},
        "mas:proxy:nginx:mas_upstream",
    ),
    ("nginx-service", {"proxy": {"nginx": {"service": "nginx; rm -rf /"}}}, "mas:proxy:nginx:service"),
    # -- Traefik label and rule injection
    (
        "traefik-certresolver",
        {"proxy": {"type": "traefik", "traefik": {"certresolver": "le\ntraefik.http.routers.evil.rule=Host(`x`)"}}},
        "mas:proxy:traefik:certresolver",
    ),
    (
        "traefik-entrypoint",
        {"proxy": {"type": "traefik", "traefik": {"entrypoint": "websecure\n  evil: x"}}},
        "mas:proxy:traefik:entrypoint",
    ),
    (
        "traefik-mas-url",
        {"proxy": {"type": "traefik", "traefik": {"mas_url": "http://mas:8080/`)"}}},
        "mas:proxy:traefik:mas_url",
    ),
    (
        "traefik-host-rule",
        {"proxy": {"type": "traefik"}, "hostname": "matrix.example.com`) || Host(`evil.example"},
        "mas:hostname",
    ),
    ("traefik-router-name", {"proxy": {"type": "traefik"}, "service": {"name": "mas.evil"}}, "mas:service:name"),
    # -- the unit and the wrappers
    ("unit-docker-newline", {"service": {"docker": {"command": "/usr/bin/docker\n"}}}, "mas:service:docker:command"),
    (
        "unit-docker-execstartpost",
        {"service": {"docker": {"command": "/usr/bin/docker\nExecStartPost=/bin/touch {root}/pwned"}}},
        "mas:service:docker:command",
    ),
    ("unit-name-option", {"service": {"name": "--volumes"}}, "mas:service:name"),
    ("unit-name-newline", {"service": {"name": "mas\nExecStartPre=/bin/true"}}, "mas:service:name"),
    ("unit-network", {"service": {"docker": {"network": "host --privileged"}}}, "mas:service:docker:network"),
    ("unit-extra-args-newline", {"service": {"docker": {"extra_args": ["--x=1\n"]}}}, "mas:service:docker:extra_args"),
    (
        "unit-extra-args-subst",
        {"service": {"docker": {"extra_args": ["$(touch {root}/pwned)"]}}},
        "mas:service:docker:extra_args",
    ),
    ("unit-binary", {"runtime": "binary", "binary": "/usr/bin/mas-cli\nExecStartPre=/bin/sh"}, "mas:binary"),
    ("unit-restart", {"service": {"restart": "always\nExecStartPre=/bin/sh"}}, "mas:service:restart"),
    (
        "sendmail-command",
        {"email": {"transport": "sendmail", "command": "/usr/sbin/sendmail -t; touch {root}/pwned"}},
        "mas:email:command",
    ),
    # -- trailing newlines (Python's `$` matches before a final newline)
    ("newline-path-prefix", {"path_prefix": "/auth\n"}, "mas:path_prefix"),
    ("newline-base-path", {"base_path": "{root}/mas\n"}, "mas:base_path"),
    ("newline-service-name", {"service": {"name": "matrix-authentication-service\n"}}, "mas:service:name"),
    ("newline-username", {"users": [{"username": "bob\n"}]}, "mas:users:0:username"),
    (
        "newline-provider-id",
        {"upstream_oauth2_providers": [provider(id="01HFVBY12TMNTYTBV8W921M5FA\n")]},
        "mas:upstream_oauth2_providers:0:id",
    ),
    ("newline-web-bind", {"http": {"web_bind": "[::]:8080\n"}}, "mas:http:web_bind"),
    ("newline-image", {"image": "ghcr.io/element-hq/matrix-authentication-service:1.23.0\n"}, "mas:image"),
    (
        "newline-synapse-idp-id",
        {"upstream_oauth2_providers": [provider(synapse_idp_id="oidc-keycloak\n")]},
        "mas:upstream_oauth2_providers:0:synapse_idp_id",
    ),
    ("newline-internal-bind", {"http": {"internal_bind": "localhost:8081\n"}}, "mas:http:internal_bind"),
    # -- traversal and foreign files
    ("traversal-base-path", {"base_path": "{root}/x/../../victim/mas"}, "mas:base_path"),
    ("traversal-secret-path", {"synapse": {"secret_path": "{root}/a/../../victim/file"}}, "mas:synapse:secret_path"),
    (
        "traversal-snippet",
        {"proxy": {"nginx": {"snippet_path": "{root}/etc/../../victim/file"}}},
        "mas:proxy:nginx:snippet_path",
    ),
    ("traversal-unit-dir", {"service": {"unit_dir": "{root}/../victim"}}, "mas:service:unit_dir"),
    (
        "traversal-config-files",
        {"synapse": {"config_files": ["{root}/../victim/victim.yaml"]}},
        "mas:synapse:config_files",
    ),
    ("foreign-secret-path", {"synapse": {"secret_path": "{victim}/file"}}, "mas:synapse:secret_path"),
    ("foreign-snippet", {"proxy": {"nginx": {"snippet_path": "{victim}/file"}}}, "mas:proxy:nginx:snippet_path"),
    (
        "foreign-traefik-config",
        {"proxy": {"type": "traefik", "traefik": {"config_path": "{victim}/file"}}},
        "mas:proxy:traefik:config_path",
    ),
    ("foreign-unit", {"service": {"unit_dir": "{victim}", "name": "mas"}}, "mas:service:unit_dir"),
    ("foreign-dropin", {"synapse": {"config_dir": "{victim}", "dropin_name": "victim.yaml"}}, "mas:synapse:config_dir"),
    (
        "collision-secret-path",
        {"synapse": {"secret_path": "{root}/matrix/matrix-authentication-service/config/secrets/encryption"}},
        "mas:synapse:secret_path",
    ),
    (
        "collision-snippet-in-data",
        {"proxy": {"nginx": {"snippet_path": "{root}/matrix/matrix-authentication-service/data/mas.conf"}}},
        "mas:proxy:nginx:snippet_path",
    ),
    # -- control characters
    ("control-server-name", {"server_name": "example.com\x00"}, "mas:server_name"),
    ("control-email-from", {"email": {"from": "mas@example.com\r\nBcc: victim@example.com"}}, "mas:email:from"),
    ("control-database-host", {"database": {"host": "local\thost"}}, "mas:database:host"),
    ("control-trusted-proxy", {"http": {"trusted_proxies": ["127.0.0.1/32\n"]}}, "mas:http:trusted_proxies:0"),
    (
        "control-syn2mas-files",
        {"syn2mas": {"synapse_config_files": ["{root}/hs.yaml\x07"]}},
        "mas:syn2mas:synapse_config_files",
    ),
    ("control-email-username", {"email": {"username": "mas\x1b[31m"}}, "mas:email:username"),
    # -- coercion and types
    ("type-port-float", {"database": {"port": 5432.9}}, "mas:database:port"),
    ("type-port-bool", {"database": {"port": True}}, "mas:database:port"),
    ("type-email-port", {"email": {"port": "587; rm"}}, "mas:email:port"),
    ("type-email-password-mapping", {"email": {"password": {"value": SECRET}}}, "mas:email:password"),
    (
        "type-client-secret-mapping",
        {"upstream_oauth2_providers": [provider(client_secret={"value": SECRET})]},
        "mas:upstream_oauth2_providers:0:client_secret",
    ),
    ("type-database-password-list", {"database": {"password": [SECRET]}}, "mas:database:password"),
    (
        "type-duplicate-idp-id",
        {"upstream_oauth2_providers": [provider(), provider(id=ULID2)]},
        "mas:upstream_oauth2_providers:1:synapse_idp_id",
    ),
    ("type-enabled-string", {"enabled": "yes"}, "mas:enabled"),
    ("type-user-admin-string", {"users": [{"username": "bob", "admin": "true"}]}, "mas:users:0:admin"),
    ("type-encryption-int", {"secrets": {"encryption": 12345}}, "mas:secrets:encryption"),
    ("type-pepper-mapping", {"synapse": {"pepper": {"value": SECRET}}}, "mas:synapse:pepper"),
    # -- secrets inline in mas:config / mas:lookup:config, and what the merged config must keep
    ("inline-matrix-secret", {"config": {"matrix": {"secret": SECRET}}}, "mas:config:matrix:secret"),
    ("inline-encryption", {"config": {"secrets": {"encryption": "a" * 64}}}, "mas:config:secrets:encryption"),
    ("inline-email-password", {"config": {"email": {"password": SECRET}}}, "mas:config:email:password"),
    (
        "inline-database-uri",
        {"config": {"database": {"uri": f"postgresql://mas:{SECRET}@db/mas"}}},
        "mas:config:database:uri",
    ),
    (
        "inline-client-secret",
        {
            "config": {
                "clients": [{"client_id": ULID2, "client_auth_method": "client_secret_basic", "client_secret": SECRET}]
            }
        },
        "mas:config:clients:0:client_secret",
    ),
    (
        "inline-scheme-secret",
        {"config": {"passwords": {"schemes": [{"version": 1, "algorithm": "bcrypt", "secret": SECRET}]}}},
        "mas:config:passwords:schemes:0:secret",
    ),
    ("inline-lookup", {"lookup": {"config": {"matrix": {"secret": SECRET}}}}, "mas:lookup:config:matrix:secret"),
    ("config-no-listener", {"config": {"http": {"listeners": []}}}, "mas:config:http:listeners"),
    # -- MAS's own runtime rules
    ("rule-smtp-mode", {"email": {"mode": ""}}, "mas:email:mode"),
    ("rule-sendmail-command", {"email": {"transport": "sendmail", "command": ""}}, "mas:email:command"),
    ("rule-issuer", {"upstream_oauth2_providers": [provider(issuer="")]}, "mas:upstream_oauth2_providers:0:issuer"),
]


def fill(node, root, victim):
    if isinstance(node, dict):
        return {k: fill(v, root, victim) for k, v in node.items()}
    if isinstance(node, list):
        return [fill(v, root, victim) for v in node]
    if isinstance(node, str):
        return node.replace("{root}", str(root)).replace("{victim}", str(victim))
    return node


def tree(top):
    """{relative path: (type, sha256, mode)} of everything under ``top``."""
    out = {}
    for path in sorted(pathlib.Path(top).rglob("*")):
        info = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(info.st_mode) else ""
        out[str(path.relative_to(top))] = (stat.S_IFMT(info.st_mode), digest, stat.S_IMODE(info.st_mode))
    return out


@pytest.fixture(scope="module")
def minion(module_salt_minion):
    """The cases' shared minion, with its grains cached between runs (about 0.5 s of each salt-call)."""
    config = module_salt_minion.confdir / "minion"
    config.write_text(config.read_text() + "grains_cache: true\ngrains_cache_expiration: 3600\n")
    return module_salt_minion


@pytest.fixture(scope="module")
def example():
    return yaml.safe_load((REPO_ROOT / "pillar.example").read_text())["mas"]


def case_pillar(example, root, victim, overrides):
    pillar = deep_update(example, demo_overrides(str(root)))
    return deep_update(pillar, fill(copy.deepcopy(overrides), root, victim))


def test_there_are_at_least_sixty_hostile_pillars_and_the_readme_says_how_many():
    assert len(CASES) >= 60
    assert len({case_id for case_id, _, _ in CASES}) == len(CASES)
    assert f"**{len(CASES)} hostile pillars**" in (REPO_ROOT / "docs" / "security.md").read_text()


def test_the_untouched_example_renders(minion, example, tmp_path):
    """The control: without the hostile value the same pillar is accepted."""
    minion.set_pillar({"mas": case_pillar(example, tmp_path / "root", tmp_path / "victim", {})})
    show = minion.run("state.show_sls", "mas")
    assert show.returncode == 0, show.output
    assert "mas-config-file-file-managed" in show.data


@pytest.mark.parametrize(("overrides", "key"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_pillar_is_refused_naming_the_key_and_writes_nothing(minion, example, tmp_path, overrides, key):
    root, victim = tmp_path / "root", tmp_path / "victim"
    victim.mkdir()
    for name, text in VICTIMS.items():
        (victim / name).write_text(text)
    before = tree(tmp_path)
    minion.set_pillar({"mas": case_pillar(example, root, victim, overrides)})
    res = minion.apply()
    text = "\n".join(res.data) if isinstance(res.data, list) else res.output
    assert res.returncode != 0, res.output
    # refused at render: no state ran
    assert not res.states, sorted(res.states)
    assert "nothing was changed" in text, text
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.startswith(f"- {key}: ")]
    assert lines, f"{key} not named in:\n{text}"
    # what a valid value looks like, or what to do instead
    assert re.search(r"must|is required|use |e\.g\.|move it away|choose another", lines[0]), lines[0]
    assert tree(tmp_path) == before
    assert not root.exists()
    assert SECRET not in res.output


# --------------------------------------------------------------------------
# Never overwrite what the formula did not write; leave nothing behind
# --------------------------------------------------------------------------

PROVIDER_SECRET = "config/secrets/upstream-01HFVBY12TMNTYTBV8W921M5FA.secret"


def test_removing_a_provider_removes_its_client_secret_file(salt_minion, full_pillar, paths):
    assert salt_minion.apply(full_pillar).returncode == 0
    secret = paths["base"] / PROVIDER_SECRET
    assert secret.is_file()
    res = salt_minion.apply(deep_update(full_pillar, {"upstream_oauth2_providers": []}))
    assert res.returncode == 0, res.output
    assert not secret.exists()
    assert "mas-secrets-file-file-absent-upstream-01HFVBY12TMNTYTBV8W921M5FA.secret" in res.changed
    # the other secrets stay, and nothing is left to do
    assert (paths["base"] / "config/secrets/encryption").is_file()
    again = salt_minion.apply(deep_update(full_pillar, {"upstream_oauth2_providers": []}))
    assert again.returncode == 0 and again.changed == [], again.output


def routes(path):
    return [line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_switching_proxy_type_cleans_the_previous_proxy_in_the_same_run(salt_minion, minimal_pillar, paths):
    assert salt_minion.apply(minimal_pillar).returncode == 0
    snippet, traefik = paths["nginx"], paths["traefik"]
    assert any("proxy_pass" in line for line in routes(snippet))
    to_traefik = deep_update(minimal_pillar, {"proxy": {"type": "traefik"}})
    # with reloads on, the old proxy is tested and reloaded once its file changed
    salt_minion.set_pillar({"mas": deep_update(to_traefik, {"proxy": {"reload": True}})})
    show = salt_minion.run("state.show_sls", "mas")
    assert show.returncode == 0, show.output
    reload = show.data["mas-proxy-reload-module-run-reload-leftover-nginx"]["module"]
    args = {k: v for item in reload if isinstance(item, dict) for k, v in item.items()}
    assert args["onchanges"] == [{"file": "mas-proxy-file-file-managed-leftover-nginx-snippet"}]
    assert "mas-proxy-reload-module-run-check-leftover-nginx" in show.data

    res = salt_minion.apply(to_traefik)
    assert res.returncode == 0, res.output
    assert traefik.is_file()
    assert routes(snippet) == []  # emptied, not deleted: an nginx include of a missing file breaks nginx
    assert "mas:proxy:type is traefik" in snippet.read_text()
    assert "mas-proxy-file-file-managed-leftover-nginx-snippet" in res.changed
    again = salt_minion.apply(to_traefik)
    assert again.returncode == 0 and again.changed == [], again.output

    back = salt_minion.apply(minimal_pillar)
    assert back.returncode == 0, back.output
    assert not traefik.exists()
    assert any("proxy_pass" in line for line in routes(snippet))
    assert "mas-proxy-file-file-absent-leftover-traefik-config" in back.changed


def test_clean_leaves_a_foreign_dropin_and_secret_copy(salt_minion, minimal_pillar, paths, tmp_path):
    dropin = paths["synapse_dir"] / "matrix-authentication-service.yaml"
    secret = tmp_path / "elsewhere" / "shared-secret"
    for path, text in ((dropin, "# Synapse settings of someone else\n"), (secret, "not the formula's\n")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    pillar = deep_update(minimal_pillar, {"enabled": False, "synapse": {"secret_path": str(secret)}})
    res = salt_minion.apply(pillar)
    assert res.returncode == 0, res.output
    assert dropin.read_text() == "# Synapse settings of someone else\n"
    assert secret.read_text() == "not the formula's\n"


def test_secret_files_the_formula_wrote_are_recorded_and_kept_updatable(salt_minion, full_pillar, paths):
    assert salt_minion.apply(full_pillar).returncode == 0
    record = paths["base"] / "formula" / "secrets.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    written = set(yaml.safe_load(record.read_text())["files"])
    assert str(paths["base"] / "synapse" / "homeserver_secret") in written
    assert str(paths["base"] / "config" / "secrets" / "encryption") in written
    # a new shared secret reaches Synapse's copy: the copy is the formula's own
    changed = deep_update(full_pillar, {"secrets": {"homeserver_secret": "Another-Homeserver-Secret-42"}})
    res = salt_minion.apply(changed)
    assert res.returncode == 0, res.output
    assert (paths["base"] / "synapse" / "homeserver_secret").read_text() == "Another-Homeserver-Secret-42"


def test_a_deployment_made_before_the_record_applies_unchanged(salt_minion, minimal_pillar, paths):
    assert salt_minion.apply(minimal_pillar).returncode == 0
    (paths["base"] / "formula" / "secrets.json").unlink()
    res = salt_minion.apply(minimal_pillar)
    assert res.returncode == 0, res.output
    assert res.changed == []


def test_a_foreign_file_found_later_is_refused_before_anything_is_written(salt_minion, minimal_pillar, paths):
    """A deployment, then someone replaces the nginx snippet: the next run refuses at render."""
    assert salt_minion.apply(minimal_pillar).returncode == 0
    paths["nginx"].write_text("server_tokens off;\n")
    written = (paths["base"], paths["units"], paths["nginx"].parent, paths["synapse_dir"])
    before = [tree(top) for top in written]
    res = salt_minion.apply(deep_update(minimal_pillar, {"path_prefix": "/login"}))
    assert res.returncode != 0
    assert f"- mas:proxy:nginx:snippet_path: {paths['nginx']} exists without the line" in "\n".join(res.data)
    assert [tree(top) for top in written] == before


def test_synapse_config_is_shown_with_its_secrets_masked(salt_minion, minimal_pillar, paths):
    """`salt-call mas_synapse.config` on the command line never prints Synapse's secrets."""
    paths["synapse_cfg"].parent.mkdir(parents=True)
    secrets = {
        "macaroon_secret_key": "Macaroon-Secret-31",
        "form_secret": "Form-Secret-32",
        "registration_shared_secret": "Registration-Secret-33",
    }
    paths["synapse_cfg"].write_text(
        yaml.safe_dump({"server_name": "example.com", "password_config": {"pepper": "Pepper-Secret-34"}, **secrets})
    )
    salt_minion.set_pillar({"mas": minimal_pillar})
    res = salt_minion.run("mas_synapse.config")
    assert res.returncode == 0, res.output
    assert res.data["config"]["server_name"] == "example.com"
    assert res.data["config"]["form_secret"] == "**********"
    for value in [*secrets.values(), "Pepper-Secret-34"]:
        assert value not in res.output
