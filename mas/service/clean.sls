#!mas_py
"""Stops MAS and removes its unit.

MAS stops only once Synapse is authoritative again and the compatibility
routes are gone. Only a unit this formula wrote (e.g. not the playbook's of
the same name) is touched.
"""

ROLE = "mas"  # mas:roles: elsewhere, the renderer gives one test.nop instead


def run(mas, tplroot):
    sls_synapse_clean = tplroot + ".synapse.clean"
    ours = [{"fun": "mas.managed_by_formula", "path": mas["paths"]["unit"]}]
    states = {"include": [sls_synapse_clean]}
    require = [{"sls": sls_synapse_clean}]
    if mas["service"]["manage"]:
        states["mas-service-clean-service-dead"] = state(
            "service.dead",
            name=mas["service"]["name"],
            enable=False,
            onlyif=ours,
            require=[{"sls": sls_synapse_clean}],
        )
        require.append({"service": "mas-service-clean-service-dead"})
    states["mas-service-clean-file-absent"] = state(
        "file.absent", name=mas["paths"]["unit"], onlyif=ours, require=require
    )
    return states
