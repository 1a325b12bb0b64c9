#!py
"""Removes the directory tree only when mas:clean:purge is true.

The service account is kept (files elsewhere may still belong to it).
"""

from salt.exceptions import SaltInvocationError


def run():
    try:
        mas = __salt__["mas.mapdata"](refuse_foreign=True)
    except SaltInvocationError as exc:  # the pillar's error, without the loader's frames around it
        raise SaltInvocationError(str(exc)) from None
    sls_secrets_clean = __sls__.split(".")[0] + ".secrets.clean"
    base = mas["paths"]["base"]
    if mas["clean"]["purge"]:
        state_id = "mas-install-clean-file-absent"
        state = {"file.absent": [{"name": base}, {"require": [{"sls": sls_secrets_clean}]}]}
    else:
        state_id = "mas-install-clean-test-nop"
        state = {"test.nop": [{"name": f"Keeping {base} (secrets, keys, data); set mas:clean:purge to remove it"}]}
    return {"include": [sls_secrets_clean], state_id: state}
