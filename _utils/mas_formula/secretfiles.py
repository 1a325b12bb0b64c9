"""Secret files on disk: the formula's one atomic writer, the one way to read a file without following links, its record of what it wrote, and the one scrubber.

* :func:`atomic_write`: a temporary file (``.tmp-`` and 8 random characters)
  in the target's directory or ``tmp_dir`` gets the owner and mode first,
  then the content, ``fsync``, ``rename``; :func:`temporaries` finds what an
  interrupted write left.
* :func:`read_regular`: read a file, refusing a symlink or anything but a
  regular file (a link planted where a secret should be must never make root
  read or chown another file).
* :func:`record_files` / :func:`record`: the root-only JSON record of the
  files the formula wrote (``paths.secret_record``); :func:`foreign` says why
  an existing file is not the formula's own.
* :func:`mask` and :func:`scrub`: secret values out of structures and texts.

Values are never returned or logged by the callers: they report what they did.
"""

import hmac
import json
import os
import re
import stat
import tempfile

import salt.utils.files
from salt.exceptions import CommandExecutionError

MASK = "**********"
#: The temporary files of :func:`atomic_write`: the prefix, then mkstemp's 8 random characters.
TMP_PREFIX = ".tmp-"
TMP_NAME = re.compile(re.escape(TMP_PREFIX) + r"[a-z0-9_]{8}")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: Config keys whose string values are secrets (Synapse's and the formula's pillar).
SECRET_KEY = re.compile(
    r"^(.*_)?(secret|secret_key|private_key|password|passwd|pass|pepper|token|api_key|encryption)$", re.IGNORECASE
)
URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/?#\s@]*:)(?P<pw>[^@/\s]+)(?P<tail>@)", re.IGNORECASE)
#: `secret: value` lines (upstream doctor prints a config snippet with matrix.secret)
INLINE_SECRET = re.compile(r"(?im)^(\s*(?:secret|client_secret|password)\s*:\s*).+$")
#: A provider's client-secret file (one per provider, named by its ULID).
PROVIDER_SECRET = re.compile(r"upstream-[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}\.secret")


def owner_ids(user, group):
    """``(uid, gid)`` of ``user`` and ``group``; ``CommandExecutionError`` when one does not exist."""
    import grp  # pylint: disable=import-outside-toplevel
    import pwd  # pylint: disable=import-outside-toplevel

    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError as exc:
        raise CommandExecutionError(f"the user {user!r} does not exist") from exc
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError as exc:
        raise CommandExecutionError(f"the group {group!r} does not exist") from exc
    return uid, gid


def read_regular(path, limit=None):
    """The bytes of ``path`` (at most ``limit``), refusing a symlink or anything but a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise CommandExecutionError(f"cannot read {path} (a symlink is refused): {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise CommandExecutionError(f"{path} is not a regular file")
        return handle.read() if limit is None else handle.read(limit)


def read_text(path):
    """The text of ``path`` (``None`` when it does not exist), refusing a symlink or anything but a regular file."""
    if not os.path.lexists(path):
        return None
    return read_regular(path).decode("utf-8", "replace")


def record_files(owner):
    """The files the formula recorded as written (a set of paths; ``owner["record"]`` is the record)."""
    try:
        with salt.utils.files.fopen(owner["record"], "r") as handle:
            recorded = json.load(handle)
    except FileNotFoundError:
        return set()
    except (OSError, ValueError) as exc:
        raise CommandExecutionError(f"cannot read the formula's record {owner['record']}: {exc}") from exc
    files = recorded.get("files") if isinstance(recorded, dict) else None
    return {f for f in files if isinstance(f, str)} if isinstance(files, list) else set()


def record(owner, path):
    """Add ``path`` to the formula's record of the files it wrote (root only, 0600)."""
    files = record_files(owner)
    if path in files:
        return
    directory = os.path.dirname(owner["record"])
    os.makedirs(directory, mode=0o700, exist_ok=True)
    atomic_write(owner["record"], json.dumps({"files": sorted(files | {path})}, indent=1) + "\n", "0600")


def atomic_write(path, content, mode="0600", user="root", group="root", tmp_dir=None, exclusive=False):
    """Write ``content`` (bytes or UTF-8 text) to ``path`` atomically, staged in ``tmp_dir`` (default: the
    directory of ``path``; it must be on the same filesystem); a symlink at ``path`` is replaced, never followed.
    With ``exclusive``, an existing ``path`` (whoever wrote it, even meanwhile) is kept and nothing is written:
    returns whether ``path`` was written."""
    uid, gid = owner_ids(user, group)
    data = content.encode() if isinstance(content, str) else bytes(content)
    directory = os.path.dirname(path)
    staging = tmp_dir or directory
    for folder in dict.fromkeys((directory, staging)):
        if not os.path.isdir(folder):
            raise CommandExecutionError(f"the directory {folder} does not exist")
    if os.stat(staging).st_dev != os.stat(directory).st_dev:
        raise CommandExecutionError(
            f"cannot write {path} through {staging}: not on the filesystem of {directory}, so the rename would not"
            " be atomic"
        )
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=staging)
    try:
        os.fchmod(fd, int(str(mode), 8))
        os.fchown(fd, uid, gid)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            # a hard link never replaces: of two writers at once, one wins and both read its file
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except FileExistsError:
        os.unlink(tmp)
        return False
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise CommandExecutionError(f"cannot write {path}: {exc.strerror}") from exc
    for folder in dict.fromkeys((directory, staging)):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return True


