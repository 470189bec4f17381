"""Wording shared by every user-facing error line."""
from __future__ import annotations


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, at most `limit` characters (its type when it has none):
    what an `error:` line quotes of a library's multi-line exception."""
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:limit]
