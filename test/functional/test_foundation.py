"""The formula foundation with the real salt-call: files, secrets, idempotence,
validation before writing, no secret leaks (issue: Formula foundation)."""

import grp
import hashlib
import json
import os
import pathlib
import pwd
import shutil
import stat
import subprocess

import jsonschema
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from harness.util import free_port, require_binary, unavailable
from pillars import PILLAR_SECRETS, deep_update
from saltrun import REPO_ROOT

#: A release tarball of the binary runtime (never fetched: the tests lay out what it extracts to).
RELEASE_URL = "https://example.com/mas-cli-x86_64-linux.tar.gz"
RELEASE_HASH = "sha256=" + "0123456789abcdef" * 4


def snapshot(root):
    """{relative path: (sha256, mode, uid, gid)} of every file under root."""
    root = pathlib.Path(root)
    out = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        out[str(path.relative_to(root))] = (digest, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
    return out


def owner(path):
    info = os.stat(path)
    return pwd.getpwuid(info.st_uid).pw_name, grp.getgrgid(info.st_gid).gr_name, oct(stat.S_IMODE(info.st_mode))


def test_apply_full_pillar_files_modes_owners_and_idempotence(salt_minion, full_pillar, paths, mas_config_schema):
    res = salt_minion.apply(full_pillar)
    assert res.returncode == 0, res.output
    base = paths["base"]
    cfg_file = base / "config" / "config.yaml"
    config = yaml.safe_load(cfg_file.read_text())

    # config.yaml: valid against MAS's published schema, holds no secret
    jsonschema.validate(config, mas_config_schema)
    text = cfg_file.read_text()
    for value in PILLAR_SECRETS.values():
        assert value not in text
    assert owner(cfg_file) == ("root", "mas", "0o640")
    assert config["http"]["public_base"] == "https://matrix.example.com/auth/"
    assert config["http"]["issuer"] == "https://matrix.example.com/auth/"
    web, internal = config["http"]["listeners"]
    assert web["name"] == "web" and web["prefix"] == "/auth" and web["binds"] == [{"address": "[::]:8080"}]
    assert internal["name"] == "internal" and {"name": "health"} in internal["resources"]
    # a host name is {host, port}: MAS parses `address` as a literal socket address
    assert internal["binds"] == [{"host": "localhost", "port": 8081}]
    assert config["matrix"]["homeserver"] == "example.com"
    assert config["matrix"]["secret_file"] == str(base / "config/secrets/homeserver_secret")
    assert config["secrets"] == {
        "encryption_file": str(base / "config/secrets/encryption"),
        "keys_dir": str(base / "config/keys"),
    }
    assert config["database"]["password_file"] == str(base / "config/secrets/database_password")
    assert config["email"]["password_file"] == str(base / "config/secrets/email_password")
    schemes = config["passwords"]["schemes"]
    assert schemes[0] == {
        "version": 1,
        "algorithm": "bcrypt",
        "unicode_normalization": True,
        "secret_file": str(base / "config/secrets/synapse_pepper"),
    }
    assert schemes[1] == {"version": 2, "algorithm": "argon2id"}
    provider = config["upstream_oauth2"]["providers"][0]
    assert "client_secret" not in provider
    assert provider["client_secret_file"] == str(base / "config/secrets/upstream-01HFVBY12TMNTYTBV8W921M5FA.secret")
    assert config["branding"] == {"service_name": "Test"}
    # the formula's own admin client (mas_user.register), secret in a file
    assert config["clients"] == [
        {
            "client_id": "00000000000000000SA1TADM1N",
            "client_name": "Salt (mas formula)",
            "client_auth_method": "client_secret_basic",
            "client_secret_file": str(base / "config/secrets/admin_client_secret"),
        }
    ]
    assert config["policy"]["data"]["admin_clients"] == ["00000000000000000SA1TADM1N"]
    assert {"name": "adminapi"} in internal["resources"]

    # secret files: 0600, owned by the service user, exact content
    secrets = base / "config" / "secrets"
    expected = {
        "encryption": PILLAR_SECRETS["encryption"],
        "homeserver_secret": PILLAR_SECRETS["homeserver_secret"],
        "database_password": PILLAR_SECRETS["database_password"],
        "email_password": PILLAR_SECRETS["email_password"],
        "synapse_pepper": PILLAR_SECRETS["pepper"],
        "upstream-01HFVBY12TMNTYTBV8W921M5FA.secret": PILLAR_SECRETS["client_secret"],
    }
    for name, value in expected.items():
        assert (secrets / name).read_text() == value, name
        assert owner(secrets / name) == ("mas", "mas", "0o600")
    assert owner(secrets) == ("root", "mas", "0o750")

    # signing keys: RSA >= 2048 bits, EC P-256, P-384, secp256k1
    keys = base / "config" / "keys"
    assert owner(keys) == ("root", "mas", "0o750")
    loaded = {p.name: serialization.load_pem_private_key(p.read_bytes(), None) for p in keys.iterdir()}
    assert isinstance(loaded["rsa.pem"], rsa.RSAPrivateKey) and loaded["rsa.pem"].key_size >= 2048
    assert isinstance(loaded["ec-p256.pem"].curve, ec.SECP256R1)
    assert isinstance(loaded["ec-p384.pem"].curve, ec.SECP384R1)
    assert isinstance(loaded["ec-k256.pem"].curve, ec.SECP256K1)
    for path in keys.iterdir():
        assert owner(path) == ("mas", "mas", "0o600")

    # wrappers and unit
    for wrapper in ("mas-cli", "register-user"):
        assert owner(base / "bin" / wrapper) == ("root", "root", "0o755")
    unit = (paths["units"] / "matrix-authentication-service.service").read_text()
    assert f"ExecStartPre=/usr/local/bin/mas-cli -c {base}/config/config.yaml config check" in unit
    assert f"ExecStart=/usr/local/bin/mas-cli -c {base}/config/config.yaml server" in unit
    assert "User=mas" in unit

    # a second apply changes nothing and leaves every secret byte-identical
    before = snapshot(base)
    again = salt_minion.apply(full_pillar)
    assert again.returncode == 0, again.output
    assert again.changed == []
    assert snapshot(base) == before


def test_generated_secrets_are_kept(salt_minion, minimal_pillar, paths):
    res = salt_minion.apply(minimal_pillar)
    assert res.returncode == 0, res.output
    secrets = paths["base"] / "config" / "secrets"
    enc = (secrets / "encryption").read_text()
    assert len(enc) == 64 and int(enc, 16) >= 0
    assert len((secrets / "homeserver_secret").read_text()) >= 32
    # nothing from pillar: no password files, no pepper scheme secret
    assert sorted(p.name for p in secrets.iterdir()) == ["admin_client_secret", "encryption", "homeserver_secret"]
    change = res.by_id("mas-secrets-file-mas_secret-present-encryption")["changes"]
    assert change == {"secret": {"old": "absent", "new": "generated"}}
    before = snapshot(paths["base"])
    again = salt_minion.apply(minimal_pillar)
    assert again.returncode == 0 and again.changed == [], again.output
    assert snapshot(paths["base"]) == before


def test_an_interrupted_writes_temporary_files_are_removed_and_keys_staged_outside_keys_dir(
    salt_minion, minimal_pillar, paths
):
    """Issue 21, 6: MAS loads every file of keys_dir as a key. A `.tmp-` file an interrupted write left
    there (an older formula staged keys in keys_dir) or in secrets/ is removed (predicted first); an
    operator's file of another name is left; a key written again is staged in secrets/, not keys/."""
    assert salt_minion.apply(minimal_pillar).returncode == 0
    keys, secrets = paths["base"] / "config" / "keys", paths["base"] / "config" / "secrets"
    stale = {keys / ".tmp-k3ylst_1": b"-----BEGIN PRIVATE KEY-----\nMIIE", secrets / ".tmp-s3cr3t_2": b"0123"}
    for path, data in stale.items():
        path.write_bytes(data)
        path.chmod(0o600)
    not_ours = secrets / ".tmp-operator-notes"
    not_ours.write_text("mine")
    (keys / "ec-k256.pem").unlink()
    predicted = salt_minion.apply(minimal_pillar, test=True)
    assert predicted.returncode == 0, predicted.output
    assert all(path.exists() for path in stale)
    for path in stale:
        state = predicted.by_id(f"mas-secrets-file-file-absent-{path.parent.name}_dir-{path.name}")
        assert state["result"] is None and state["changes"] == {"removed": str(path)}
    res = salt_minion.apply(minimal_pillar)
    assert res.returncode == 0, res.output
    assert not any(path.exists() for path in stale) and not_ours.read_text() == "mine"
    assert sorted(p.name for p in keys.iterdir()) == ["ec-k256.pem", "ec-p256.pem", "ec-p384.pem", "rsa.pem"]
    mapdata = salt_minion.run("mas.mapdata")
    staged = {e["name"]: e["tmp_dir"] for e in mapdata.data["secret_files"]}
    assert staged["key-rsa"] == staged["key-ec-k256"] == str(secrets) and staged["encryption"] is None


def test_test_mode_predicts_and_touches_nothing(salt_minion, full_pillar, paths):
    res = salt_minion.apply(full_pillar, test=True)
    assert res.returncode == 0, res.output
    assert not paths["base"].exists()
    assert not paths["units"].exists()
    secret = res.by_id("mas-secrets-file-mas_secret-present-encryption")
    assert secret["result"] is None
    assert secret["changes"] == {"secret": {"old": "absent", "new": "from pillar"}}
    assert res.by_id("mas-config-file-file-managed")["result"] is None


def test_changed_encryption_secret_is_refused_unless_rotation_allowed(salt_minion, full_pillar, paths):
    assert salt_minion.apply(full_pillar).returncode == 0
    enc_file = paths["base"] / "config" / "secrets" / "encryption"
    before = snapshot(paths["base"])
    other = "f" * 64
    res = salt_minion.apply(deep_update(full_pillar, {"secrets": {"encryption": other}}))
    assert res.returncode != 0
    failed = res.by_id("mas-secrets-file-mas_secret-present-encryption")
    assert failed["result"] is False
    assert "mas:secrets:encryption differs from the encryption secret already in use" in failed["comment"]
    assert "allow_encryption_rotation" in failed["comment"]
    assert other not in res.output and PILLAR_SECRETS["encryption"] not in res.output
    assert snapshot(paths["base"]) == before
    # removing the key from pillar keeps the file
    assert salt_minion.apply(deep_update(full_pillar, {"secrets": {"encryption": None}})).changed == []
    assert enc_file.read_text() == PILLAR_SECRETS["encryption"]
    res = salt_minion.apply(
        deep_update(full_pillar, {"secrets": {"encryption": other, "allow_encryption_rotation": True}})
    )
    assert res.returncode == 0, res.output
    assert enc_file.read_text() == other


BAD_PILLARS = [
    ({"enabled": "yes"}, "mas:enabled: must be true or false"),
    ({"server_name": None}, "mas:server_name: is required"),
    ({"server_name": "example.com:8448"}, "mas:server_name: must be the bare Matrix domain"),
    ({"server_name": "https://example.com"}, "mas:server_name: must be the bare Matrix domain"),
    ({"hostname": "matrix example.com"}, "mas:hostname: 'matrix example.com' is not a DNS name"),
    ({"path_prefix": "auth"}, "mas:path_prefix: must start with '/'"),
    ({"path_prefix": "/auth/"}, "mas:path_prefix: must not end with '/'"),
    ({"secrets": {"encryption": "abc123"}}, "mas:secrets:encryption: must be exactly 64 hexadecimal"),
    ({"secrets": {"homeserver_secret": "short"}}, "mas:secrets:homeserver_secret: must be a string of at least 16"),
    ({"runtime": "podman"}, "mas:runtime: must be one of docker, binary"),
    ({"runtime": "binary", "binary": {"path": "mas-cli"}}, "mas:binary:path: must be an absolute, normalised path"),
    ({"binary": "/usr/local/bin/mas-cli"}, "mas:binary: must now be a mapping, not the path '/usr/local/bin/mas-cli'"),
    ({"base_path": "relative/dir"}, "mas:base_path: must be an absolute, normalised path"),
    ({"user": "Bad User"}, "mas:user: must be a user or group name"),
    ({"email": {"transport": "carrier-pigeon"}}, "mas:email:transport: must be one of blackhole, smtp, sendmail"),
    (
        {"email": {"transport": "smtp", "hostname": None}},
        "mas:email:hostname: is required when mas:email:transport is smtp",
    ),
    (
        {"email": {"transport": "smtp", "hostname": "smtp.example.com", "mode": "ssl"}},
        "mas:email:mode: must be one of plain",
    ),
    ({"database": {"port": "abc"}}, "mas:database:port: must be a port number"),
    ({"database": {"ssl_mode": "always"}}, "mas:database:ssl_mode: must be one of"),
    (
        {"upstream_oauth2_providers": [{"id": "keycloak", "client_id": "x", "token_endpoint_auth_method": "none"}]},
        "mas:upstream_oauth2_providers:0:id: must be a ULID",
    ),
    (
        {
            "upstream_oauth2_providers": [
                {"id": "01HFVBY12TMNTYTBV8W921M5FA", "client_id": "x", "token_endpoint_auth_method": "magic"}
            ]
        },
        "mas:upstream_oauth2_providers:0:token_endpoint_auth_method: must be one of",
    ),
    (
        {"account": {"password_registration_enabled": "sure"}},
        "mas:account:password_registration_enabled: must be true or false",
    ),
    ({"account": {"no_such_toggle": True}}, "mas:account:no_such_toggle: is not a MAS account toggle"),
    ({"synapse": {"endpoint": "localhost:8008"}}, "mas:synapse:endpoint: must be an http(s) URL"),
    ({"proxy": {"type": "apache"}}, "mas:proxy:type: must be one of nginx, traefik, none"),
    ({"config": ["not", "a", "mapping"]}, "mas:config: must be a mapping"),
    ({"runtime": "docker", "image": "img$(touch /tmp/x)"}, "mas:image: must be a container image reference"),
    (
        {"runtime": "docker", "service": {"docker": {"network": "host$(id)"}}},
        "mas:service:docker:network: must be a docker network name",
    ),
    (
        {"runtime": "docker", "service": {"docker": {"extra_args": ["$(touch /tmp/x)"]}}},
        "mas:service:docker:extra_args: must be a list of single docker arguments",
    ),
    (
        {"runtime": "docker", "service": {"docker": {"command": "/usr/bin/docker\nExecStartPost=/bin/sh"}}},
        "mas:service:docker:command: must be the absolute path of the program",
    ),
    ({"base_path": "/srv/mas$(id)"}, "mas:base_path: must be an absolute, normalised path"),
    ({"service": {"restart": "sometimes"}}, "mas:service:restart: must be one of no, always"),
    ({"synapse": {"dropin_name": "mas.conf"}}, "mas:synapse:dropin_name: must be a file name ending in .yaml"),
    ({"synapse": {"config_dir": "conf.d"}}, "mas:synapse:config_dir: must be an absolute, normalised path"),
    ({"path_prefix": "/"}, "mas:path_prefix: '/' needs MAS on its own host name"),
    (
        {"proxy": {"nginx": {"mas_upstream": "http://127.0.0.1:8080/auth"}}},
        "mas:proxy:nginx:mas_upstream: must be http(s)://HOST[:PORT]",
    ),
    (
        {"proxy": {"type": "traefik", "traefik": {"entrypoint": "web secure"}}},
        "mas:proxy:traefik:entrypoint: must be a Traefik name",
    ),
]


@pytest.mark.parametrize(
    "bad,message", BAD_PILLARS, ids=[m.split(":")[1] + "-" + str(i) for i, (_, m) in enumerate(BAD_PILLARS)]
)
def test_bad_pillar_fails_naming_the_key_and_writes_nothing(salt_minion, full_pillar, paths, bad, message):
    res = salt_minion.apply(deep_update(full_pillar, bad))
    assert res.returncode != 0
    assert message in res.output, res.output
    assert "nothing was changed" in res.output
    # the pillar's error as the formula's renderer raises it: no call chain through Salt's loader, no traceback
    assert "salt/loader/lazy.py" not in res.output, res.output
    assert "Traceback" not in res.output, res.output
    assert not paths["base"].exists()
    assert not paths["units"].exists()
    for value in PILLAR_SECRETS.values():
        assert value not in res.output


def test_bad_pillar_leaves_an_existing_deployment_untouched(salt_minion, full_pillar, paths):
    assert salt_minion.apply(full_pillar).returncode == 0
    before = snapshot(paths["base"]), snapshot(paths["units"])
    res = salt_minion.apply(deep_update(full_pillar, {"path_prefix": "/auth/", "hostname": "-bad-"}))
    assert res.returncode != 0
    assert "mas:path_prefix" in res.output and "mas:hostname" in res.output
    assert (snapshot(paths["base"]), snapshot(paths["units"])) == before


def test_no_secret_in_debug_log_or_show_sls(salt_minion, full_pillar, paths):
    res = salt_minion.apply(full_pillar, log_level="debug")
    assert res.returncode == 0, res.output
    generated = [
        (paths["base"] / "config/keys" / name).read_text().splitlines()[1] for name in ("rsa.pem", "ec-p256.pem")
    ]
    log_text = (salt_minion.workdir / "minion.log").read_text() if (salt_minion.workdir / "minion.log").exists() else ""
    for text in (res.output, log_text):
        for value in list(PILLAR_SECRETS.values()) + generated:
            assert value not in text
    show = salt_minion.run("state.show_sls", "mas")
    assert show.returncode == 0, show.output
    for value in PILLAR_SECRETS.values():
        assert value not in show.output
    # and with generated secrets (no pillar values)
    minimal = deep_update(full_pillar, {"secrets": {"encryption": None, "homeserver_secret": None}})
    shutil.rmtree(paths["base"])
    res = salt_minion.apply(minimal, log_level="debug")
    assert res.returncode == 0, res.output
    for name in ("encryption", "homeserver_secret"):
        assert (paths["base"] / "config/secrets" / name).read_text() not in res.output


def test_docker_runtime_unit_and_wrapper(salt_minion, minimal_pillar, paths):
    pillar = deep_update(
        minimal_pillar,
        {
            "runtime": "docker",
            "service": {"docker": {"network": "matrix", "extra_args": ["--publish=127.0.0.1:8080:8080"]}},
        },
    )
    res = salt_minion.apply(pillar)
    assert res.returncode == 0, res.output
    unit = (paths["units"] / "matrix-authentication-service.service").read_text()
    wrapper = (paths["base"] / "bin" / "mas-cli").read_text()
    assert f"ExecStartPre={paths['base']}/bin/mas-cli config check" in unit
    assert f"ExecStart={paths['base']}/bin/mas-cli server" in unit
    assert "ExecStop=/usr/bin/docker stop matrix-authentication-service" in unit
    assert "exec /usr/bin/docker run --rm" in wrapper
    for flag in (
        "--read-only",
        "--cap-drop=ALL",
        "--network=matrix",
        "--publish=127.0.0.1:8080:8080",
        f"dst={paths['base']}/config,readonly",
        "ghcr.io/element-hq/matrix-authentication-service:1.23.0",
    ):
        assert flag in wrapper
    assert '--user="$(id -u mas):$(getent group mas | cut -d: -f3)"' in wrapper
    assert subprocess.run(["sh", "-n", str(paths["base"] / "bin" / "mas-cli")], check=False).returncode == 0


def test_docker_wrapper_mounts_the_host_files_mas_reads_outside_config(salt_minion, minimal_pillar, paths):
    """Issue 21, 7: a *_file of mas:config and a socket-directory database host outside
    <base_path>/config are mounted read-only at the same path (MAS reads them in the container);
    one it cannot mount is refused naming the key, before anything is written."""
    pillar = deep_update(
        minimal_pillar,
        {
            "runtime": "docker",
            "database": {"host": "/var/run/postgresql"},
            "config": {"database": {"ssl_ca_file": "/etc/ssl/pg-ca.pem"}},
        },
    )
    res = salt_minion.apply(pillar)
    assert res.returncode == 0, res.output
    wrapper = (paths["base"] / "bin" / "mas-cli").read_text()
    for path in (f"{paths['base']}/config", "/etc/ssl/pg-ca.pem", "/var/run/postgresql"):
        assert f"--mount=type=bind,src={path},dst={path},readonly" in wrapper
    assert subprocess.run(["sh", "-n", str(paths["base"] / "bin" / "mas-cli")], check=False).returncode == 0
    shutil.rmtree(paths["base"])
    refused = salt_minion.apply(deep_update(pillar, {"config": {"database": {"ssl_ca_file": "pg-ca.pem"}}}))
    assert refused.returncode != 0
    assert "mas:config:database:ssl_ca_file: with mas:runtime docker MAS reads it in the container" in refused.output
    assert not paths["base"].exists()


@pytest.mark.parametrize("runtime", ["binary", "docker"])
def test_unit_passes_systemd_analyze_verify(salt_minion, minimal_pillar, paths, runtime, tmp_path):
    tool = require_binary("systemd-analyze")
    # docker itself is not installed here: any existing executable stands in
    pillar = deep_update(
        minimal_pillar,
        {
            "runtime": runtime,
            "binary": {"path": "/bin/true", "share_dir": "/usr/share"},
            "service": {"docker": {"command": "/bin/true"}},
        },
    )
    assert salt_minion.apply(pillar).returncode == 0
    unit = paths["units"] / "matrix-authentication-service.service"
    proc = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, check=False)
    if "Failed to" in proc.stderr and "bus" in proc.stderr.lower():
        unavailable(f"systemd-analyze verify cannot reach a system bus here: {proc.stderr.strip()}")
    # units this machine does not have (docker.service) are not the unit's fault
    absent_here = ("network-online.target", "Unit docker.service not found")
    problems = [
        line for line in proc.stderr.splitlines() if unit.name in line and not any(text in line for text in absent_here)
    ]
    assert proc.returncode == 0 or not problems, proc.stderr


