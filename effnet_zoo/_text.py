"""Text that reaches a terminal or a file header from untrusted sources (labels, file names, config values)."""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters (escape sequences, carriage returns) shown escaped.

    Labels come from config.json files and paths from the user's folders; neither may drive the terminal.
    """
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
