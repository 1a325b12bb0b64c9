"""Unit tests of syn2mas's run, check and states (``_modules/mas_syn2mas.py``, ``_states/mas_syn2mas.py`` and
their helpers ``mas_formula.syn2mas_*``) with the Salt loader; its guards are in ``test_mas_syn2mas_guards.py``.

The formula's other modules (the map, ``mas_synapse.config``, the scrubber and
the atomic writer) are the real ones; only the outside world is faked
(``conftest.py``, ``syn2mas_unit.py``): ``cmd.run_all`` answers like
``mas-cli syn2mas`` and ``pg_dump`` (canned upstream-shaped output and exit
codes; pg_dump writes its file), the ``service.*`` functions are mocks and
the formula's HTTP probe (``mas_formula.http.answers``) is a switch. Files
(marker, Synapse config, secrets, backups) are real, under tmp.

This tier has no PostgreSQL. The tests of a run's orchestration (the order of
its steps, what it stops, starts, records and says) opt into
``orchestration_stubs``, which stand in for the three PostgreSQL readers only:
the preflight's checks, the backup's size estimate and the verification's
comparison; the backup itself runs (pg_dump answered by ``cmd.run_all``).
Everything else runs for real: the refusals before a run, the preflight
against a PostgreSQL port nothing listens on. The preflight and the
verification against real databases are integration tests
(``test/integration/test_syn2mas*.py``).
"""

import hashlib
import json
import os
import re
import stat
from pathlib import Path

import pytest
import yaml
from salt.exceptions import CommandExecutionError, SaltInvocationError

from formula_modules import dunders
from harness.util import free_port
from mas_formula import syn2mas_marker, syn2mas_output
from syn2mas_unit import (
    DB_PASSWORD,
    DUMP,
    ERRORS_AND_WARNINGS,
    MACAROON,
    MIGRATE_OK,
    NOT_EMPTY,
    PEPPER,
    PILLAR_SMTP,
    SHARED,
    WARNINGS_ONLY,
    assert_no_secret,
    mapdata,
    marker,
    syn2mas,
    syn2mas_state,
    synapse_unreachable,
    told_straight,
)


@pytest.fixture
def configure_loader_modules(pillar, cli, services):
    """The formula's modules, with this tier's stand-ins for the outside world (``cmd.run_all``, ``service.*``)."""
    return dunders(pillar, salt={"cmd.run_all": cli, **services})


# ------------------------------------------------------------------ parsing


def test_parse_splits_errors_warnings_and_multiline_bullets():
    errors, warnings, fatal = syn2mas_output.parse_output("", ERRORS_AND_WARNINGS)
    assert errors == [
        "Guest support is enabled in the Synapse configuration.",
        "Password scheme version '1' in the MAS config must have the same secret as the `pepper` value from "
        "Synapse, so that Synapse passwords can be imported.",
    ]
    assert warnings == [
        "Synapse config has registration enabled. This must be disabled after migration before bringing Synapse "
        "back online."
    ]
    assert fatal is None


def test_parse_fatal_report_with_causes():
    stderr = (
        "2026-01-01T00:00:00Z ERROR mas_cli::commands::syn2mas:9 Failed to acquire syn2mas lock on the database.\n"
        "Error: could not connect to Synapse Postgres database\n\nCaused by:\n    connection refused\n"
    )
    errors, warnings, fatal = syn2mas_output.parse_output("", stderr)
    assert (errors, warnings) == ([], [])
    assert fatal == "Error: could not connect to Synapse Postgres database\nCaused by:\n    connection refused"
    # with RUST_BACKTRACE set, anyhow adds the stack: not for the operator's comment (the summary keeps it)
    backtrace = stderr + "\nStack backtrace:\n   0: <unknown>\n  12: __libc_start_call_main\n"
    assert syn2mas_output.parse_output("", backtrace)[2] == fatal


def test_scrub_removes_known_secrets_urls_and_colours(world):
    data = mapdata(world)
    secrets = syn2mas._known_secrets(data, yaml.safe_load(world["hs"].read_text()))
    text = (
        f"\x1b[31mERROR\x1b[0m pepper={PEPPER} db={DB_PASSWORD} mac={MACAROON} shared={SHARED} smtp={PILLAR_SMTP} "
        "uri=postgresql://synapse:Uri-Pass-0006@db/synapse"
    )
    scrubbed = syn2mas_output.scrub(text, secrets)
    assert_no_secret(scrubbed)
    assert "Uri-Pass-0006" not in scrubbed and "postgresql://synapse:**********@db/synapse" in scrubbed
    assert scrubbed.startswith("ERROR pepper=**********")


# ------------------------------------------------------------------ options


def test_options_defaults_pillar_and_arguments(world):
    data = mapdata(world, syn2mas={"accept_warnings": True, "timeout": 60})
    opts = syn2mas.options(data, stop_services=False, dry_run=None)
    assert opts["accept_warnings"] is True and opts["timeout"] == 60
    assert opts["stop_services"] is False and opts["dry_run"] is False and opts["start_synapse_after"] is False


def test_syn2mas_pillar_is_validated_with_the_map_every_problem_at_once(world):
    with pytest.raises(SaltInvocationError) as err:
        mapdata(
            world,
            syn2mas={
                "accept_warnings": "yes",
                "synapse_config_files": ["relative.yaml"],
                "timeout": 0,
                "bogus": 1,
                "synapse_database_uri": "mysql://x",
            },
        )
    text = str(err.value)
    for key in ("accept_warnings", "synapse_config_files", "timeout", "bogus", "synapse_database_uri"):
        assert f"mas:syn2mas:{key}" in text


def test_options_refuses_bad_arguments(world):
    with pytest.raises(SaltInvocationError) as err:
        syn2mas.options(mapdata(world), accept_warnings="yes", timeout=5)
    assert "accept_warnings: must be true or false" in str(err.value)
    assert "timeout: unknown option" in str(err.value)


def test_map_is_computed_from_pillar_like_map_jinja(world, pillar):
    pillar["mas"].update(
        enabled=True,
        server_name="example.com",
        base_path=str(world["base"]),
        migration_in_progress=True,
        lookup={
            "runtime": "binary",
            "binary": {"path": "/usr/local/bin/mas-cli", "share_dir": "/usr/local/share/mas-cli"},
        },
    )
    computed = syn2mas._mapdata()
    assert computed["paths"]["state_dir"] == str(world["base"] / "formula")
    assert computed["runtime"] == "binary" and computed["migration_in_progress"] is True
    assert_no_secret(computed)


