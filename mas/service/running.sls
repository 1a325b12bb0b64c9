#!mas_py
"""Starts MAS, and restarts it only when its config, secrets, keys or unit changed.

With mas:service:manage false, starting and stopping is left to the
operator's own supervisor.
"""

ROLE = "mas"  # mas:roles: elsewhere, the renderer gives one test.nop instead


def run(mas, tplroot):
    sls_unit = tplroot + ".service.unit"
    sls_database = tplroot + ".database"
    states = {"include": [sls_unit] + ([sls_database] if mas["database"]["manage"] else [])}
    service = mas["service"]
    if service["manage"] and __salt__["mas_syn2mas.phase"]() == "migrating":
        states["mas-service-running-test-nop-syn2mas"] = state(
            "test.nop",
            name="MAS is not started while a syn2mas migration is unfinished (salt-call mas_syn2mas.status)",
            require=[{"sls": sls_unit}],
        )
    elif service["manage"]:
        if mas["runtime"] == "docker":
            states["mas-service-running-mas-image_present"] = state(
                "mas.image_present",
                name=mas["image"],
                command=service["docker"]["command"],
                require=[{"sls": sls_unit}],
            )
        require = [{"sls": sls_database}] if mas["database"]["manage"] else []
        if mas["runtime"] == "docker":
            require.append({"mas": "mas-service-running-mas-image_present"})
        else:
            require.append({"sls": sls_unit})
        # by state ID: an `sls:` requisite would also match every state the
        # included SLS include (Salt 3008), e.g. the directories of mas.install
        watch = [{"file": "mas-service-unit-file-managed"}, {"file": "mas-config-file-file-managed"}]
        if mas["paths"]["release_dir"]:
            # a new release: its directory is new, so the unit and config.yaml
            # change with it and MAS restarts once, on the new binary
            watch.append({"mas": "mas-install-binary-mas-release_extracted"})
        for secret in mas["secret_files"]:
            if secret["mas_reads"]:
                watch.append({"mas_secret": f"mas-secrets-file-mas_secret-present-{secret['name']}"})
        states["mas-service-running-service-running"] = state(
            "service.running", name=service["name"], enable=True, require=require, watch=watch
        )
    else:
        states["mas-service-running-test-nop"] = state(
            "test.nop",
            name=f"mas:service:manage is false; start {service['name']} with your own supervisor",
            require=[{"sls": sls_unit}],
        )
    return states