def test_disabled_runs_clean_and_keeps_secrets_unless_purge(salt_minion, minimal_pillar, paths):
    """Issue 21, 8: mas:enabled false removes config, wrappers and unit and keeps secrets, keys and
    data; mas:clean:purge then removes what the formula made (predicted first, touching nothing) and
    only that: an operator's files in <base_path>/config/, its secrets directory and <base_path>
    itself stay, named with the reason, and so do the directories holding them."""
    binary = {"source": RELEASE_URL, "source_hash": RELEASE_HASH, "path": None, "share_dir": None}
    pillar = deep_update(minimal_pillar, {"binary": binary})
    base = paths["base"]
    release = base / "dist" / f"mas-cli-{RELEASE_HASH[7:23]}"
    release.mkdir(parents=True)  # as mas.install.binary extracted it (no download here)
    (release / "mas-cli").write_text("#!/bin/sh\n")
    assert salt_minion.apply(pillar).returncode == 0
    operator = {
        base / "config" / "operator.yaml": "# the operator's own\n",
        base / "config" / "secrets" / "smtp-relay.secret": "operator-secret",
        base / "notes.txt": "another service's notes\n",
        base / "other-service" / "state.db": "theirs",
        base / "data" / "written-by-mas": "MAS's",
    }
    for path, text in operator.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    # interrupted writes (a disabled run does not apply mas.secrets, which would remove them)
    (base / "config" / "keys" / ".tmp-a1b2c3d4").write_text("-----BEGIN PRIVATE KEY-----\n")
    (base / "formula" / ".tmp-e5f6g7h8").write_text("{}")
    keys = snapshot(base / "config" / "keys")

    res = salt_minion.apply(deep_update(pillar, {"enabled": False}))
    assert res.returncode == 0, res.output
    assert not (base / "config" / "config.yaml").exists()
    assert not (base / "bin" / "mas-cli").exists()
    assert not (paths["units"] / "matrix-authentication-service.service").exists()
    assert snapshot(base / "config" / "keys") == keys
    assert (base / "config" / "secrets" / "encryption").exists() and release.is_dir()

    purge = deep_update(pillar, {"enabled": False, "clean": {"purge": True}})
    before = snapshot(base)
    predicted = salt_minion.apply(purge, test=True)
    assert predicted.returncode == 0, predicted.output
    assert snapshot(base) == before
    state = predicted.by_id("mas-install-clean-mas_clean-purged")
    assert state["result"] is None
    kept = state["changes"]["new"]["kept"]
    assert kept[str(base / "config" / "operator.yaml")].startswith("not written by the formula")
    assert kept[str(base / "other-service")] == "a directory the formula did not make"
    assert kept[str(base / "config")] == "not empty: it holds what is kept"
    old = set(state["changes"]["old"])
    for path in (
        base / "config" / "secrets" / "encryption",
        base / "config" / "keys" / "rsa.pem",
        base / "config" / "keys",
        base / "formula" / "secrets.json",
        base / "formula" / ".tmp-e5f6g7h8",
        base / "config" / "keys" / ".tmp-a1b2c3d4",
        release,
        base / "dist",
        base / "bin",
    ):
        assert str(path) in old
    assert not any(str(path) in old for path in operator)

    res = salt_minion.apply(purge)
    assert res.returncode == 0, res.output
    state = res.by_id("mas-install-clean-mas_clean-purged")
    assert set(state["changes"]["old"]) == old and state["changes"]["new"]["kept"] == kept
    assert "smtp-relay.secret: not written by the formula" in state["comment"]
    for path, text in operator.items():
        assert path.read_text() == text
    left = sorted(str(p.relative_to(base)) for p in base.rglob("*"))
    assert left == [
        "config",
        "config/operator.yaml",
        "config/secrets",
        "config/secrets/smtp-relay.secret",
        "data",
        "data/written-by-mas",
        "notes.txt",
        "other-service",
        "other-service/state.db",
    ]
    again = salt_minion.apply(purge)
    assert again.returncode == 0 and again.changed == [], again.output
    assert "Nothing the formula made is left" in again.by_id("mas-install-clean-mas_clean-purged")["comment"]
    # with nothing of anyone else's left, the whole tree goes
    for path in operator:
        path.unlink()
    (base / "other-service").rmdir()
    assert salt_minion.apply(purge).returncode == 0
    assert not base.exists()


