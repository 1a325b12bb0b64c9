#!mas_py
"""Removes the drop-in (Synapse becomes authoritative again) and Synapse's copy of the shared secret.

They go after the compatibility routes, and Synapse restarts when something
was removed (mas:synapse:restart). Only what the formula wrote is removed (a
file of the same name it did not write stays). The syn2mas rollback guard runs
before any of it (mas_syn2mas.rollback_check).
"""

ROLE = "synapse"  # mas:roles: elsewhere, the renderer gives one test.nop instead


def run(mas, tplroot):
    sls_proxy_clean = tplroot + ".proxy.clean"
    synapse = __salt__["mas_synapse.settings"](mas)
    secret = synapse["secret"]
    # a copy of MAS's file (source) beside MAS; on a minion of its own, the pillar value MAS's minion is served too
    origin = {key: secret[key] for key in ("source", "pillar_key") if secret[key] is not None}
    states = {
        "include": [sls_proxy_clean],
        # the guard goes first: before the compatibility routes, the drop-in and a
        # purge of the whole tree (mas.install.clean, outside this chain)
        "mas-synapse-clean-mas_syn2mas-safe_to_roll_back": state(
            "mas_syn2mas.safe_to_roll_back",
            name="syn2mas",
            require_in=[
                {"sls": sls_proxy_clean},
                {"sls": tplroot + ".install.clean"},
                {"file": "mas-synapse-clean-file-absent-dropin"},
            ],
        ),
        "mas-synapse-clean-file-absent-dropin": state(
            "file.absent",
            name=synapse["dropin"],
            onlyif=[{"fun": "mas.managed_by_formula", "path": synapse["dropin"]}],
            require=[{"sls": sls_proxy_clean}],
        ),
        "mas-synapse-clean-file-absent-secret": state(
            "file.absent",
            name=secret["path"],
            unless=[
                {
                    "fun": "mas_secret.foreign",
                    "path": secret["path"],
                    "kind": secret["kind"],
                    **origin,
                    "owner": mas["secret_owner"],
                }
            ],
            require=[{"file": "mas-synapse-clean-file-absent-dropin"}],
        ),
        "mas-synapse-clean-mas_syn2mas-rolled_back": state(
            "mas_syn2mas.rolled_back", name="syn2mas", require=[{"file": "mas-synapse-clean-file-absent-dropin"}]
        ),
    }
    if synapse["restart"]:
        states["mas-synapse-clean-mas_synapse-restarted"] = state(
            "mas_synapse.restarted",
            name="synapse",
            service=synapse["service"],
            url=synapse["url"],
            onchanges=[{"file": "mas-synapse-clean-file-absent-dropin"}],
        )
    return states
