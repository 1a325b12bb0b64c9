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

    steps = render().data
    assert list(steps) == [f"mas-orch-deploy-salt-state-{s}" for s in ("database", "mas", "synapse", "proxy", "doctor")]
    args = {state_id: {k: v for arg in body["salt.state"] for k, v in arg.items()} for state_id, body in steps.items()}
    assert [(a["tgt"], a["sls"], a["expect_minions"]) for a in args.values()] == [
        ("I@mas:roles:database", "mas.database", False),
        ("I@mas:roles:mas", "mas", True),
        ("I@mas:roles:synapse", "mas.synapse", True),
        ("I@mas:roles:proxy", "mas.proxy", False),
        ("I@mas:roles:mas", "mas.doctor", True),
    ]
    assert all(a["tgt_type"] == "compound" for a in args.values())
    previous = list(steps)[:-1]
    assert [a.get("require") for a in args.values()] == [None] + [[{"salt": p}] for p in previous]
    # by grains
    grains = render({"targets": {"mas": "G@matrix:mas", "synapse": "G@matrix:synapse and not G@os:Windows"}}).data
    targets = [{k: v for arg in body["salt.state"] for k, v in arg.items()}["tgt"] for body in grains.values()]
    assert targets == [
        "I@mas:roles:database",
        "G@matrix:mas",
        "G@matrix:synapse and not G@os:Windows",
        "I@mas:roles:proxy",
        "G@matrix:mas",
    ]
    for bad, message in (
        ({"targets": {"web": "G@x:y"}}, "mas:orch:targets:web: not a role"),
        ({"targets": {"mas": "G@x:y; rm -rf /"}}, "mas:orch:targets:mas: must be a compound target"),
        ({"targets": ["G@x:y"]}, "mas:orch:targets must be a mapping"),
    ):
        res = render(bad)
        assert res.returncode != 0 and message in res.output, res.output
