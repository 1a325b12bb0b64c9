"""Unit tests of the syn2mas phase guard (``_modules/mas_syn2mas.py``,
``_states/mas_syn2mas.py``) with the Salt loader.

The formula's other modules (the map, ``mas_synapse.config``,
``mas_secret.scrub`` and its atomic writer) are the real ones; only the outside world is faked: ``cmd.run_all`` answers
like ``mas-cli syn2mas`` (canned upstream-shaped output and exit codes), the
``service.*`` functions are mocks and the HTTP probes of Synapse and MAS are
replaced by a switch. Files (marker, Synapse config, secrets) are real, under
tmp.
"""

import json
import os
import stat
from unittest.mock import MagicMock

import pytest
import yaml
from salt.exceptions import CommandExecutionError, SaltInvocationError

from formula_modules import DEFAULTS, MODULES, STATES, dunders
from pillars import deep_update

mas = MODULES["mas"]
syn2mas = MODULES["mas_syn2mas"]
syn2mas_state = STATES["mas_syn2mas"]

PEPPER = "Pepper-Of-Synapse-0001"
DB_PASSWORD = "Synapse-Db-Password-0002"
MACAROON = "Macaroon-Secret-Key-0003"
SHARED = "Shared-Secret-In-File-0004"
PILLAR_SMTP = "Smtp-Pillar-Password-0005"
SECRETS = (PEPPER, DB_PASSWORD, MACAROON, SHARED, PILLAR_SMTP)

ERRORS_AND_WARNINGS = (
    "2026-01-01T00:00:00.000000Z  INFO mas_cli::commands::syn2mas:1 Running checks\n"
    "\n\n===== Errors =====\n"
    "These issues prevent migrating from Synapse to MAS right now:\n\n"
    "• Guest support is enabled in the Synapse configuration.\n\n"
    "• Password scheme version '1' in the MAS config must have the same secret as the `pepper` value\n"
    "  from Synapse, so that Synapse passwords can be imported.\n\n"
    "\n\n===== Warnings =====\n"
    "These potential issues should be considered before migrating from Synapse to MAS right now:\n\n"
    "• Synapse config has registration enabled. This must be disabled after migration before bringing "
    "Synapse back online.\n\n"
)
WARNINGS_ONLY = (
    "\n\n===== Warnings =====\n"
    "These potential issues should be considered before migrating from Synapse to MAS right now:\n\n"
    "• Synapse database contains 1 non-email 3PIDs (probably phone numbers), which will be migrated but are not "
    "supported by MAS.\n\n"
)
CHECK_OK = {"retcode": 0, "stdout": "Check completed successfully with no errors or warnings.\n", "stderr": ""}
MIGRATE_OK = {"retcode": 0, "stdout": "", "stderr": "2026-01-01T00:00:00Z  INFO syn2mas: migration complete\n"}
NOT_EMPTY = {
    "retcode": 1,
    "stdout": "",
    "stderr": "Error: The MAS database is not empty: rows found in at least `users`. Please drop and recreate the "
    "database, then try again.\n",
}


class FakeCli:
    """``cmd.run_all`` answering like ``mas-cli syn2mas``: ``answers[action]``
    (``check``, ``migrate``, ``dry-run``) is a dict or a list used in turn."""

    def __init__(self):
        self.calls = []
        self.kwargs = []
        self.answers = {"check": CHECK_OK, "migrate": MIGRATE_OK, "dry-run": MIGRATE_OK}

    def __call__(self, argv, **kwargs):
        assert isinstance(argv, list) and kwargs["python_shell"] is False
        assert kwargs["output_loglevel"] == "quiet"
        self.calls.append(argv)
        self.kwargs.append(kwargs)
        action = "dry-run" if "--dry-run" in argv else argv[-1]
        answer = self.answers[action]
        if isinstance(answer, list):
            answer = answer.pop(0)
        return dict(answer, pid=1)

    @property
    def actions(self):
        return ["dry-run" if "--dry-run" in argv else argv[-1] for argv in self.calls]


