"""Unit tests of ``_modules/mas_synapse.py`` and ``_states/mas_synapse.py``: Synapse's config, the conflict rules, the drop-in.

The conflict rules run against real Synapse config files under tmp; only
``file.managed`` / ``file.absent`` (``__states__``) are stand-ins.
"""

from unittest.mock import MagicMock

import pytest
import yaml
from salt.exceptions import SaltInvocationError

from formula_modules import MODULES, STATES, dunders, mapdata

mas_mod = MODULES["mas"]
mas_synapse = MODULES["mas_synapse"]
mas_synapse_state = STATES["mas_synapse"]

SECRET_PATH = "/srv/mas/synapse/homeserver_secret"
ENDPOINT = "http://localhost:8080/auth/"


@pytest.fixture
def file_states():
    """Mocks of ``file.managed`` / ``file.absent`` returning a plain success."""

    def result(name, **_kwargs):
        return {"name": name, "result": True, "changes": {"diff": "New file"}, "comment": "File updated"}

    return {"file.managed": MagicMock(side_effect=result), "file.absent": MagicMock(side_effect=result)}


@pytest.fixture
def configure_loader_modules(pillar, file_states):
    return dunders(pillar, states=file_states)


@pytest.fixture
def synapse_dir(tmp_path):
    """A Synapse config tree: homeserver.yaml (plain, accepted) and conf.d/."""
    root = tmp_path / "synapse"
    (root / "conf.d").mkdir(parents=True)
    write(
        root / "homeserver.yaml",
        {"server_name": "example.com", "report_stats": False, "password_config": {"pepper": "x"}},
    )
    return root


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def check(synapse_dir, migrating=False, extra_config=None, files=None):
    """Run the conflict check on the tree (the drop-in is conf.d/matrix-authentication-service.yaml)."""
    return mas_synapse.conflicts(
        files or [str(synapse_dir / "homeserver.yaml")],
        str(synapse_dir / "conf.d"),
        dropin=str(synapse_dir / "conf.d" / "matrix-authentication-service.yaml"),
        migrating=migrating,
        extra_config=extra_config,
    )


# Each conflict Synapse refuses next to MAS: (setting, key named by the formula).
CONFLICTS = [
    ({"enable_registration": True}, "enable_registration"),
    ({"enable_registration": "yes"}, "enable_registration"),
    ({"disable_registration": False}, "disable_registration"),
    ({"enable_registration_captcha": True}, "enable_registration_captcha"),
    ({"user_consent": {"version": "1.0", "template_dir": "/x"}}, "user_consent"),
    ({"oidc_providers": [{"idp_id": "kc"}]}, "oidc_providers"),
    ({"oidc_config": {"enabled": True}}, "oidc_config"),
    ({"saml2_config": {"sp_config": {"metadata": {}}}}, "saml2_config"),
    ({"cas_config": {"server_url": "https://cas.example.com"}}, "cas_config"),
    ({"jwt_config": {"enabled": True, "secret": "s", "algorithm": "HS256"}}, "jwt_config"),
    ({"password_providers": [{"module": "rest_auth_provider.RestAuthProvider"}]}, "password_providers"),
    ({"ldap_config": {"enabled": True}}, "ldap_config"),
    ({"modules": [{"module": "shared_secret_authenticator.SharedSecretAuthProvider"}]}, "modules"),
    ({"password_config": {"enabled": True}}, "password_config.enabled"),
    ({"password_config": {"enabled": "only_for_reauth"}}, "password_config.enabled"),
    ({"login_via_existing_session": {"enabled": True}}, "login_via_existing_session.enabled"),
    ({"enable_3pid_changes": True}, "enable_3pid_changes"),
    ({"refresh_token_lifetime": "1h"}, "refresh_token_lifetime"),
    ({"nonrefreshable_access_token_lifetime": 3600000}, "nonrefreshable_access_token_lifetime"),
    ({"session_lifetime": "24h"}, "session_lifetime"),
    ({"experimental_features": {"msc3861": {"enabled": True}}}, "experimental_features.msc3861"),
    (
        {"experimental_features": {"msc4108_delegation_endpoint": "https://x.example.com/"}},
        "experimental_features.msc4108_delegation_endpoint",
    ),
    ({"matrix_authentication_service": {"enabled": True, "secret": "s"}}, "matrix_authentication_service"),
]

