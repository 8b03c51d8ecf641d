"""The registry of named sources, and :func:`load_corpus`, which reads names and paths in order."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..corpus import Document
from . import austen, bible, brown, shakespeare, wikipedia
from .base import SourceInfo
from .files import TEXT_SUFFIXES, load_text_files

__all__ = ["DEFAULT_SOURCES", "SOURCES", "load_corpus", "load_source"]

DEFAULT_SOURCES = ("shakespeare", "wikipedia")

SOURCES: dict[str, SourceInfo] = {
    module.SOURCE.name: module.SOURCE for module in (shakespeare, wikipedia, brown, bible, austen)
}


def load_source(name: str) -> list[Document]:
    """Load a named source (one of ``SOURCES``); missing package -> ``FileNotFoundError``."""
    if name not in SOURCES:
        raise ValueError(
            f"unknown corpus source '{name}'; allowed: {', '.join(SOURCES)} "
            "or a path to a .txt/.jsonl file or a directory"
        )
    docs = SOURCES[name].load()
    if not docs:
        raise ValueError(f"corpus source '{name}' is empty")
    return docs


def load_corpus(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] = DEFAULT_SOURCES,
) -> list[Document]:
    """Load and concatenate sources in the given order.

    Each entry is a name from ``SOURCES`` or a path (a ``Path``, or a string that names an
    existing file or directory, contains a path separator or ends in .txt/.jsonl). A known name
    wins over a directory of the same name: write ``./shakespeare`` for the directory.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not sources:
        raise ValueError("sources is empty; give at least one of " + ", ".join(SOURCES))
    docs: list[Document] = []
    seen: set[tuple[str, str]] = set()
    for entry in sources:
        if isinstance(entry, str) and entry in SOURCES:
            part = load_source(entry)
        elif isinstance(entry, os.PathLike) or _looks_like_path(entry):
            part = load_text_files(entry)
        else:
            part = load_source(str(entry))  # raises the "unknown source" error
        for d in part:
            key = (d.source, d.doc_id)
            if key in seen:
                raise ValueError(f"duplicate document {d.source}/{d.doc_id}; give each source once")
            seen.add(key)
        docs.extend(part)
    return docs


def _looks_like_path(entry: str) -> bool:
    return os.sep in entry or "/" in entry or entry.endswith(TEXT_SUFFIXES) or Path(entry).exists()
