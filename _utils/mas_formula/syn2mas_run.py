"""The machinery of a syn2mas run: ``mas-cli syn2mas`` run and told, the check, a dry run, the real migration step by step (preflight, check, backup check, stop, backup, migrate, verify, start) under the phase marker's lock, and where Synapse stands after each outcome.

On a MAS minion without Synapse (``mas:roles``) the run never stops or starts
Synapse: it runs on its own minion, where ``mas.orch.migrate`` stops it before
the run and starts it again after a failure; here it is only probed over HTTP
(:func:`synapse_elsewhere`), and a real run is refused while it answers.

Helpers get no Salt dunders. What a run asks of the minion comes in a
:class:`Host` the ``mas_syn2mas`` module builds from ``__salt__``
(``service.status``/``stop``/``start``, ``cmd.run_all``) and the formula's
one HTTP client (``mas_formula.http.answers``); what it reads from pillar
comes in the run's context, a dict the module prepares: ``mas`` (the map),
``opts``, ``marker``, ``files`` and ``conf`` (Synapse's pre-MAS config),
``file_problems``, ``common`` and ``real`` (what refuses any run, a real one),
``secrets`` (to scrub), ``mas_database`` (MAS's connection data, with its
password) and ``pepper`` (``mas:synapse:pepper``).
"""

import logging
import os
import re
import signal
import time
import urllib.parse

from salt.exceptions import CommandExecutionError

from mas_formula import (
    syn2mas_backup,
    syn2mas_db,
    syn2mas_marker,
    syn2mas_output,
    syn2mas_preflight,
    syn2mas_verify,
)

log = logging.getLogger(__name__)

result = syn2mas_output.result

#: The exit codes of a mas-cli syn2mas that ran to its end (done, errors found, warnings only).
EXIT_DONE = (syn2mas_output.EXIT_OK, syn2mas_output.EXIT_ERRORS, syn2mas_output.EXIT_WARNINGS)


class Host:
    """What a run asks of the minion, as callables (the module's are Salt's functions and the formula's HTTP
    client; the unit tests give stand-ins for the outside world).

    ``service_status(name)``, ``service_stop(name)``, ``service_start(name)``
        Salt's ``service.*``: whether the service runs, True when it stopped or started.
    ``run_all(argv, **kwargs)``
        Salt's ``cmd.run_all``: ``{"retcode", "stdout", "stderr"}``.
    ``answers(url)``
        True when something answers HTTP at ``url``.
    """

    __slots__ = ("answers", "run_all", "service_start", "service_status", "service_stop")

    def __init__(self, service_status, service_stop, service_start, run_all, answers):
        self.service_status = service_status
        self.service_stop = service_stop
        self.service_start = service_start
        self.run_all = run_all
        self.answers = answers


def synapse_url(mas):
    """Where Synapse answers when it runs (``mas:synapse:endpoint``'s client versions)."""
    endpoint = mas["synapse"]["endpoint"]
    return urllib.parse.urljoin(endpoint if endpoint.endswith("/") else endpoint + "/", "_matrix/client/versions")


def mas_url(mas):
    """Where MAS answers when it runs (its health check)."""
    return mas["api"]["health_url"]


def synapse_elsewhere(mas):
    """True on a MAS minion without Synapse (``mas:roles``): Synapse is stopped and started on its own minion
    (``mas.orch.migrate`` does it there); a run here only probes it over HTTP (``mas:synapse:endpoint``)."""
    return not mas["role"]["synapse"]


def _on_its_minion(mas):
    """The words for a Synapse on another minion: where it runs, and how it is started there."""
    name = mas["synapse"]["service"]
    return (
        f"it runs on another minion (mas:roles here: {', '.join(mas['roles'])}): `salt <its minion> service.start "
        f"{name}` starts it there (salt-run state.orchestrate mas.orch.migrate does after a failure)"
    )


