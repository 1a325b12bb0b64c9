"""The double's client for Synapse's MAS API (``/_synapse/mas/*``, ``matrix.kind: synapse``).

Every call authenticates with ``Authorization: Bearer <matrix.secret>``.  With
``matrix.kind: synapse_read_only`` the writes are skipped, as in MAS.
"""

from __future__ import annotations

import requests

from mas_double import faults
from mas_double.config import MasConfig

TIMEOUT = 10


class HomeserverError(Exception):
    """The homeserver could not be reached or answered unexpectedly.

    ``titles`` is the error chain as MAS's admin API lists it (``errors[].title``):
    the context, then Synapse's ``<errcode>: <error>``, then the HTTP status error.
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


def _status_error(response: requests.Response) -> str:
    """reqwest's ``error_for_status`` text."""
    kind = "client" if response.status_code < 500 else "server"
    return f"HTTP status {kind} error ({response.status_code} {response.reason}) for url ({response.url})"


class HomeserverConnection:
    """Calls to ``<matrix.endpoint>_synapse/mas/...`` for one configuration."""

    def __init__(self, config: MasConfig):
        self.config = config
        self.endpoint = config.endpoint
        self.read_only = config.homeserver_kind == "synapse_read_only"

    def _url(self, path: str) -> str:
        return self.endpoint + "_synapse/mas/" + path

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        url = self._url(path)
        headers = {"Authorization": f"Bearer {self.config.matrix_secret()}"}
        try:
            return requests.request(method, url, headers=headers, timeout=TIMEOUT, **kwargs)
        except requests.RequestException as exc:
            reason = exc.__class__.__name__
            if isinstance(exc, requests.ConnectionError):
                reason = "client error (Connect): Connection refused (os error 111)"
            raise HomeserverError(f"error sending request for url ({url})\n\nCaused by:\n    {reason}") from exc

    def _write(self, path: str, body: dict) -> None:
        if self.read_only:
            return
        if path == "provision_user" and faults.active("provision-refused"):
            titles = [
                "Unexpected HTTP response while provisioning user in Synapse",
                "M_UNKNOWN: provisioning refused (MAS_DOUBLE_FAULT=provision-refused)",
                f"HTTP status server error (500 Internal Server Error) for url ({self._url(path)})",
            ]
            raise HomeserverError(titles[0], titles)
        response = self._request("POST", path, json=body)
        if path == "provision_user" and response.status_code >= 400:
            titles = [
                "Unexpected HTTP response while provisioning user in Synapse",
                _synapse_error(response),
                _status_error(response),
            ]
            raise HomeserverError(f"{titles[0]}: HTTP {response.status_code} {response.text.strip()}", titles)
        if response.status_code >= 300:
            raise HomeserverError(
                f"Failed to call {path} on the homeserver: HTTP {response.status_code} {response.text.strip()}"
            )

    def is_localpart_available(self, localpart: str) -> bool:
        """200 -> available; 400 (in use, invalid, exclusive) -> not available; else error."""
        response = self._request("GET", "is_localpart_available", params={"localpart": localpart})
        if response.status_code == 200:
            return True
        if response.status_code == 400:
            return False
        titles = [
            "Failed to query localpart availability from Synapse",
            _synapse_error(response),
            _status_error(response),
        ]
        raise HomeserverError(f"{titles[0]}: HTTP {response.status_code} {response.text.strip()}", titles)

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
