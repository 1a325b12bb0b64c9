"""Validate admin API traffic against the upstream OpenAPI document (``admin-api-spec.json``).

For tests of the double and of anything that talks to the admin API::

    from mas_double.contract import AdminApiContract

    contract = AdminApiContract()           # reads the upstream spec (cached per path)
    response = requests.get(url, headers=auth)
    contract.validate(response)              # AssertionError on any mismatch

:meth:`AdminApiContract.validate` checks the status code is documented for
the operation and that the body matches its schema (``$ref`` resolved by
openapi-core); with ``check_request`` the request (path, query, body,
security) is validated as well.  The upstream document has a
``description: null`` that strict spec validation rejects, so the document
itself is not validated, only used.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import requests
from openapi_core import Config, OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse

from mas_double import upstream


class ContractViolation(AssertionError):
    """A request or response does not match the upstream OpenAPI document."""


def _describe(error: Exception) -> str:
    """Flatten openapi-core errors (and their schema errors) into readable text."""
    parts = [f"{type(error).__name__}: {error}"]
    seen = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for schema_error in getattr(current, "schema_errors", None) or ():
            parts.append(f"  - {schema_error.message} at {list(schema_error.absolute_path)}")
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


@functools.lru_cache(maxsize=4)
def _load(spec_path: str) -> OpenAPI:
    return OpenAPI.from_file_path(spec_path, config=Config(spec_validator_cls=None))


class AdminApiContract:
    """The upstream admin API contract.

    Args:
        spec_path: the OpenAPI document (default: ``mas/admin-api-spec.json``
            from the upstream directory; raises
            :class:`mas_double.upstream.UpstreamMissing` when absent).
    """

    def __init__(self, spec_path: str | Path | None = None):
        self.spec_path = Path(spec_path) if spec_path else upstream.admin_api_spec()
        self.openapi = _load(str(self.spec_path))

    def validate(self, response: requests.Response, check_request: bool = True) -> None:
        """Validate a ``requests`` response (and by default its request).

        Raises:
            ContractViolation: undocumented status, body not matching the
                schema, or (``check_request``) an invalid request.
        """
        request = RequestsOpenAPIRequest(response.request)
        where = f"{response.request.method} {response.request.url} -> {response.status_code}"
        if check_request:
            try:
                with warnings.catch_warnings():
                    # the spec's oauth2 security scheme is not checkable by openapi-core
                    warnings.filterwarnings("ignore", "Unsupported scheme type", UserWarning)
                    self.openapi.validate_request(request)
            except Exception as exc:
                raise ContractViolation(f"request does not match the contract: {where}\n{_describe(exc)}") from exc
        try:
            self.openapi.validate_response(request, RequestsOpenAPIResponse(response))
        except Exception as exc:
            body = response.text[:2000]
            raise ContractViolation(
                f"response does not match the contract: {where}\n{_describe(exc)}\nbody: {body}"
            ) from exc