@pytest.fixture
def pillar():
    return {"mas": {"email": {"password": PILLAR_SMTP}}}


@pytest.fixture
def cli():
    return FakeCli()


@pytest.fixture
def services():
    return {
        "service.status": MagicMock(return_value=True),
        "service.stop": MagicMock(return_value=True),
        "service.start": MagicMock(return_value=True),
    }


@pytest.fixture
def up(monkeypatch):
    """Which of Synapse/MAS answer over HTTP (the probe is replaced)."""
    state = {"synapse": False, "mas": False}

    def answers(url, timeout=3):
        return state["synapse"] if "/_matrix/" in url else state["mas"]

    monkeypatch.setattr(syn2mas, "_answers", answers)
    return state


@pytest.fixture
def configure_loader_modules(pillar, cli, services):
    return dunders(pillar, salt={"cmd.run_all": cli, **services})


@pytest.fixture
def world(tmp_path):
    """A deployed MAS (wrapper, state dir, a secret file) and a Synapse config under tmp."""
    base = tmp_path / "srv"
    for sub in ("bin", "formula", "config/secrets"):
        (base / sub).mkdir(parents=True)
    wrapper = base / "bin" / "mas-cli"
    wrapper.write_text("#!/bin/sh\nexit 99\n")
    wrapper.chmod(0o755)
    (base / "config" / "secrets" / "homeserver_secret").write_text(SHARED)
    synapse = tmp_path / "synapse"
    (synapse / "conf.d").mkdir(parents=True)
    hs = synapse / "homeserver.yaml"
    hs.write_text(
        yaml.safe_dump(
            {
                "server_name": "example.com",
                "macaroon_secret_key": MACAROON,
                "password_config": {"pepper": PEPPER},
                "database": {
                    "name": "psycopg2",
                    "args": {"user": "synapse", "password": DB_PASSWORD, "dbname": "synapse"},
                },
            }
        )
    )
    (synapse / "conf.d" / "oidc.yaml").write_text("oidc_providers: []\n")
    return {"base": base, "hs": hs, "conf_d": synapse / "conf.d", "tmp": tmp_path}


def mapdata(world, **overrides):
    data = deep_update(
        DEFAULTS,
        {
            "enabled": True,
            "server_name": "example.com",
            "base_path": str(world["base"]),
            "runtime": "binary",
            "binary": str(world["base"] / "bin" / "mas-cli"),
            "user": "root",
            "group": "root",
            "migration_in_progress": True,
            "service": {"manage": False},
            "synapse": {
                "config_files": [str(world["hs"])],
                "config_dir": str(world["conf_d"]),
                "user": "root",
                "group": "root",
                "endpoint": "http://127.0.0.1:8008/",
            },
            "http": {"internal_bind": "127.0.0.1:8081"},
        },
    )
    return mas.settings(deep_update(data, overrides))


def marker(world):
    path = world["base"] / "formula" / "syn2mas.json"
    return json.loads(path.read_text()) if path.exists() else None


def assert_no_secret(value):
    text = json.dumps(value) if not isinstance(value, str) else value
    for secret in SECRETS:
        assert secret not in text


# ------------------------------------------------------------------ parsing


def test_parse_splits_errors_warnings_and_multiline_bullets():
    errors, warnings, fatal = syn2mas._parse("", ERRORS_AND_WARNINGS)
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
    errors, warnings, fatal = syn2mas._parse("", stderr)
    assert (errors, warnings) == ([], [])
    assert fatal == "Error: could not connect to Synapse Postgres database\nCaused by:\n    connection refused"


