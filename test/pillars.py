"""Pillar helpers shared by the functional and integration tests."""

import copy

from harness import mas as mas_target

PILLAR_SECRETS = {
    "encryption": "0123456789abcdef" * 4,
    "homeserver_secret": "hs-Secret-Value-4711-abcdefghij",
    "database_password": "Db-Password-Secret-0815",
    "email_password": "Smtp-Password-Secret-1234",
    "client_secret": "Provider-Client-Secret-9876",
    "pepper": "Synapse-Pepper-Secret-5555",
}


def deep_update(base, upd):
    """Return ``base`` deep-updated with ``upd`` (a ``None`` value deletes)."""
    out = copy.deepcopy(base)
    for key, value in upd.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


#: Every test logs in from 127.0.0.1, which MAS trusts as a proxy, so all logins share one requester: MAS's
#: default limit (3 password checks per minute per IP, ``rate_limiting.login.per_ip``) would refuse the fourth.
TEST_RATE_LIMITS = {"rate_limiting": {"login": {"per_ip": {"burst": 1000, "per_second": 100}}}}


def wired_pillar(root, pg, dbname, synapse, web, internal):
    """A pillar deploying MAS (the double, or the real MAS of ``MAS_REAL_CLI``;
    binary runtime) with its DB on the
    PostgreSQL fixture, wired to the harness Synapse ``synapse`` and served
    through an nginx snippet under ``root``; nothing needs systemd."""
    return {
        "config": copy.deepcopy(TEST_RATE_LIMITS),
        "enabled": True,
        "server_name": "example.com",
        "runtime": "binary",
        "binary": mas_target.binary_pillar(root),
        "user": "root",
        "group": "root",
        "base_path": str(root / "mas"),
        "service": {"manage": False, "unit_dir": str(root / "systemd")},
        "http": {"web_bind": f"127.0.0.1:{web}", "internal_bind": f"127.0.0.1:{internal}"},
        "database": {"host": "127.0.0.1", "port": pg.port, "name": dbname, "user": pg.superuser},
        "synapse": {
            "user": "root",
            "group": "root",
            "restart": False,
            "endpoint": synapse.base_url + "/",
            "mas_endpoint": f"http://127.0.0.1:{web}/auth/",
            "config_files": [str(synapse.config_path)],
            "config_dir": str(synapse.conf_d),
        },
        "proxy": {
            "reload": False,
            "nginx": {
                "snippet_path": str(root / "nginx" / "mas.conf"),
                "public_snippet_path": str(root / "nginx" / "mas-public.conf"),
                "mas_upstream": f"http://127.0.0.1:{web}",
            },
        },
    }