def test_disable_or_purge_refused_while_mas_database_unreadable_unless_forced(salt_minion, minimal_pillar, paths):
    """README, uninstall: while Synapse delegates to MAS, disabling (or purging) is refused when the
    formula cannot read MAS's database (the rollback guard), and nothing is removed; with
    mas:syn2mas:force_rollback: true it goes ahead."""
    pillar = deep_update(minimal_pillar, {"database": {"host": "127.0.0.1", "port": free_port()}})
    assert salt_minion.apply(pillar).returncode == 0
    dropin = paths["synapse_dir"] / "matrix-authentication-service.yaml"
    assert dropin.exists()
    before = snapshot(paths["base"])
    refused = salt_minion.apply(
        deep_update(pillar, {"enabled": False, "clean": {"purge": True}, "syn2mas": {"force_rollback": False}})
    )
    assert refused.returncode != 0
    guard = refused.by_id("mas-synapse-clean-mas_syn2mas-safe_to_roll_back")
    assert guard["result"] is False and "mas:enabled is false" in guard["comment"]
    assert "is unreachable" in guard["comment"] and "mas:syn2mas:force_rollback: true" in guard["comment"]
    assert refused.by_id("mas-install-clean-mas_clean-purged")["result"] is False  # its requisite failed
    assert dropin.exists() and snapshot(paths["base"]) == before
    forced = salt_minion.apply(deep_update(pillar, {"enabled": False, "clean": {"purge": True}}))
    assert forced.returncode == 0, forced.output
    assert forced.by_id("mas-synapse-clean-mas_syn2mas-safe_to_roll_back")["comment"].startswith("rollback forced")
    assert not dropin.exists() and not paths["base"].exists()


