"""Bearer keys for the HTTP API, kept in ``<home>/apikeys.json`` (0600).

Only a key's sha256 is stored; the key itself is shown once, at creation.
The node re-reads the file when it changes, so ``inferad apikey create`` and
``revoke`` take effect on a running node without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path

from inferad.files import write_json

PREFIX = "ifd_"


class ApiKeyError(Exception):
    """The key file is unreadable, or no such key."""


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: float | None = None
        self._entries: list[dict] = []

    def _load(self) -> list[dict]:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._entries, self._mtime = [], None
            return self._entries
        if mtime != self._mtime:
            try:
                self._entries = json.loads(self.path.read_text())["keys"]
            except (OSError, ValueError, KeyError) as exc:
                raise ApiKeyError(f"{self.path} is unreadable ({exc}); fix or delete it") from None
            self._mtime = mtime
        return self._entries

    def _save(self, entries: list[dict]) -> None:
        write_json(self.path, {"keys": entries}, indent=2, mode=0o600)

    def create(self, name: str) -> tuple[str, dict]:
        key = PREFIX + secrets.token_urlsafe(32)
        entry = {"id": secrets.token_hex(4), "name": name, "sha256": _hash(key), "created": int(time.time())}
        self._save([*self._load(), entry])
        return key, entry

    def list(self) -> list[dict]:
        return [{k: v for k, v in e.items() if k != "sha256"} for e in self._load()]

    def revoke(self, key_id: str) -> None:
        entries = self._load()
        kept = [e for e in entries if e["id"] != key_id]
        if len(kept) == len(entries):
            raise ApiKeyError(f"no API key with id {key_id} (see `inferad apikey list`)")
        self._save(kept)

    def check(self, key: str) -> dict | None:
        """The entry of a valid key (compared in constant time), else None."""
        digest = _hash(key)
        return next((e for e in self._load() if hmac.compare_digest(e["sha256"], digest)), None)
