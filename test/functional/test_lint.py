"""The linters, as pre-commit runs them: ruff (lint and format) on the code and
the ``#!mas_py`` SLS files (knowing what the formula's renderer gives them), salt-lint and yamllint on the YAML SLS files (includes
only), yamllint on pillar.example and the parameters, and the check that every
public function has a CLI example. Every SLS renders to state data with a
pillar that enables every branch (in one salt process).
"""

import ast
import json
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest
import yaml

from pillars import deep_update
from saltrun import RENDERED_ON_A_MASTER, REPO_ROOT

BIN = pathlib.Path(sys.executable).parent
SLS_FILES = sorted(
    p for p in (REPO_ROOT / "mas").rglob("*.sls") if str(p.relative_to(REPO_ROOT)) not in RENDERED_ON_A_MASTER
)

RENDER = """
import json, sys
import salt.client
caller = salt.client.Caller(c_path=sys.argv[1])
out = {}
for sls in sys.argv[2:]:
    path = "salt://" + sls.replace(".", "/") + ".sls"
    out[sls] = caller.cmd("slsutil.renderer", path, default_renderer="jinja|yaml", sls=sls)
print(json.dumps(out))
"""


def test_sls_lint_passes_on_every_state():
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "lint_sls.py")], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sls_lint_finds_what_is_wrong(tmp_path):
    python = tmp_path / "broken.sls"
    python.write_text(
        '#!py\n"""Owns nothing."""\nimport os\n\n\ndef run():\n    return {"x": {"test.nop": [{"name": undefined}]}}\n'
    )
    yaml_sls = tmp_path / "bad.sls"
    yaml_sls.write_text("#!yaml\n---\ninclude:\n  - .file\ninclude:\n  - .other\n")
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "lint_sls.py"), str(python), str(yaml_sls)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "F401" in proc.stdout  # the unused import
    assert "F821" in proc.stdout  # the undefined name
    assert "key-duplicates" in proc.stdout  # yamllint on the YAML SLS


def test_sls_lint_knows_the_formula_renderer(tmp_path):
    """``#!mas_py``: ruff knows ``state`` (the renderer gives it) and still finds an undefined name; ``run`` must take
    ``(mas, tplroot)``, what the renderer calls it with."""
    good = tmp_path / "good.sls"
    good.write_text(
        '#!mas_py\n"""Owns one state."""\n\n\ndef run(mas, tplroot):\n'
        '    return {"x": state("test.nop", name=mas["user"] + tplroot + __sls__)}\n'
    )
    undefined = tmp_path / "undefined.sls"
    undefined.write_text('#!mas_py\n"""Owns nothing."""\n\n\ndef run(mas, tplroot):\n    return {"x": stat(mas)}\n')
    old = tmp_path / "old.sls"
    old.write_text('#!mas_py\n"""Owns nothing."""\n\n\ndef run():\n    return {}\n')
    missing = tmp_path / "missing.sls"
    missing.write_text('#!mas_py\n"""Owns nothing."""\n\n\ndef build(mas, tplroot):\n    return {}\n')
    lint = [sys.executable, str(REPO_ROOT / "scripts" / "lint_sls.py")]
    proc = subprocess.run([*lint, str(good)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run([*lint, str(undefined), str(old), str(missing)], capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert "F821 Undefined name `stat`" in proc.stdout, proc.stdout
    assert "old.sls:5: #!mas_py: run must take (mas, tplroot), not ()" in proc.stdout, proc.stdout
    assert "missing.sls: #!mas_py: no run(mas, tplroot)" in proc.stdout, proc.stdout


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


def variant_pillar(full_pillar, variant):
    """A pillar that enables every branch of one variant: ``enabled``, ``migrating`` or ``disabled``."""
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
    return pillar


def render_every_sls(salt_minion, pillar):
    """``{sls: state data}`` of every SLS file under mas/ with ``pillar`` (one salt process)."""
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
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("variant", ["enabled", "migrating", "disabled"])
def test_every_state_renders_to_state_data(salt_minion, full_pillar, variant):
    pillar = variant_pillar(full_pillar, variant)
    rendered = render_every_sls(salt_minion, pillar)
    for name, data in rendered.items():
        assert isinstance(data, dict), f"{name} did not render: {data}"
        for state_id, body in data.items():
            if state_id in ("include", "extend"):
                continue
            # {"module.function": [{"arg": value}, ...]}: one function, each argument its own mapping
            assert isinstance(body, dict) and len(body) == 1, f"{name}: {state_id}: {body}"
            ((function, args),) = body.items()
            assert "." in function and isinstance(args, list), f"{name}: {state_id}: {body}"
            assert all(isinstance(arg, dict) and len(arg) == 1 for arg in args), f"{name}: {state_id}: {args}"


#: State modules whose docstring examples are checked against the SLS files (an ``extend`` is copied from them).
EXAMPLED_STATES = ("mas_syn2mas",)


def docstring_examples(module):
    """``{function: [yaml example, ...]}`` of the ``.. code-block:: yaml`` blocks of ``_states/<module>.py``."""
    tree = ast.parse((REPO_ROOT / "_states" / f"{module}.py").read_text())
    found = {}
    for node in tree.body:
        text = ast.get_docstring(node) if isinstance(node, ast.FunctionDef) else None
        for block in re.findall(r"\.\. code-block:: yaml\n\n((?: +\S.*\n?|\n)+)", text or ""):
            found.setdefault(node.name, []).append(yaml.safe_load(textwrap.dedent(block)))
    return found


def test_state_examples_name_the_states_the_sls_declare(salt_minion, full_pillar):
    """Issue #17.6: each example's state ID, function and requisites are those the SLS files under mas/ declare
    (in one of the variants), so that an ``extend`` copied from a docstring extends a real state."""
    declared = {}
    for variant in ("enabled", "migrating", "disabled"):
        for data in render_every_sls(salt_minion, variant_pillar(full_pillar, variant)).values():
            for state_id, body in data.items():
                if state_id not in ("include", "extend"):
                    declared[state_id] = next(iter(body))
    for module in EXAMPLED_STATES:
        examples = docstring_examples(module)
        assert examples, f"_states/{module}.py has no example"
        for function, blocks in examples.items():
            for block in blocks:
                ((state_id, body),) = block.items()
                ((called, args),) = body.items()
                assert state_id in declared, f"{module}.{function}: no SLS declares {state_id}"
                assert called == declared[state_id] == f"{module}.{function}", f"{state_id}: {called}"
                for arg in args:
                    ((key, value),) = arg.items()
                    if key in ("require", "require_in", "watch", "watch_in", "onchanges", "onchanges_in"):
                        for requisite in value:
                            ((kind, target),) = requisite.items()
                            assert target in declared, f"{state_id}: {key} names {target}, which no SLS declares"
                            assert declared[target].split(".")[0] == kind, f"{state_id}: {kind}: {target}"
