"""
The secrets of the ``mas`` formula: generated or taken from pillar, written atomically, and scrubbed from output.

* :py:func:`status` / :py:func:`write` (driven by the ``mas_secret.present``
  state) manage one secret file: the MAS encryption secret, the shared secret,
  the signing keys, pillar secrets (database and SMTP passwords, provider client
  secrets), Synapse's pepper, copies of another secret file and, on a MAS
  minion without Synapse, Synapse's config for syn2mas. A generated
  secret is never regenerated; the encryption secret is never replaced unless
  ``mas:secrets:allow_encryption_rotation``.
* :py:func:`atomic_write` is the one atomic writer of the formula (secret files
  and the syn2mas phase marker): a temporary file in the same directory, owner
  and mode set before the content, ``fsync``, ``rename``.
* :py:func:`scrub` removes every secret the minion knows for the deployment
  from a text (``mas-cli`` output may echo them).
* :py:func:`foreign` tells whether an existing file is the formula's own
  secret: the formula never replaces a file it did not write. Its record of
  the secret files it wrote is a root-only JSON file in the map's
  ``state_dir`` (``paths.secret_record``; :py:func:`recorded`,
  :py:func:`record`); :py:func:`leftovers` lists the client-secret files of
  providers that are gone, :py:func:`temporaries` what an interrupted write
  left.

Values are never returned or logged: the functions report what they did.

:depends: cryptography
"""

import hmac
import importlib.util
import logging
import os
import secrets
import stat

import salt.utils.data
from salt.exceptions import CommandExecutionError, SaltInvocationError

import mas_formula

mas_formula.refresh()
from mas_formula import secretfiles, synapse_config  # noqa: E402  (after the refresh: a synced update is imported anew)

# cryptography is imported where keys are generated (once per deployment), not on every run
HAS_CRYPTOGRAPHY = importlib.util.find_spec("cryptography") is not None

log = logging.getLogger(__name__)

__virtualname__ = "mas_secret"

PILLAR_ROOT = "mas"

#: Kinds of secret files: generated (hex32, token, the signing keys), from
#: pillar, Synapse's pepper, a copy of another secret file, or Synapse's config
#: for syn2mas on a MAS minion without Synapse (built from pillar).
GENERATED = ("hex32", "token", "rsa", "ec-p256", "ec-p384", "ec-k256")
KINDS = GENERATED + ("pillar", "pepper", "copy", "synapse_config")

MASK = secretfiles.MASK


def __virtual__():
    if not HAS_CRYPTOGRAPHY:
        return (False, "The mas_secret module needs the 'cryptography' Python package")
    return __virtualname__


def pillar_value(pillar_key):
    """
    The value of the pillar key ``pillar_key`` (``a:b:c``) as the minion's
    pillar holds it, unmasked (Salt 3008's ``pillar.get`` answers
    ``**********`` inside modules), or None when it is unset or empty. The
    formula's modules read secret pillar values (database and user passwords,
    the pepper) through it; it prints what it reads.

    CLI Example:

    .. code-block:: bash

        salt-call mas_secret.pillar_value mas:database:password
    """
    if not pillar_key:
        return None
    value = salt.utils.data.traverse_dict_and_list(__pillar__, pillar_key, None, delimiter=":")
    return value if value not in (None, "", [], {}) else None


def _generate(kind):
    if kind in ("hex32", "token"):
        return secrets.token_hex(32).encode()
    from cryptography.hazmat.primitives import serialization  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives.asymmetric import ec, rsa  # pylint: disable=import-outside-toplevel

    curves = {"ec-p256": ec.SECP256R1, "ec-p384": ec.SECP384R1, "ec-k256": ec.SECP256K1}
    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    elif kind in curves:
        key = ec.generate_private_key(curves[kind]())
    else:
        raise SaltInvocationError(f"mas_secret: secrets of kind {kind!r} cannot be generated")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _wanted(kind, pillar_key, source):
    """The bytes the secret file must hold, or None when it is generated/kept."""

    def pepper():
        mas = __salt__["mas.mapdata"]()
        syn = mas["synapse"]
        extra = salt.utils.data.traverse_dict_and_list(__pillar__, f"{PILLAR_ROOT}:synapse:extra_config", {}) or {}
        files = synapse_config.read(syn["config_files"], syn["config_dir"], extra, [mas["paths"]["synapse_dropin"]])
        return salt.utils.data.traverse_dict_and_list(files["config"], ["password_config", "pepper"])

    if kind == "synapse_config":
        return _synapse_config()
    return secretfiles.wanted(kind, pillar_value(pillar_key), pillar_key, source, pepper)


