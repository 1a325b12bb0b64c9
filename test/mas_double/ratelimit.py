"""MAS's login rate limits (``crates/handlers/src/rate_limit.rs``) and how it finds the client's IP
(``infer_client_ip`` in ``crates/cli/src/app_state.rs``).

A password check is limited per requester IP (``rate_limiting.login.per_ip``, default a burst of 3 and 3
per minute) and then per account (``rate_limiting.login.per_account``, default 1800 and 1800 per hour):
governor's GCRA, here as the equivalent token bucket. The client IP is the peer address followed by the
``X-Forwarded-For`` list; the last address outside ``http.trusted_proxies`` (default: the private
ranges and loopback) wins, else the first (the peer).
"""

from __future__ import annotations

import ipaddress
import threading
import time

#: ``default_login_per_ip`` / ``default_login_per_account`` (``crates/config/src/sections/rate_limiting.rs``).
DEFAULTS = {"per_ip": (3, 3 / 60), "per_account": (1800, 1800 / 3600)}
#: ``default_trusted_proxies`` (``crates/config/src/sections/http.rs``).
TRUSTED_PROXIES = ("192.168.0.0/16", "172.16.0.0/12", "10.0.0.0/10", "127.0.0.0/8", "fd00::/8", "::1/128")


class Bucket:
    """A keyed limiter: ``burst`` cells, refilled at ``per_second``."""

    def __init__(self, burst: int, per_second: float):
        self.burst, self.per_second = burst, per_second
        self._lock = threading.Lock()
        self._cells: dict[object, tuple[float, float]] = {}

    def check(self, key: object) -> bool:
        """Take one cell for ``key``; False when there is none left."""
        now = time.monotonic()
        with self._lock:
            cells, since = self._cells.get(key, (float(self.burst), now))
            cells = min(float(self.burst), cells + (now - since) * self.per_second)
            if cells < 1:
                self._cells[key] = (cells, now)
                return False
            self._cells[key] = (cells - 1, now)
            return True


def _limiter(config: dict, name: str) -> Bucket:
    burst, per_second = DEFAULTS[name]
    section = config.get(name) or {}
    return Bucket(int(section.get("burst", burst)), float(section.get("per_second", per_second)))


class Limiter:
    """The password-check limiters of one server."""

    def __init__(self, rate_limiting: dict, trusted_proxies: list | None):
        login = (rate_limiting or {}).get("login") or {}
        self.per_ip = _limiter(login, "per_ip")
        self.per_account = _limiter(login, "per_account")
        proxies = TRUSTED_PROXIES if trusted_proxies is None else trusted_proxies
        self.trusted = [ipaddress.ip_network(str(net), strict=False) for net in proxies]

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The requester's IP, as ``infer_client_ip`` picks it."""
        candidates = [peer] if peer else []
        candidates += [part.strip() for part in (forwarded_for or "").split(",")]
        addresses = []
        for text in candidates:
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                continue
            mapped = getattr(address, "ipv4_mapped", None)
            addresses.append(mapped or address)
        untrusted = [a for a in addresses if not any(a in net for net in self.trusted if a.version == net.version)]
        chosen = untrusted[-1] if untrusted else (addresses[0] if addresses else None)
        return str(chosen) if chosen is not None else None

    def check_password(self, client_ip: str | None, user_id: object) -> bool:
        """``Limiter::check_password``: the requester first, then the account."""
        return self.per_ip.check(client_ip) and self.per_account.check(user_id)
