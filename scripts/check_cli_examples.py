"""Check that every public function of the formula's execution modules has a
runnable ``CLI Example`` naming it (``salt-call <module>.<function>``), and
every module a ``__virtual__`` and a docstring opening with what it owns.

Usage: ``.venv/bin/python scripts/check_cli_examples.py`` (exit 1 and a list
of problems when something is missing). Run by pre-commit and by the tests.
"""

import ast
import pathlib
import re
import shlex
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def problems(path):
    """The problems of one ``_modules/*.py`` file."""
    tree = ast.parse(path.read_text())
    found = []
    name = path.stem
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__virtualname__" for t in node.targets):
            name = node.value.value
    doc = ast.get_docstring(tree)
    if not doc or not doc.strip().splitlines()[0].strip():
        found.append(f"{path.name}: no module docstring saying what it owns")
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    if "__virtual__" not in functions:
        found.append(f"{path.name}: no __virtual__")
    for fn, node in functions.items():
        if fn.startswith("_"):
            continue
        text = ast.get_docstring(node) or ""
        if "CLI Example:" not in text:
            found.append(f"{path.name}: {name}.{fn} has no CLI Example")
            continue
        example = text.split("CLI Example:", 1)[1]
        calls = [line.strip() for line in example.splitlines() if line.strip().startswith("salt")]
        good = False
        for call in calls:
            try:
                argv = shlex.split(call)
            except ValueError:
                found.append(f"{path.name}: {name}.{fn}: CLI example is not valid shell: {call}")
                continue
            if re.fullmatch(r"salt(-call)?", argv[0]) and f"{name}.{fn}" in argv[1:3]:
                good = True
        if not good:
            found.append(f"{path.name}: {name}.{fn}: no `salt-call {name}.{fn} ...` line in its CLI Example")
    return found


def main():
    found = []
    for path in sorted((REPO / "_modules").glob("*.py")):
        found += problems(path)
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