# ------------------------------------------------------------------ status / check


def test_status_without_marker_is_legacy_auth_and_lists_the_commands(world, up, cli):
    result = syn2mas.status(mapdata(world))
    assert result["result"] is True and result["phase"] == "legacy_auth" and result["recorded"] is False
    assert result["blockers"] == [] and cli.calls == []
    hs, oidc = str(world["hs"]), str(world["conf_d"] / "oidc.yaml")
    wrapper = str(world["base"] / "bin" / "mas-cli")
    assert result["commands"]["check"] == f"{wrapper} syn2mas --synapse-config {hs} --synapse-config {oidc} check"
    assert result["commands"]["dry_run"].endswith("migrate --dry-run")


def test_status_leaves_out_the_formulas_dropin_and_reports_blockers(world, up):
    (world["conf_d"] / "matrix-authentication-service.yaml").write_text("matrix_authentication_service: {}\n")
    up["synapse"] = True
    result = syn2mas.status(mapdata(world, migration_in_progress=False), stop_services=False)
    assert "matrix-authentication-service.yaml" not in result["commands"]["migrate"]
    text = "\n".join(result["blockers"])
    assert "mas:migration_in_progress is false" in text
    assert "drop-in" in text and "Synapse answers at http://127.0.0.1:8008/_matrix/client/versions" in text
    # issue 10: the drop-in is on disk and no migration was recorded: status says Synapse already delegates
    assert result["phase"] == "delegated" and result["recorded"] is False
    assert result["dry_run_blockers"] == [
        "no migration is needed: Synapse already delegates to MAS (no syn2mas migration was ever recorded)"
    ]
    assert "already delegates to MAS" in result["next_step"] and "check, dry run" not in result["comment"]


def test_check_passes_on_exit_0(world, cli, orchestration_stubs):
    result = syn2mas.check(mapdata(world))
    assert (result["result"], result["exit_code"], result["errors"]) == (True, 0, [])
    assert cli.actions == ["check"]


@pytest.mark.parametrize("accept", [False, True])
def test_check_warnings_need_accepting(world, cli, orchestration_stubs, accept):
    cli.answers["check"] = {"retcode": 11, "stdout": "", "stderr": WARNINGS_ONLY}
    result = syn2mas.check(mapdata(world), accept_warnings=accept)
    assert result["result"] is accept and result["exit_code"] == 11
    assert result["warnings"][0].startswith("Synapse database contains 1 non-email 3PIDs")
    assert any("accept_warnings=True" in e for e in result["errors"]) is not accept


def test_check_errors_and_the_not_empty_hint(world, cli, orchestration_stubs):
    cli.answers["check"] = {"retcode": 10, "stdout": "", "stderr": ERRORS_AND_WARNINGS}
    result = syn2mas.check(mapdata(world))
    assert result["result"] is False and len(result["errors"]) == 2 and len(result["warnings"]) == 1
    cli.answers["check"] = NOT_EMPTY
    result = syn2mas.check(mapdata(world))
    assert result["errors"][0].startswith("Error: The MAS database is not empty")
    assert "drop and recreate it" in result["errors"][1]


def test_check_refuses_a_config_the_mas_user_cannot_read(world, cli, orchestration_stubs):
    world["hs"].chmod(0o600)
    result = syn2mas.check(mapdata(world, user="nobody", group="nogroup"))
    assert result["result"] is False and cli.calls == []
    assert f"the Synapse config file {world['hs']} is not readable by the MAS user 'nobody'" in result["errors"][0]


# ------------------------------------------------------------------ migrate


def test_migrate_success_records_the_phase(world, cli, up, services, orchestration_stubs):
    data = mapdata(world, syn2mas={"stop_services": False})
    result = syn2mas.migrate(mapdata=data)
    assert result["result"] is True and result["phase"] == "verified" and result["phase_before"] == "legacy_auth"
    assert cli.actions == ["check", "migrate"]
    assert "--dry-run" not in cli.calls[1]
    assert "mas:migration_in_progress: false" in result["comment"]
    saved = marker(world)
    assert saved["phase"] == "verified" and saved["last_run"]["exit_code"] == 0
    assert [h["phase"] for h in saved["history"]] == ["migrating", "verified"]
    assert saved["synapse_configs"] == [str(world["hs"]), str(world["conf_d"] / "oidc.yaml")]
    assert saved["mas_config"] == str(world["base"] / "config" / "config.yaml")
    path = world["base"] / "formula" / "syn2mas.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_uid == os.geteuid()
    assert_no_secret(result)
    assert_no_secret(path.read_text())
    services["service.stop"].assert_not_called()


def test_phase_reads_the_marker_only(world, cli, up, orchestration_stubs, monkeypatch):
    data = mapdata(world, syn2mas={"stop_services": False})
    assert syn2mas.phase(data) == "legacy_auth"
    syn2mas.migrate(mapdata=data)
    calls = len(cli.calls)
    monkeypatch.setattr(syn2mas.http, "answers", None)  # no probe allowed
    assert syn2mas.phase(data) == "verified" and len(cli.calls) == calls


def test_a_second_migration_is_refused_by_the_guard(world, cli, up, orchestration_stubs):
    data = mapdata(world, syn2mas={"stop_services": False})
    assert syn2mas.migrate(mapdata=data)["result"] is True
    cli.calls.clear()
    again = syn2mas.migrate(mapdata=data)
    assert again["result"] is False and again["phase"] == "verified" and cli.calls == []
    assert "already migrated (phase verified" in again["errors"][0]
    assert "drop and recreate MAS's database" in again["errors"][0] and "mas_syn2mas.reset" in again["errors"][0]
    assert syn2mas.check(data)["result"] is False and syn2mas.migrate(dry_run=True, mapdata=data)["result"] is False
    assert cli.calls == []


