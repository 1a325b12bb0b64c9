#!mas_py
"""Meta-state: deploy MAS when mas:enabled is true, remove it (mas.clean) when false.

Only the parts of the roles this minion holds (mas:roles; all four by default:
one host): the MAS part (install, secrets, config, service, users, doctor), the
managed database, the Synapse part, the proxy part. Across several minions,
mas.orch.deploy applies them in dependency order.
"""


def run(mas, tplroot):
    role = mas["role"]
    users = bool(mas["users"]) and role["mas"]
    if not mas["enabled"]:
        # Synapse is authoritative: mas:users are registered there
        return {"include": [".clean"] + ([".users"] if users else [])}
    include = [".install", ".secrets", ".config"] if role["mas"] else []
    include += [".database"] if mas["database"]["manage"] and role["database"] else []
    include += [".service"] if role["mas"] else []
    include += [".synapse"] if role["synapse"] else []
    include += [".proxy"] if role["proxy"] else []
    include += [".users"] if role["mas"] and (users or mas["registration_tokens"]) else []
    states = {"include": include}
    if not include:
        states["mas-test-nop-roles"] = state(
            "test.nop",
            name=f"nothing of mas for mas:roles {', '.join(mas['roles'])} here (mas:database:manage is false)",
        )
    if mas["doctor"]["after_apply"] and role["mas"]:
        include.append(".doctor")
        # mas:doctor:after_apply: the run ends with the doctor, once everything else is in place
        after = ["service"] + [sls for sls in ("synapse", "proxy") if role[sls]] + (["users"] if users else [])
        states["extend"] = {
            "mas-doctor-mas_doctor-healthy": state(
                "mas_doctor.healthy", require=[{"sls": f"{tplroot}.{sls}"} for sls in after]
            )
        }
    return states
