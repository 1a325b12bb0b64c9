"""The unit tier's default minion pillar. A test file takes the formula's loader fixture with
``from formula_modules import configure_loader_modules`` (pytest-salt-factories looks for it in the
test module) and overrides ``pillar`` or ``configure_loader_modules`` where it needs to."""

import pytest


@pytest.fixture
def pillar():
    """The minion's pillar as the modules see it (``__pillar__``)."""
    return {}