@pytest.mark.parametrize("case", ["not_migrating", "dropin", "disabled", "no_wrapper"])
def test_migrate_guards_before_anything_runs(world, cli, up, services, case):
    overrides = {}
    if case == "not_migrating":
        overrides["migration_in_progress"] = False
        text = "mas:migration_in_progress is false"
    elif case == "dropin":
        (world["conf_d"] / "matrix-authentication-service.yaml").write_text("{}\n")
        text = "drop-in"
    elif case == "disabled":
        overrides["enabled"] = False
        text = "mas:enabled is false"
    else:
        (world["base"] / "bin" / "mas-cli").unlink()
        text = "mas-cli is missing"
    result = syn2mas.migrate(mapdata=mapdata(world, **overrides))
    assert result["result"] is False and any(text in e for e in result["errors"]), result["errors"]
    assert cli.calls == [] and marker(world) is None
    services["service.stop"].assert_not_called()


@pytest.mark.parametrize("running", ["synapse", "mas"])
def test_migrate_refused_while_a_service_answers(world, cli, up, services, running):
    up[running] = True
    result = syn2mas.migrate(mapdata=mapdata(world), stop_services=False)
    assert result["result"] is False and cli.actions == [] and len(result["errors"]) == 1
    assert "answers at" in result["errors"][0] and "stop it yourself first" in result["errors"][0]
    assert result["comment"] == "syn2mas migration refused (nothing was run or stopped)"
    assert marker(world) is None
    services["service.stop"].assert_not_called()


def test_a_running_mas_the_formula_does_not_manage_refuses_before_anything_stops(world, cli, up, services):
    """Issue 21.4: stop_services cannot stop an unmanaged MAS: refused at once, named by status and test=True."""
    up["mas"] = True
    data = mapdata(world, synapse={"service": "synapse-unit"})  # service.manage: false
    blocker = (
        "MAS answers at http://127.0.0.1:8081/health and the formula does not manage its service "
        "(mas:service:manage is false), so it will not stop it: stop MAS yourself, then migrate"
    )
    status = syn2mas.status(data)
    assert status["mas_answers"] is True and any(b.startswith(blocker) for b in status["blockers"])
    assert not any("MAS" in b for b in status["dry_run_blockers"])  # a dry run is still allowed
    result = syn2mas.migrate(mapdata=data)
    assert result["result"] is False and result["errors"][0].startswith(blocker)
    assert cli.calls == [] and marker(world) is None
    for call in ("service.status", "service.stop", "service.start"):
        services[call].assert_not_called()
    syn2mas_state.__opts__["test"] = True
    predicted = syn2mas_state.migrated("syn2mas", mapdata=data)
    assert predicted["result"] is False and blocker in predicted["comment"]
    syn2mas_state.__opts__["test"] = False
    # a managed MAS is the formula's to stop
    managed = mapdata(world, service={"manage": True, "name": "mas-unit"}, synapse={"service": "synapse-unit"})
    assert not any("MAS answers" in b for b in syn2mas.status(managed)["blockers"])


def test_migrate_stops_synapse_and_mas_and_leaves_synapse_stopped(world, cli, up, services, orchestration_stubs):
    data = mapdata(world, service={"manage": True, "name": "mas-unit"}, synapse={"service": "synapse-unit"})
    result = syn2mas.migrate(mapdata=data)
    assert result["result"] is True
    assert [c.args[0] for c in services["service.stop"].call_args_list] == ["synapse-unit", "mas-unit"]
    services["service.start"].assert_not_called()
    assert result["services"] == {"stopped": ["synapse-unit", "mas-unit"], "started": [], "down": []}
    assert "Synapse stays stopped" in result["comment"]

    (world["base"] / "formula" / "syn2mas.json").unlink()
    result = syn2mas.migrate(mapdata=data, start_synapse_after=True)
    assert result["services"]["started"] == ["synapse-unit"]


def test_migrate_refused_when_synapse_keeps_answering_after_stop(world, cli, up, services, orchestration_stubs):
    up["synapse"] = True
    data = mapdata(world, synapse={"service": "synapse-unit"}, syn2mas={"stop_timeout": 1})
    result = syn2mas.migrate(mapdata=data)
    assert result["result"] is False and "still answers" in result["errors"][0]
    assert "after service.stop" in result["errors"][0]
    assert result["services"] == {"stopped": ["synapse-unit"], "started": ["synapse-unit"], "down": []}
    assert marker(world) is None and cli.actions == ["check"]


def test_failed_migration_stays_migrating_and_the_next_run_retries(world, cli, up, services, orchestration_stubs):
    data = mapdata(world, synapse={"service": "synapse-unit"})
    cli.answers["migrate"] = [
        {
            "retcode": 1,
            "stdout": "",
            "stderr": f"Error: error when writing to MAS DB\n\nCaused by:\n    pw {DB_PASSWORD}\n",
        },
        MIGRATE_OK,
    ]
    failed = syn2mas.migrate(mapdata=data)
    assert failed["result"] is False and failed["phase"] == "migrating" and failed["exit_code"] == 1
    assert failed["errors"][0].startswith("Error: error when writing to MAS DB")
    assert failed["services"] == {"stopped": ["synapse-unit"], "started": ["synapse-unit"], "down": []}
    assert_no_secret(failed)
    saved = marker(world)
    assert saved["phase"] == "migrating" and saved["last_run"]["exit_code"] == 1 and saved["finished_at"] is None
    assert_no_secret(json.dumps(saved))

    status = syn2mas.status(data)
    assert status["phase"] == "migrating" and status["exit_code"] == 1 and status["blockers"] == []
    retried = syn2mas.migrate(mapdata=data)
    assert retried["result"] is True and retried["phase"] == "verified" and retried["phase_before"] == "migrating"
    assert cli.actions == ["check", "migrate", "check", "migrate"]


KILLED_LOG = (
    "2026-01-01T00:00:00.000000Z  INFO mas_cli::commands::syn2mas: Starting new syn2mas migration\n"
    "2026-01-01T00:00:01.000000Z ERROR syn2mas::mas_writer: error in writer: database error whilst writing users\n"
    "2026-01-01T00:00:02.000000Z  WARN syn2mas::migration: 1 device skipped\n"
    "2026-01-01T00:00:03.000000Z  INFO progress: migrating users: 4096 (0 skipped) /~9000 (~45.5%)\n"
)