# Settings Synapse accepts next to MAS: the formula must not refuse them.
ACCEPTED = [
    {"enable_registration": False},
    {"enable_registration": "false"},
    {"disable_registration": True},
    {"user_consent": None},
    {"oidc_providers": []},
    {"oidc_config": {"enabled": False}},
    {"saml2_config": {"enabled": True}},
    {"saml2_config": {"enabled": False, "sp_config": {}}},
    {"cas_config": {"enabled": False, "server_url": "https://cas.example.com"}},
    {"jwt_config": {"enabled": False, "secret": "s", "algorithm": "HS256"}},
    {"password_providers": []},
    {"password_config": {"enabled": False, "localdb_enabled": False, "pepper": "x"}},
    {"session_lifetime": 0},
    {"refresh_token_lifetime": "0s"},
    {"modules": [{"module": "my_spam_checker.Checker"}]},
    {"experimental_features": {"msc4108_enabled": True, "msc4388_mode": "open", "msc3861": {}}},
    {"registration_shared_secret": "left unused", "public_baseurl": "https://matrix.example.com/"},
]


@pytest.mark.parametrize(("setting", "key"), CONFLICTS, ids=[key for _, key in CONFLICTS])
def test_each_conflict_is_named_with_its_file(synapse_dir, setting, key):
    path = write(synapse_dir / "conf.d" / "10-extra.yaml", setting)
    found = check(synapse_dir)
    assert [(c["key"], c["file"]) for c in found] == [(key, str(path))]
    assert found[0]["problem"] and found[0]["fix"]


@pytest.mark.parametrize("setting", ACCEPTED, ids=lambda s: "+".join(s))
def test_accepted_settings_are_not_conflicts(synapse_dir, setting):
    write(synapse_dir / "conf.d" / "10-extra.yaml", setting)
    assert check(synapse_dir) == []


def test_every_offending_key_is_listed_with_file_and_fix(synapse_dir):
    hs = write(
        synapse_dir / "homeserver.yaml",
        {"server_name": "example.com", "enable_registration": True, "session_lifetime": "1d"},
    )
    extra = write(synapse_dir / "conf.d" / "ldap.yaml", {"password_providers": [{"module": "ldap_auth_provider.X"}]})
    found = check(synapse_dir)
    assert {(c["key"], c["file"]) for c in found} == {
        ("enable_registration", str(hs)),
        ("session_lifetime", str(hs)),
        ("password_providers", str(extra)),
    }
    message = mas_synapse.conflict_message(found)
    assert "Nothing was changed" in message
    for item in found:
        assert f"- {item['key']} in {item['file']}: " in message
        assert "To do: " in message
    assert "enable_registration" in message and "mas:account:password_registration_enabled" in message


def test_a_later_file_wins_like_in_synapse(synapse_dir):
    """Synapse replaces whole top-level sections: the last file decides."""
    write(synapse_dir / "homeserver.yaml", {"server_name": "example.com", "password_config": {"enabled": True}})
    write(synapse_dir / "conf.d" / "10-passwords.yaml", {"password_config": {"pepper": "p"}})
    assert check(synapse_dir) == []


def test_own_dropin_is_not_checked(synapse_dir):
    write(
        synapse_dir / "conf.d" / "matrix-authentication-service.yaml",
        {"matrix_authentication_service": {"enabled": True, "secret_path": "/x"}},
    )
    assert check(synapse_dir) == []


def test_extra_config_from_pillar_is_checked(synapse_dir, pillar):
    pillar["mas"] = {"synapse": {"extra_config": {"enable_3pid_changes": True}}}
    found = check(synapse_dir)
    assert [(c["key"], c["file"]) for c in found] == [("enable_3pid_changes", "pillar mas:synapse:extra_config")]


def test_extra_config_argument_wins_over_pillar(synapse_dir, pillar):
    pillar["mas"] = {"synapse": {"extra_config": {"enable_3pid_changes": True}}}
    assert check(synapse_dir, extra_config={}) == []


def test_missing_files_are_skipped(tmp_path):
    found = mas_synapse.conflicts([str(tmp_path / "absent.yaml")], str(tmp_path / "absent.d"), extra_config={})
    assert found == []


def test_migrating_keeps_oidc_and_password_login(synapse_dir):
    write(
        synapse_dir / "conf.d" / "10-sso.yaml",
        {
            "oidc_providers": [{"idp_id": "kc"}],
            "oidc_config": {"enabled": True},
            "password_config": {"enabled": True},
        },
    )
    assert check(synapse_dir, migrating=True) == []
    assert {c["key"] for c in check(synapse_dir)} == {"oidc_providers", "oidc_config", "password_config.enabled"}