def test_scrub_removes_known_secrets_urls_and_colours(world):
    data = mapdata(world)
    secrets = syn2mas._known_secrets(data, yaml.safe_load(world["hs"].read_text()))
    text = (
        f"\x1b[31mERROR\x1b[0m pepper={PEPPER} db={DB_PASSWORD} mac={MACAROON} shared={SHARED} smtp={PILLAR_SMTP} "
        "uri=postgresql://synapse:Uri-Pass-0006@db/synapse"
    )
    scrubbed = syn2mas._scrub(text, secrets)
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
        lookup={"runtime": "binary"},
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
    assert result["dry_run_blockers"] == []


def test_check_passes_on_exit_0(world, cli):
    result = syn2mas.check(mapdata(world))
    assert (result["result"], result["exit_code"], result["errors"]) == (True, 0, [])
    assert cli.actions == ["check"]


@pytest.mark.parametrize("accept", [False, True])
def test_check_warnings_need_accepting(world, cli, accept):
    cli.answers["check"] = {"retcode": 11, "stdout": "", "stderr": WARNINGS_ONLY}
    result = syn2mas.check(mapdata(world), accept_warnings=accept)
    assert result["result"] is accept and result["exit_code"] == 11
    assert result["warnings"][0].startswith("Synapse database contains 1 non-email 3PIDs")
    assert any("accept_warnings=True" in e for e in result["errors"]) is not accept


def test_check_errors_and_the_not_empty_hint(world, cli):
    cli.answers["check"] = {"retcode": 10, "stdout": "", "stderr": ERRORS_AND_WARNINGS}
    result = syn2mas.check(mapdata(world))
    assert result["result"] is False and len(result["errors"]) == 2 and len(result["warnings"]) == 1
    cli.answers["check"] = NOT_EMPTY
    result = syn2mas.check(mapdata(world))
    assert result["errors"][0].startswith("Error: The MAS database is not empty")
    assert "drop and recreate it" in result["errors"][1]


def test_check_refuses_a_config_the_mas_user_cannot_read(world, cli):
    world["hs"].chmod(0o600)
    result = syn2mas.check(mapdata(world, user="nobody", group="nogroup"))
    assert result["result"] is False and cli.calls == []
    assert f"the Synapse config file {world['hs']} is not readable by the MAS user 'nobody'" in result["errors"][0]


# ------------------------------------------------------------------ migrate


def test_migrate_success_records_the_phase(world, cli, up, services):
    data = mapdata(world, syn2mas={"stop_services": False})
    result = syn2mas.migrate(mapdata=data)
    assert result["result"] is True and result["phase"] == "migrated" and result["phase_before"] == "legacy_auth"
    assert cli.actions == ["check", "migrate"]
    assert "--dry-run" not in cli.calls[1]
    assert "mas:migration_in_progress: false" in result["comment"]
    saved = marker(world)
    assert saved["phase"] == "migrated" and saved["last_run"]["exit_code"] == 0
    assert [h["phase"] for h in saved["history"]] == ["migrating", "migrated"]
    assert saved["synapse_configs"] == [str(world["hs"]), str(world["conf_d"] / "oidc.yaml")]
    assert saved["mas_config"] == str(world["base"] / "config" / "config.yaml")
    path = world["base"] / "formula" / "syn2mas.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_uid == os.geteuid()
    assert_no_secret(result)
    assert_no_secret(path.read_text())
    services["service.stop"].assert_not_called()


def test_phase_reads_the_marker_only(world, cli, up, monkeypatch):
    data = mapdata(world, syn2mas={"stop_services": False})
    assert syn2mas.phase(data) == "legacy_auth"
    syn2mas.migrate(mapdata=data)
    calls = len(cli.calls)
    monkeypatch.setattr(syn2mas, "_answers", None)  # no probe allowed
    assert syn2mas.phase(data) == "migrated" and len(cli.calls) == calls


