#!py
"""`salt-run state.orchestrate mas.orch.deploy`: a deployment on several minions, in dependency order.

Rendered on the master. Each step applies, on the minions of one role
(mas:roles), what that role holds, and waits for the step before it:

1. database: `mas.database` (MAS's PostgreSQL role and database), on the
   minions whose pillar has mas:roles with `database` (none: skipped);
2. mas: `mas` (install, secrets, config, service, users), on the MAS minions;
3. synapse: `mas.orch.delegate`, nested: `mas.synapse` (the drop-in, the
   shared secret's copy, the restart) on the Synapse minions, with the MAS
   minion's syn2mas phase and rollback verdict in their pillar, then the
   MAS minion's record of it;
4. proxy: `mas.proxy` (the compatibility routes), on the proxy minions, once
   Synapse delegates (none: skipped);
5. doctor: `mas.doctor` on the MAS minions, failing the run on an error.

Each role is targeted by pillar (`I@mas:roles:<role>`), or by the compound
target in mas:orch:targets:<role> (e.g. `G@matrix:mas-db` to target by
grains), given to the runner (`pillar='{"mas": {"orch": {"targets": ...}}}'`)
or in the master's own pillar. Sync the formula to the master and the minions
first (`salt-run saltutil.sync_all`, `salt -C 'I@mas:enabled:true'
saltutil.sync_all`): the steps are built by its helpers (mas_formula.orch);
docs/several-hosts.md.
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
    return plans().deploy(__pillar__)
