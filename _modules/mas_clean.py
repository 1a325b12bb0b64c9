"""
The purge of the ``mas`` formula (``mas:clean:purge``): the files it made under ``mas:base_path``, and nothing else.

* :py:func:`purge_plan` tells, changing nothing, what a purge removes and
  what it keeps, and why.
* :py:func:`purge` removes it (the ``mas_clean.purged`` state of
  ``mas.install.clean`` drives it).

Only the formula's own directories are looked into (``config/``,
``config/secrets/``, ``config/keys/``, ``bin/``, ``data/``,
``registration-tokens/``, ``dist/``, its state directory ``formula/``, the
default home of Synapse's copy of the shared secret, and ``base_path``
itself), and in them only a file the formula can tell as its own goes: a
template carrying its banner (``mas.managed_by_formula``), a file its record
lists (``mas_secret.recorded``), a secret file or record at a name the
formula reserves in its own secret and state directories, the temporary file
of an interrupted write (``mas_secret.temporaries``) and a release it
extracted (``dist/mas-cli-<hash>``). Everything else stays, links are never
followed, and a directory goes only when nothing is left in it.
"""

import logging
import os
import re
import shutil
import stat

from salt.exceptions import CommandExecutionError

import mas_formula

mas_formula.refresh()
from mas_formula import layout  # noqa: E402  (after the refresh: a synced update is imported anew)

log = logging.getLogger(__name__)

__virtualname__ = "mas_clean"

#: A release of the binary runtime, extracted by ``mas.install.binary`` (``_binary_paths``).
_RELEASE = re.compile(r"mas-cli-[0-9a-f]{16}")
NOT_OURS = "not written by the formula (no banner, not in its record)"


def __virtual__():
    if "mas.mapdata" in __salt__ and "mas_secret.recorded" in __salt__:
        return __virtualname__
    return (False, "The mas_clean module needs the mas and mas_secret modules of this formula (run saltutil.sync_all)")


def _directories(paths):
    """The formula's directories, deepest first (a directory goes after what is in it)."""
    base = paths["base"]
    dirs = [
        paths["keys_dir"],
        paths["secrets_dir"],
        paths["config_dir"],
        paths["bin_dir"],
        paths["data_dir"],
        paths["registration_tokens_dir"],
        paths["dist_dir"],
        paths["state_dir"],
    ]
    synapse_dir = os.path.dirname(paths["synapse_secret"])
    if synapse_dir.startswith(base + "/") and synapse_dir not in dirs:
        dirs.append(synapse_dir)
    return sorted(dirs, key=lambda d: d.count("/"), reverse=True) + [base]


def _ours(mas, paths, record):
    """``path -> why it is the formula's`` for the files it can tell as its own (present or not)."""
    own = {path: "in the formula's record" for path in record}
    for name in layout.OWN_FILES:
        own.setdefault(paths[name], "the formula's own file")
    for entry in mas["secret_files"]:
        own.setdefault(entry["path"], "the formula's secret file")
    for path in __salt__["mas_secret.leftovers"](paths["secrets_dir"]):
        own.setdefault(path, "a provider's client secret, written by the formula")
    for name in mas.get("registration_tokens") or {}:
        own.setdefault(os.path.join(paths["registration_tokens_dir"], name), "a registration token the formula made")
    for directory in (paths["secrets_dir"], paths["keys_dir"], paths["state_dir"], paths["registration_tokens_dir"]):
        for path in __salt__["mas_secret.temporaries"](directory):
            own[path] = "the temporary file of an interrupted write"
    for name in layout.TEMPLATES:  # a template is the formula's by its banner alone
        if __salt__["mas.managed_by_formula"](paths[name]):
            own[paths[name]] = "carries the formula's banner"
        else:
            own.pop(paths[name], None)
    return own


def _plan(mas):
    paths = mas["paths"]
    record = __salt__["mas_secret.recorded"](mas["secret_owner"])
    own = _ours(mas, paths, record)
    directories = _directories(paths)
    files, trees, kept, empty = [], [], {}, {}
    for directory in directories:
        try:
            info = os.lstat(directory)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(info.st_mode):
            kept[directory] = "not a directory (a link or a file where the formula keeps a directory): left alone"
            continue
        left = False
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            mode = os.lstat(path).st_mode
            if path in directories:
                left = left or not empty.get(path, False)
                continue
            if stat.S_ISREG(mode) and path in own:
                files.append(path)
            elif directory == paths["dist_dir"] and stat.S_ISDIR(mode) and _RELEASE.fullmatch(name):
                trees.append(path)
            else:
                left = True
                if stat.S_ISLNK(mode):
                    kept[path] = "a link: the formula writes none, and never follows one"
                elif stat.S_ISDIR(mode):
                    kept[path] = "a directory the formula did not make"
                else:
                    kept[path] = NOT_OURS
        empty[directory] = not left
        if left:
            kept[directory] = "not empty: it holds what is kept"
    gone = [d for d in directories if empty.get(d)]
    return {"files": files, "trees": trees, "directories": gone, "kept": kept}


def _map(mapdata):
    mas = mapdata or __salt__["mas.mapdata"]()
    if mas["enabled"]:
        raise CommandExecutionError("mas:enabled is true: a purge removes a deployment only once it is disabled")
    return mas


def purge_plan(mapdata=None):
    """
    What :py:func:`purge` would remove under ``mas:base_path``, changing
    nothing: ``{"files", "trees", "directories", "kept"}``. ``files``: the
    formula's own files (see the module's documentation); ``trees``: the
    releases it extracted in ``dist/``; ``directories``: its directories that
    are then empty (deepest first); ``kept``: every other path in them, and
    why it stays. Refused while ``mas:enabled`` is true.

    mapdata
        The formula's map (default: ``mas.mapdata``).

    CLI Example:

    .. code-block:: bash

        salt-call mas_clean.purge_plan
    """
    return _plan(_map(mapdata))


def purge(mapdata=None):
    """
    Remove the formula's files, its releases and then its empty directories
    under ``mas:base_path`` (see :py:func:`purge_plan`); keep everything
    else. Returns ``{"removed": [...], "kept": {path: why}}``. Refused while
    ``mas:enabled`` is true. MAS must be stopped first (``mas.clean`` does).

    mapdata
        The formula's map (default: ``mas.mapdata``).

    CLI Example:

    .. code-block:: bash

        salt-call mas_clean.purge
    """
    plan = _plan(_map(mapdata))
    removed, kept = [], dict(plan["kept"])
    try:
        for path in plan["files"]:
            os.unlink(path)
            removed.append(path)
        for path in plan["trees"]:
            shutil.rmtree(path)
            removed.append(path)
    except OSError as exc:
        raise CommandExecutionError(f"cannot remove {exc.filename}: {exc.strerror}") from exc
    for path in plan["directories"]:
        try:
            os.rmdir(path)
            removed.append(path)
        except OSError as exc:  # something appeared in it since
            kept[path] = f"not removed: {exc.strerror}"
    log.info("mas_clean: removed %d paths, kept %d", len(removed), len(kept))
    return {"removed": removed, "kept": kept}
