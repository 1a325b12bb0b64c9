"""``mas:roles`` through the real renderer (issue #19): ``state.show_sls mas`` on each minion of a deployment on three
hosts holds the states of its roles only, under the IDs one host has, and together they are one host's states.
"""

import pytest

from pillars import deep_update

pytestmark = pytest.mark.usefixtures("salt_minion")

SHARED = "s" * 32
SPLIT = {
    "mas-db": {
        "roles": ["mas", "database"],
        "secrets": {"homeserver_secret": SHARED},
        "synapse": {"endpoint": "http://synapse.example.internal:8008/"},
        "doctor": {"proxy_url": "https://proxy.example.internal"},
    },
    "synapse": {
        "roles": ["synapse"],
        "secrets": {"homeserver_secret": SHARED},
        "synapse": {"mas_endpoint": "http://mas.example.internal:8080/auth/"},
    },
    "proxy": {"roles": ["proxy"], "proxy": {"nginx": {"mas_upstream": "http://mas.example.internal:8080"}}},
}
ROLE_NAMES = ("mas", "synapse", "database", "proxy")
#: The states of each role, by the first part of their ID after mas-.
ROLE_OF = {
    "install": "mas",
    "secrets": "mas",
    "config": "mas",
    "service": "mas",
    "users": "mas",
    "doctor": "mas",
    "database": "database",
    "synapse": "synapse",
    "proxy": "proxy",
}


def ids(minion, pillar):
    minion.set_pillar({"mas": pillar})
    show = minion.run("state.show_sls", "mas")
    assert show.returncode == 0 and isinstance(show.data, dict), show.output
    return {
        state_id: next(k for k in body if not k.startswith("__") and k != "order")
        for state_id, body in show.data.items()
        if not state_id.startswith("__")  # __extend__ (mas:doctor:after_apply)
    }


def test_each_minion_renders_the_states_of_its_roles_under_one_hosts_ids(salt_minion, minimal_pillar):
    one = deep_update(
        minimal_pillar,
        {
            "database": {"manage": True},
            "users": [{"username": "bot"}],
            "doctor": {"after_apply": True},
        },
    )
    one_host = ids(salt_minion, one)
    assert {ROLE_OF[state_id.split("-")[1]] for state_id in one_host} == {"mas", "database", "synapse", "proxy"}
    together = {}
    for name, split in SPLIT.items():
        states = ids(salt_minion, deep_update(one, split))
        roles = split["roles"]
        mine = {state_id: fun for state_id, fun in states.items() if not state_id.endswith("-test-nop-role")}
        assert {ROLE_OF[state_id.split("-")[1]] for state_id in mine} == set(roles), (name, sorted(mine))
        # what the other roles would do here is one test.nop per SLS saying so
        for state_id, fun in states.items():
            if state_id.endswith("-test-nop-role"):
                assert fun == "test" and ROLE_OF[state_id.split("-")[1]] not in roles, state_id
        together.update(mine)
    assert together == one_host


def test_the_deploy_orchestration_targets_each_role_in_dependency_order(salt_minion, minimal_pillar):
    def render(orch=None):
        salt_minion.set_pillar({"mas": deep_update(minimal_pillar, {"orch": orch} if orch else {})})
        return salt_minion.run("slsutil.renderer", "salt://mas/orch/deploy.sls", "default_renderer=jinja|yaml")

    def args(body):
        ((function, arguments),) = body.items()
        return function, {k: v for arg in arguments for k, v in arg.items()}

    steps = render().data
    assert list(steps) == [
        "mas-orch-deploy-salt-state-database",
        "mas-orch-deploy-salt-state-mas",
        "mas-orch-deploy-salt-runner-synapse",
        "mas-orch-deploy-salt-state-proxy",
        "mas-orch-deploy-salt-state-doctor",
    ]
    found = {state_id: args(body) for state_id, body in steps.items()}
    applied = [(f, a["tgt"], a["sls"], a["expect_minions"]) for f, a in found.values() if f == "salt.state"]
    assert applied == [
        ("salt.state", "I@mas:roles:database", "mas.database", False),
        ("salt.state", "I@mas:roles:mas", "mas", True),
        ("salt.state", "I@mas:roles:proxy", "mas.proxy", False),
        ("salt.state", "I@mas:roles:mas", "mas.doctor", True),
    ]
    assert all(a["tgt_type"] == "compound" for f, a in found.values() if f == "salt.state")
    # Synapse's side: mas.orch.delegate, nested (it asks the MAS minion for its phase when it runs), on the same targets
    function, synapse = found["mas-orch-deploy-salt-runner-synapse"]
    assert (function, synapse["name"], synapse["mods"]) == ("salt.runner", "state.orchestrate", "mas.orch.delegate")
    assert synapse["pillar"] == {"mas": {"orch": {"targets": {r: f"I@mas:roles:{r}" for r in ROLE_NAMES}}}}
    previous = list(steps)[:-1]
    assert [a.get("require") for _, a in found.values()] == [None] + [[{"salt": p}] for p in previous]
    # by grains
    grains = render({"targets": {"mas": "G@matrix:mas", "synapse": "G@matrix:synapse and not G@os:Windows"}}).data
    targets = [args(body)[1].get("tgt") for body in grains.values()]
    assert targets == ["I@mas:roles:database", "G@matrix:mas", None, "I@mas:roles:proxy", "G@matrix:mas"]
    nested = args(grains["mas-orch-deploy-salt-runner-synapse"])[1]["pillar"]["mas"]["orch"]["targets"]
    assert nested["synapse"] == "G@matrix:synapse and not G@os:Windows" and nested["mas"] == "G@matrix:mas"
    # mas:orch:migration_in_progress: passed to every step's minions
    passed = render({"migration_in_progress": False}).data
    for state_id, body in passed.items():
        function, given = args(body)
        if function == "salt.state":
            assert given["pillar"] == {"mas": {"migration_in_progress": False}}, state_id
        else:
            assert given["pillar"]["mas"]["orch"]["migration_in_progress"] is False
    for bad, message in (
        ({"targets": {"web": "G@x:y"}}, "mas:orch:targets:web: not a role"),
        ({"targets": {"mas": "G@x:y; rm -rf /"}}, "mas:orch:targets:mas: must be a compound target"),
        ({"targets": ["G@x:y"]}, "mas:orch:targets must be a mapping"),
        ({"migration_in_progress": "no"}, "mas:orch:migration_in_progress must be true or false"),
    ):
        res = render(bad)
        assert res.returncode != 0 and message in res.output, res.output