@pytest.mark.parametrize(
    ("code", "how"),
    [
        (-9, "was killed by signal 9 (SIGKILL)"),
        (137, "was killed by signal 9 (SIGKILL; exit code 137)"),
        (-15, "was killed by signal 15 (SIGTERM)"),
        (101, "exited with 101"),
    ],
)
def test_a_killed_migrate_says_how_it_ended_and_quotes_the_last_error_line(
    world, cli, up, services, orchestration_stubs, code, how
):
    """Issue 21.9: not "exited with -9" followed by INFO lines."""
    cli.answers["migrate"] = {"retcode": code, "stdout": "", "stderr": KILLED_LOG}
    result = syn2mas.migrate(mapdata=mapdata(world, synapse={"service": "synapse-unit"}))
    assert result["result"] is False and result["phase"] == "migrating" and result["exit_code"] == code
    assert result["comment"].startswith(f"syn2mas migration failed: mas-cli {how}; the phase stays migrating")
    error = result["errors"][0]
    assert error.startswith(
        f"mas-cli {how}: its last error line: 2026-01-01T00:00:01.000000Z ERROR syn2mas::mas_writer: error in writer"
    )
    assert "INFO" not in error and "WARN" not in error and "exited with -" not in result["comment"]
    assert ("SIGKILL comes from outside mas-cli" in error) is how.startswith("was killed by signal 9 ")
    assert result["summary"].endswith("(~45.5%)")  # the whole output stays in the summary


def test_a_migrate_killed_by_salts_timeout_says_so(world, cli, up, services, orchestration_stubs):
    argv = f"{world['base']}/bin/mas-cli syn2mas --synapse-config {world['hs']} migrate"
    cli.answers["migrate"] = {"retcode": 1, "stdout": f"{argv} : Timed out after 3600 seconds", "stderr": ""}
    result = syn2mas.migrate(mapdata=mapdata(world, synapse={"service": "synapse-unit"}))
    assert result["phase"] == "migrating" and result["exit_code"] == -9
    assert result["comment"].startswith("syn2mas migration failed: mas-cli was killed by signal 9 (SIGKILL); the")
    assert result["errors"][0] == (
        "mas-cli did not finish within 3600 s (mas:syn2mas:timeout), so Salt killed it: raise mas:syn2mas:timeout "
        "for a homeserver this big, then run again"
    )


def test_a_killed_migrate_without_an_error_line_says_so(world, cli, up, services, orchestration_stubs):
    cli.answers["migrate"] = {"retcode": -9, "stdout": "", "stderr": KILLED_LOG.splitlines()[0] + "\n"}
    result = syn2mas.migrate(mapdata=mapdata(world, synapse={"service": "synapse-unit"}))
    assert result["errors"][0].startswith("mas-cli was killed by signal 9 (SIGKILL): it logged no error. SIGKILL")
    cli.answers["check"] = {"retcode": -9, "stdout": "", "stderr": ""}
    refused = syn2mas.check(mapdata(world))
    assert refused["comment"] == "syn2mas check failed (mas-cli was killed by signal 9 (SIGKILL))"


def test_warnings_refuse_a_real_migration_unless_accepted(world, cli, up, orchestration_stubs):
    data = mapdata(world, syn2mas={"stop_services": False})
    cli.answers["check"] = {"retcode": 11, "stdout": "", "stderr": WARNINGS_ONLY}
    refused = syn2mas.migrate(mapdata=data)
    assert refused["result"] is False and cli.actions == ["check"] and marker(world) is None
    assert "accept_warnings=True" in refused["errors"][-1]
    accepted = syn2mas.migrate(mapdata=data, accept_warnings=True)
    assert accepted["result"] is True and marker(world)["accepted_warnings"] == refused["warnings"]


def test_check_errors_refuse_a_real_migration(world, cli, up, orchestration_stubs):
    cli.answers["check"] = {"retcode": 10, "stdout": "", "stderr": ERRORS_AND_WARNINGS}
    result = syn2mas.migrate(mapdata=mapdata(world), stop_services=False)
    assert result["result"] is False and len(result["errors"]) == 2 and cli.actions == ["check"]


def test_dry_run_never_changes_the_phase(world, cli, up, orchestration_stubs):
    up["synapse"] = True  # safe while Synapse runs
    data = mapdata(world)
    result = syn2mas.migrate(dry_run=True, mapdata=data)
    assert result["result"] is True and result["dry_run"] is True and result["phase"] == "legacy_auth"
    assert cli.actions == ["dry-run"] and marker(world) is None
    cli.answers["dry-run"] = {"retcode": 0, "stdout": "", "stderr": WARNINGS_ONLY}
    warned = syn2mas.migrate(dry_run=True, mapdata=data)
    assert warned["result"] is False and "accept_warnings" in warned["errors"][0] and marker(world) is None
    assert syn2mas.migrate(dry_run=True, accept_warnings=True, mapdata=data)["result"] is True


def test_docker_runtime_asks_the_wrapper_to_mount_the_synapse_configs(world, cli, up, orchestration_stubs):
    syn2mas.check(mapdata(world, runtime="docker", service={"docker": {"command": "/bin/true"}}))
    assert cli.kwargs[0]["env"] == {"MAS_CLI_READONLY_MOUNTS": f"{world['hs']}:{world['conf_d'] / 'oidc.yaml'}"}


def test_docker_runtime_refuses_paths_it_cannot_mount(world, cli, up, orchestration_stubs):
    # pillar paths cannot hold a space (mas.settings refuses them): a file of Synapse's config_dir can
    odd = world["conf_d"] / "odd name.yaml"
    odd.write_text("{}\n")
    result = syn2mas.check(mapdata(world, runtime="docker", service={"docker": {"command": "/bin/true"}}))
    assert result["result"] is False and "cannot be mounted into the MAS container" in result["errors"][0]
    assert cli.calls == []


