"""Logins as people make them (issue 20), through nginx with MAS under ``/auth``, in a real browser.

One deployment for the module, as README's nginx worked example has it: the real MAS (binary
runtime, config.yaml and unit rendered by the real salt-call), a real Synapse delegating to it,
nginx with the formula's snippet over TLS (a certificate from a test CA) and Debian's headless
Chromium, which reaches ``https://matrix.example.com/auth/`` -- MAS's real ``public_base`` -- on
nginx's loopback port (``--host-resolver-rules``). Beside them: a real OpenID provider
(``oidc-provider`` from npm) over TLS with a certificate from the same CA, which MAS trusts only
through ``mas:ca_bundle`` (``SSL_CERT_FILE`` from the rendered unit), and a real SMTP server
(aiosmtpd) that wants STARTTLS and a password (``mas:email``, the password in a 0600 file).

- Element X's OAuth 2.0 login: discovery (Synapse's ``auth_metadata``, the well-known), dynamic
  client registration, authorization code with PKCE in the browser (MAS's login page, the
  password form, consent), the code exchanged; Synapse's ``/whoami`` answers the user.
- MAS's account page loads with every request under ``/auth/`` answered (assets 200).
- A login through the upstream provider configured from pillar: the account's user ID comes
  from the provider's ``preferred_username``; ``/whoami`` answers it.
- Email: the person adds an address on the account page, the code arrives by SMTP and completes it.
- The claims templates as Salt's pillar rendering delivers them (raw blocks, ``#!yaml``, refusals).

Screenshots (login page, account page, ...) are kept under the module's temp directory
(``browser/artifacts``) and copied to ``$MAS_TEST_ARTIFACTS`` when set.
"""

import re
import stat
import time

import pytest
import yaml

from harness import mas as mas_target
from harness.browser import Browser
from harness.oidc_provider import OidcProvider
from harness.smtp import SmtpServer
from harness.testca import TestCA
from logins_world import (
    ISSUER,
    MATRIX_HOST,
    PUBLIC,
    SMTP_PASSWORD,
    SMTP_USER,
    Public,
    login_pillar,
    oauth_login,
    password_sign_in,
    provider_client,
    provider_pillar,
    provider_sign_in,
    start_mas,
    unit_environment,
    whoami,
)

pytestmark = pytest.mark.integration

ALICE_PASSWORD = "Alice-Logs-In-Through-A-Browser-42"


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def provider(ca, tmp_path_factory):
    idp = OidcProvider(
        tmp_path_factory.mktemp("idp"),
        ca,
        clients=[provider_client()],
        accounts={"pat": {"preferred_username": "pat", "name": "Pat from the IdP"}},
    ).start()
    yield idp
    idp.stop()


