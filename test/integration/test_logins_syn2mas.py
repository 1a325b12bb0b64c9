"""Their old account after syn2mas (issue 20, point 3): the same person, through the same provider.

The populated Synapse of ``syn2mas_world`` (bob linked to Synapse's OIDC provider ``oidc-keycloak``
with the provider's subject, a ``user_external_ids`` row) gets a room and a message from bob. The
pre-MAS Synapse config names that provider with the issuer of a real OpenID provider
(``oidc-provider`` over TLS from a test CA); the formula maps it to a MAS provider with the seed's
mapping as README documents it (``synapse_idp_id: oidc-keycloak``), migrates with syn2mas (the real
MAS), delegates, and bob signs in through the provider in a real browser (Element X's OAuth 2.0
login through nginx): he lands in the same Matrix account, and his old room and message are there.
"""

import urllib.parse

import pytest
import yaml

from harness.browser import Browser
from harness.oidc_provider import OidcProvider
from harness.testca import TestCA
from logins_world import (
    MATRIX_HOST,
    Public,
    oauth_login,
    provider_client,
    provider_pillar,
    provider_sign_in,
    start_mas,
    whoami,
)
from syn2mas_world import PROVIDER_ID, SUBJECT, SYNAPSE_IDP_ID, deploy, world_fixture

pytestmark = pytest.mark.integration

world = world_fixture("logins-syn2mas")
MESSAGE = "Bob's message from before MAS"


def test_old_account_after_syn2mas_through_the_provider(world, pg, salt_extmods, nginx_factory, tmp_path):
    ca = TestCA(tmp_path / "ca")
    idp = OidcProvider(
        tmp_path / "idp",
        ca,
        clients=[provider_client("client_secret_post", PROVIDER_ID)],
        # the development login's name is the subject: bob signs in as the subject Synapse linked him to
        accounts={SUBJECT: {"preferred_username": "bob", "name": "Bob"}},
    ).start()
    browser = None
    try:
        # bob's room and message, made while Synapse is authoritative
        server = world.server
        world.service.start()
        bob_token = world.tokens["bob"]["access_token"]
        room = server.request("POST", "/_matrix/client/v3/createRoom", token=bob_token, json={"name": "Old room"})
        assert room.status_code == 200, room.text
        room_id = room.json()["room_id"]
        sent = server.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/before-mas",
            token=bob_token,
            json={"msgtype": "m.text", "body": MESSAGE},
        )
        assert sent.status_code == 200, sent.text

        # Synapse's pre-MAS config names the real provider (idp_id keycloak -> oidc-keycloak)
        fragment = tmp_path / "pre-mas-oidc.yaml"
        fragment.write_text(
            yaml.safe_dump(
                {
                    "oidc_providers": [
                        {
                            "idp_id": SYNAPSE_IDP_ID.removeprefix("oidc-"),
                            "idp_name": "Test IdP",
                            "issuer": idp.issuer,
                            "client_id": "synapse",
                            "client_secret": "synapse-side-secret",
                            "scopes": ["openid", "profile"],
                        }
                    ]
                }
            )
        )
        provider = provider_pillar(idp.issuer, "client_secret_post", id=PROVIDER_ID, synapse_idp_id=SYNAPSE_IDP_ID)
        dep = deploy(
            world,
            pg,
            salt_extmods,
            tmp_path,
            "mas_logins_syn2mas",
            upstream_oauth2_providers=[provider],
            ca_bundle=str(ca.cert),
            proxy={"type": "nginx", "nginx": {"well_known": True}},
            http={"trusted_proxies": ["127.0.0.1/32"]},
            syn2mas={"accept_warnings": True, "synapse_config_files": [str(server.config_path), str(fragment)]},
        )
        res, ret = dep.migrated()
        assert res.returncode == 0 and ret["result"] is True, ret["comment"]
        links = pg.query(dep.dbname, "SELECT subject FROM upstream_oauth_links")
        assert links == [(SUBJECT,)], links

        # delegate, then MAS, Synapse (with the drop-in) and nginx run
        res = dep.state("mas", migration_in_progress=False)
        assert res.returncode == 0, res.output
        pillar = dict(dep.pillar, migration_in_progress=False)
        with start_mas(tmp_path, pillar) as mas:
            world.service.start()
            nginx = nginx_factory(
                synapse_upstream=server.base_url,
                include_files=[tmp_path / "nginx" / "mas.conf"],
                tls=ca.issue(MATRIX_HOST, "127.0.0.1"),
            ).start()
            public = Public(nginx.base_url, ca.cert)
            browser = Browser(tmp_path / "browser", {f"{MATRIX_HOST}:443": f"127.0.0.1:{nginx.port}"})
            login = oauth_login(public, browser, provider_sign_in(SUBJECT, screenshot="syn2mas"), "syn2mas")
            me = whoami(public, login.access_token)
            assert me["user_id"] == "@bob:example.com", f"{me}\n{mas.log(30)}"
            headers = {"Authorization": f"Bearer {login.access_token}"}
            messages = public.get(
                f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}/messages?dir=b&limit=20", headers=headers
            ).json()
            bodies = [event.get("content", {}).get("body") for event in messages["chunk"]]
            assert MESSAGE in bodies, bodies
            assert browser.failed(prefix=f"https://{MATRIX_HOST}/auth/") == []
    finally:
        if browser is not None:
            browser.quit()
        idp.stop()
        world.service.stop()