def test_explicit_synapse_config_files_and_database_uri(world, cli, up, orchestration_stubs, pillar):
    # the URI may hold a password: the map only says it is set, the value comes from pillar
    pillar["mas"]["syn2mas"] = {"synapse_database_uri": "postgresql://synapse:Uri-Pass-0006@db/synapse"}
    fragment = world["tmp"] / "pre-mas-oidc.yaml"
    fragment.write_text("oidc_providers: [{idp_id: kc, client_secret: Oidc-Secret-0007}]\n")
    data = mapdata(
        world,
        syn2mas={
            "synapse_config_files": [str(world["hs"]), str(fragment)],
            "synapse_database_uri": "postgresql://synapse:Uri-Pass-0006@db/synapse",
            "ignore_missing_auth_providers": True,
        },
    )
    result = syn2mas.check(data)
    argv = cli.calls[0]
    assert argv[2:] == [
        "--synapse-config",
        str(world["hs"]),
        "--synapse-config",
        str(fragment),
        "--synapse-database-uri",
        "postgresql://synapse:Uri-Pass-0006@db/synapse",
        "--ignore-missing-auth-providers",
        "check",
    ]
    assert "Uri-Pass-0006" not in result["command"] and "--synapse-database-uri **********" in result["command"]
    missing = syn2mas.check(mapdata(world, syn2mas={"synapse_config_files": ["/nonexistent.yaml"]}))
    assert "/nonexistent.yaml (mas:syn2mas:synapse_config_files) does not exist" in missing["errors"][0]


def test_unreadable_marker_is_an_error_with_the_way_out(world, up):
    (world["base"] / "formula" / "syn2mas.json").write_text("{not json")
    with pytest.raises(CommandExecutionError) as err:
        syn2mas.status(mapdata(world))
    assert "mas_syn2mas.reset confirm=True" in str(err.value)


def test_a_failed_stop_starts_synapse_again(world, cli, up, services, orchestration_stubs):
    services["service.stop"].side_effect = [True, False]
    data = mapdata(world, service={"manage": True, "name": "mas-unit"}, synapse={"service": "synapse-unit"})
    result = syn2mas.migrate(mapdata=data)
    assert result["result"] is False and len(result["errors"]) == 1
    assert result["errors"][0].startswith("service.stop mas-unit failed: MAS could not be stopped")
    assert "mas:service:name ('mas-unit')" in result["errors"][0] and "stop_services: false" in result["errors"][0]
    assert result["services"] == {"stopped": ["synapse-unit"], "started": ["synapse-unit"], "down": []}
    assert marker(world) is None and cli.actions == ["check"]


def test_one_run_at_a_time(world, cli, up):
    data = mapdata(world, syn2mas={"stop_services": False})
    with syn2mas_marker.exclusive(data), pytest.raises(CommandExecutionError, match="another syn2mas run"):
        syn2mas.migrate(mapdata=data)


# ------------------------------------------------------------------ the seed's extra arguments


def test_seed_provider_mapping_becomes_synapse_idp_id(world):
    provider = {
        "id": "01HFVBY12TMNTYTBV8W921M5FA",
        "client_id": "mas",
        "token_endpoint_auth_method": "none",
        "issuer": "https://kc.example.com/",
    }
    data = mapdata(
        world,
        upstream_oauth2_providers=[provider],
        syn2mas={"extra_arguments": ["--upstreamProviderMapping oidc-keycloak:01hfvby12tmntytbv8w921m5fa"]},
    )
    assert data["upstream_oauth2_providers"][0]["synapse_idp_id"] == "oidc-keycloak"
    assert data["mas_config"]["upstream_oauth2"]["providers"][0]["synapse_idp_id"] == "oidc-keycloak"
    assert (
        "deprecated" in data["syn2mas"]["deprecations"][0]
        and "synapse_idp_id: oidc-keycloak" in (data["syn2mas"]["deprecations"][0])
    )
    split = mapdata(
        world,
        upstream_oauth2_providers=[provider],
        syn2mas={"extra_arguments": ["--upstreamProviderMapping", "oidc-keycloak:01HFVBY12TMNTYTBV8W921M5FA"]},
    )
    assert split["upstream_oauth2_providers"][0]["synapse_idp_id"] == "oidc-keycloak"


@pytest.mark.parametrize(
    "arguments, text",
    [
        (
            ["--upstreamProviderMapping oidc-keycloak:01J9SYN2MASF0RMV1A000000ZZ"],
            "no provider 01J9SYN2MASF0RMV1A000000ZZ",
        ),
        (["--dryRun"], "'--dryRun' is not accepted (accepted: --upstreamProviderMapping"),
        (["--upstreamProviderMapping keycloak"], "must be <synapse idp>:<MAS provider ULID>"),
        (["--upstreamProviderMapping oidc-other:01HFVBY12TMNTYTBV8W921M5FA"], "contradicts synapse_idp_id"),
    ],
)
def test_seed_extra_arguments_refused(world, arguments, text):
    provider = {
        "id": "01HFVBY12TMNTYTBV8W921M5FA",
        "synapse_idp_id": "oidc-keycloak",
        "client_id": "mas",
        "token_endpoint_auth_method": "none",
    }
    with pytest.raises(SaltInvocationError) as err:
        mapdata(world, upstream_oauth2_providers=[provider], syn2mas={"extra_arguments": arguments})
    assert "mas:syn2mas:extra_arguments: " in str(err.value) and text in str(err.value)


# ------------------------------------------------------------------ states


def test_state_migrated_runs_once(world, cli, up, orchestration_stubs):
    data = mapdata(world, syn2mas={"stop_services": False})
    ret = syn2mas_state.migrated("syn2mas", mapdata=data)
    assert ret["result"] is True and ret["changes"] == {"phase": {"old": "legacy_auth", "new": "verified"}}
    again = syn2mas_state.migrated("syn2mas", mapdata=data)
    assert again["result"] is True and again["changes"] == {} and "already migrated" in again["comment"]
    assert cli.actions == ["check", "migrate"]


def test_state_failure_reports_the_phase_change_and_errors(world, cli, up, orchestration_stubs):
    cli.answers["migrate"] = {"retcode": 1, "stdout": "", "stderr": "Error: half-way\n"}
    ret = syn2mas_state.migrated("syn2mas", mapdata=mapdata(world), stop_services=False)
    assert ret["result"] is False and ret["changes"] == {"phase": {"old": "legacy_auth", "new": "migrating"}}
    assert "Error: half-way" in ret["comment"]


