"""The measurement cache: JSON files keyed by content hashes, so a rerun (another budget) re-measures nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from golfpack._io import write_bytes_atomic

CACHE_VERSION = 2  # bump when what a cache file means changes


class Cache:
    """JSON files under a directory, keyed by content hashes; no-op without a directory."""

    def __init__(self, root: str | None) -> None:
        self.root = Path(root) if root else None
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, kind: str, key: str) -> Path | None:
        return None if self.root is None else self.root / f"{kind}-{key}.json"

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        p = self._path(kind, key)
        if p is None or not p.is_file():
            return None
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError:
            return None  # a damaged entry is re-measured, never trusted
        return d if d.get("cache_version") == CACHE_VERSION else None

    def put(self, kind: str, key: str, value: dict[str, Any]) -> None:
        p = self._path(kind, key)
        if p is not None:
            write_bytes_atomic(p, json.dumps({"cache_version": CACHE_VERSION, **value}).encode())


def cache_key(*parts: Any) -> str:
    """A short content hash of `parts` (JSON, keys sorted): the name of one cache entry."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


__all__ = ["CACHE_VERSION", "Cache", "cache_key"]
