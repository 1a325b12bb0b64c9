"""The orchestrations of several hosts as the master builds them (``mas_formula.orch``, rendered by ``mas/orch/*.sls``):
``mas.orch.migrate``'s steps from each phase the MAS minion can answer, the failure step that starts Synapse again,
``mas.orch.delegate`` passing the MAS minion's word to the Synapse minions, and what refuses a plan. The MAS minion is
asked through a stand-in for Salt's ``saltutil.cmd``; the orchestrations run for real in
``test/integration/test_several_hosts*.py``."""

import pytest

from mas_formula import orch, roles

ROLLBACK = {"result": True, "comment": "Synapse does not delegate to MAS", "errors": [], "warnings": [], "counts": {}}


class Master:
    """Salt's ``saltutil.cmd`` on the master, answering ``mas_syn2mas.verdict`` for the MAS minion, and
    ``mas_syn2mas.pepper_digest`` / ``mas_synapse.pepper_digest`` from the peppers of each side (``bytes``, None: no
    pepper; a Synapse side of ``"down"``: its minion does not answer)."""

    def __init__(self, phase="none", answers=None, peppers=(b"Pepper-0001", b"Pepper-0001")):
        self.asked, self.nonces = [], []
        self.answers = answers
        self.phase = phase
        self.peppers = dict(zip(("mas_syn2mas", "mas_synapse"), peppers, strict=True))

    def __call__(self, tgt, fun, **kwargs):
        self.asked.append((tgt, fun, kwargs.get("tgt_type"), kwargs.get("expect_minions")))
        if self.answers is not None:
            return self.answers
        if fun.endswith(".pepper_digest"):
            (nonce,) = kwargs["arg"]
            self.nonces.append(nonce)
            module = fun.split(".")[0]
            pepper = self.peppers[module]
            if pepper == "down":
                return {"synapse": {"ret": "Minion did not return. [No response]", "retcode": 1, "failed": True}}
            where = {"mas_syn2mas": "mas:synapse:pepper", "mas_synapse": "password_config.pepper in homeserver.yaml"}
            ret = {"digest": roles.pepper_digest(nonce, pepper), "source": where[module]}
            return {"mas-db" if module == "mas_syn2mas" else "synapse": {"ret": ret, "retcode": 0}}
        ret = {"result": True, "phase": self.phase, "rollback": dict(ROLLBACK), "synapse_service": "matrix-synapse"}
        return {"mas-db": {"ret": ret, "retcode": 0, "jid": "1"}}


VERDICT = ("I@mas:roles:mas", "mas_syn2mas.verdict", "compound", True)
PEPPERS = [
    ("I@mas:roles:mas", "mas_syn2mas.pepper_digest", "compound", True),
    ("I@mas:roles:synapse", "mas_synapse.pepper_digest", "compound", True),
]


def arguments(body):
    """``(function, {argument: value})`` of one orchestration step."""
    ((function, args),) = body.items()
    return function, {key: value for arg in args for key, value in arg.items()}


def plan(phase, pillar=None):
    master = Master(phase)
    states = orch.migrate(pillar or {}, master)
    # the peppers are compared before a migration, not once it is done
    assert master.asked == [VERDICT] + (PEPPERS if phase in orch.TO_MIGRATE else [])
    return states


def test_a_migration_from_the_start_checks_stops_migrates_and_delegates_each_step_after_the_one_before():
    states = plan("none")
    assert list(states) == [
        "mas-orch-migrate-salt-function-check",
        "mas-orch-migrate-salt-function-stop",
        "mas-orch-migrate-salt-state-syn2mas",
        "mas-orch-migrate-salt-state-mas",
        "mas-orch-migrate-salt-runner-delegate",
        "mas-orch-migrate-salt-state-proxy",
        "mas-orch-migrate-salt-state-doctor",
        "mas-orch-migrate-salt-function-start",
    ]
    steps = {state_id: arguments(body) for state_id, body in states.items()}
    # each step requires the one before: a failure stops the rest
    chain = list(states)[:-1]
    assert [args.get("require") for _, args in list(steps.values())[:-1]] == [None] + [
        [{"salt": s}] for s in chain[:-1]
    ]
    assert steps["mas-orch-migrate-salt-function-check"] == (
        "salt.function",
        {"name": "mas_syn2mas.check", "tgt": "I@mas:roles:mas", "tgt_type": "compound", "expect_minions": True},
    )
    function, stop = steps["mas-orch-migrate-salt-function-stop"]
    assert (function, stop["name"], stop["tgt"], stop["arg"]) == (
        "salt.function",
        "service.stop",
        "I@mas:roles:synapse",
        ["matrix-synapse"],
    )
    migrating, delegating = {"mas": {"migration_in_progress": True}}, {"mas": {"migration_in_progress": False}}
    assert steps["mas-orch-migrate-salt-state-syn2mas"][1]["sls"] == "mas.syn2mas"
    assert steps["mas-orch-migrate-salt-state-syn2mas"][1]["pillar"] == migrating
    for step, sls, target in (("mas", "mas", "mas"), ("proxy", "mas.proxy", "proxy"), ("doctor", "mas.doctor", "mas")):
        function, args = steps[f"mas-orch-migrate-salt-state-{step}"]
        assert (function, args["sls"], args["tgt"], args["pillar"]) == (
            "salt.state",
            sls,
            f"I@mas:roles:{target}",
            delegating,
        )
    assert steps["mas-orch-migrate-salt-state-proxy"][1]["expect_minions"] is False  # no proxy minion: skipped
    function, nested = steps["mas-orch-migrate-salt-runner-delegate"]
    assert (function, nested["name"], nested["mods"]) == ("salt.runner", "state.orchestrate", "mas.orch.delegate")
    targets = {role: f"I@mas:roles:{role}" for role in ("mas", "synapse", "database", "proxy")}
    assert nested["pillar"] == {"mas": {"orch": {"targets": targets, "migration_in_progress": False}}}
    # from the stop on, any failure starts Synapse again on its minion
    function, start = steps["mas-orch-migrate-salt-function-start"]
    assert (function, start["name"], start["tgt"], start["arg"]) == (
        "salt.function",
        "service.start",
        "I@mas:roles:synapse",
        ["matrix-synapse"],
    )
    assert start["onfail"] == [{"salt": s} for s in chain[1:]] and "require" not in start


