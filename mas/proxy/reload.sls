#!mas_py
"""Reloads the proxy only when one of its files changed (mas:proxy:reload).

nginx's whole configuration is tested first. The changes are watched by state
ID: an `sls:` requisite would also match every state the included SLS include
(Salt 3008), reloading on any MAS change.
"""

ROLE = "proxy"  # mas:roles: elsewhere, the renderer gives one test.nop instead


def run(mas, tplroot):
    sls_proxy_file = tplroot + ".proxy.file"
    proxy = __salt__["mas_proxy.settings"](mas)
    states = {"include": [sls_proxy_file]}
    if proxy["files"] and proxy["reload"]:
        ids = [f"mas-proxy-file-file-managed-{file['name']}" for file in proxy["files"]]
        states.update(
            __salt__["mas_proxy.reload_states"]("mas-proxy-reload-module-run", proxy["service"], proxy["check"], ids)
        )
    elif not (proxy["leftovers"] and proxy["reload"]):
        states["mas-proxy-reload-test-nop"] = state(
            "test.nop",
            name="No proxy reload (mas:proxy:reload is false or mas:proxy:type is none)",
            require=[{"sls": sls_proxy_file}],
        )
    if proxy["reload"]:
        # the proxy whose files were left by another type (emptied or removed by mas.proxy.file)
        for group in proxy["leftover_reloads"]:
            suffix = f"-leftover-{group['kind']}"
            states.update(
                __salt__["mas_proxy.reload_states"](
                    "mas-proxy-reload-module-run", group["service"], group["check"], group["ids"], suffix
                )
            )
    return states