@pytest.fixture(scope="module")
def smtp(ca):
    server = SmtpServer(SMTP_USER, SMTP_PASSWORD, tls=ca.issue("127.0.0.1")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def site(pg, module_salt_minion, synapse_factory, nginx_factory, tmp_path_factory, ca, provider, smtp):
    """The deployment (see the module docstring): ``{pillar, minion, mas, synapse, nginx, public, root}``."""
    root = tmp_path_factory.mktemp("logins")
    dbname = "mas_logins"
    pg.create_database(dbname)
    mas_target.migrate(pg, dbname)
    synapse = synapse_factory(database="sqlite")
    pillar = login_pillar(root, pg, dbname, synapse, ca=ca, provider=provider_pillar(provider.issuer), smtp=smtp)
    res = module_salt_minion.apply(pillar)
    assert res.returncode == 0, res.output
    nginx = nginx_factory(
        synapse_upstream=synapse.base_url,
        include_files=[root / "nginx" / "mas.conf"],
        tls=ca.issue(MATRIX_HOST, "127.0.0.1"),
    )
    with start_mas(root, pillar) as mas:
        synapse.start()
        nginx.start()
        try:
            yield {
                "pillar": pillar,
                "minion": module_salt_minion,
                "mas": mas,
                "synapse": synapse,
                "nginx": nginx,
                "public": Public(nginx.base_url, ca.cert),
                "root": root,
            }
        finally:
            nginx.stop()
            synapse.stop()


@pytest.fixture(scope="module")
def browser(site, tmp_path_factory):
    chromium = Browser(tmp_path_factory.mktemp("browser"), {f"{MATRIX_HOST}:443": f"127.0.0.1:{site['nginx'].port}"})
    yield chromium
    chromium.quit()


@pytest.fixture(scope="module")
def alice(site, tmp_path_factory):
    """A person with a password in MAS (registered through the formula's mas_user)."""
    password_file = tmp_path_factory.mktemp("alice") / "password"
    password_file.write_text(ALICE_PASSWORD)
    res = site["minion"].run("mas_user.register", "alice", f"password_file={password_file}")
    assert res.returncode == 0, res.output
    return "alice"


def mas_failure(site):
    return f"\n--- MAS log ---\n{site['mas'].log(40)}"


# ------------------------------------------------------------------ the pillar as it reached MAS


def test_the_secrets_of_the_login_paths_are_0600_files(site):
    config = yaml.safe_load((site["root"] / "mas" / "config" / "config.yaml").read_text())
    (provider,) = config["upstream_oauth2"]["providers"]
    assert provider["claims_imports"]["localpart"]["template"] == "{{ user.preferred_username }}"
    assert "client_secret" not in provider and "password" not in config["email"]
    for path in (provider["client_secret_file"], config["email"]["password_file"]):
        assert stat.S_IMODE(__import__("os").stat(path).st_mode) == 0o600, path
    unit = site["root"] / "systemd" / "matrix-authentication-service.service"
    assert unit_environment(unit)["SSL_CERT_FILE"] == site["pillar"]["ca_bundle"]


# ------------------------------------------------------------------ 1. Element X's OAuth 2.0 login


def test_oauth2_login_as_element_x_through_nginx(site, browser, alice):
    public = site["public"]
    login = oauth_login(public, browser, password_sign_in(alice, ALICE_PASSWORD), "oauth2")
    me = whoami(public, login.access_token)
    assert me["user_id"] == "@alice:example.com", me
    assert me.get("device_id") == login.device_id, me


def test_account_page_loads_every_asset_under_the_prefix(site, browser, alice):
    """After the login above the browser holds MAS's session: the account page is alice's."""
    since = browser.mark()
    with browser.step("MAS's account page (/auth/account/)"):
        browser.go(f"{ISSUER}account/")
        browser.wait(lambda d: "alice" in browser.text(), 30, "the account page naming alice")
        time.sleep(0.5)  # the page's last requests (GraphQL, fonts)
        browser.screenshot("account-page")
    responses = browser.responses(since)
    assets = [r for r in responses if r["url"].startswith(f"{ISSUER}assets/")]
    assert assets, f"the account page loaded no asset under {ISSUER}assets/: {responses}"
    assert all(r["status"] == 200 for r in assets), [r for r in assets if r["status"] != 200]
    failed = browser.failed(since, prefix=PUBLIC)
    assert failed == [], f"requests of the account page failed: {failed}{mas_failure(site)}"
    graphql = [r for r in responses if r["url"].startswith(f"{ISSUER}graphql")]
    assert graphql and all(r["status"] == 200 for r in graphql), graphql
    assert (browser.artifacts / "oauth2-login-page.png").is_file()


# ------------------------------------------------------------------ 2. an upstream provider from pillar


def test_login_through_the_upstream_provider_makes_the_account_from_its_claims(site, browser, provider):
    browser.clear_cookies()
    public = site["public"]
    login = oauth_login(public, browser, provider_sign_in("pat", screenshot="upstream"), "upstream")
    me = whoami(public, login.access_token)
    assert me["user_id"] == "@pat:example.com", f"{me}{mas_failure(site)}"
    seen = {(r.get("method"), r.get("path"), r.get("status")) for r in provider.requests_seen()}
    assert ("POST", "/token", 200) in seen, f"MAS did not redeem the code at the provider: {sorted(seen, key=str)}"


# ------------------------------------------------------------------ 4. email


def test_adding_an_email_sends_a_code_that_completes_it(site, browser, smtp):
    """pat (signed in above) adds an address on the account page; the code comes by SMTP (STARTTLS, AUTH)."""
    address = "pat.new@example.net"
    before = len(smtp.messages)
    with browser.step("account page: add an email address"):
        browser.go(f"{ISSUER}account/")
        browser.wait(lambda d: "pat@idp.test" in d.page_source, 30, "the account's email list")
        browser.fill("input[name=input]:not([readonly])", address)
        browser.click("form:has(input[name=input]) button[type=submit]")  # the ✓ (its label is "Save")
        browser.wait_url(f"{ISSUER}account/emails/")
    message = smtp.wait_for(address, after=before)
    assert f"auth {SMTP_USER} ok over TLS" in smtp.events, smtp.events
    body = message.get_body(("plain",)).get_content()
    code = re.search(r"\b(\d{6})\b", body)
    assert code, f"no 6-digit code in the mail: {body[:500]}"
    with browser.step("account page: enter the code from the mail"):
        browser.screenshot("email-code-page")
        browser.fill("input[name=code]", code.group(1))
        browser.click_text("Continue")
        browser.wait(lambda d: "/verify" not in d.current_url, 30, "the account page after the code")
        browser.screenshot("email-added")
    rows = site["minion"].run("mas_user.info", "pat").data
    assert address in rows["emails"], rows
