"""What the login tests share (test_logins*.py): a person's logins through a real browser.

* :func:`login_pillar` -- the wired pillar (real MAS, real Synapse) with what shapes a login:
  the well-known, MAS's CA bundle (``mas:ca_bundle``), an upstream provider as the seed shows
  it (claims templates in ``{% raw %}``, the client secret written to a 0600 file), SMTP.
* :func:`unit_environment` / :func:`start_mas` -- MAS started with the ``Environment=`` of
  the unit the formula rendered (so ``SSL_CERT_FILE`` reaches MAS the way systemd would pass it).
* :class:`Public` -- the public URLs (``https://matrix.example.com/...``) from Python, through
  the test's proxy on loopback, TLS checked against the test CA.
* :func:`oauth_login` -- the OAuth 2.0 login Element X makes: discovery from Synapse and the
  well-known, dynamic client registration (MSC2966), authorization code with PKCE (S256) in the
  browser, the code exchanged for a token.

Every step says what broke: the browser step (page, failed requests), the request (URL,
status, body) or the pillar key.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import requests

from harness.util import free_port
from mas_double import run_server
from pillars import deep_update, wired_pillar

SERVER_NAME = "example.com"
MATRIX_HOST = "matrix.example.com"
PUBLIC = f"https://{MATRIX_HOST}"
ISSUER = f"{PUBLIC}/auth/"
PROVIDER_ULID = "01J0G1NSPR0V1DER000000TEST"
PROVIDER_NAME = "Test IdP"
PROVIDER_CLIENT = "mas-login-tests"
PROVIDER_SECRET = "Provider-Client-Secret-Login-77"
SMTP_USER = "mas-mailer"
SMTP_PASSWORD = "Smtp-Password-Login-Tests-55"
#: The app of the OAuth 2.0 login: a native client with a private-use URI scheme, as Element X registers
#: (the scheme is the reverse-DNS of ``client_uri``'s host, which MAS's policy requires).
APP_URI = "https://x.example.org/"
APP_REDIRECT = "org.example.x.app:/callback"


def callback_url(provider_id: str = PROVIDER_ULID) -> str:
    """Where the provider sends a person back to MAS (``<public_base>upstream/callback/<id>``)."""
    return f"{ISSUER}upstream/callback/{provider_id}"


def provider_client(method: str = "client_secret_basic", provider_id: str = PROVIDER_ULID) -> dict:
    """MAS as the provider's client (an entry of :class:`harness.oidc_provider.OidcProvider`'s ``clients``), as
    :func:`provider_pillar` with ``method`` and ``id=provider_id`` names it."""
    return {
        "client_id": PROVIDER_CLIENT,
        "client_secret": PROVIDER_SECRET,
        "token_endpoint_auth_method": method,
        "redirect_uris": [callback_url(provider_id)],
    }


def provider_pillar(issuer: str, method: str = "client_secret_basic", **extra) -> dict:
    """``mas:upstream_oauth2_providers`` entry as the seed shows it, the localpart from ``preferred_username``."""
    provider = {
        "id": PROVIDER_ULID,
        "issuer": issuer,
        "human_name": PROVIDER_NAME,
        "client_id": PROVIDER_CLIENT,
        "client_secret": PROVIDER_SECRET,
        "token_endpoint_auth_method": method,
        "scope": "openid profile email",
        # Salt renders this pillar with Jinja first: MAS's templates stay in raw blocks (README)
        "claims_imports": {
            "localpart": {"action": "force", "template": "{% raw %}{{ user.preferred_username }}{% endraw %}"},
            "displayname": {"action": "suggest", "template": "{% raw %}{{ user.name }}{% endraw %}"},
            "email": {"action": "suggest", "template": "{% raw %}{{ user.email }}{% endraw %}"},
        },
    }
    provider.update(extra)
    return provider


def login_pillar(root, pg, dbname, synapse, ca=None, provider=None, smtp=None, **overrides) -> dict:
    """The wired pillar plus the keys of the login paths (see the module docstring)."""
    pillar = wired_pillar(root, pg, dbname, synapse, free_port(), free_port())
    extra = {
        "http": {"trusted_proxies": ["127.0.0.1/32"]},
        "proxy": {"nginx": {"well_known": True}},
        "account": {"email_change_allowed": True},
    }
    if ca is not None:
        extra["ca_bundle"] = str(ca.cert)
    if provider is not None:
        extra["upstream_oauth2_providers"] = [provider]
    if smtp is not None:
        extra["email"] = {
            "transport": "smtp",
            "from": '"Matrix" <mas@example.com>',
            "reply_to": '"Matrix" <mas@example.com>',
            "hostname": smtp.host,
            "port": smtp.port,
            "mode": "starttls" if smtp.starttls else "plain",
            "username": SMTP_USER,
            "password": SMTP_PASSWORD,
        }
    return deep_update(deep_update(pillar, extra), overrides)


def unit_environment(unit: Path) -> dict[str, str]:
    """The ``Environment=`` assignments of a systemd unit the formula rendered."""
    env = {}
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            name, _, value = line[len("Environment=") :].partition("=")
            env[name] = value
    return env


def start_mas(root: Path, pillar: dict):
    """``mas-cli server`` with the formula's config.yaml and its unit's environment (a running MAS)."""
    name = pillar.get("service", {}).get("name", "matrix-authentication-service")
    env = unit_environment(Path(pillar["service"]["unit_dir"]) / f"{name}.service")
    config = Path(pillar["base_path"]) / "config" / "config.yaml"
    return run_server([config], env=env, log_path=root / "mas.log")


class Public:
    """``https://matrix.example.com/...`` from Python through the proxy at ``base`` (TLS checked against ``ca``)."""

    def __init__(self, base: str, ca_file: Path | None, host: str = MATRIX_HOST):
        self.base = base.rstrip("/")
        self.verify = str(ca_file) if ca_file else True
        self.host = host

    def url(self, url: str) -> str:
        return self.base + url.removeprefix(f"https://{self.host}").removeprefix(f"http://{self.host}")

    def request(self, method: str, url: str, expect: int | None = 200, **kwargs) -> requests.Response:
        """A request to a public URL (or a path); with ``expect``, AssertionError naming the request otherwise."""
        headers = dict(kwargs.pop("headers", {}) or {}, Host=self.host)
        resp = requests.request(
            method, self.url(url), headers=headers, verify=self.verify, timeout=30, allow_redirects=False, **kwargs
        )
        if expect is not None and resp.status_code != expect:
            raise AssertionError(
                f"{method} {url} (through {self.base}) answered {resp.status_code}, not {expect}: {resp.text[:500]}"
            )
        return resp

    def get(self, url, **kwargs):
        return self.request("GET", url, **kwargs)

    def post(self, url, **kwargs):
        return self.request("POST", url, **kwargs)


