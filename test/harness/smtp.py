"""A real SMTP server on loopback for the email tests: ``aiosmtpd`` (PyPI).

:class:`SmtpServer` runs aiosmtpd's ``Controller`` in a thread of the test
process. It requires AUTH (PLAIN or LOGIN) with one username and password,
and, with a ``tls`` certificate, STARTTLS before AUTH (as a submission port
does); every message accepted is parsed and kept in :attr:`SmtpServer.messages`
(:meth:`SmtpServer.wait_for` waits for one to a recipient). :attr:`SmtpServer.events`
records what the client did (``auth <user> ok|refused[ over TLS]``).
"""

from __future__ import annotations

import email
import email.policy
import ssl
import threading
import time
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from harness.testca import ServerCert
from harness.util import LOOPBACK, free_port


class _Handler:
    def __init__(self, server: SmtpServer):
        self.server = server

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        with self.server.lock:
            self.server.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos), "message": message})
        return "250 Message accepted for delivery"


class SmtpServer:
    """aiosmtpd on ``127.0.0.1:<port>``, AUTH required (over STARTTLS when ``tls`` is given)."""

    def __init__(self, username: str, password: str, tls: ServerCert | None = None):
        self.username = username
        self.password = password
        self.port = free_port()
        self.host = LOOPBACK
        self.messages: list[dict] = []
        self.events: list[str] = []
        self.lock = threading.Lock()
        context = None
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(tls.cert), str(tls.key))
        self.starttls = context is not None
        self._controller = Controller(
            _Handler(self),
            hostname=LOOPBACK,
            port=self.port,
            server_hostname="smtp.test",
            authenticator=self._authenticate,
            auth_required=True,
            auth_require_tls=self.starttls,
            require_starttls=self.starttls,
            tls_context=context,
        )

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == self.username
            and auth_data.password.decode() == self.password
        )
        login = auth_data.login.decode(errors="replace") if isinstance(auth_data, LoginPassword) else "?"
        over = " over TLS" if getattr(session, "ssl", None) else ""
        self.events.append(f"auth {login} {'ok' if ok else 'refused'}{over}")
        return AuthResult(success=ok)

    def start(self) -> SmtpServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def wait_for(self, recipient: str, timeout: float = 30, after: int = 0) -> EmailMessage:
        """The first message (from index ``after`` on) to ``recipient``; AssertionError naming what arrived otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for entry in self.messages[after:]:
                    if recipient in entry["to"]:
                        return entry["message"]
            time.sleep(0.1)
        raise AssertionError(
            f"no mail to {recipient} reached the SMTP server on {self.host}:{self.port} within {timeout}s"
            f" (messages to: {[m['to'] for m in self.messages]}; client events: {self.events})"
        )

    def __repr__(self) -> str:
        return f"SmtpServer({self.host}:{self.port}, starttls={self.starttls})"