def test_path_prefix_root_and_custom_hostname(salt_minion, minimal_pillar, paths, mas_config_schema):
    res = salt_minion.apply(deep_update(minimal_pillar, {"hostname": "auth.example.com", "path_prefix": "/"}))
    assert res.returncode == 0, res.output
    config = yaml.safe_load((paths["base"] / "config" / "config.yaml").read_text())
    jsonschema.validate(config, mas_config_schema)
    assert config["http"]["public_base"] == "https://auth.example.com/"
    assert "prefix" not in config["http"]["listeners"][0]


def test_trusted_proxies_empty_list_is_written_unset_is_left_out(salt_minion, minimal_pillar, paths):
    """Issue 21, 7: `[]` trusts no proxy and reaches config.yaml; unset leaves MAS its defaults."""
    config_file = paths["base"] / "config" / "config.yaml"
    assert salt_minion.apply(minimal_pillar).returncode == 0
    assert "trusted_proxies" not in yaml.safe_load(config_file.read_text())["http"]
    res = salt_minion.apply(deep_update(minimal_pillar, {"http": {"trusted_proxies": []}}))
    assert res.returncode == 0, res.output
    assert yaml.safe_load(config_file.read_text())["http"]["trusted_proxies"] == []


def test_pepper_read_from_synapse_config(salt_minion, minimal_pillar, paths):
    paths["synapse_cfg"].parent.mkdir(parents=True)
    paths["synapse_cfg"].write_text(
        yaml.safe_dump({"server_name": "example.com", "password_config": {"pepper": "From-Synapse-Pepper"}})
    )
    res = salt_minion.apply(minimal_pillar)
    assert res.returncode == 0, res.output
    assert (paths["base"] / "config/secrets/synapse_pepper").read_bytes() == b"From-Synapse-Pepper"
    assert "From-Synapse-Pepper" not in res.output
    config = yaml.safe_load((paths["base"] / "config" / "config.yaml").read_text())
    assert config["passwords"]["schemes"][0]["secret_file"].endswith("secrets/synapse_pepper")