def test_a_rerun_resumes_from_the_phase_the_mas_minion_recorded():
    # a migration that did not finish: checked and retried (syn2mas resets the partial one)
    assert list(plan("migrating"))[:3] == [
        "mas-orch-migrate-salt-function-check",
        "mas-orch-migrate-salt-function-stop",
        "mas-orch-migrate-salt-state-syn2mas",
    ]
    # an unverified one: no check (refused once migrated), the state verifies it again
    assert list(plan("migrated_unverified"))[:2] == [
        "mas-orch-migrate-salt-function-stop",
        "mas-orch-migrate-salt-state-syn2mas",
    ]
    # a verified one: compared again (Synapse may have served since an earlier failure started it), then delegated
    verified = plan("verified")
    assert list(verified)[:2] == ["mas-orch-migrate-salt-function-stop", "mas-orch-migrate-salt-function-verify"]
    function, verify = arguments(verified["mas-orch-migrate-salt-function-verify"])
    assert (function, verify["name"], verify["tgt"]) == ("salt.function", "mas_syn2mas.verify", "I@mas:roles:mas")
    assert arguments(verified["mas-orch-migrate-salt-function-start"])[1]["onfail"][:2] == [
        {"salt": "mas-orch-migrate-salt-function-stop"},
        {"salt": "mas-orch-migrate-salt-function-verify"},
    ]
    # delegated: Synapse is not stopped again; MAS, delegation, proxy and doctor are applied (no change when done)
    assert list(plan("delegated")) == [
        "mas-orch-migrate-salt-state-mas",
        "mas-orch-migrate-salt-runner-delegate",
        "mas-orch-migrate-salt-state-proxy",
        "mas-orch-migrate-salt-state-doctor",
    ]
    assert arguments(plan("delegated")["mas-orch-migrate-salt-state-mas"])[1].get("require") is None


@pytest.mark.parametrize(
    ("peppers", "synapse_has"),
    [
        ((b"Pepper-0001", b"Pepper-0002"), "password_config.pepper in homeserver.yaml"),
        ((None, b"Pepper-0001"), "password_config.pepper in homeserver.yaml"),  # mas:synapse:pepper forgotten
        ((b"Pepper-0001", None), "password_config.pepper in homeserver.yaml"),
    ],
)
def test_a_migration_is_refused_when_mas_would_verify_passwords_with_another_pepper(peppers, synapse_has):
    master = Master("none", peppers=peppers)
    with pytest.raises(orch.PlanError) as err:
        orch.migrate({}, master)
    assert str(err.value) == (
        f"Synapse's pepper on synapse ({synapse_has}) is not the one MAS on mas-db would verify the migrated passwords"
        " with (mas:synapse:pepper): every password user would be locked out after the migration. Set"
        " mas:synapse:pepper in the MAS minion's pillar to Synapse's password_config.pepper (or remove it where"
        " Synapse has none). Nothing was stopped or migrated"
    )
    # one fresh nonce for both sides, never the pepper
    assert len(master.nonces) == 2 and master.nonces[0] == master.nonces[1]
    assert roles.NONCE.fullmatch(master.nonces[0])
    assert all(b"Pepper" not in repr(ask).encode() for ask in master.asked)
    again = Master("none", peppers=peppers)
    with pytest.raises(orch.PlanError):
        orch.migrate({}, again)
    assert again.nonces[0] != master.nonces[0]