def test_a_second_migration_is_refused_by_the_guard(world, cli, up):
    data = mapdata(world, syn2mas={"stop_services": False})
    assert syn2mas.migrate(mapdata=data)["result"] is True
    cli.calls.clear()
    again = syn2mas.migrate(mapdata=data)
    assert again["result"] is False and again["phase"] == "migrated" and cli.calls == []
    assert "already migrated (phase migrated" in again["errors"][0]
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
def test_migrate_refused_while_a_service_answers(world, cli, up, running):
    up[running] = True
    result = syn2mas.migrate(mapdata=mapdata(world), stop_services=False)
    assert result["result"] is False and cli.actions == ["check"]
    assert "still answers at" in result["errors"][0] and "stop it yourself" in result["errors"][0]
    assert marker(world) is None


def test_migrate_stops_synapse_and_mas_and_leaves_synapse_stopped(world, cli, up, services):
    data = mapdata(world, service={"manage": True, "name": "mas-unit"}, synapse={"service": "synapse-unit"})
    result = syn2mas.migrate(mapdata=data)
    assert result["result"] is True
    assert [c.args[0] for c in services["service.stop"].call_args_list] == ["synapse-unit", "mas-unit"]
    services["service.start"].assert_not_called()
    assert result["services"] == {"stopped": ["synapse-unit", "mas-unit"], "started": []}
    assert "Synapse stays stopped" in result["comment"]

    (world["base"] / "formula" / "syn2mas.json").unlink()
    result = syn2mas.migrate(mapdata=data, start_synapse_after=True)
    assert result["services"]["started"] == ["synapse-unit"]


def test_migrate_refused_when_synapse_keeps_answering_after_stop(world, cli, up, services):
    up["synapse"] = True
    data = mapdata(world, synapse={"service": "synapse-unit"}, syn2mas={"stop_timeout": 1})
    result = syn2mas.migrate(mapdata=data)
    assert result["result"] is False and "still answers" in result["errors"][0]
    assert "after service.stop" in result["errors"][0]
    assert result["services"] == {"stopped": ["synapse-unit"], "started": ["synapse-unit"]}
    assert marker(world) is None and cli.actions == ["check"]


def test_failed_migration_stays_migrating_and_the_next_run_retries(world, cli, up, services):
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
    assert failed["services"] == {"stopped": ["synapse-unit"], "started": ["synapse-unit"]}
    assert_no_secret(failed)
    saved = marker(world)
    assert saved["phase"] == "migrating" and saved["last_run"]["exit_code"] == 1 and saved["finished_at"] is None
    assert_no_secret(json.dumps(saved))

    status = syn2mas.status(data)
    assert status["phase"] == "migrating" and status["exit_code"] == 1 and status["blockers"] == []
    retried = syn2mas.migrate(mapdata=data)
    assert retried["result"] is True and retried["phase"] == "migrated" and retried["phase_before"] == "migrating"
    assert cli.actions == ["check", "migrate", "check", "migrate"]


def test_warnings_refuse_a_real_migration_unless_accepted(world, cli, up):
    data = mapdata(world, syn2mas={"stop_services": False})
    cli.answers["check"] = {"retcode": 11, "stdout": "", "stderr": WARNINGS_ONLY}
    refused = syn2mas.migrate(mapdata=data)
    assert refused["result"] is False and cli.actions == ["check"] and marker(world) is None
    assert "accept_warnings=True" in refused["errors"][-1]
    accepted = syn2mas.migrate(mapdata=data, accept_warnings=True)
    assert accepted["result"] is True and marker(world)["accepted_warnings"] == refused["warnings"]


def test_check_errors_refuse_a_real_migration(world, cli, up):
    cli.answers["check"] = {"retcode": 10, "stdout": "", "stderr": ERRORS_AND_WARNINGS}
    result = syn2mas.migrate(mapdata=mapdata(world), stop_services=False)
    assert result["result"] is False and len(result["errors"]) == 2 and cli.actions == ["check"]