def argv(mas, opts, files, action, dry_run=False):
    """``bin/mas-cli syn2mas --synapse-config <file>... <action> [--dry-run]`` (a list, never a shell string)."""
    args = [mas["paths"]["mas_cli"], "syn2mas"]
    for path in files:
        args += ["--synapse-config", path]
    if opts["synapse_database_uri"]:
        args += ["--synapse-database-uri", opts["synapse_database_uri"]]
    if opts["ignore_missing_auth_providers"]:
        args.append("--ignore-missing-auth-providers")
    args.append(action)
    if dry_run:
        args.append("--dry-run")
    return args


def run_cli(host, mas, args, opts, files, secrets):
    """Run ``args`` (never logged: it may carry a database URI) and parse it: ``{exit_code, errors, warnings,
    summary}``, scrubbed.

    With the docker runtime, ``MAS_CLI_READONLY_MOUNTS`` asks the wrapper to
    mount Synapse's config ``files`` read-only at the same paths.
    """
    env = {"MAS_CLI_READONLY_MOUNTS": ":".join(files)} if mas.get("runtime") == "docker" else None
    res = host.run_all(
        args,
        python_shell=False,
        output_loglevel="quiet",
        ignore_retcode=True,
        timeout=opts["timeout"],
        env=env,
    )
    stdout, stderr = (
        syn2mas_output.scrub(res.get("stdout", ""), secrets),
        syn2mas_output.scrub(res.get("stderr", ""), secrets),
    )
    if res["retcode"] == 1 and not stderr and re.search(r" : Timed out after \d+ seconds$", stdout):
        # Salt killed it (SIGKILL) after mas:syn2mas:timeout and says "exit 1" with the command as its output
        return {
            "exit_code": -signal.SIGKILL,
            "errors": [
                f"mas-cli did not finish within {opts['timeout']} s (mas:syn2mas:timeout), so Salt killed it: "
                "raise mas:syn2mas:timeout for a homeserver this big, then run again"
            ],
            "warnings": [],
            "summary": "",
        }
    errors, warnings, fatal = syn2mas_output.parse_output(stdout, stderr)
    if fatal:
        errors.append(fatal)
    elif res["retcode"] not in EXIT_DONE and not errors:
        last = syn2mas_output.last_error_line(stderr + "\n" + stdout)
        said = f"its last error line: {last[-500:]}" if last else "it logged no error"
        if syn2mas_output.signal_name(res["retcode"]) == signal.SIGKILL:
            said += (
                ". SIGKILL comes from outside mas-cli (`kill -9`, a supervisor, the kernel's out-of-memory killer: "
                "see `journalctl -k`)"
            )
        errors.append(f"{syn2mas_output.ended_as(res['retcode'])}: {said}")
    return {
        "exit_code": res["retcode"],
        "errors": errors,
        "warnings": warnings,
        "summary": syn2mas_output.summary_of(stderr + "\n" + stdout),
    }


def preflight(ctx):
    """The native checks (``syn2mas_preflight.preflight``) of the run's context."""
    return syn2mas_preflight.preflight(
        ctx["mas"],
        ctx["opts"],
        ctx["marker"],
        ctx["files"],
        ctx["conf"],
        ctx["secrets"],
        ctx["mas_database"],
        ctx["pepper"],
    )


def verification(ctx):
    """``syn2mas_verify.verify`` of the run's context, with a database it cannot read as an error of the
    verification."""
    try:
        return syn2mas_verify.verify(
            ctx["mas"], ctx["opts"], ctx["conf"], ctx["files"], ctx["secrets"], ctx["mas_database"]
        )
    except (syn2mas_db.Unreachable, *syn2mas_db.db_errors()) as exc:
        return {
            "errors": [f"the verification could not run: {syn2mas_output.scrub(str(exc), ctx['secrets'])}"],
            "counts": {},
            "missing": {},
        }


# --------------------------------------------------------------------------
# The services: Synapse and MAS stopped for a real run, Synapse started again
# --------------------------------------------------------------------------


