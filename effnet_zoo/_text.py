"""Text that reaches a terminal or a file header from untrusted sources (labels, file names, config values)."""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters (escape sequences, carriage returns) shown escaped.

    Labels come from config.json files and paths from the user's folders; neither may drive the terminal.
    """
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def markdown_text(text: str) -> str:
    """``text`` (a file name, a path, a user's sentence) as plain text inside a model card: one line, with
    markdown and HTML characters escaped, so a name cannot add a heading, a link or a tag to a published card."""
    return "".join("\\" + ch if ch in "\\`*_[]<>#|!" else ch for ch in printable(text))


def markdown_code(text: str) -> str:
    """``text`` (a file name, a path, a repo id) as a code span in a model card: one line, shown as written,
    where markdown and HTML are not interpreted (a file name cannot add a heading, a link or a tag)."""
    return "`" + printable(text).replace("`", "'") + "`"


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or '' for an empty one (``str(e).splitlines()[0]`` raised IndexError
    there, inside the handler meant to explain it)."""
    lines = str(error).splitlines()
    return lines[0] if lines else ""
