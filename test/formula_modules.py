"""Import the formula's Salt modules (``_modules/``, ``_states/``) for unit
tests run through pytest-salt-factories' ``configure_loader_modules``."""

import importlib.util

import yaml

from saltrun import REPO_ROOT

DEFAULTS = yaml.safe_load((REPO_ROOT / "mas" / "parameters" / "defaults.yaml").read_text())["values"]


def load(kind, name, alias):
    """Import ``<kind>/<name>.py`` (kind ``_modules`` or ``_states``) as ``alias``."""
    spec = importlib.util.spec_from_file_location(alias, REPO_ROOT / kind / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
