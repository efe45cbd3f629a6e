"""API keys (§10, §11): `key` or `name=key` entries from RINGGATE_API_KEYS and
RINGGATE_API_KEYS_FILE, and the match of an Authorization header against them.

Every source accepts `Bearer <key>`; a protocol adds its own schemes (`Splunk`, `ApiKey`, `Basic`
with the key as password). Schemes match case-insensitively (RFC 9110 §11.1). A key's name (else a
short hash of the key) identifies the client; the key itself is never logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable

from .errors import ConfigurationError

BEARER = "bearer"


def parse_entries(text: str, separator: str, source: str) -> list[tuple[str, str]]:
    """`key` / `name=key` entries (split at the first `=`: a key holding `=` needs a name) →
    (name, key) pairs; blank entries and, in files, `#` comments are skipped."""
    pairs = []
    for raw in text.split(separator):
        entry = raw.strip()
        if not entry or (separator == "\n" and entry.startswith("#")):
            continue
        name, eq, key = entry.partition("=")
        if not eq:
            name, key = "", entry
        name, key = name.strip(), key.strip()
        if not key:
            raise ConfigurationError(f"{source} has an entry with an empty key: {name!r}=")
        pairs.append((name or key_hash(key), key))
    return pairs


def key_hash(key: str) -> str:
    """The name of an unnamed key: short enough for a label, useless for guessing the key."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def read_file(path: str) -> list[tuple[str, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"RINGGATE_API_KEYS_FILE cannot be read: {path!r}: {exc}") from None
    pairs = parse_entries(text, "\n", "RINGGATE_API_KEYS_FILE")
    if not pairs:
        raise ConfigurationError(f"RINGGATE_API_KEYS_FILE holds no key (auth never fails open): {path!r}")
    return pairs


class Keys:
    """The keys one worker accepts. Empty means auth is off (no key configured)."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self.names = {key: name for name, key in pairs}
        # the common header, exactly as clients send it: one dict lookup on the hot path
        self._bearer = {f"Bearer {key}".encode(): name for key, name in self.names.items()}

    @classmethod
    def from_settings(cls, settings) -> Keys:
        pairs = list(settings.api_keys)
        if settings.api_keys_file:
            pairs += read_file(settings.api_keys_file)
        return cls(pairs)

    def __bool__(self) -> bool:
        return bool(self.names)

    def client(self, authorization: bytes | None, schemes: frozenset[str] = frozenset()) -> str | None:
        """The name of the key `authorization` carries in `Bearer` or one of `schemes`, else None."""
        if authorization is None:
            return None
        name = self._bearer.get(authorization)
        if name is not None:
            return name
        scheme, _, credentials = authorization.decode("latin-1").strip().partition(" ")
        scheme, credentials = scheme.lower(), credentials.strip()
        if scheme == BEARER or (scheme in schemes and scheme not in ("basic", "apikey")):
            return self.names.get(credentials)
        if scheme not in schemes:
            return None
        if credentials in self.names:  # ApiKey <key> as the design writes it
            return self.names[credentials]
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        # Basic user:key, and Elasticsearch's ApiKey base64(id:key): the key is after the colon
        return self.names.get(decoded.partition(":")[2]) or (self.names.get(decoded) if scheme == "apikey" else None)
