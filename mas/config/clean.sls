#!py
"""Removes config.yaml and the bin/ wrappers, once MAS is stopped.

Only what this formula wrote (e.g. not the playbook's files at the same paths).
"""

from salt.exceptions import SaltInvocationError


def run():
    try:
        mas = __salt__["mas.mapdata"](refuse_foreign=True)
    except SaltInvocationError as exc:  # the pillar's error, without the loader's frames around it
        raise SaltInvocationError(str(exc)) from None
    paths = mas["paths"]
    sls_service_clean = __sls__.split(".")[0] + ".service.clean"
    states = {"include": [sls_service_clean]}
    for item in ["config_file", "mas_cli", "register_user"]:
        states[f"mas-config-clean-file-absent-{item}"] = {
            "file.absent": [
                {"name": paths[item]},
                {"onlyif": [{"fun": "mas.managed_by_formula", "path": paths[item]}]},
                {"require": [{"sls": sls_service_clean}]},
            ]
        }
    return states