def temporaries(directory):
    """The temporary files :func:`atomic_write` left in ``directory`` (regular files only, never a link)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    found = []
    for name in names:
        path = os.path.join(directory, name)
        if TMP_NAME.fullmatch(name) and stat.S_ISREG(os.lstat(path).st_mode):
            found.append(path)
    return found


def provider_leftovers(secrets_dir, keep=()):
    """The client-secret files of providers in ``secrets_dir`` that are not in ``keep`` (providers gone)."""
    keep = set(keep or [])
    try:
        names = sorted(os.listdir(secrets_dir))
    except OSError:
        return []
    return [
        os.path.join(secrets_dir, name)
        for name in names
        if PROVIDER_SECRET.fullmatch(name) and os.path.join(secrets_dir, name) not in keep
    ]


def wanted(kind, value, pillar_key=None, source=None, pepper=None):
    """The bytes a secret file of ``kind`` must hold, or None when it is generated (or kept): ``value`` is the pillar
    value (``pillar_key`` names it), ``source`` the file a ``copy`` copies, ``pepper()`` reads Synapse's pepper when
    pillar has none."""
    if kind == "copy":
        if not source or not os.path.isfile(source):
            raise CommandExecutionError(f"the source secret file {source} does not exist yet")
        return read_regular(source)
    if kind == "pepper":
        if value is None and pepper is not None:
            value = pepper()
        if value in (None, ""):
            raise CommandExecutionError(
                "no Synapse pepper found: set mas:synapse:pepper or password_config.pepper in Synapse's config"
            )
        # syn2mas compares the v1 secret_file untrimmed: no trailing newline.
        return str(value).encode()
    if kind == "synapse_config":
        raise CommandExecutionError(
            f"the Synapse config for syn2mas is built from pillar by mas_secret ({pillar_key} and the map)"
        )
    if kind == "pillar":
        if value is None:
            raise CommandExecutionError(f"the pillar key {pillar_key} is not set")
        return str(value).encode()
    if value is not None:
        return str(value).strip().encode()
    return None


def foreign(path, owner, wanted=None):
    """Why the existing file ``path`` is not the formula's own secret file, or ``""`` when it is (or is absent):
    recorded, in one of its own directories (``owner["dirs"]``), or already holding ``wanted`` (bytes)."""
    if not owner or not os.path.lexists(path):
        return ""
    if os.path.dirname(path) in (owner.get("dirs") or []) or path in record_files(owner):
        return ""
    if not stat.S_ISREG(os.lstat(path).st_mode):
        return "exists and is not a regular file"
    if wanted is not None and hmac.compare_digest(read_regular(path), wanted):
        return ""
    return f"exists and is not a secret file the formula wrote (not in its record {owner['record']})"


def secret_values(node, found):
    """Add the string values under secret-looking keys of ``node`` (recursively) to the set ``found``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                if SECRET_KEY.match(str(key)):
                    found.add(value)
            else:
                secret_values(value, found)
    elif isinstance(node, list):
        for item in node:
            secret_values(item, found)
    return found


def mask(data):
    """A copy of ``data`` with the values of secret-looking keys replaced by :data:`MASK`."""
    if isinstance(data, dict):
        return {
            key: MASK
            if SECRET_KEY.match(str(key))
            and isinstance(value, (str, int, float))
            and not isinstance(value, bool)
            and value != ""
            else mask(value)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [mask(item) for item in data]
    return data


def known_secrets(secrets_dir, pillar_mas=None, synapse_conf=None):
    """Every secret value known for a deployment, longest first: Synapse's config, pillar ``mas`` (with the whole
    Synapse database URI) and the files of its secrets directory."""
    found = secret_values(synapse_conf or {}, set())
    secret_values(pillar_mas or {}, found)
    # the whole URI: libpq also takes ?password=... which the URL rule misses
    uri = ((pillar_mas or {}).get("syn2mas") or {}).get("synapse_database_uri")
    if isinstance(uri, str) and uri:
        found.add(uri)
    if os.path.isdir(secrets_dir):
        for entry in os.listdir(secrets_dir):
            path = os.path.join(secrets_dir, entry)
            if os.path.isfile(path) and os.path.getsize(path) < 65536:
                with salt.utils.files.fopen(path, "rb") as handle:
                    content = handle.read().decode("utf-8", "replace")
                found.update({content, content.strip()})
    return sorted((s for s in found if isinstance(s, str) and len(s.strip()) >= 4), key=len, reverse=True)


def scrub(text, hide=()):
    """``text`` without ANSI colours, without the values of ``hide``, passwords in URLs and ``secret: ...`` lines."""
    text = ANSI.sub("", text or "")
    for secret in hide:
        text = text.replace(secret, MASK)
    text = URL_PASSWORD.sub(lambda m: m.group("head") + MASK + m.group("tail"), text)
    return INLINE_SECRET.sub(lambda m: m.group(1) + MASK, text)
