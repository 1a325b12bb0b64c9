"""The formula's Salt modules (``_modules/``, ``_states/``) for the unit tests.

Each module is imported once, under its own name, and the tests hand them to
pytest-salt-factories' ``configure_loader_modules`` through :func:`dunders`:
every module's ``__salt__`` holds the *real* public functions of the formula's
other execution modules (as Salt's loader would), plus the stand-ins a test
gives for the outside world (``cmd.run_all``, ``service.*``, ...). Two
stand-ins every test gets: Salt's file server (``cp.get_file_str`` reads
``mas/parameters/defaults.yaml`` from this checkout and has no other file) and ``cmd.has_exec``,
which says every command exists (the docker CLI of the docker runtime).
"""

import copy
import importlib.util
import inspect

import pytest
import salt.utils.dictupdate
import yaml
from salt.modules.cmdmod import has_exec

from saltrun import REPO_ROOT

DEFAULTS_FILE = REPO_ROOT / "mas" / "parameters" / "defaults.yaml"
DEFAULTS = yaml.safe_load(DEFAULTS_FILE.read_text())["values"]

EXECUTION_MODULES = (
    "mas",
    "mas_secret",
    "mas_db",
    "mas_user",
    "mas_token",
    "mas_doctor",
    "mas_proxy",
    "mas_synapse",
    "mas_syn2mas",
    "mas_clean",
)
STATE_MODULES = ("mas", "mas_secret", "mas_db", "mas_user", "mas_doctor", "mas_synapse", "mas_syn2mas", "mas_clean")


def load(kind, name, alias=None):
    """Import ``<kind>/<name>.py`` (kind ``_modules`` or ``_states``)."""
    alias = alias or f"formula{kind}_{name}"
    spec = importlib.util.spec_from_file_location(alias, REPO_ROOT / kind / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODULES = {name: load("_modules", name) for name in EXECUTION_MODULES}
STATES = {name: load("_states", name) for name in STATE_MODULES}

#: The smallest pillar that enables the formula.
MINIMAL = {"enabled": True, "server_name": "example.com", "base_path": "/srv/mas"}


def mapdata(**pillar):
    """The formula's map for ``pillar``: defaults.yaml, :data:`MINIMAL` and ``pillar`` merged the way
    Salt merges pillar (``salt.utils.dictupdate.update``), through ``mas.settings``."""
    merged = salt.utils.dictupdate.update(salt.utils.dictupdate.update(copy.deepcopy(DEFAULTS), MINIMAL), pillar)
    return MODULES["mas"].settings(merged)


def public_functions(name):
    """``{"<module>.<function>": function}`` of one execution module, as Salt's loader names them."""
    module = MODULES[name]
    return {
        f"{name}.{fn}": obj
        for fn, obj in vars(module).items()
        if inspect.isfunction(obj) and not fn.startswith("_") and obj.__module__ == module.__name__
    }


def dunders(pillar, salt=None, states=None, test=False):
    """The ``configure_loader_modules`` mapping for every module of the formula.

    pillar
        The minion's pillar (shared, so a test can change it).
    salt
        Stand-ins for functions outside the formula (``cmd.run_all``, ...).
    states
        Stand-ins for ``__states__`` (``file.managed``, ...).
    test
        ``__opts__["test"]``.
    """
    funcs = {
        # Salt's answer for a file the file server does not have is False
        "cp.get_file_str": lambda url, **kwargs: (
            DEFAULTS_FILE.read_text() if url.endswith("/parameters/defaults.yaml") else False
        ),
        # Salt's own: whether a command exists on this machine
        "cmd.has_exec": has_exec,
    }
    for name in EXECUTION_MODULES:
        funcs.update(public_functions(name))
    funcs.update(salt or {})
    opts = {"test": test}
    context = {}
    grains = {"id": "mas-unit", "os_family": "Debian"}
    common = {"__pillar__": pillar, "__context__": context, "__opts__": opts, "__salt__": funcs}
    out = {module: {**common, "__grains__": grains} for module in MODULES.values()}
    out.update({module: {**common, "__states__": states or {}} for module in STATES.values()})
    return out


@pytest.fixture
def configure_loader_modules(pillar):
    """pytest-salt-factories' loader fixture: every module of the formula with ``pillar`` (import it into a test module)."""
    return dunders(pillar)
