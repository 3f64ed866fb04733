"""Resource ids of the fake: a 4-letter collection prefix and a 26-character ULID.

A ULID is 128 bits written in Crockford base32 (uppercase, no I, L, O, U): 48 bits of
milliseconds then 80 random bits. Its alphabet is in ASCII order, so ids of one collection
sort by their time part first. The fake derives both parts from a resource's index
(time = a base instant + index * step, random = a keyed hash of the seed and the index), so
ids are deterministic, sort in index order, and the index can be read back from an id.
"""

from __future__ import annotations

import hashlib
import struct

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {char: value for value, char in enumerate(CROCKFORD)}
# Two base32 characters (10 bits) per lookup.
_PAIRS = [a + b for a in CROCKFORD for b in CROCKFORD]
_MASK10 = (1 << 10) - 1

ULID_LENGTH = 26
TIME_LENGTH = 10


def encode_time(time_ms: int) -> str:
    """The 10-character time part of a ULID (48 bits of milliseconds)."""
    pairs = _PAIRS
    return (
        pairs[(time_ms >> 40) & _MASK10]
        + pairs[(time_ms >> 30) & _MASK10]
        + pairs[(time_ms >> 20) & _MASK10]
        + pairs[(time_ms >> 10) & _MASK10]
        + pairs[time_ms & _MASK10]
    )


def encode_random(entropy: bytes) -> str:
    """The 16-character random part of a ULID from the first 10 bytes of ``entropy``."""
    pairs = _PAIRS
    high = int.from_bytes(entropy[:5], "big")
    low = int.from_bytes(entropy[5:10], "big")
    return (
        pairs[high >> 30]
        + pairs[(high >> 20) & _MASK10]
        + pairs[(high >> 10) & _MASK10]
        + pairs[high & _MASK10]
        + pairs[low >> 30]
        + pairs[(low >> 20) & _MASK10]
        + pairs[(low >> 10) & _MASK10]
        + pairs[low & _MASK10]
    )


def encode_ulid(time_ms: int, entropy: bytes) -> str:
    """A 26-character ULID from a millisecond time and >= 10 bytes of entropy."""
    return encode_time(time_ms) + encode_random(entropy)


def decode_time(ulid: str) -> int | None:
    """The millisecond time part of a ULID, or None if it is not valid Crockford base32."""
    value = 0
    for char in ulid[:TIME_LENGTH]:
        digit = _DECODE.get(char)
        if digit is None:
            return None
        value = (value << 5) | digit
    return value


def digest(seed: int, kind: bytes, index: int, size: int = 32) -> bytes:
    """``size`` pseudo-random bytes determined by (seed, kind, index)."""
    data = struct.pack("<qq", seed, index) + kind
    return hashlib.blake2b(data, digest_size=size).digest()


def make_id(prefix: str, time_ms: int, entropy: bytes) -> str:
    """An id such as ``user01HN2NJ9NMRZBXT1H6FT9N7735`` from a time and >= 10 bytes of entropy."""
    return prefix + encode_time(time_ms) + encode_random(entropy)
