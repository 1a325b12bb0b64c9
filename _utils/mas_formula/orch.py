"""The orchestrations of a deployment on several minions: `mas.orch.deploy`, `mas.orch.migrate` and `mas.orch.delegate`, built as the state data the master runs (`salt-run state.orchestrate mas.orch.<name>`).

The SLS files of ``mas/orch/`` are rendered on the master. They import this
module from the master's synced helpers (``salt-run saltutil.sync_all``, as the
ext_pillar ``mas_secrets`` does) and hand it the runner's pillar and, where a
plan depends on where the migration stands, Salt's ``saltutil.cmd`` to ask the
MAS minion (``mas_syn2mas.verdict``). Each step targets the minions of one role
(``I@mas:roles:<role>``, or the compound target of ``mas:orch:targets:<role>``)
and requires the step before it, so a failure stops the rest.

* :func:`deploy`: database, MAS, Synapse's side (:func:`delegate`, nested),
  proxy, doctor.
* :func:`delegate`: ``mas.synapse`` on the Synapse minions with the MAS minion's
  phase and rollback verdict in their pillar (``mas:syn2mas:mas_phase``,
  ``mas:syn2mas:mas_rollback``: the guards there have no marker of their own),
  then ``mas.syn2mas.delegation`` on the MAS minion, which records what Synapse
  did. Rendered when it runs, so it asks the phase as it is then.
* :func:`migrate`: from the MAS minion's phase on: the peppers compared
  (:func:`compare_peppers`: refused when MAS would not verify Synapse's
  passwords), check (on the MAS minion),
  stop Synapse (on its minion), the migration (``mas.syn2mas``: backup, migrate,
  verify, under the phase marker's lock), MAS started, delegation, proxy,
  doctor; any failure from the stop on starts Synapse again on its minion. A
  rerun resumes from the phase the MAS minion recorded.
"""

import re
import secrets

from mas_formula import grammar, roles

ROLES = roles.ROLES

#: A compound target as pillar may give it: printable, no control characters, no quotes or shell metacharacters.
TARGET = re.compile(r"[A-Za-z0-9@:._*?,/=+()\[\]! -]{1,512}")

#: The phases the MAS minion answers (``none``: no migration recorded).
PHASES = ("none", "legacy_auth", "migrating", "migrated_unverified", "migrated", "verified", "delegated", "rolled_back")

#: Phases from which mas.orch.migrate runs the check and the migration itself.
TO_MIGRATE = ("none", "legacy_auth", "migrating")


class PlanError(ValueError):
    """An orchestration cannot be planned (bad runner pillar, the MAS minion's answer): the render fails, saying
    why, before any step runs."""


def _orch(pillar):
    mas = (pillar or {}).get("mas")
    orch = mas.get("orch") if isinstance(mas, dict) else None
    if orch is not None and not isinstance(orch, dict):
        raise PlanError("mas:orch must be a mapping (targets, migration_in_progress)")
    return orch or {}


def targets(pillar):
    """``{role: compound target}``: ``I@mas:roles:<role>``, or ``mas:orch:targets:<role>`` of the runner's pillar
    (or the master's own)."""
    given = _orch(pillar).get("targets")
    if not isinstance(given or {}, dict):
        raise PlanError("mas:orch:targets must be a mapping of role -> compound target")
    found = {role: f"I@mas:roles:{role}" for role in ROLES}
    for role, target in (given or {}).items():
        if role not in ROLES:
            raise PlanError(f"mas:orch:targets:{role}: not a role (known: {', '.join(ROLES)})")
        if not isinstance(target, str) or not TARGET.fullmatch(target):
            raise PlanError(f"mas:orch:targets:{role}: must be a compound target (e.g. G@roles:{role}), not {target!r}")
        found[role] = target
    return found


def migration_in_progress(pillar):
    """``mas:orch:migration_in_progress`` of the runner's pillar: ``True``/``False`` is passed to the minions' states
    as ``mas:migration_in_progress``; unset (None), their own pillar decides."""
    value = _orch(pillar).get("migration_in_progress")
    if value is not None and not isinstance(value, bool):
        raise PlanError(f"mas:orch:migration_in_progress must be true or false (or unset), not {value!r}")
    return value


