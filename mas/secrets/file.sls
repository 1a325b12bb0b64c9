#!mas_py
"""Secrets and signing keys: taken from pillar or generated once.

Pillar secrets are read on the minion by the mas_secret.present state, never
passed through this file. A file there that is not the formula's own is
refused, never replaced; the client-secret files of providers that are gone
are removed, and so are the temporary files of an interrupted write (in
keys_dir MAS would load one as a key and refuse to start).
"""

ROLE = "mas"  # mas:roles: elsewhere, the renderer gives one test.nop instead


def run(mas, tplroot):
    sls_install = tplroot + ".install"
    states = {"include": [sls_install]}
    for secret in mas["secret_files"]:
        states[f"mas-secrets-file-mas_secret-present-{secret['name']}"] = state(
            "mas_secret.present",
            name=secret["path"],
            kind=secret["kind"],
            pillar_key=secret["pillar_key"],
            user=secret["user"],
            group=secret["group"],
            mode=secret["mode"],
            allow_rotation=secret["allow_rotation"],
            owner=secret["owner"],
            tmp_dir=secret["tmp_dir"],
            require=[{"sls": sls_install}],
        )
    wanted = [secret["path"] for secret in mas["secret_files"]]
    for path in __salt__["mas_secret.leftovers"](mas["paths"]["secrets_dir"], wanted):
        states[f"mas-secrets-file-file-absent-{path.split('/')[-1]}"] = state(
            "file.absent", name=path, require=[{"sls": sls_install}]
        )
    # an interrupted write's temporary file: in keys_dir (an older formula staged keys there) MAS would
    # load it as a key and refuse to start
    for directory in ("keys_dir", "secrets_dir"):
        for path in __salt__["mas_secret.temporaries"](mas["paths"][directory]):
            states[f"mas-secrets-file-file-absent-{directory}-{path.split('/')[-1]}"] = state(
                "file.absent", name=path, require=[{"sls": sls_install}]
            )
    return states
