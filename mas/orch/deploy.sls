#!py
"""`salt-run state.orchestrate mas.orch.deploy`: a deployment on several minions, in dependency order.

Rendered on the master. Each step applies, on the minions of one role
(mas:roles), what that role holds, and waits for the step before it:

1. database: `mas.database` (MAS's PostgreSQL role and database), on the
   minions whose pillar has mas:roles with `database` (none: skipped);
2. mas: `mas` (install, secrets, config, service, users), on the MAS minions;
3. synapse: `mas.synapse` (the drop-in, the shared secret's copy, the
   restart), on the Synapse minions, once MAS is in place;
4. proxy: `mas.proxy` (the compatibility routes), on the proxy minions, once
   Synapse delegates (none: skipped);
5. doctor: `mas.doctor` on the MAS minions, failing the run on an error.

Each role is targeted by pillar (`I@mas:roles:<role>`), or by the compound
target in mas:orch:targets:<role> (e.g. `G@matrix:mas-db` to target by
grains), given to the runner (`pillar='{"mas": {"orch": {"targets": ...}}}'`)
or in the master's own pillar. Sync the formula to the minions first
(`salt -C 'I@mas:enabled:true' saltutil.sync_all`); docs/several-hosts.md.
"""

import re

#: The steps in dependency order: (role, SLS applied, targets, at least one minion expected).
STEPS = (
    ("database", "mas.database", "database", False),
    ("mas", "mas", "mas", True),
    ("synapse", "mas.synapse", "synapse", True),
    ("proxy", "mas.proxy", "proxy", False),
    ("doctor", "mas.doctor", "mas", True),
)
ROLES = ("mas", "synapse", "database", "proxy")
#: A compound target as pillar may give it: printable, no control characters, no quotes or shell metacharacters.
TARGET = re.compile(r"[A-Za-z0-9@:._*?,/=+()\[\]! -]{1,512}")


def given_targets():
    """mas:orch:targets of the runner's pillar (``{}`` when unset)."""
    mas = __pillar__.get("mas")
    orch = mas.get("orch") if isinstance(mas, dict) else None
    given = orch.get("targets") if isinstance(orch, dict) else None
    if (orch is not None and not isinstance(orch, dict)) or not isinstance(given or {}, dict):
        raise ValueError("mas:orch:targets must be a mapping of role -> compound target")
    return given or {}


def run():
    given = given_targets()
    targets = {role: f"I@mas:roles:{role}" for role in ROLES}
    for role, target in given.items():
        if role not in ROLES:
            raise ValueError(f"mas:orch:targets:{role}: not a role (known: {', '.join(ROLES)})")
        if not isinstance(target, str) or not TARGET.fullmatch(target):
            raise ValueError(
                f"mas:orch:targets:{role}: must be a compound target (e.g. G@roles:{role}), not {target!r}"
            )
        targets[role] = target
    states, before = {}, None
    for step, sls, role, expected in STEPS:
        state_id = f"mas-orch-deploy-salt-state-{step}"
        args = [
            {"tgt": targets[role]},
            {"tgt_type": "compound"},
            {"sls": sls},
            {"expect_minions": expected},
        ]
        if before:
            args.append({"require": [{"salt": before}]})
        states[state_id] = {"salt.state": args}
        before = state_id
    return states