def unstoppable(mas, opts, synapse_up, mas_up):
    """Synapse or MAS answering that a real run would not stop: refused before anything runs or stops."""
    problems = []
    if synapse_up and synapse_elsewhere(mas):
        problems.append(
            f"Synapse answers at {synapse_url(mas)} and runs on another minion (mas:roles here: "
            f"{', '.join(mas['roles'])}): stop it there first (salt-run state.orchestrate mas.orch.migrate does)"
        )
    elif synapse_up and not opts["stop_services"]:
        problems.append(
            f"Synapse answers at {synapse_url(mas)}: stop it yourself first (mas:syn2mas:stop_services is false)"
        )
    if mas_up and not opts["stop_services"]:
        problems.append(f"MAS answers at {mas_url(mas)}: stop it yourself first (mas:syn2mas:stop_services is false)")
    elif mas_up and not mas["service"]["manage"]:
        problems.append(
            f"MAS answers at {mas_url(mas)} and the formula does not manage its service (mas:service:manage is "
            "false), so it will not stop it: stop MAS yourself, then migrate (syn2mas needs MAS stopped: it renames "
            "and fills MAS's tables)"
        )
    return problems


def stop(host, mas, opts):
    """Stop Synapse and a managed MAS (when they run): ``(stopped, problems)``; ``stopped`` lists ``(kind, name)``."""
    stopped, problems = [], []
    if not opts["stop_services"]:
        return stopped, problems
    targets = []
    if not synapse_elsewhere(mas):  # elsewhere: stopped on its own minion before this run
        targets.append(("synapse", mas["synapse"]["service"], synapse_url(mas), "mas:synapse:service"))
    if mas["service"]["manage"]:
        targets.append(("mas", mas["service"]["name"], mas_url(mas), "mas:service:name"))
    for kind, name, url, key in targets:
        if host.service_status(name) or host.answers(url):
            if host.service_stop(name):
                stopped.append((kind, name))
            else:
                problems.append(
                    f"service.stop {name} failed: {'Synapse' if kind == 'synapse' else 'MAS'} could not be stopped. "
                    f"Is {key} ({name!r}) the right service? Or stop it yourself and set "
                    "mas:syn2mas:stop_services: false"
                )
    return stopped, problems


def still_answering(host, mas, opts, stopped):
    """Problems: Synapse or MAS still answering (after waiting up to ``stop_timeout`` for a stop)."""
    deadline = time.monotonic() + (opts["stop_timeout"] if stopped else 0)
    while True:
        up = [(what, url) for what, url in (("Synapse", synapse_url(mas)), ("MAS", mas_url(mas))) if host.answers(url)]
        if not up or time.monotonic() >= deadline:
            break
        time.sleep(1)
    ours = {kind for kind, _ in stopped}
    problems = []
    for what, url in up:
        if what.lower() in ours:
            how = "after service.stop"
        elif what == "Synapse" and synapse_elsewhere(mas):
            how = "(it runs on another minion: stop it there)"
        elif not opts["stop_services"]:
            how = "(mas:syn2mas:stop_services is false: stop it yourself)"
        elif what == "MAS" and not mas["service"]["manage"]:
            how = "(mas:service:manage is false: stop it yourself)"
        else:
            how = "(it started while this run stopped the services: stop it)"
        problems.append(
            f"{what} still answers at {url} {how}; a real migration needs it stopped (Synapse: a consistent copy; "
            "MAS: an untouched database)"
        )
    return problems


def start(host, stopped, kind):
    """Start the services of ``kind`` in ``stopped``: ``(started, still_down)``."""
    started, down = [], []
    for what, name in stopped:
        if what == kind:
            if host.service_start(name):
                started.append(name)
            else:
                log.warning("mas_syn2mas: service.start %s failed", name)
                down.append(name)
    return started, down


