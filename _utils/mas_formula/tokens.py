"""MAS's tokens the formula keeps: user registration tokens (generated once into a root-only file, their limits kept in sync) and bot tokens (a personal session per bot and file, checked with MAS's introspection, regenerated before it expires; a compatibility token from a MAS without personal sessions).

Both go through a :class:`mas_formula.users_mas.Backend` (MAS's admin API as
the formula's client); a token's value is written to its file and never
returned or logged.
"""

import datetime
import grp
import hashlib
import os
import pwd
import re
import stat
import time

from salt.exceptions import CommandExecutionError, SaltInvocationError

from mas_formula import grammar, secretfiles, users

# --------------------------------------------------------------------------
# Registration tokens
# --------------------------------------------------------------------------


def when(text):
    """The UTC moment of an RFC 3339 time (None stays None); ``ValueError`` when it is not one."""
    if text is None:
        return None
    return datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00")).astimezone(datetime.UTC)


def stamp(moment):
    """``2030-01-31T00:00:00Z``: a moment as MAS's admin API takes it (None stays None)."""
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def token_path(mas, name):
    """The file of the registration token ``name`` (``<base_path>/registration-tokens/<name>``)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", str(name)):
        raise SaltInvocationError(f"name: {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return os.path.join(mas["paths"]["registration_tokens_dir"], name)


def registration_tokens(backend):
    """MAS's registration tokens by value, read once per session."""
    if backend.tokens is None:
        backend.tokens = {t["attributes"]["token"]: t for t in backend.api.pages("/user-registration-tokens")}
    return backend.tokens


def token_changes(found, usage_limit, expires, revoked):
    """``{key: {old, new}}`` between MAS's token ``found`` (None: none yet) and the wanted one."""
    attrs = found["attributes"] if found else {"usage_limit": None, "expires_at": None, "revoked_at": None}
    changes = {}
    if attrs.get("usage_limit") != usage_limit:
        changes["usage_limit"] = {"old": attrs.get("usage_limit"), "new": usage_limit}
    old_expiry = stamp(when(attrs.get("expires_at")))
    if old_expiry != stamp(when(expires)):
        changes["expires"] = {"old": old_expiry, "new": stamp(when(expires))}
    if (attrs.get("revoked_at") is not None) != bool(revoked):
        changes["revoked"] = {"old": attrs.get("revoked_at") is not None, "new": bool(revoked)}
    return changes


def check_token_args(usage_limit, expires):
    """``SaltInvocationError`` for a usage limit that is not a number or an expiry that is not RFC 3339."""
    if usage_limit is not None and (isinstance(usage_limit, bool) or not isinstance(usage_limit, int)):
        raise SaltInvocationError("usage_limit: a number of uses, or None for unlimited")
    try:
        when(expires)
    except ValueError as exc:
        raise SaltInvocationError(f"expires: {expires!r} is not an RFC 3339 time (2030-01-31T00:00:00Z)") from exc


def registration_token_plan(mas, backend, name, usage_limit, expires, revoked):
    """What :func:`ensure_registration_token` would change, changing nothing: ``{name, path, changes}``."""
    path = token_path(mas, name)
    value = secretfiles.read_text(path)
    found = registration_tokens(backend).get(value.strip()) if value else None
    changes = token_changes(found, usage_limit, expires, revoked)
    if found is None:
        changes["token"] = {"old": None, "new": "created" if value is None else "created from its file"}
    return {"name": name, "path": path, "changes": changes}


def ensure_registration_token(mas, backend, name, usage_limit, expires, revoked):
    """Create the registration token ``name`` once (its value generated into its file first, recorded as the
    formula's), then keep its limit, expiry and revocation: ``{name, path, changes}``."""
    path = token_path(mas, name)
    value = secretfiles.read_text(path)
    value = value.strip() if value else None
    tokens = registration_tokens(backend)
    found = tokens.get(value) if value else None
    changes = token_changes(found, usage_limit, expires, revoked)
    if found is None:
        changes["token"] = {"old": None, "new": "created"}
        if value is None:
            value = users.random_password(24)
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            secretfiles.atomic_write(path, value + "\n")
            secretfiles.record(mas["secret_owner"], path)  # the formula's (mas:clean:purge)
        body = {"token": value, "usage_limit": usage_limit, "expires_at": stamp(when(expires))}
        found = backend.api.call("POST", "/user-registration-tokens", expect=(201,), json=body)["data"]
        tokens[value] = found
    else:
        update = {}
        if "usage_limit" in changes:
            update["usage_limit"] = usage_limit
        if "expires" in changes:
            update["expires_at"] = stamp(when(expires))
        if update:
            found = backend.api.call("PUT", f"/user-registration-tokens/{found['id']}", json=update)["data"]
    if bool(revoked) != (found["attributes"].get("revoked_at") is not None):
        action = "revoke" if revoked else "unrevoke"
        found = backend.api.call("POST", f"/user-registration-tokens/{found['id']}/{action}")["data"]
    tokens[value] = found
    return {"name": name, "path": path, "changes": changes}


