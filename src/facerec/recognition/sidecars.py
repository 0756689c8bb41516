"""The JSON sidecars written next to prepared weights and compiled packages (what they were made from)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`; None when it is missing, unreadable or not an object (then it is rebuilt)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def stale_reason(
    sidecar: dict[str, Any] | None, packages: Iterable[Path], stamp: dict[str, Any], flag: str
) -> str | None:
    """Why compiled packages described by `sidecar` cannot be used for `stamp` (None: they can), without reading
    them: missing (built by `facerec weights prepare <flag>`), or built from or for something else."""
    if sidecar is None or not all(package.is_file() for package in packages):
        return f"not built (run `facerec weights prepare {flag}`)"
    different = sorted(key for key, value in stamp.items() if not _fits(key, sidecar.get(key), value))
    if different:
        return "built for other " + ", ".join(_difference(key, sidecar.get(key), stamp[key]) for key in different)
    return None


SUBSET_KEYS = frozenset({"cpu_features"})
"""Stamp keys a package fits when what it was built with is a subset of what is here: the CPU features its code
may use, which a later CPU of the same line has, and more."""


def _fits(key: str, built: Any, here: Any) -> bool:
    if key in SUBSET_KEYS:
        return isinstance(built, list) and set(built) <= set(here)
    return bool(built == here)


def _difference(key: str, built: Any, here: Any) -> str:
    if key in SUBSET_KEYS:
        if not isinstance(built, list):
            return f"{key} (not recorded: built by an older facerec)"
        return f"{key} (this CPU lacks {', '.join(sorted(set(built) - set(here)))})"
    return f"{key} ({built!r} != {here!r})"


def checksum_mismatch(packages: Mapping[str, Path], sidecar: dict[str, Any], flag: str) -> str | None:
    """Which of `packages` (sidecar key -> file) does not match the sha256 its sidecar recorded (None: all do)."""
    recorded = sidecar.get("sha256") or {}
    for key, package in packages.items():
        if sha256_file(package) != recorded.get(key):
            return f"{package.name} does not match its checksum (rebuild with `facerec weights prepare {flag}`)"
    return None