def synapse_down(names):
    """The errors saying Synapse stayed down, and how to start it."""
    return [
        f"Synapse is DOWN: service.start {name} failed. It is still authoritative (no drop-in): start it with "
        f"`salt-call service.start {name}` (systemctl start {name}) and read its log"
        for name in names
    ]


def synapse_not_running(mas):
    """The sentence saying that Synapse does not answer though this run did not stop it."""
    name = mas["synapse"]["service"]
    if synapse_elsewhere(mas):
        return f" Synapse does not answer at {synapse_url(mas)}: it is still authoritative; {_on_its_minion(mas)}."
    return (
        f" Synapse does not answer at {synapse_url(mas)} (this run did not stop it): it is still authoritative; "
        f"start it with `salt-call service.start {name}`."
    )


def ensure_synapse(host, mas, opts, phase, test):
    """Whether Synapse answers, and start it while it is still authoritative after a migration when
    ``opts["start_synapse_after"]`` asks (``mas_syn2mas.ensure_synapse``)."""
    url, name = synapse_url(mas), mas["synapse"]["service"]
    if host.answers(url):
        return result(True, phase, f"Synapse answers at {url}", answers=True, changes={})
    down = f"Synapse does not answer at {url}"
    if synapse_elsewhere(mas):  # never started from here
        return result(True, phase, f"{down}: {_on_its_minion(mas)}", answers=False, changes={})
    if phase not in ("migrated", "verified", "migrated_unverified") or os.path.exists(syn2mas_marker.dropin(mas)):
        return result(True, phase, f"{down}: start it with `salt-call service.start {name}`", answers=False, changes={})
    if not opts["start_synapse_after"]:
        why = f"it is still authoritative; start it with `salt-call service.start {name}`"
        if phase in syn2mas_marker.MIGRATED_PHASES:
            why = (
                "it stays stopped until it delegates to MAS (mas:syn2mas:start_synapse_after is false; "
                f"`salt-call service.start {name}` starts it meanwhile, without delegation)"
            )
        return result(True, phase, f"{down}: {why}", answers=False, changes={})
    changes = {"synapse": {"old": "not answering", "new": f"started ({name})"}}
    if test:
        return result(
            True,
            phase,
            f"{down}: it would be started (mas:syn2mas:start_synapse_after)",
            answers=False,
            changes=changes,
        )
    if not start(host, [("synapse", name)], "synapse")[0]:
        return result(
            False, phase, f"{down} and could not be started", errors=synapse_down([name]), answers=False, changes={}
        )
    return result(
        True,
        phase,
        f"Synapse did not answer at {url}: it was started again (service.start {name}, as "
        "mas:syn2mas:start_synapse_after asks; still without delegation)",
        answers=True,
        changes=changes,
    )


# --------------------------------------------------------------------------
# The check and the dry run: safe while Synapse runs
# --------------------------------------------------------------------------


def check(host, ctx):
    """The preflight, then ``mas-cli syn2mas check``, in one report (``mas_syn2mas.check``)."""
    mas, opts, marker = ctx["mas"], ctx["opts"], ctx["marker"]
    phase = syn2mas_marker.phase_of(marker)
    if phase in syn2mas_marker.DONE_PHASES:
        return result(False, phase, "syn2mas check refused", errors=[syn2mas_marker.already(mas, marker)])
    pre = preflight(ctx)
    pre["errors"] = ctx["file_problems"] + pre["errors"]
    extra = {"counts": pre["counts"], "notes": pre["notes"]}
    blockers = ctx["common"][len(ctx["file_problems"]) :]
    if blockers:
        return result(
            False, phase, "syn2mas check refused", errors=pre["errors"] + blockers, warnings=pre["warnings"], **extra
        )
    args = argv(mas, opts, ctx["files"], "check")
    run = run_cli(host, mas, args, opts, ctx["files"], ctx["secrets"])
    ok, errors, warnings, comment = syn2mas_output.merge_check(pre, run, opts["accept_warnings"], phase)
    return cli_result(ok, phase, comment, run, args, ctx["secrets"], errors, warnings, **extra)