def test_the_same_pepper_or_none_on_both_sides_or_a_synapse_minion_down_is_no_refusal():
    for peppers in ((b"Pepper-0001", b"Pepper-0001"), (None, None), (b"Pepper-0001", "down")):
        states = orch.migrate({}, Master("none", peppers=peppers))
        assert next(iter(states)) == "mas-orch-migrate-salt-function-check"


@pytest.mark.parametrize(
    ("module", "answer", "message"),
    [
        (
            "mas_synapse",
            {"ret": "'mas_synapse.pepper_digest' is not available.", "retcode": 254},
            "synapse did not answer mas_synapse.pepper_digest: 'mas_synapse.pepper_digest' is not available. (the"
            " formula synced there? `salt synapse saltutil.sync_all`)",
        ),
        (
            "mas_synapse",
            {"ret": "Traceback ... yaml.scanner.ScannerError", "retcode": 1},
            "synapse did not answer mas_synapse.pepper_digest: Traceback ... yaml.scanner.ScannerError",
        ),
        (
            "mas_synapse",
            {"ret": {"digest": "Pepper-0001", "source": "x"}, "retcode": 0},
            "synapse did not answer mas_synapse.pepper_digest: {'digest': 'Pepper-0001'",
        ),
        (
            "mas_syn2mas",
            {"ret": "'mas_syn2mas.pepper_digest' is not available.", "retcode": 254},
            "mas-db did not answer mas_syn2mas.pepper_digest",
        ),
    ],
)
def test_a_minion_that_answers_an_error_refuses_the_migration(module, answer, message):
    """Not compared is not the same pepper: a minion that answers an error (the formula not synced there, Synapse's
    config unreadable, anything but a digest) refuses the plan, as a different pepper does."""

    class Broken(Master):
        def __call__(self, tgt, fun, **kwargs):
            found = super().__call__(tgt, fun, **kwargs)
            return {next(iter(found)): dict(answer)} if fun == f"{module}.pepper_digest" else found

    with pytest.raises(orch.PlanError) as err:
        orch.migrate({}, Broken("none"))
    assert message in str(err.value) and "nothing was stopped" in str(err.value)


@pytest.mark.parametrize("service", [None, "", "ssh; x --now", "-matrix-synapse", "matrix synapse", "a\n"])
def test_the_synapse_service_the_mas_minion_names_is_a_unit_name(service):
    """What the master stops on the Synapse minions comes from the MAS minion: a systemd unit name or nothing."""

    class Naming(Master):
        def __call__(self, tgt, fun, **kwargs):
            found = super().__call__(tgt, fun, **kwargs)
            if fun == "mas_syn2mas.verdict":
                found["mas-db"]["ret"]["synapse_service"] = service
            return found

    with pytest.raises(orch.PlanError, match=r"gave no Synapse service the master may stop \(mas:synapse:service"):
        orch.migrate({}, Naming("none"))


def test_a_mas_that_verifies_no_migrated_password_asks_no_synapse_minion():
    class NoPasswords(Master):
        def __call__(self, tgt, fun, **kwargs):
            found = super().__call__(tgt, fun, **kwargs)
            if fun == "mas_syn2mas.pepper_digest":
                found["mas-db"]["ret"]["digest"] = None
            return found

    master = NoPasswords("none", peppers=(b"Pepper-0001", b"Pepper-0002"))
    orch.migrate({}, master)
    assert master.asked == [VERDICT, PEPPERS[0]]


def test_a_rolled_back_migration_is_not_migrated_again_without_a_reset():
    with pytest.raises(orch.PlanError, match=r"records a migration rolled back .*mas_syn2mas.reset confirm=True"):
        plan("rolled_back")


def test_targets_by_grains_reach_every_step_and_the_nested_delegation():
    pillar = {"mas": {"orch": {"targets": {"mas": "G@matrix:mas", "synapse": "G@matrix:synapse"}}}}
    master = Master("none")
    states = orch.migrate(pillar, master)
    assert master.asked[0][0] == "G@matrix:mas"
    steps = {state_id: arguments(body)[1] for state_id, body in states.items()}
    assert steps["mas-orch-migrate-salt-function-stop"]["tgt"] == "G@matrix:synapse"
    assert steps["mas-orch-migrate-salt-state-syn2mas"]["tgt"] == "G@matrix:mas"
    assert steps["mas-orch-migrate-salt-state-proxy"]["tgt"] == "I@mas:roles:proxy"
    nested = steps["mas-orch-migrate-salt-runner-delegate"]["pillar"]["mas"]["orch"]["targets"]
    assert nested["synapse"] == "G@matrix:synapse" and nested["database"] == "I@mas:roles:database"