def _args(**arguments):
    return [{key: value} for key, value in arguments.items() if value is not None]


def salt_state(target, sls, expect=True, pillar=None, require=None):
    """A ``salt.state`` step: ``sls`` applied on the minions of ``target``."""
    args = _args(tgt=target, tgt_type="compound", sls=sls, expect_minions=expect, pillar=pillar)
    return {"salt.state": args + ([{"require": [{"salt": require}]}] if require else [])}


def salt_function(target, function, arg=None, require=None, onfail=None):
    """A ``salt.function`` step: ``function`` called on the minions of ``target``; it fails on a minion that does
    not answer, exits non-zero or returns False."""
    args = _args(name=function, tgt=target, tgt_type="compound", arg=arg, expect_minions=True)
    if require:
        args.append({"require": [{"salt": require}]})
    if onfail:
        args.append({"onfail": [{"salt": step} for step in onfail]})
    return {"salt.function": args}


def nested(name, pillar, require=None):
    """A ``salt.runner`` step running the orchestration ``mas.orch.<name>`` with ``pillar``."""
    args = _args(name="state.orchestrate", mods=f"mas.orch.{name}", pillar=pillar)
    return {"salt.runner": args + ([{"require": [{"salt": require}]}] if require else [])}


def _one_line(text):
    return " ".join(str(text).split())


def ask_mas(cmd, target):
    """The MAS minion's ``mas_syn2mas.verdict`` (its phase, its rollback verdict, ``mas:synapse:service``), asked
    with ``cmd`` (Salt's ``saltutil.cmd``); :class:`PlanError` unless exactly one MAS minion answers it."""
    try:
        answers = cmd(target, "mas_syn2mas.verdict", tgt_type="compound", expect_minions=True, timeout=120)
    except Exception as exc:  # pylint: disable=broad-except  # whatever the client raises, the render says it
        raise PlanError(f"the MAS minion ({target}) could not be asked mas_syn2mas.verdict: {exc}") from exc
    if not answers:
        raise PlanError(
            f"no MAS minion answered mas_syn2mas.verdict (target {target}, mas:orch:targets:mas): is it up, with"
            " mas:roles in its pillar and the formula synced to it (saltutil.sync_all)?"
        )
    if len(answers) > 1:
        raise PlanError(
            f"{len(answers)} MAS minions answered ({', '.join(sorted(answers))}): the migration's phase is one MAS"
            " minion's; target exactly one (mas:orch:targets:mas)"
        )
    ((minion, answer),) = answers.items()
    ret = answer.get("ret", answer.get("return")) if isinstance(answer, dict) else answer
    if (
        not isinstance(answer, dict)
        or answer.get("failed")
        or answer.get("retcode")
        or not isinstance(ret, dict)
        or ret.get("phase") not in PHASES
        or not isinstance(ret.get("rollback"), dict)
    ):
        raise PlanError(f"the MAS minion {minion} did not answer mas_syn2mas.verdict: {_one_line(ret)[:500]}")
    rollback = dict(ret["rollback"])
    rollback["comment"] = _one_line(rollback.get("comment") or "")
    for key in ("errors", "warnings"):
        rollback[key] = [_one_line(item) for item in rollback.get(key) or []]
    return {
        "minion": minion,
        "phase": ret["phase"],
        "rollback": rollback,
        "synapse_service": ret.get("synapse_service"),
    }


#: What a minion answers of its pepper: ``none`` or an HMAC-SHA256 in hex.
DIGEST = re.compile(r"none|[0-9a-f]{64}")


