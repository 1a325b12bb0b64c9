"""Password hashing, verification and the complexity check of the MAS double.

Hashes are byte-compatible with MAS (``crates/handlers/src/passwords.rs``):

* ``bcrypt``: the password (NFKC-normalised when the scheme has
  ``unicode_normalization: true``) with the scheme ``secret`` (pepper)
  appended, hashed with cost ``cost`` (default 12), ``$2b$`` format.  That is
  also how Synapse hashes with ``password_config.pepper``, so hashes copied by
  syn2mas verify.  Like the Rust ``bcrypt`` crate, input beyond 72 bytes is ignored.
* ``argon2id``: PHC string ``$argon2id$v=19$m=19456,t=2,p=1$...`` (the Rust
  ``argon2`` crate defaults), via libsodium (PyNaCl).  MAS would use the scheme
  ``secret`` as Argon2's keyed-hash secret, which libsodium cannot do: the
  double refuses a peppered argon2id scheme with a clear error.
* ``pbkdf2``: PHC string ``$pbkdf2-sha256$i=600000,l=32$<salt>$<hash>`` with
  the pepper appended (the Rust ``pbkdf2`` crate defaults).

New passwords are hashed with the highest-version scheme; verification uses the
scheme whose version is stored with the hash.

Complexity: MAS scores passwords with zxcvbn (0-4) and rejects scores below
``passwords.minimum_complexity`` (default 3).  The double uses this documented
stand-in instead of zxcvbn:

* score 0: shorter than 8 characters, a single repeated character, or one of a
  few very common passwords (see ``_COMMON``);
* otherwise the number of character classes used (lower, upper, digit, other),
  plus 1 from 12 characters on and plus 1 more from 16 characters on, capped at 4.

So ``Abcdefgh12`` (3) passes the default while ``abcdefgh12`` (2) is "too weak".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import unicodedata

import bcrypt

from mas_double.config import ConfigError, MasConfig, PasswordScheme

_COMMON = frozenset(
    {
        "password",
        "password1",
        "password123",
        "12345678",
        "123456789",
        "1234567890",
        "qwertyui",
        "qwerty123",
        "iloveyou",
        "letmein1",
        "sunshine",
        "football",
        "baseball",
        "welcome1",
        "admin123",
        "trustno1",
        "passw0rd",
        "abcdefgh",
    }
)

_ARGON2_MEMLIMIT = 19456 * 1024
_ARGON2_OPSLIMIT = 2
_PBKDF2_ROUNDS = 600_000


class PasswordError(Exception):
    """Hashing is impossible (disabled password auth, unsupported scheme...)."""


def complexity_score(password: str) -> int:
    """Return the stand-in zxcvbn score (0-4) of ``password`` (see module docstring)."""
    if len(password) < 8 or len(set(password)) == 1 or password.lower() in _COMMON:
        return 0
    classes = sum(
        (
            any(c.islower() for c in password),
            any(c.isupper() for c in password),
            any(c.isdigit() for c in password),
            any(not c.isalnum() for c in password),
        )
    )
    score = classes + (len(password) >= 12) + (len(password) >= 16)
    return min(4, score)


def _prepare(password: str, scheme: PasswordScheme) -> bytes:
    if scheme.unicode_normalization:
        password = unicodedata.normalize("NFKC", password)
    return password.encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_with(scheme: PasswordScheme, password: str) -> str:
    """Hash ``password`` with ``scheme``; returns the string stored in ``user_passwords``."""
    data = _prepare(password, scheme)
    if scheme.algorithm == "bcrypt":
        peppered = (data + (scheme.secret or b""))[:72]
        return bcrypt.hashpw(peppered, bcrypt.gensalt(rounds=scheme.cost, prefix=b"2b")).decode()
    if scheme.algorithm == "argon2id":
        if scheme.secret:
            raise PasswordError("the MAS double cannot hash argon2id with a secret (pepper)")
        import nacl.pwhash  # local import: only argon2 needs libsodium

        return nacl.pwhash.argon2id.str(data, opslimit=_ARGON2_OPSLIMIT, memlimit=_ARGON2_MEMLIMIT).decode()
    if scheme.algorithm == "pbkdf2":
        salt = secrets.token_bytes(16)
        digest = hashlib.pbkdf2_hmac("sha256", data + (scheme.secret or b""), salt, _PBKDF2_ROUNDS, 32)
        return f"$pbkdf2-sha256$i={_PBKDF2_ROUNDS},l=32${_b64(salt)}${_b64(digest)}"
    raise PasswordError(f"unknown password hashing algorithm {scheme.algorithm!r}")


def verify_with(scheme: PasswordScheme, hashed: str, password: str) -> bool:
    """True when ``password`` matches ``hashed`` under ``scheme``."""
    data = _prepare(password, scheme)
    try:
        if scheme.algorithm == "bcrypt":
            return bcrypt.checkpw((data + (scheme.secret or b""))[:72], hashed.encode())
        if scheme.algorithm == "argon2id":
            if scheme.secret:
                return False
            import nacl.exceptions
            import nacl.pwhash

            try:
                return nacl.pwhash.argon2id.verify(hashed.encode(), data)
            except nacl.exceptions.InvalidkeyError:
                return False
        if scheme.algorithm == "pbkdf2":
            _, _, params, salt, digest = hashed.split("$")
            settings = dict(item.split("=") for item in params.split(","))
            expected = _unb64(digest)
            actual = hashlib.pbkdf2_hmac(
                "sha256", data + (scheme.secret or b""), _unb64(salt), int(settings["i"]), len(expected)
            )
            return hmac.compare_digest(actual, expected)
    except (ValueError, KeyError):
        return False
    return False


class PasswordManager:
    """The password manager built from ``passwords`` (like MAS's ``PasswordManager``)."""

    def __init__(self, config: MasConfig):
        self.enabled = config.passwords_enabled
        self.minimum_complexity = config.minimum_complexity
        self.schemes = config.password_schemes() if self.enabled else []
        if self.enabled and not self.schemes:
            raise ConfigError("Requires at least one password scheme in the config")

    def _require_enabled(self) -> None:
        if not self.enabled:
            raise PasswordError("Password manager is disabled")

    def is_complex_enough(self, password: str) -> bool:
        """True when the stand-in score reaches ``minimum_complexity``."""
        self._require_enabled()
        return complexity_score(password) >= self.minimum_complexity

    def hash(self, password: str) -> tuple[int, str]:
        """Hash with the current (highest-version) scheme; returns ``(version, hash)``."""
        self._require_enabled()
        scheme = self.schemes[0]
        return scheme.version, hash_with(scheme, password)

    def verify(self, version: int, hashed: str, password: str) -> bool:
        """Verify ``password`` against a hash stored with scheme ``version``."""
        self._require_enabled()
        scheme = next((s for s in self.schemes if s.version == version), None)
        return scheme is not None and verify_with(scheme, hashed, password)
