#!mas_py
"""Records on a MAS minion without Synapse what Synapse's minion did with its drop-in.

The syn2mas phase lives on the MAS minion. Once the Synapse minion delegates
(mas:migration_in_progress false, its drop-in written by mas.synapse), a
recorded migration becomes `delegated` here; once it authenticates again, a
`delegated` phase becomes `rolled_back`. mas.orch.delegate applies this after
mas.synapse on the Synapse minion (not included by `mas`). Where Synapse is on
this minion, mas.synapse records it itself.
"""

ROLE = "mas"  # mas:roles: elsewhere, the renderer gives one test.nop instead


def run(mas, tplroot):
    if mas["role"]["synapse"]:
        return {
            "mas-syn2mas-delegation-test-nop": state(
                "test.nop", name="Synapse is on this minion: mas.synapse records its delegation itself"
            )
        }
    outcome = "delegated" if mas["enabled"] and not mas["migration_in_progress"] else "rolled_back"
    return {f"mas-syn2mas-delegation-mas_syn2mas-{outcome}": state(f"mas_syn2mas.{outcome}", name="syn2mas")}
