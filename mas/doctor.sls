#!mas_py
"""`salt-call state.apply mas.doctor`: the whole deployment checked, failing on an error.

Waits up to mas:doctor:wait seconds for MAS's /health and Synapse, then checks
the whole deployment (mas_doctor.run) and fails on an error (mas:doctor:strict:
on a warning too). Included last by `mas` when mas:doctor:after_apply is true.
"""

ROLE = "mas"  # mas:roles: elsewhere, the renderer gives one test.nop instead


def run(mas, tplroot):
    doctor = mas["doctor"]
    return {
        "mas-doctor-mas_doctor-healthy": state(
            "mas_doctor.healthy",
            name=f"doctor of {mas['public_base']}",
            strict=doctor["strict"],
            wait=doctor["wait"],
            timeout=doctor["timeout"],
        )
    }
