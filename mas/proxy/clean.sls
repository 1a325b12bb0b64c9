#!mas_py
"""Takes the routes to MAS out of the proxy, and reloads it when something changed.

The compatibility routes go first, so logins go back to Synapse. nginx
snippets that exist are emptied, not deleted (an `include` of a missing file
breaks nginx); the Traefik file is removed.
"""

ROLE = "proxy"  # mas:roles: elsewhere, the renderer gives one test.nop instead


def run(mas, tplroot):
    proxy = __salt__["mas_proxy.settings"](mas, clean=True)
    states = {}
    ids = []
    for file in proxy["files"]:
        if file["action"] == "empty":
            state_id = f"mas-proxy-clean-file-managed-{file['name']}"
            context = {"server": "", "route": file["context"]}
            contents = __salt__["mas.render"](
                [file["template"]], f"mas-proxy-file-file-managed-{file['name']}", context, tplroot
            )
            states[state_id] = state("file.managed", name=file["path"], create=False, contents=contents)
        else:
            state_id = f"mas-proxy-clean-file-absent-{file['name']}"
            states[state_id] = state("file.absent", name=file["path"])
        ids.append(state_id)
    if not proxy["files"]:
        states["mas-proxy-clean-test-nop"] = state("test.nop", name="mas:proxy:type is none; no proxy file to clean")
    if proxy["files"] and proxy["reload"]:
        states.update(
            __salt__["mas_proxy.reload_states"]("mas-proxy-clean-module-run", proxy["service"], proxy["check"], ids)
        )
    return states