def test_pillar_example_applies_twice_with_zero_changes(salt_minion, tmp_path):
    """pillar.example, redirected under tmp (paths only), is a valid pillar."""
    example = yaml.safe_load((REPO_ROOT / "pillar.example").read_text())["mas"]
    demo = tmp_path / "demo-root"
    pillar = deep_update(example, demo_overrides(demo))
    first = salt_minion.apply(pillar)
    assert first.returncode == 0, first.output
    second = salt_minion.apply(pillar)
    assert second.returncode == 0, second.output
    assert second.changed == []


def demo_overrides(root):
    """The same redirections as the README demo (bin/demo)."""
    from mas_demo import overrides  # pylint: disable=import-outside-toplevel

    return overrides(str(root))


def _outcome(res, state_id):
    state = res.by_id(state_id)
    return state["result"], state["comment"]


def test_restarts_fire_only_on_the_changes_that_need_them(salt_minion, minimal_pillar):
    """Applied for real: MAS's service restarts when its config, unit or a
    secret changed, Synapse when its drop-in or secret copy changed, the proxy
    when one of its files changed -- and none of them on another change.

    systemd is not PID 1 here: `service.running` answers "Running in OFFLINE
    mode. Nothing to do" unless its `watch` fires (then the restart fails:
    "Failed to start the service"), and a restart (Synapse's, the proxy's
    reload) that fires fails (no such service here) instead of "State was not
    run because none of the onchanges reqs changed"."""
    pillar = deep_update(
        minimal_pillar,
        {
            "service": {"manage": True, "name": "mas-restart-test"},
            "synapse": {"restart": True, "service": "synapse-restart-test"},
            "proxy": {"type": "traefik", "reload": True, "traefik": {"service": "traefik-restart-test"}},
        },
    )
    salt_minion.apply(deep_update(pillar, {"service": {"manage": False}, "synapse": {"restart": False}}))
    salt_minion.apply(pillar)  # the first start (and restarts) fail here: nothing runs these services

    service, synapse, proxy = (
        "mas-service-running-service-running",
        "mas-synapse-restart-mas_synapse-restarted",
        "mas-proxy-reload-module-run-reload",
    )
    not_run = "State was not run because none of the onchanges reqs changed"

    def apply(change):
        # cumulative: each step keeps the changes before it
        nonlocal pillar
        pillar = deep_update(pillar, change)
        res = salt_minion.apply(pillar)
        return {sid: _outcome(res, sid) for sid in (service, synapse, proxy)}, res.changed

    unchanged, changed = apply({})
    assert changed == [], changed
    assert unchanged[service] == (True, "Running in OFFLINE mode. Nothing to do")
    assert unchanged[synapse] == (True, not_run) and unchanged[proxy] == (True, not_run)

    # MAS's config: MAS restarts, Synapse and the proxy do not
    fired, changed = apply({"config": {"branding": {"service_name": "Restart test"}}})
    assert changed == ["mas-config-file-file-managed", service], changed
    assert fired[service][0] is False and "Nothing to do" not in fired[service][1]
    assert fired[synapse] == (True, not_run) and fired[proxy] == (True, not_run)

    # the drop-in (MAS as Synapse sees it): Synapse restarts, MAS does not
    fired, changed = apply({"synapse": {"mas_endpoint": "http://127.0.0.1:8080/auth/"}})
    assert changed == ["mas-synapse-file-mas_synapse-dropin"], changed
    assert fired[synapse][0] is False and fired[synapse][1] != not_run
    assert fired[service] == (True, "Running in OFFLINE mode. Nothing to do")

    # a proxy route only: the proxy reloads, neither MAS nor Synapse restart
    fired, changed = apply({"proxy": {"traefik": {"entrypoint": "web"}}})
    assert changed == ["mas-proxy-file-file-managed-config"], changed
    assert fired[proxy][0] is False and fired[proxy][1] != not_run
    assert fired[service] == (True, "Running in OFFLINE mode. Nothing to do")
    assert fired[synapse] == (True, not_run)

    # the shared secret: MAS and Synapse (its copy) restart, the proxy does not
    fired, changed = apply({"secrets": {"homeserver_secret": "Rotated-Shared-Secret-0042"}})
    assert "mas-secrets-file-mas_secret-present-homeserver_secret" in changed
    assert "mas-synapse-file-mas_secret-present" in changed
    assert fired[service][0] is False and "Nothing to do" not in fired[service][1]
    assert fired[synapse][0] is False and fired[synapse][1] != not_run
    assert fired[proxy] == (True, not_run)


