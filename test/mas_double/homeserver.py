"""The double's client for Synapse's MAS API (``/_synapse/mas/*``, ``matrix.kind: synapse``).

Every call authenticates with ``Authorization: Bearer <matrix.secret>``.  With
``matrix.kind: synapse_read_only`` the writes are skipped, as in MAS.
"""

from __future__ import annotations

from urllib.parse import urlencode

import requests

from mas_double import faults
from mas_double.config import MasConfig
from mas_double.tracing import Logger

TIMEOUT = 10
LOG = Logger("mas_matrix_synapse::modern")


def anyhow(chain: list[str]) -> str:
    """An error chain as anyhow's ``{:?}`` prints it (``main`` prints ``Error: `` and this)."""
    if len(chain) == 1:
        return chain[0]
    if len(chain) == 2:
        return f"{chain[0]}\n\nCaused by:\n    {chain[1]}"
    causes = "\n".join(f"    {index}: {cause}" for index, cause in enumerate(chain[1:]))
    return f"{chain[0]}\n\nCaused by:\n{causes}"


class HomeserverError(Exception):
    """The homeserver could not be reached or answered unexpectedly.

    ``titles`` is the error chain (the context first), as MAS's admin API lists
    it (``errors[].title``) and as ``mas-cli`` prints it (:func:`anyhow`).
    """

    def __init__(self, message: str, titles: list[str] | None = None):
        super().__init__(message)
        self.titles = titles or [message.split("\n")[0]]


def _synapse_error(response: requests.Response) -> str:
    """Synapse's error as MAS prints it: ``<errcode>: <error>``, or ``(no specific error)``."""
    try:
        body = response.json()
        return f"{body['errcode']}: {body['error']}"
    except (ValueError, KeyError, TypeError):
        return "(no specific error)"


def _errcode(response: requests.Response) -> str | None:
    try:
        return response.json().get("errcode")
    except (ValueError, AttributeError):
        return None


def _status_error(response: requests.Response) -> str:
    """reqwest's ``error_for_status`` text."""
    kind = "client" if response.status_code < 500 else "server"
    return f"HTTP status {kind} error ({response.status_code} {response.reason}) for url ({response.url})"


def _transport_chain(url: str, exc: requests.RequestException) -> list[str]:
    """reqwest's error chain for a request that got no answer."""
    if isinstance(exc, requests.Timeout):
        return [f"error sending request for url ({url})", "operation timed out"]
    if isinstance(exc, requests.ConnectionError):
        return [
            f"error sending request for url ({url})",
            "client error (Connect)",
            "tcp connect error",
            "Connection refused (os error 111)",
        ]
    return [f"error sending request for url ({url})", exc.__class__.__name__]


#: The contexts MAS adds to each call (``crates/matrix-synapse/src/modern.rs``): no answer, then an error status.
CONTEXTS = {
    "is_localpart_available": (
        "Failed to check localpart availability from Synapse",
        "Failed to query localpart availability from Synapse",
    ),
    "provision_user": (
        "Failed to provision user in Synapse",
        "Unexpected HTTP response while provisioning user in Synapse",
    ),
    "upsert_device": (
        "Failed to create device in Synapse",
        "Unexpected HTTP response while creating device in Synapse",
    ),
    "delete_device": (
        "Failed to delete device in Synapse",
        "Unexpected HTTP response while deleting device in Synapse",
    ),
    "delete_user": ("Failed to delete user in Synapse", "Unexpected HTTP response while deleting user in Synapse"),
    "reactivate_user": (
        "Failed to reactivate user in Synapse",
        "Unexpected HTTP response while reactivating user in Synapse",
    ),
}


def _fail(chain: list[str]) -> HomeserverError:
    """The error of a failed call; logged first, as MAS's ``#[instrument(err(Debug))]`` does."""
    text = anyhow(chain)
    LOG.error("", error=text)
    return HomeserverError(text, chain)


class HomeserverConnection:
    """Calls to ``<matrix.endpoint>_synapse/mas/...`` for one configuration."""

    def __init__(self, config: MasConfig):
        self.config = config
        self.endpoint = config.endpoint
        self.read_only = config.homeserver_kind == "synapse_read_only"

    def _url(self, path: str) -> str:
        return self.endpoint + "_synapse/mas/" + path

    def _request(self, method: str, path: str, params: dict | None = None, **kwargs) -> requests.Response:
        url = self._url(path)
        if params:
            url += "?" + urlencode(params)
        headers = {"Authorization": f"Bearer {self.config.matrix_secret()}"}
        try:
            return requests.request(method, url, headers=headers, timeout=TIMEOUT, **kwargs)
        except requests.RequestException as exc:
            raise _fail([CONTEXTS[path][0], *_transport_chain(url, exc)]) from exc

    def _write(self, path: str, body: dict) -> None:
        if self.read_only:
            return
        if path == "provision_user" and faults.active("provision-refused"):
            raise _fail(
                [
                    CONTEXTS[path][1],
                    "M_UNKNOWN: provisioning refused (MAS_DOUBLE_FAULT=provision-refused)",
                    f"HTTP status server error (500 Internal Server Error) for url ({self._url(path)})",
                ]
            )
        response = self._request("POST", path, json=body)
        if response.status_code >= 400:
            raise _fail([CONTEXTS[path][1], _synapse_error(response), _status_error(response)])

    def is_localpart_available(self, localpart: str) -> bool:
        """200 -> available; an error with ``M_USER_IN_USE``, ``M_INVALID_USERNAME`` or ``M_EXCLUSIVE`` -> not
        available (any localpart that is not ASCII, without asking); another error -> HomeserverError."""
        if not localpart.isascii():
            return False
        response = self._request("GET", "is_localpart_available", params={"localpart": localpart})
        if response.status_code < 400:
            return True
        if _errcode(response) in ("M_USER_IN_USE", "M_INVALID_USERNAME", "M_EXCLUSIVE"):
            return False
        raise _fail([CONTEXTS["is_localpart_available"][1], _synapse_error(response), _status_error(response)])

    def provision_user(
        self,
        localpart: str,
        emails: list[str] | None,
        display_name: str | None = None,
        locked: bool | None = None,
    ) -> None:
        """``POST provision_user``: create or update the Synapse account (``emails`` None: left alone)."""
        body: dict = {"localpart": localpart}
        if emails:
            body["set_emails"] = emails
        elif emails is not None:
            body["unset_emails"] = True
        if display_name is not None:
            body["set_displayname"] = display_name
        if locked is not None:
            body["locked"] = locked
        self._write("provision_user", body)

    def upsert_device(self, localpart: str, device_id: str, display_name: str | None = None) -> None:
        """``POST upsert_device``: create the device of a compatibility session."""
        body: dict = {"localpart": localpart, "device_id": device_id}
        if display_name is not None:
            body["display_name"] = display_name
        self._write("upsert_device", body)

    def delete_device(self, localpart: str, device_id: str) -> None:
        """``POST delete_device``."""
        self._write("delete_device", {"localpart": localpart, "device_id": device_id})

    def delete_user(self, localpart: str, erase: bool) -> None:
        """``POST delete_user``: deactivate (and optionally erase) the Synapse account."""
        self._write("delete_user", {"localpart": localpart, "erase": erase})

    def reactivate_user(self, localpart: str) -> None:
        """``POST reactivate_user``."""
        self._write("reactivate_user", {"localpart": localpart})