def _digests(cmd, target, function, nonce):
    """``({minion: its answer}, [minions down])`` of ``function(nonce)`` on the minions of ``target``, waited for
    as long as they work on it (the master's ``timeout``); :class:`PlanError` when the master cannot ask or a
    minion answers anything but ``{"digest": none | <hex>, "source"}`` (an error, the function not synced there)."""
    try:
        answers = cmd(target, function, arg=[nonce], tgt_type="compound", expect_minions=True)
    except Exception as exc:  # pylint: disable=broad-except  # whatever the client raises, the render says it
        raise PlanError(f"the minions of {target} could not be asked {function}: {exc}") from exc
    found, down = {}, []
    for minion, answer in sorted((answers or {}).items()):
        if isinstance(answer, dict) and answer.get("failed"):
            down.append(minion)
            continue
        ret = answer.get("ret", answer.get("return")) if isinstance(answer, dict) else answer
        digest = ret.get("digest") if isinstance(ret, dict) else None
        valid = digest is None or (isinstance(digest, str) and DIGEST.fullmatch(digest))
        if not isinstance(ret, dict) or not isinstance(answer, dict) or answer.get("retcode") or not valid:
            raise PlanError(
                f"{minion} did not answer {function}: {_one_line(ret)[:300]} (the formula synced there? `salt"
                f" {minion} saltutil.sync_all`). Its pepper was not compared with the other minion's: nothing was"
                " stopped or migrated"
            )
        found[minion] = ret
    return found, down


def compare_peppers(cmd, found, mas_minion):
    """Refuse (:class:`PlanError`) a migration whose MAS minion would verify the migrated passwords with another
    pepper than Synapse's (``mas:synapse:pepper`` wrong or missing on a MAS minion that cannot read Synapse's files):
    every password user would be locked out after it. Both minions are asked for an HMAC of theirs under one fresh
    nonce (``mas_syn2mas.pepper_digest``, ``mas_synapse.pepper_digest``); the peppers never leave their minions.
    A minion that answers an error refuses too. Nothing is compared when MAS verifies no migrated password, nor with
    a Synapse minion that is down (the step that stops Synapse there fails)."""
    nonce = secrets.token_hex(16)
    mas_side, _ = _digests(cmd, found["mas"], "mas_syn2mas.pepper_digest", nonce)
    if mas_minion not in mas_side:
        raise PlanError(f"the MAS minion {mas_minion} did not answer mas_syn2mas.pepper_digest: nothing was stopped")
    mine = mas_side[mas_minion]
    if mine.get("digest") is None:
        return
    synapse_side, _ = _digests(cmd, found["synapse"], "mas_synapse.pepper_digest", nonce)
    for minion, theirs in synapse_side.items():
        if theirs.get("digest") != mine["digest"]:
            raise PlanError(
                f"Synapse's pepper on {minion} ({_one_line(theirs.get('source'))}) is not the one MAS on"
                f" {mas_minion} would verify the migrated passwords with ({_one_line(mine.get('source'))}):"
                " every password user would be locked out after the migration. Set mas:synapse:pepper in the MAS"
                " minion's pillar to Synapse's password_config.pepper (or remove it where Synapse has none)."
                " Nothing was stopped or migrated"
            )


def deploy(pillar):
    """``mas.orch.deploy``: ``mas.database``, ``mas``, Synapse's side (``mas.orch.delegate``), ``mas.proxy``, then
    ``mas.doctor``, each on the minions of its role."""
    found = targets(pillar)
    progress = migration_in_progress(pillar)
    passed = {} if progress is None else {"migration_in_progress": progress}
    given = {"mas": passed} if passed else None
    return {
        "mas-orch-deploy-salt-state-database": salt_state(found["database"], "mas.database", False, given),
        "mas-orch-deploy-salt-state-mas": salt_state(
            found["mas"], "mas", pillar=given, require="mas-orch-deploy-salt-state-database"
        ),
        "mas-orch-deploy-salt-runner-synapse": nested(
            "delegate", {"mas": {"orch": {"targets": found, **passed}}}, require="mas-orch-deploy-salt-state-mas"
        ),
        "mas-orch-deploy-salt-state-proxy": salt_state(
            found["proxy"], "mas.proxy", False, given, require="mas-orch-deploy-salt-runner-synapse"
        ),
        "mas-orch-deploy-salt-state-doctor": salt_state(
            found["mas"], "mas.doctor", pillar=given, require="mas-orch-deploy-salt-state-proxy"
        ),
    }


