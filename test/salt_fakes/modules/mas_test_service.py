"""A stand-in ``service`` provider for the tests (systemd is not PID 1 here).

Loaded through the minion options ``module_dirs`` and ``providers: {service:
mas_test_service}``; it keeps each service's state in the JSON file named by
the minion option ``mas_test_service_state`` and appends every action
(``start``, ``stop``, ``restart``, ``reload``, ``enable``, ``disable``) to its
``actions`` list, so a test can count the restarts an apply caused.
"""

import json
import os

__virtualname__ = "mas_test_service"


def __virtual__():
    if "mas_test_service_state" not in __opts__:
        return (False, "mas_test_service: the minion option mas_test_service_state is not set")
    return __virtualname__


def _load():
    try:
        with open(__opts__["mas_test_service_state"], encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return {"services": {}, "actions": []}


def _save(data):
    path = __opts__["mas_test_service_state"]
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    os.replace(path + ".tmp", path)


def _act(name, action, running=None, enabled=None):
    data = _load()
    service = data["services"].setdefault(name, {"running": False, "enabled": False})
    if running is not None:
        service["running"] = running
    if enabled is not None:
        service["enabled"] = enabled
    data["actions"].append([action, name])
    _save(data)
    return True


def _get(name):
    return _load()["services"].get(name, {"running": False, "enabled": False})


def status(name, sig=None):  # pylint: disable=unused-argument
    """True while ``name`` runs."""
    return _get(name)["running"]


def start(name, **kwargs):  # pylint: disable=unused-argument
    """Start ``name``."""
    return _act(name, "start", running=True)


def stop(name, **kwargs):  # pylint: disable=unused-argument
    """Stop ``name``."""
    return _act(name, "stop", running=False)


def restart(name, **kwargs):  # pylint: disable=unused-argument
    """Restart ``name``."""
    return _act(name, "restart", running=True)


def reload_(name, **kwargs):  # pylint: disable=unused-argument
    """Reload ``name``."""
    return _act(name, "reload")


def force_reload(name, **kwargs):  # pylint: disable=unused-argument
    """Reload ``name``."""
    return _act(name, "reload")


def full_restart(name, **kwargs):  # pylint: disable=unused-argument
    """Restart ``name``."""
    return _act(name, "restart", running=True)


def enable(name, **kwargs):  # pylint: disable=unused-argument
    """Enable ``name``."""
    return _act(name, "enable", enabled=True)


def disable(name, **kwargs):  # pylint: disable=unused-argument
    """Disable ``name``."""
    return _act(name, "disable", enabled=False)


def enabled(name, **kwargs):  # pylint: disable=unused-argument
    """True when ``name`` is enabled."""
    return _get(name)["enabled"]


def disabled(name, **kwargs):  # pylint: disable=unused-argument
    """True when ``name`` is not enabled."""
    return not _get(name)["enabled"]


def available(name):  # pylint: disable=unused-argument
    """Every service exists."""
    return True


def missing(name):  # pylint: disable=unused-argument
    """No service is missing."""
    return False


def get_all():
    """The services seen so far."""
    return sorted(_load()["services"])


def masked(name, runtime=False):  # pylint: disable=unused-argument
    """Nothing is masked."""
    return False


__func_alias__ = {"reload_": "reload"}