def test_state_test_mode_touches_nothing(world, cli, up, services):
    syn2mas_state.__opts__["test"] = True
    data = mapdata(world)
    ret = syn2mas_state.migrated("syn2mas", mapdata=data)
    assert ret["result"] is None and ret["changes"] == {"phase": {"old": "legacy_auth", "new": "verified"}}
    assert "syn2mas would migrate" in ret["comment"]
    dry = syn2mas_state.migrated("syn2mas", mapdata=data, dry_run=True)
    assert dry["result"] is None and dry["changes"] == {} and "--dry-run" in dry["comment"]
    refused = syn2mas_state.migrated("syn2mas", mapdata=mapdata(world, migration_in_progress=False))
    assert refused["result"] is False and "mas:migration_in_progress is false" in refused["comment"]
    assert cli.calls == [] and marker(world) is None
    services["service.stop"].assert_not_called()


def test_state_dry_run_reports_no_change(world, cli, up, orchestration_stubs):
    ret = syn2mas_state.migrated("syn2mas", mapdata=mapdata(world, syn2mas={"dry_run": True}))
    assert ret["result"] is True and ret["changes"] == {} and "phase unchanged" in ret["comment"]


# ------------------------------------------------------------------ the steps of a real run


def test_a_real_run_lists_its_steps_and_records_backup_and_verification(world, cli, up, services, orchestration_stubs):
    data = mapdata(world, synapse={"service": "synapse-unit"})
    result = syn2mas.migrate(mapdata=data)
    assert result["result"] is True and result["phase"] == "verified"
    assert [s["step"] for s in result["steps"]] == [
        "preflight",
        "check",
        "backup check",
        "stop",
        "backup",
        "migrate",
        "verify",
        "start",
    ]
    assert [s["result"] for s in result["steps"]][-1] == "skipped"
    assert orchestration_stubs.calls == ["preflight", "backup check", "verify"] and len(cli.dumps) == 1
    assert "Steps: preflight ok" in result["comment"] and "backup ok" in result["comment"]
    # the backup pg_dump wrote: 0600, named in the comment, its checksum and size recorded
    saved = marker(world)
    backup = Path(saved["backup"]["path"])
    assert backup.parent == world["tmp"] / "backups" and (backup / "toc.dat").read_bytes() == DUMP
    assert stat.S_IMODE(backup.stat().st_mode) == 0o700 and not list(backup.parent.glob("*.partial"))
    assert {stat.S_IMODE(f.stat().st_mode) for f in backup.iterdir()} == {0o600}
    # `cd <dump> && sha256sum * | sha256sum`
    listing = "".join(f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.name}\n" for f in sorted(backup.iterdir()))
    size = len(DUMP) + len(b"rows\n")
    assert saved["backup"]["sha256"] == hashlib.sha256(listing.encode()).hexdigest() and saved["backup"]["size"] == size
    assert saved["backup"]["format"] == "directory"
    assert f"Backup: {backup} ({size} B)." in result["comment"]
    assert (
        saved["verification"]["errors"] == []
        and saved["verification"]["result"] is True
        and [s["step"] for s in saved["steps"]][:2] == ["preflight", "check"]
    )


def test_the_backup_gives_pg_dump_the_password_in_a_private_passfile_only(world, cli, up, orchestration_stubs):
    """``syn2mas_backup.backup`` for real (pg_dump is the outside world): Synapse's database password reaches pg_dump
    in a 0600 PGPASSFILE that is gone afterwards, never in its argument list or environment."""
    result = syn2mas.migrate(mapdata=mapdata(world, syn2mas={"stop_services": False}))
    assert result["result"] is True
    ((argv, kwargs),) = cli.dumps
    jobs = argv[2]
    assert argv[1] == "--format=directory" and re.fullmatch(r"--jobs=[1-4]", jobs)
    assert argv[3:6] == ["--compress=0", "--no-password", "--file"] and argv[6].endswith(".dump.partial")
    assert kwargs["umask"] == "077"

    conninfo = argv[argv.index("--dbname") + 1]
    assert "dbname=synapse" in conninfo and "user=synapse" in conninfo and "password" not in conninfo
    assert DB_PASSWORD not in json.dumps(argv) and DB_PASSWORD not in json.dumps(kwargs["env"])
    ((passfile, mode, content),) = cli.passfiles
    assert kwargs["env"]["PGPASSFILE"] == passfile and mode == 0o600 and content == f"*:*:*:*:{DB_PASSWORD}\n"
    assert not os.path.exists(passfile) and not os.path.exists(os.path.dirname(passfile))
    assert_no_secret(result)


def test_preflight_errors_refuse_before_anything_stops(world, cli, up, services):
    """The real preflight: guest access (which MAS cannot take) and databases it cannot read refuse the run before
    anything stops or runs, each error saying what to change."""
    synapse_unreachable(world)
    guests = world["conf_d"] / "guests.yaml"
    guests.write_text("allow_guest_access: true\n")
    data = mapdata(world, synapse={"service": "synapse-unit"}, database={"host": "127.0.0.1", "port": free_port()})
    result = syn2mas.migrate(mapdata=data)
    assert result["result"] is False and [s["step"] for s in result["steps"]] == ["preflight"]
    assert result["comment"].startswith("syn2mas migration refused: the preflight found blocking errors.")
    errors = "\n".join(result["errors"])
    assert f"guest access is on (allow_guest_access in {guests}): MAS has no guests" in errors
    assert "PostgreSQL database synapse at 127.0.0.1:" in errors and "is unreachable" in errors
    assert "syn2mas writes there (create it: mas:database:manage, or by hand)" in errors  # MAS's database
    assert cli.calls == [] and marker(world) is None
    services["service.stop"].assert_not_called()
    assert_no_secret(result)
    alone = syn2mas.preflight(data)  # the same checks on their own
    assert alone["result"] is False and alone["errors"] == result["errors"] and alone["counts"] == {}


def test_check_needs_the_preflights_warnings_accepted(world, cli, up, orchestration_stubs):
    """Orchestration: check merges the preflight's warnings with upstream's and refuses them unless accepted."""
    orchestration_stubs.preflight_warnings = ["1 non-email 3PIDs (msisdn: 1) are copied to MAS's tables"]
    data = mapdata(world, syn2mas={"stop_services": False})
    refused = syn2mas.check(data)
    assert refused["result"] is False and refused["warnings"] == orchestration_stubs.preflight_warnings
    assert refused["errors"] == [
        "1 warning(s): read them, then accept them with accept_warnings=True (pillar mas:syn2mas:accept_warnings: true)"
    ]
    assert syn2mas.check(data, accept_warnings=True)["result"] is True
    assert cli.actions == ["check", "check"]


