"""``mas_syn2mas.preflight``: native checks against a real Synapse database, before MAS runs.

Real Synapse 1.163 on PostgreSQL with an admin, users with emails, a phone
number, a deactivated user and an OIDC-linked user of provider
``oidc-keycloak`` (``syn2mas_world.py``). Without a mapping for that provider
the preflight and the state fail naming it and its user count; with
``synapse_idp_id`` (and, separately, with the seed's
``--upstreamProviderMapping``) they pass, the phone number a warning.
"""

import pytest
import yaml

from harness.util import free_port
from pillars import PILLAR_SECRETS, deep_update, wired_pillar
from saltrun import REPO_ROOT, SaltMinion
from syn2mas_world import PROVIDER_ID, SYNAPSE_IDP_ID, deploy, world_fixture

pytestmark = pytest.mark.integration

MSISDN_WARNING = (
    "1 non-email 3PIDs (msisdn: 1) are copied to MAS's user_unsupported_third_party_ids: MAS cannot use them "
    "to sign in or to reset a password"
)
UNMAPPED = "Unknown upstream provider oidc-keycloak: 1 Synapse users are linked to it and no MAS provider maps it"


world = world_fixture("syn2mas-preflight")


def provider(**extra):
    return {
        "id": PROVIDER_ID,
        "issuer": "https://keycloak.invalid/realms/matrix",
        "client_id": "mas",
        "client_secret": PILLAR_SECRETS["client_secret"],
        "token_endpoint_auth_method": "client_secret_post",
        "scope": "openid",
        **extra,
    }


@pytest.fixture
def deployment(world, pg, salt_extmods, tmp_path, request):
    world.service.start()
    dbname = f"mas_pre_{request.node.name[5:30]}".replace("-", "_")
    dep = deploy(world, pg, salt_extmods, tmp_path, dbname, upstream_oauth2_providers=[provider()])
    yield dep
    dep.assert_no_secret()
    pg.drop_database(dbname)


def test_unmapped_provider_fails_naming_it_and_its_users(deployment):
    res = deployment.call("mas_syn2mas.preflight")
    assert res.returncode == 1, res.output
    found = res.data
    assert found["result"] is False
    assert [e for e in found["errors"] if e.startswith(UNMAPPED)] == [
        f"{UNMAPPED}. Add `synapse_idp_id: oidc-keycloak` to its entry in mas:upstream_oauth2_providers (or the "
        "seed's `--upstreamProviderMapping oidc-keycloak:<MAS provider id>` in mas:syn2mas:extra_arguments)"
    ]
    assert found["warnings"] == [MSISDN_WARNING]
    counts = found["counts"]
    assert {k: counts["users"][k] for k in ("local", "admins", "deactivated", "with_password", "bcrypt_hashes")} == {
        "local": 5,
        "admins": 1,
        "deactivated": 1,
        "with_password": 4,
        "bcrypt_hashes": 4,
    }
    assert counts["threepids"] == {"email": 2, "non_email": 1, "by_medium": {"email": 2, "msisdn": 1}}
    assert counts["external_ids"] == {SYNAPSE_IDP_ID: 1}
    assert counts["devices"] >= 4 and counts["access_tokens"] >= 4
    # the state: refused before anything stops, naming the provider and its users
    res, ret = deployment.migrated()
    assert res.returncode != 0 and ret["result"] is False and UNMAPPED in ret["comment"]
    assert "preflight failed" in ret["comment"] and deployment.marker() is None


