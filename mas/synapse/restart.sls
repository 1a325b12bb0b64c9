#!mas_py
"""Restarts Synapse only when its drop-in changed (mas:synapse:restart).

Also when its copy of the shared secret changed while a drop-in is in place; a
stopped Synapse is not started otherwise. It waits until Synapse answers again;
a failed restart fails the run and says so. Under test=True the restart is
predicted, not failed.
"""

ROLE = "synapse"  # mas:roles: elsewhere, the renderer gives one test.nop instead


def run(mas, tplroot):
    sls_synapse_file = tplroot + ".synapse.file"
    synapse = __salt__["mas_synapse.settings"](mas)
    service = synapse["service"]
    states = {"include": [sls_synapse_file]}
    if synapse["restart"]:
        # by state ID: an `sls:` requisite would also match every state the
        # included SLS include (Salt 3008), restarting Synapse on any MAS change
        onchanges = [{"mas_secret": "mas-synapse-file-mas_secret-present"}] if synapse["state"] == "present" else []
        onchanges.append({"mas_synapse": "mas-synapse-file-mas_synapse-dropin"})
        states["mas-synapse-restart-mas_synapse-restarted"] = state(
            "mas_synapse.restarted", name="synapse", service=service, url=synapse["url"], onchanges=onchanges
        )
    else:
        states["mas-synapse-restart-test-nop"] = state(
            "test.nop",
            name=f"mas:synapse:restart is false; restart {service} yourself after its drop-in changes",
            require=[{"sls": sls_synapse_file}],
        )
    return states
