#!mas_py
"""Runs syn2mas through the guarded mas_syn2mas.migrated state.

Check first, then (a real run) stop Synapse and MAS, migrate, record the phase.
Already migrated: nothing runs. mas:syn2mas:dry_run: true runs `migrate --dry-run`.
"""

ROLE = "mas"  # mas:roles: elsewhere, the renderer gives one test.nop instead


def run(mas, tplroot):
    syn2mas = mas["syn2mas"]
    options = ["dry_run", "accept_warnings", "ignore_missing_auth_providers", "stop_services", "start_synapse_after"]
    return {
        "mas-syn2mas-migrate-mas_syn2mas-migrated": state(
            "mas_syn2mas.migrated", name="syn2mas", **{option: syn2mas[option] for option in options}
        )
    }
