"""What every source module shares: the :class:`SourceInfo` record and two small text helpers."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..corpus import Document

__all__ = ["SourceInfo", "not_installed", "tidy"]


@dataclass(frozen=True)
class SourceInfo:
    """A named corpus that lives inside an installable package."""

    name: str
    description: str
    install: str
    licence: str
    load: Callable[[], list[Document]]


_MANY_BLANK_LINES = re.compile(r"\n{3,}")


def tidy(text: str) -> str:
    """Normalise newlines, strip trailing spaces per line, collapse runs of blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _MANY_BLANK_LINES.sub("\n\n", text).strip()


def not_installed(name: str, what: str, install: str) -> FileNotFoundError:
    """The error a named source raises when the package holding its text is missing."""
    return FileNotFoundError(f"corpus source '{name}' needs {what}; install it with: {install}")
