"""``bible``: the World English Bible from the apt package sword-text-web, split by chapter.

The SWORD zText module is a list of zlib-compressed blocks of OSIS-tagged verses; markup and
footnotes are dropped. 81 books (deuterocanon included) give 1,402 chapter documents.
"""

from __future__ import annotations

import itertools
import os
import re
import struct
import zlib
from pathlib import Path

from ..corpus import Document
from .base import SourceInfo, not_installed, tidy

__all__ = ["SOURCE", "load_bible"]

_SWORD_DIR = "/usr/share/sword/modules/texts/ztext/engWEB2015eb"
_OSIS_NOTE = re.compile(r"<note\b.*?</note>", re.DOTALL)
_OSIS_TITLE = re.compile(r"<title\b[^>]*>(.*?)</title>", re.DOTALL)
_OSIS_TAG = re.compile(r"<[^>]+>")
_OSIS_BOOK = re.compile(
    r'<div\b(?=[^>]*\bsID="([^"]+)")(?=[^>]*\btype="book")[^>]*\bosisID="([^"]+)"[^>]*/>'
)
_OSIS_CHAPTER = re.compile(r'<chapter\b[^>]*\bsID="[^"]+"[^>]*/>')
_OSIS_SHORT_TITLE = re.compile(r'<milestone n="([^"]+)" type="x-usfm-h"/>')
_OSIS_PARAGRAPH = re.compile(
    r'<div\b[^>]*\bsID="[^"]*"[^>]*type="(?:x-p|paragraph)"[^>]*/>|<lb\b[^>]*/>'
)


def _sword_blocks(bzs: bytes, bzz: bytes) -> list[str]:
    blocks = []
    for offset, size, _usize in struct.iter_unpack("<III", bzs):
        blocks.append(zlib.decompress(bzz[offset : offset + size]).decode("utf-8", "replace"))
    return blocks


def _osis_to_text(osis: str) -> str:
    osis = _OSIS_NOTE.sub(" ", osis)  # a footnote can sit between two words
    osis = _OSIS_TITLE.sub(lambda t: "\n\n" + t.group(1) + "\n\n", osis)
    osis = _OSIS_PARAGRAPH.sub("\n\n", osis)
    text = re.sub(r"[ \t]+", " ", _OSIS_TAG.sub("", osis))
    return tidy(re.sub(r" +([.,;:!?])", r"\1", text))


def load_bible() -> list[Document]:
    root = Path(os.environ.get("NESTLEARN_BIBLE_DIR", _SWORD_DIR))
    if not (root / "ot.bzs").is_file():
        raise not_installed("bible", f"the SWORD module at {root}", SOURCE.install)
    osis = "".join(
        block
        for testament in ("ot", "nt")
        for block in _sword_blocks(
            (root / f"{testament}.bzs").read_bytes(), (root / f"{testament}.bzz").read_bytes()
        )
    )
    # A book runs from <div sID=X type="book"/> to its <div eID=X .../>; the rest is dropped.
    docs = []
    for i, m in enumerate(_OSIS_BOOK.finditer(osis)):
        end = osis.find(f'eID="{m.group(1)}"', m.end())
        end = len(osis) if end < 0 else osis.rfind("<", 0, end)
        book = osis[m.start() : end]
        name = _OSIS_SHORT_TITLE.search(book)
        title = name.group(1) if name else m.group(2)
        chapters = list(_OSIS_CHAPTER.finditer(book))
        cuts = [0] + [c.start() for c in chapters[1:]] + [len(book)]  # headings go with chapter 1
        for ch, (a, b) in enumerate(itertools.pairwise(cuts), start=1):
            text = _osis_to_text(book[a:b])
            if text:
                doc_id = f"{i + 1:02d}-{m.group(2)}/{ch:03d}"
                docs.append(Document("bible", doc_id, f"{title} {ch}\n\n{text}"))
    return docs


SOURCE = SourceInfo(
    "bible",
    "World English Bible with deuterocanon, 81 books split into chapters (about 5 MB)",
    "apt-get install sword-text-web",
    "public domain",
    load_bible,
)
