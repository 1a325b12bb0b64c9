"""The formula's Python keeps the shape docs/development.md promises: rooms of at most 1,200 lines that each say what
they own, the map (`mas`) on the ground floor, and no module calling back up the stairs."""

import ast
import re

import pytest

from saltrun import REPO_ROOT

SOURCES = sorted(
    p
    for pattern in ("_modules/*.py", "_states/*.py", "_renderers/*.py", "_utils/mas_formula/*.py", "_pillar/*.py")
    for p in REPO_ROOT.glob(pattern)
)
CALL = re.compile(r'__salt__\["(mas[a-z0-9_]*)\.')


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_each_file_is_a_room_that_says_what_it_owns(path):
    text = path.read_text()
    assert len(text.splitlines()) <= 1200, f"{path.name}: {len(text.splitlines())} lines"
    doc = ast.get_docstring(ast.parse(text))
    assert doc, f"{path.name} opens with no docstring"
    first = doc.strip().split("\n\n", 1)[0].replace("\n", " ")
    assert first.endswith((".", ":")), f"{path.name}: the first sentence says what it owns: {first!r}"


def _calls():
    """``{module: {formula modules it calls through __salt__}}`` of the execution modules."""
    graph = {}
    for path in sorted((REPO_ROOT / "_modules").glob("*.py")):
        graph[path.stem] = set(CALL.findall(path.read_text())) - {path.stem}
    return graph


def test_the_map_calls_no_other_formula_module():
    assert _calls()["mas"] == set()


def test_no_module_calls_back_up_the_stairs():
    """The calls between execution modules form no cycle (each calls only modules below itself)."""
    graph = _calls()
    done, active = set(), []

    def visit(node):
        assert node not in active, f"cycle: {' -> '.join([*active[active.index(node) :], node])}"
        if node in done:
            return
        active.append(node)
        for callee in graph.get(node, ()):
            visit(callee)
        active.pop()
        done.add(node)

    for module in graph:
        visit(module)
    assert all(graph[m] <= set(graph) for m in graph), "a call to a module the formula does not have"


def test_readmes_call_graph_is_the_calls_as_they_are():
    """README's layout section draws who calls whom: each arrow is a call through ``__salt__`` and each call an
    arrow (every module's trunk ends at the map, ``mas``)."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```text\n", 1)[1].split("```", 1)[0]
    drawn = {"mas": set()}
    for line in block.splitlines():
        callers, callees = line.split("─►", 1)
        for caller in callers.split(","):
            drawn[caller.strip(" ─┴┤┐")] = set(re.findall(r"mas[a-z0-9_]*", callees)) - {"mas"}
    assert drawn == {module: calls - {"mas"} for module, calls in _calls().items()}
