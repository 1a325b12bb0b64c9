#!py
"""`salt-run state.orchestrate mas.orch.delegate`: Synapse's side of a deployment on several minions, with the MAS minion's word on the migration.

Rendered on the master when it runs (mas.orch.deploy and mas.orch.migrate run
it nested, once MAS is in place): it asks the MAS minion for its syn2mas phase
and its rollback verdict (`mas_syn2mas.verdict`), then

1. synapse: applies `mas.synapse` on the Synapse minions with them in pillar
   (mas:syn2mas:mas_phase, mas:syn2mas:mas_rollback): a Synapse minion keeps no
   phase of its own, so its lock-out and rollback guards go by the MAS
   minion's;
2. delegation: applies `mas.syn2mas.delegation` on the MAS minion, which
   records what Synapse did (`delegated`, or `rolled_back`).

mas:orch:migration_in_progress (true or false), given to the runner, is passed
to both as mas:migration_in_progress; unset, their own pillar decides.
mas:orch:targets as for mas.orch.deploy. docs/several-hosts.md.
"""

import os
import sys


def plans():
    """The formula's orchestrations (mas_formula.orch), from the helpers synced to the master."""
    utils = os.path.join(__opts__["extension_modules"], "utils")
    sys.path.insert(0, utils)
    try:
        import mas_formula  # pylint: disable=import-outside-toplevel

        mas_formula.refresh()
        from mas_formula import orch  # pylint: disable=import-outside-toplevel
    except ImportError as exc:
        raise ImportError(
            f"the mas formula's helpers are not on the master ({utils}): run `salt-run saltutil.sync_all`"
        ) from exc
    finally:
        sys.path.remove(utils)
    return orch


def run():
    return plans().delegate(__pillar__, __salt__["saltutil.cmd"])
