#!mas_py
"""The service account and the directory tree under mas:base_path.

An existing group and account are left exactly as they are (home, shell and
groups are the operator's): the states only note it, which also keeps a
no-change run cheap; missing ones are created as system accounts.

Only data/ belongs to the service account: the directories holding the config,
secrets and keys are root's (MAS reads them through its group), so the account
can never plant a link that root would follow.
"""

ROLE = "mas"  # mas:roles: elsewhere, the renderer gives one test.nop instead


def run(mas, tplroot):
    account = __salt__["mas.account"](mas["user"], mas["group"])
    states = {}
    if account["group"]:
        group = state("test.nop", name=f"group {mas['group']} exists; left as it is")
    else:
        group = state("group.present", name=mas["group"], system=True)
    states["mas-install-account-group-present"] = group
    require = ["mas-install-account-group-present"]
    if account["user"]:
        user = state("test.nop", name=f"user {mas['user']} exists; left as it is", require=require)
    else:
        user = state(  # noqa: S604 -- shell= is the login shell of user.present, not a command shell
            "user.present",
            name=mas["user"],
            gid=mas["group"],
            system=True,
            createhome=False,
            home=mas["paths"]["data_dir"],
            shell="/usr/sbin/nologin",
            require=require,
        )
    states["mas-install-account-user-present"] = user
    for directory, group, mode in [
        ("base", "root", "0755"),
        ("bin_dir", "root", "0755"),
        ("config_dir", mas["group"], "0750"),
        ("secrets_dir", mas["group"], "0750"),
        ("keys_dir", mas["group"], "0750"),
        ("data_dir", mas["group"], "0750"),
        ("state_dir", "root", "0700"),
    ]:
        states[f"mas-install-account-file-directory-{directory}"] = state(
            "file.directory",
            name=mas["paths"][directory],
            user=mas["user"] if directory == "data_dir" else "root",
            group=group,
            mode=mode,
            makedirs=True,
            require=["mas-install-account-user-present"],
        )
    return states