def test_an_existing_account_is_left_as_it_is(salt_minion, minimal_pillar):
    """Home, shell and groups of an account that already exists are the
    operator's: the formula must not rewrite them (here: `nobody`)."""
    before = pwd.getpwnam("nobody")
    res = salt_minion.apply(deep_update(minimal_pillar, {"user": "nobody", "group": "nogroup"}))
    assert res.returncode == 0, res.output
    assert res.by_id("mas-install-account-user-present")["changes"] == {}
    assert pwd.getpwnam("nobody") == before


def test_syn2mas_database_uri_stays_out_of_the_map(salt_minion, full_pillar):
    """A postgresql:// URI may carry a password: it is read on the minion,
    never rendered into an SLS (state.show_sls)."""
    uri = "postgresql://synapse:Uri-Password-Secret-42@db.example.com/synapse"
    salt_minion.set_pillar({"mas": deep_update(full_pillar, {"syn2mas": {"synapse_database_uri": uri}})})
    for sls in ("mas", "mas.syn2mas"):
        show = salt_minion.run("state.show_sls", sls)
        assert show.returncode == 0, show.output
        assert "Uri-Password-Secret-42" not in show.output
    opts = salt_minion.run("mas_syn2mas.options")
    assert opts.data["synapse_database_uri"] == uri