@dataclass
class Login:
    """What :func:`oauth_login` got: the token, MAS's metadata, the registered client."""

    access_token: str
    metadata: dict
    client_id: str
    device_id: str


def discover(public: Public, well_known: bool = True) -> dict:
    """The issuer from the well-known and MAS's metadata from Synapse (``auth_metadata``), as Element X finds them."""
    metadata = public.get("/_matrix/client/v1/auth_metadata").json()
    if well_known:
        doc = public.get("/.well-known/matrix/client").json()
        issuer = doc["org.matrix.msc2965.authentication"]["issuer"]
        assert issuer == metadata["issuer"], f"the well-known's issuer {issuer} is not Synapse's {metadata['issuer']}"
    assert metadata["issuer"] == ISSUER, f"Synapse advertises the issuer {metadata['issuer']}, not {ISSUER}"
    for key in ("authorization_endpoint", "token_endpoint", "registration_endpoint"):
        assert metadata[key].startswith(ISSUER), f"{key} {metadata[key]} is not under the public base {ISSUER}"
    return metadata


def register_client(public: Public, metadata: dict) -> str:
    """Dynamic client registration (MSC2966) of a native app; returns its client_id."""
    resp = public.post(
        metadata["registration_endpoint"],
        expect=201,
        json={
            "client_name": "Login test (Element X's flow)",
            "client_uri": APP_URI,
            "application_type": "native",
            "redirect_uris": [APP_REDIRECT],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        },
    )
    return resp.json()["client_id"]