def test_delegation_passes_the_mas_minions_word_to_the_synapse_minions_then_records_it_there():
    master = Master("verified")
    states = orch.delegate({"mas": {"orch": {"migration_in_progress": False}}}, master)
    assert list(states) == ["mas-orch-delegate-salt-state-synapse", "mas-orch-delegate-salt-state-delegation"]
    function, synapse = arguments(states["mas-orch-delegate-salt-state-synapse"])
    assert (function, synapse["tgt"], synapse["sls"]) == ("salt.state", "I@mas:roles:synapse", "mas.synapse")
    assert synapse["pillar"] == {
        "mas": {"migration_in_progress": False, "syn2mas": {"mas_phase": "verified", "mas_rollback": ROLLBACK}}
    }
    function, record = arguments(states["mas-orch-delegate-salt-state-delegation"])
    assert (function, record["tgt"], record["sls"]) == ("salt.state", "I@mas:roles:mas", "mas.syn2mas.delegation")
    assert record["pillar"] == {"mas": {"migration_in_progress": False}}
    assert record["require"] == [{"salt": "mas-orch-delegate-salt-state-synapse"}]
    # unset: the minions' own pillar decides
    plain = orch.delegate({}, Master("none"))
    assert arguments(plain["mas-orch-delegate-salt-state-synapse"])[1]["pillar"] == {
        "mas": {"syn2mas": {"mas_phase": "none", "mas_rollback": ROLLBACK}}
    }
    assert "pillar" not in arguments(plain["mas-orch-delegate-salt-state-delegation"])[1]


def test_the_rollback_verdict_reaches_the_synapse_minion_as_one_line_each():
    answer = {
        "result": True,
        "phase": "delegated",
        "rollback": {"result": False, "comment": "rollback\nrefused", "errors": ["a\n b"], "warnings": None},
        "synapse_service": "matrix-synapse",
    }
    states = orch.delegate({}, Master(answers={"mas-db": {"ret": answer, "retcode": 0}}))
    told = arguments(states["mas-orch-delegate-salt-state-synapse"])[1]["pillar"]["mas"]["syn2mas"]["mas_rollback"]
    assert told == {"result": False, "comment": "rollback refused", "errors": ["a b"], "warnings": []}


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        ({}, "no MAS minion answered mas_syn2mas.verdict (target I@mas:roles:mas, mas:orch:targets:mas)"),
        (
            {
                "a": {"ret": {"phase": "none", "rollback": {}}, "retcode": 0},
                "b": {"ret": {"phase": "none", "rollback": {}}, "retcode": 0},
            },
            "2 MAS minions answered (a, b): the migration's phase is one MAS minion's",
        ),
        (
            {"mas-db": {"failed": True, "ret": "Minion did not return. [No response]"}},
            "the MAS minion mas-db did not answer mas_syn2mas.verdict: Minion did not return. [No response]",
        ),
        (
            {"mas-db": {"ret": "'mas_syn2mas.verdict' is not available.", "retcode": 254}},
            "the MAS minion mas-db did not answer mas_syn2mas.verdict: 'mas_syn2mas.verdict' is not available.",
        ),
        ({"mas-db": {"ret": {"phase": "done", "rollback": {}}, "retcode": 0}}, "did not answer mas_syn2mas.verdict"),
    ],
)
def test_a_plan_needs_one_mas_minion_that_answers(answers, message):
    with pytest.raises(orch.PlanError) as err:
        orch.migrate({}, Master(answers=answers))
    assert message in str(err.value)
    with pytest.raises(orch.PlanError):
        orch.delegate({}, Master(answers=answers))


def test_a_master_that_cannot_publish_is_said_so():
    def broken(*args, **kwargs):
        raise RuntimeError("The salt master could not be contacted. Is master running?")

    with pytest.raises(orch.PlanError, match=r"could not be asked mas_syn2mas.verdict: The salt master could not"):
        orch.delegate({}, broken)


@pytest.mark.parametrize(
    ("orch_pillar", "message"),
    [
        ({"targets": {"web": "G@x:y"}}, "mas:orch:targets:web: not a role"),
        ({"targets": {"mas": "G@x:y; rm -rf /"}}, "mas:orch:targets:mas: must be a compound target"),
        ({"targets": ["G@x:y"]}, "mas:orch:targets must be a mapping"),
        ({"migration_in_progress": "yes"}, "mas:orch:migration_in_progress must be true or false"),
        ("G@x:y", "mas:orch must be a mapping"),
    ],
)
def test_bad_runner_pillar_refuses_every_plan_before_anything_is_asked(orch_pillar, message):
    master = Master()
    for build in (orch.deploy, lambda p: orch.delegate(p, master), lambda p: orch.migrate(p, master)):
        with pytest.raises(orch.PlanError, match=message):
            build({"mas": {"orch": orch_pillar}})
    assert master.asked == []
