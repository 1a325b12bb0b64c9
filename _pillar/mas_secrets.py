"""
The ``mas`` formula's ext_pillar: the secrets two minions of a deployment share, generated once on the master and served as pillar to exactly the minions that need them.

When MAS, Synapse and MAS's managed database are on different minions
(``mas:roles``), two secrets must hold the same value on two of them: the
MAS↔Synapse shared secret (``mas:secrets:homeserver_secret``: the ``mas`` and
``synapse`` minions) and, with ``mas:database:manage``, the password of MAS's
PostgreSQL role (``mas:database:password``: the ``mas`` and ``database``
minions). For a minion whose pillar has ``mas:enabled`` and split roles, this
ext_pillar serves each of them that one of its roles needs and pillar does not
give already: generated once per ``mas:server_name`` (64 hex characters), kept
on the master under ``store`` (directory 0700, files 0600), never logged. A
minion that needs neither (the proxy's) gets nothing; a single-host minion
(all four roles) gets nothing either: its secrets are generated on it.

Enable it in the master's configuration, then bring it (and the formula's
helpers it imports) to the master::

    ext_pillar:
      - mas_secrets:
          store: /srv/pillar/mas-secrets

    salt-run saltutil.sync_all

``store`` must not lie under the master's ``file_roots`` (every minion may
fetch those files); the default is ``/srv/pillar/mas-secrets``. Which minion
gets what is decided on the pillar the master's own pillar tree gives it,
compiled again without what a request adds: Salt merges a request's
``pillar_override`` (``salt-call pillar.items pillar='{...}'`` on any minion)
into the pillar an ext_pillar is handed, so that one cannot decide. Target the
``mas:roles`` of the pillar tree by minion id, not by grains (a minion says its
own grains). Synapse's own
``registration_shared_secret`` is not generated here: it is Synapse's, in its
config on the Synapse minion; give it in pillar targeted to the MAS minion
(``mas:synapse:registration_shared_secret``). The Salt mine is not used for any
of them: every minion can read any mine data.
"""

import logging
import os
import pwd
import secrets
import stat

import salt.pillar
from salt.exceptions import CommandExecutionError

try:
    import mas_formula

    mas_formula.refresh()
    from mas_formula import grammar, roles, secretfiles

    HAS_HELPERS = True
except ImportError:  # the master has not synced the formula's _utils/ yet
    HAS_HELPERS = False

log = logging.getLogger(__name__)

__virtualname__ = "mas_secrets"

DEFAULT_STORE = "/srv/pillar/mas-secrets"

#: The file under ``<store>/<server_name>/`` of each shared secret (pillar path -> file name).
FILES = {("secrets", "homeserver_secret"): "homeserver_secret", ("database", "password"): "database_password"}


def __virtual__():
    if not HAS_HELPERS:
        return (
            False,
            "the mas_secrets ext_pillar needs the mas formula's helpers (_utils/mas_formula) on the master:"
            " run salt-run saltutil.sync_all",
        )
    return __virtualname__


def _value(pillar, path, default=None):
    """``mas:<path>`` of the minion's pillar, else ``mas:lookup:<path>``, else ``default``."""
    mas = pillar.get(grammar.PILLAR_ROOT) if isinstance(pillar, dict) else None
    if not isinstance(mas, dict):
        return default
    value = grammar.get(mas, *path)
    if value is None:
        value = grammar.get(mas, "lookup", *path)
    return default if value is None else value