def authorization_url(metadata: dict, client_id: str, device_id: str) -> tuple[str, str, str]:
    """The authorization request (PKCE S256): ``(url, state, code_verifier)``."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    state = secrets.token_urlsafe(16)
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": APP_REDIRECT,
        "scope": f"openid urn:matrix:client:api:* urn:matrix:client:device:{device_id}",
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    return metadata["authorization_endpoint"] + "?" + urllib.parse.urlencode(query), state, verifier


def oauth_login(public: Public, browser, sign_in, name: str, well_known: bool = True) -> Login:
    """Element X's login: discover, register, authorize in ``browser`` (``sign_in(browser)`` does the
    person's part on MAS's login page), consent, exchange the code. Screenshots ``<name>-*``."""
    metadata = discover(public, well_known)
    client_id = register_client(public, metadata)
    device_id = "LOGIN" + secrets.token_hex(4).upper()
    url, state, verifier = authorization_url(metadata, client_id, device_id)
    since = browser.mark()
    with browser.step(f"{name}: MAS's login page ({metadata['authorization_endpoint']})"):
        browser.go(url)
        browser.wait_css("form input[name=username], a[href*='/upstream/authorize/']")
        browser.screenshot(f"{name}-login-page")
    sign_in(browser)
    with browser.step(f"{name}: consent (authorize the app)"):
        browser.wait(
            lambda d: "/consent" in d.current_url or browser.redirects_to(APP_REDIRECT.split(":")[0] + ":", since),
            30,
            "the consent page",
        )
        if not browser.redirects_to(APP_REDIRECT.split(":")[0] + ":", since):
            browser.screenshot(f"{name}-consent-page")
            browser.click_text("Continue")
        browser.wait(lambda d: browser.redirects_to(APP_REDIRECT, since), 30, f"the redirect to {APP_REDIRECT}")
    location = browser.redirects_to(APP_REDIRECT, since)[-1]
    params = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    assert params.get("state") == [state], (
        f"the redirect to the app carries state {params.get('state')}, not ours: {location}"
    )
    assert "code" in params, f"the redirect to the app carries no code: {location}"
    token = public.post(
        metadata["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": params["code"][0],
            "redirect_uri": APP_REDIRECT,
            "client_id": client_id,
            "code_verifier": verifier,
        },
    ).json()
    return Login(token["access_token"], metadata, client_id, device_id)


def whoami(public: Public, token: str, attempts: int = 20) -> dict:
    """Synapse's ``/whoami`` for ``token`` through the proxy (MAS provisions a new user from its job queue)."""
    for _ in range(attempts):
        resp = public.get(
            "/_matrix/client/v3/account/whoami", expect=None, headers={"Authorization": f"Bearer {token}"}
        )
        if resp.status_code == 200:
            return resp.json()
        time.sleep(0.5)
    raise AssertionError(f"GET /_matrix/client/v3/account/whoami answered {resp.status_code}: {resp.text[:300]}")


def password_sign_in(username: str, password: str):
    """The person's part on MAS's login page: the password form."""

    def sign_in(browser):
        with browser.step(f"password form ({username})"):
            browser.fill("input[name=username]", username)
            browser.fill("input[name=password]", password)
            browser.click("form button[type=submit]")

    return sign_in


def provider_sign_in(login: str, screenshot: str = ""):
    """The person's part: choose the provider on MAS's login page, sign in there, come back, create the account."""

    def sign_in(browser):
        with browser.step(f"MAS's login page offers {PROVIDER_NAME!r}"):
            browser.click_text(PROVIDER_NAME)
        with browser.step(f"the provider's login page ({login})"):
            browser.fill("input[name=login]", login)
            browser.fill("input[name=password]", "any password: the development login accepts it")
            if screenshot:
                browser.screenshot(f"{screenshot}-provider-login")
            browser.click("button[type=submit]")
        with browser.step("the provider's consent page"):
            browser.wait(
                lambda d: (
                    "/interaction/" not in d.current_url
                    or "consent" in browser.text().lower()
                    or "authorize" in browser.text().lower()
                ),
                20,
            )
            if "/interaction/" in browser.url:
                browser.click("button[type=submit]")
        with browser.step("back at MAS: create or link the account"):
            browser.wait(
                lambda d: "/upstream/link/" in d.current_url or "/consent" in d.current_url, 30, "MAS's link page"
            )
            if "/upstream/link/" in browser.url:
                if screenshot:
                    browser.screenshot(f"{screenshot}-mas-link")
                browser.click("form button[type=submit]")

    return sign_in