def test_migrating_applies_the_other_rules(synapse_dir):
    write(synapse_dir / "conf.d" / "10-extra.yaml", {"enable_registration": True, "cas_config": {"server_url": "x"}})
    found = check(synapse_dir, migrating=True)
    assert {c["key"] for c in found} == {"enable_registration", "cas_config"}
    assert "mas:migration_in_progress is true" in mas_synapse.conflict_message(found, migrating=True)


@pytest.mark.parametrize(
    ("features", "key"),
    [
        ({"msc4108_enabled": True}, "experimental_features.msc4108_enabled"),
        ({"msc4388_mode": "authenticated"}, "experimental_features.msc4388_mode"),
        ({"msc4108_delegation_endpoint": "https://x/"}, "experimental_features.msc4108_delegation_endpoint"),
    ],
)
def test_migrating_refuses_what_needs_mas(synapse_dir, features, key):
    """Without the drop-in Synapse refuses MSC4108/MSC4388 ("requires matrix_authentication_service")."""
    write(synapse_dir / "conf.d" / "10-extra.yaml", {"experimental_features": features})
    assert [c["key"] for c in check(synapse_dir, migrating=True)] == [key]


def test_experimental_features_loaded_after_the_dropin(synapse_dir):
    late = write(synapse_dir / "conf.d" / "zz-late.yaml", {"experimental_features": {"msc3391_enabled": True}})
    found = check(synapse_dir)
    assert [(c["key"], c["file"]) for c in found] == [("experimental_features", str(late))]
    assert check(synapse_dir, migrating=True) == []


def test_values_never_appear_in_conflicts(synapse_dir):
    write(
        synapse_dir / "conf.d" / "10-jwt.yaml",
        {"jwt_config": {"enabled": True, "secret": "Top-Secret-Value", "algorithm": "HS256"}},
    )
    found = check(synapse_dir)
    assert "Top-Secret-Value" not in repr(found) + mas_synapse.conflict_message(found)


# ------------------------------------------------------------------ drop-in


def test_dropin_content_and_real_boolean():
    text = mas_synapse.dropin_text(mas_synapse.dropin_content(ENDPOINT, SECRET_PATH))
    assert text.startswith("# File managed by Salt")
    assert "enabled: true\n" in text
    assert yaml.safe_load(text) == {
        "matrix_authentication_service": {"enabled": True, "endpoint": ENDPOINT, "secret_path": SECRET_PATH},
        "experimental_features": {"msc4108_enabled": True},
    }


def test_inspect_carries_the_operators_experimental_features_over(synapse_dir):
    write(
        synapse_dir / "homeserver.yaml",
        {"server_name": "example.com", "experimental_features": {"msc3391_enabled": True}},
    )
    plan = mas_synapse.inspect(
        str(synapse_dir / "conf.d" / "matrix-authentication-service.yaml"),
        ENDPOINT,
        SECRET_PATH,
        [str(synapse_dir / "homeserver.yaml")],
        str(synapse_dir / "conf.d"),
        extra_config={},
    )
    assert plan["conflicts"] == []
    assert plan["files"] == [str(synapse_dir / "homeserver.yaml")]
    assert yaml.safe_load(plan["text"])["experimental_features"] == {"msc3391_enabled": True, "msc4108_enabled": True}


def test_inspect_has_no_text_while_migrating(synapse_dir):
    plan = mas_synapse.inspect(
        str(synapse_dir / "conf.d" / "x.yaml"),
        ENDPOINT,
        SECRET_PATH,
        [str(synapse_dir / "homeserver.yaml")],
        migrating=True,
        extra_config={},
    )
    assert plan["text"] is None and plan["conflicts"] == []


def _dropin_state(synapse_dir, migrating=False):
    return mas_synapse_state.dropin(
        str(synapse_dir / "conf.d" / "matrix-authentication-service.yaml"),
        ENDPOINT,
        SECRET_PATH,
        config_files=[str(synapse_dir / "homeserver.yaml")],
        migrating=migrating,
    )


def test_state_writes_the_dropin_through_file_managed(synapse_dir, file_states):
    ret = _dropin_state(synapse_dir)
    assert ret["result"] is True
    assert ret["changes"] == {"diff": "New file"}
    assert "delegates authentication to MAS" in ret["comment"]
    assert str(synapse_dir / "homeserver.yaml") in ret["comment"]
    file_states["file.absent"].assert_not_called()
    (name,), kwargs = file_states["file.managed"].call_args
    assert name == str(synapse_dir / "conf.d" / "matrix-authentication-service.yaml")
    assert kwargs["mode"] == "0644" and kwargs["makedirs"] is True
    assert yaml.safe_load(kwargs["contents"])["matrix_authentication_service"]["enabled"] is True


