#!mas_py
"""The systemd unit of MAS (docker or binary runtime).

Both runtimes run `mas-cli config check` before starting the server.
"""

ROLE = "mas"  # mas:roles: elsewhere, the renderer gives one test.nop instead


def run(mas, tplroot):
    sls_config = tplroot + ".config"
    context = {
        "name": mas["service"]["name"],
        "runtime": mas["runtime"],
        "binary": mas["paths"]["mas_binary"],
        "user": mas["user"],
        "group": mas["group"],
        "restart": mas["service"]["restart"],
        "paths": mas["paths"],
        "docker": mas["service"]["docker"],
        "ca_bundle": mas["ca_bundle"],
    }
    return {
        "include": [sls_config],
        "mas-service-unit-file-managed": state(
            "file.managed",
            name=mas["paths"]["unit"],
            contents=__salt__["mas.render"](["unit.service.jinja"], "mas-service-unit-file-managed", context, tplroot),
            makedirs=True,
            user="root",
            group="root",
            mode="0644",
            require=[{"sls": sls_config}],
        ),
    }
