"""Users in whichever service is authoritative: which service that is, what a registration takes (emails, a password and MAS's complexity rule), the changes it makes, the password fingerprints, and the sessions one call or one state run shares.

The services themselves are :mod:`mas_formula.users_mas` (MAS's admin API) and
:mod:`mas_formula.users_synapse` (Synapse's registration and admin API); both
backends offer the same methods (``find``, ``create``, ``set_password``,
``set_admin``, ``add_email``, ``remove_email``, ``set_locked``, ``deactivate``,
``reactivate``, ``close``) and describe a user the same way (a *view*:
``{user_id, username, admin, locked, deactivated, emails}``, plus private
``_`` keys of their own).
"""

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import string

from salt.exceptions import CommandExecutionError, SaltInvocationError

from mas_formula import grammar, secretfiles

ON_CREATE, ALWAYS = "on_create", "always"
#: When a password from pillar is set: ``on_create`` or ``always`` (when it changed).
PASSWORD_UPDATES = (ON_CREATE, ALWAYS)
#: The key of ``__context__`` where the sessions of one state run live (shared by ``mas_user`` and ``mas_token``).
CONTEXT = "mas_user.batch"
#: scrypt's cost of a password fingerprint.
SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_ALNUM = string.ascii_letters + string.digits


#: A Synapse user whose existence cannot be read yet (no formula admin account so far): compare with ``is``.
UNKNOWN = {"unknown": True}


# --------------------------------------------------------------------------
# Which service is authoritative
# --------------------------------------------------------------------------


def authority(mas):
    """``"mas"`` when MAS is enabled and not migrating, else ``"synapse"``."""
    return "mas" if mas["enabled"] and not mas["migration_in_progress"] else "synapse"


def why_synapse(mas):
    """Why Synapse is authoritative, for the operator."""
    if not mas["enabled"]:
        return "mas:enabled is false"
    return "mas:migration_in_progress is true; syn2mas carries Synapse's users to MAS"


def reason(mas):
    """Why the authority of :func:`authority` is the one."""
    return "MAS is enabled and not migrating" if authority(mas) == "mas" else why_synapse(mas)


def require_mas(mas, what):
    """``CommandExecutionError`` unless MAS is authoritative (``what``: "bot tokens", ...)."""
    if authority(mas) != "mas":
        raise CommandExecutionError(f"{what} are MAS's and MAS is not authoritative ({why_synapse(mas)})")


# --------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------


def emails(given):
    """The email addresses of ``given`` (one address, a list, or None), each checked."""
    if given is None:
        return []
    if isinstance(given, str):
        given = [given]
    if not isinstance(given, (list, tuple)):
        raise SaltInvocationError("emails: a list of email addresses is required")
    return [grammar.check_email(e) for e in given]


def password(given, password_file, password_pillar_key, pillar_value):
    """The password from at most one of its three sources, or None. ``pillar_value(key)`` reads a pillar
    key unmasked (``mas_secret.pillar_value``)."""
    sources = [x for x in (given, password_file, password_pillar_key) if x is not None]
    if len(sources) > 1:
        raise SaltInvocationError("give at most one of password, password_file, password_pillar_key")
    if password_file is not None:
        try:
            with open(password_file, encoding="utf-8") as handle:
                value = handle.read().rstrip("\n")
        except OSError as exc:
            raise SaltInvocationError(f"password_file: cannot read {password_file}: {exc.strerror}") from exc
        if not value:
            raise SaltInvocationError(f"password_file: {password_file} is empty")
        return value
    if password_pillar_key is not None:
        value = pillar_value(password_pillar_key)
        if value is None:
            raise SaltInvocationError(f"password_pillar_key: {password_pillar_key} is not set in pillar")
        return str(value)
    if given is not None and not isinstance(given, str):
        given = str(given)
    return given or None


def check_update_mode(password_update):
    """``SaltInvocationError`` unless ``password_update`` is one of :data:`PASSWORD_UPDATES`."""
    if password_update not in PASSWORD_UPDATES:
        raise SaltInvocationError(f"password_update: must be one of {', '.join(PASSWORD_UPDATES)}")


