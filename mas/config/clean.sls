#!mas_py
"""Removes config.yaml and the bin/ wrappers, once MAS is stopped.

Only what this formula wrote (e.g. not the playbook's files at the same paths).
"""

ROLE = "mas"  # mas:roles: elsewhere, the renderer gives one test.nop instead


def run(mas, tplroot):
    paths = mas["paths"]
    sls_service_clean = tplroot + ".service.clean"
    states = {"include": [sls_service_clean]}
    for item in ["config_file", "mas_cli", "register_user"]:
        states[f"mas-config-clean-file-absent-{item}"] = state(
            "file.absent",
            name=paths[item],
            onlyif=[{"fun": "mas.managed_by_formula", "path": paths[item]}],
            require=[{"sls": sls_service_clean}],
        )
    return states