# --------------------------------------------------------------------------
# Bot tokens (MAS personal sessions)
# --------------------------------------------------------------------------

#: MSC2967's unstable scope prefix and the stable one MAS treats as the same (introspection answers both forms).
UNSTABLE_CLIENT_SCOPE, STABLE_CLIENT_SCOPE = "urn:matrix:org.matrix.msc2967.client:", "urn:matrix:client:"


def bot_device(username, path):
    """The device of a bot's token when none is given: derived from the user and the file."""
    return "SALT" + hashlib.sha256(f"{username}\0{path}".encode()).hexdigest()[:10].upper()


def scope_key(scope):
    """A scope to compare: tokens sorted and deduplicated, the unstable client scopes in their stable form
    (MAS's introspection adds the other form of every client API and device scope)."""
    tokens = {
        STABLE_CLIENT_SCOPE + t[len(UNSTABLE_CLIENT_SCOPE) :] if t.startswith(UNSTABLE_CLIENT_SCOPE) else t
        for t in (scope or "").split()
    }
    return " ".join(sorted(tokens))


def bot_scope(username, path, scope, device_id, synapse_admin):
    """The scope of a bot's token: ``scope`` when given, else the client API, a device and (``synapse_admin``)
    Synapse's admin API."""
    if scope:
        return " ".join(sorted(scope.split()))
    parts = ["urn:matrix:client:api:*", f"urn:matrix:client:device:{device_id or bot_device(username, path)}"]
    if synapse_admin:
        parts.append("urn:synapse:admin:*")
    return " ".join(sorted(parts))


def session_name(path):
    """The ``human_name`` of the personal session whose token lives in ``path``."""
    return f"Salt bot token {path}"


def file_owner(owner, group):
    """``(user, group, uid, gid)`` of a token file: root by default; the group defaults to the owner's own."""
    user = owner or "root"
    try:
        entry = pwd.getpwnam(user)
        group = group or grp.getgrgid(entry.pw_gid).gr_name
        gid = grp.getgrnam(group).gr_gid
    except KeyError as exc:
        raise SaltInvocationError(f"owner/group: {exc.args[0]} does not exist on the minion") from exc
    return user, group, entry.pw_uid, gid


def owner_ok(path, owner, group):
    """Whether ``path`` is a regular file, mode 0600, owned by ``owner``:``group``."""
    _, _, uid, gid = file_owner(owner, group)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return (
        stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600 and (info.st_uid, info.st_gid) == (uid, gid)
    )


def personal_sessions(backend, view, path):
    """The formula's active personal sessions for ``path``, or None when this MAS has no personal sessions."""
    filters = {"filter[actor_user]": view["user_id"], "filter[status]": "active"}
    try:
        found = list(backend.api.pages("/personal-sessions", filters))
    except CommandExecutionError as exc:
        if (exc.info or {}).get("status") == 404:
            return None  # a MAS before personal sessions: compatibility tokens instead
        raise
    return [s for s in found if s["attributes"]["human_name"] == session_name(path)]


def bot_args(username, path, scope, device_id, expires_in, renew_before, synapse_admin):
    """The checked arguments of a bot token: ``(username, path, scope, renew_before)``."""
    username = grammar.check_username(username)
    if not isinstance(path, str) or not os.path.isabs(path) or ".." in path.split("/"):
        raise SaltInvocationError(f"path: {path!r} must be an absolute file path")
    if expires_in is not None and (not isinstance(expires_in, int) or expires_in < 60):
        raise SaltInvocationError("expires_in: seconds (>= 60), or None for a token that does not expire")
    if isinstance(renew_before, bool) or not isinstance(renew_before, int) or renew_before < 0:
        raise SaltInvocationError(f"renew_before: a number of seconds (>= 0), not {renew_before!r}")
    scope = bot_scope(username, path, scope, device_id, synapse_admin)
    return username, path, scope, renew_before