def check_strength(mas, secret, skip_password_check):
    """Refuse a password MAS would refuse (MAS's own rule: zxcvbn score >= passwords.minimum_complexity)."""
    if secret is None:
        return
    passwords = mas["mas_config"].get("passwords") or {}
    if mas["enabled"] and passwords.get("enabled", True) is False and authority(mas) == "mas":
        raise SaltInvocationError("password: MAS has password authentication off (passwords.enabled: false)")
    if skip_password_check:
        return
    minimum = int(passwords.get("minimum_complexity", 3))
    try:
        from zxcvbn_rs_py import zxcvbn as _zxcvbn  # pylint: disable=import-outside-toplevel
    except ImportError:  # pragma: no cover - depends on the minion
        _zxcvbn = None
    if _zxcvbn is None:
        raise CommandExecutionError(
            "password: cannot check its strength, the Python package zxcvbn-rs-py is missing on the minion"
            " (install it, or pass skip_password_check=True)"
        )
    score = int(_zxcvbn(secret).score)
    if score < minimum:
        raise SaltInvocationError(
            f"password: too weak (zxcvbn score {score}, MAS requires {minimum}: passwords.minimum_complexity);"
            " choose a stronger one, or pass skip_password_check=True"
        )


def random_password(length=40):
    """A random password (or token) of ``length`` letters and digits."""
    return "".join(secrets.choice(_ALNUM) for _ in range(length))


# --------------------------------------------------------------------------
# Password fingerprints (password_update: always)
# --------------------------------------------------------------------------


def _b64(data):
    return base64.b64encode(data).decode()


def fingerprint(secret, salt=None):
    """A scrypt fingerprint of ``secret`` (``scrypt$n$r$p$salt$digest``), never the password itself."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, dklen=32, **SCRYPT)
    return f"scrypt${SCRYPT['n']}${SCRYPT['r']}${SCRYPT['p']}${_b64(salt)}${_b64(digest)}"


def fingerprint_matches(stored, secret):
    """Whether ``secret`` is the password of the fingerprint ``stored`` (False for a malformed one)."""
    try:
        _, n, r, p, salt, digest = stored.split("$")
        salt = base64.b64decode(salt)
        want = base64.b64decode(digest)
        got = hashlib.scrypt(secret.encode(), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def fingerprints(mas):
    """``{username: fingerprint}`` of the passwords the formula set last (``paths.password_fingerprints``)."""
    text = secretfiles.read_text(mas["paths"]["password_fingerprints"])
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}


def remember_password(mas, username, secret):
    """Keep the fingerprint of the password just set for ``username`` (root, 0600)."""
    path = mas["paths"]["password_fingerprints"]
    stored = fingerprints(mas)
    stored[username] = fingerprint(secret)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    secretfiles.atomic_write(path, json.dumps(stored, indent=1, sort_keys=True) + "\n")


def password_differs(mas, username, secret):
    """Whether ``secret`` is not the password the formula set last for ``username`` (True when it set none)."""
    stored = fingerprints(mas).get(username)
    return stored is None or not fingerprint_matches(stored, secret)


# --------------------------------------------------------------------------
# The changes of a registration
# --------------------------------------------------------------------------


def public(view):
    """A backend's view of a user without its private ``_`` keys (None stays None)."""
    return None if view is None else {k: v for k, v in view.items() if not k.startswith("_")}


def changes(mas, view, username, admin, wanted_emails, locked, secret, password_update):
    """``{key: {old, new}}``: what a registration changes for the user ``view`` (None: a new user)."""
    found = {}
    if view is None:
        found["user"] = {"old": None, "new": username}
        if secret is not None:
            found["password"] = {"old": None, "new": "set"}
        current = {"admin": False, "emails": [], "locked": False}
    else:
        current = view
        if view["deactivated"]:
            found["deactivated"] = {"old": True, "new": False}
        if secret is not None and password_update == ALWAYS and password_differs(mas, username, secret):
            found["password"] = {"old": "set", "new": "updated"}
    if bool(admin) != current["admin"]:
        found["admin"] = {"old": current["admin"], "new": bool(admin)}
    have = {e.lower() for e in current["emails"]}
    missing = [e for e in wanted_emails if e.lower() not in have]
    if missing:
        found["emails"] = {"old": list(current["emails"]), "new": sorted(list(current["emails"]) + missing)}
    if locked is not None and bool(locked) != current["locked"]:
        found["locked"] = {"old": current["locked"], "new": bool(locked)}
    return found