def delegate(pillar, cmd):
    """``mas.orch.delegate``: ``mas.synapse`` on the Synapse minions with the MAS minion's verdict in their pillar,
    then ``mas.syn2mas.delegation`` on the MAS minion."""
    found = targets(pillar)
    progress = migration_in_progress(pillar)
    verdict = ask_mas(cmd, found["mas"])
    passed = {} if progress is None else {"migration_in_progress": progress}
    told = {"mas_phase": verdict["phase"], "mas_rollback": verdict["rollback"]}
    return {
        "mas-orch-delegate-salt-state-synapse": salt_state(
            found["synapse"], "mas.synapse", pillar={"mas": {**passed, "syn2mas": told}}
        ),
        "mas-orch-delegate-salt-state-delegation": salt_state(
            found["mas"],
            "mas.syn2mas.delegation",
            pillar={"mas": passed} if passed else None,
            require="mas-orch-delegate-salt-state-synapse",
        ),
    }


def migrate(pillar, cmd):
    """``mas.orch.migrate``: the steps still to run from the MAS minion's phase on (see the module's docstring)."""
    found = targets(pillar)
    migration_in_progress(pillar)  # validated; each step gets the value it needs
    verdict = ask_mas(cmd, found["mas"])
    phase, service = verdict["phase"], verdict["synapse_service"]
    if phase == "rolled_back":
        raise PlanError(
            f"the MAS minion {verdict['minion']} records a migration rolled back (phase rolled_back): to migrate"
            " again, drop and recreate MAS's database, run `salt <MAS minion> mas_syn2mas.reset confirm=True`, then"
            " this orchestration again (docs/migration.md)"
        )
    if not grammar.CHECKS["unit"](service):
        raise PlanError(
            f"the MAS minion {verdict['minion']} gave no Synapse service the master may stop (mas:synapse:service must"
            f" be {grammar.KINDS['unit']}): {_one_line(service)[:100]}"
        )
    if phase in TO_MIGRATE:
        compare_peppers(cmd, found, verdict["minion"])
    on, off = {"mas": {"migration_in_progress": True}}, {"mas": {"migration_in_progress": False}}
    states, before, stopped = {}, None, []

    def step(state_id, body):
        nonlocal before
        states[state_id] = body
        before = state_id

    if phase in TO_MIGRATE:
        step("mas-orch-migrate-salt-function-check", salt_function(found["mas"], "mas_syn2mas.check"))
    if phase != "delegated":
        step("mas-orch-migrate-salt-function-stop", salt_function(found["synapse"], "service.stop", [service], before))
        stopped.append(before)
        if phase in ("verified", "migrated"):
            # Synapse may have run on its legacy config since the migration (an earlier run's failure started it):
            # compared again before it delegates
            step(
                "mas-orch-migrate-salt-function-verify", salt_function(found["mas"], "mas_syn2mas.verify", None, before)
            )
        else:
            step(
                "mas-orch-migrate-salt-state-syn2mas",
                salt_state(found["mas"], "mas.syn2mas", pillar=on, require=before),
            )
        stopped.append(before)
    step("mas-orch-migrate-salt-state-mas", salt_state(found["mas"], "mas", pillar=off, require=before))
    later = [before]
    orch = {"targets": found, "migration_in_progress": False}
    step("mas-orch-migrate-salt-runner-delegate", nested("delegate", {"mas": {"orch": orch}}, require=before))
    later.append(before)
    step("mas-orch-migrate-salt-state-proxy", salt_state(found["proxy"], "mas.proxy", False, off, require=before))
    later.append(before)
    step("mas-orch-migrate-salt-state-doctor", salt_state(found["mas"], "mas.doctor", pillar=off, require=before))
    later.append(before)
    if stopped:
        # a failure once Synapse is stopped: started again on its minion (its legacy config, unless delegated by then)
        states["mas-orch-migrate-salt-function-start"] = salt_function(
            found["synapse"], "service.start", [service], onfail=stopped + later
        )
    return states