def cli_result(ok, phase, comment, run, args, secrets, errors, warnings, **extra):
    """:func:`result` of a ``mas-cli syn2mas`` run: its exit code, summary and command line (secrets hidden)."""
    return result(
        ok,
        phase,
        comment,
        exit_code=run["exit_code"],
        errors=errors,
        warnings=warnings,
        summary=run["summary"],
        command=syn2mas_output.displayed(args, secrets),
        **extra,
    )


def dry_run(host, ctx):
    """The preflight, then ``mas-cli syn2mas migrate --dry-run``; the phase never changes."""
    mas, opts, marker, files, secrets = ctx["mas"], ctx["opts"], ctx["marker"], ctx["files"], ctx["secrets"]
    phase = syn2mas_marker.phase_of(marker)
    if phase in syn2mas_marker.DONE_PHASES:
        return result(
            False, phase, "syn2mas dry run refused", errors=[syn2mas_marker.already(mas, marker)], dry_run=True
        )
    if ctx["common"]:
        return result(False, phase, "syn2mas dry run refused", errors=ctx["common"], dry_run=True)
    pre = preflight(ctx)
    if pre["errors"]:
        return result(
            False,
            phase,
            "syn2mas dry run refused: the preflight found blocking errors",
            errors=pre["errors"],
            warnings=pre["warnings"],
            counts=pre["counts"],
            dry_run=True,
        )
    args = argv(mas, opts, files, "migrate", dry_run=True)
    run = run_cli(host, mas, args, opts, files, secrets)
    errors = list(run["errors"])
    warnings = pre["warnings"] + [w for w in run["warnings"] if w not in pre["warnings"]]
    ok = run["exit_code"] == syn2mas_output.EXIT_OK
    if ok and warnings and not opts["accept_warnings"]:
        errors.append(
            f"the dry run completed with {len(warnings)} warning(s): a real migration is refused until "
            "they are accepted (accept_warnings=True, pillar mas:syn2mas:accept_warnings: true)"
        )
    hint = syn2mas_output.hint_for(errors, phase)
    if hint:
        errors.append(hint)
    comment = "syn2mas dry run completed (phase unchanged)"
    if not ok:
        comment = f"syn2mas dry run failed ({syn2mas_output.ended_as(run['exit_code'])})"
    return cli_result(
        ok and not errors, phase, comment, run, args, secrets, errors, warnings, counts=pre["counts"], dry_run=True
    )


# --------------------------------------------------------------------------
# The real migration
# --------------------------------------------------------------------------


def migrate(host, ctx):
    """``mas_syn2mas.migrate``: a dry run, or the real migration, refused (nothing run or stopped) unless
    everything it needs holds; the real run holds the phase marker's lock and starts from the marker read
    under it."""
    mas, opts, marker = ctx["mas"], ctx["opts"], ctx["marker"]
    phase = syn2mas_marker.phase_of(marker)
    if opts["dry_run"]:
        return dry_run(host, ctx)
    if phase in syn2mas_marker.DONE_PHASES:
        return result(
            False, phase, "syn2mas migration refused: already migrated", errors=[syn2mas_marker.already(mas, marker)]
        )
    refusals = ctx["common"] + ctx["real"]
    probe_synapse = synapse_elsewhere(mas) or not opts["stop_services"]
    refusals += unstoppable(mas, opts, probe_synapse and host.answers(synapse_url(mas)), host.answers(mas_url(mas)))
    if refusals:
        return result(False, phase, "syn2mas migration refused (nothing was run or stopped)", errors=refusals)
    with syn2mas_marker.exclusive(mas):
        marker = syn2mas_marker.read_marker(mas)  # another run may have finished since the context was read
        phase = syn2mas_marker.phase_of(marker)
        if phase in syn2mas_marker.DONE_PHASES:
            return result(
                False,
                phase,
                "syn2mas migration refused: already migrated",
                errors=[syn2mas_marker.already(mas, marker)],
            )
        return _real_run(host, dict(ctx, marker=marker))


