#!mas_py
"""The proxy files (nginx snippets or a Traefik dynamic configuration).

They wait for the Synapse side, so that logins only reach MAS once Synapse
delegates to it. Files another proxy type left (a switch from nginx to
Traefik, or back) are emptied (nginx) or removed (Traefik) in the same run.
"""

ROLE = "proxy"  # mas:roles: elsewhere, the renderer gives one test.nop instead


def run(mas, tplroot):
    sls_synapse = tplroot + ".synapse"
    proxy = __salt__["mas_proxy.settings"](mas)
    states = {"include": [sls_synapse]}

    def contents(file, server):
        lookup = f"mas-proxy-file-file-managed-{file['name']}"
        return __salt__["mas.render"]([file["template"]], lookup, {"server": server, "route": file["context"]}, tplroot)

    for file in proxy["files"]:
        states[f"mas-proxy-file-file-managed-{file['name']}"] = state(
            "file.managed",
            name=file["path"],
            contents=contents(file, file["server"]),
            makedirs=True,
            user="root",
            group="root",
            mode="0644",
            require=[{"sls": sls_synapse}],
        )
    if not proxy["files"]:
        states["mas-proxy-file-test-nop"] = state(
            "test.nop",
            name=f"mas:proxy:type is none; route the compatibility paths and {mas['path_prefix']} to MAS yourself",
            require=[{"sls": sls_synapse}],
        )
    for file in proxy["leftovers"]:
        if file["action"] == "empty":
            states[file["id"]] = state("file.managed", name=file["path"], create=False, contents=contents(file, ""))
        else:
            states[file["id"]] = state("file.absent", name=file["path"])
    return states