def to_set(secret, found):
    """The password only when it will be set (a new user, an update, a reactivation): an
    existing user's password is never judged again."""
    return secret if "password" in found or "deactivated" in found else None


def register(
    mas, backend, username, secret, admin, wanted_emails, locked, password_update, skip_password_check, exists_ok=True
):
    """Register ``username`` with ``backend`` or bring it to the wanted state (the user looked up, the changes
    judged, then made): ``(view, changes)``. ``exists_ok=False``: an existing user is an error."""
    view = backend.find(username, create_admin=True)
    if view is not None and not exists_ok:
        raise CommandExecutionError("User already exists")
    found = changes(mas, view, username, admin, wanted_emails, locked, secret, password_update)
    check_strength(mas, to_set(secret, found), skip_password_check)
    if view is None:
        view = backend.create(username, secret, admin, skip_password_check)
    else:
        if view["deactivated"]:
            backend.reactivate(view, secret)
        if "password" in found:
            backend.set_password(view, secret, skip_password_check)
        if "admin" in found:
            backend.set_admin(view, admin)
    for email in wanted_emails:
        if email.lower() not in {e.lower() for e in view["emails"]}:
            backend.add_email(view, email)
    if "locked" in found:
        backend.set_locked(view, locked)
    if secret is not None and password_update == ALWAYS and "password" in found:
        remember_password(mas, username, secret)
    return view, found


def existing(backend, username, missing_ok=False):
    """The view of ``username`` (None only with ``missing_ok``), its formula admin created when needed."""
    view = backend.find(username, create_admin=True)
    if view is None and not missing_ok:
        raise CommandExecutionError(
            f"there is no user {username} in {'MAS' if backend.authority == 'mas' else 'Synapse'}"
        )
    return view


# --------------------------------------------------------------------------
# Sessions: one per call, or one per state run (batch)
# --------------------------------------------------------------------------


def session(context, mapdata, connect, batch=False, wait=0):
    """``(mas, backend)``: the map (``mapdata()``) and a backend of the authoritative service
    (``connect(mas, wait)``). ``batch``: the ones this state run shares, kept in ``context``; MAS's users
    and emails are read once for the run; a failed connection fails every later state of the run at once."""
    if not batch:
        mas = mapdata()
        return mas, connect(mas, wait)
    ctx = context.setdefault(CONTEXT, {})
    if "map" not in ctx:
        ctx["map"] = mapdata()
    mas = ctx["map"]
    who = authority(mas)
    backend = ctx.get(who)
    if isinstance(backend, Exception):
        raise backend
    if backend is None:
        try:
            backend = connect(mas, wait)
            if who == "mas":
                backend.prefetch()
        except (CommandExecutionError, SaltInvocationError) as exc:
            ctx[who] = exc
            raise
        ctx[who] = backend
    return mas, backend


@contextlib.contextmanager
def opened(context, mapdata, connect, batch=False, wait=0):
    """:func:`session` as a context: a session of one call is closed at its end, a batch's is kept."""
    mas, backend = session(context, mapdata, connect, batch, wait)
    try:
        yield mas, backend
    finally:
        if not batch:
            backend.close()


def close(context):
    """End the sessions of a state run kept in ``context``: the authorities closed (``["mas", "synapse"]``)."""
    ctx = context.pop(CONTEXT, {})
    closed = []
    for who in ("mas", "synapse"):
        backend = ctx.get(who)
        if backend is not None and not isinstance(backend, Exception):
            backend.close()
            closed.append(who)
    return closed
