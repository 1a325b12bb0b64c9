"""ULIDs the way MAS uses them.

MAS identifies every row with a ULID (48-bit millisecond timestamp + 80 random
bits).  The API shows it in Crockford base32 (26 characters); the database
stores the same 128 bits in a ``uuid`` column.  Conversion is therefore a plain
re-encoding of the 128-bit integer, in both directions.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {char: index for index, char in enumerate(_ALPHABET)}
ULID_RE = re.compile(r"^[0123456789ABCDEFGHJKMNPQRSTVWXYZ]{26}$")


def new_int(timestamp_ms: int | None = None) -> int:
    """Return a fresh ULID as a 128-bit integer (current time unless given)."""
    if timestamp_ms is None:
        timestamp_ms = time.time_ns() // 1_000_000
    return (timestamp_ms & ((1 << 48) - 1)) << 80 | secrets.randbits(80)


def encode(value: int) -> str:
    """Encode a 128-bit integer as a 26-character Crockford base32 ULID."""
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 0x1F])
        value >>= 5
    return "".join(reversed(chars))


def decode(text: str) -> int:
    """Decode a ULID string (case-insensitive) to its 128-bit integer.

    Raises ``ValueError`` for anything that is not a valid ULID.
    """
    upper = text.upper()
    if not ULID_RE.match(upper) or _DECODE[upper[0]] > 7:
        raise ValueError(f"invalid ULID: {text!r}")
    value = 0
    for char in upper:
        value = value << 5 | _DECODE[char]
    return value


def new_uuid() -> uuid.UUID:
    """Return a fresh ULID as the ``uuid.UUID`` MAS would store."""
    return uuid.UUID(int=new_int())


def to_uuid(text: str) -> uuid.UUID:
    """Convert a ULID string to the UUID stored in the MAS database."""
    return uuid.UUID(int=decode(text))


def from_uuid(value: uuid.UUID | str) -> str:
    """Convert a UUID from the MAS database to the ULID string shown by MAS."""
    if not isinstance(value, uuid.UUID):
        value = uuid.UUID(str(value))
    return encode(value.int)


def is_valid(text: str) -> bool:
    """True when ``text`` is a canonical (upper-case) ULID."""
    try:
        decode(text)
    except ValueError:
        return False
    return text == text.upper()
