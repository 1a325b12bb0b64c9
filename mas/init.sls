#!mas_py
"""Meta-state: deploy MAS when mas:enabled is true, remove it (mas.clean) when false."""


def run(mas, tplroot):
    users = bool(mas["users"])
    if not mas["enabled"]:
        # Synapse is authoritative: mas:users are registered there
        return {"include": [".clean"] + ([".users"] if users else [])}
    include = [".install", ".secrets", ".config"]
    include += [".database"] if mas["database"]["manage"] else []
    include += [".service", ".synapse", ".proxy"]
    include += [".users"] if users or mas["registration_tokens"] else []
    states = {"include": include}
    if mas["doctor"]["after_apply"]:
        include.append(".doctor")
        # mas:doctor:after_apply: the run ends with the doctor, once everything else is in place
        after = ["service", "synapse", "proxy"] + (["users"] if users else [])
        states["extend"] = {
            "mas-doctor-mas_doctor-healthy": state(
                "mas_doctor.healthy", require=[{"sls": f"{tplroot}.{sls}"} for sls in after]
            )
        }
    return states