def _real_run(host, ctx):
    """Preflight, check, backup check, stop, backup, migrate, verify, start: each a step; the phase recorded."""
    mas, opts, marker, files, secrets = ctx["mas"], ctx["opts"], ctx["marker"], ctx["files"], ctx["secrets"]
    phase_before = syn2mas_marker.phase_of(marker)
    steps = syn2mas_output.Steps()
    services = {"stopped": [], "started": [], "down": []}
    stopped = []

    def synapse_after(asked=False):
        """Start the Synapse this run stopped (``asked``: also one found down, for start_synapse_after) and say
        where Synapse stands: a sentence for the comment ("" when it answers and nothing happened to it)."""
        targets = [entry for entry in stopped if entry[0] == "synapse"]
        if not targets and asked and not synapse_elsewhere(mas) and not host.answers(synapse_url(mas)):
            targets = [("synapse", mas["synapse"]["service"])]
        if targets:
            services["started"], services["down"] = steps.run(
                "start", start, host, targets, "synapse", ok=lambda started: not started[1]
            )
        if services["down"]:
            return f" Synapse is DOWN: service.start {services['down'][0]} failed."
        if services["started"]:
            return " Synapse (still authoritative) was started again."
        return "" if host.answers(synapse_url(mas)) else synapse_not_running(mas)

    def refused(comment, errors, warnings=(), **extra):
        after = synapse_after()
        return result(
            False,
            phase_before,
            f"syn2mas migration refused: {comment}.{after} {steps.text()}",
            errors=list(errors) + synapse_down(services["down"]),
            warnings=warnings,
            steps=steps,
            phase_before=phase_before,
            services=services,
            **extra,
        )

    pre = steps.run("preflight", preflight, ctx, ok=lambda found: not found["errors"])
    if pre["errors"]:
        return refused("the preflight found blocking errors", pre["errors"], pre["warnings"], counts=pre["counts"])
    check_run = steps.run(
        "check",
        run_cli,
        host,
        mas,
        argv(mas, opts, files, "check"),
        opts,
        files,
        secrets,
        ok=lambda run: run["exit_code"] in (syn2mas_output.EXIT_OK, syn2mas_output.EXIT_WARNINGS),
    )
    ok, errors, warnings, comment = syn2mas_output.merge_check(pre, check_run, opts["accept_warnings"], phase_before)
    if not ok:
        return refused(comment, errors, warnings, exit_code=check_run["exit_code"], summary=check_run["summary"])
    database = syn2mas_db.synapse_database(ctx["conf"], opts, files)
    plan = None
    if opts["backup"]:
        plan, problems = steps.run(
            "backup check", syn2mas_backup.backup_plan, mas, opts, database, secrets, ok=lambda planned: not planned[1]
        )
        if problems:
            return refused("no room for the backup (nothing was stopped)", problems, warnings)
    stopped, running = steps.run("stop", stop, host, mas, opts, ok=lambda done: not done[1])
    services["stopped"] = [name for _, name in stopped]
    running += still_answering(host, mas, opts, stopped)
    if running:
        refusal = refused("services still running", running, warnings)
        services["started"] += start(host, stopped, "mas")[0]
        return refusal
    taken = None
    if plan is not None:
        try:
            taken = steps.run("backup", syn2mas_backup.backup, mas, opts, database, plan, secrets, host.run_all)
        except CommandExecutionError as exc:
            return refused("the backup failed, nothing was migrated", [str(exc)], warnings)
    else:
        steps.skip("backup", "mas:syn2mas:backup is false")
    args = argv(mas, opts, files, "migrate")
    record = {
        "mas_config": mas["paths"]["config_file"],
        "synapse_configs": files,
        "command": syn2mas_output.displayed(args, secrets),
        "accepted_warnings": warnings,
        "backup": taken,
        "preflight_counts": pre["counts"],
    }
    marker = syn2mas_marker.set_phase(
        mas, marker, "migrating", started_at=syn2mas_marker.utc_now(), finished_at=None, **record
    )
    run = steps.run(
        "migrate",
        run_cli,
        host,
        mas,
        args,
        opts,
        files,
        secrets,
        ok=lambda done: done["exit_code"] == syn2mas_output.EXIT_OK,
    )
    last = {
        "at": syn2mas_marker.utc_now(),
        "exit_code": run["exit_code"],
        "result": run["exit_code"] == syn2mas_output.EXIT_OK,
        "errors": run["errors"],
        "warnings": run["warnings"],
        "summary": run["summary"],
    }
    common = {
        "exit_code": run["exit_code"],
        "summary": run["summary"],
        "phase_before": phase_before,
        "services": services,
        "steps": steps,
        "command": record["command"],
        "backup": taken,
    }
    if run["exit_code"] != syn2mas_output.EXIT_OK:
        marker = syn2mas_marker.set_phase(mas, marker, "migrating", last_run=last)
        errors = list(run["errors"]) or [syn2mas_output.ended_as(run["exit_code"])]
        hint = syn2mas_output.hint_for(errors, "migrating")
        if hint:
            errors.append(hint)
        after = synapse_after()
        syn2mas_marker.set_phase(mas, marker, "migrating", steps=list(steps))
        return result(
            False,
            "migrating",
            f"syn2mas migration failed: {syn2mas_output.ended_as(run['exit_code'])}; the phase stays migrating and "
            f"the next run retries (syn2mas resets the partial migration).{after} MAS stays stopped. {steps.text()}",
            errors=errors + synapse_down(services["down"]),
            warnings=run["warnings"],
            **common,
        )
    verified_by = steps.run("verify", verification, ctx, ok=lambda found: not found["errors"])
    verified = not verified_by["errors"]
    phase = "verified" if verified else "migrated_unverified"
    marker = syn2mas_marker.set_phase(
        mas,
        marker,
        phase,
        finished_at=last["at"],
        last_run=last,
        verification=dict(verified_by, at=syn2mas_marker.utc_now(), result=verified),
    )
    if not verified:
        after = synapse_after()
        syn2mas_marker.set_phase(mas, marker, phase, steps=list(steps))
        return result(
            False,
            phase,
            "syn2mas migration completed but its verification FAILED: MAS lacks what Synapse has (phase "
            f"migrated_unverified; Synapse must not delegate yet).{after} MAS stays stopped. Next: "
            f"{syn2mas_marker.next_step(mas, marker, phase)}. {steps.text()}",
            errors=verified_by["errors"] + synapse_down(services["down"]),
            warnings=run["warnings"],
            verification=verified_by,
            **common,
        )
    next_step = "set mas:migration_in_progress: false and apply `mas` (Synapse delegates to MAS, MAS starts)"
    after = ""
    if opts["start_synapse_after"]:
        after = synapse_after(asked=True)
    else:
        steps.skip("start", "Synapse stays stopped until it delegates to MAS (mas:syn2mas:start_synapse_after)")
        if not host.answers(synapse_url(mas)):
            next_step += "; Synapse stays stopped until then"
    syn2mas_marker.set_phase(mas, marker, phase, steps=list(steps))
    where = (
        f" Backup: {taken['path']} ({syn2mas_backup.human_size(taken['size'])})."
        if taken
        else " No backup (mas:syn2mas:backup)."
    )
    return result(
        not services["down"],
        phase,
        f"syn2mas migration completed and verified.{where} Next: {next_step}.{after} {steps.text()}",
        errors=synapse_down(services["down"]),
        warnings=run["warnings"],
        verification=verified_by,
        **common,
    )
