"""The docker runtime on a minion without docker: every command that needs
mas-cli or MAS says so in one line (``mas.runtime_problem``), and runs nothing.

``cmd.has_exec`` is Salt's real function here (the docker command is a path
under tmp that does not exist), and ``cmd.run_all`` records what would run.
"""

import pytest
import salt.modules.cmdmod
from salt.exceptions import CommandExecutionError

from formula_modules import MODULES, dunders


@pytest.fixture
def pillar(tmp_path):
    return {
        "mas": {
            "enabled": True,
            "server_name": "example.com",
            "base_path": str(tmp_path / "mas"),
            "runtime": "docker",
            "service": {"docker": {"command": str(tmp_path / "no" / "docker")}},
            "synapse": {"config_files": [str(tmp_path / "homeserver.yaml")], "config_dir": str(tmp_path / "conf.d")},
        }
    }


@pytest.fixture
def ran():
    return []


@pytest.fixture
def configure_loader_modules(pillar, ran):
    def run_all(argv, **kwargs):  # pylint: disable=unused-argument
        ran.append(argv)
        return {"retcode": 0, "stdout": "", "stderr": ""}

    return dunders(pillar, salt={"cmd.has_exec": salt.modules.cmdmod.has_exec, "cmd.run_all": run_all})


@pytest.fixture
def deployed(tmp_path):
    """What `mas` would have left: the wrapper, Synapse's config, the admin client secret."""
    (tmp_path / "mas" / "bin").mkdir(parents=True)
    (tmp_path / "mas" / "bin" / "mas-cli").write_text("#!/bin/sh\n")
    (tmp_path / "mas" / "bin" / "mas-cli").chmod(0o755)
    (tmp_path / "homeserver.yaml").write_text("server_name: example.com\n")
    (tmp_path / "mas" / "config" / "secrets").mkdir(parents=True)
    (tmp_path / "mas" / "config" / "secrets" / "admin_client_secret").write_text("x" * 32)


def line(tmp_path):
    return f"mas:runtime is docker but {tmp_path}/no/docker is missing: install Docker or set mas:runtime: binary"


def test_runtime_problem_names_the_missing_docker(tmp_path, pillar):
    assert MODULES["mas"].runtime_problem() == line(tmp_path)


def test_runtime_problem_is_empty_when_docker_is_there(tmp_path, pillar):
    docker = tmp_path / "no" / "docker"
    docker.parent.mkdir()
    docker.write_text("#!/bin/sh\n")
    docker.chmod(0o755)
    assert MODULES["mas"].runtime_problem() == ""


def test_runtime_problem_with_the_binary_runtime(pillar, tmp_path):
    pillar["mas"].update(runtime="binary", binary=str(tmp_path / "mas-cli"))
    assert MODULES["mas"].runtime_problem() == (
        f"mas:runtime is binary but {tmp_path}/mas-cli is missing: install mas-cli there or set mas:binary"
    )
    (tmp_path / "mas-cli").write_text("#!/bin/sh\n")
    (tmp_path / "mas-cli").chmod(0o755)
    assert MODULES["mas"].runtime_problem() == ""


def test_doctor_says_so_in_its_check_and_runs_nothing(tmp_path, deployed, ran):
    report = MODULES["mas_doctor"].run(timeout=2)
    check = next(c for c in report["checks"] if c["name"] == "mas_cli_doctor")
    assert (check["status"], f"{check['message']}: {check['fix']}") == ("error", line(tmp_path))
    assert ran == []


def test_syn2mas_check_and_status_say_so_and_run_nothing(tmp_path, deployed, ran):
    check = MODULES["mas_syn2mas"].check()
    assert check["result"] is False and check["errors"] == [line(tmp_path)]
    status = MODULES["mas_syn2mas"].status()
    assert line(tmp_path) in status["dry_run_blockers"]
    assert ran == []


def test_user_registration_says_so(tmp_path, deployed):
    with pytest.raises(CommandExecutionError) as excinfo:
        MODULES["mas_user"].register("alice")
    assert str(excinfo.value) == line(tmp_path)


def test_image_present_says_so_and_runs_nothing(tmp_path, ran):
    with pytest.raises(CommandExecutionError) as excinfo:
        MODULES["mas"].image_present(
            "ghcr.io/element-hq/matrix-authentication-service:1.23.0", str(tmp_path / "no/docker")
        )
    assert str(excinfo.value) == line(tmp_path)
    assert ran == []
