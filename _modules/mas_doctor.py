"""
Doctor of the ``mas`` formula: named checks of the whole deployment (MAS, Synapse, the reverse proxy, the files the formula writes) plus upstream ``mas-cli doctor``, run concurrently into one result automation can gate on.

:py:func:`run` returns ``{"result": "ok"|"warning"|"error", "checks": [{name,
status, message, fix, url, seconds}], "duration"}``. Each check has its own
timeout and runs in its own thread; a check that cannot run says why and the
others still run. The checks (see docs/doctor.md for what to do when one
fails):

``mas_health``, ``mas_discovery``, ``compat_login_route``,
``synapse_reaches_mas``, ``shared_secret``, ``issuer_consistency``,
``compat_routes``, ``synapse_version``, ``well_known_client``,
``dropin_present``, and ``mas_cli_doctor`` with one ``mas_cli_doctor.<step>``
per step of upstream's doctor.

Upstream doctor logs one line per step on stderr, marked ✅ (ok), ⚠️
(warning) or ❌ (error), with quirks (an error line without emoji,
``❌Can't reach ...`` without a space, messages spanning several lines). It
prints ``matrix.secret`` when its ``/_synapse/mas`` probe fails: every message
is scrubbed with ``mas_secret.scrub`` before it is returned or logged.

While ``mas:migration_in_progress`` is true, the checks of the delegation
(Synapse asking MAS, the compatibility routes, the issuer clients see) are
``skipped`` with the reason.

:depends: requests
"""

import contextvars
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
import urllib.parse

from salt.exceptions import CommandExecutionError, SaltInvocationError

import mas_formula

mas_formula.refresh()
from mas_formula import http, secretfiles  # noqa: E402  (after the refresh: a synced update is imported anew)

try:
    import requests

    HAS_REQUESTS = True
except ImportError:  # pragma: no cover - depends on the minion
    HAS_REQUESTS = False
    HTTPAdapter = object

log = logging.getLogger(__name__)

__virtualname__ = "mas_doctor"

OK, WARNING, ERROR, SKIPPED = "ok", "warning", "error", "skipped"
MARKS = {OK: "✓", WARNING: "!", ERROR: "✗", SKIPPED: "-"}

#: The checks that only mean something once Synapse delegates to MAS:
#: ``skipped`` while ``mas:migration_in_progress`` is true.
DELEGATION_CHECKS = (
    "compat_login_route",
    "synapse_reaches_mas",
    "shared_secret",
    "issuer_consistency",
    "compat_routes",
    "well_known_client",
)
#: Upstream doctor's steps (crates/cli/src/commands/doctor.rs), in order.
UPSTREAM_STEPS = ("issuer", "well_known", "homeserver", "whoami", "synapse_mas_api", "legacy_login")
#: Upstream steps about the delegation (skipped while migrating).
UPSTREAM_DELEGATION_STEPS = ("whoami", "synapse_mas_api", "legacy_login")
#: Synapse versions MAS 1.23 needs, each with its reason.
SYNAPSE_MINIMUM = (
    ((1, 135, 0), "MAS 1.23 talks to Synapse through the /_synapse/mas API, added in Synapse 1.135.0"),
    (
        (1, 136, 0),
        "the formula's drop-in uses the stable matrix_authentication_service section, added in Synapse 1.136.0"
        " (older Synapse ignores it and keeps authenticating itself)",
    ),
)
#: Prefix of a made-up access token; a fresh one each time, because Synapse caches
#: what MAS said about a token for 2 minutes (it would not ask MAS again).
BAD_TOKEN_PREFIX = "mas-formula-doctor-invalid-"  # noqa: S105
PROBE_REFRESH_TOKEN = "mas-formula-doctor-certainly-not-a-refresh-token"  # noqa: S105
MAS_FLOW_MARKERS = ("oauth_aware_preferred", "org.matrix.msc3824.delegated_oidc_compatibility")

