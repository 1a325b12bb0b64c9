"""``mas-cli doctor`` of the double: the probes of MAS >= 1.21 (``crates/cli/src/commands/doctor.rs`` upstream).

Output: tracing lines on stderr (target ``mas_cli::commands::doctor``), parsed
by their markers: ✅ (INFO), ⚠️ (WARN), ❌ (ERROR), including upstream's quirks
(one ERROR without emoji for the legacy login API status, no space in
``❌Can't reach the homeserver``, and the ``matrix.secret`` printed in clear when
step 5 fails).  Exit 0 once the checks ran; exit 1 for configuration errors,
among them a ``matrix.homeserver`` that is not a bare host (e.g. with a port).

Step 2 always asks ``https://<matrix.homeserver>/.well-known/matrix/client``;
tests point it elsewhere with ``MAS_DOUBLE_WELL_KNOWN_BASE`` (e.g.
``http://127.0.0.1:8448``), the path being appended.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from http import HTTPStatus
from urllib.parse import urljoin

import requests

from mas_double import config as config_mod
from mas_double.config import ConfigError, MasConfig
from mas_double.tracing import Logger

LOG = Logger("mas_cli::commands::doctor")
DOCS_BASE = "https://element-hq.github.io/matrix-authentication-service"
TIMEOUT = 5
_DOMAIN = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?$")
FAKE_TOKEN = "averyinvalidtokenireallyhopethisisnotvalid"


def parse_host(value: str) -> str:
    """Validate ``matrix.homeserver`` like ``url::Host::parse`` (domain, IPv4 or ``[IPv6]``).

    Raises:
        ConfigError: not a valid host (for example because it has a port).
    """
    if value.startswith("[") and value.endswith("]"):
        try:
            ipaddress.IPv6Address(value[1:-1])
            return value
        except ValueError:
            pass
    elif _DOMAIN.match(value):
        return value.lower()
    raise ConfigError(
        "The homeserver host in the config (`matrix.homeserver`) is not a valid domain.\n"
        f"See {DOCS_BASE}/setup/homeserver.html\n\nCaused by:\n    invalid domain character"
    )


def _status(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def _details(url: str) -> str:
    return f"error sending request for url ({url})"


def _rust_debug(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _well_known(config: MasConfig, domain: str, issuer: str) -> str | None:
    """Step 2: the client well-known; returns the discovered ``m.homeserver.base_url``."""
    base = os.environ.get("MAS_DOUBLE_WELL_KNOWN_BASE")
    uri = (base.rstrip("/") if base else f"https://{domain}") + "/.well-known/matrix/client"
    expected = json.dumps({"m.homeserver": {"base_url": "..."}}, indent=2)
    try:
        response = requests.get(uri, timeout=TIMEOUT)
    except requests.RequestException:
        LOG.warn(
            f'⚠️ Failed to fetch well-known document at "{uri}".\n'
            "This means that the homeserver is not reachable, the well-known document is not available, or malformed.\n"
            "Make sure your homeserver is running.\n"
            f"Make sure going to {_rust_debug(uri)} in a web browser returns a valid JSON document, similar to:\n\n"
            f"{expected}\n\nSee {DOCS_BASE}/setup/homeserver.html\n\nError details: {_details(uri)}\n"
        )
        return None
    if not 200 <= response.status_code < 300:
        LOG.warn(
            f"⚠️ Matrix client well-known replied with {_status(response.status_code)}, expected 2xx.\n"
            f'Make sure the homeserver is reachable and the well-known document is available at "{uri}"'
        )
    try:
        body = response.json()
    except ValueError as exc:
        LOG.warn(
            f'⚠️ Invalid JSON for the well-known document at "{uri}".\n'
            f"Make sure going to {_rust_debug(uri)} in a web browser returns a valid JSON document, similar to:\n\n"
            f"{expected}\n\nSee {DOCS_BASE}/setup/homeserver.html\n\nError details: {exc}\n"
        )
        return None
    homeserver = body.get("m.homeserver") if isinstance(body, dict) else None
    base_url = homeserver.get("base_url") if isinstance(homeserver, dict) else None
    return base_url if isinstance(base_url, str) and base_url.startswith(("http://", "https://")) else None


def _versions(config: MasConfig, domain: str) -> bool:
    """Step 3: ``/_matrix/client/versions`` on ``matrix.endpoint``."""
    url = urljoin(config.endpoint, "/_matrix/client/versions")
    hint = (
        "This may be due to a misconfiguration in the `matrix` section of the config.\n\n"
        f'  matrix:\n    homeserver: "{domain}"\n    # The homeserver should be reachable at this URL\n'
        f'    endpoint: "{config.endpoint}"\n\nSee {DOCS_BASE}/setup/homeserver.html\n'
    )
    try:
        response = requests.get(url, timeout=TIMEOUT)
    except requests.RequestException:
        LOG.error(f'❌ Can\'t reach the homeserver at "{url}".\n{hint}\nError details: {_details(url)}\n')
        return False
    if 200 <= response.status_code < 300:
        LOG.info(f'✅ Homeserver is reachable at "{url}"')
        return True
    LOG.error(
        f'❌Can\'t reach the homeserver at "{url}", got {_status(response.status_code)}.\n'
        f"Make sure your homeserver is running.\n{hint}"
    )
    return False


def _whoami(config: MasConfig) -> None:
    """Step 4: whoami with a bogus token must be rejected with 401."""
    url = urljoin(config.endpoint, "/_matrix/client/v3/account/whoami")
    try:
        response = requests.get(url, headers={"Authorization": f"Bearer {FAKE_TOKEN}"}, timeout=TIMEOUT)
    except requests.RequestException:
        LOG.error(f'❌ Can\'t reach the homeserver at "{url}".\n\nError details: {_details(url)}\n')
        return
    status = response.status_code
    if status == 401:
        LOG.info(f'✅ Homeserver at "{url}" is reachable, and it correctly rejected an invalid token.')
    elif status <= 399:
        LOG.error(
            f'❌ The homeserver at "{url}" replied with {_status(status)}.\n'
            "This is *highly* unexpected, as this means that a fake token might have been accepted.\n"
        )
    elif status == 503:
        LOG.error(
            f'❌ The homeserver at "{url}" replied with {_status(status)}.\n'
            "This means probably means that the homeserver was unable to reach MAS to validate the token.\n"
            "Make sure MAS is running and reachable from Synapse.\nCheck your homeserver logs.\n\n"
            f"This is what the homeserver told us about the error:\n\n    {response.text}\n\n"
            f"See {DOCS_BASE}/setup/homeserver.html\n"
        )
    else:
        LOG.warn(f'⚠️ The homeserver at "{url}" replied with {_status(status)}.\nCheck that the homeserver is running.')


def _mas_api(config: MasConfig, domain: str, issuer: str, secret: str) -> None:
    """Step 5: the MAS API with the shared secret and no ``localpart`` must answer 400."""
    url = urljoin(config.endpoint, "/_synapse/mas/is_localpart_available")
    try:
        response = requests.get(url, headers={"Authorization": f"Bearer {secret}"}, timeout=TIMEOUT)
    except requests.RequestException:
        LOG.error(
            f'❌ Can\'t reach the Synapse MAS API at "{url}".\n'
            "Make sure the homeserver is running, and that the MAS config has the correct `matrix.secret`.\n\n"
            f"Error details: {_details(url)}\n"
        )
        return
    if response.status_code == 400:
        LOG.info(f'✅ The Synapse MAS API is reachable with authentication at "{url}".')
        return
    LOG.error(
        f'❌ A Synapse MAS API endpoint at "{url}" replied with {_status(response.status_code)}.\n'
        "Make sure the homeserver is running, and that the MAS config has the correct `matrix.secret`.\n"
        "It should match the `secret` set in the Synapse config.\n\n"
        "  matrix_authentication_service:\n    enabled: true\n"
        f"    endpoint: {_rust_debug(issuer)}\n    # This must exactly match the secret in the MAS config:\n"
        f"    secret: {_rust_debug(secret)}\n\nAnd in the MAS config:\n\n"
        f'  matrix:\n    homeserver: "{domain}"\n    endpoint: "{config.endpoint}"\n'
        f"    secret: {_rust_debug(secret)}\n"
    )


def _compat_login(config: MasConfig, discovered: str | None) -> None:
    """Step 6: the legacy login API must be served by MAS."""
    url = urljoin(discovered or config.endpoint, "/_matrix/client/v3/login")
    tail = (
        "This means legacy clients won't be able to login.\nMake sure MAS is running.\n"
        "Check your reverse proxy settings to make sure that this API is handled by MAS, not by Synapse.\n\n"
        f"See {DOCS_BASE}/setup/reverse-proxy.html\n"
    )
    try:
        response = requests.get(url, timeout=TIMEOUT)
    except requests.RequestException:
        LOG.warn(f'⚠️ Can\'t reach the legacy login API at "{url}".\n{tail}\nError details: {_details(url)}')
        return
    if not 200 <= response.status_code < 300:
        LOG.error(f'The legacy login API at "{url}" replied with {_status(response.status_code)}.\n{tail}')
        return
    try:
        flows = response.json().get("flows") or []
    except (ValueError, AttributeError):
        flows = []
    markers = ("oauth_aware_preferred", "org.matrix.msc3824.delegated_oidc_compatibility")
    handled = any(
        isinstance(flow, dict)
        and flow.get("type") == "m.login.sso"
        and any(flow.get(marker) is True for marker in markers)
        for flow in flows
    )
    if handled:
        LOG.info(f'✅ The legacy login API at "{url}" is reachable and is handled by MAS.')
    else:
        LOG.warn(f'⚠️ The legacy login API at "{url}" is reachable, but it doesn\'t look to be handled by MAS.\n{tail}')


def run(config: MasConfig) -> int:
    """Run all diagnostics; returns 0 (configuration errors raise ConfigError -> exit 1)."""
    LOG.info(
        "💡 Running diagnostics, make sure that both MAS and Synapse are running, "
        "and that MAS is using the same configuration files as this tool."
    )
    config_mod.check(config)
    issuer = config.issuer
    domain = parse_host(config.homeserver)
    secret = config.matrix_secret()
    if not issuer.startswith("https://"):
        LOG.warn(
            "⚠️ The issuer in the config (`http.issuer`/`http.public_base`) is not an HTTPS URL.\n"
            "This means some clients will refuse to use it."
        )
    discovered = _well_known(config, domain, issuer)
    if _versions(config, domain):
        _whoami(config)
        _mas_api(config, domain, issuer, secret)
    _compat_login(config, discovered)
    return 0
