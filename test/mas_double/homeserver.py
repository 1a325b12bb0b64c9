"""The double's client for Synapse's MAS API (``/_synapse/mas/*``, ``matrix.kind: synapse``).

Every call authenticates with ``Authorization: Bearer <matrix.secret>``.  With
``matrix.kind: synapse_read_only`` the writes are skipped, as in MAS.
"""

from __future__ import annotations

import requests

from mas_double.config import MasConfig

TIMEOUT = 10


class HomeserverError(Exception):
    """The homeserver could not be reached or answered unexpectedly."""


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
        response = self._request("POST", path, json=body)
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
        raise HomeserverError(
            f"Failed to query localpart availability: HTTP {response.status_code} {response.text.strip()}"
        )

    def provision_user(
        self, localpart: str, emails: list[str], display_name: str | None = None, locked: bool | None = None
    ) -> None:
        """``POST provision_user``: create or update the Synapse account."""
        body: dict = {"localpart": localpart}
        if emails:
            body["set_emails"] = emails
        else:
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
