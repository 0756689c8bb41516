"""Validation of untrusted identifiers, in one place: every entry point (the people routes, `facerec enroll`,
the worker's enroll path, GallerySync and anything that builds a gallery key) goes through these functions.

Person names
------------
A person's name becomes a path component of gallery keys (`photos/<name>/...`, percent-encoded) and the
`<name>` of the `<stem>:<name>` answers, so `person_name` accepts a name only if it is:

- non-empty after trimming surrounding whitespace (the trimmed, NFC-normalised form is the canonical name);
- not `.` or `..` (path components that would alias or escape a directory on a filesystem store, and make
  S3 keys nobody can address through the API);
- at most `NAME_MAX_CHARS` characters, and at most `KEY_MAX_CHARS` once percent-encoded (the keys travel in
  1024-byte queue messages: fewer characters fit when they are non-ASCII);
- free of `:` (it separates the stem from the name in answers), `/` and `\\` (path separators);
- free of invisible and line-breaking characters: Unicode categories Cc (controls: tab, newline, NUL, NEL ...),
  Zl and Zp (line and paragraph separators), Cs (surrogates), Co (private use), Cn (unassigned), and Cf
  (format characters: bidi overrides such as U+202E could make one name display as another) except U+200C and
  U+200D (zero-width non-joiner and joiner), which are ordinary parts of names in Persian and Indic scripts.

Letters and marks of any script, digits, spaces and other punctuation are allowed, so "Zoë Saldaña",
"José María Aznar", "O'Brien", "Nguyễn Văn A" and "李小龍" are all valid names.
"""

from __future__ import annotations

import unicodedata
from typing import Final
from urllib.parse import quote

NAME_MAX_CHARS: Final = 64
KEY_MAX_CHARS: Final = 120
"""The percent-encoded name's bound (keys travel in 1024-byte queue messages, at most 200 characters each)."""

FORBIDDEN_NAME_CHARS: Final = frozenset(":/\\")
_FORBIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_JOINERS: Final = frozenset({"\u200c", "\u200d"})
_RESERVED_NAMES: Final = frozenset({".", ".."})

ALLOWED_NAME_CHARS: Final = (
    f"a name is 1 to {NAME_MAX_CHARS} characters: letters of any script, digits, spaces and punctuation "
    "except ':', '/' and '\\'; no control characters or line breaks; not '.' or '..'"
)
"""What every name error says (the 422's message, `facerec enroll`'s skip message)."""


class InvalidPersonName(ValueError):
    """A person's name that `person_name` rejects; the message says why and which characters are allowed."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason}; {ALLOWED_NAME_CHARS}")
        self.reason = reason


def _forbidden(ch: str) -> bool:
    if ch in FORBIDDEN_NAME_CHARS:
        return True
    return unicodedata.category(ch) in _FORBIDDEN_CATEGORIES and ch not in _JOINERS


def person_name(raw: str) -> str:
    """The canonical form of a person's name (NFC, surrounding whitespace trimmed); raises InvalidPersonName."""
    name = unicodedata.normalize("NFC", raw).strip()
    if not name:
        raise InvalidPersonName("the name is empty")
    if name in _RESERVED_NAMES:
        raise InvalidPersonName(f"the name {name!r} is reserved")
    if len(name) > NAME_MAX_CHARS:
        raise InvalidPersonName(f"the name is longer than {NAME_MAX_CHARS} characters")
    bad = sorted({ch for ch in name if _forbidden(ch)})
    if bad:
        shown = ", ".join(f"U+{ord(ch):04X}" if not ch.isprintable() else repr(ch) for ch in bad)
        raise InvalidPersonName(f"the name holds characters that are not allowed ({shown})")
    if len(quote(name, safe="")) > KEY_MAX_CHARS:
        raise InvalidPersonName("the name is too long (fewer non-ASCII characters fit)")
    return name