def test_clean_leaves_files_it_did_not_write(salt_minion, minimal_pillar, paths):
    """mas:enabled false on a host where the playbook deployed MAS at the same
    paths: the playbook's config, wrappers and unit are not removed."""
    foreign = {
        paths["base"] / "config" / "config.yaml": "# written by the playbook\nhttp: {}\n",
        paths["base"] / "bin" / "mas-cli": "#!/bin/sh\n# playbook wrapper\n",
        paths["units"] / "matrix-authentication-service.service": "[Unit]\nDescription=playbook's MAS\n",
    }
    for path, text in foreign.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    res = salt_minion.apply(deep_update(minimal_pillar, {"enabled": False}))
    assert res.returncode == 0, res.output
    for path, text in foreign.items():
        assert path.read_text() == text


def test_docker_and_traefik_label_the_server_container(salt_minion, minimal_pillar, paths):
    """Issue 4: with the docker runtime, Traefik's routers also ride on the
    server container as labels (docker provider), through --label-file."""
    res = salt_minion.apply(deep_update(minimal_pillar, {"runtime": "docker", "proxy": {"type": "traefik"}}))
    assert res.returncode == 0, res.output
    labels_file = paths["base"] / "config" / "docker.labels"
    labels = dict(line.split("=", 1) for line in labels_file.read_text().splitlines() if not line.startswith("#"))
    assert labels["traefik.enable"] == "true"
    compat = "traefik.http.routers.matrix-authentication-service-compat"
    assert labels[f"{compat}.rule"].startswith("Host(`matrix.example.com`) && PathRegexp(")
    assert labels["traefik.http.middlewares.matrix-authentication-service-compat-prefix.addPrefix.prefix"] == "/auth"
    wrapper = (paths["base"] / "bin" / "mas-cli").read_text()
    assert f'labels="--label-file="{labels_file}' in wrapper
    assert subprocess.run(["sh", "-n", str(paths["base"] / "bin" / "mas-cli")], check=False).returncode == 0
    # back to nginx: the labels go away
    assert salt_minion.apply(deep_update(minimal_pillar, {"runtime": "docker"})).returncode == 0
    assert not labels_file.exists()


def test_map_jinja_gives_an_operators_own_sls_the_map(salt_minion, minimal_pillar, paths):
    # the formula's SLS are Python and call mas.mapdata; map.jinja stays for Jinja SLS of the operator's own
    salt_minion.set_pillar({"mas": minimal_pillar})
    template = '{%- from "mas/map.jinja" import mapdata as mas with context %}{{ mas.paths.config_file | json }}'
    res = salt_minion.run("slsutil.renderer", f"string={template}", "default_renderer=jinja")
    assert res.returncode == 0, res.output
    assert json.loads(res.data) == str(paths["base"] / "config" / "config.yaml")
