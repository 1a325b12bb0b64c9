"""The linters, as pre-commit runs them: ruff (lint and format), salt-lint and
yamllint on the states, pillar.example and the parameters, and the check that
every public function has a CLI example.

The SLS files are Jinja templates, so yamllint reads them as Salt renders
them (with a pillar that enables every branch), in one salt process.
"""

import json
import pathlib
import subprocess
import sys

import pytest

from pillars import deep_update
from saltrun import REPO_ROOT

BIN = pathlib.Path(sys.executable).parent
SLS_FILES = sorted(p for p in (REPO_ROOT / "mas").rglob("*.sls"))

RENDER = """
import json, sys
import salt.client
caller = salt.client.Caller(c_path=sys.argv[1])
out = {}
for sls in sys.argv[2:]:
    path = "salt://" + sls.replace(".", "/") + ".sls"
    out[sls] = caller.cmd("slsutil.renderer", path, default_renderer="jinja", sls=sls)
print(json.dumps(out))
"""

RENDERED_RULES = (
    "{extends: default, rules: {line-length: disable, document-start: disable, "
    "empty-lines: {max: 2}, comments-indentation: disable, "
    "indentation: {spaces: 2, indent-sequences: whatever}}}"
)


def test_salt_lint_passes_on_every_state():
    proc = subprocess.run(
        [str(BIN / "salt-lint"), "-c", str(REPO_ROOT / ".salt-lint"), *map(str, SLS_FILES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_lint_and_format():
    for args in (["check", "."], ["format", "--check", "."]):
        proc = subprocess.run([str(BIN / "ruff"), *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"ruff {' '.join(args)}:\n{proc.stdout}{proc.stderr}"


def test_every_public_function_has_a_cli_example():
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "check_cli_examples.py")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_cli_example_check_finds_what_is_missing(tmp_path):
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        import check_cli_examples  # pylint: disable=import-outside-toplevel
    finally:
        sys.path.pop(0)
    module = tmp_path / "broken.py"
    module.write_text(
        '"""Owns nothing."""\n__virtualname__ = "broken"\n\n\ndef documented():\n'
        '    """Does it.\n\n    CLI Example:\n\n    .. code-block:: bash\n\n        salt-call other.fn\n    """\n\n\n'
        "def bare():\n    pass\n"
    )
    found = check_cli_examples.problems(module)
    assert "broken.py: no __virtual__" in found
    assert "broken.py: broken.bare has no CLI Example" in found
    assert any("broken.documented: no `salt-call broken.documented" in line for line in found)


def test_yamllint_strict_on_pillar_example_and_parameters():
    files = [
        REPO_ROOT / "pillar.example",
        REPO_ROOT / "mas/parameters/defaults.yaml",
        REPO_ROOT / ".yamllint",
        REPO_ROOT / ".pre-commit-config.yaml",
    ]
    proc = subprocess.run(
        [str(BIN / "yamllint"), "-s", "-c", str(REPO_ROOT / ".yamllint"), *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("variant", ["enabled", "migrating", "disabled"])
def test_yamllint_on_every_rendered_state(salt_minion, full_pillar, tmp_path, variant):
    pillar = deep_update(
        full_pillar,
        {
            "database": {"manage": True},
            "service": {"manage": True},
            "users": [{"username": "bot", "password": "x", "emails": ["b@example.com"]}],
        },
    )
    if variant == "migrating":
        pillar = deep_update(pillar, {"migration_in_progress": True, "runtime": "docker", "proxy": {"type": "traefik"}})
    elif variant == "disabled":
        pillar = deep_update(pillar, {"enabled": False, "clean": {"purge": True}})
    salt_minion.set_pillar({"mas": pillar})
    names = [".".join(p.relative_to(REPO_ROOT).with_suffix("").parts) for p in SLS_FILES]
    proc = subprocess.run(
        [sys.executable, "-c", RENDER, str(salt_minion.confdir / "minion"), *names],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rendered = json.loads(proc.stdout.splitlines()[-1])
    problems = []
    for name, text in rendered.items():
        if isinstance(text, dict):  # a ``#!yaml`` SLS (only includes): Salt parses its own text
            text = (REPO_ROOT / (name.replace(".", "/") + ".sls")).read_text()
        assert isinstance(text, str), f"{name} did not render: {text}"
        target = tmp_path / f"{name}.yaml"
        target.write_text(text)
        lint = subprocess.run(
            [str(BIN / "yamllint"), "-d", RENDERED_RULES, str(target)], capture_output=True, text=True, check=False
        )
        if lint.returncode != 0:
            problems.append(lint.stdout)
    assert not problems, "\n".join(problems)