@pytest.mark.parametrize("where", ["plan", "backup"])
def test_a_backup_that_fails_changes_nothing_and_starts_synapse_again(
    world, cli, up, services, orchestration_stubs, where
):
    if where == "plan":
        orchestration_stubs.plan_problems = ["the backup directory /x (mas:syn2mas:backup_dir) has 1.0 MiB free"]
    else:  # pg_dump fails: the real backup says so, scrubbed, and leaves no partial file
        cli.answers["pg_dump"] = {"retcode": 1, "stdout": "", "stderr": f"pg_dump: error: disk full {DB_PASSWORD}\n"}
    result = syn2mas.migrate(mapdata=mapdata(world, synapse={"service": "synapse-unit"}))
    assert result["result"] is False and marker(world) is None and cli.actions == ["check"]
    assert_no_secret(result)
    if where == "plan":  # refused before anything stops
        services["service.stop"].assert_not_called()
        assert result["errors"] == orchestration_stubs.plan_problems and cli.dumps == []
    else:
        assert result["services"] == {"stopped": ["synapse-unit"], "started": ["synapse-unit"], "down": []}
        assert (
            "the backup failed, nothing was migrated. Synapse (still authoritative) was started again"
            in (result["comment"])
        )
        assert result["errors"][0].startswith(
            "pg_dump of Synapse's PostgreSQL database synapse at localhost:5432 failed (exit 1): pg_dump: error: "
            "disk full **********"
        )
        assert list((world["tmp"] / "backups").iterdir()) == []


def test_a_verification_mismatch_records_migrated_unverified_and_starts_synapse(
    world, cli, up, services, orchestration_stubs
):
    orchestration_stubs.verify_errors = ["1 Synapse users are missing in MAS: carol"]
    data = mapdata(world, synapse={"service": "synapse-unit"})
    result = syn2mas.migrate(mapdata=data)
    assert result["result"] is False and result["phase"] == "migrated_unverified"
    assert "1 Synapse users are missing in MAS: carol" in result["errors"]
    assert "verification FAILED" in result["comment"] and result["services"]["started"] == ["synapse-unit"]
    assert marker(world)["phase"] == "migrated_unverified"
    refused = syn2mas.lockout_check(mapdata(world, migration_in_progress=False))
    assert refused["result"] is False and "verification found" in refused["errors"][0]
    # the state verifies again (mas_syn2mas.verify record=True), never migrates again: still failing, nothing
    # changes; once MAS holds everything, the phase becomes verified
    again = syn2mas_state.migrated("syn2mas", mapdata=data)
    assert again["result"] is False and again["changes"] == {} and "verification FAILED" in again["comment"]
    assert marker(world)["phase"] == "migrated_unverified"
    orchestration_stubs.verify_errors = []
    ret = syn2mas_state.migrated("syn2mas", mapdata=data)
    assert ret["result"] is True and ret["changes"] == {"phase": {"old": "migrated_unverified", "new": "verified"}}
    assert ret["comment"].startswith("syn2mas verification passed in ")
    saved = marker(world)
    assert saved["phase"] == "verified" and saved["verification"]["result"] is True
    assert [h["phase"] for h in saved["history"]] == ["migrating", "migrated_unverified", "verified"]
    assert cli.actions == ["check", "migrate"] and orchestration_stubs.calls.count("verify") == 3


def test_verify_records_from_the_marker_read_under_its_lock(world, orchestration_stubs, meanwhile):
    """Issue #17.6: Synapse was recorded delegating after this verification started: a failing verification does
    not write migrated_unverified over it."""
    data = mapdata(world)
    syn2mas_marker.set_phase(data, None, "migrated")
    orchestration_stubs.verify_errors = ["1 Synapse users are missing in MAS: carol"]
    meanwhile("delegated", delegated_at="by the other run")
    result = syn2mas.verify(mapdata=data, record=True)
    assert result["result"] is False and result["changes"] == {} and result["phase"] == "delegated"
    assert marker(world)["phase"] == "delegated" and marker(world)["delegated_at"] == "by the other run"


def test_migrate_decides_on_the_marker_read_under_its_lock(world, cli, up, services, orchestration_stubs, meanwhile):
    """Another run finished the migration after this one read the marker: refused once it holds the lock."""
    meanwhile("verified", finished_at="by the other run")
    result = syn2mas.migrate(mapdata=mapdata(world, synapse={"service": "synapse-unit"}))
    assert result["result"] is False and result["phase"] == "verified"
    assert result["errors"][0].startswith("already migrated (phase verified since by the other run)")
    assert cli.calls == [] and orchestration_stubs.calls == [] and marker(world)["finished_at"] == "by the other run"
    services["service.stop"].assert_not_called()


def test_synapse_left_down_is_reported(world, cli, up, services, orchestration_stubs):
    services["service.start"].return_value = False
    cli.answers["migrate"] = {"retcode": 1, "stdout": "", "stderr": "Error: half-way\n"}
    result = syn2mas.migrate(mapdata=mapdata(world, synapse={"service": "synapse-unit"}))
    assert result["result"] is False and result["services"]["down"] == ["synapse-unit"]
    assert "Synapse is DOWN: service.start synapse-unit failed" in result["comment"]
    assert any("salt-call service.start synapse-unit" in e for e in result["errors"])
    ret = syn2mas_state.migrated("syn2mas", mapdata=mapdata(world, synapse={"service": "synapse-unit"}))
    assert "Synapse is DOWN" in ret["comment"] and ret["result"] is False


def test_comments_have_their_separators(world, cli, up, services, orchestration_stubs):
    """Issue 21.4: "services still running Synapse (still authoritative) was started again.." is gone."""
    up["synapse"] = True  # keeps answering after service.stop
    data = mapdata(world, synapse={"service": "synapse-unit"}, syn2mas={"stop_timeout": 1})
    comment = told_straight(syn2mas.migrate(mapdata=data)["comment"])
    assert comment.startswith(
        "syn2mas migration refused: services still running. Synapse (still authoritative) was started again. Steps:"
    )
    up["synapse"] = False
    cli.answers["pg_dump"] = {"retcode": 1, "stdout": "", "stderr": "pg_dump: error: disk full\n"}
    comment = told_straight(syn2mas.migrate(mapdata=data)["comment"])
    assert comment.startswith(
        "syn2mas migration refused: the backup failed, nothing was migrated. Synapse (still authoritative) was "
        "started again. Steps:"
    )


