#!mas_py
"""Synapse's readable copy of the shared secret and the drop-in.

The drop-in state reads Synapse's config first and refuses, changing nothing,
while a setting Synapse rejects next to MAS is left (see mas_synapse.conflicts).
A syn2mas guard runs before either is written: delegating refuses what would
lock Synapse's users out (mas_syn2mas.lockout_check), removing the drop-in
refuses a silent rollback (mas_syn2mas.rollback_check).
"""

ROLE = "synapse"  # mas:roles: elsewhere, the renderer gives one test.nop instead


def run(mas, tplroot):
    sls_secrets = tplroot + ".secrets"
    sls_service = tplroot + ".service"
    synapse = __salt__["mas_synapse.settings"](mas)
    secret = synapse["secret"]
    # a copy of MAS's file (source) beside MAS; on a minion of its own, the pillar value MAS's minion is served too
    origin = {key: secret[key] for key in ("source", "pillar_key") if secret[key] is not None}
    present = synapse["state"] == "present"
    guard = "safe_to_delegate" if present else "safe_to_roll_back"
    outcome = "delegated" if present else "rolled_back"
    return {
        "include": [sls_secrets, sls_service],
        f"mas-synapse-file-mas_syn2mas-{guard}": state(
            f"mas_syn2mas.{guard}",
            name="syn2mas",
            require_in=[
                {"mas_secret": "mas-synapse-file-mas_secret-present"},
                {"mas_synapse": "mas-synapse-file-mas_synapse-dropin"},
            ],
        ),
        "mas-synapse-file-file-directory-secret": state("file.directory", name=secret["dir"], makedirs=True),
        "mas-synapse-file-mas_secret-present": state(
            "mas_secret.present",
            name=secret["path"],
            kind=secret["kind"],
            **origin,
            user=secret["user"],
            group=secret["group"],
            mode=secret["mode"],
            owner=mas["secret_owner"],
            require=[{"sls": sls_secrets}, {"file": "mas-synapse-file-file-directory-secret"}],
        ),
        "mas-synapse-file-mas_synapse-dropin": state(
            "mas_synapse.dropin",
            name=synapse["dropin"],
            endpoint=synapse["endpoint"],
            secret_path=secret["path"],
            config_files=synapse["config_files"],
            config_dir=synapse["config_dir"],
            migrating=not present,
            require=[{"mas_secret": "mas-synapse-file-mas_secret-present"}, {"sls": sls_service}],
        ),
        f"mas-synapse-file-mas_syn2mas-{outcome}": state(
            f"mas_syn2mas.{outcome}", name="syn2mas", require=[{"mas_synapse": "mas-synapse-file-mas_synapse-dropin"}]
        ),
    }