def test_dry_run_never_changes_the_phase(world, cli, up):
    up["synapse"] = True  # safe while Synapse runs
    data = mapdata(world)
    result = syn2mas.migrate(dry_run=True, mapdata=data)
    assert result["result"] is True and result["dry_run"] is True and result["phase"] == "legacy_auth"
    assert cli.actions == ["dry-run"] and marker(world) is None
    cli.answers["dry-run"] = {"retcode": 0, "stdout": "", "stderr": WARNINGS_ONLY}
    warned = syn2mas.migrate(dry_run=True, mapdata=data)
    assert warned["result"] is False and "accept_warnings" in warned["errors"][0] and marker(world) is None
    assert syn2mas.migrate(dry_run=True, accept_warnings=True, mapdata=data)["result"] is True


def test_docker_runtime_asks_the_wrapper_to_mount_the_synapse_configs(world, cli, up):
    syn2mas.check(mapdata(world, runtime="docker", service={"docker": {"command": "/bin/true"}}))
    assert cli.kwargs[0]["env"] == {"MAS_CLI_READONLY_MOUNTS": f"{world['hs']}:{world['conf_d'] / 'oidc.yaml'}"}


def test_docker_runtime_refuses_paths_it_cannot_mount(world, cli, up):
    # pillar paths cannot hold a space (mas.settings refuses them): a file of Synapse's config_dir can
    odd = world["conf_d"] / "odd name.yaml"
    odd.write_text("{}\n")
    result = syn2mas.check(mapdata(world, runtime="docker", service={"docker": {"command": "/bin/true"}}))
    assert result["result"] is False and "cannot be mounted into the MAS container" in result["errors"][0]
    assert cli.calls == []


def test_explicit_synapse_config_files_and_database_uri(world, cli, up, pillar):
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


def test_a_failed_stop_starts_synapse_again(world, cli, up, services):
    services["service.stop"].side_effect = [True, False]
    data = mapdata(world, service={"manage": True, "name": "mas-unit"}, synapse={"service": "synapse-unit"})
    result = syn2mas.migrate(mapdata=data)
    assert result["result"] is False and result["errors"] == ["service.stop mas-unit failed"]
    assert result["services"] == {"stopped": ["synapse-unit"], "started": ["synapse-unit"]}
    assert marker(world) is None and cli.actions == ["check"]


def test_reset_repairs_an_unreadable_marker(world):
    (world["base"] / "formula" / "syn2mas.json").write_text("{not json")
    done = syn2mas.reset(confirm=True, mapdata=mapdata(world))
    assert done["result"] is True and done["changes"] == {"phase": {"old": "unreadable", "new": "legacy_auth"}}
    assert marker(world)["phase"] == "legacy_auth"


def test_one_run_at_a_time(world, cli, up):
    data = mapdata(world, syn2mas={"stop_services": False})
    with syn2mas._exclusive(data), pytest.raises(CommandExecutionError, match="another syn2mas run"):
        syn2mas.migrate(mapdata=data)


# ------------------------------------------------------------------ reset / delegated


def test_reset_needs_confirmation_and_synapse_authoritative(world, cli, up):
    data = mapdata(world, syn2mas={"stop_services": False})
    syn2mas.migrate(mapdata=data)
    assert syn2mas.reset(mapdata=data)["result"] is False
    delegating = mapdata(world, migration_in_progress=False)
    assert "set it to true" in syn2mas.reset(confirm=True, mapdata=delegating)["errors"][0]
    done = syn2mas.reset(confirm=True, mapdata=data)
    assert done["result"] is True and done["changes"] == {"phase": {"old": "migrated", "new": "legacy_auth"}}
    saved = marker(world)
    assert saved["phase"] == "legacy_auth" and saved["reset_from"] == "migrated"
    assert [h["phase"] for h in saved["history"]] == ["migrating", "migrated", "legacy_auth"]
    assert syn2mas.reset(confirm=True, mapdata=data)["changes"] == {}


