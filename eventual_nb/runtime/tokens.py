"""HMAC-signed activity tokens, so a token for async completion cannot be forged or altered.

A token names (execution id, seq, attempt) and carries an HMAC-SHA256 over them; it is checked with
`hmac.compare_digest`. Eventual's tokens were unsigned base64 and forgeable.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Mapping

from eventual_nb.errors import EventualError

#: the environment variable holding the secret activity tokens are signed with
SIGNING_KEY_VARIABLE = "EVENTUAL_SIGNING_KEY"
#: the shortest key HMAC-SHA256 tokens are signed with
MIN_KEY_BYTES = 16


class InvalidSigningKey(EventualError, ValueError):
    """A signing key too short to sign tokens with (fewer than `MIN_KEY_BYTES` bytes)."""


def environment_signing_key(environ: Mapping[str, str] | None = None) -> bytes | None:
    """`EVENTUAL_SIGNING_KEY` as bytes, or None when it is unset or empty.

    Raises `InvalidSigningKey` naming the variable when it is too short, so a runtime refuses it where it
    is made rather than failing later at start (inside a server's startup, say).
    """
    text = (os.environ if environ is None else environ).get(SIGNING_KEY_VARIABLE)
    if not text:
        return None
    key = text.encode()
    if len(key) < MIN_KEY_BYTES:
        raise InvalidSigningKey(
            f"{SIGNING_KEY_VARIABLE} is {len(key)} bytes long; an activity signing key needs at least "
            f"{MIN_KEY_BYTES} bytes (e.g. the output of `python -c 'import secrets; print(secrets.token_hex(32))'`)"
        )
    return key


class InvalidToken(EventualError):
    """An activity token that is malformed, forged, or signed by another runtime's key."""

    status_code = 403


class TokenSigner:
    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise InvalidSigningKey(f"an activity signing key needs at least {MIN_KEY_BYTES} bytes, got {len(key)}")
        self._key = key

    def _mac(self, body: bytes) -> str:
        return hmac.new(self._key, body, hashlib.sha256).hexdigest()

    def sign(self, execution_id: str, seq: int, attempt: int) -> str:
        body = json.dumps([execution_id, seq, attempt], separators=(",", ":")).encode()
        return f"{_encode(body)}.{self._mac(body)}"

    def verify(self, token: str) -> tuple[str, int, int]:
        """Return (execution id, seq, attempt) of a genuine token; raise `InvalidToken` otherwise.

        Only the exact text `sign` makes is genuine: the base64 decoder would also take other spellings of the
        same bytes (stray characters, padding, non-zero trailing bits), so the body is re-encoded and compared.
        """
        if not isinstance(token, str) or not token.isascii() or token.count(".") != 1:
            raise InvalidToken("invalid activity token: not a token issued by this runtime")
        encoded, mac = token.split(".")
        try:
            body = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (ValueError, TypeError):
            raise InvalidToken("invalid activity token: cannot decode it") from None
        if _encode(body) != encoded:
            raise InvalidToken("invalid activity token: not in the form this runtime issues (non-canonical base64)")
        if not hmac.compare_digest(self._mac(body), mac):
            raise InvalidToken("invalid activity token: its signature does not match (forged or from another runtime)")
        try:
            contents = json.loads(body)
        except ValueError:
            contents = None
        if (
            not isinstance(contents, list)
            or len(contents) != 3
            or not isinstance(contents[0], str)
            or not all(type(number) is int for number in contents[1:])  # not bool, not float
        ):
            raise InvalidToken("invalid activity token: malformed contents")
        return contents[0], contents[1], contents[2]


def _encode(body: bytes) -> str:
    return base64.urlsafe_b64encode(body).decode().rstrip("=")
