"""The MAS double's admin-API endpoints behind issue 11 (registration tokens,
personal sessions and their introspection, deactivate/reactivate/lock), held
to MAS's source (test/mas_double/FIDELITY.md) and, for every answer, to the
upstream OpenAPI document. The double runs as the formula deployed it, next
to a real Synapse.
"""

import time

import pytest
import requests

from harness.util import require_upstream
from mas_double import ulid
from mas_double.contract import AdminApiContract

pytestmark = pytest.mark.integration

CLIENT_ID = "00000000000000000SA1TADM1N"


@pytest.fixture(scope="module")
def contract():
    return AdminApiContract(require_upstream("mas/admin-api-spec.json"))


def hs_secret(deployment):
    """The shared secret MAS and Synapse hold (Synapse's ``/_synapse/mas`` API takes it as a bearer token)."""
    return (deployment["root"] / "mas" / "config" / "secrets" / "homeserver_secret").read_text().strip()


@pytest.fixture(scope="module")
def secret(deployment):
    return (deployment["root"] / "mas" / "config" / "secrets" / "admin_client_secret").read_text().strip()


@pytest.fixture(scope="module")
def admin(deployment, secret):
    mas = deployment["mas"]
    deadline = time.monotonic() + 30
    while True:
        try:
            resp = requests.post(
                mas.url("oauth", "/oauth2/token"),
                auth=(CLIENT_ID, secret),
                data={"grant_type": "client_credentials", "scope": "urn:mas:admin"},
                timeout=10,
            )
            break
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert resp.status_code == 200, resp.text
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"
    return session


@pytest.fixture
def call(deployment, admin, contract):
    api = deployment["mas"].url("adminapi", "/api/admin/v1")

    def _call(method, path, expected, valid_request=True, documented=True, **kwargs):
        """``documented=False``: MAS's handler answers a status its OpenAPI document does not list
        (the handler wins; the body still has MAS's error shape)."""
        resp = admin.request(method, api + path, timeout=10, **kwargs)
        assert resp.status_code == expected, f"{method} {path}: {resp.status_code} {resp.text}"
        if documented:
            contract.validate(resp, check_request=valid_request)
        else:
            assert set(resp.json()) == {"errors"} and all(set(e) == {"title"} for e in resp.json()["errors"])
        return resp.json() if resp.content else None

    return _call


def title(body):
    return body["errors"][0]["title"]


def introspect(deployment, secret, token):
    resp = requests.post(
        deployment["mas"].url("oauth", "/oauth2/introspect"),
        auth=(CLIENT_ID, secret),
        data={"token": token},
        timeout=10,
    )
    assert resp.status_code == 200
    return resp.json()


def test_registration_tokens(call, deployment, pg):
    created = call("POST", "/user-registration-tokens", 201, json={"token": "fixed-token-1", "usage_limit": 2})["data"]
    assert created["type"] == "user-registration_token"
    assert created["attributes"]["token"] == "fixed-token-1" and created["attributes"]["valid"] is True
    token_id = created["id"]
    conflict = call("POST", "/user-registration-tokens", 409, documented=False, json={"token": "fixed-token-1"})
    assert title(conflict) == "A registration token with the same token already exists"
    generated = call("POST", "/user-registration-tokens", 201, json={})["data"]["attributes"]
    assert len(generated["token"]) == 12 and generated["token"].isalnum() and generated["usage_limit"] is None

    # PUT: absent = unchanged, null = cleared
    updated = call("PUT", f"/user-registration-tokens/{token_id}", 200, json={"expires_at": "2031-01-01T00:00:00Z"})
    assert updated["data"]["attributes"]["usage_limit"] == 2
    assert updated["data"]["attributes"]["expires_at"] == "2031-01-01T00:00:00Z"
    cleared = call("PUT", f"/user-registration-tokens/{token_id}", 200, json={"usage_limit": None})["data"]
    assert cleared["attributes"]["usage_limit"] is None and cleared["attributes"]["expires_at"] is not None

    revoked = call("POST", f"/user-registration-tokens/{token_id}/revoke", 200)
    assert revoked["data"]["attributes"]["valid"] is False
    assert revoked["links"]["self"] == f"/api/admin/v1/user-registration-tokens/{token_id}/revoke"
    again = call("POST", f"/user-registration-tokens/{token_id}/revoke", 400)
    assert title(again) == f"Registration token with ID {token_id} is already revoked"
    listed = call("GET", "/user-registration-tokens", 200, params={"filter[revoked]": "true"})
    assert [t["id"] for t in listed["data"]] == [token_id]
    call("POST", f"/user-registration-tokens/{token_id}/unrevoke", 200)
    not_revoked = call("POST", f"/user-registration-tokens/{token_id}/unrevoke", 400)
    assert title(not_revoked) == f"Registration token with ID {token_id} is not revoked"
    missing = ulid.encode(0)
    assert title(call("GET", f"/user-registration-tokens/{missing}", 404)) == (
        f"Registration token with ID {missing} not found"
    )
    valid = call("GET", "/user-registration-tokens", 200, params={"filter[valid]": "true", "page[first]": "1"})
    assert len(valid["data"]) == 1 and "next" in valid["links"]