def test_synapse_idp_id_passes_with_the_phone_number_a_warning(deployment):
    mapped = {"upstream_oauth2_providers": [provider(synapse_idp_id="oidc-keycloak")]}
    found = deployment.call("mas_syn2mas.preflight", **mapped)
    assert found.returncode == 0 and found.data["result"] is True, found.output
    assert found.data["errors"] == [] and found.data["warnings"] == [MSISDN_WARNING]
    # check = preflight + upstream's check in one report; the warnings need accepting
    assert deployment.state("mas", **mapped).returncode == 0  # MAS's config maps the provider too
    check = deployment.call("mas_syn2mas.check", "accept_warnings=True", **mapped)
    assert check.returncode == 0 and check.data["result"] is True and check.data["exit_code"] == 11, check.output
    assert check.data["warnings"][0] == MSISDN_WARNING
    assert any("non-email 3PIDs (probably phone numbers)" in w for w in check.data["warnings"][1:])
    assert check.data["counts"]["users"]["local"] == 5
    refused = deployment.call("mas_syn2mas.check", **mapped)
    assert refused.returncode == 1 and "accept_warnings=True" in refused.data["errors"][-1]


def test_seed_upstream_provider_mapping_passes_with_a_deprecation(deployment):
    seed = {
        "syn2mas": {"extra_arguments": [f"--upstreamProviderMapping oidc-keycloak:{PROVIDER_ID}"], "dry_run": True},
    }
    res = deployment.state("mas", **seed)
    assert res.returncode == 0, res.output
    config = yaml.safe_load((deployment.root / "srv" / "config" / "config.yaml").read_text())
    assert config["upstream_oauth2"]["providers"][0]["synapse_idp_id"] == "oidc-keycloak"
    found = deployment.call("mas_syn2mas.preflight", **seed)
    assert found.data["result"] is True and found.data["warnings"] == [MSISDN_WARNING]
    assert "is deprecated: the formula set synapse_idp_id: oidc-keycloak" in found.data["notes"][0]
    res, ret = deployment.migrated(syn2mas=dict(seed["syn2mas"], accept_warnings=True))
    assert ret["result"] is True and "phase unchanged" in ret["comment"], ret["comment"]
    assert "--upstreamProviderMapping oidc-keycloak" in ret["comment"] and "deprecated" in ret["comment"]
    bad = deployment.call("mas_syn2mas.preflight", syn2mas={"extra_arguments": ["--dryRun"]})
    assert bad.returncode != 0 and "'--dryRun' is not accepted" in bad.output


def test_each_error_says_what_to_change(deployment, world, pg, tmp_path):
    guests = tmp_path / "guests.yaml"
    guests.write_text("allow_guest_access: true\n")
    files = [str(world.server.config_path), str(world.fragment), str(guests)]
    wrong = {"synapse": {"pepper": "not-the-synapse-pepper"}}
    assert deployment.state("mas", **wrong).returncode == 0  # MAS's bcrypt secret file now holds another pepper
    found = deployment.call(
        "mas_syn2mas.preflight",
        server_name="other.example",
        database={"port": free_port()},
        syn2mas={"synapse_config_files": files},
        **wrong,
    ).data
    errors = "\n".join(found["errors"])
    assert "Synapse's server_name is 'example.com'" in errors and "set mas:server_name: example.com" in errors
    assert f"guest access is on (allow_guest_access in {guests})" in errors
    assert "differs from the secret of MAS's bcrypt scheme" in errors and "mas:synapse:pepper" in errors
    assert "MAS's database" in errors and "is unreachable" in errors
    assert "not-the-synapse-pepper" not in str(found)


def test_needs_no_mas_binary_and_refuses_sqlite_with_upstreams_reason(synapse_factory, pg, salt_extmods, tmp_path):
    server = synapse_factory(database="sqlite")  # never started: only its config is read
    minion = SaltMinion(tmp_path, REPO_ROOT, extmods=salt_extmods)
    pillar = deep_update(wired_pillar(tmp_path, pg, "mas_never_created", server, free_port(), free_port()), {})
    minion.set_pillar({"mas": pillar})
    found = minion.run("mas_syn2mas.preflight")
    assert found.returncode == 1 and not (tmp_path / "mas" / "bin" / "mas-cli").exists()
    errors = "\n".join(found.data["errors"])
    assert (
        "Synapse database configuration is invalid, cannot migrate: syn2mas does not support the sqlite3 "
        "database driver" in errors
    )
    assert 'database "mas_never_created" does not exist' in errors and "mas-cli is missing" not in errors