def test_state_refuses_before_writing_anything(synapse_dir, file_states):
    write(synapse_dir / "conf.d" / "10-extra.yaml", {"enable_registration": True, "cas_config": {"server_url": "x"}})
    ret = _dropin_state(synapse_dir)
    assert ret["result"] is False and ret["changes"] == {}
    assert "enable_registration in " in ret["comment"] and "cas_config in " in ret["comment"]
    file_states["file.managed"].assert_not_called()
    file_states["file.absent"].assert_not_called()


def test_state_removes_the_dropin_while_migrating(synapse_dir, file_states):
    write(
        synapse_dir / "conf.d" / "10-sso.yaml",
        {"oidc_providers": [{"idp_id": "kc"}], "password_config": {"enabled": True}},
    )
    ret = _dropin_state(synapse_dir, migrating=True)
    assert ret["result"] is True
    assert "removed while mas:migration_in_progress is true" in ret["comment"]
    file_states["file.absent"].assert_called_once_with(
        str(synapse_dir / "conf.d" / "matrix-authentication-service.yaml")
    )
    file_states["file.managed"].assert_not_called()


def test_state_reports_unreadable_config(synapse_dir, file_states):
    (synapse_dir / "homeserver.yaml").write_text("- not\n- a mapping\n")
    ret = _dropin_state(synapse_dir)
    assert ret["result"] is False and "is not a YAML mapping" in ret["comment"]
    file_states["file.managed"].assert_not_called()


# ----------------------------------------------------------------- settings


def test_synapse_settings_defaults():
    out = mas_synapse.settings(mapdata())
    assert out["dropin"] == "/etc/matrix-synapse/conf.d/matrix-authentication-service.yaml"
    assert out["state"] == "present"
    assert out["endpoint"] == "http://localhost:8080/auth/"
    assert out["secret"] == {
        "path": "/srv/mas/synapse/homeserver_secret",
        "dir": "/srv/mas/synapse",
        "kind": "copy",
        "source": "/srv/mas/config/secrets/homeserver_secret",
        "pillar_key": None,
        "user": "matrix-synapse",
        "group": "matrix-synapse",
        "mode": "0600",
    }
    assert out["restart"] is True and out["service"] == "matrix-synapse"


def test_synapse_settings_on_a_minion_of_its_own_take_the_shared_secret_from_pillar():
    """mas:roles without mas: Synapse's copy is the pillar value the MAS minion is served too, not a copy of a file
    that is on another host."""
    out = mas_synapse.settings(
        mapdata(
            roles=["synapse"],
            secrets={"homeserver_secret": "s" * 32},
            synapse={"mas_endpoint": "http://mas.example.internal:8080/auth/"},
        )
    )
    assert out["secret"]["kind"] == "pillar" and out["secret"]["source"] is None
    assert out["secret"]["pillar_key"] == "mas:secrets:homeserver_secret"
    assert out["endpoint"] == "http://mas.example.internal:8080/auth/"


def test_synapse_settings_migrating_and_custom_secret_path():
    out = mas_synapse.settings(
        mapdata(migration_in_progress=True, synapse={"secret_path": "/etc/matrix-synapse/mas.secret"})
    )
    assert out["state"] == "absent"
    assert out["secret"]["path"] == "/etc/matrix-synapse/mas.secret"


def test_pepper_digest_is_the_hmac_of_synapses_pepper_and_never_the_pepper(synapse_dir, pillar):
    from mas_formula import roles  # pylint: disable=import-outside-toplevel

    nonce = "a" * 32
    pillar["mas"] = {
        "synapse": {"config_files": [str(synapse_dir / "homeserver.yaml")], "config_dir": str(synapse_dir / "conf.d")}
    }
    found = mas_synapse.pepper_digest(nonce)
    assert found == {
        "digest": roles.pepper_digest(nonce, b"x"),
        "source": f"password_config.pepper in {synapse_dir / 'homeserver.yaml'}",
    }
    # a later file wins, as in Synapse
    write(synapse_dir / "conf.d" / "passwords.yaml", {"password_config": {"pepper": "y"}})
    assert mas_synapse.pepper_digest(nonce)["digest"] == roles.pepper_digest(nonce, b"y")
    write(synapse_dir / "conf.d" / "passwords.yaml", {"password_config": {"enabled": True}})
    assert mas_synapse.pepper_digest(nonce)["digest"] == "none"
    with pytest.raises(SaltInvocationError, match="nonce"):
        mas_synapse.pepper_digest("x" * 32)