def _directory(path):
    """``path`` as a directory of the master's root alone (created 0700; refused when others may read it)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise CommandExecutionError(
            f"mas_secrets: {path} must be a directory of the master's user, mode 0700 (no access for group and"
            " others): fix it or choose another store"
        )


def _store(store):
    """``store``, checked: an absolute, normalised path outside every ``file_roots`` of the master."""
    if not grammar.is_path(store):
        raise CommandExecutionError(
            f"mas_secrets: store must be {grammar.KINDS['path']}, not {store!r} (master config ext_pillar)"
        )
    roots = [root for env in (__opts__.get("file_roots") or {}).values() for root in env or []]
    for root in roots:
        root = os.path.normpath(str(root))
        if store == root or store.startswith(root.rstrip("/") + "/") or root.startswith(store + "/"):
            raise CommandExecutionError(
                f"mas_secrets: store {store} overlaps the file root {root}, whose files every minion may fetch"
                " (salt://): keep the secrets outside file_roots"
            )
    return store


def shared_secret(store, server_name, name):
    """The secret ``name`` of the deployment ``server_name``: read from ``<store>/<server_name>/<name>``, generated
    there first when missing (of two pillar compilations at once, one writes and both read its value)."""
    directory = os.path.join(store, server_name)
    _directory(store)
    _directory(directory)
    path = os.path.join(directory, name)
    if not os.path.lexists(path):
        user = pwd.getpwuid(os.geteuid()).pw_name
        if secretfiles.atomic_write(path, secrets.token_hex(32), "0600", user, user, exclusive=True):
            log.info("mas_secrets: generated %s of %s in %s", name, server_name, directory)
    info = os.lstat(path)
    if info.st_mode & 0o077:
        raise CommandExecutionError(f"mas_secrets: {path} must be mode 0600 (it holds a secret)")
    return secretfiles.read_regular(path).decode().strip()


def own_pillar(minion_id):
    """The pillar the master's own pillar tree gives ``minion_id``: compiled again without ext_pillars and without
    ``pillar_override``, which Salt merges from the request into the pillar an ext_pillar is handed (any minion may
    add ``mas:roles`` there with ``pillar.items pillar='{...}'``). Fails closed: ``{}`` when it does not compile."""
    opts = dict(__opts__, ext_pillar=[])
    compiler = None
    try:
        compiler = salt.pillar.Pillar(
            opts, opts.get("grains") or {}, minion_id, opts.get("saltenv"), pillarenv=opts.get("pillarenv")
        )
        compiled = compiler.compile_pillar(ext=False)
    except Exception as exc:  # pylint: disable=broad-except  # whatever it is, nothing is served
        # the exception's class only: a render error may quote the pillar file, secrets and all
        log.error(
            "mas_secrets: the pillar of %s did not compile without the request's overrides (%s); no shared secret"
            " served",
            minion_id,
            type(exc).__name__,
        )
        return {}
    finally:
        if compiler is not None:
            compiler.destroy()
    if compiled.get("_errors"):
        log.error("mas_secrets: the pillar of %s has errors; no shared secret served", minion_id)
        return {}
    return compiled


def ext_pillar(minion_id, pillar, store=DEFAULT_STORE):  # pylint: disable=unused-argument
    """
    The shared secrets this minion's roles need and its pillar does not give:
    ``{"mas": {"secrets": {"homeserver_secret": ...}, "database": {"password": ...}}}``,
    or ``{}``.

    minion_id
        The minion whose pillar is compiled.
    pillar
        Its pillar so far, with what the request added: not used to decide. The
        pillar tree's own (:func:`own_pillar`) decides: ``mas:enabled``,
        ``mas:roles``, ``mas:server_name``, ``mas:database:manage``.
    store
        Where the master keeps the secrets (default ``/srv/pillar/mas-secrets``).

    .. code-block:: yaml

        ext_pillar:
          - mas_secrets:
              store: /srv/pillar/mas-secrets
    """
    if not _wanted(pillar):  # the minions of no split deployment (most of a fleet): no second compilation
        return {}
    return serve(own_pillar(minion_id), store)


def _wanted(pillar):
    """``(server_name, [(pillar path, file name)])`` of the shared secrets ``pillar`` says its minion needs and does
    not give, or None."""
    if _value(pillar, ("enabled",)) is not True:
        return None
    held = _value(pillar, ("roles",), list(roles.ROLES))
    if not isinstance(held, list) or not held or not all(isinstance(r, str) and r in roles.ROLES for r in held):
        return None  # the minion's own validation names what is wrong with mas:roles
    flags = roles.held(held)
    server_name = _value(pillar, ("server_name",))
    if all(flags.values()) or not grammar.is_dns_name(server_name):
        return None
    data = {"database": {"manage": _value(pillar, ("database", "manage"), False)}}
    files = [(path, name) for path, name in FILES.items() if roles.needs(flags, path, data)]
    files = [(path, name) for path, name in files if not grammar.is_set(_value(pillar, path))]
    return (server_name.lower(), files) if files else None


def serve(pillar, store=DEFAULT_STORE):
    """The shared secrets a minion whose pillar tree gives ``pillar`` is served (see :func:`ext_pillar`)."""
    wanted = _wanted(pillar)
    if wanted is None:
        return {}
    server_name, files = wanted
    served = {}
    for path, name in files:
        served.setdefault(path[0], {})[path[1]] = shared_secret(_store(store), server_name, name)
    return {grammar.PILLAR_ROOT: served}