_TRACE = re.compile(r"^(\d{4}-\d\d-\d\dT\S+)\s+(TRACE|DEBUG|INFO|WARN|ERROR)\s+(\S+)\s?(.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: MAS's optional log context between the target and the message (`<tag>-<index> - `).
_LOG_CONTEXT = re.compile(r"^[A-Za-z0-9_.-]+-\d+ - ")
_QUOTED_URL = re.compile(r'"(https?://[^"\s]+)"')
_VERSION = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?")
#: Separates the texts scrubbed in one call (never part of a message).
_SEP = "\n\x1e\n"
AGENT = "mas-formula-doctor"


def __virtual__():
    if not HAS_REQUESTS:
        return (False, "The mas_doctor module needs the 'requests' Python package")
    return __virtualname__


# --------------------------------------------------------------------------
# Reading answers (the sessions are the formula's one HTTP client, mas_formula.http)
# --------------------------------------------------------------------------


def _errcode(response):
    body = http.json_or_none(response)
    return body.get("errcode") if isinstance(body, dict) else None


def _mas_flows(response):
    """True when a ``GET /login`` answer carries MAS's SSO flow."""
    body = http.json_or_none(response)
    flows = body.get("flows") if isinstance(body, dict) else None
    return any(
        isinstance(flow, dict)
        and flow.get("type") == "m.login.sso"
        and any(flow.get(marker) is True for marker in MAS_FLOW_MARKERS)
        for flow in flows or []
    )


def _flow_types(response):
    body = http.json_or_none(response)
    flows = body.get("flows") if isinstance(body, dict) else None
    return ", ".join(str(f.get("type")) for f in flows or [] if isinstance(f, dict)) or "no flows"


def _short(text, length=200):
    text = " ".join((text or "").split())
    return text if len(text) <= length else text[: length - 1] + "…"


def _join(base, path):
    """``path`` (absolute) on the scheme and host of ``base``, as upstream joins URLs."""
    return urllib.parse.urljoin(base, path)


# --------------------------------------------------------------------------
# The context every check reads (built once, in the calling thread)
# --------------------------------------------------------------------------


class _Context:
    """What the checks need, from the formula's map; no secret value."""

    def __init__(self, mas, timeout):
        self.mas = mas
        self.timeout = timeout
        self.migrating = bool(mas["migration_in_progress"])
        doctor = mas["doctor"]
        self.proxy_url = (doctor.get("proxy_url") or "https://127.0.0.1").rstrip("/")
        self.verify = doctor.get("tls_verify", True)
        self.matrix_host = mas["proxy"].get("matrix_hostname") or mas["hostname"]
        self.paths = mas["paths"]
        self.config = mas["mas_config"]
        self.public_base = self.config["http"]["public_base"]
        self.issuer = self.config["http"].get("issuer") or self.public_base
        self.web_url = mas["api"]["web_url"]
        self.health_url = mas["api"]["health_url"]
        self.synapse = mas["synapse"]["endpoint"]
        self.mas_endpoint = mas["synapse"]["mas_endpoint"]
        self.secret_file = self.config["matrix"].get("secret_file") or self.paths["homeserver_secret"]
        self.synapse_settings = __salt__["mas_synapse.settings"](mas)
        kind = mas["proxy"]["type"]
        self.serves_well_known = kind == "nginx" and bool(mas["proxy"]["nginx"]["well_known"])
        self.well_known = __salt__["mas_proxy.well_known_client"](
            f"https://{self.matrix_host}/", mas["public_base"], self.migrating
        )

    def get(self, url, method="GET", host=None, **kwargs):
        """``(response, None)`` or ``(None, reason)``."""
        with http.session(host, self.verify if host else True, agent=AGENT) as session:
            try:
                return session.request(method, url, timeout=self.timeout, allow_redirects=False, **kwargs), None
            except requests.RequestException as exc:
                return None, http.why(exc)

    def via_proxy(self, path, method="GET", **kwargs):
        """A request through the reverse proxy, as a client of the Matrix host."""
        return self.get(self.proxy_url + path, method, host=self.matrix_host, **kwargs)

    @property
    def proxy_where(self):
        return f"{self.proxy_url} (Host: {self.matrix_host})"

    def route_fix(self):
        """What to change when the compatibility routes do not reach MAS."""
        kind = self.mas["proxy"]["type"]
        if kind == "nginx":
            snippet = self.mas["proxy"]["nginx"]["snippet_path"]
            return (
                f"include {snippet} in the nginx server block of {self.matrix_host}, above your own regex"
                " locations (docs/proxy.md, worked example), then reload nginx"
            )
        if kind == "traefik":
            return (
                f"make Traefik load {self.mas['proxy']['traefik']['config_path']} (file provider) and check that"
                f" its compat router for Host(`{self.matrix_host}`) wins (priority 1000)"
            )
        prefix = "" if self.mas["path_prefix"] == "/" else self.mas["path_prefix"]
        return (
            f"route ^/_matrix/client/[^/]+/(login|logout|refresh) on {self.matrix_host} to MAS"
            f" ({self.mas['proxy']['nginx']['mas_upstream']}){' with ' + prefix + ' prepended' if prefix else ''}"
            " (mas:proxy:type is none: the formula writes no proxy file)"
        )

    def start_mas_fix(self):
        service = self.mas["service"]
        if service["manage"]:
            return f"start MAS: systemctl start {service['name']} (journalctl -u {service['name']} says why it stopped)"
        return "start MAS (mas:service:manage is false: your own supervisor runs `mas-cli server`)"

    def start_synapse_fix(self):
        return (
            f"start Synapse (systemctl start {self.mas['synapse']['service']}); mas:synapse:endpoint"
            f" ({self.synapse}) is where MAS and the doctor reach it"
        )


def _check(status, message, fix="", url=None):
    return {"status": status, "message": message, "fix": fix, "url": url}


# --------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------


def _check_mas_health(ctx):
    url = ctx.health_url
    resp, err = ctx.get(url)
    if err:
        return _check(ERROR, f"MAS does not answer at {url}: {err}", ctx.start_mas_fix(), url)
    if resp.status_code == 200:
        return _check(OK, f"MAS answers at {url}", url=url)
    return _check(
        ERROR,
        f"MAS's /health answered {http.status(resp)}: {_short(resp.text)}",
        "MAS answers but cannot use its database: check mas:database:* and PostgreSQL, and MAS's log",
        url,
    )


def _discovery(ctx):
    """MAS's discovery document from its own web listener: ``(doc, url, problem)``."""
    url = ctx.web_url + ".well-known/openid-configuration"
    resp, err = ctx.get(url)
    if err:
        return None, url, f"MAS's web listener does not answer at {url}: {err}"
    doc = http.json_or_none(resp) if resp.status_code == 200 else None
    if not isinstance(doc, dict):
        return None, url, f"{url} answered {http.status(resp)} without a discovery document"
    return doc, url, None


def _check_mas_discovery(ctx):
    doc, url, problem = _discovery(ctx)
    if problem:
        return _check(ERROR, problem, ctx.start_mas_fix() + " (mas:http:web_bind is its web listener)", url)
    issuer = doc.get("issuer")
    if issuer != ctx.issuer:
        return _check(
            ERROR,
            f"MAS's discovery document names the issuer {issuer!r}, the deployed configuration {ctx.issuer!r}",
            "restart MAS so that it serves the configuration the formula deployed",
            url,
        )
    return _check(OK, f"MAS's discovery document names the configured issuer {issuer!r}", url=url)


def _check_compat_login_route(ctx):
    path = "/_matrix/client/v3/login"
    url = ctx.proxy_url + path
    resp, err = ctx.via_proxy(path)
    if err:
        return _check(
            ERROR,
            f"the reverse proxy does not answer at {ctx.proxy_where}: {err}",
            "start the proxy, or set mas:doctor:proxy_url to where this minion reaches it"
            + (" (mas:doctor:tls_verify for its certificate)" if "TLS" in err else ""),
            url,
        )
    if resp.status_code in (502, 503, 504):
        return _check(
            ERROR,
            f"GET {path} through the proxy answered {http.status(resp)}: the proxy cannot reach MAS",
            ctx.start_mas_fix()
            + "; check the proxy's upstream for MAS (mas:proxy:nginx:mas_upstream / traefik:mas_url)",
            url,
        )
    if resp.status_code == 200 and _mas_flows(resp):
        return _check(
            OK,
            f"GET {path} through the proxy answers with MAS's login flows (m.login.sso, oauth_aware_preferred)",
            url=url,
        )
    if resp.status_code == 200:
        detail = f"Synapse's login flows ({_flow_types(resp)}), not MAS's"
    elif _errcode(resp) == "M_UNRECOGNIZED":
        detail = f"{http.status(resp)} with M_UNRECOGNIZED (Synapse's answer for a route it leaves to MAS)"
    else:
        detail = http.status(resp)
    return _check(
        ERROR, f"GET {path} through the proxy answered {detail}: logins do not reach MAS", ctx.route_fix(), url
    )


def _check_synapse_reaches_mas(ctx):
    url = _join(ctx.synapse, "/_matrix/client/v3/account/whoami")
    resp, err = ctx.get(url, headers={"Authorization": f"Bearer {BAD_TOKEN_PREFIX}{secrets.token_hex(8)}"})
    if err:
        return _check(ERROR, f"Synapse does not answer at {ctx.synapse}: {err}", ctx.start_synapse_fix(), url)
    if resp.status_code == 401:
        return _check(OK, "Synapse rejected a made-up access token (401): it can check tokens with MAS", url=url)
    if resp.status_code == 503:
        said = f"Synapse could not check an access token with MAS ({http.status(resp)}: {_short(resp.text, 120)})"
        # from this host, MAS's endpoint for Synapse tells the two causes apart
        probe, err = ctx.get(ctx.mas_endpoint.rstrip("/") + "/.well-known/openid-configuration")
        if probe is not None and probe.status_code == 200:
            return _check(
                ERROR,
                f"{said}; MAS answers at {ctx.mas_endpoint} (mas:synapse:mas_endpoint), so it refuses the shared"
                " secret Synapse sends",
                "see shared_secret: Synapse's copy must match MAS's; apply mas, then restart Synapse",
                url,
            )
        return _check(
            ERROR,
            f"{said}: MAS does not answer at {ctx.mas_endpoint} (mas:synapse:mas_endpoint, the drop-in's endpoint):"
            f" {err or http.status(probe)}",
            ctx.start_mas_fix() + "; or correct mas:synapse:mas_endpoint, apply mas and restart Synapse",
            url,
        )
    if resp.status_code < 400:
        return _check(
            ERROR,
            f"Synapse accepted a made-up access token ({http.status(resp)})",
            "check the drop-in and Synapse's auth configuration at once: no valid token was sent",
            url,
        )
    return _check(
        WARNING,
        f"whoami with a made-up token answered {http.status(resp)} (expected 401)",
        "check Synapse's log",
        url,
    )


def _read_secret(path):
    """The content of a secret file, trimmed as MAS and Synapse read it (never logged); ``OSError`` (with the
    reason as ``strerror``) when it cannot be read or is not a regular file."""
    try:
        return secretfiles.read_regular(path).decode("utf-8", "replace").strip()
    except CommandExecutionError as exc:
        cause = exc.__cause__
        raise OSError(getattr(cause, "errno", None), getattr(cause, "strerror", None) or "not a regular file") from exc


def _check_shared_secret(ctx):
    url = _join(ctx.synapse, "/_synapse/mas/is_localpart_available")
    mas_file = ctx.secret_file
    synapse_file = ctx.synapse_settings["secret"]["path"]
    try:
        secret = _read_secret(mas_file)
    except OSError as exc:
        return _check(
            ERROR,
            f"cannot read MAS's shared secret {mas_file}: {exc.strerror}",
            "apply mas (state mas.secrets writes it)",
            url,
        )
    resp, err = ctx.get(url, headers={"Authorization": f"Bearer {secret}"})
    if err:
        return _check(ERROR, f"Synapse does not answer at {ctx.synapse}: {err}", ctx.start_synapse_fix(), url)
    if resp.status_code == 400:
        return _check(OK, f"Synapse accepts the shared secret MAS holds ({mas_file})", url=url)
    if resp.status_code == 404:
        return _check(
            ERROR,
            f"Synapse does not serve its MAS API ({http.status(resp)}): it does not delegate to MAS",
            f"the drop-in {ctx.synapse_settings['dropin']} must be in place (see dropin_present): apply mas, then"
            " restart Synapse",
            url,
        )
    if resp.status_code in (401, 403) and not ctx.mas["role"]["synapse"]:
        return _check(
            ERROR,
            f"Synapse refuses the shared secret MAS holds ({http.status(resp)}): its copy {synapse_file} on the Synapse"
            " minion differs, or Synapse still runs with an older one",
            "both minions must be served the same mas:secrets:homeserver_secret (docs/several-hosts.md): apply"
            " mas.synapse on the Synapse minion (it restarts Synapse when the copy changes)",
            url,
        )
    if resp.status_code in (401, 403):
        try:
            same = hmac.compare_digest(_read_secret(synapse_file).encode(), secret.encode())
        except OSError as exc:
            return _check(
                ERROR,
                f"Synapse refuses the shared secret MAS holds ({http.status(resp)}) and its copy {synapse_file} cannot be"
                f" read ({exc.strerror})",
                f"apply mas (state mas.synapse copies {mas_file} to {synapse_file}), then restart Synapse",
                url,
            )
        if same:
            return _check(
                ERROR,
                f"Synapse refuses the shared secret MAS holds ({http.status(resp)}) although {mas_file} and {synapse_file}"
                " hold the same value: Synapse still runs with an older copy",
                "restart Synapse (it reads secret_path once)",
                url,
            )
        return _check(
            ERROR,
            f"Synapse refuses the shared secret MAS holds ({http.status(resp)}): the two copies differ; compare"
            f" {mas_file} (MAS, matrix.secret_file) with {synapse_file} (Synapse, secret_path)",
            f"apply mas (state mas.synapse copies {mas_file} to {synapse_file}), then restart Synapse",
            url,
        )
    return _check(
        ERROR,
        f"Synapse's MAS API answered {http.status(resp)} to the shared secret MAS holds (expected 400)",
        "check Synapse's log",
        url,
    )


def _issuer_of(ctx, url, key_path, host=None):
    """The issuer in the JSON document at ``url``: ``(issuer, problem)``."""
    resp, err = ctx.get(url, host=host)
    if err:
        return None, err
    doc = http.json_or_none(resp) if resp.status_code == 200 else None
    for key in key_path:
        doc = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(doc, str):
        return None, f"answered {http.status(resp)} without an issuer"
    return doc, None


def _check_issuer_consistency(ctx):
    found = {"http.public_base": ctx.public_base, "http.issuer": ctx.issuer}
    unread = []
    doc, _, problem = _discovery(ctx)
    if problem:
        unread.append(f"MAS's discovery document ({problem})")
    else:
        found["MAS's discovery document"] = doc.get("issuer")
    for label, path in (
        ("Synapse's auth_metadata", "/_matrix/client/v1/auth_metadata"),
        (
            "Synapse's unstable auth_metadata (org.matrix.msc2965)",
            "/_matrix/client/unstable/org.matrix.msc2965/auth_metadata",
        ),
    ):
        issuer, err = _issuer_of(ctx, _join(ctx.synapse, path), ("issuer",))
        if err:
            unread.append(f"{label} ({err})")
        else:
            found[label] = issuer
    well_known = ("org.matrix.msc2965.authentication", "issuer")
    if ctx.serves_well_known:
        label = f"the client well-known on {ctx.matrix_host}"
        issuer, err = _issuer_of(ctx, ctx.proxy_url + "/.well-known/matrix/client", well_known, host=ctx.matrix_host)
        if err:
            unread.append(f"{label} ({err})")
    else:  # Synapse's own, when it serves one (serve_client_wellknown); none is fine
        label = "Synapse's client well-known"
        issuer, _ = _issuer_of(ctx, _join(ctx.synapse, "/.well-known/matrix/client"), well_known)
    if issuer is not None:
        found[label] = issuer
    values = set(found.values())
    listing = "; ".join(f"{label} {value!r}" for label, value in found.items())
    if len(values) > 1:
        return _check(
            ERROR,
            f"the issuers differ (trailing slash included): {listing}",
            "make them identical: the formula sets issuer = public_base = https://<mas:hostname><mas:path_prefix>/;"
            " remove a different mas:config:http:issuer or public_base, apply mas, restart MAS, then restart Synapse"
            " (it caches MAS's metadata until it restarts)",
        )
    if unread:
        return _check(
            WARNING,
            f"{len(found)} sources agree on {ctx.public_base!r}; could not read " + "; ".join(unread),
            "see the checks of MAS and Synapse above",
        )
    return _check(OK, f"{len(found)} sources agree on the issuer {ctx.public_base!r} ({', '.join(found)})")


def _signature(resp):
    """What tells one server's answer from another's."""
    return (resp.status_code, _errcode(resp), _mas_flows(resp))


def _check_compat_routes(ctx):
    probes = (
        ("POST", "/_matrix/client/v3/logout", None),
        ("POST", "/_matrix/client/v3/refresh", {"refresh_token": PROBE_REFRESH_TOKEN}),
        ("GET", "/_matrix/client/r0/login", None),
    )
    errors, warnings, fine = [], [], []
    for method, path, body in probes:
        kwargs = {"json": body if body is not None else {}} if method == "POST" else {}
        through, err = ctx.via_proxy(path, method, **kwargs)
        if err:
            errors.append(f"{method} {path}: the proxy does not answer ({err})")
            continue
        direct, mas_err = ctx.get(ctx.web_url.rstrip("/") + path, method, **kwargs)
        synapse, _ = ctx.get(_join(ctx.synapse, path), method, **kwargs)
        if direct is not None and _signature(through) == _signature(direct):
            fine.append(f"{method} {path}")
        elif synapse is not None and _signature(through) == _signature(synapse):
            errors.append(f"{method} {path} reaches Synapse ({http.status(through)}), not MAS")
        elif through.status_code in (502, 503, 504):
            errors.append(f"{method} {path}: the proxy cannot reach MAS ({http.status(through)})")
        elif direct is None:
            errors.append(f"{method} {path} answered {http.status(through)}; MAS itself does not answer ({mas_err})")
        else:
            errors.append(
                f"{method} {path} answered {http.status(through)} through the proxy, MAS {http.status(direct)}"
            )
    path = "/_synapse/mas/is_localpart_available"
    through, err = ctx.via_proxy(path)
    synapse, _ = ctx.get(_join(ctx.synapse, path))
    public = through is not None and synapse is not None and _signature(through) == _signature(synapse)
    if public:
        warnings.append(f"{path} is public: the proxy passes /_synapse/mas/* to Synapse")
    url = ctx.proxy_url + "/_matrix/client/"
    if errors:
        return _check(ERROR, "; ".join(errors + warnings), ctx.route_fix(), url)
    if warnings:
        return _check(
            WARNING,
            f"{', '.join(fine)} reach MAS; " + "; ".join(warnings),
            "proxy only /_matrix and /_synapse/client to Synapse (docs/proxy.md, worked example): MAS calls"
            " /_synapse/mas on mas:synapse:endpoint directly",
            url,
        )
    return _check(OK, f"{', '.join(fine)} reach MAS through the proxy; /_synapse/mas/* is not public", url=url)


def _version(text):
    match = _VERSION.match(str(text or ""))
    return tuple(int(part or 0) for part in match.groups()) if match else None


def _check_synapse_version(ctx):
    url = _join(ctx.synapse, "/_synapse/admin/v1/server_version")
    problems, fixes = [], []
    resp, err = ctx.get(url)
    body = http.json_or_none(resp) if resp is not None and resp.status_code == 200 else None
    version_text = body.get("server_version") if isinstance(body, dict) else None
    version = _version(version_text)
    for minimum, reason in SYNAPSE_MINIMUM:
        if version is not None and version < minimum:
            problems.append(f"Synapse {version_text.split()[0]} is older than {'.'.join(map(str, minimum))}: {reason}")
            fixes.append(f"upgrade Synapse to {'.'.join(map(str, SYNAPSE_MINIMUM[-1][0]))} or newer")
    syn = ctx.synapse_settings
    unknown = []
    try:
        # Synapse's config is read where it is: on another minion, mas.synapse checks it there
        conflicts = (
            __salt__["mas_synapse.conflicts"](syn["config_files"], syn["config_dir"], syn["dropin"], ctx.migrating)
            if ctx.mas["role"]["synapse"]
            else []
        )
    except (CommandExecutionError, SaltInvocationError) as exc:
        conflicts = []
        unknown.append(f"cannot read Synapse's config: {exc}")
    for item in conflicts:
        problems.append(f"{item['key']} in {item['file']}: {item['problem']}")
        fixes.append(item["fix"])
    if problems:
        return _check(ERROR, "; ".join(problems), "; ".join(dict.fromkeys(fixes)), url)
    if version is None:
        unknown.insert(0, f"Synapse's version is unknown ({err or 'no server_version in the answer'})")
    if unknown:
        return _check(WARNING, "; ".join(unknown), ctx.start_synapse_fix() if err else "", url)
    config = (
        "its config has nothing MAS or Synapse refuses together"
        if ctx.mas["role"]["synapse"]
        else "its config is checked on its own minion (mas.synapse)"
    )
    return _check(
        OK, f"Synapse {version_text.split()[0]} (>= {'.'.join(map(str, SYNAPSE_MINIMUM[-1][0]))}); {config}", url=url
    )


def _check_well_known_client(ctx):
    if not ctx.serves_well_known:
        expected = json.dumps(ctx.well_known["org.matrix.msc2965.authentication"], sort_keys=True)
        return _check(
            SKIPPED,
            "the formula does not serve /.well-known/matrix/client (mas:proxy:nginx:well_known is false or the proxy"
            f" is not nginx); yours must carry org.matrix.msc2965.authentication = {expected}",
        )
    path = "/.well-known/matrix/client"
    url = ctx.proxy_url + path
    resp, err = ctx.via_proxy(path)
    if err:
        return _check(ERROR, f"the reverse proxy does not answer at {ctx.proxy_where}: {err}", ctx.route_fix(), url)
    doc = http.json_or_none(resp) if resp.status_code == 200 else None
    if not isinstance(doc, dict):
        return _check(ERROR, f"{path} answered {http.status(resp)} without a JSON document", ctx.route_fix(), url)
    wanted = ctx.well_known["org.matrix.msc2965.authentication"]
    got = doc.get("org.matrix.msc2965.authentication")
    if got != wanted:
        return _check(
            ERROR,
            f"{path} carries org.matrix.msc2965.authentication = {json.dumps(got, sort_keys=True)}, the formula serves"
            f" {json.dumps(wanted, sort_keys=True)}",
            ctx.route_fix(),
            url,
        )
    return _check(
        OK, f"{path} names the issuer {wanted['issuer']!r} and the account URL {wanted['account']!r}", url=url
    )


def _check_dropin_present(ctx):
    syn = ctx.synapse_settings
    dropin = syn["dropin"]
    url = "file://" + dropin
    if not ctx.mas["role"]["synapse"]:
        return _check(
            SKIPPED,
            f"Synapse is on another minion (mas:roles here: {', '.join(ctx.mas['roles'])}): its drop-in is written"
            " there by mas.synapse; synapse_reaches_mas and shared_secret check what it does",
            url=url,
        )
    if ctx.migrating:
        if os.path.lexists(dropin):
            return _check(
                ERROR,
                f"{dropin} is present although mas:migration_in_progress is true: Synapse delegates to MAS mid-migration",
                "apply mas (it removes the drop-in while migrating), then restart Synapse",
                url,
            )
        return _check(
            SKIPPED, "mas:migration_in_progress is true: Synapse keeps authenticating, no drop-in wanted", url=url
        )
    try:
        wanted = __salt__["mas_synapse.inspect"](
            dropin, syn["endpoint"], syn["secret"]["path"], syn["config_files"], syn["config_dir"], False
        )
    except (CommandExecutionError, SaltInvocationError) as exc:
        return _check(ERROR, f"cannot tell what the drop-in should hold: {exc}", "", url)
    if wanted["text"] is None:
        keys = ", ".join(item["key"] for item in wanted["conflicts"])
        return _check(
            ERROR,
            f"the formula would not write {dropin}: Synapse's config conflicts with MAS ({keys})",
            "see synapse_version",
            url,
        )
    apply_fix = "apply mas (state mas.synapse writes it), then restart Synapse"
    try:
        with open(dropin, encoding="utf-8") as handle:
            current = handle.read()
    except FileNotFoundError:
        return _check(ERROR, f"{dropin} is missing: Synapse does not delegate to MAS", apply_fix, url)
    except OSError as exc:
        return _check(ERROR, f"cannot read {dropin}: {exc.strerror}", apply_fix, url)
    if current != wanted["text"]:
        return _check(
            ERROR,
            f"{dropin} differs from what the formula writes",
            apply_fix + "; put your own Synapse settings in your files or mas:synapse:extra_config, not in the drop-in",
            url,
        )
    if not os.path.isfile(syn["secret"]["path"]):
        return _check(ERROR, f"Synapse's copy of the shared secret {syn['secret']['path']} is missing", apply_fix, url)
    return _check(OK, f"{dropin} is what the formula writes", url=url)


_CHECKS = (
    ("mas_health", _check_mas_health),
    ("mas_discovery", _check_mas_discovery),
    ("compat_login_route", _check_compat_login_route),
    ("synapse_reaches_mas", _check_synapse_reaches_mas),
    ("shared_secret", _check_shared_secret),
    ("issuer_consistency", _check_issuer_consistency),
    ("compat_routes", _check_compat_routes),
    ("synapse_version", _check_synapse_version),
    ("well_known_client", _check_well_known_client),
    ("dropin_present", _check_dropin_present),
)


# --------------------------------------------------------------------------
# Upstream `mas-cli doctor`
# --------------------------------------------------------------------------


def _doctor_entries(stderr):
    """Tracing lines of ``mas-cli`` as ``[{level, target, message}]``
    (continuation lines belong to the entry above them)."""
    entries = []
    for raw in _ANSI.sub("", stderr).splitlines():
        match = _TRACE.match(raw)
        if match:
            message = _LOG_CONTEXT.sub("", match.group(4))
            entries.append({"level": match.group(2), "target": match.group(3), "message": message})
        elif entries:
            entries[-1]["message"] += "\n" + raw
        elif raw.strip():
            entries.append({"level": "ERROR" if raw.startswith("Error") else "INFO", "target": "", "message": raw})
    return entries


def _classify(entry):
    message = entry["message"].lstrip()
    if message.startswith("✅"):
        return OK
    if message.startswith("⚠"):
        return WARNING
    if message.startswith("❌") or entry["level"] == "ERROR":
        return ERROR
    if entry["level"] == "WARN":
        return WARNING
    return "info"


def _step(message):
    """Which upstream step a message belongs to (by the URL it names), or None."""
    first = re.sub(r"^[\s✅⚠❌\ufe0f]+", "", message).split("\n", 1)[0]
    if "/account/whoami" in first:
        return "whoami"
    if "/_synapse/mas/" in first:
        return "synapse_mas_api"
    if "legacy login API" in first or "/_matrix/client/v3/login" in first:
        return "legacy_login"
    if "well-known" in first:
        return "well_known"
    if "/_matrix/client/versions" in first or first.startswith(
        ("Homeserver is reachable", "Can't reach the homeserver")
    ):
        return "homeserver"
    if "issuer" in first:
        return "issuer"
    return None


def _upstream_fix(ctx, step, message):
    paths = ctx.paths
    if step == "issuer":
        return "serve MAS over https: http.public_base is https://<mas:hostname><mas:path_prefix>/ unless mas:config overrides it"
    if step == "well_known":
        return (
            f"serve https://{ctx.mas['server_name']}/.well-known/matrix/client with m.homeserver.base_url"
            " (mas:proxy:nginx:well_known: true serves it from the formula's snippet)"
        )
    if step == "homeserver":
        return f"MAS reaches Synapse at mas:synapse:endpoint ({ctx.synapse}): " + ctx.start_synapse_fix()
    if step == "whoami":
        if "503" in message:
            return f"Synapse reaches MAS at mas:synapse:mas_endpoint ({ctx.mas_endpoint}): {ctx.start_mas_fix()}"
        return "check Synapse's log"
    if step == "synapse_mas_api":
        return (
            f"Synapse's copy {ctx.synapse_settings['secret']['path']} must match MAS's {paths['homeserver_secret']}"
            f" and the drop-in {ctx.synapse_settings['dropin']} must be loaded: apply mas, then restart Synapse"
        )
    if step == "legacy_login":
        return ctx.route_fix()
    return ""


def _fallback_login_probe(ctx, steps):
    """Upstream's step 6 asks the client API that the client well-known of ``server_name`` names; when it
    found no well-known (step 2 not ok) it asks ``matrix.endpoint`` instead: Synapse's own address, where
    Synapse serves no login once it delegates to MAS. Its answer there says nothing about the deployment
    (``compat_login_route`` checks the login route through the proxy): ``skipped`` with that reason."""
    login, well_known = steps.get("legacy_login"), steps.get("well_known")
    if ctx.migrating or login is None or login["status"] == OK or well_known is None or well_known["status"] == OK:
        return  # while migrating, the step is skipped for that reason
    asked = urllib.parse.urlsplit(login["url"] or "")
    synapse = urllib.parse.urlsplit(ctx.config["matrix"]["endpoint"])
    if (asked.scheme, asked.netloc) != (synapse.scheme, synapse.netloc):
        return
    first = login["message"].split("\n", 1)[0]
    steps["legacy_login"] = _check(
        SKIPPED,
        "upstream found no client well-known (see mas_cli_doctor.well_known), so it asked Synapse directly, where"
        f" Synapse serves no login once it delegates to MAS; compat_login_route checks the login route through the"
        f" proxy instead (upstream: {first})",
        url=login["url"],
    )


def _upstream_checks(ctx, stderr, retcode):
    """One check per upstream step (and ``mas_cli_doctor`` for the run itself)."""
    steps = {}
    other = []
    for entry in _doctor_entries(stderr):
        kind = _classify(entry)
        if kind == "info":
            continue
        step = _step(entry["message"])
        if step is None:
            other.append((kind, entry["message"]))
            continue
        message = entry["message"].strip()
        url = _QUOTED_URL.search(message.split("\n", 1)[0])
        steps[step] = _check(
            kind, message, "" if kind == OK else _upstream_fix(ctx, step, message), url and url.group(1)
        )
    _fallback_login_probe(ctx, steps)
    stopped = retcode != 0
    problems = [message.strip() for kind, message in other if kind == ERROR]
    notes = [message.strip() for kind, message in other if kind == WARNING]
    if stopped:
        run_check = _check(
            ERROR,
            "\n".join(problems + notes) or f"mas-cli doctor exited with {retcode}",
            f"fix what it names ({ctx.paths['mas_cli']} config check shows the configuration's errors), then apply mas",
        )
    elif problems:
        run_check = _check(ERROR, "\n".join(problems), "see the message (a step this formula does not know yet)")
    elif notes:
        run_check = _check(WARNING, "\n".join(notes), "see the message (a step this formula does not know yet)")
    else:
        run_check = _check(OK, f"mas-cli doctor ran ({ctx.paths['mas_cli']} doctor, exit 0)")
    out = [dict(run_check, name="mas_cli_doctor")]
    homeserver_failed = steps.get("homeserver", {}).get("status") == ERROR
    for step in UPSTREAM_STEPS:
        check = steps.get(step)
        if check is None:
            if stopped:
                check = _check(SKIPPED, "mas-cli doctor stopped before this step")
            elif step in ("whoami", "synapse_mas_api") and homeserver_failed:
                check = _check(SKIPPED, "upstream skips this step when the homeserver is unreachable")
            elif step in ("issuer", "well_known"):
                check = _check(OK, "no warning (upstream prints nothing when this step passes)")
            else:
                check = _check(SKIPPED, "upstream printed nothing for this step")
        if ctx.migrating and step in UPSTREAM_DELEGATION_STEPS and check["status"] != SKIPPED:
            first = check["message"].split("\n", 1)[0]
            check = _check(
                SKIPPED,
                f"mas:migration_in_progress is true: Synapse does not delegate to MAS yet (upstream: {first})",
                url=check["url"],
            )
        out.append(dict(check, name=f"mas_cli_doctor.{step}"))
    return out


def _cannot_start(ctx, message, fix):
    skipped = [
        dict(_check(SKIPPED, "mas-cli doctor did not run"), name=f"mas_cli_doctor.{step}") for step in UPSTREAM_STEPS
    ]
    return [dict(_check(ERROR, message, fix), name="mas_cli_doctor")] + skipped


def _check_mas_cli_doctor(ctx):
    cli = ctx.paths["mas_cli"]
    problem = __salt__["mas.runtime_problem"](ctx.mas)
    if problem:
        message, _, fix = problem.partition(": ")
        return _cannot_start(ctx, message, fix)
    if not os.path.isfile(cli):
        return _cannot_start(ctx, f"{cli} is missing", "apply mas (state mas.config installs the wrapper)")
    res = __salt__["cmd.run_all"](
        [cli, "doctor"],
        python_shell=False,
        output_loglevel="quiet",
        ignore_retcode=True,
        timeout=ctx.timeout,
        env={"RUST_LOG": "info", "NO_COLOR": "1"},
    )
    stderr, stdout = res.get("stderr") or "", res.get("stdout") or ""
    if res["retcode"] != 0 and not stderr and stdout.startswith("Timed out"):
        return _cannot_start(
            ctx,
            f"mas-cli doctor did not finish within {ctx.timeout} s",
            "see whether MAS's host reaches Synapse and the public well-known quickly; raise the timeout",
        )
    if res["retcode"] in (125, 126, 127):
        last = (stderr or stdout).strip().splitlines()[-1:] or [f"exit {res['retcode']}"]
        what = "docker could not start mas-cli" if res["retcode"] == 125 else "mas-cli could not start"
        return _cannot_start(ctx, f"{what} (exit {res['retcode']}): {last[0]}", "run it by hand: " + cli + " doctor")
    return _upstream_checks(ctx, stderr or stdout, res["retcode"])


# --------------------------------------------------------------------------
# Running the checks
# --------------------------------------------------------------------------


def _timed(name, func, ctx, results):
    started = time.monotonic()
    try:
        found = func(ctx)
    except Exception as exc:  # pylint: disable=broad-except
        log.debug("mas_doctor: the check %s failed", name, exc_info=True)
        found = _check(ERROR, f"the check could not run: {type(exc).__name__}: {exc}")
    seconds = round(time.monotonic() - started, 3)
    found = found if isinstance(found, list) else [dict(found, name=name)]
    results[name] = [dict(check, seconds=seconds) for check in found]


def _run_checks(ctx, checks):
    """Run every check in a thread of its own; the slowest (the last, ``mas_cli_doctor``) starts first."""
    results = {}
    threads = []
    for name, func in reversed(checks):
        if ctx.migrating and name in DELEGATION_CHECKS:
            results[name] = [
                dict(
                    _check(SKIPPED, "mas:migration_in_progress is true: Synapse does not delegate to MAS yet"),
                    name=name,
                    seconds=0.0,
                )
            ]
            continue
        # Salt's dunders live in a context variable: each thread gets a copy
        thread = threading.Thread(
            target=contextvars.copy_context().run,
            args=(_timed, name, func, ctx, results),
            name=f"mas_doctor-{name}",
            daemon=True,
        )
        thread.start()
        threads.append((name, thread))
    # every check has its own timeout; a few seconds more for the last answer
    deadline = time.monotonic() + ctx.timeout * 2 + 5
    for name, thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            results[name] = [
                dict(_check(ERROR, f"the check did not finish within {ctx.timeout * 2 + 5} s"), name=name, seconds=None)
            ]
    return [check for name, _ in checks for check in results[name]]


def _scrub(checks, mas):
    """Every text of every check without any secret the minion knows (one scrub call)."""
    try:
        synapse_conf = __salt__["mas_synapse.config"](mask=False)["config"]
    except (CommandExecutionError, SaltInvocationError):
        synapse_conf = None
    fields = ("message", "fix", "url")
    texts = [str(check[field]) if check[field] is not None else "" for check in checks for field in fields]
    clean = __salt__["mas_secret.scrub"](
        _SEP.join(texts), synapse_conf=synapse_conf, secrets_dir=mas["paths"]["secrets_dir"]
    ).split(_SEP)
    if len(clean) != len(texts):  # a secret spanning the separator: scrub one by one
        clean = [__salt__["mas_secret.scrub"](text, secrets_dir=mas["paths"]["secrets_dir"]) for text in texts]
    values = iter(clean)
    for check in checks:
        for field in fields:
            value = next(values)
            check[field] = value if check[field] is not None else None


def _worst(checks):
    statuses = {check["status"] for check in checks}
    return ERROR if ERROR in statuses else WARNING if WARNING in statuses else OK


def run(timeout=10, strict=False):
    """
    Check the whole deployment and return a result automation can gate on:
    ``{"result": "ok"|"warning"|"error", "checks": [{"name", "status":
    "ok"|"warning"|"error"|"skipped", "message", "fix", "url", "seconds"}],
    "duration"}``. The checks run concurrently, each with its own timeout:
    MAS's health and discovery, the login route and the other compatibility
    routes through the reverse proxy, Synapse reaching MAS, the shared secret,
    the issuer everyone advertises, Synapse's version and config, the client
    well-known, the drop-in, and upstream ``mas-cli doctor`` (one check per
    step). Every message is scrubbed of the deployment's secrets. ``salt-call``
    exits non-zero when ``result`` is ``error`` (with ``strict``, also on
    ``warning``).

    timeout
        Seconds each check may take (HTTP timeout, ``mas-cli doctor`` run time).
    strict
        Count warnings as failures (exit code).

    CLI Example:

    .. code-block:: bash

        salt-call mas_doctor.run
        salt-call mas_doctor.run timeout=5 strict=True
    """
    started = time.monotonic()
    timeout = float(timeout)
    if timeout <= 0:
        raise SaltInvocationError(f"mas_doctor.run: timeout must be a positive number of seconds, not {timeout!r}")
    mas = __salt__["mas.mapdata"]()
    if not mas["enabled"]:
        raise CommandExecutionError("mas:enabled is false: there is no deployment to check")
    ctx = _Context(mas, timeout)
    prepared = time.monotonic()
    checks = _run_checks(ctx, (*_CHECKS, ("mas_cli_doctor", _check_mas_cli_doctor)))
    checked = time.monotonic()
    _scrub(checks, mas)
    log.debug(
        "mas_doctor: map and context %.3f s, checks %.3f s, scrubbing %.3f s",
        prepared - started,
        checked - prepared,
        time.monotonic() - checked,
    )
    for check in checks:
        log.debug("mas_doctor: %s %s: %s", check["name"], check["status"], check["message"])
    result = _worst(checks)
    if result == ERROR or (strict and result == WARNING):
        __context__["retcode"] = 1
    return {
        "result": result,
        "checks": [
            {key: check[key] for key in ("name", "status", "message", "fix", "url", "seconds")} for check in checks
        ],
        "duration": round(time.monotonic() - started, 3),
    }


def render(report):
    """
    The result of :py:func:`run` as text for people: a summary line, then one
    line per check with a mark (✓ ok, ! warning, ✗ error, - skipped), its
    name, the first line of its message and, when it is not ok, the fix.

    report
        The mapping :py:func:`run` returned.

    CLI Example:

    .. code-block:: bash

        salt-call mas_doctor.render "$(salt-call --out=json mas_doctor.run | jq .local)"
    """
    if not isinstance(report, dict) or not isinstance(report.get("checks"), list):
        raise SaltInvocationError("mas_doctor.render needs the mapping mas_doctor.run returns")
    counts = {status: 0 for status in MARKS}
    for check in report["checks"]:
        counts[check["status"]] = counts.get(check["status"], 0) + 1
    summary = ", ".join(f"{counts[status]} {status}" for status in (ERROR, WARNING, OK, SKIPPED))
    lines = [f"doctor: {report['result']} ({summary}) in {report.get('duration', 0):.2f} s"]
    width = max((len(check["name"]) for check in report["checks"]), default=0)
    for check in report["checks"]:
        first = (check["message"] or "").strip().split("\n", 1)[0]
        line = f"{MARKS.get(check['status'], '?')} {check['name']:<{width}}  {first}"
        if check["status"] in (ERROR, WARNING) and check.get("fix"):
            line += f" → fix: {check['fix']}"
        lines.append(line)
    return "\n".join(lines)


def report(timeout=10, strict=False):
    """
    Run :py:func:`run` and return it as text, one line per check with a ✓ ! ✗
    or - mark and the fix (see :py:func:`render`). ``salt-call`` exits non-zero
    on an error (with ``strict``, also on a warning).

    timeout, strict
        As for :py:func:`run`.

    CLI Example:

    .. code-block:: bash

        salt-call mas_doctor.report
        salt-call --out=txt mas_doctor.report strict=True
    """
    return render(run(timeout=timeout, strict=strict))


def wait(timeout=60):
    """
    Wait, with growing pauses (0.25 s doubling up to 5 s), until MAS's
    ``/health`` and Synapse's ``/_matrix/client/versions`` answer 200, at most
    ``timeout`` seconds. Returns ``{"ready": bool, "seconds": <waited>,
    "waiting_for": [what still did not answer, and why]}``; never raises for a
    service that stays down.

    timeout
        Seconds to wait at most (``mas:doctor:wait``).

    CLI Example:

    .. code-block:: bash

        salt-call mas_doctor.wait 30
    """
    mas = __salt__["mas.mapdata"]()
    targets = (
        ("MAS", mas["api"]["health_url"]),
        ("Synapse", _join(mas["synapse"]["endpoint"], "/_matrix/client/versions")),
    )
    started = time.monotonic()
    deadline = started + max(0.0, float(timeout))
    pause = 0.25
    while True:
        missing = []
        with http.session(agent=AGENT) as session:
            for label, url in targets:
                try:
                    status = session.get(url, timeout=min(5.0, max(1.0, deadline - time.monotonic()))).status_code
                    if status != 200:
                        missing.append(f"{label} at {url} answers {status}")
                except requests.RequestException as exc:
                    missing.append(f"{label} at {url}: {http.why(exc)}")
        now = time.monotonic()
        if not missing or now >= deadline:
            return {"ready": not missing, "seconds": round(now - started, 3), "waiting_for": missing}
        time.sleep(min(pause, deadline - now))
        pause = min(pause * 2, 5.0)
