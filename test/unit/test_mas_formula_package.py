"""The helper package the thin Salt modules import (``_utils/mas_formula``): loaded the way Salt loads it, refreshed
after a sync the way a minion daemon needs it."""

import importlib
import os
import shutil
import sys

import pytest

from saltrun import REPO_ROOT

PACKAGE = REPO_ROOT / "_utils" / "mas_formula"


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A copy of the package under another name, with one helper, importable from ``tmp_path``."""
    copy = tmp_path / "mas_formula_copy"
    copy.mkdir()
    shutil.copy2(PACKAGE / "__init__.py", copy / "__init__.py")
    (copy / "value.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield copy
    for name in [n for n in sys.modules if n == "mas_formula_copy" or n.startswith("mas_formula_copy.")]:
        del sys.modules[name]


def test_refresh_imports_a_synced_helper_anew(package):
    pkg = importlib.import_module("mas_formula_copy")
    from mas_formula_copy import value

    assert value.VALUE == 1
    assert pkg.refresh() is False  # first sight: recorded, nothing to do
    # what saltutil.sync_all does to the file on a minion daemon that already imported it
    (package / "value.py").write_text("VALUE = 22\n")
    stat = (package / "value.py").stat()
    os.utime(package / "value.py", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    from mas_formula_copy import value as cached

    assert cached.VALUE == 1, "Python keeps the imported module until it is dropped"
    assert pkg.refresh() is True
    from mas_formula_copy import value as fresh

    assert fresh.VALUE == 22 and fresh is not cached
    assert pkg.refresh() is False


def test_every_helper_opens_with_what_it_owns_and_imports_no_salt_dunder():
    for path in sorted(PACKAGE.glob("*.py")):
        text = path.read_text()
        assert text.startswith('"""'), path.name
        first = text[3:].split("\n", 1)[0]
        assert first.endswith((".", ":")), f"{path.name}: one sentence of what it owns"
        for dunder in ("__salt__", "__opts__", "__pillar__", "__grains__", "__context__", "__states__"):
            assert f"{dunder}[" not in text and f"{dunder}." not in text, f"{path.name} uses {dunder}"
