"""Storage keys and display names derived from untrusted upload filenames.

A filename never reaches a storage key or a path as given: keys are built from a sanitised ASCII stem plus
the request id, so concurrent uploads with the same name never collide.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from pathlib import PurePosixPath, PureWindowsPath

_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
KEY_STEM_MAX = 64
DISPLAY_STEM_MAX = 120
ALLOWED_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def new_request_id() -> str:
    return uuid.uuid4().hex


def _basename(filename: str) -> str:
    # Clients send Windows and POSIX paths alike; keep only the last component of either.
    return PureWindowsPath(PurePosixPath(filename).name).name


def display_stem(filename: str | None) -> str:
    """The stem the answer shows (`<stem>:<name>`): the client's own name without path, extension or
    control characters; unicode kept; bounded length."""
    base = _CONTROL_CHARS.sub("", _basename(filename or "")).strip()
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    stem = stem.strip().strip(".").replace(":", "_")
    return stem[:DISPLAY_STEM_MAX] or "image"


def key_stem(filename: str | None) -> str:
    """An ASCII-only, path-free stem for storage keys (unicode is transliterated where possible)."""
    ascii_text = unicodedata.normalize("NFKD", display_stem(filename)).encode("ascii", "ignore").decode()
    stem = _UNSAFE_KEY_CHARS.sub("_", ascii_text).strip("._-")
    return stem[:KEY_STEM_MAX] or "image"


def safe_suffix(filename: str | None) -> str:
    suffix = PurePosixPath(_basename(filename or "")).suffix.lower()
    return suffix if suffix in ALLOWED_SUFFIXES else ""


def input_key(filename: str | None, request_id: str, part: int = 1) -> str:
    """`<stem>-<id12><ext>`: the course's layout (stem first), unique per request; a request's second photo
    (`part` 2, a verification's) is `<stem>-<id12>-2<ext>`."""
    suffix = "" if part == 1 else f"-{part}"
    return f"{key_stem(filename)}-{request_id[:12]}{suffix}{safe_suffix(filename)}"


def output_key(filename: str | None, request_id: str) -> str:
    """`<stem>-<id12>`: the course's result key (the stem) plus a uniquifier."""
    return f"{key_stem(filename)}-{request_id[:12]}"
