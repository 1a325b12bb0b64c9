"""Fixtures of the functional tests (real salt-call, everything under tmp)."""

import pytest

from pillars import PILLAR_SECRETS, deep_update


@pytest.fixture
def paths(tmp_path):
    """Where the formula writes in a test."""
    return {
        "base": tmp_path / "srv" / "mas",
        "units": tmp_path / "systemd",
        "synapse_dir": tmp_path / "synapse" / "conf.d",
        "synapse_cfg": tmp_path / "synapse" / "homeserver.yaml",
        "nginx": tmp_path / "nginx" / "mas.conf",
        "traefik": tmp_path / "traefik" / "mas.yml",
    }


@pytest.fixture
def minimal_pillar(paths):
    """The smallest enabled pillar, all paths under tmp, no secrets given."""
    return {
        "enabled": True,
        "server_name": "example.com",
        "runtime": "binary",
        "binary": "/usr/local/bin/mas-cli",
        "base_path": str(paths["base"]),
        "service": {"manage": False, "unit_dir": str(paths["units"])},
        "synapse": {
            "user": "root",
            "group": "root",
            "restart": False,
            "config_dir": str(paths["synapse_dir"]),
            "config_files": [str(paths["synapse_cfg"])],
        },
        "proxy": {
            "reload": False,
            "nginx": {"snippet_path": str(paths["nginx"])},
            "traefik": {"config_path": str(paths["traefik"])},
        },
    }


@pytest.fixture
def full_pillar(minimal_pillar):
    """An enabled pillar that sets every secret from pillar."""
    return deep_update(
        minimal_pillar,
        {
            "secrets": {
                "encryption": PILLAR_SECRETS["encryption"],
                "homeserver_secret": PILLAR_SECRETS["homeserver_secret"],
            },
            "database": {"password": PILLAR_SECRETS["database_password"]},
            "email": {
                "transport": "smtp",
                "hostname": "smtp.example.com",
                "port": 587,
                "mode": "starttls",
                "username": "mas@example.com",
                "password": PILLAR_SECRETS["email_password"],
            },
            "synapse": {"pepper": PILLAR_SECRETS["pepper"]},
            "upstream_oauth2_providers": [
                {
                    "id": "01HFVBY12TMNTYTBV8W921M5FA",
                    "synapse_idp_id": "oidc-keycloak",
                    "issuer": "https://keycloak.example.com/realms/matrix/",
                    "client_id": "mas",
                    "client_secret": PILLAR_SECRETS["client_secret"],
                    "token_endpoint_auth_method": "client_secret_post",
                    "scope": "openid email profile",
                }
            ],
            "account": {"password_registration_enabled": False},
            "config": {"branding": {"service_name": "Test"}},
        },
    )