def _synapse_config():
    """The bytes of Synapse's config for syn2mas on a MAS minion without Synapse (``synapse_config.for_syn2mas``):
    ``mas:synapse:database`` with its password, ``mas:synapse:pepper``, MAS's providers, ``mas:synapse:extra_config``."""
    mas = __salt__["mas.mapdata"]()
    database = salt.utils.data.traverse_dict_and_list(__pillar__, f"{PILLAR_ROOT}:synapse:database", {}) or {}
    if not mas["synapse"].get("database_set") or not isinstance(database, dict):
        raise CommandExecutionError(
            "mas:synapse:database is not set: the Synapse config for syn2mas is written from it on a MAS minion"
            " without Synapse"
        )
    extra = salt.utils.data.traverse_dict_and_list(__pillar__, f"{PILLAR_ROOT}:synapse:extra_config", {}) or {}
    text = synapse_config.for_syn2mas(
        mas["server_name"],
        dict(mas["synapse"]["database"], password=database.get("password")),
        pillar_value(f"{PILLAR_ROOT}:synapse:pepper"),
        mas["upstream_oauth2_providers"],
        extra,
    )
    return text.encode()


def recorded(owner):
    """
    The files the formula recorded as written (``owner["record"]``, the map's
    ``secret_owner``): its secret files and registration-token files, a
    sorted list of paths. ``mas.clean`` with ``mas:clean:purge`` removes
    these (and no other file it cannot tell as its own).

    owner
        ``{"record": <file>, ...}`` (the map's ``secret_owner``).

    CLI Example:

    .. code-block:: bash

        salt-call mas_secret.recorded owner="$(salt-call --out=json mas.mapdata | jq -c .local.secret_owner)"
    """
    return sorted(secretfiles.record_files(owner))


def record(path, owner):
    """
    Record ``path`` as a file the formula wrote (``owner["record"]``, root
    0600), for a file written with :py:func:`atomic_write` outside
    :py:func:`write` (``mas_user``'s registration-token files): what
    :py:func:`recorded` lists. Returns True.

    path
        The file written.
    owner
        ``{"record": <file>, ...}`` (the map's ``secret_owner``).

    CLI Example:

    .. code-block:: bash

        salt-call mas_secret.record /matrix/matrix-authentication-service/registration-tokens/friends owner="$(salt-call --out=json mas.mapdata | jq -c .local.secret_owner)"
    """
    secretfiles.record(owner, path)
    return True


def foreign(path, kind="token", pillar_key=None, source=None, owner=None):
    """
    Why the formula must not replace the existing file ``path`` with a secret,
    or ``""`` when it may (no file there, or the file is the formula's own).

    A file is the formula's own when its record lists it (every secret file
    the formula wrote is recorded in ``owner["record"]``), when it lies in one
    of the formula's own secret directories (``owner["dirs"]``: the record's
    predecessors, for deployments made before the record), or when it already
    holds exactly what the formula would write there. Anything else (a file
    pillar points at by mistake, e.g. ``mas:synapse:secret_path`` naming an
    unrelated file) is foreign, and ``status``/``write`` refuse it.

    path
        The secret file.
    kind, pillar_key, source
        As for :py:func:`status` (what the formula would write there).
    owner
        ``{"record": <file>, "dirs": [<dir>, ...]}`` (the map's
        ``secret_owner``); without it every file counts as the formula's.

    CLI Example:

    .. code-block:: bash

        salt-call mas_secret.foreign /matrix/matrix-authentication-service/synapse/homeserver_secret copy source=/matrix/matrix-authentication-service/config/secrets/homeserver_secret owner="$(salt-call --out=json mas.mapdata | jq -c .local.secret_owner)"
    """
    if not owner or not os.path.lexists(path):
        return ""
    try:
        wanted = _wanted(kind, pillar_key, source)
    except CommandExecutionError:
        wanted = None
    return secretfiles.foreign(path, owner, wanted)


