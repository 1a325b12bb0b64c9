"""The formula's one HTTP client: ``requests`` sessions for the local services (MAS, Synapse, the proxy) and how their failures read.

Every module that talks HTTP (users, doctor, syn2mas, Synapse's restart) opens
its sessions here: never through an ``http(s)_proxy`` of the environment (the
services are local or named by pillar), with the formula's User-Agent, and,
for probes of a reverse proxy on another address, the ``Host`` header and TLS
name of the public host. A :class:`Client` is a session with one service
whose failures say which service did not answer; :func:`error_text` and
:func:`json_body` read the answers of MAS's and Synapse's APIs. ``requests`` is
imported when a session is opened, not when a module loads (most runs make no
request).
"""

import re

from salt.exceptions import CommandExecutionError

USER_AGENT = "mas-formula"


def _host_adapter(host):
    from requests.adapters import HTTPAdapter  # pylint: disable=import-outside-toplevel

    class HostAdapter(HTTPAdapter):
        """Send TLS's SNI and check the certificate for ``host`` while connecting to another address."""

        def build_connection_pool_key_attributes(self, request, verify, cert=None):
            host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
            if host_params["scheme"] == "https":
                pool_kwargs["server_hostname"] = host
                pool_kwargs["assert_hostname"] = host
            return host_params, pool_kwargs

    return HostAdapter()


def session(host=None, verify=True, agent=USER_AGENT):
    """A ``requests.Session`` that ignores proxy settings of the environment; with ``host``, every request
    carries ``Host: host`` and, over https, that TLS server name and certificate name."""
    import requests  # pylint: disable=import-outside-toplevel

    opened = requests.Session()
    opened.trust_env = False
    opened.verify = verify
    opened.headers["User-Agent"] = agent
    if host:
        opened.headers["Host"] = host
        opened.mount("https://", _host_adapter(host))
    return opened


def errors():
    """The exception class of a failed request (``requests.RequestException``)."""
    import requests  # pylint: disable=import-outside-toplevel

    return requests.RequestException


def answers(url, timeout=3):
    """True when something answers HTTP at ``url`` (any status code)."""
    with session() as opened:
        try:
            opened.get(url, timeout=timeout)
            return True
        except errors():
            return False


def why(exc):
    """A one-line reason for a failed request."""
    import requests  # pylint: disable=import-outside-toplevel

    if isinstance(exc, requests.exceptions.SSLError):
        reason = re.search(r"certificate verify failed: ([^('\"]+)", str(exc))
        return f"TLS failed: {reason.group(1).strip() if reason else 'no TLS handshake'}"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "no connection within the timeout"
    if isinstance(exc, requests.exceptions.Timeout):
        return "no answer within the timeout"
    if isinstance(exc, requests.exceptions.ConnectionError):
        text = str(exc)
        if "refused" in text:
            return "connection refused (nothing listens there)"
        if "Name or service not known" in text or "nodename nor servname" in text:
            return "the host name does not resolve"
        return "cannot connect"
    return type(exc).__name__


def status(response):
    """``200 OK``: the status code and its phrase."""
    from http import HTTPStatus  # pylint: disable=import-outside-toplevel

    try:
        return f"{response.status_code} {HTTPStatus(response.status_code).phrase}"
    except ValueError:
        return str(response.status_code)


def json_or_none(response):
    """The JSON body of ``response``, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def wait_until_answers(url, timeout, pause=0.5, expect=200):
    """Poll ``url`` until it answers ``expect`` or ``timeout`` seconds pass: ``(answers, seconds, why)``."""
    import time  # pylint: disable=import-outside-toplevel

    started = time.monotonic()
    deadline = started + max(0.0, float(timeout))
    reason = ""
    with session() as opened:
        while True:
            try:
                code = opened.get(url, timeout=5).status_code
                if code == expect:
                    return True, round(time.monotonic() - started, 3), ""
                reason = f"it answers {code}"
            except errors() as exc:
                reason = why(exc)
            if time.monotonic() >= deadline:
                return False, round(time.monotonic() - started, 3), reason
            time.sleep(pause)


def error_text(response):
    """What an API refused, in one line: the titles of MAS's admin-API ``errors``, Matrix's ``errcode: error``,
    else the start of the body."""
    body = json_or_none(response)
    if isinstance(body, dict) and "errors" in body:
        return "; ".join(e.get("title", "") for e in body["errors"] if isinstance(e, dict)) or response.text[:200]
    if isinstance(body, dict) and ("errcode" in body or "error" in body):
        return f"{body.get('errcode', '')}: {body.get('error', '')}"
    return response.text[:200]


def json_body(response, where):
    """The JSON body of ``response`` (None when it is empty); ``CommandExecutionError`` naming ``where`` when the
    body is not JSON."""
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError as exc:
        raise CommandExecutionError(f"{where}: the answer is not JSON") from exc


class Client:
    """A session with one local service (``what``: "MAS", "Synapse"): a request that gets no answer raises
    ``CommandExecutionError`` naming the service, the URL and why, with ``info["unreachable"]``."""

    def __init__(self, what, timeout=30):
        self.what = what
        self.timeout = timeout
        self.session = session()

    def send(self, method, url, **kwargs):
        """The ``requests.Response`` of one request (any status code)."""
        try:
            return self.session.request(method, url, timeout=self.timeout, **kwargs)
        except errors() as exc:
            raise CommandExecutionError(
                f"{self.what} is not reachable at {url}: {why(exc)}", info={"unreachable": True}
            ) from exc

    def close(self):
        self.session.close()
