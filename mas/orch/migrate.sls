#!py
"""`salt-run state.orchestrate mas.orch.migrate`: the syn2mas migration of a deployment on several minions, from check to doctor, resumed from the phase the MAS minion recorded.

Rendered on the master. It asks the MAS minion where the migration stands
(`mas_syn2mas.verdict`), then runs, each step after the one before:

1. check: `mas_syn2mas.check` on the MAS minion (the preflight and upstream's
   check, while Synapse still serves; warnings need mas:syn2mas:accept_warnings);
2. stop: `service.stop <mas:synapse:service>` on the Synapse minion;
3. syn2mas: `mas.syn2mas` on the MAS minion (mas:migration_in_progress: true):
   backup, migrate, verify, under the phase marker's lock, reading Synapse's
   database over the network (mas:synapse:database);
4. mas: `mas` on the MAS minion (mas:migration_in_progress: false): MAS starts;
5. delegate: `mas.orch.delegate`, nested: the drop-in on the Synapse minion,
   Synapse restarted delegating, the phase `delegated` on the MAS minion;
6. proxy: `mas.proxy` on the proxy minions (the compatibility routes);
7. doctor: `mas.doctor` on the MAS minion.

Any failure from the stop on starts Synapse again on its minion (on its legacy
config: the drop-in comes in step 5). A rerun after the fix resumes from the
recorded phase: a migration that did not finish is retried; an unverified one
is verified again; a verified one is compared again (Synapse may have served
since) before Synapse delegates; a delegated one only applies steps 4-7.
Set mas:migration_in_progress: false in pillar afterwards (the run passes it
to its own steps). mas:orch:targets as for mas.orch.deploy; docs/several-hosts.md.
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
    return plans().migrate(__pillar__, __salt__["saltutil.cmd"])
