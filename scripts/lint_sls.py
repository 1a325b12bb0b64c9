"""Lint the formula's SLS files as what they are: ``#!py`` files (the states,
built in Python) with ruff, lint and format; the others (``#!yaml``, includes
only) with salt-lint and yamllint (strict, ``.yamllint``).

Usage: ``.venv/bin/python scripts/lint_sls.py [FILE.sls ...]`` (default: every
SLS under ``mas/``); exit 1 with the linters' output when one complains. Run by
pre-commit and by the tests.
"""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent


def split(paths):
    """The ``#!py`` SLS files and the others."""
    python, other = [], []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            (python if handle.readline().strip() == "#!py" else other).append(str(path))
    return python, other


def commands(paths):
    """The linter command lines for ``paths``."""
    python, other = split(paths)
    ruff = [str(BIN / "ruff"), "--config", str(REPO / "pyproject.toml")]
    found = []
    if python:
        found.append(ruff + ["check", "--no-cache", "--extension", "sls:python", *python])
        found.append(ruff + ["format", "--no-cache", "--check", "--extension", "sls:python", *python])
    if other:
        found.append([str(BIN / "salt-lint"), "-c", str(REPO / ".salt-lint"), *other])
        found.append([str(BIN / "yamllint"), "-s", "-c", str(REPO / ".yamllint"), *other])
    return found


def main(args):
    paths = args or sorted(str(p) for p in (REPO / "mas").rglob("*.sls"))
    failed = 0
    for argv in commands(paths):
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            failed = 1
            print(f"$ {' '.join(argv[:2])} ...\n{proc.stdout}{proc.stderr}")
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
