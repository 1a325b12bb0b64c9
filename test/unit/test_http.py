"""Unit tests of the formula's one HTTP client (``mas_formula.http``): how MAS's and Synapse's refusals read,
bodies that are not JSON, and a service that does not answer."""

import json

import pytest
import requests
from salt.exceptions import CommandExecutionError

from harness.util import free_port
from mas_formula import http


def response(status, body):
    """A real ``requests.Response`` with ``body`` (bytes, or JSON of anything else)."""
    resp = requests.Response()
    resp.status_code = status
    resp._content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return resp


def test_error_text_of_mas_synapse_and_anything_else():
    mas = {"errors": [{"title": "User not found"}, {"title": "while looking it up"}]}
    assert http.error_text(response(404, mas)) == "User not found; while looking it up"
    matrix = {"errcode": "M_FORBIDDEN", "error": "You are not a server admin"}
    assert http.error_text(response(403, matrix)) == "M_FORBIDDEN: You are not a server admin"
    assert http.error_text(response(502, b"<html>Bad Gateway</html>" + b"x" * 300)) == (
        "<html>Bad Gateway</html>" + "x" * 176
    )
    assert http.error_text(response(400, {"errors": []})) == '{"errors": []}', "no title: the body says it"


def test_json_body():
    assert http.json_body(response(200, {"data": [1]}), "here") == {"data": [1]}
    assert http.json_body(response(204, b""), "here") is None
    with pytest.raises(CommandExecutionError, match=r"^MAS admin API GET /users: the answer is not JSON$"):
        http.json_body(response(200, b"<html>"), "MAS admin API GET /users")


def test_a_service_that_does_not_answer_is_named_with_why():
    client = http.Client("Synapse", timeout=5)
    url = f"http://127.0.0.1:{free_port()}/_matrix/client/versions"
    with pytest.raises(CommandExecutionError) as err:
        client.send("GET", url)
    assert err.value.error == f"Synapse is not reachable at {url}: connection refused (nothing listens there)"
    assert err.value.info == {"unreachable": True}
    assert client.session.trust_env is False, "never through a proxy of the environment"
    assert client.session.headers["User-Agent"] == http.USER_AGENT
    client.close()
