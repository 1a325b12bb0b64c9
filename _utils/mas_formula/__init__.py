"""The machinery of the mas formula's Salt modules: plain Python helpers the thin modules in ``_modules/`` and ``_states/`` import.

``saltutil.sync_all`` copies this package to the minion's ``extmods/utils/``,
and Salt 3008 puts that directory on ``sys.path`` while it imports an execution
or state module (the loader's ``extra_module_dirs``), so a module imports a
helper at its top (``from mas_formula import grammar``), as any Python module
would. Helpers get no Salt dunders (``__salt__``, ``__opts__``,
``__pillar__``, ...): the modules pass them the data and the callables they need.

A minion daemon keeps imported Python modules for its whole life, while it
imports its Salt modules again after a sync. So each thin module calls
:func:`refresh` before its imports: when a helper's file changed since it was
imported, every helper is dropped from ``sys.modules`` and imported again from
the synced files, and a formula update takes effect without a restart.
"""

import os
import sys

_SEEN = {}


def _stamp(module):
    try:
        info = os.stat(module.__file__)
    except (OSError, TypeError, AttributeError):
        return None
    return (info.st_mtime_ns, info.st_size)


def refresh():
    """Forget every helper when one of their files changed since it was imported (the next import reads the files)."""
    helpers = {name: module for name, module in sys.modules.items() if name.startswith(__name__ + ".") and module}
    stale = any(name in _SEEN and _stamp(module) != _SEEN[name] for name, module in helpers.items())
    if stale:
        package = sys.modules[__name__]
        for name in helpers:
            del sys.modules[name]
            # `from mas_formula import x` returns the package's attribute when it has one
            vars(package).pop(name.rsplit(".", 1)[1], None)
        _SEEN.clear()
        return True
    for name, module in helpers.items():
        _SEEN.setdefault(name, _stamp(module))
    return False
