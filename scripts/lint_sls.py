"""Lint the formula's SLS files as what they are: ``#!mas_py`` files (the
states, built in Python; the formula's renderer, ``_renderers/mas_py.py``) with
ruff, lint and format, knowing the ``state`` helper that renderer gives them,
and checked to define ``run(mas, tplroot)``; ``#!py`` files with ruff; the
others (``#!yaml``, includes only) with salt-lint and yamllint (strict,
``.yamllint``).

Usage: ``.venv/bin/python scripts/lint_sls.py [FILE.sls ...]`` (default: every
SLS under ``mas/``); exit 1 with the linters' output when one complains. Run by
pre-commit and by the tests.
"""

import ast
import json
import pathlib
import subprocess
import sys
import tomllib

REPO = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
PYPROJECT = REPO / "pyproject.toml"
#: What the ``mas_py`` renderer gives a ``#!mas_py`` SLS besides Salt's dunders (ruff's ``builtins`` in pyproject.toml).
MAS_PY_BUILTINS = ["state"]


def split(paths):
    """The ``#!mas_py`` SLS files, the ``#!py`` ones and the others."""
    mas_py, python, other = [], [], []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            shebang = handle.readline().strip()
        {"#!mas_py": mas_py, "#!py": python}.get(shebang, other).append(str(path))
    return mas_py, python, other


def ruff_commands(config, paths):
    """ruff check and ruff format --check of ``paths`` (SLS files read as Python)."""
    ruff = [str(BIN / "ruff"), "--config", str(PYPROJECT), *config]
    return [
        ruff + ["check", "--no-cache", "--extension", "sls:python", *paths],
        ruff + ["format", "--no-cache", "--check", "--extension", "sls:python", *paths],
    ]


def commands(paths):
    """The linter command lines for ``paths``."""
    mas_py, python, other = split(paths)
    found = []
    if mas_py:
        builtins = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["ruff"]["builtins"]
        found += ruff_commands(["--config", f"builtins = {json.dumps(builtins + MAS_PY_BUILTINS)}"], mas_py)
    if python:
        found += ruff_commands([], python)
    if other:
        found.append([str(BIN / "salt-lint"), "-c", str(REPO / ".salt-lint"), *other])
        found.append([str(BIN / "yamllint"), "-s", "-c", str(REPO / ".yamllint"), *other])
    return found


def run_problems(path):
    """What keeps the ``mas_py`` renderer from calling the ``run(mas, tplroot)`` of the SLS ``path``."""
    tree = ast.parse(pathlib.Path(path).read_text(encoding="utf-8"), path)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "run":
            arguments = [argument.arg for argument in node.args.posonlyargs + node.args.args]
            if arguments == ["mas", "tplroot"] and not node.args.vararg and not node.args.kwonlyargs:
                return []
            return [f"{path}:{node.lineno}: #!mas_py: run must take (mas, tplroot), not ({', '.join(arguments)})"]
    return [f"{path}: #!mas_py: no run(mas, tplroot)"]


def main(args):
    paths = args or sorted(str(p) for p in (REPO / "mas").rglob("*.sls"))
    failed = 0
    for path in split(paths)[0]:
        try:
            problems = run_problems(path)
        except SyntaxError:
            problems = []  # ruff reports it
        for problem in problems:
            failed = 1
            print(problem)
    for argv in commands(paths):
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            failed = 1
            print(f"$ {' '.join(argv[:2])} ...\n{proc.stdout}{proc.stderr}")
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