def leftovers(secrets_dir, keep=None):
    """
    The client-secret files (``upstream-<id>.secret``) in ``secrets_dir`` that
    no provider uses any more (a provider removed from pillar, or its
    ``client_secret``): each belongs to its provider alone, so ``mas.secrets``
    removes them.

    secrets_dir
        The deployment's secrets directory (the map's ``paths.secrets_dir``).
    keep
        The secret files still in use (the map's ``secret_files`` paths).

    CLI Example:

    .. code-block:: bash

        salt-call mas_secret.leftovers /matrix/matrix-authentication-service/config/secrets
    """
    return secretfiles.provider_leftovers(secrets_dir, keep)


def status(
    path, kind, pillar_key=None, user="root", group="root", mode="0600", allow_rotation=False, source=None, owner=None
):
    """
    Tell what :py:func:`write` would do with one secret file, without
    revealing or changing anything.

    Returns ``{"action": "none"|"create"|"update"|"fix-mode", "reason": ...}``
    and raises ``CommandExecutionError`` when the change is refused (an
    encryption secret in pillar that differs from the one on disk).

    path
        The secret file.
    kind
        ``hex32`` (MAS encryption secret), ``token`` (shared secret), ``rsa``,
        ``ec-p256``, ``ec-p384``, ``ec-k256`` (signing keys), ``pillar`` (a
        value that must come from pillar), ``pepper`` (Synapse's pepper, from
        pillar ``pillar_key`` or Synapse's config), ``copy`` (the content of
        ``source``) or ``synapse_config`` (Synapse's config for syn2mas on a
        MAS minion without Synapse, built from ``mas:synapse:database`` and
        the rest of pillar).
    pillar_key
        The colon-separated pillar key that may hold the value.
    user, group, mode
        Owner and mode of the file.
    allow_rotation
        Allow replacing an existing encryption secret with another pillar value.
    source
        For ``kind: copy``, the file to copy.
    owner
        ``{"record", "dirs"}`` (the map's ``secret_owner``): refuse a file that
        is not the formula's own (see :py:func:`foreign`), and record the
        files written. Without it nothing is recorded or refused.

    CLI Example:

    .. code-block:: bash

        salt-call mas_secret.status /matrix/matrix-authentication-service/config/secrets/encryption hex32 mas:secrets:encryption
    """
    if kind not in KINDS:
        raise SaltInvocationError(f"mas_secret: unknown secret kind {kind!r} (known: {', '.join(KINDS)})")
    why = foreign(path, kind, pillar_key, source, owner)
    if why:
        raise CommandExecutionError(
            f"{path} {why}: the formula never overwrites a file it did not write; move it away or choose another path"
        )
    if kind == "copy" and not (source and os.path.isfile(source)):
        # the source is written earlier in the same run (test=True predicts)
        return {
            "action": "create" if not os.path.exists(path) else "update",
            "reason": f"copied from {source}, which does not exist yet",
        }
    wanted = _wanted(kind, pillar_key, source)
    if not os.path.lexists(path):
        return {"action": "create", "reason": "from pillar" if wanted is not None else "generated"}
    current = secretfiles.read_regular(path)
    if wanted is not None and not hmac.compare_digest(current, wanted):
        if kind == "hex32" and not allow_rotation:
            raise CommandExecutionError(
                f"{pillar_key} differs from the encryption secret already in use ({path}). Changing it makes "
                "every value MAS has encrypted in its database unreadable (upstream OAuth2 client secrets, "
                "sessions, ...). Put the current value in pillar, or remove the key from pillar to keep the "
                "file; to rotate on purpose set mas:secrets:allow_encryption_rotation: true."
            )
        return {"action": "update", "reason": "from pillar" if kind != "copy" else f"copied from {source}"}
    uid, gid = secretfiles.owner_ids(user, group)
    info = os.lstat(path)
    if stat.S_IMODE(info.st_mode) != int(str(mode), 8) or (info.st_uid, info.st_gid) != (uid, gid):
        return {"action": "fix-mode", "reason": "owner or mode"}
    return {"action": "none", "reason": "in place"}


def atomic_write(path, content, mode="0600", user="root", group="root", tmp_dir=None):
    """
    Write ``content`` to ``path`` atomically: a temporary file (``.tmp-``
    and 8 random characters) in ``tmp_dir`` (default: the directory of
    ``path``) gets the owner and mode first, then the content, ``fsync`` and
    ``rename`` over ``path`` (a symlink at ``path`` is replaced, never
    followed). The formula's one writer of secret files and of its own records
    (the syn2mas phase marker). Nothing is logged about the content.

    A write interrupted before the rename leaves its temporary file behind
    (:py:func:`temporaries` finds it): where a program reads every file of a
    directory (MAS and ``secrets.keys_dir``), stage the file elsewhere with
    ``tmp_dir``.

    path
        The file to write; its directory must exist.
    content
        ``bytes`` or ``str`` (UTF-8).
    mode, user, group
        Mode and owner of the file.
    tmp_dir
        Where the temporary file is made: an existing directory on the same
        filesystem as ``path`` (the rename must stay atomic).

    CLI Example:

    .. code-block:: bash

        salt-call mas_secret.atomic_write /root/example.txt "some text" mode=0600
    """
    secretfiles.atomic_write(path, content, mode, user, group, tmp_dir)


