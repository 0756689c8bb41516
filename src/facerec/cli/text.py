"""Wording shared by the commands' human-readable output."""

from __future__ import annotations


def plural(count: int, singular: str, many: str | None = None) -> str:
    """`1 person`, `2 people`, `0 photos`: the count with the word that agrees with it."""
    return f"{count} {singular if count == 1 else (many or singular + 's')}"