def test_mark_delegated(world, cli, up):
    data = mapdata(world, syn2mas={"stop_services": False})
    delegating = mapdata(world, migration_in_progress=False)
    fresh = syn2mas.mark_delegated(delegating)  # a new homeserver: nothing recorded, nothing to do
    assert fresh["result"] is True and fresh["changes"] == {} and marker(world) is None

    cli.answers["migrate"] = {"retcode": 1, "stdout": "", "stderr": "Error: boom\n"}
    syn2mas.migrate(mapdata=data)
    half = syn2mas.mark_delegated(delegating)
    assert half["result"] is False and "has not completed (phase migrating)" in half["errors"][0]

    cli.answers["migrate"] = MIGRATE_OK
    syn2mas.migrate(mapdata=data)
    assert "not there yet" in syn2mas.mark_delegated(delegating)["errors"][0]
    (world["conf_d"] / "matrix-authentication-service.yaml").write_text("{}\n")
    done = syn2mas.mark_delegated(delegating)
    assert done["result"] is True and done["changes"] == {"phase": {"old": "migrated", "new": "delegated"}}
    assert marker(world)["phase"] == "delegated"
    assert syn2mas.mark_delegated(delegating)["changes"] == {}


# ------------------------------------------------------------------ states


def test_state_migrated_runs_once(world, cli, up):
    data = mapdata(world, syn2mas={"stop_services": False})
    ret = syn2mas_state.migrated("syn2mas", mapdata=data)
    assert ret["result"] is True and ret["changes"] == {"phase": {"old": "legacy_auth", "new": "migrated"}}
    again = syn2mas_state.migrated("syn2mas", mapdata=data)
    assert again["result"] is True and again["changes"] == {} and "already migrated" in again["comment"]
    assert cli.actions == ["check", "migrate"]


def test_state_failure_reports_the_phase_change_and_errors(world, cli, up):
    cli.answers["migrate"] = {"retcode": 1, "stdout": "", "stderr": "Error: half-way\n"}
    ret = syn2mas_state.migrated("syn2mas", mapdata=mapdata(world), stop_services=False)
    assert ret["result"] is False and ret["changes"] == {"phase": {"old": "legacy_auth", "new": "migrating"}}
    assert "Error: half-way" in ret["comment"]


def test_state_test_mode_touches_nothing(world, cli, up, services):
    syn2mas_state.__opts__["test"] = True
    data = mapdata(world)
    ret = syn2mas_state.migrated("syn2mas", mapdata=data)
    assert ret["result"] is None and ret["changes"] == {"phase": {"old": "legacy_auth", "new": "migrated"}}
    assert "syn2mas would migrate" in ret["comment"]
    dry = syn2mas_state.migrated("syn2mas", mapdata=data, dry_run=True)
    assert dry["result"] is None and dry["changes"] == {} and "--dry-run" in dry["comment"]
    refused = syn2mas_state.migrated("syn2mas", mapdata=mapdata(world, migration_in_progress=False))
    assert refused["result"] is False and "mas:migration_in_progress is false" in refused["comment"]
    assert cli.calls == [] and marker(world) is None
    services["service.stop"].assert_not_called()


def test_state_dry_run_reports_no_change(world, cli, up):
    ret = syn2mas_state.migrated("syn2mas", mapdata=mapdata(world, syn2mas={"dry_run": True}))
    assert ret["result"] is True and ret["changes"] == {} and "phase unchanged" in ret["comment"]


def test_state_delegated(world, cli, up):
    data = mapdata(world, syn2mas={"stop_services": False})
    syn2mas.migrate(mapdata=data)
    (world["conf_d"] / "matrix-authentication-service.yaml").write_text("{}\n")
    delegating = mapdata(world, migration_in_progress=False)
    syn2mas_state.__opts__["test"] = True
    predicted = syn2mas_state.delegated("syn2mas", mapdata=delegating)
    assert predicted["result"] is None and marker(world)["phase"] == "migrated"
    syn2mas_state.__opts__["test"] = False
    ret = syn2mas_state.delegated("syn2mas", mapdata=delegating)
    assert ret["result"] is True and ret["changes"] == {"phase": {"old": "migrated", "new": "delegated"}}
