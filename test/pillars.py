"""Pillar helpers shared by the functional and integration tests."""

import copy

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