def bot_check(backend, username, path, scope, expires_in, renew_before, owner, group, missing_ok=False):
    """What the bot's token needs: ``{action, reason, view, session, sessions, personal}`` with action ``none``,
    ``fix-mode``, ``regenerate`` (personal session) or ``create`` (new session, or a compatibility token)."""
    view = backend.find(username)
    if view is None and missing_ok:  # a prediction: the user is registered by an earlier state of the run
        return {"action": "create", "reason": "the user is not registered yet", "personal": True}
    if view is None or view["deactivated"]:
        state = "does not exist" if view is None else "is deactivated"
        raise CommandExecutionError(f"bot token: the MAS user {username} {state} (list it in mas:users first)")
    sessions = personal_sessions(backend, view, path)
    personal = sessions is not None
    same_scope = [s for s in sessions or [] if scope_key(s["attributes"]["scope"]) == scope_key(scope)]
    session = same_scope[0] if same_scope else None
    found = {"view": view, "session": session, "sessions": sessions or [], "personal": personal}
    renew = "regenerate" if session else "create"
    value = secretfiles.read_text(path)
    if not value or not value.strip():
        return dict(found, action=renew, reason="no token file")
    answer = backend.api.introspect(value.strip())
    if not answer.get("active"):
        return dict(found, action=renew, reason="token no longer valid")
    if answer.get("username") != username or scope_key(answer.get("scope")) != scope_key(scope):
        return dict(found, action=renew, reason="token of another user or scope")
    expiry = answer.get("exp")
    if personal and (expiry is None) != (expires_in is None):
        return dict(found, action=renew, reason="expiry policy changed")
    if expiry is not None and expiry - time.time() <= renew_before:
        return dict(found, action=renew, reason="token expires soon")
    if not owner_ok(path, owner, group):
        return dict(found, action="fix-mode", reason="owner or mode")
    return dict(found, action="none", reason="valid")


def create_session(backend, body, attempts=20):
    """``POST /personal-sessions``. MAS puts the session's device on Synapse first; a user MAS created
    moments ago may not be provisioned there yet (MAS's job queue): retry that for a while."""
    for attempt in range(attempts):
        try:
            return backend.api.call("POST", "/personal-sessions", expect=(201,), json=body)["data"]
        except CommandExecutionError as exc:
            if attempt == attempts - 1 or (exc.info or {}).get("status") != 500 or "provision" not in str(exc):
                raise
            time.sleep(1)
    raise AssertionError("unreachable")  # pragma: no cover


def compat_token(mas, username, scope, synapse_admin, run, scrub):
    """A compatibility token from ``mas-cli manage issue-compatibility-token`` (never logged). ``run(argv)``
    runs a command quietly (``cmd.run_all``'s answer); ``scrub(text)`` hides the secrets in its output."""
    devices = [
        t[len("urn:matrix:client:device:") :] for t in scope.split() if t.startswith("urn:matrix:client:device:")
    ]
    extra = (
        set(scope.split())
        - {"urn:matrix:client:api:*", "urn:synapse:admin:*"}
        - {f"urn:matrix:client:device:{d}" for d in devices}
    )
    if len(devices) != 1 or extra:
        raise SaltInvocationError(
            "scope: this MAS has no personal sessions; a compatibility token carries only the client API, one device"
            " and (synapse_admin) urn:synapse:admin:*"
        )
    argv = [mas["paths"]["mas_cli"], "manage", "issue-compatibility-token", username, devices[0]]
    if synapse_admin:
        argv.append("--yes-i-want-to-grant-synapse-admin-privileges")
    res = run(argv)
    output = (res.get("stderr") or "") + (res.get("stdout") or "")
    found = re.search(r"Compatibility token issued: (mct_\S+)", output)
    if res.get("retcode") != 0 or found is None:
        raise CommandExecutionError(
            f"mas-cli manage issue-compatibility-token failed ({res.get('retcode')}): {scrub(output[-600:])}"
        )
    return found.group(1)


def issue_bot_token(mas, backend, check, username, path, scope, expires_in, synapse_admin, user, group, run, scrub):
    """Do what :func:`bot_check` found (``check``): a token issued or regenerated and written to ``path``
    (0600, ``user``:``group``), the other sessions of the file revoked, or the file's owner and mode fixed.
    Returns the changes."""
    action, reason, session = check["action"], check["reason"], check["session"]
    changes = {}
    if action in ("create", "regenerate") and not check["personal"]:
        token = compat_token(mas, username, scope, synapse_admin, run, scrub)
        secretfiles.atomic_write(path, token + "\n", mode="0600", user=user, group=group)
        changes["token"] = {"old": reason, "new": "issued (compatibility token: this MAS has no personal sessions)"}
    elif action in ("create", "regenerate"):
        body = {} if expires_in is None else {"expires_in": int(expires_in)}
        if action == "regenerate":
            url = f"/personal-sessions/{session['id']}/regenerate"
            issued = backend.api.call("POST", url, expect=(201,), json=body)["data"]
        else:
            body.update(actor_user_id=check["view"]["user_id"], human_name=session_name(path), scope=scope)
            issued = create_session(backend, body)
        token = issued["attributes"]["access_token"]
        secretfiles.atomic_write(path, token + "\n", mode="0600", user=user, group=group)
        for stale in check["sessions"]:
            if stale["id"] != issued["id"]:
                backend.api.call("POST", f"/personal-sessions/{stale['id']}/revoke", expect=(200, 409))
        changes["token"] = {"old": reason, "new": "issued" if action == "create" else "regenerated"}
    elif action == "fix-mode":
        secretfiles.atomic_write(path, secretfiles.read_text(path), mode="0600", user=user, group=group)
        changes["mode"] = {"old": reason, "new": f"0600 {user}:{group}"}
    return changes