def temporaries(directory):
    """
    The temporary files :py:func:`atomic_write` left in ``directory`` when a
    write was interrupted before its rename (``.tmp-`` and the 8 characters
    ``tempfile.mkstemp`` picks: regular files only, never a link). MAS loads
    every regular file of ``secrets.keys_dir`` as a signing key, so one of
    them there stops it; ``mas.secrets`` removes them from the formula's
    secret directories and ``mas.clean`` with ``mas:clean:purge`` from every
    directory of the formula.

    directory
        The directory to look in.

    CLI Example:

    .. code-block:: bash

        salt-call mas_secret.temporaries /matrix/matrix-authentication-service/config/keys
    """
    return secretfiles.temporaries(directory)


def write(
    path,
    kind,
    pillar_key=None,
    user="root",
    group="root",
    mode="0600",
    allow_rotation=False,
    source=None,
    owner=None,
    tmp_dir=None,
):
    """
    Create or update one secret file atomically, never world-readable, and
    return what was done (never the value). An existing generated secret is
    never regenerated. See :py:func:`status` for the arguments; ``tmp_dir``
    is where :py:func:`atomic_write` stages the file (the signing keys are
    staged in the secrets directory: MAS reads every file of ``keys_dir``).

    CLI Example:

    .. code-block:: bash

        salt-call mas_secret.write /matrix/matrix-authentication-service/config/keys/rsa.pem rsa user=mas group=mas
    """
    state = status(path, kind, pillar_key, user, group, mode, allow_rotation, source, owner)
    if state["action"] == "fix-mode":
        uid, gid = secretfiles.owner_ids(user, group)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, int(str(mode), 8))
            finally:
                os.close(fd)
        except OSError as exc:
            raise CommandExecutionError(f"cannot fix owner/mode of {path}: {exc.strerror}") from exc
    elif state["action"] != "none":
        content = _wanted(kind, pillar_key, source)
        if content is None:
            content = _generate(kind)
        atomic_write(path, content, mode, user, group, tmp_dir=tmp_dir)
        log.info("mas_secret: %s secret file %s (%s)", state["action"], path, state["reason"])
    if owner:
        # written, or found holding what the formula writes: the formula's from now on
        secretfiles.record(owner, path)
    return state


# --------------------------------------------------------------------------
# Scrubbing
# --------------------------------------------------------------------------


def mask(data):
    """
    A copy of ``data`` (a mapping or list, e.g. a Synapse configuration) with
    the values of secret-looking keys (``*secret``, ``*password``, ``pepper``,
    ``*token``, ``*private_key``, ...) replaced by ``**********``.

    data
        The structure to mask.

    CLI Example:

    .. code-block:: bash

        salt-call mas_secret.mask "{form_secret: abc, port: 5}"
    """
    return secretfiles.mask(data)


def scrub(text, synapse_conf=None, secrets_dir=None):
    """
    ``text`` without ANSI colours and without any secret the minion knows for
    this deployment: its secret files, the secret values of pillar ``mas``
    (and of ``synapse_conf``, a Synapse config mapping), passwords in URLs and
    ``secret: ...`` lines. For output of ``mas-cli`` that may echo them.

    text
        The text to clean.
    synapse_conf
        A Synapse configuration whose secret-looking values are hidden too.
    secrets_dir
        The deployment's secrets directory (default: from the map).

    CLI Example:

    .. code-block:: bash

        salt-call mas_secret.scrub "$(bin/mas-cli doctor 2>&1)"
    """
    secrets_dir = secrets_dir or __salt__["mas.mapdata"]()["paths"]["secrets_dir"]
    pillar_mas = salt.utils.data.traverse_dict_and_list(__pillar__, [PILLAR_ROOT], {}) or {}
    return secretfiles.scrub(text, secretfiles.known_secrets(secrets_dir, pillar_mas, synapse_conf))
