#!mas_py
"""MAS's config.yaml (no secret inside) and the bin/ wrappers."""

ROLE = "mas"  # mas:roles: elsewhere, the renderer gives one test.nop instead


def run(mas, tplroot):
    sls_secrets = tplroot + ".secrets"
    paths = mas["paths"]
    # the server container carries Traefik's routers as labels (docker provider)
    labels = __salt__["mas_proxy.settings"](mas)["labels"] if mas["proxy"]["type"] == "traefik" else {}
    # bin/register-user runs this minion's salt-call (mas_user.register routes by phase)
    salt_wrapper = __salt__["mas_user.wrapper_settings"]()

    def managed(state_id, name, template, context, group, mode):
        contents = __salt__["mas.render"]([template], state_id, context, tplroot)
        return {
            state_id: state(
                "file.managed",
                name=name,
                contents=contents,
                user="root",
                group=group,
                mode=mode,
                require=[{"sls": sls_secrets}],
            )
        }

    states = {"include": [sls_secrets]}
    states.update(
        managed(
            "mas-config-file-file-managed",
            paths["config_file"],
            "config.yaml.jinja",
            {"mas_config": mas["mas_config"]},
            mas["group"],
            "0640",
        )
    )
    wrapper_context = {
        "paths": paths,
        "runtime": mas["runtime"],
        "image": mas["image"],
        "binary": paths["mas_binary"],
        "user": mas["user"],
        "group": mas["group"],
        "docker": mas["service"]["docker"],
        # the host files MAS reads outside config/ (mas:config *_file, a socket directory): read-only
        "mounts": mas["docker_mounts"],
        "labels_file": paths["labels_file"] if labels else "",
        "salt_call": salt_wrapper["salt_call"],
        "salt_config_dir": salt_wrapper["config_dir"],
        "ca_bundle": mas["ca_bundle"],
    }
    for wrapper, template in [("mas_cli", "mas-cli.sh.jinja"), ("register_user", "register-user.sh.jinja")]:
        state_id = f"mas-config-file-file-managed-{wrapper}"
        states.update(managed(state_id, paths[wrapper], template, wrapper_context, "root", "0755"))
    if labels:
        state_id = "mas-config-file-file-managed-labels"
        states.update(
            managed(state_id, paths["labels_file"], "docker.labels.jinja", {"labels": labels}, mas["group"], "0640")
        )
    else:
        states["mas-config-file-file-absent-labels"] = state("file.absent", name=paths["labels_file"])
    return states