def test_synapse_that_does_not_start_after_a_verified_migration_is_down_not_stopped(
    world, cli, up, services, orchestration_stubs
):
    """Issue 21.9: not "Synapse stays stopped until then" and "it is DOWN" in one comment."""
    services["service.start"].return_value = False
    data = mapdata(world, synapse={"service": "synapse-unit"}, syn2mas={"start_synapse_after": True})
    result = syn2mas.migrate(mapdata=data)
    assert (
        result["result"] is False and result["phase"] == "verified" and result["services"]["down"] == ["synapse-unit"]
    )
    comment = told_straight(result["comment"])
    assert "Next: set mas:migration_in_progress: false and apply `mas` (Synapse delegates to MAS, MAS starts). " in (
        comment
    )
    assert "Synapse is DOWN: service.start synapse-unit failed. Steps:" in comment
    assert result["errors"] == [
        "Synapse is DOWN: service.start synapse-unit failed. It is still authoritative (no drop-in): start it with "
        "`salt-call service.start synapse-unit` (systemctl start synapse-unit) and read its log"
    ]


def test_a_synapse_this_run_did_not_stop_is_named_when_it_does_not_answer(
    world, cli, up, services, orchestration_stubs
):
    """A Synapse found down (left DOWN by an earlier run) is neither stopped nor passed over in silence."""
    services["service.status"].return_value = False
    cli.answers["migrate"] = [{"retcode": 1, "stdout": "", "stderr": "Error: half-way\n"}, MIGRATE_OK, MIGRATE_OK]
    data = mapdata(world, synapse={"service": "synapse-unit"})
    failed = syn2mas.migrate(mapdata=data)
    assert failed["services"] == {"stopped": [], "started": [], "down": []}
    assert (
        "MAS stays stopped" in told_straight(failed["comment"])
        and " Synapse does not answer at http://127.0.0.1:8008/_matrix/client/versions (this run did not stop it): "
        "it is still authoritative; start it with `salt-call service.start synapse-unit`."
        in failed["comment"]
    )
    done = syn2mas.migrate(mapdata=data)  # it stays down after a verified migration: said so
    assert "; Synapse stays stopped until then. Steps:" in told_straight(done["comment"])
    services["service.start"].assert_not_called()
    (world["base"] / "formula" / "syn2mas.json").unlink()
    asked = syn2mas.migrate(mapdata=data, start_synapse_after=True)  # start_synapse_after starts it
    assert asked["services"]["started"] == ["synapse-unit"] and "was started again" in told_straight(asked["comment"])


def test_every_later_run_checks_that_synapse_answers(world, cli, up, services, orchestration_stubs):
    """Issue 21.9: after "Synapse is DOWN", a rerun with the fault gone does not report success in silence."""
    data = mapdata(world, synapse={"service": "synapse-unit"}, syn2mas={"start_synapse_after": True})
    services["service.start"].return_value = False
    first = syn2mas_state.migrated("syn2mas", mapdata=data)
    assert first["result"] is False and "Synapse is DOWN" in first["comment"]
    services["service.start"].reset_mock()

    syn2mas_state.__opts__["test"] = True
    predicted = syn2mas_state.migrated("syn2mas", mapdata=data)
    syn2mas_state.__opts__["test"] = False
    assert predicted["result"] is None and predicted["changes"] == {
        "synapse": {"old": "not answering", "new": "started (synapse-unit)"}
    }
    assert (
        "Synapse does not answer at http://127.0.0.1:8008/_matrix/client/versions: it would be started"
        in (predicted["comment"])
    )
    services["service.start"].assert_not_called()

    again = syn2mas_state.migrated("syn2mas", mapdata=data)  # the start still fails: said, and the state fails
    assert again["result"] is False and again["changes"] == {}
    assert "syn2mas was not run. Next: " in again["comment"]
    assert "Synapse does not answer at http://127.0.0.1:8008/_matrix/client/versions and could not be started." in (
        told_straight(again["comment"])
    )
    assert "salt-call service.start synapse-unit" in again["comment"]

    services["service.start"].return_value = True  # the fault gone
    fixed = syn2mas_state.migrated("syn2mas", mapdata=data)
    assert fixed["result"] is True and fixed["changes"] == {
        "synapse": {"old": "not answering", "new": "started (synapse-unit)"}
    }
    assert "it was started again (service.start synapse-unit, as mas:syn2mas:start_synapse_after asks" in (
        told_straight(fixed["comment"])
    )
    services["service.start"].assert_called_with("synapse-unit")

    # without start_synapse_after, a stopped Synapse after a verified migration is by design: said, left alone
    services["service.start"].reset_mock()
    quiet = syn2mas_state.migrated("syn2mas", mapdata=mapdata(world, synapse={"service": "synapse-unit"}))
    assert quiet["result"] is True and quiet["changes"] == {}
    assert "it stays stopped until it delegates to MAS (mas:syn2mas:start_synapse_after is false" in quiet["comment"]
    services["service.start"].assert_not_called()
    up["synapse"] = True  # answering: nothing more to say
    assert "answer" not in syn2mas_state.migrated("syn2mas", mapdata=data)["comment"]


def test_a_real_run_needs_a_backup_directory_or_backup_false(world, cli, up, orchestration_stubs):
    result = syn2mas.migrate(mapdata=mapdata(world, syn2mas={"backup_dir": "", "stop_services": False}))
    assert result["result"] is False and "mas:syn2mas:backup_dir is not set" in result["errors"][0]
    assert cli.calls == []
    without = syn2mas.migrate(
        mapdata=mapdata(world, syn2mas={"backup_dir": "", "backup": False, "stop_services": False})
    )
    assert without["result"] is True and "backup check" not in orchestration_stubs.calls and cli.dumps == []
    assert {"step": "backup", "result": "skipped", "seconds": 0.0, "why": "mas:syn2mas:backup is false"} in (
        without["steps"]
    )
