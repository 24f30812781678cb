"""Time-sortable unique execution names (ULIDs, monotonic within a millisecond)."""

from __future__ import annotations

import secrets
import threading
from datetime import datetime

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_lock = threading.Lock()
_last_ms = -1
_last_random = 0


def ulid(at: datetime) -> str:
    """A 26-character ULID for time `at`; later calls in the same millisecond sort after earlier ones."""
    global _last_ms, _last_random
    ms = int(at.timestamp() * 1000)
    with _lock:
        if ms <= _last_ms:
            ms = _last_ms
            _last_random += 1
        else:
            _last_random = secrets.randbits(80) & ~(1 << 79)  # leave room to increment
        _last_ms = ms
        value = (ms << 80) | (_last_random & ((1 << 80) - 1))
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))
