"""
The renderer of the mas formula's own SLS files (``#!mas_py``): Python, as with Salt's ``#!py``, with the preamble
every such SLS shared done once, here.

A ``#!mas_py`` SLS defines ``run(mas, tplroot)`` and returns its states as data, like a ``#!py`` one. This renderer
asks for the formula's map (``mas.mapdata``, computed once per run and pillar, which also refuses a foreign file the
formula would write), and hands ``run`` the map and ``tplroot`` (the formula's directory, ``mas``). A bad pillar
fails the render with the pillar's error, naming the key, and no traceback through Salt's loader; so does an error a
module raises on purpose while the SLS asks it something (``SaltInvocationError``, ``CommandExecutionError``: the
frames are logged at debug level). Any other exception is a bug of the SLS: it is shown with its traceback, as
``#!py`` would.

An SLS that belongs to one role of a deployment on several hosts names it at its top (``ROLE = "synapse"``; roles:
``mas``, ``synapse``, ``database``, ``proxy``). On a minion whose ``mas:roles`` lacks that role, ``run`` is not
called: the SLS renders to one ``test.nop`` saying where that part runs (ID ``<the SLS's path with '-'>-test-nop-role``,
e.g. ``mas-synapse-file-test-nop-role``), so that includes and ``sls`` requisites of the other SLS stay valid.

The SLS also sees ``state``, which builds a state's body from keyword arguments, so an SLS reads close to YAML::

    state("file.managed", name=path, mode="0644", require=[{"sls": "mas.config"}])
    # {"file.managed": [{"name": path}, {"mode": "0644"}, {"require": [{"sls": "mas.config"}]}]}

and the dunders ``#!py`` gives (``__salt__``, ``__grains__``, ``__opts__``, ``__pillar__``, ``__sls__``,
``__env__``). ``salt-call state.show_sls mas --out=yaml`` shows what the SLS files build, as YAML.

``saltutil.sync_all`` (or ``saltutil.sync_renderers``) brings this renderer to the minion, with the formula's
modules. Without it, Salt logs ``The renderer "mas_py" is not available`` and renders such an SLS to nothing.
"""

import importlib.machinery
import importlib.util
import logging
import os
import traceback

from salt.exceptions import CommandExecutionError, SaltInvocationError, SaltRenderError

__virtualname__ = "mas_py"

log = logging.getLogger(__name__)


def __virtual__():
    return __virtualname__


def state(function, /, **arguments):
    """The body of a state: ``{function: [{argument: value}, ...]}``, the arguments in the order given."""
    return {function: [{key: value} for key, value in arguments.items()]}


def elsewhere(sls, role, roles):
    """The one state of an SLS of ``role`` on a minion that lacks it (``mas:roles`` is ``roles``)."""
    return {
        f"{sls.replace('.', '-')}-test-nop-role": state(
            "test.nop", name=f"{sls}: the {role} role is on another minion (mas:roles here: {', '.join(roles)})"
        )
    }


def render(template, saltenv="base", sls="", tmplpath=None, **kws):  # pylint: disable=unused-argument
    """
    Render a ``#!mas_py`` SLS: its ``run(mas, tplroot)``, given the formula's map.

    :rtype: dict
    """
    if not tmplpath or not os.path.isfile(tmplpath):
        raise SaltRenderError(f"Template {tmplpath} is not a file!")
    if "mas.mapdata" not in __salt__:
        raise SaltRenderError(
            f"{__salt__.missing_fun_string('mas.mapdata').rstrip('.')}: sync the formula's modules first "
            "(saltutil.sync_all)"
        )
    try:
        mas = __salt__["mas.mapdata"](refuse_foreign=True)
    except (SaltInvocationError, CommandExecutionError) as exc:
        log.debug("mas formula: the map of %s", sls, exc_info=True)
        raise SaltRenderError(str(exc)) from None
    # compiled to bytecode beside Salt's cached copy of the file, as Salt's py renderer does
    loader = importlib.machinery.SourceFileLoader(sls or "mas_sls", tmplpath)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    vars(module).update(
        state=state,
        __salt__=__salt__,
        __grains__=__grains__,
        __opts__=__opts__,
        __pillar__=__pillar__,
        __sls__=sls,
        __env__=saltenv,
    )
    try:
        loader.exec_module(module)
        role = getattr(module, "ROLE", None)
        if role is not None and not mas["role"][role]:
            return elsewhere(sls, role, mas["roles"])
        return module.run(mas, sls.split(".")[0])
    except (SaltInvocationError, CommandExecutionError) as exc:
        log.debug("mas formula: rendering %s", sls, exc_info=True)
        raise SaltRenderError(str(exc)) from None
    except Exception:  # pylint: disable=broad-except
        raise SaltRenderError(traceback.format_exc()) from None