def test_personal_sessions(call, deployment, secret, pg):
    user = call("POST", "/users", 201, json={"username": "ps-bot"})["data"]
    body = {
        "actor_user_id": user["id"],
        "human_name": "test bot",
        "scope": "urn:matrix:client:api:* urn:matrix:client:device:PSBOTDEVICE",
        "expires_in": 3600,
    }
    # the user must exist in Synapse for the device: wait for the provisioning job
    deadline = time.monotonic() + 20
    while True:
        resp = deployment["synapse"].request("GET", "/_matrix/client/v3/profile/@ps-bot:example.com")
        if resp.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    created = call("POST", "/personal-sessions", 201, json=body)["data"]
    token = created["attributes"]["access_token"]
    assert token.startswith("mpt_") and created["attributes"]["owner_client_id"] == CLIENT_ID
    assert created["attributes"]["scope"] == "urn:matrix:client:api:* urn:matrix:client:device:PSBOTDEVICE"
    session_id = created["id"]
    got = call("GET", f"/personal-sessions/{session_id}", 200)["data"]
    assert "access_token" not in got["attributes"] and got["attributes"]["expires_at"] is not None

    answer = introspect(deployment, secret, token)
    assert answer["active"] is True and answer["username"] == "ps-bot" and answer["sub"] == user["id"]
    assert answer["client_id"] == CLIENT_ID and "device_id" not in answer and answer["exp"] > time.time() + 3000
    whoami = deployment["synapse"].request("GET", "/_matrix/client/v3/account/whoami", token=token)
    assert whoami.status_code == 200 and whoami.json()["device_id"] == "PSBOTDEVICE", whoami.text

    assert title(call("POST", "/personal-sessions", 400, json=dict(body, scope="bad  scope"))) == "Invalid scope"
    unknown = dict(body, actor_user_id=ulid.encode(0))
    assert title(call("POST", "/personal-sessions", 404, json=unknown)) == "User not found"

    listed = call(
        "GET", "/personal-sessions", 200, params={"filter[actor_user]": user["id"], "filter[status]": "active"}
    )
    assert [s["id"] for s in listed["data"]] == [session_id]

    regenerated = call("POST", f"/personal-sessions/{session_id}/regenerate", 201, json={})["data"]
    fresh = regenerated["attributes"]["access_token"]
    assert fresh != token and regenerated["attributes"]["expires_at"] is None
    assert introspect(deployment, secret, token)["active"] is False
    assert introspect(deployment, secret, fresh)["active"] is True

    # a locked actor: creation allowed, its tokens are inactive
    call("POST", f"/users/{user['id']}/lock", 200)
    assert introspect(deployment, secret, fresh)["active"] is False
    call("POST", f"/users/{user['id']}/unlock", 200)
    assert introspect(deployment, secret, fresh)["active"] is True

    revoked = call("POST", f"/personal-sessions/{session_id}/revoke", 200)["data"]
    assert revoked["attributes"]["revoked_at"] is not None
    assert introspect(deployment, secret, fresh)["active"] is False
    again = call("POST", f"/personal-sessions/{session_id}/revoke", 409)
    assert title(again) == f"Personal session with ID {session_id} is already revoked"
    assert (
        title(call("POST", f"/personal-sessions/{session_id}/regenerate", 422, documented=False, json={}))
        == "Session not valid"
    )
    assert title(call("POST", f"/personal-sessions/{ulid.encode(0)}/regenerate", 404, json={})) == "Session not found"

    call("POST", f"/users/{user['id']}/deactivate", 200)
    gone = call("POST", "/personal-sessions", 410, documented=False, json=dict(body, scope="urn:matrix:client:api:*"))
    assert title(gone) == "User is not active"


def test_deactivate_reactivate_lock_follow_mas(call, deployment, pg):
    user = call("POST", "/users", 201, json={"username": "cycle"})["data"]
    uid = user["id"]
    locked = call("POST", f"/users/{uid}/lock", 200)["data"]["attributes"]
    assert locked["locked_at"] is not None
    jobs = pg.query(
        deployment["db"],
        "SELECT count(*) FROM queue_jobs WHERE queue_name = 'provision-user' AND payload->>'user_id' = %s",
        (uid,),
    )
    # users/add.rs provisions on Synapse synchronously (no job); lock.rs queues a job that carries the lock
    assert jobs == [(1,)], "only the lock provisions the user through a job"
    query = deployment["synapse"].request(
        "GET", "/_synapse/mas/query_user?localpart=cycle", token=hs_secret(deployment)
    )
    assert query.status_code == 200, query.text
    call("POST", f"/users/{uid}/unlock", 200)
    deactivated = call("POST", f"/users/{uid}/deactivate", 200)["data"]["attributes"]
    assert deactivated["deactivated_at"] is not None and deactivated["locked_at"] is None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the job tells Synapse
        status = pg.query(
            deployment["db"],
            "SELECT status FROM queue_jobs WHERE queue_name = 'deactivate-user' AND payload->>'user_id' = %s",
            (uid,),
        )
        if status and status[0][0] == "completed":
            break
        time.sleep(0.2)
    else:
        pytest.fail("the deactivation job did not complete")
    # Synapse is asked first, synchronously: this (SQLite) Synapse 1.163.2 fails every reactivation
    # (its upsert hits "ON CONFLICT clause does not match ..."), so MAS answers 500 and changes nothing
    refused = call("POST", f"/users/{uid}/reactivate", 500, documented=False)
    # the error chain of matrix-synapse/src/modern.rs: the context, Synapse's error, reqwest's status error
    assert title(refused) == "Unexpected HTTP response while reactivating user in Synapse"
    assert refused["errors"][-1]["title"].endswith("/_synapse/mas/reactivate_user)")
    assert call("GET", f"/users/{uid}", 200)["data"]["attributes"]["deactivated_at"] is not None
